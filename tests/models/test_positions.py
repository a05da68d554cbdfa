"""3D RoPE positions (models.positions): Qwen's scheme against a token-by-token reference and against
transformers' own where the two schemes agree; with Qwen's scheme the text after a long clip continues past
the video's highest position, as in the released models (and vLLM); HF sampling agrees with the training
forward under either scheme."""

from __future__ import annotations

import math

import pytest
import torch
from builders import encode_prompts, random_frames

from videoktr.cli import main
from videoktr.models.adapters import adapter_for
from videoktr.models.factory import load_model, load_processor, suppressed_token_ids
from videoktr.models.positions import install, qwen_rope_index, scheme_of


def reference_positions(types: list[int], grids: list, intervals: list[float], merge: int) -> list[tuple]:
    """Slow and obvious: walk the tokens one at a time. A text token sits one past the highest position so
    far (0 at the start); the k-th token of a vision segment starting at s is (s + floor(g * interval), s + i,
    s + j) for temporal group g, merged row i and column j."""
    out, highest, seg, k = [], -1, None, 0
    vision = iter(zip(grids, intervals))
    for n, kind in enumerate(types):
        if kind == 0:
            seg = None
            out.append((highest + 1,) * 3)
        else:
            if seg is None or types[n - 1] != kind:
                grid, interval = next(vision)
                seg, k = (highest + 1, int(grid[1]) // merge, int(grid[2]) // merge, interval), 0
            s, h, w, interval = seg
            g, i, j = k // (h * w), (k % (h * w)) // w, k % w
            out.append((s + math.floor(g * interval), s + i, s + j))
            k += 1
        highest = max(highest, *out[-1])
    return out


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen2_vl"])
def fam(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    assert main(["init-model", "--family", request.param, "--size", "tiny", "--output", str(out)]) == 0
    return request.param, out, load_processor(out)


def _rows():
    return [("Which colour appeared first?", random_frames(1, n=24)),  # 12 groups: beyond the 2x2 grid
            ("What is two plus two?", None),
            ("How many shapes appeared?", random_frames(2, n=4))]


def test_matches_a_token_by_token_reference(fam):
    family, out, processor = fam
    model = load_model(out, dtype="float32")
    inputs = encode_prompts(processor, _rows())
    adapter = adapter_for(model)
    types = adapter.mm_token_type_ids(inputs["input_ids"])
    positions, deltas = qwen_rope_index(model.model, inputs["input_ids"], types,
                                        video_grid_thw=inputs["video_grid_thw"],
                                        second_per_grid_ts=inputs.get("second_per_grid_ts"),
                                        attention_mask=inputs["attention_mask"])
    vision = model.config.vision_config
    per_second = getattr(vision, "tokens_per_second", None)
    seconds = inputs.get("second_per_grid_ts")
    videos = iter(range(inputs["video_grid_thw"].shape[0]))
    for b in range(inputs["input_ids"].shape[0]):
        keep = inputs["attention_mask"][b].bool()
        row_types = types[b][keep].tolist()
        n_videos = len([1 for n, t in enumerate(row_types) if t == 2 and (n == 0 or row_types[n - 1] != 2)])
        ids = [next(videos) for _ in range(n_videos)]
        grids = [inputs["video_grid_thw"][v] for v in ids]
        intervals = [per_second * float(seconds[v]) if per_second else 1.0 for v in ids]
        expected = reference_positions(row_types, grids, intervals, vision.spatial_merge_size)
        got = positions[:, b, keep].T.tolist()
        assert got == [list(p) for p in expected], (family, b)
        assert int(deltas[b]) == max(map(max, expected)) + 1 - len(expected)
        assert (positions[:, b, ~keep] == 0).all()


def test_agrees_with_transformers_where_the_schemes_agree(fam):
    """Images and clips whose temporal span stays within the grid: both schemes give the same positions."""
    family, out, processor = fam
    model = load_model(out, dtype="float32", rope_positions="transformers")
    assert scheme_of(model) == "transformers"
    inputs = encode_prompts(processor, [("Which colour appeared first?", random_frames(3, n=2)),
                                        ("What is two plus two?", None)])
    types = adapter_for(model).mm_token_type_ids(inputs["input_ids"])
    kwargs = dict(video_grid_thw=inputs["video_grid_thw"], attention_mask=inputs["attention_mask"])
    if "second_per_grid_ts" in inputs:
        kwargs["second_per_grid_ts"] = inputs["second_per_grid_ts"]
    theirs = model.model.get_rope_index(inputs["input_ids"], mm_token_type_ids=types, **kwargs)
    ours = qwen_rope_index(model.model, inputs["input_ids"], types, **kwargs)
    assert torch.equal(theirs[0], ours[0]) and torch.equal(theirs[1].reshape(-1), ours[1].reshape(-1))


def test_text_after_a_long_clip_continues_past_its_highest_position(fam):
    family, out, processor = fam
    inputs = encode_prompts(processor, _rows()[:1])
    ids = inputs["input_ids"]
    video = (ids[0] == load_model(out).config.video_token_id).nonzero().squeeze(-1)
    after = int(video.max()) + 1
    found = {}
    seconds = {"second_per_grid_ts": inputs["second_per_grid_ts"]} if "second_per_grid_ts" in inputs else {}
    for scheme in ("qwen", "transformers"):
        model = load_model(out, dtype="float32", rope_positions=scheme)
        found[scheme] = model.model.compute_3d_position_ids(
            input_ids=ids, inputs_embeds=None, attention_mask=inputs["attention_mask"], past_key_values=None,
            image_grid_thw=None, video_grid_thw=inputs["video_grid_thw"], **seconds,
            mm_token_type_ids=adapter_for(model).mm_token_type_ids(ids))
        model.model.rope_deltas = None
    highest = int(found["qwen"][:, 0, video].max())
    assert int(found["qwen"][0, 0, after]) == highest + 1
    assert int(found["transformers"][0, 0, after]) <= highest  # the 5.23 scheme: inside the video's span
    assert torch.equal(found["qwen"][:, 0, : after], found["transformers"][:, 0, : after])  # the video itself agrees


@pytest.mark.parametrize("scheme", ["qwen", "transformers"])
def test_sampling_and_the_training_forward_agree_under_either_scheme(fam, scheme):
    """Greedy HF generation on a 24-frame clip, then the training forward (one full pass over prompt + response)
    on the same tokens: the response's log-probs agree, so HF sampling continues the prompt's positions as the
    training forward does, whichever scheme the model computes (transformers 5.23 extends the prompt's position
    ids by one per new token; its stored rope_deltas, which attribution no longer uses, would not agree)."""
    family, out, processor = fam
    model = load_model(out, dtype="float32", rope_positions=scheme).eval()
    inputs = encode_prompts(processor, _rows()[:1])
    with torch.no_grad():
        gen = model.generate(**inputs, max_new_tokens=8, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, suppress_tokens=suppressed_token_ids(processor.tokenizer))
        model.model.rope_deltas = None
        P = inputs["input_ids"].shape[1]
        response = gen.sequences[:, P:]
        sampled = torch.stack(gen.logits, 1).log_softmax(-1)  # [1, C, V]
        types = adapter_for(model).mm_token_type_ids(gen.sequences)
        extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
        logits = model(input_ids=gen.sequences, attention_mask=torch.ones_like(gen.sequences), mm_token_type_ids=types,
                       **extra).logits[:, P - 1 : -1].log_softmax(-1)
    gap = (sampled.gather(-1, response[..., None]) - logits.gather(-1, response[..., None])).abs().max().item()
    assert gap < 1e-4, gap


def test_the_scheme_changes_what_the_model_computes_after_a_long_clip(fam):
    """The same prompt + response under the two schemes: the response's log-probs differ (the positions are
    not a no-op), while on a short clip, where the schemes agree, they are identical."""
    family, out, processor = fam
    got = {}
    for frames in (24, 2):
        inputs = encode_prompts(processor, [("Which colour appeared first?", random_frames(1, n=frames))])
        tail = processor.tokenizer("<answer>red</answer><|im_end|>", add_special_tokens=False, return_tensors="pt")
        ids = torch.cat([inputs["input_ids"], tail["input_ids"]], 1)
        extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
        for scheme in ("qwen", "transformers"):
            model = load_model(out, dtype="float32", rope_positions=scheme).eval()
            with torch.no_grad():
                got[frames, scheme] = model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra,
                                            mm_token_type_ids=adapter_for(model).mm_token_type_ids(ids)).logits
    assert (got[24, "qwen"] - got[24, "transformers"]).abs().max() > 1e-4
    assert torch.equal(got[2, "qwen"], got[2, "transformers"])


def test_install_switches_and_leaves_other_families_alone(fam):
    family, out, _ = fam
    model = load_model(out, dtype="float32")
    assert scheme_of(model) == "qwen"
    install(model, "transformers")
    assert scheme_of(model) == "transformers"
    install(model, "qwen")
    assert scheme_of(model) == "qwen"
    with pytest.raises(ValueError, match="unknown position scheme"):
        install(model, "vllm")


def test_qwen3_is_left_as_it_is(tmp_path):
    assert main(["init-model", "--family", "qwen3_vl", "--size", "tiny", "--output", str(tmp_path)]) == 0
    model = load_model(tmp_path, dtype="float32")
    assert scheme_of(model) == "transformers" and "get_rope_index" not in vars(model.model)


def test_images_and_videos_in_one_sequence(fam):
    """A prompt with an image, text, then a long video, beside an image-only prompt (left padding): each vision
    segment starts one past the highest position before it; images take no temporal spacing."""
    import numpy as np
    from PIL import Image

    from videoktr.data.video import Clip

    family, out, processor = fam
    model = load_model(out, dtype="float32")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (56, 84, 3), dtype=np.uint8))
    frames = random_frames(4, n=12)
    contents = [[{"type": "image"}, {"type": "text", "text": "then"}, {"type": "video"},
                 {"type": "text", "text": "Why?"}],
                [{"type": "image"}, {"type": "text", "text": "What colour?"}]]
    texts = [processor.apply_chat_template([{"role": "user", "content": c}], add_generation_prompt=True,
                                           tokenize=False) for c in contents]
    meta = Clip(frames, fps=2.0, source_fps=2.0, duration=6.0, indices=list(range(12))).metadata()
    inputs = processor(text=texts, images=[image, image], videos=[frames], video_metadata=[meta],
                       do_sample_frames=False, return_tensors="pt", padding=True, padding_side="left")
    types = adapter_for(model).mm_token_type_ids(inputs["input_ids"])
    positions, deltas = qwen_rope_index(model.model, inputs["input_ids"], types,
                                        image_grid_thw=inputs["image_grid_thw"],
                                        video_grid_thw=inputs["video_grid_thw"],
                                        second_per_grid_ts=inputs.get("second_per_grid_ts"),
                                        attention_mask=inputs["attention_mask"])
    vision = model.config.vision_config
    per_second = getattr(vision, "tokens_per_second", None)
    video_interval = per_second * float(inputs["second_per_grid_ts"][0]) if per_second else 1.0
    segments = [[(inputs["image_grid_thw"][0], 1.0), (inputs["video_grid_thw"][0], video_interval)],
                [(inputs["image_grid_thw"][1], 1.0)]]
    for b, segs in enumerate(segments):
        keep = inputs["attention_mask"][b].bool()
        row_types = types[b][keep].tolist()
        assert [t for n, t in enumerate(row_types) if t and (n == 0 or row_types[n - 1] != t)] == [1, 2][: len(segs)]
        expected = reference_positions(row_types, [g for g, _ in segs], [i for _, i in segs],
                                       vision.spatial_merge_size)
        assert positions[:, b, keep].T.tolist() == [list(p) for p in expected]
        assert int(deltas[b]) == max(map(max, expected)) + 1 - len(expected)


