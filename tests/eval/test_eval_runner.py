"""Resumable runner with fake generators: a run killed half-way resumes without regenerating finished items;
cut-off lines, changed settings and missing media are handled; the progress bar reports throughput."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from videoktr.eval.benchmarks import load_items
from videoktr.eval.runner import (GenerationSettings, MissingMediaError, RunConfigMismatch, build_requests,
                                  load_predictions_file, run_generation)

FIXTURES = Path(__file__).parent / "fixtures"


class Killed(RuntimeError):
    pass


class FakeGenerator:
    """Answers every question correctly; raises Killed once `die_after` items were produced."""

    def __init__(self, die_after: int | None = None):
        self.die_after = die_after
        self.seen: list[str] = []
        self.kwargs: list[dict] = []

    def generate(self, batch, *, max_new_tokens, temperature, top_p):
        if self.die_after is not None and len(self.seen) + len(batch) > self.die_after:
            raise Killed("simulated kill")
        self.seen += [r.item.id for r in batch]
        self.kwargs.append(dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p))
        assert all(r.video is not None and r.video.is_file() for r in batch)
        assert all("<think>" in r.prompt and "Options:\nA. " in r.prompt for r in batch)
        return [f"<think>...</think><answer>{r.item.answer}</answer>" for r in batch]


@pytest.fixture
def holmes(tmp_path):
    root = tmp_path / "data"
    (root / "videos").mkdir(parents=True)
    for vid in ("clipAAA01", "clipBBB02"):
        (root / "videos" / f"{vid}.mp4").write_bytes(b"")  # only existence is checked here
    return root, load_items("video_holmes", questions=FIXTURES / "holmes_mini.json")


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_killed_run_resumes_without_regenerating(holmes, tmp_path):
    root, items = holmes
    out = tmp_path / "out"
    settings = GenerationSettings(batch_size=3)
    first = FakeGenerator(die_after=7)  # dies on the third batch: 6 items are done and flushed
    with pytest.raises(Killed):
        run_generation(items, first, out, data_root=root, settings=settings, progress=False)
    done_lines = _lines(out / "predictions.jsonl")
    assert [json.loads(x)["id"] for x in done_lines] == [it.id for it in items[:6]]
    second = FakeGenerator()
    outputs = run_generation(items, second, out, data_root=root, settings=settings, progress=False)
    assert second.seen == [it.id for it in items[6:]]  # finished items are not regenerated
    assert _lines(out / "predictions.jsonl")[:6] == done_lines
    assert len(_lines(out / "predictions.jsonl")) == 10 and len(outputs) == 10
    assert second.kwargs[0] == dict(max_new_tokens=1024, temperature=0.1, top_p=0.001)  # Video-R1's settings
    third = FakeGenerator()
    run_generation(items, third, out, data_root=root, settings=settings, progress=False)
    assert third.seen == []


def test_cut_off_last_line_is_dropped_and_regenerated(holmes, tmp_path):
    root, items = holmes
    out = tmp_path / "out"
    run_generation(items[:4], FakeGenerator(), out, data_root=root, progress=False)
    with (out / "predictions.jsonl").open("a") as f:
        f.write('{"id": "clipAAA01/5", "outp')  # a write interrupted by the kill
    assert len(load_predictions_file(out / "predictions.jsonl")) == 4
    gen = FakeGenerator()
    run_generation(items, gen, out, data_root=root, progress=False)
    assert gen.seen == [it.id for it in items[4:]]
    rows = [json.loads(x) for x in _lines(out / "predictions.jsonl")]
    assert [r["id"] for r in rows] == [it.id for it in items]


def test_resume_refuses_changed_settings(holmes, tmp_path):
    root, items = holmes
    out = tmp_path / "out"
    run_generation(items[:2], FakeGenerator(), out, data_root=root, progress=False)
    with pytest.raises(RunConfigMismatch, match="temperature"):
        run_generation(items, FakeGenerator(), out, data_root=root, progress=False,
                       settings=GenerationSettings(temperature=0.7))
    # batch size does not change outputs: allowed
    run_generation(items, FakeGenerator(), out, data_root=root, progress=False,
                   settings=GenerationSettings(batch_size=5))


def test_missing_media_is_an_error_before_generation(holmes, tmp_path):
    root, items = holmes
    (root / "videos" / "clipBBB02.mp4").unlink()
    gen = FakeGenerator()
    with pytest.raises(MissingMediaError, match=r"(?s)5 media file\(s\) not found.*clipBBB02/1: .*clipBBB02\.mp4"):
        run_generation(items, gen, tmp_path / "out", data_root=root, progress=False)
    assert gen.seen == []


def test_wrong_number_of_outputs_is_an_error(holmes, tmp_path):
    root, items = holmes

    class Short(FakeGenerator):
        def generate(self, batch, **kw):
            return super().generate(batch, **kw)[:-1]

    with pytest.raises(RuntimeError, match="returned 2 outputs for 3 requests"):
        run_generation(items, Short(), tmp_path / "out", data_root=root, settings=GenerationSettings(batch_size=3),
                       progress=False)


def test_progress_bar_shows_throughput(holmes, tmp_path, capsys):
    root, items = holmes
    run_generation(items, FakeGenerator(), tmp_path / "out", data_root=root, progress=True, desc="video_holmes")
    err = capsys.readouterr().err
    assert "video_holmes" in err and "10/10" in err and "item/s" in err


def test_requests_carry_images_and_official_prompts():
    items = load_items("mmmu", FIXTURES)
    reqs = build_requests(items, FIXTURES, "official")
    assert [len(r.images) for r in reqs] == [1, 1, 2] and all(isinstance(b, bytes) for b in reqs[2].images)
    assert reqs[0].video is None and reqs[0].prompt.endswith("Answer with the letter of the correct option directly.")
    tasks = {it.task for it in items}
    assert tasks == {None}


# ------------------------------------------------------------------ media that cannot be read (issue 10, case 10)


class DecodingGenerator(FakeGenerator):
    """Decodes every request's video as a real generator does (a bad file raises VideoDecodeError)."""

    def generate(self, batch, **kw):
        from videoktr.data.video import read_video

        for r in batch:
            read_video(r.video, max_frames=4)
        return super().generate(batch, **kw)


