"""Model families (Qwen2.5-VL, Qwen2-VL, Qwen3-VL) through the one adapter seam: each family's tiny model is
built by `videoktr init-model --family ...`, loads, runs a forward with video, has the temporal-group feature
layout the perturbations rely on, and goes through `videoktr.attribution.attribute`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from builders import encode_prompts, make_completions, random_frames

import videoktr.attribution as attribution_module
from videoktr.attribution import AttributionOptions, attribute
from videoktr.cli import main
from videoktr.models.adapters import SUPPORTED, Qwen3VLAdapter, UnsupportedModelError, adapter_for
from videoktr.models.factory import FAMILIES, load_model, load_processor
from videoktr.models.perturb import permute_groups

EXPECTED = {  # family -> (model class, processor class, video processor class, patch size)
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor", 14),
    "qwen2_vl": ("Qwen2VLForConditionalGeneration", "Qwen2VLProcessor", "Qwen2VLVideoProcessor", 14),
    "qwen3_vl": ("Qwen3VLForConditionalGeneration", "Qwen3VLProcessor", "Qwen3VLVideoProcessor", 16),
}
ROWS = [
    ("Which colour appeared first?", random_frames(21)),
    ("Which colour appeared first?", random_frames(21)),  # same clip: one perturbation draw
    ("How many shapes appeared?", random_frames(22, n=6)),
    ("What is two plus two?", None),
]
RESPONSES = [
    "<think>red then blue</think><answer>red</answer>",
    "<think>blue first</think><answer>blue</answer>",
    "<think>three</think><answer>3</answer>",
    "<answer>4</answer>",
]


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def fam(request, tmp_path_factory):
    """(family, model dir, model, processor): built through the CLI, loaded like any checkpoint."""
    family = request.param
    out = tmp_path_factory.mktemp(family)
    assert main(["init-model", "--family", family, "--size", "tiny", "--output", str(out)]) == 0
    return family, out, load_model(out, dtype="float32").eval(), load_processor(out)


def _batch(processor):
    prompts = encode_prompts(processor, ROWS)
    cids, cmask = make_completions(processor, RESPONSES)
    return dict(prompt_ids=prompts["input_ids"], prompt_mask=prompts["attention_mask"], completion_ids=cids,
                completion_mask=cmask, pixel_values_videos=prompts["pixel_values_videos"],
                video_grid_thw=prompts["video_grid_thw"], second_per_grid_ts=prompts.get("second_per_grid_ts"))


def _plain_logp(model, processor, question, frames, completion):
    """One row, no padding, the model's own pixel path -> float64 log p of the completion tokens."""
    single = encode_prompts(processor, [(question, frames)])
    comp = completion[completion != processor.tokenizer.pad_token_id]
    ids = torch.cat([single["input_ids"][0], comp])[None]
    kwargs = {k: v for k, v in single.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
    types = torch.cat([single["mm_token_type_ids"][0], torch.zeros_like(comp)])[None].int()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=types, **kwargs).logits
    P = single["input_ids"].shape[1]
    logp = logits[0, P - 1 : P - 1 + len(comp)].double().log_softmax(-1)
    return logp.gather(-1, comp[:, None]).squeeze(-1)


def test_init_model_builds_and_loads(fam):
    family, path, model, processor = fam
    model_cls, processor_cls, video_cls, patch = EXPECTED[family]
    assert model.config.model_type == family and type(model).__name__ == model_cls
    assert type(processor).__name__ == processor_cls and type(processor.video_processor).__name__ == video_cls
    assert model.config.vision_config.patch_size == patch == processor.video_processor.patch_size
    n = sum(p.numel() for p in model.parameters())
    meta = json.loads((path / "videoktr_model.json").read_text())
    assert n < 1_000_000 and meta["parameters"] == n and meta["family"] == family
    adapter = adapter_for(model)
    tok = processor.tokenizer
    assert adapter.family == family
    assert adapter.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>") == processor.video_token_id
    assert adapter.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")


