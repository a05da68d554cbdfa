"""vLLM rollouts with videos: the requests, and a colocated engine stood in for by the HF processor + model.

vLLM itself cannot run here (no GPU, and its pins differ from ours); bench/vllm_requests.py runs vLLM 0.33's
own input processor on these requests where vLLM is installed. These tests emulate what that processor does:
load the processor from the checkpoint (without the run's pixel budget), apply the request's kwargs, expand
the template ids, and check the result against what the trainer computed.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from builders import make_trainer, random_frames

from videoktr.data.video import read_video, write_video

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _prompt(part):
    return [{"role": "user", "content": [part, {"type": "text", "text": "What happens?"}]}]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    video = write_video(root / "wide.mp4", rng.integers(0, 255, (12, 90, 164, 3), dtype=np.uint8), fps=4.0)
    image = root / "img.png"
    Image.fromarray(rng.integers(0, 255, (70, 118, 3), dtype=np.uint8)).save(image)
    return {"video": {"type": "video", "video": str(video)}, "image": {"type": "image", "image": str(image)}}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    from videoktr.models.factory import create_model_dir

    return {f: create_model_dir(tmp_path_factory.mktemp(f), size="tiny", family=f)
            for f in ("qwen2_5_vl", "qwen2_vl", "qwen3_vl")}


def _encode(model_dir, prompts, budget=None):
    from transformers import AutoConfig

    from videoktr.models.adapters import adapter_for_config
    from videoktr.models.factory import load_processor
    from videoktr.train.trainer import encode_prompts

    processor = load_processor(model_dir, *(budget or (None, None)))
    adapter = adapter_for_config(AutoConfig.from_pretrained(str(model_dir), local_files_only=True))
    return processor, encode_prompts(processor, adapter, prompts, lambda p: read_video(p, max_frames=8))


def emulate_vllm(model_dir, request: dict):
    """What vLLM's input processing does with a request: the checkpoint's processor, the request's kwargs,
    the template's placeholder expanded. Returns the processor outputs (input_ids expanded)."""
    from transformers import AutoProcessor
    from transformers.video_utils import VideoMetadata

    fresh = AutoProcessor.from_pretrained(str(model_dir), local_files_only=True)
    kwargs = dict(request["mm_processor_kwargs"])
    data = request["multi_modal_data"]
    call = dict(text=fresh.tokenizer.decode(request["prompt_token_ids"]), return_tensors="pt")
    if "video" in data:
        frames, meta = data["video"][0]
        call.update(videos=[frames], video_metadata=[VideoMetadata(**{k: v for k, v in meta.items()
                                                                        if k != "do_sample_frames"})])
    else:
        call.update(images=data["image"])
    for scope in ("videos_kwargs", "images_kwargs"):
        call.update(kwargs.pop(scope, {}))
    return fresh(**call, **kwargs)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl", "qwen3_vl"])
@pytest.mark.parametrize("kind", ["video", "image"])
def test_request_reproduces_the_trainers_inputs(family_dirs, media, family, kind):
    from videoktr.train.rollout import check_vllm_budget, vllm_requests

    model_dir = family_dirs[family]
    # Qwen2/2.5-VL: a run budget above the checkpoint's (3136 px), carried by the request kwargs; Qwen3-VL's
    # per-frame cap cannot be raised per request, so it runs at the checkpoint's budget
    budget = None if family == "qwen3_vl" else (16 * 28 * 28, 24 * 28 * 28)
    processor, batch = _encode(model_dir, [_prompt(media[kind])], budget)
    check_vllm_budget(str(model_dir), processor)
    row = batch.rows[0]
    request = vllm_requests(batch.template_ids, batch.rows, processor)[0]
    pad = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>" if kind == "video" else "<|image_pad|>")
    assert request["prompt_token_ids"].count(pad) == 1 < batch.prompt_ids[0].count(pad)
    out = emulate_vllm(model_dir, request)
    assert out["input_ids"][0].tolist() == batch.prompt_ids[0]
    grid_key, pix_key = ("video_grid_thw", "pixel_values_videos") if kind == "video" else ("image_grid_thw", "pixel_values")
    assert torch.equal(out[grid_key], row.grid)
    torch.testing.assert_close(out[pix_key], row.pixels, atol=1e-5, rtol=0)
    if kind == "video" and row.seconds_per_group is not None:
        torch.testing.assert_close(torch.as_tensor(out["second_per_grid_ts"]).float(), row.seconds_per_group.float())
        assert float(row.seconds_per_group[0]) == pytest.approx(2 / 2.0)  # 2 frames per group, sampled at 2 fps


