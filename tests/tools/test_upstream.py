"""The reproductions of dependency problems in tools/upstream (docs/upstream.md), run against the pinned stack:
each must still report its problem. The day a dependency fixes one, its test fails here, and the workaround
in videoktr (and the sentence in the docs) can go."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools" / "upstream"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "upstream.md"


def run_script(name: str, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": ""}  # a plain install: nothing of videoktr on the path
    return subprocess.run([sys.executable, str(TOOLS / name)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)


def test_transformers_positions_after_a_long_video(tmp_path):
    """transformers 5.3+ put the text after a long video at the video's start + grid side (models/positions.py
    installs Qwen's scheme instead); the <= 5.2 truncation of fractional seconds per grid is gone in 5.23."""
    out = run_script("transformers_rope_index.py", tmp_path)
    assert out.returncode == 0, out.stderr
    assert "text after a long video: AFFECTED" in out.stdout, out.stdout
    assert "text after the video, expected [26, 27, 28], transformers [5, 6, 7]" in out.stdout
    assert "fractional second_per_grid_ts: FIXED" in out.stdout


@pytest.mark.slow
def test_trainer_resume_restores_only_the_untied_lm_head(tmp_path):
    """transformers' Trainer resumes a Qwen2.5-VL checkpoint with none of its renamed weights: only
    lm_head.weight (untied) loads (train/checkpoint.py loads them under the model's names instead)."""
    out = run_script("transformers_trainer_resume.py", tmp_path)
    assert out.returncode == 0, out.stderr
    assert "AFFECTED" in out.stdout, out.stdout
    assert "weights restored from checkpoint-1: 1 of " in out.stdout
    assert "the only weights restored: ['lm_head.weight']" in out.stdout


@pytest.mark.slow
def test_trl_grpo_drops_the_video_from_the_loss_forward(tmp_path):
    """TRL's GRPOTrainer samples with the video and computes the loss's log-probs without it (the trainer's
    overrides in train/trainer.py pass it)."""
    out = run_script("trl_grpo_video.py", tmp_path)
    assert out.returncode == 0, out.stderr
    assert "AFFECTED: the log-prob passes of the loss run on the video's placeholder tokens" in out.stdout, out.stdout
    assert "with the video: 1, without: 1" in out.stdout


def _lmms_script():
    spec = importlib.util.spec_from_file_location("lmms_eval_scoring", TOOLS / "lmms_eval_scoring.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lmms_eval_scoring_script(tmp_path):
    """lmms-eval is not part of the pinned stack (it has its own environment, README "lmms-eval"): here the
    script says so; where lmms-eval is installed it must report both problems the plugin works around."""
    out = run_script("lmms_eval_scoring.py", tmp_path)
    if importlib.util.find_spec("lmms_eval") is None:
        assert out.returncode == 3 and "lmms-eval is not installed" in out.stdout, out.stdout
    else:
        assert out.returncode == 0, out.stderr
        assert "loglikelihood pair through unwrap_generation_output: AFFECTED" in out.stdout, out.stdout
        assert "multiple_choice picks the likeliest option: AFFECTED" in out.stdout


def test_lmms_eval_checks_tell_the_behaviours_apart(capsys):
    """Without lmms-eval, the script's checks run on stand-ins that behave as lmms-eval 0.7.3 does (str() of a
    non-text response; the option with the smallest value) and as the fixed behaviour would: they tell them apart."""
    import numpy as np

    script = _lmms_script()
    as_text = lambda output: (output if isinstance(output, str) else str(output), None)  # noqa: E731
    assert script.check_unwrap(as_text) is False
    assert script.check_unwrap(lambda output: (output, None)) is True

    def picks(choose):
        return lambda task, doc, results: {"acc": float(choose([r[0] for r in results]) == task.doc_to_target(doc))}

    assert script.check_multiple_choice(picks(np.argmin)) is False
    assert script.check_multiple_choice(picks(np.argmax)) is True
    printed = capsys.readouterr().out
    assert printed.count("AFFECTED") == 2 and printed.count("FIXED") == 2


def test_docs_name_every_script_and_its_versions():
    text = DOCS.read_text()
    for script in sorted(TOOLS.glob("*.py")):
        assert f"tools/upstream/{script.name}" in text, script.name