def test_forward_with_video_and_features_fed_back(fam):
    """The adapter's route (encoder once, features back through the forward kwargs) gives the model's own
    pixel-path logits; zeroed features change them."""
    family, _, model, processor = fam
    adapter = adapter_for(model)
    inputs = encode_prompts(processor, ROWS[1:])
    assert set(adapter.extra_video_inputs) <= set(inputs)
    with torch.no_grad():
        ref = model(**inputs).logits
        feats = adapter.encode_videos(model, inputs["pixel_values_videos"], inputs["video_grid_thw"])
        rest = {k: v for k, v in inputs.items() if k != "pixel_values_videos"}
        fed = model(**rest, **adapter.video_kwargs(feats)).logits
        zero = model(**rest, **adapter.video_kwargs([torch.zeros_like(f) for f in feats])).logits
    assert ref.shape[:2] == inputs["input_ids"].shape and ref.isfinite().all()
    assert torch.allclose(fed, ref, atol=1e-5)
    assert (zero - ref).abs().max() > 1e-4
    hidden = model.config.text_config.hidden_size
    width = hidden * (1 + len(model.config.vision_config.deepstack_visual_indexes)) if family == "qwen3_vl" else hidden
    for f, grid in zip(feats, inputs["video_grid_thw"]):
        assert f.shape == (int(adapter.num_groups(grid[None])) * int(adapter.tokens_per_group(grid[None])), width)


def test_group_permutation_of_features_equals_reencoding_permuted_frames(fam):
    _, _, model, processor = fam
    adapter = adapter_for(model)
    frames = random_frames(7, n=8)
    perm = torch.tensor([2, 0, 3, 1])
    order = np.concatenate([[2 * g, 2 * g + 1] for g in perm.tolist()])
    a = encode_prompts(processor, [("Q?", frames)])
    b = encode_prompts(processor, [("Q?", frames[order])])
    assert torch.equal(a["input_ids"], b["input_ids"])  # prompt text (Qwen3-VL: timestamps too) unchanged
    groups = int(adapter.num_groups(a["video_grid_thw"])[0])
    assert groups == 4
    assert int((a["input_ids"] == adapter.video_token_id).sum()) == groups * int(adapter.tokens_per_group(a["video_grid_thw"])[0])
    with torch.no_grad():
        fa = adapter.encode_videos(model, a["pixel_values_videos"], a["video_grid_thw"])[0]
        fb = adapter.encode_videos(model, b["pixel_values_videos"], b["video_grid_thw"])[0]
    assert (permute_groups(fa, groups, perm) - fb).abs().max().item() < 1e-5
    assert (fa - fb).abs().max().item() > 1e-2


def test_attribution_scores_are_finite_and_match_reencoded_shuffle(fam):
    _, _, model, processor = fam
    batch = _batch(processor)
    result = attribute(model, **batch, generator=torch.Generator().manual_seed(3))
    mask = batch["completion_mask"].bool()
    for name in ("visual", "temporal", "entropy"):
        assert result.scores[name][mask].isfinite().all()
    assert not result.valid["visual"][3].any() and result.valid["entropy"][3].any()
    assert result.scores["visual"][:3].abs().sum() > 0
    for b in range(3):
        perm = result.permutations[b].tolist()
        assert perm != list(range(len(perm)))
        question, frames = ROWS[b]
        order = np.concatenate([[2 * g, 2 * g + 1] for g in perm])
        n = int(mask[b].sum())
        full = _plain_logp(model, processor, question, frames, batch["completion_ids"][b])
        shuf = _plain_logp(model, processor, question, frames[order], batch["completion_ids"][b])
        assert torch.allclose(result.logp[b, :n].double(), full, atol=1e-4)
        assert torch.allclose(result.scores["temporal"][b, :n].double(), (full - shuf).abs(), atol=1e-4)


def test_identity_permutation_gives_zero_temporal_scores(fam, monkeypatch):
    _, _, model, processor = fam
    monkeypatch.setattr(attribution_module, "temporal_permutation", lambda n, *a, **k: torch.arange(n))
    result = attribute(model, **_batch(processor), options=AttributionOptions(signals=("temporal",)))
    assert result.valid["temporal"][:3].any()
    assert result.scores["temporal"].abs().max().item() < 1e-5