@pytest.fixture
def holmes_one_bad(tmp_path):
    """clipAAA01.mp4 decodes; clipBBB02.mp4 (the last 5 items) is not a video."""
    import numpy as np

    from videoktr.data.video import write_video

    root = tmp_path / "data"
    write_video(root / "videos" / "clipAAA01.mp4", np.zeros((4, 32, 32, 3), dtype=np.uint8), fps=2.0)
    (root / "videos" / "clipBBB02.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 20)
    return root, load_items("video_holmes", questions=FIXTURES / "holmes_mini.json")


def test_undecodable_video_is_recorded_as_failed_and_the_run_goes_on(holmes_one_bad, tmp_path):
    from videoktr.eval.runner import load_failures

    root, items = holmes_one_bad
    out = tmp_path / "out"
    settings = GenerationSettings(batch_size=3)  # the second batch mixes good and bad items
    gen = DecodingGenerator()
    outputs = run_generation(items, gen, out, data_root=root, settings=settings, progress=False)
    good = [it for it in items if it.id.startswith("clipAAA01")]
    bad = [it for it in items if it.id.startswith("clipBBB02")]
    assert set(outputs) == {it.key for it in good} and gen.seen == [it.id for it in good]
    failures = load_failures(out)
    assert list(failures) == [it.key for it in bad]
    row = failures[bad[0].key]
    assert row["id"] == "clipBBB02/1" and row["file"].endswith("clipBBB02.mp4")
    assert "cannot decode video" in row["reason"]
    # a resumed run neither regenerates the done items nor retries the failed ones ...
    again = DecodingGenerator()
    assert run_generation(items, again, out, data_root=root, settings=settings, progress=False) == outputs
    assert again.seen == [] and list(load_failures(out)) == [it.key for it in bad]
    # ... unless asked to, once the file is fixed
    import shutil

    shutil.copy(root / "videos" / "clipAAA01.mp4", root / "videos" / "clipBBB02.mp4")
    retry = DecodingGenerator()
    outputs = run_generation(items, retry, out, data_root=root, settings=settings, progress=False, retry_failed=True)
    assert retry.seen == [it.id for it in bad] and len(outputs) == 10 and load_failures(out) == {}


def test_undecodable_video_stops_naming_item_and_file_when_asked(holmes_one_bad, tmp_path):
    from videoktr.eval.runner import MediaFailure

    root, items = holmes_one_bad
    out = tmp_path / "out"
    gen = DecodingGenerator()
    with pytest.raises(MediaFailure, match=r"item clipBBB02/1: cannot decode video .*clipBBB02\.mp4"):
        run_generation(items, gen, out, data_root=root, settings=GenerationSettings(batch_size=3), progress=False,
                       on_media_error="stop")
    # the good items of the failing batch were kept for a resume
    assert [json.loads(x)["id"] for x in _lines(out / "predictions.jsonl")] == [it.id for it in items[:5]]


def test_generator_media_error_names_the_failing_requests(holmes, tmp_path):
    from videoktr.eval.runner import MediaError, load_failures

    root, items = holmes

    class Picky(FakeGenerator):
        def generate(self, batch, **kw):
            bad = [(i, r.video, f"cannot decode video {r.video}: broken") for i, r in enumerate(batch)
                   if r.item.id in ("clipAAA01/2", "clipBBB02/3")]
            if bad:
                raise MediaError(bad)
            return super().generate(batch, **kw)

    gen = Picky()
    outputs = run_generation(items, gen, tmp_path / "out", data_root=root, settings=GenerationSettings(batch_size=4),
                             progress=False)
    assert len(outputs) == 8 and len(gen.seen) == 8
    assert sorted(k[1] for k in load_failures(tmp_path / "out")) == ["clipAAA01/2", "clipBBB02/3"]


def _videor1_rows(tmp_path):
    """A Video-R1 question file whose row 2 says data_type 'image' but points at a video, and the media."""
    import numpy as np
    from PIL import Image

    from videoktr.data.video import write_video

    root = tmp_path / "data"
    write_video(root / "clips" / "ok.mp4", np.zeros((4, 32, 32, 3), dtype=np.uint8), fps=2.0)
    Image.new("RGB", (32, 32)).save(root / "clips" / "pic.png")

    def row(i, dtype, path):
        return {"problem_id": i, "problem": "Which?", "data_type": dtype, "problem_type": "multiple choice",
                "options": ["A. x", "B. y"], "solution": "<answer>A</answer>", "path": f"./clips/{path}"}

    qfile = tmp_path / "eval_mixed.json"
    qfile.write_text(json.dumps([row(1, "video", "ok.mp4"), row(2, "image", "pic.png"), row(3, "image", "ok.mp4"),
                                 row(4, "video", "pic.png")]))
    return root, qfile


class AnyMedia(FakeGenerator):
    def generate(self, batch, **kw):
        self.seen += [r.item.id for r in batch]
        return [f"<answer>{r.item.answer}</answer>" for r in batch]


def test_wrong_data_type_says_so(tmp_path):
    from videoktr.eval.runner import MediaFailure, load_failures

    root, qfile = _videor1_rows(tmp_path)
    items = load_items("videor1", questions=qfile)
    gen = AnyMedia()
    with pytest.raises(MediaFailure, match=r"(?s)row 2 \(problem_id 3\): data_type 'image' but clips/ok\.mp4 is a "
                                           r"video file.*row 3 \(problem_id 4\): data_type 'video' but "
                                           r"clips/pic\.png is an image file"):
        run_generation(items, gen, tmp_path / "stop", data_root=root, progress=False, on_media_error="stop")
    assert gen.seen == []  # found before any generation
    outputs = run_generation(items, gen, tmp_path / "skip", data_root=root, progress=False)
    assert gen.seen == ["1", "2"] and len(outputs) == 2
    failures = load_failures(tmp_path / "skip")
    assert failures[("", "3")]["reason"].endswith("row 2 (problem_id 3): data_type 'image' but clips/ok.mp4 is a "
                                                  "video file")
    assert "is an image file" in failures[("", "4")]["reason"]
