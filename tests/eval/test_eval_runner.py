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