def test_family_specific_video_inputs(fam):
    """Qwen2.5-VL: seconds per group from fps; Qwen2-VL: none, temporal RoPE id = group index; Qwen3-VL: none,
    a timestamp text before each group's own vision_start/pads/vision_end run."""
    family, _, model, processor = fam
    adapter = adapter_for(model)
    inputs = encode_prompts(processor, [("Q?", random_frames(1, n=8))], fps=2.0)
    video = inputs["input_ids"][0] == adapter.video_token_id
    if family == "qwen2_5_vl":
        assert adapter.extra_video_inputs == ("second_per_grid_ts",)
        assert inputs["second_per_grid_ts"].tolist() == [1.0]
        return
    assert adapter.extra_video_inputs == () and "second_per_grid_ts" not in inputs
    pos, _ = model.model.get_rope_index(inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
                                        video_grid_thw=inputs["video_grid_thw"],
                                        attention_mask=inputs["attention_mask"])
    temporal = pos[0, 0, video].view(4, -1)
    assert (temporal == temporal[:, :1]).all()
    if family == "qwen2_vl":
        assert not adapter.timestamps_in_text
        assert (temporal[:, 0] - temporal[0, 0]).tolist() == [0, 1, 2, 3]
        return
    assert isinstance(adapter, Qwen3VLAdapter) and adapter.timestamps_in_text and adapter.num_deepstack == 2
    text = processor.tokenizer.decode(inputs["input_ids"][0])
    stamps = [f"<{t:.1f} seconds><|vision_start|>" for t in (0.25, 1.25, 2.25, 3.25)]
    assert all(s in text for s in stamps)
    runs = torch.diff(video.int()).eq(1).sum().item()
    assert runs == 4 and (temporal[1:, 0] > temporal[:-1, 0]).all()


def test_qwen3_per_frame_pixel_budget(tmp_path):
    """Qwen3-VL's video processor bounds frames*h*w; load_processor turns max_pixels into a per-frame budget
    (the same grid for 4 and 16 frames)."""
    out = tmp_path / "q3"
    assert main(["init-model", "--family", "qwen3_vl", "--output", str(out)]) == 0
    processor = load_processor(out, max_pixels=128 * 128, min_pixels=32 * 32)
    for n in (4, 16):
        inputs = encode_prompts(processor, [("Q?", random_frames(2, n=n, size=160))])
        assert inputs["video_grid_thw"].tolist() == [[n // 2, 8, 8]]


def test_unsupported_architecture_lists_every_family(tmp_path):
    from transformers import LlamaConfig

    assert set(SUPPORTED) == set(FAMILIES) == set(EXPECTED)
    LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                vocab_size=64).save_pretrained(tmp_path / "llama")
    with pytest.raises(UnsupportedModelError) as err:
        load_model(tmp_path / "llama")
    for family, name in SUPPORTED.items():
        assert f"{family} ({name})" in str(err.value)
    with pytest.raises(SystemExit):
        main(["init-model", "--family", "llama", "--output", str(tmp_path / "x")])


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl", "qwen3_vl"])
def test_images_encode_like_one_group_clips(family, tmp_path):
    """The trainer encodes a pass's videos and images in one vision-tower call through `encode_videos`: for an
    image the tower's video path gives exactly its image path's features."""
    import numpy as np
    from PIL import Image

    from videoktr.models.adapters import adapter_for
    from videoktr.models.factory import create_model_dir, load_model, load_processor

    path = create_model_dir(tmp_path / family, size="tiny", family=family)
    model, processor = load_model(path, dtype="float32").eval(), load_processor(path)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (56, 84, 3), dtype=np.uint8))
    enc = processor.image_processor(images=[image, image.rotate(90, expand=True)], return_tensors="pt")
    adapter = adapter_for(model)
    with torch.no_grad():
        as_images = adapter.encode_images(model, enc["pixel_values"], enc["image_grid_thw"])
        as_videos = adapter.encode_videos(model, enc["pixel_values"], enc["image_grid_thw"])
    assert len(as_images) == len(as_videos) == 2
    assert all(torch.equal(a, b) for a, b in zip(as_images, as_videos))
