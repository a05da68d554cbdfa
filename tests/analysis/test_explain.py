"""`videoktr explain` (analysis.explain): the record of one attributed response on the tiny model, its agreement
with a direct attribute() call, and the command's user errors (exit 2 before any model load)."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from videoktr.analysis import explain as E
from videoktr.attribution import AttributionOptions, attribute
from videoktr.cli import main
from videoktr import world as S
from videoktr.data.video import write_video

LAYOUT = (("red", "circle"), ("blue", "square"), None, ("green", "triangle"))
QUESTION = "Which colour appeared first?"


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    config = S.WorldConfig()
    return write_video(path, S.render_clip(LAYOUT, config), config.fps)


@pytest.fixture(scope="module")
def generated(tiny_dir, tiny, clip_path):
    model, processor = tiny
    opts = E.ExplainOptions(max_new_tokens=12, seed=3, device="cpu")
    return E.explain(tiny_dir, clip_path, QUESTION, opts=opts, model=model, processor=processor), opts


def test_record_is_consistent(generated, clip_path):
    record, opts = generated
    n = len(record["tokens"])
    assert n == len(record["token_ids"]) == len(record["special"]) and 1 <= n <= 13
    for signal in ("visual", "temporal", "entropy"):
        scores = record["scores"][signal]
        assert len(scores) == n and all(s is not None and s >= 0 for s in scores)
        assert sum(record["selected"][signal]) == math.ceil(opts.ratio * n)  # exactly the top r per signal
        top = sorted(scores, reverse=True)[sum(record["selected"][signal]) - 1]
        assert all(s >= top for s, sel in zip(scores, record["selected"][signal]) if sel)
    union = [any(record["selected"][s][i] for s in ("visual", "temporal", "entropy")) for i in range(n)]
    assert record["selected"]["union"] == union
    # the scores are |log p(full) - log p(perturbed)|, with the log-probabilities recorded
    for signal in ("visual", "temporal"):
        shift = [abs(f - p) for f, p in zip(record["logp"]["full"], record["logp"][signal])]
        assert shift == pytest.approx(record["scores"][signal], abs=1e-5)
    assert all(lp <= 1e-6 for lp in record["logp"]["full"])
    # the clip: 8 frames at 2 fps in 4 temporal groups of 2; a non-identity permutation of the groups
    assert [f["timestamp_s"] for f in record["frames"]] == [i * 0.5 for i in range(8)]
    assert [f["group"] for f in record["frames"]] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert all(f["mime"] == "image/png" and f["image"] for f in record["frames"])
    assert [g["frames"] for g in record["groups"]] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert sorted(record["permutation"]) == [0, 1, 2, 3] and record["permutation"] != [0, 1, 2, 3]
    assert record["prompt"].startswith(QUESTION) and "<think>" in record["prompt"]  # the reasoning prompt
    s = record["settings"]
    assert s["prompt_style"] == "reasoning" and s["generated"] and s["ratio"] == 0.2 and s["seed"] == 3
    assert s["video"] == str(clip_path.resolve()) and s["score_temperature"] == 1.0
    assert "".join(t for t, special in zip(record["tokens"], record["special"]) if not special) == record["response"]
    json.dumps(record, allow_nan=False)  # plain JSON


def test_scores_equal_a_direct_attribute_call(generated, tiny, clip_path):
    """The record's scores are what the trainer's attribute() gives for the same prompt, video and response."""
    record, opts = generated
    model, processor = tiny
    from videoktr.data.video import read_video

    clip = read_video(clip_path, target_fps=2.0, min_frames=4, max_frames=16)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": record["prompt"]}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    enc = processor(text=[text], videos=[clip.frames], video_metadata=[clip.metadata()], do_sample_frames=False,
                    return_tensors="pt")
    completion = torch.tensor([record["token_ids"]])
    att = attribute(model, enc["input_ids"], enc["attention_mask"], completion, torch.ones_like(completion),
                    pixel_values_videos=enc["pixel_values_videos"], video_grid_thw=enc["video_grid_thw"],
                    second_per_grid_ts=enc["second_per_grid_ts"], options=AttributionOptions(),
                    generator=torch.Generator().manual_seed(3))
    for signal in ("visual", "temporal", "entropy"):
        assert record["scores"][signal] == pytest.approx(att.scores[signal][0].tolist(), abs=1e-6), signal
    assert record["logp"]["full"] == pytest.approx(att.logp[0].tolist(), abs=1e-6)
    assert record["permutation"] == att.permutations[0].tolist()


def test_given_response_is_scored_teacher_forced(tiny_dir, tiny, clip_path):
    model, processor = tiny
    response = "<think>first red circle, then blue square.</think><answer>red</answer>"
    opts = E.ExplainOptions(ratio=0.5, temporal_strategy="reverse", device="cpu")
    record = E.explain(tiny_dir, clip_path, QUESTION, response=response, opts=opts, model=model,
                       processor=processor)
    tok = processor.tokenizer
    assert record["token_ids"] == tok(response, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids(
        "<|im_end|>")]
    assert "".join(record["tokens"]) == response + "<|im_end|>"  # one text piece per token
    assert record["special"][-1] and not any(record["special"][:-1])
    assert record["response"] == response and record["answer"] == "red"
    assert record["permutation"] == [3, 2, 1, 0] and not record["settings"]["generated"]
    n = len(record["tokens"])
    assert all(sum(record["selected"][s]) == math.ceil(0.5 * n) for s in ("visual", "temporal", "entropy"))


def test_sampling_is_seeded_and_options_reach_the_prompt(tiny_dir, tiny, clip_path):
    model, processor = tiny
    opts = E.ExplainOptions(max_new_tokens=8, temperature=1.0, seed=7, prompt="plain", device="cpu")
    options = E.parse_options(["red", "blue"])
    a = E.explain(tiny_dir, clip_path, QUESTION, options=options, opts=opts, model=model, processor=processor)
    b = E.explain(tiny_dir, clip_path, QUESTION, options=options, opts=opts, model=model, processor=processor)
    assert a["token_ids"] == b["token_ids"] and a["scores"] == b["scores"]
    assert a["prompt"] == f"{QUESTION}\nOptions:\nA. red\nB. blue"  # plain: question and options only
    assert a["settings"]["answer_type"] == "mc" and a["settings"]["score_temperature"] == 1.0


def test_distribution_distance_keeps_the_logprob_view(tiny_dir, tiny, clip_path):
    model, processor = tiny
    response = "<think>first red circle.</think><answer>red</answer>"
    kw = dict(response=response, model=model, processor=processor)
    kl = E.explain(tiny_dir, clip_path, QUESTION, opts=E.ExplainOptions(distance="kl", device="cpu"), **kw)
    lp = E.explain(tiny_dir, clip_path, QUESTION, opts=E.ExplainOptions(device="cpu"), **kw)
    assert kl["scores"]["visual"] != pytest.approx(lp["scores"]["visual"])  # a different score...
    for key in ("full", "visual", "temporal"):  # ...of the same perturbed inputs (same draws)
        assert kl["logp"][key] == pytest.approx(lp["logp"][key], abs=1e-6)
    assert kl["scores"]["entropy"] == pytest.approx(lp["scores"]["entropy"])


def test_parse_options():
    assert E.parse_options(None) is None
    assert E.parse_options(["A. red", "B) blue"]) == {"A": "red", "B": "blue"}
    assert E.parse_options(["red", "blue", "green"]) == {"A": "red", "B": "blue", "C": "green"}
    with pytest.raises(E.ExplainInputError, match="--options: a label appears twice"):
        E.parse_options(["A. red", "A. blue"])
    with pytest.raises(E.ExplainInputError, match="--options: an option is empty"):
        E.parse_options(["red", " "])


def test_token_texts_concatenate_with_multibyte_characters(tiny):
    tok = tiny[1].tokenizer
    text = "größer → √2 ✓ 猫<|im_end|>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = E.token_texts(tok, ids)
    assert len(pieces) == len(ids) and "".join(pieces) == text


# ------------------------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def cli_run(tiny_dir, clip_path, tmp_path_factory):
    import contextlib
    import io

    out = tmp_path_factory.mktemp("explain") / "out"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["explain", "--model", str(tiny_dir), "--video", str(clip_path), "--question", QUESTION,
                     "--output-dir", str(out), "--max-new-tokens", "6", "--ratio", "0.5", "--device", "cpu",
                     "--temporal-strategy", "reverse", "--options", "red", "blue"])
    return code, out, stdout.getvalue()


def test_cli_writes_page_and_json(cli_run):
    code, out, stdout = cli_run
    assert code == 0
    assert "wrote" in stdout and "top visual" in stdout and "temporal permutation (reverse): [3, 2, 1, 0]" in stdout
    record = json.loads((out / "explain.json").read_text())
    assert record["schema"] == E.SCHEMA and record["settings"]["ratio"] == 0.5
    assert record["options"] == {"A": "red", "B": "blue"}
    page = (out / "explain.html").read_text()
    assert page.count('<span class="tok') == len(record["tokens"])
    assert page.count("data:image/png;base64,") == 2 * len(record["frames"])


def test_cli_page_works_in_a_browser(cli_run, tmp_path):
    from browser import chromium_or_skip, dump_dom, selftest_result

    chromium = chromium_or_skip()
    _, out, _ = cli_run
    record = json.loads((out / "explain.json").read_text())
    result = selftest_result(dump_dom(chromium, out / "explain.html", tmp_path / "profile", "selftest"))
    n = len(record["tokens"])
    assert result["errors"] == [] and result["tokens"] == {"0": n}
    assert len({tuple(v["colours"]) for v in result["views"].values()}) == 4  # every switch changed the shading
    assert result["tooltip"]["shown"] and f"{record['scores']['visual'][0]:.3f}" in result["tooltip"]["text"]


@pytest.fixture
def no_model_load(monkeypatch):
    from expensive_guard import forbid_expensive_work

    forbid_expensive_work(monkeypatch)


def _run_error(argv, capsys) -> str:
    code = main(["explain", *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    return err


@pytest.mark.parametrize("case", ["no_model", "not_a_model", "no_video", "bad_video", "ratio_zero", "ratio_big",
                                  "empty_response", "empty_question", "odd_frames", "missing_output",
                                  "output_is_file", "bad_options", "negative_temperature", "replace", "fraction",
                                  "segments", "temporal_samples"])
def test_cli_user_errors_exit_2_before_loading(case, tiny_dir, clip_path, tmp_path, capsys, no_model_load):
    bad_video = tmp_path / "broken.mp4"
    bad_video.write_bytes(b"not a video at all")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    base = {"--model": str(tiny_dir), "--video": str(clip_path), "--question": QUESTION,
            "--output-dir": str(tmp_path / "out")}
    extra: list[str] = []
    expect = {
        "no_model": ("--model", str(tmp_path / "nowhere"), "--model: directory not found"),
        "not_a_model": ("--model", str(tmp_path), "has no config.json"),
        "no_video": ("--video", str(tmp_path / "missing.mp4"), "--video: video file not found"),
        "bad_video": ("--video", str(bad_video), "--video: cannot decode video"),
        "empty_question": ("--question", " ", "--question: empty"),
        "output_is_file": ("--output-dir", str(a_file), "--output-dir:"),
        "missing_output": ("--output-dir", None, "needs --output-dir"),
    }
    flags = {"ratio_zero": (["--ratio", "0"], "--ratio must be in (0, 1]"),
             "ratio_big": (["--ratio", "1.5"], "--ratio must be in (0, 1]"),
             "empty_response": (["--response", "  "], "--response: empty"),
             "odd_frames": (["--frames", "7"], "--frames must be an even number"),
             "bad_options": (["--options", "A. x", "A. y"], "--options:"),
             "negative_temperature": (["--temperature", "-1"], "--temperature must be >= 0"),
             "replace": (["--visual-strategy", "replace"], "--visual-strategy replace"),
             "fraction": (["--visual-strategy", "zero_fraction", "--visual-fraction", "0"], "--visual-fraction"),
             "segments": (["--temporal-strategy", "segment", "--segment-groups", "1"], "--segment-groups"),
             "temporal_samples": (["--temporal-samples", "0"], "--temporal-samples must be >= 1")}
    if case in expect:
        key, value, message = expect[case]
        if value is None:
            base.pop(key)
        else:
            base[key] = value
    else:
        extra, message = flags[case]
    argv = [x for k, v in base.items() for x in (k, v)] + extra
    err = _run_error(argv, capsys)
    assert message in err
    if case in ("bad_video", "no_video"):
        assert str(base["--video"]) in err  # the message names the file
    assert not (tmp_path / "out").exists()


def test_cli_rejects_unknown_strategy(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["explain", "--temporal-strategy", "sideways"])
    assert exc.value.code == 2 and "--temporal-strategy" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- --run (rollout log)


def _rollout(step: int, row: int, video: str) -> dict:
    """A record in the shape analysis.rollouts.load_rollouts returns."""
    tokens = ["<think>", "first", " red", "</think>", "<|im_end|>"]
    return {"step": step, "rank": 0, "row": row, "prompt_group": 0, "method": "ktr", "ratio": 0.2,
            "question": QUESTION,
            "prompt": json.dumps([{"role": "user", "content": [{"type": "video", "video": video},
                                                               {"type": "text", "text": QUESTION}]}]),
            "videos": [video], "images": [], "solution": "<answer>red</answer>", "response": "".join(tokens[:-1]),
            "tokens": tokens, "token_ids": [1, 2, 3, 4, 5], "prompt_ids": [9, 9], "prompt_length": 2,
            "reward": 1.0, "rewards_per_func": [1.0], "advantage": 0.5, "attributed": True,
            "scores": {"visual": [0.0, 0.1, 2.0, 0.0, 0.0], "temporal": [0.0, 0.0, 1.0, 0.1, 0.0],
                       "entropy": [0.2, 0.1, 0.5, 0.0, 0.0]},
            "selected": {"visual": [False, False, True, False, False], "temporal": [False, False, True, False, False],
                         "entropy": [False, False, True, False, False], "union": [False, False, True, False, False]},
            "weights": [0.0, 0.0, 1.0, 0.0, 0.0],
            "logp": {"full": [-0.1] * 5, "visual": None, "temporal": None, "old": [-0.1] * 5},
            "permutation": [1, 0, 3, 2],
            "frames": {"videos": [video], "images": [], "fps": 2.0, "min_frames": 4, "max_frames": 16,
                       "backend": "pyav"},
            "settings": {"method": "ktr", "ratio": 0.2}}


def test_cli_run_renders_a_runs_rollout_log(clip_path, tmp_path, monkeypatch, capsys, no_model_load):
    R = pytest.importorskip("videoktr.analysis.rollouts")
    run = tmp_path / "run"
    run.mkdir()
    logged = {10: [_rollout(10, 0, str(clip_path)), _rollout(10, 1, "clips/gone.mp4")],
              20: [_rollout(20, 0, str(clip_path))]}

    def load(run_dir, step=None):
        assert str(run_dir) == str(run)
        if step not in logged:
            raise R.NoRollouts(f"{run_dir}: step {step} was not logged")
        return [dict(r) for r in logged[step]]

    monkeypatch.setattr(R, "load_rollouts", load)
    monkeypatch.setattr(R, "rollout_steps", lambda run_dir: sorted(logged))
    out = tmp_path / "out"
    assert main(["explain", "--run", str(run), "--step", "10", "--output-dir", str(out)]) == 0
    assert "step 10: 2 logged responses (1 with frames)" in capsys.readouterr().out
    records = json.loads((out / "explain.json").read_text())
    assert [r["row"] for r in records] == [0, 1]
    assert len(records[0]["frames"]) == 8 and [g["frames"] for g in records[0]["groups"]][0] == [0, 1]
    assert records[1]["frames"] is None and "video not found: clips/gone.mp4" in records[1]["frames_error"]
    page = (out / "explain.html").read_text()
    assert page.count('<span class="tok') == 10 and '<select id="record">' in page
    assert "[step 10 rank 0 row 1 reward 1] " in page
    # default: the last logged step
    assert main(["explain", "--run", str(run), "--output-dir", str(tmp_path / "last")]) == 0
    assert "step 20: 1 logged responses" in capsys.readouterr().out
    # user errors
    assert main(["explain", "--run", str(run), "--step", "5", "--output-dir", str(out)]) == 2
    assert "step 5 was not logged" in capsys.readouterr().err
    assert main(["explain", "--run", str(run), "--model", "x", "--output-dir", str(out)]) == 2
    assert "leave out --model" in capsys.readouterr().err
    assert main(["explain", "--step", "3", "--output-dir", str(out)]) == 2
    assert "--step goes with --run" in capsys.readouterr().err


def test_readme_command_parses():
    """The README's `videoktr explain` command uses only flags the command has."""
    import shlex
    from pathlib import Path

    from videoktr.cli import build_parser

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    commands = [shlex.split(line, comments=True) for b in blocks for line in b.replace("\\\n", " ").splitlines()
                if line.startswith("videoktr explain")]
    assert commands, "README shows a videoktr explain command"
    for tokens in commands:
        args = build_parser().parse_args(tokens[1:])
        assert args.command == "explain" and args.model and args.video and args.question and args.output_dir


