"""`videoktr eval` end to end through cli.run: rescoring with --predictions (ours and published formats),
several benchmarks in one command, errors as exit codes, and a tiny-model run on synthetic videos that is
killed half-way and resumed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from videoktr.eval import cli
from benchmark_files import SAMPLES as BENCHMARKS  # real question files, sampled (tests/eval/fixtures/benchmarks)

FIXTURES = Path(__file__).parent / "fixtures"


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="videoktr eval")
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(list(argv)))


def _summary(path: Path) -> dict:
    return json.loads((path / "summary.json").read_text())


def test_every_option_has_help():
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    for action in parser._actions:
        if action.dest != "help":
            assert action.help, action.dest


def test_rescore_predictions_end_to_end(tmp_path):
    out = tmp_path / "out"
    rc = _run("--benchmark", "video_holmes", "--questions", str(FIXTURES / "holmes_mini.json"),
              "--predictions", str(FIXTURES / "holmes_mini_predictions.jsonl"), "--output-dir", str(out),
              "--compare-paper", "--frames", "64")
    assert rc == 0
    s = _summary(out / "video_holmes")
    assert (s["accuracy"], s["correct"], s["total"], s["unparsed"]) == (70.0, 7, 10, 2)
    assert s["paper"]["accuracy"] == 42.7
    scored = [json.loads(x) for x in (out / "video_holmes" / "scored.jsonl").read_text().splitlines()]
    assert [r["id"] for r in scored][:2] == ["clipAAA01/1", "clipAAA01/2"] and scored[1]["extracted"] == "B"
    assert "| Video-Holmes | 70.00 | 10 | 2 | 42.70 |" in (out / "summary.md").read_text()
    assert json.loads((out / "summary.json").read_text())["video_holmes"]["accuracy"] == 70.0
    assert not (out / "video_holmes" / "predictions.jsonl").exists()  # rescoring writes no predictions


def test_rescore_official_videomme_answer_file(tmp_path):
    template = BENCHMARKS / "videomme" / "output_test_template.json"
    rc = _run("--benchmark", "videomme", "--questions", str(template), "--predictions", str(template),
              "--output-dir", str(tmp_path))
    assert rc == 0
    s = _summary(tmp_path / "videomme")
    assert s["correct"] == 6 and s["total"] == 9  # Video-MME's own rule gives 6 of 9 on its template
    assert s["methods"] == {"official:videomme": 9}


def test_several_benchmarks_in_one_command(tmp_path):
    preds = tmp_path / "preds.jsonl"
    lines = (FIXTURES / "holmes_mini_predictions.jsonl").read_text().splitlines()
    rows = [{**json.loads(x), "benchmark": "video_holmes"} for x in lines]
    rows += [{"id": str(k), "output": "<answer>B</answer>", "benchmark": "videor1"} for k in range(1, 7)]
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc = _run("--benchmark", "Video-Holmes", "--benchmark", "videor1",
              "--questions", f"video_holmes={FIXTURES / 'holmes_mini.json'}",
              "--questions", f"videor1={FIXTURES / 'eval_fixture.json'}",
              "--predictions", str(preds), "--output-dir", str(tmp_path / "out"))
    assert rc == 0
    assert _summary(tmp_path / "out" / "video_holmes")["accuracy"] == 70.0
    assert _summary(tmp_path / "out" / "videor1")["correct"] == 2  # the two multiple-choice rows


def test_tempcompass_official_prediction_files_and_task_ambiguity(tmp_path):
    raw = json.loads((BENCHMARKS / "tempcompass" / "yes_no.json").read_text())
    vid = next(iter(raw))
    preds = {vid: {dim: [{"question": q["question"], "prediction": q["answer"].capitalize() + "."} for q in rows]
                   for dim, rows in raw[vid].items()}}
    pfile = tmp_path / "yes_no.json"  # TempCompass's predictions/<model>/yes_no.json format
    pfile.write_text(json.dumps(preds))
    n = sum(len(v) for v in raw[vid].values())
    rc = _run("--benchmark", "tempcompass", "--task", "all", "--data-root", str(BENCHMARKS / "tempcompass"),
              "--predictions", str(pfile), "--output-dir", str(tmp_path / "out"), "--allow-missing")
    assert rc == 0
    s = _summary(tmp_path / "out" / "tempcompass")
    assert s["categories"]["task"]["yes_no"]["correct"] == n and s["correct"] == n
    # ids without a task are ambiguous when all three task types are loaded
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"id": f"{vid}/action/0", "output": "yes"}) + "\n")
    rc = _run("--benchmark", "tempcompass", "--task", "all", "--data-root", str(BENCHMARKS / "tempcompass"),
              "--predictions", str(plain), "--output-dir", str(tmp_path / "out2"), "--allow-missing")
    assert rc == 2


def test_errors_are_reported_with_exit_code(tmp_path, capsys):
    partial = tmp_path / "partial.jsonl"
    partial.write_text("".join((FIXTURES / "holmes_mini_predictions.jsonl").read_text().splitlines(True)[:4]))
    args = ["--benchmark", "video_holmes", "--questions", str(FIXTURES / "holmes_mini.json"),
            "--predictions", str(partial), "--output-dir", str(tmp_path / "out")]
    assert _run(*args) == 2
    assert "6 of 10 items have no prediction" in capsys.readouterr().err
    assert _run(*args, "--allow-missing") == 0
    assert _summary(tmp_path / "out" / "video_holmes")["missing"] == 6
    assert _run("--benchmark", "nope", "--data-root", str(tmp_path), "--predictions", str(partial),
                "--output-dir", str(tmp_path / "o")) == 2
    assert "unknown benchmark" in capsys.readouterr().err
    assert _run("--benchmark", "video_holmes", "--data-root", str(tmp_path), "--predictions", str(partial),
                "--output-dir", str(tmp_path / "o")) == 2
    assert "no test_Video-Holmes.json" in capsys.readouterr().err
    assert _run(*args, "--frames", "15") == 2


# ------------------------------------------------------------------------------ tiny model, synthetic videos


@pytest.fixture
def holmes_videos(tmp_path):
    from videoktr.data.video import write_video

    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for vid in ("clipAAA01", "clipBBB02"):
        write_video(root / "videos" / f"{vid}.mp4", rng.integers(0, 256, (8, 56, 56, 3), dtype=np.uint8), fps=2.0)
    return root


@pytest.mark.slow
def test_tiny_model_run_killed_and_resumed(tiny_dir, holmes_videos, tmp_path, monkeypatch):
    from videoktr.eval import generate

    base = generate.HFGenerator
    calls: list[list[str]] = []

    class Crashing(base):
        def generate(self, batch, **kw):
            if calls:
                raise RuntimeError("killed")
            calls.append([r.item.id for r in batch])
            return super().generate(batch, **kw)

    out = tmp_path / "out"
    argv = ["--benchmark", "video_holmes", "--questions", str(FIXTURES / "holmes_mini.json"),
            "--data-root", str(holmes_videos), "--model", str(tiny_dir), "--output-dir", str(out),
            "--max-new-tokens", "6", "--batch-size", "4", "--frames", "4", "--max-pixels", str(56 * 56),
            "--min-pixels", str(56 * 56), "--device", "cpu", "--no-progress"]
    monkeypatch.setattr(generate, "HFGenerator", Crashing)
    with pytest.raises(RuntimeError, match="killed"):
        _run(*argv)
    pred_file = out / "video_holmes" / "predictions.jsonl"
    first = pred_file.read_text().splitlines()
    assert [json.loads(x)["id"] for x in first] == calls[0] and len(first) == 4

    resumed: list[str] = []

    class Counting(base):
        def generate(self, batch, **kw):
            resumed.extend(r.item.id for r in batch)
            return super().generate(batch, **kw)

    monkeypatch.setattr(generate, "HFGenerator", Counting)
    assert _run(*argv) == 0
    assert resumed and not set(resumed) & set(calls[0]) and len(resumed) == 6
    lines = pred_file.read_text().splitlines()
    assert lines[:4] == first and len(lines) == 10
    s = _summary(out / "video_holmes")
    assert s["total"] == 10 and s["settings"]["frames"] == 4 and s["settings"]["max_new_tokens"] == 6
    run = json.loads((out / "video_holmes" / "run.json").read_text())
    assert run["generator"]["model"] == str(Path(tiny_dir).resolve()) and run["temperature"] == 0.1


def test_task_and_questions_routing_with_several_benchmarks():
    from videoktr.eval.cli import _per_benchmark

    benches = ["tempcompass", "mmvu", "video_holmes"]
    assert _per_benchmark(["yes_no", "mmvu=all"], benches, "--task") == {
        "tempcompass": ["yes_no"], "mmvu": ["all"], "video_holmes": []}
    from videoktr.eval.benchmarks import BenchmarkError

    with pytest.raises(BenchmarkError, match="none of the selected"):
        _per_benchmark(["short"], benches, "--task")
    with pytest.raises(BenchmarkError, match="BENCH=FILE"):
        _per_benchmark(["q.json"], benches, "--questions")
    with pytest.raises(BenchmarkError, match="not selected"):
        _per_benchmark(["videomme=short"], benches, "--task")


@pytest.mark.slow
def test_hf_generator_on_images_and_mixed_batches(tiny_dir, holmes_videos):
    from videoktr.eval.benchmarks import load_items
    from videoktr.eval.generate import HFGenerator
    from videoktr.eval.runner import build_requests

    gen = HFGenerator(tiny_dir, frames=4, max_pixels=56 * 56, min_pixels=56 * 56, device="cpu")
    images = build_requests(load_items("mmmu", FIXTURES), FIXTURES, "reasoning")  # 1, 1 and 2 embedded images
    video = build_requests(load_items("video_holmes", questions=FIXTURES / "holmes_mini.json")[:1], holmes_videos,
                           "reasoning")
    outs = gen.generate(images + video, max_new_tokens=3, temperature=0.0, top_p=1.0)
    assert len(outs) == 4 and all(isinstance(o, str) for o in outs)
    again = gen.generate(images + video, max_new_tokens=3, temperature=0.0, top_p=1.0)
    assert again == outs  # greedy decoding is deterministic


# ------------------------------------------------------------------------ issue 10, case 10: media and duplicates


def test_duplicate_prediction_ids_are_an_error_naming_both_lines(tmp_path, capsys):
    lines = (FIXTURES / "holmes_mini_predictions.jsonl").read_text().splitlines()
    preds = tmp_path / "preds.jsonl"
    preds.write_text("\n".join(lines + [lines[1].replace("<answer>B</answer>", "<answer>C</answer>")]) + "\n")
    rc = _run("--benchmark", "video_holmes", "--questions", str(FIXTURES / "holmes_mini.json"),
              "--predictions", str(preds), "--output-dir", str(tmp_path / "out"))
    err = capsys.readouterr().err
    assert rc == 2
    assert f"{preds}:2" in err and f"{preds}:11" in err and "'clipAAA01/2'" in err
    # Video-R1's results JSON: the rows are named by index
    results = json.loads((FIXTURES / "videor1_results.json").read_text())
    results["results"].append(dict(results["results"][0]))
    rfile = tmp_path / "results.json"
    rfile.write_text(json.dumps(results))
    rc = _run("--benchmark", "videor1", "--questions", str(FIXTURES / "eval_fixture.json"), "--predictions",
              str(rfile), "--output-dir", str(tmp_path / "out2"))
    err = capsys.readouterr().err
    last = len(results["results"]) - 1
    assert rc == 2 and "results[0]" in err and f"results[{last}]" in err and "'1'" in err


class _FakeHF:
    """Stands in for HFGenerator in the CLI: decodes each video with read_video, answers correctly."""

    def __init__(self, model_path, **kw):
        self.kw = kw

    def describe(self):
        return {"model": "fake", "frames": self.kw["frames"]}

    def generate(self, batch, **kw):
        from videoktr.data.video import read_video

        for r in batch:
            read_video(r.video, max_frames=4)
        return [f"<answer>{r.item.answer}</answer>" for r in batch]


@pytest.fixture
def holmes_one_bad(tmp_path):
    from videoktr.data.video import write_video

    root = tmp_path / "data"
    write_video(root / "videos" / "clipAAA01.mp4", np.zeros((4, 32, 32, 3), dtype=np.uint8), fps=2.0)
    (root / "videos" / "clipBBB02.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 20)
    return root


def test_undecodable_video_is_counted_as_failed_in_the_reports(holmes_one_bad, tmp_path, monkeypatch, capsys):
    from videoktr.eval import generate

    monkeypatch.setattr(generate, "HFGenerator", _FakeHF)
    out = tmp_path / "out"
    argv = ["--benchmark", "video_holmes", "--questions", str(FIXTURES / "holmes_mini.json"), "--data-root",
            str(holmes_one_bad), "--model", "fake", "--output-dir", str(out), "--no-progress"]
    assert _run(*argv) == 0  # skip is the default
    captured = capsys.readouterr()
    assert "clipBBB02/1" in captured.err and "failed 5" in captured.out
    bench = out / "video_holmes"
    s = _summary(bench)
    assert (s["total"], s["correct"], s["failed"], s["unparsed"]) == (10, 5, 5, 0)
    assert s["accuracy"] == 50.0 and s["accuracy_parsed"] == 100.0
    assert [f["id"] for f in s["failures"]] == [f"clipBBB02/{k}" for k in range(1, 6)]
    assert "cannot decode video" in s["failures"][0]["reason"] and s["failures"][0]["file"].endswith("clipBBB02.mp4")
    scored = [json.loads(x) for x in (bench / "scored.jsonl").read_text().splitlines()]
    assert [r["method"] for r in scored] == ["answer_tag"] * 5 + ["failed"] * 5
    assert "cannot decode video" in scored[-1]["error"]
    assert len((bench / "failed.jsonl").read_text().splitlines()) == 5
    md = (bench / "summary.md").read_text()
    assert "5 items failed" in md and "clipBBB02/1" in md
    assert json.loads((out / "summary.json").read_text())["video_holmes"]["failed"] == 5
    assert "failed" in (out / "summary.md").read_text()
    # stopping instead: exit 2, the item and the file named, no traceback
    rc = _run(*argv[:-3], "--output-dir", str(tmp_path / "stop"), "--no-progress", "--on-media-error", "stop")
    err = capsys.readouterr().err
    assert rc == 2 and "item clipBBB02/1" in err and "clipBBB02.mp4" in err and "Traceback" not in err


@pytest.mark.slow
def test_tiny_model_skips_undecodable_and_wrongly_typed_media(tiny_dir, holmes_one_bad, tmp_path, capsys):
    from PIL import Image

    root = holmes_one_bad
    Image.new("RGB", (56, 56)).save(root / "pic.png")
    rows = [{"problem_id": i, "problem": "Which?", "data_type": dtype, "problem_type": "multiple choice",
             "options": ["A. x", "B. y"], "solution": "<answer>A</answer>", "path": path}
            for i, (dtype, path) in enumerate([("video", "./videos/clipAAA01.mp4"), ("video", "./videos/clipBBB02.mp4"),
                                               ("image", "./pic.png"), ("image", "./videos/clipAAA01.mp4")])]
    qfile = tmp_path / "eval_x.json"
    qfile.write_text(json.dumps(rows))
    argv = ["--benchmark", "videor1", "--questions", str(qfile), "--data-root", str(root), "--model", str(tiny_dir),
            "--max-new-tokens", "4", "--batch-size", "4", "--frames", "4", "--max-pixels", str(56 * 56),
            "--min-pixels", str(56 * 56), "--device", "cpu", "--no-progress"]
    assert _run(*argv, "--output-dir", str(tmp_path / "skip")) == 0
    s = _summary(tmp_path / "skip" / "videor1")
    assert s["total"] == 4 and s["failed"] == 2
    reasons = {f["id"]: f["reason"] for f in s["failures"]}
    assert "cannot decode video" in reasons["1"] and "clipBBB02.mp4" in reasons["1"]
    assert reasons["3"].endswith("row 3 (problem_id 3): data_type 'image' but videos/clipAAA01.mp4 is a video file")
    capsys.readouterr()
    rows[3]["data_type"] = "video"  # only the undecodable video is left: the real generator names it
    qfile.write_text(json.dumps(rows))
    rc = _run(*argv, "--output-dir", str(tmp_path / "stop"), "--on-media-error", "stop")
    err = capsys.readouterr().err
    assert rc == 2 and "item 1: cannot decode video" in err and "clipBBB02.mp4" in err and "Traceback" not in err


def test_rope_positions_reach_the_model_and_the_recorded_settings(tiny_dir, holmes_one_bad, tmp_path, monkeypatch):
    """--rope-positions picks the 3D position scheme the evaluated model computes (models.positions), and the
    run records it (a resumed run must use the same)."""
    from videoktr.eval import generate
    from videoktr.models.positions import scheme_of

    for scheme in ("qwen", "transformers"):
        gen = generate.HFGenerator(tiny_dir, frames=4, max_pixels=56 * 56, min_pixels=56 * 56, device="cpu",
                                   rope_positions=scheme)
        assert scheme_of(gen.model) == scheme and gen.describe()["rope_positions"] == scheme
    seen = []

    class Recording(_FakeHF):
        def __init__(self, model_path, **kw):
            super().__init__(model_path, **kw)
            seen.append(kw["rope_positions"])

    monkeypatch.setattr(generate, "HFGenerator", Recording)
    argv = ["--benchmark", "video_holmes", "--questions", str(FIXTURES / "holmes_mini.json"), "--data-root",
            str(holmes_one_bad), "--model", "fake", "--no-progress"]
    assert _run(*argv, "--output-dir", str(tmp_path / "a")) == 0
    assert _run(*argv, "--output-dir", str(tmp_path / "b"), "--rope-positions", "transformers") == 0
    assert seen == [None, "transformers"]  # no flag: the model directory's record decides (next test)


def test_a_world_trained_model_is_evaluated_with_the_prompt_it_trained_with(tmp_path, monkeypatch, capsys):
    """Issue 20 item 11: eval gave a world-trained model the reasoning prompt it never saw (the same clip: wrong
    under eval, right under explain). Its videoktr.json now makes plain the default, and eval's prompt for a clip
    is explain's and the training row's."""
    from videoktr.analysis.explain import prompt_text
    from videoktr import world as synthetic
    from videoktr.eval import generate
    from videoktr.models.info import default_prompt, write_model_info

    world = synthetic.generate_world(tmp_path / "world", synthetic.world_config("short"), n_train=4, n_eval=3,
                                     n_rl=1)
    rows = synthetic.read_rows(world.eval)
    seen: list[str] = []

    class Recording(_FakeHF):
        def generate(self, batch, **kw):
            seen.extend(r.prompt for r in batch)
            return super().generate(batch, **kw)

    monkeypatch.setattr(generate, "HFGenerator", Recording)
    model = tmp_path / "final"
    model.mkdir()
    write_model_info(model, {"prompt": "plain", "method": "ktr"})
    argv = ["--benchmark", "videor1", "--questions", str(world.eval), "--data-root", str(world.root),
            "--model", str(model), "--no-progress"]
    assert _run(*argv, "--output-dir", str(tmp_path / "plain")) == 0
    assert "prompt: plain (the prompt" in capsys.readouterr().err
    assert seen == [synthetic.prompt_text(r) for r in rows]  # what the world trained on
    assert seen == [prompt_text(r["problem"], None, default_prompt(model), "open") for r in rows]  # explain's
    assert _summary(tmp_path / "plain" / "videor1")["settings"]["prompt"] == "plain"
    seen.clear()  # --prompt still decides when given
    assert _run(*argv, "--output-dir", str(tmp_path / "reasoning"), "--prompt", "reasoning") == 0
    assert all("<think>" in p for p in seen) and len(seen) == len(rows)
    seen.clear()  # a model without videoktr.json (a downloaded checkpoint): the reasoning prompt, as before
    (model / "videoktr.json").unlink()
    assert _run(*argv, "--output-dir", str(tmp_path / "plain-less")) == 0
    assert all("<think>" in p for p in seen)


@pytest.fixture
def long_clips(tmp_path):
    """Three 24-frame clips (12 temporal groups at 2 fps against a 2x2 merged grid: the two position schemes put
    the text after them on different positions) and a Video-R1-format question per clip."""
    from builders import random_frames

    from videoktr.data.video import write_video

    root = tmp_path / "data"
    rows = []
    for i in range(3):
        write_video(root / "videos" / f"long{i}.mp4", random_frames(10 + i, n=24), fps=2.0)
        rows.append({"problem_id": i, "problem": "What happens first?", "data_type": "video",
                     "problem_type": "free-form", "solution": "<answer>?</answer>", "path": f"./videos/long{i}.mp4"})
    return root, rows


@pytest.mark.slow
def test_a_checkpoint_is_evaluated_under_the_scheme_it_was_trained_with_without_flags(tiny_dir, long_clips,
                                                                                      tmp_path, capsys):
    """Issue 22: a model directory written under either 3D position scheme (recorded now, or left by an earlier
    videoktr, or another tool's) is evaluated without --rope-positions exactly as with the flag of the scheme it
    was trained with: the same outputs and accuracy; the other scheme gives other outputs on these long clips
    (so the test would fail if the default ignored the record, as it did before)."""
    from builders import SCHEME_DIRS, scheme_dirs

    root, rows = long_clips
    dirs = scheme_dirs(tiny_dir, tmp_path / "models")
    qfile = tmp_path / "eval_long.json"
    common = ["--benchmark", "videor1", "--data-root", str(root), "--prompt", "official", "--max-new-tokens", "8",
              "--temperature", "0", "--frames", "24", "--max-pixels", str(56 * 56), "--min-pixels", str(56 * 56),
              "--batch-size", "3", "--device", "cpu", "--no-progress", "--questions", str(qfile)]

    def evaluate(model, out, *flags):
        assert _run(*common, "--model", str(model), "--output-dir", str(tmp_path / out), *flags) == 0
        scored = [json.loads(x) for x in (tmp_path / out / "videor1" / "scored.jsonl").read_text().splitlines()]
        return [r["output"] for r in scored], _summary(tmp_path / out / "videor1")

    # the answers are what the model says under Qwen's scheme: 100% there, less under transformers'
    qfile.write_text(json.dumps(rows))
    outputs, _ = evaluate(dirs["records_qwen"], "probe", "--rope-positions", "qwen")
    from videoktr.eval.benchmarks import get_benchmark
    from videoktr.text.extract import extract

    items = get_benchmark("videor1").load(root, qfile, None)
    qfile.write_text(json.dumps([{**r, "solution": f"<answer>{extract(o, it).value}</answer>"}
                                 for r, o, it in zip(rows, outputs, items)]))
    under = {s: evaluate(dirs["records_qwen"], f"flag-{s}", "--rope-positions", s) for s in ("qwen", "transformers")}
    assert under["qwen"][0] != under["transformers"][0]  # the schemes differ after these clips
    assert under["qwen"][1]["accuracy"] == 100.0 > under["transformers"][1]["accuracy"]
    capsys.readouterr()
    for name, trained in SCHEME_DIRS.items():
        got_outputs, got = evaluate(dirs[name], f"noflag-{name}")
        assert got_outputs == under[trained][0], name
        assert got["accuracy"] == under[trained][1]["accuracy"], name
        assert got["settings"]["rope_positions"] == trained, name
        err = capsys.readouterr().err
        if name.startswith("records_"):
            assert "3D position scheme" not in err  # a record is used silently
        else:  # no record: it says which it chose
            assert f"records no 3D position scheme; using {trained!r}" in err, (name, err)
    # a flag overrides the record, with one warning
    got_outputs, _ = evaluate(dirs["records_transformers"], "override", "--rope-positions", "qwen")
    assert got_outputs == under["qwen"][0]
    assert "records 3D position scheme 'transformers'; using 'qwen' as asked" in capsys.readouterr().err