def test_unpatchify_returns_the_resized_frames(family_dirs, media):
    """The frames recovered from patch rows are the processor's resized frames (uint8, exact)."""
    from videoktr.train.rollout import PatchLayout, unpatchify

    processor, batch = _encode(family_dirs["qwen2_5_vl"], [_prompt(media["video"])], (16 * 28 * 28, 24 * 28 * 28))
    row = batch.rows[0]
    frames = unpatchify(row.pixels, row.grid, PatchLayout.of(processor.video_processor))
    t, h, w = row.grid[0].tolist()
    assert frames.dtype == np.uint8 and frames.shape == (2 * t, 14 * h, 14 * w, 3)
    resized = processor.video_processor(videos=[frames], do_sample_frames=False, return_tensors="pt",
                                        size={"shortest_edge": frames.shape[1] * frames.shape[2],
                                              "longest_edge": frames.shape[1] * frames.shape[2]})
    torch.testing.assert_close(resized["pixel_values_videos"], row.pixels, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="do not match grid"):
        unpatchify(row.pixels[:-4], row.grid, PatchLayout.of(processor.video_processor))


def test_rows_of_one_clip_share_one_media_entry(tiny_dir, media):
    from videoktr.train.rollout import vllm_requests

    processor, batch = _encode(tiny_dir, [_prompt(media["video"])] * 3 + [_prompt({"type": "text", "text": "hi"})])
    requests = vllm_requests(batch.template_ids, batch.rows, processor)
    assert requests[3] is None
    assert requests[0]["multi_modal_data"] is requests[2]["multi_modal_data"]
    assert requests[0]["multi_modal_uuids"] == requests[1]["multi_modal_uuids"]
    with pytest.raises(ValueError, match="4 prompts but 3 media rows"):
        vllm_requests(batch.template_ids, batch.rows[:3], processor)
    doubled = [ids + ids for ids in batch.template_ids]
    with pytest.raises(ValueError, match="has 2 video placeholder tokens"):
        vllm_requests(doubled, batch.rows, processor)


def test_budget_above_the_checkpoints_qwen3_cap_is_refused(family_dirs):
    from videoktr.models.factory import load_processor
    from videoktr.train.rollout import check_vllm_budget

    model_dir = family_dirs["qwen3_vl"]
    check_vllm_budget(str(model_dir), load_processor(model_dir))  # the checkpoint's own budget: fine
    with pytest.raises(ValueError, match="max_video_tokens"):
        check_vllm_budget(str(model_dir), load_processor(model_dir, 16 * 32 * 32, 64 * 32 * 32))


def test_media_injecting_llm_swaps_requests_in_order():
    from videoktr.train.rollout import MediaInjectingLLM

    seen = []
    inner = SimpleNamespace(generate=lambda prompts, *a, **k: seen.append(prompts) or "out", llm_engine="engine")
    llm = MediaInjectingLLM(inner)
    assert llm.llm_engine == "engine"  # everything else passes through
    llm.pending, llm.pending_ids = [{"prompt_token_ids": [9], "multi_modal_data": {}}, None], [[1, 2], [3]]
    assert llm.generate([{"prompt_token_ids": [1, 2]}, {"prompt_token_ids": [3]}], sampling_params=None) == "out"
    assert seen[-1] == [{"prompt_token_ids": [9], "multi_modal_data": {}}, {"prompt_token_ids": [3]}]
    llm.generate([{"prompt_token_ids": [5]}])  # nothing pending: unchanged
    assert seen[-1] == [{"prompt_token_ids": [5]}]
    llm.pending, llm.pending_ids = [None], [[1]]
    with pytest.raises(RuntimeError, match="out of step"):
        llm.generate([{"prompt_token_ids": [2]}])


class FakeColocatedLLM:
    """Stands in for `vllm.LLM` in TRL's colocate path: processes each request as vLLM would (emulate_vllm),
    samples with the training model, returns RequestOutput-shaped objects with the sampled tokens' log-probs
    (of the unwarped distribution at temperature 1, as vLLM's processed logprobs are here)."""

    def __init__(self, model_dir, model, suppress):
        self.model_dir, self.model, self.suppress, self.seen = model_dir, model, suppress, []

    def generate(self, prompts, sampling_params=None, use_tqdm=False):
        outputs = []
        for request in prompts:
            assert "multi_modal_data" in request, "a video row reached vLLM without its video"
            enc = emulate_vllm(self.model_dir, request)
            self.seen.append(enc)
            samples = []
            for _ in range(getattr(sampling_params, "n", 1)):
                with torch.no_grad():
                    out = self.model.generate(**enc, do_sample=True, max_new_tokens=sampling_params.max_tokens,
                                              suppress_tokens=self.suppress, top_k=0, output_logits=True,
                                              return_dict_in_generate=True)
                tokens = out.sequences[0, enc["input_ids"].shape[1]:].tolist()
                logprobs = [{t: SimpleNamespace(logprob=torch.log_softmax(s[0], -1)[t].item(), rank=1)}
                            for t, s in zip(tokens, out.logits)]
                samples.append(SimpleNamespace(token_ids=tokens, logprobs=logprobs))
            outputs.append(SimpleNamespace(prompt_token_ids=enc["input_ids"][0].tolist(), outputs=samples))
        return outputs


