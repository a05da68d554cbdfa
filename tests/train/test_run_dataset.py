"""`videoktr train --data ...`: Video-R1-format rows end to end on the tiny model (bad media skipped, recorded)."""

from __future__ import annotations

import json

import pytest
import torch
from videor1_fixture import write_videor1_fixture

from videoktr.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning")]


@pytest.mark.parametrize("method", ["grpo", "ktr", "entropy", "twgrpo", "tgrpo"])
def test_train_on_videor1_rows(tiny_dir, tmp_path, method):
    fx = write_videor1_fixture(tmp_path / "data")
    out = tmp_path / f"run-{method}"
    code = main(["train", "--data", str(fx.data_file), "--data-root", str(fx.root), "--model", str(tiny_dir),
                 "--method", method, "--max-steps", "2", "--prompts-per-step", "2", "--num-generations", "4",
                 "--max-completion-length", "8", "--output-dir", str(out), "--save-steps", "100"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 2 and report["method"] == method
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    kinds = sorted(s["kind"] for s in skipped)
    assert kinds == ["missing_media", "undecodable_media"]
    assert report["skipped_samples"] == 2 and report["rows"] == 18  # the image row trains too
    assert (out / "training.png").is_file()
    if method == "ktr":  # the trained model is written ready to evaluate: the weights of the last step
        from videoktr.models.factory import load_model, load_processor

        assert report["train"]["final_model"] == str(out / "final")
        final = load_model(out / "final").state_dict()
        assert load_processor(out / "final").tokenizer is not None
        last = load_model(out / "checkpoint-2").state_dict()
        assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in final)


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    fx = write_videor1_fixture(tmp_path / "data")
    code = main(["train", "--data", str(fx.data_file), "--data-root", str(fx.root), "--output-dir", str(tmp_path / "o")])
    assert code == 2 and "--model" in capsys.readouterr().err


def test_bad_ratio_is_named(tmp_path, capsys):
    assert main(["train", "--ratio", "1.5", "--output-dir", str(tmp_path / "o")]) == 2
    assert "ratio must be in (0, 1]" in capsys.readouterr().err


def test_resume_continues_the_same_run_and_refuses_another(tiny_dir, tmp_path, capsys):
    fx = write_videor1_fixture(tmp_path / "data")
    out = tmp_path / "run"

    def train(*extra):
        return main(["train", "--data", str(fx.data_file), "--data-root", str(fx.root), "--model", str(tiny_dir),
                     "--prompts-per-step", "1", "--num-generations", "4", "--max-completion-length", "8",
                     "--output-dir", str(out), "--save-steps", "1", *extra])

    assert train("--max-steps", "1") == 0 and (out / "checkpoint-1").is_dir()
    assert json.loads((out / "report.json").read_text())["media_check"]["probed_here"] == 19
    # more steps (and another save cadence) continue the same run; the media check comes from its cache
    assert train("--max-steps", "2", "--save-steps", "2", "--media-workers", "1") == 0
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 2
    # only the missing file is probed again
    assert report["media_check"] == {"files": 19, "from_cache": 18, "probed_here": 1, "processes": 1}
    assert "resuming from" in capsys.readouterr().out
    # another option: refused, naming it, before any training; nothing in the directory is lost
    checkpoints = sorted(p.name for p in out.glob("checkpoint-*"))
    assert train("--max-steps", "3", "--ratio", "0.5") == 2
    err = capsys.readouterr().err
    assert "different run" in err and "ktr.ratio: 0.2 -> 0.5" in err and "--no-resume" in err
    assert sorted(p.name for p in out.glob("checkpoint-*")) == checkpoints
    # every checkpoint records the identity of the run that wrote it: the directory's identity file is not needed
    (out / "run_identity.json").unlink()
    assert train("--max-steps", "3") == 0 and "resuming from" in capsys.readouterr().out
    # --no-resume starts over from the model, moves the earlier run's files aside and records the new identity
    assert train("--max-steps", "1", "--ratio", "0.5", "--no-resume") == 0
    assert json.loads((out / "run_identity.json").read_text())["config"]["ktr"]["ratio"] == 0.5
    [moved] = out.glob("superseded-*")
    assert sorted(p.name for p in moved.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