# ------------------------------------------------------------------------------------------------------------
# The record: a model directory says which scheme it was trained under (issue 22)


def _model_dir(path, **config):
    import json

    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl", **config}))
    return path


def test_resolve_scheme_reads_the_record_and_what_an_earlier_videoktr_left(tmp_path, capsys):
    """Without a requested scheme: the config.json record, else the adapter record, else (no record) what an
    earlier videoktr left beside the model, else qwen; a choice without a record is said once."""
    import json

    from videoktr.models import positions as P

    def resolve(path):
        scheme = P.resolve_scheme(path)
        return scheme, capsys.readouterr().err

    assert resolve(_model_dir(tmp_path / "rec", videoktr_rope_positions="transformers")) == ("transformers", "")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    P.record_scheme(adapter, "transformers")
    assert P.recorded_scheme(adapter) == "transformers" and resolve(adapter) == ("transformers", "")
    cases = {}
    cases["card_new"] = _model_dir(tmp_path / "card_new")
    (cases["card_new"] / "README.md").write_text('# Trained with videoktr\n\ninstall(model, "qwen")  # its 3D')
    cases["card_old"] = _model_dir(tmp_path / "card_old")
    (cases["card_old"] / "README.md").write_text("# Trained with videoktr\n\n- **Base model:** `x`\n")
    cases["warm_old"] = _model_dir(tmp_path / "warm_old")
    (cases["warm_old"] / "warmstart.json").write_text(json.dumps({"key": "k", "settings": {"max_steps": 3}}))
    cases["warm_new"] = _model_dir(tmp_path / "warm_new")
    (cases["warm_new"] / "warmstart.json").write_text(json.dumps({"key": "k", "settings": {"rope_positions": "qwen"}}))
    run = tmp_path / "run"
    cases["run_final"] = _model_dir(run / "final")
    cases["run_adapter"] = run / "final" / "adapter"
    cases["run_adapter"].mkdir()
    (run / "config.json").write_text(json.dumps({"model": {"model": "m"}, "rl": {"method": "ktr"}}))
    cases["marker_only"] = _model_dir(tmp_path / "marker_only")
    (cases["marker_only"] / "videoktr_complete.json").write_text("{}")
    cases["init_model"] = _model_dir(tmp_path / "init_model")
    (cases["init_model"] / "videoktr_model.json").write_text("{}")
    cases["foreign"] = _model_dir(tmp_path / "foreign")
    (cases["foreign"] / "README.md").write_text("# Qwen2.5-VL-7B-Instruct\n")
    expected = {"card_new": "qwen", "card_old": "transformers", "warm_old": "transformers", "warm_new": "qwen",
                "run_final": "transformers", "run_adapter": "transformers", "marker_only": "transformers",
                "init_model": "qwen", "foreign": "qwen"}
    for name, path in cases.items():
        scheme, err = resolve(path)
        assert scheme == expected[name], name
        assert f"{path} records no 3D position scheme; using {expected[name]!r}" in err, (name, err)
        assert resolve(path) == (expected[name], "")  # said once
    # a run config that names the scheme
    (run / "config.json").write_text(json.dumps({"model": {"rope_positions": "qwen"}, "rl": {}}))
    assert resolve(cases["run_final"])[0] == "qwen"


