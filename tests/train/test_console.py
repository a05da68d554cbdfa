"""What a run shows: a compact line per logging step (the full dicts in train_log.jsonl), metrics in TensorBoard,
no warnings that do not apply, and plots with smoothed curves and their own panels."""

from __future__ import annotations

import json
import math

import pytest
from videor1_fixture import write_videor1_fixture

from videoktr.cli import main
from videoktr.train.console import compact_line
from videoktr.train.report import smooth


def test_compact_line_shows_the_numbers_that_matter():
    logs = {"reward": 1.234, "rewards/accuracy/mean": 0.61, "ktr/update_ratio": 0.364, "kl": 0.00123,
            "clip_ratio": 0.0, "step_time": 0.351, "completions/mean_length": 8, "frac_reward_zero_std": 0.25}
    assert compact_line(logs, 20, 500) == ("step 20/500 | reward 1.23 | accuracy 0.61 | update 0.36 | "
                                           "no-grad groups 0.25 | kl 0.00123 | clip 0.00 | 0.35 s/step")
    assert compact_line({"reward": 1.0}, 1, 2) == "step 1/2 | reward 1"


def test_smoothing_is_a_bias_corrected_moving_average():
    assert smooth([1.0, 1.0, 1.0]) == pytest.approx([1.0, 1.0, 1.0])
    out = smooth([0.0, float("nan"), 10.0], weight=0.5)
    assert out[0] == 0.0 and out[1] == 0.0 and out[2] == pytest.approx(5 / 0.75)
    assert math.isnan(smooth([float("nan")])[0])


def _drawn_figures(monkeypatch) -> list:
    """Every matplotlib figure saved from here on (savefig still writes the file)."""
    from matplotlib.figure import Figure

    saved, original = [], Figure.savefig

    def savefig(self, *args, **kwargs):
        saved.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


def test_training_plot_draws_only_what_the_run_logged(tmp_path, monkeypatch):
    """Issue 20 item 10: half of the default run's training.png was empty or flat (KL "not logged by this run"
    with rl.beta 0, the clip ratio 0 at every step). Such series are named in a note instead of drawn."""
    from videoktr.train.report import history_panels, plot_history

    acc = "rewards/accuracy_reward/mean"
    default_run = [{"step": i, "reward": 0.1 * i, acc: 0.5, "ktr/update_ratio": 0.3, "frac_reward_zero_std": 0.25,
                    "clip_ratio": 0.0, "loss": 0.0} for i in range(1, 6)] + [{"step": 5, "train_runtime": 3.0}]
    panels, notes = history_panels(default_run, acc)
    assert [title for title, _ in panels] == ["rewards", "what the update reaches"]
    assert notes == ["kl: not logged (rl.beta 0: no KL term)",
                     "clip_ratio: 0 at every step (one policy update per batch (rl.num_iterations 1))"]
    figures = _drawn_figures(monkeypatch)
    plot_history(default_run, tmp_path / "training.png", accuracy_key=acc, heldout=(0.6, 0.7))
    [fig] = figures
    assert [ax.get_title() for ax in fig.axes] == ["rewards", "what the update reaches"]
    assert any("not drawn: kl: not logged" in t.get_text() for t in fig.texts)
    assert all(ax.lines for ax in fig.axes)  # no empty panel
    # a run with a KL term and clipping (grpo: no mask) draws them, and says nothing of the mask it has not got
    grpo = [{"step": i, "reward": 0.1, "kl": 0.01 * i, "clip_ratio": 0.02, "frac_reward_zero_std": 0.5}
            for i in range(1, 4)]
    panels, notes = history_panels(grpo, None)
    assert [t for t, _ in panels] == ["rewards", "what the update reaches", "KL to the reference policy",
                                      "clip ratio"] and notes == []
    plot_history(grpo, tmp_path / "grpo.png", accuracy_key=None)
    assert len(figures[-1].axes) == 4 and not figures[-1].texts


@pytest.mark.slow
def test_run_logs_to_tensorboard_with_a_readable_console(tiny_dir, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import warnings

    fx = write_videor1_fixture(tmp_path / "data")
    out = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["train", "--data", str(fx.data_file), "--data-root", str(fx.root), "--model", str(tiny_dir),
                     "--output-dir", str(out), "--prompts-per-step", "1", "--num-generations", "4",
                     "--max-completion-length", "8", "--max-steps", "2", "--report-to", "tensorboard",
                     "--log-completions", "--gradient-checkpointing"]) == 0
    # transformers' deprecation of the gradient_checkpointing names (TRL uses them at every step) is not shown
    assert not [w for w in caught if "gradient_checkpointing" in str(w.message)]
    captured = capsys.readouterr()
    assert "step 1/2 | reward" in captured.err + captured.out
    assert "{'loss'" not in captured.err + captured.out  # no raw dict per step
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert any("completions/mean_length" in entry for entry in logged)  # the full dicts are kept
    [events] = {p.parent for p in (out / "runs").rglob("events.out.tfevents.*")}
    tags = EventAccumulator(str(events)).Reload().Tags()["scalars"]
    assert "train/reward" in tags and "train/ktr/attributed_share" in tags


def test_unknown_or_missing_tracker_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    import importlib.util

    assert main(["train", "--report-to", "mlflow", "--output-dir", str(tmp_path / "o")]) == 2
    assert "unknown tracker 'mlflow'" in capsys.readouterr().err
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert main(["train", "--report-to", "wandb", "--output-dir", str(tmp_path / "o")]) == 2
    assert "pip install wandb" in capsys.readouterr().err