@pytest.mark.parametrize("scheme", ["qwen", "transformers"])
def test_rope_positions_reach_the_loaded_model(tiny_dir, clip_path, monkeypatch, scheme):
    """--rope-positions: the model explain loads computes that 3D position scheme, and the record says so."""
    import argparse

    import videoktr.models.factory as factory
    from videoktr.models.positions import scheme_of

    seen, real = [], factory.load_model

    def recording(*a, **k):
        model = real(*a, **k)
        seen.append(scheme_of(model))
        return model

    monkeypatch.setattr(factory, "load_model", recording)
    parser = argparse.ArgumentParser()
    E.add_arguments(parser)
    args = parser.parse_args(["--model", str(tiny_dir), "--video", str(clip_path), "--question", QUESTION,
                              "--rope-positions", scheme, "--max-new-tokens", "2", "--device", "cpu"])
    record = E.explain(tiny_dir, clip_path, QUESTION, opts=E.options_from_args(args))
    assert seen == [scheme] and record["settings"]["rope_positions"] == scheme


@pytest.mark.parametrize("name", ["records_transformers", "old_videoktr_run", "foreign"])
def test_without_the_flag_the_scheme_the_model_was_trained_with(tiny_dir, clip_path, tmp_path, capsys, name):
    """No --rope-positions: explain computes the scheme the model directory records, or (no record) the one an
    earlier videoktr trained it under, or qwen for another tool's, and the record names what was used."""
    import argparse

    from builders import SCHEME_DIRS, scheme_dirs

    model_dir = scheme_dirs(tiny_dir, tmp_path)[name]
    parser = argparse.ArgumentParser()
    E.add_arguments(parser)
    args = parser.parse_args(["--model", str(model_dir), "--video", str(clip_path), "--question", QUESTION,
                              "--max-new-tokens", "2", "--device", "cpu"])
    assert args.rope_positions is None
    capsys.readouterr()
    record = E.explain(model_dir, clip_path, QUESTION, opts=E.options_from_args(args))
    assert record["settings"]["rope_positions"] == SCHEME_DIRS[name]
    assert ("records no 3D position scheme" in capsys.readouterr().err) == (name != "records_transformers")