def _colocated_trainer(tiny_dir, tmp_path, monkeypatch, method):
    """A trainer whose rollouts go through TRL's own colocate code (VLLMGeneration.generate), the engine stood
    in by FakeColocatedLLM."""
    import trl.generation.vllm_generation as vg

    from videoktr.models.factory import suppressed_token_ids

    rows = []
    for i in range(2):
        path = write_video(tmp_path / f"c{i}.mp4", random_frames(200 + i), fps=2.0)
        rows.append({"prompt": _prompt({"type": "video", "video": str(path)}), "solution": "red"})
    trainer = make_trainer(tiny_dir, rows, tmp_path, method=method, max_steps=1)
    suppress = suppressed_token_ids(trainer.processing_class.tokenizer)
    engine = FakeColocatedLLM(tiny_dir, trainer.model, suppress)
    monkeypatch.setattr(vg, "SamplingParams", lambda **kw: SimpleNamespace(**kw), raising=False)
    generation = vg.VLLMGeneration.__new__(vg.VLLMGeneration)
    generation.__dict__.update(
        mode="colocate", llm=engine, model=trainer.model, accelerator=trainer.accelerator, tensor_parallel_size=1,
        enable_sleep_mode=False,
        temperature=1.0, top_p=1.0, top_k=0, min_p=None, repetition_penalty=1.0, max_completion_length=8,
        logprobs=0, generation_kwargs={}, structured_outputs_regex=None, _llm_weights_sleeping=False)
    generation.sync_weights = lambda: None
    trainer.use_vllm, trainer.vllm_mode, trainer.vllm_generation, trainer._last_loaded_step = True, "colocate", generation, -1
    trainer._prepare_vllm()
    return trainer, engine


def test_colocated_vllm_rollouts_carry_each_rows_video(tiny_dir, tmp_path, monkeypatch):
    """Every request carries its clip, vLLM-side processing reproduces the trainer's prompt ids and pixels, and
    KTR trains on the result."""
    from videoktr.train.rollout import MediaInjectingLLM

    trainer, engine = _colocated_trainer(tiny_dir, tmp_path, monkeypatch, "ktr")
    assert isinstance(trainer.vllm_generation.llm, MediaInjectingLLM)
    trainer.model.train()
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    assert len(engine.seen) == 8
    pad = trainer.processing_class.tokenizer.pad_token_id
    trainer_ids = sorted(ids[ids != pad].tolist() for ids in batch["prompt_ids"])
    assert sorted(enc["input_ids"][0].tolist() for enc in engine.seen) == trainer_ids
    clips = {row.key: row.pixels for row in batch["videos"]}  # TRL shuffles rows after generation
    assert len(clips) == 2
    for enc in engine.seen:
        matches = [key for key, pixels in clips.items()
                   if torch.allclose(enc["pixel_values_videos"], pixels, atol=1e-5, rtol=0)]
        assert len(matches) == 1
    # TRL's importance-sampling correction compares the engine's log-probs with the trainer's: same model,
    # same inputs, so they agree
    assert batch["importance_sampling_ratio"].sub(1).abs().max() < 1e-3
    loss = trainer._compute_loss(trainer.model, batch)
    assert torch.isfinite(loss)


def test_tgrpo_shuffled_responses_come_from_the_engine(tiny_dir, tmp_path, monkeypatch):
    """T-GRPO with vLLM: one extra request per prompt group, n = G/2, on that group's clip with its temporal
    groups permuted (never the identity)."""
    trainer, engine = _colocated_trainer(tiny_dir, tmp_path, monkeypatch, "tgrpo")
    trainer.model.train()
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    assert len(engine.seen) == 8 + 2  # 8 rollouts, then one shuffled request per prompt group
    clips = {row.key: row for row in batch["videos"]}
    for enc in engine.seen[8:]:
        pixels = enc["pixel_values_videos"]
        t = int(enc["video_grid_thw"][0, 0])
        own = [r for r in clips.values() if torch.allclose(pixels.sort(0).values, r.pixels.sort(0).values, atol=1e-5)]
        assert len(own) == 1  # the same patches as one clip ...
        groups = pixels.reshape(t, -1, pixels.shape[-1])
        source = own[0].pixels.reshape(t, -1, pixels.shape[-1])
        order = [next(j for j in range(t) if torch.allclose(groups[i], source[j], atol=1e-5)) for i in range(t)]
        assert sorted(order) == list(range(t)) and order != list(range(t))  # ... in another temporal order
    assert len(trainer._metrics["train"]["tgrpo/p_shuffled"]) == 1


def test_server_mode_refuses_video_rows(tiny_dir, tmp_path):

    path = write_video(tmp_path / "c.mp4", random_frames(7), fps=2.0)
    trainer = make_trainer(tiny_dir, [{"prompt": _prompt({"type": "video", "video": str(path)}), "solution": "x"}],
                           tmp_path)
    trainer.use_vllm = True
    trainer.vllm_generation = SimpleNamespace(mode="server")
    prompts = [_prompt({"type": "video", "video": str(path)})]
    prompt_ids, _, fields = trainer._tokenize_prompts(prompts)
    with pytest.raises(ValueError, match="colocate"):
        trainer._generate_single_turn(prompt_ids, None, fields, 1)