def test_a_requested_scheme_wins_and_a_mismatch_warns_once(tmp_path, capsys):
    from videoktr.models import positions as P

    rec = _model_dir(tmp_path / "rec", videoktr_rope_positions="qwen")
    assert P.resolve_scheme(rec, "transformers") == "transformers"
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "records 3D position scheme 'qwen'; using 'transformers' as asked" in err
    assert P.resolve_scheme(rec, "transformers") == "transformers" and capsys.readouterr().err == ""
    assert P.resolve_scheme(rec, "qwen") == "qwen" and capsys.readouterr().err == ""  # agrees: silent
    old = _model_dir(tmp_path / "old")
    (old / "README.md").write_text("# Trained with videoktr\n")
    assert P.resolve_scheme(old, "qwen") == "qwen"
    assert "was trained under 3D position scheme 'transformers'" in capsys.readouterr().err
    foreign = _model_dir(tmp_path / "foreign")
    assert P.resolve_scheme(foreign, "transformers") == "transformers" and capsys.readouterr().err == ""
    with pytest.raises(ValueError, match="unknown position scheme 'vllm'"):
        P.resolve_scheme(foreign, "vllm")


def test_install_records_the_scheme_that_save_pretrained_writes(tiny_dir, tmp_path):
    import json

    from videoktr.models.positions import RECORD_KEY

    for scheme in ("transformers", "qwen"):
        model = load_model(tiny_dir, dtype="float32", rope_positions=scheme)
        model.save_pretrained(tmp_path / scheme)
        assert json.loads((tmp_path / scheme / "config.json").read_text())[RECORD_KEY] == scheme
        assert scheme_of(load_model(tmp_path / scheme, dtype="float32")) == scheme
