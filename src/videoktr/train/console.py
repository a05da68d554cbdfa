"""What a training run shows while it runs: one compact line per logging step on the console, every logged
dict in full in the run's `train_log.jsonl` (TRL's own progress bar prints a 25-key dict of strings per step)."""

from __future__ import annotations

import json
from pathlib import Path

from transformers.trainer_callback import ProgressCallback

LOG_NAME = "train_log.jsonl"


def compact_line(logs: dict, step: int, max_steps: int) -> str:
    """'step 20/500 | reward 1.23 | accuracy 0.61 | update 0.36 | kl 0.0012 | clip 0.00 | 0.35 s/step' from one
    logged dict; fields the run does not log are left out."""
    parts = [f"step {step}/{max_steps}"]
    accuracy = next((k for k in logs if k.startswith("rewards/") and "accuracy" in k and k.endswith("/mean")), None)
    for label, key, fmt in (("reward", "reward", ".3g"), ("accuracy", accuracy, ".3g"),
                            ("update", "ktr/update_ratio", ".2f"), ("no-grad groups", "frac_reward_zero_std", ".2f"),
                            ("kl", "kl", ".3g"), ("clip", "clip_ratio", ".2f")):
        value = logs.get(key) if key else None
        if isinstance(value, (int, float)):
            parts.append(f"{label} {value:{fmt}}")
    if isinstance(logs.get("step_time"), (int, float)):
        parts.append(f"{logs['step_time']:.2f} s/step")
    return " | ".join(parts)


def _logged_step(line: str) -> float:
    """The step of one train_log.jsonl line (an unreadable line: infinity, dropped with the redone steps)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


class CompactProgress(ProgressCallback):
    """transformers' progress bar, with each logging step written as `compact_line` instead of the whole dict,
    and every logged dict appended to `<output_dir>/train_log.jsonl` (main process only)."""

    def __init__(self, output_dir: str | Path):
        super().__init__()
        self.log_path = Path(output_dir) / LOG_NAME

    def on_train_begin(self, args, state, control, **kwargs):
        """A resumed run redoes the steps after its checkpoint: their lines from the invocation that was stopped
        are dropped (the log then has each step once, as log_history.json)."""
        super().on_train_begin(args, state, control, **kwargs)
        if state.is_world_process_zero and self.log_path.is_file():
            kept = [line for line in self.log_path.read_text().splitlines(keepends=True)
                    if _logged_step(line) <= state.global_step]
            self.log_path.write_text("".join(kept))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        with self.log_path.open("a") as f:
            f.write(json.dumps({"step": state.global_step, **logs}, default=float) + "\n")
        if "reward" in logs and self.training_bar is not None:
            self.training_bar.write(compact_line(logs, state.global_step, state.max_steps))


def use_compact_progress(trainer, output_dir: str | Path) -> None:
    """Swap the trainer's progress bar for `CompactProgress` (a no-op when the bar is off)."""
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(CompactProgress(output_dir))
