"""`videoktr.json`: what videoktr records beside a model it trained (a run's `final/` and its checkpoints), so
that the commands that read the model later prompt it the way it was trained.

    {"prompt": "plain", "method": "ktr", "base_model": "/abs/path/or/hub-id", "data": "..."}

"prompt" is the prompt style of its training rows: "plain" (the bare question, and its options: the synthetic
world's rows) or "reasoning" (the <think>/<answer> instruction of Video-R1 rows, `text.prompts.reasoning_text`).
`videoktr eval` and `videoktr explain` default to it (`default_prompt`).
"""

from __future__ import annotations

import json
from pathlib import Path

MODEL_INFO_NAME = "videoktr.json"
TRAINED_PROMPTS = ("plain", "reasoning")


def write_model_info(model_dir: str | Path, info: dict) -> Path:
    """Write `info` as `<model_dir>/videoktr.json`."""
    path = Path(model_dir) / MODEL_INFO_NAME
    path.write_text(json.dumps(info, indent=2, default=str) + "\n")
    return path


def read_model_info(model_dir: str | Path) -> dict:
    """`<model_dir>/videoktr.json` ({} when absent or unreadable)."""
    try:
        info = json.loads((Path(model_dir) / MODEL_INFO_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def trained_prompt(model_dir: str | Path) -> str | None:
    """The prompt style the model in `model_dir` was trained with: its videoktr.json's; for a directory written
    before that file existed, "plain" for a synthetic-world warm start (warmstart.json) or a run whose model card
    names the synthetic world; None when nothing says."""
    d = Path(model_dir)
    recorded = read_model_info(d).get("prompt")
    if recorded in TRAINED_PROMPTS:
        return recorded
    if (d / "warmstart.json").is_file():
        return "plain"
    card = d / "README.md"
    text = card.read_text(encoding="utf-8", errors="replace") if card.is_file() else ""
    if "videoktr.world" in text or "videoktr.data.synthetic" in text:  # the world's module (before 0.2: the second)
        return "plain"
    return None


def default_prompt(model_dir: str | Path | None) -> str:
    """The prompt `videoktr eval` and `videoktr explain` use when none is given: the one the model was trained
    with (`trained_prompt`), else the reasoning prompt (Video-R1's, what released checkpoints expect)."""
    return (trained_prompt(model_dir) if model_dir is not None else None) or "reasoning"
