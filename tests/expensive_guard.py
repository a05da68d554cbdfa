"""For tests of errors that must come before any expensive work (importable as `expensive_guard`: tests/ is on
pytest's path): `forbid_expensive_work(monkeypatch)` makes every expensive step of `videoktr train` fail the
test if it is reached: the synthetic world and warm start, the start-up media check, the model and processor
loads. `reach_media_check(monkeypatch)` instead stops a data run with `ReachedMediaCheck` at the media check,
for tests that want a run to get that far (its options accepted, config.json written)."""

from __future__ import annotations

import pytest


class ReachedMediaCheck(Exception):
    """Raised by the patched media check: the run got past every option check."""


def _forbidden(what: str):
    def fail(*args, **kwargs):
        pytest.fail(f"expensive work ran before the error was reported: {what}")

    return fail


def forbid_expensive_work(monkeypatch) -> None:
    from videoktr import world as synthetic
    from videoktr.data import videor1
    from videoktr.models import factory
    from videoktr.world import run as world_run, warmstart

    monkeypatch.setattr(world_run, "prepare_world_and_model", _forbidden("synthetic world / warm start"))
    monkeypatch.setattr(synthetic, "generate_world", _forbidden("synthetic world"))
    monkeypatch.setattr(warmstart, "warm_start", _forbidden("warm start"))
    monkeypatch.setattr(videor1, "load_videor1", _forbidden("start-up media check"))
    monkeypatch.setattr(factory, "load_model", _forbidden("model load"))
    monkeypatch.setattr(factory, "load_processor", _forbidden("processor load"))


def reach_media_check(monkeypatch) -> None:
    from videoktr.data import videor1

    forbid_expensive_work(monkeypatch)

    def stop(*args, **kwargs):
        raise ReachedMediaCheck

    monkeypatch.setattr(videor1, "load_videor1", stop)


def write_data(root) -> tuple:
    """A one-row Video-R1 JSONL file and its (empty) media directory: enough for a run to reach the media check."""
    import json
    from pathlib import Path

    root = Path(root)
    media = root / "media"
    media.mkdir(parents=True, exist_ok=True)
    data = root / "rows.jsonl"
    data.write_text(json.dumps({"problem": "What is shown?", "solution": "<answer>A</answer>",
                                "problem_type": "multiple choice", "data_type": "video", "path": "a.mp4",
                                "options": ["A. x", "B. y"]}) + "\n")
    return data, media


def write_fake_checkpoint(path, model_type: str = "qwen2_5_vl", weights: bool = True):
    """A directory that looks like a checkpoint to every check that reads no weights: config.json with
    `model_type` and an empty model.safetensors."""
    import json
    from pathlib import Path

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": model_type}))
    if weights:
        (path / "model.safetensors").write_bytes(b"")
    return path
