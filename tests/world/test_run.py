"""The default run (`videoktr train` with no data): synthetic world -> warm start -> RL -> report, on a tiny
configuration; a second run reuses the cached world and warm start and resumes the RL run."""

from __future__ import annotations

import json

import pytest

from videoktr.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning")]


def test_default_run_end_to_end_then_resumed(tmp_path, capsys):
    out, cache = tmp_path / "run", tmp_path / "cache"

    def train(*extra):
        return main(["train", "--model-size", "tiny", "--world-train", "200", "--world-eval", "12",
                     "--world-rl", "8", "--warmstart-max-steps", "4", "--prompts-per-step", "2",
                     "--num-generations", "2", "--max-completion-length", "16", "--attribution-rows", "4",
                     "--save-steps", "1", "--output-dir", str(out), "--cache-dir", str(cache), *extra])

    assert train("--max-steps", "1") == 0
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 1 and report["processes"] == 1
    assert report["accuracy_before"]["overall"]["n"] == 12 and "gain" in report["accuracy_gain"]
    assert set(report["attribution"]["auc"]) == {"visual", "temporal", "entropy"}
    assert "attribution_auc" not in report and "attribution_precision" not in report  # one copy of the table
    assert report["train"]["final_model"] == str(out / "final") and (out / "final" / "config.json").is_file()
    assert (out / "training.png").is_file() and (out / "run_identity.json").is_file()
    assert report["model"].startswith(str(cache / "warmstart-"))
    card = (out / "final" / "README.md").read_text()  # videoktr's model card, not TRL's "fine-tuned version of [None]"
    assert f"**Base model:** `{report['model']}`" in card and "[None]" not in card
    # the prompt it trained with, beside the model and its checkpoints: eval and explain default to it
    for model in (out / "final", out / "checkpoint-1"):
        assert json.loads((model / "videoktr.json").read_text())["prompt"] == "plain"
    # the result, on the console and in the card
    assert "## Results" in card and "| held-out accuracy after | " in card and "| paired gain | " in card
    printed = capsys.readouterr().out
    assert "held-out accuracy before" in printed and "attribution AUC, visual" in printed
    assert printed.index("held-out accuracy after") < printed.index("report: ")
    built = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    # the second run builds nothing again (every cached file untouched, none added) and continues the RL run
    assert train("--max-steps", "2") == 0
    printed = capsys.readouterr().out
    assert "resuming from" in printed and json.loads((out / "report.json").read_text())["steps"] == 2
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()} == built
    # the same command once more: the run is complete, nothing is evaluated or trained again (issue 20 item 4)
    report = (out / "report.json").read_text()
    assert train("--max-steps", "2") == 0
    printed = capsys.readouterr().out
    assert f"{out} is already complete: 2 of 2 steps" in printed and "[3/5]" not in printed
    assert (out / "report.json").read_text() == report and not (out / "checkpoint-3").exists()
    # another method in the same directory is refused, naming the option
    assert train("--max-steps", "3", "--method", "grpo") == 2
    assert "rl.method: 'ktr' -> 'grpo'" in capsys.readouterr().err
