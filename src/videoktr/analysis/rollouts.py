"""Reading the rollout log a training run writes (train/rollout_log.py): `load_rollouts(run_dir, step)` returns one
record per logged response, in the shape the explanation page (`analysis.page.render`) and `videoktr analyze` read:

    {"step", "rank", "row", "prompt_group", "method", "ratio",
     "question", "prompt" (the conversation), "videos", "images", "solution", "response",
     "tokens" (text of each response token), "token_ids", "prompt_ids", "prompt_length",
     "reward", "rewards_per_func", "advantage", "attributed",
     "scores":   {"visual", "temporal", "entropy"}: per-token floats (None where undefined) or None,
     "selected": {"visual", "temporal", "entropy", "union"}: per-token booleans or None,
     "weights":  per-token weights the loss used, or None (grpo, tgrpo),
     "logp":     {"full", "visual", "temporal", "old"}: per-token log-probabilities or None,
     "permutation": the temporal permutation of the clip's temporal groups (None: no temporal perturbation),
     "frames":   {"videos", "images", "fps", "min_frames", "max_frames", "backend"}: the media and how the run
                 sampled their frames (the log holds no pixels: `analysis.explain.rollout_records` decodes them for
                 the page); "media": the same,
     "settings": the run's settings (method, ratio, signals, selection, ...; the file's metadata)}
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..train.rollout_log import META_KEY, ROLLOUT_DIR, SIGNALS

ENABLE_HINT = ("rollouts are written during training every run.log_rollouts_every steps (--log-rollouts-every N; "
               "0 turns it off)")
_NAME = re.compile(r"step-(\d+)-rank(\d+)\.parquet$")


class NoRollouts(FileNotFoundError):
    """A run directory without a rollout log (or without the asked-for step)."""


def rollout_files(run_dir: str | Path) -> dict[int, list[Path]]:
    """{step: [files of its ranks]} of a run directory's rollout log, steps ascending."""
    folder = Path(run_dir) / ROLLOUT_DIR
    out: dict[int, list[Path]] = {}
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            m = _NAME.match(p.name)
            if m:
                out.setdefault(int(m.group(1)), []).append(p)
    return dict(sorted(out.items()))


def rollout_steps(run_dir: str | Path) -> list[int]:
    return list(rollout_files(run_dir))


def _record(row: dict, settings: dict) -> dict:
    video = settings.get("video") or {}
    prompt = row.get("prompt")
    try:
        prompt = json.loads(prompt) if prompt else None
    except ValueError:
        pass
    return {
        "step": row["step"], "rank": row["rank"], "row": row["row"], "prompt_group": row["prompt_group"],
        "method": row["method"], "ratio": row["ratio"],
        "question": row["question"], "prompt": prompt, "videos": list(row["videos"] or []),
        "images": list(row["images"] or []), "solution": row["solution"], "response": row["response"],
        "tokens": list(row["tokens"]), "token_ids": list(row["completion_ids"]),
        "prompt_ids": list(row["prompt_ids"]), "prompt_length": row["prompt_length"],
        "reward": row["reward"], "rewards_per_func": row["rewards_per_func"], "advantage": row["advantage"],
        "attributed": row["attributed"],
        "scores": {s: row[f"scores_{s}"] for s in SIGNALS},
        "selected": {s: row[f"selected_{s}"] for s in (*SIGNALS, "union")},
        "weights": row["weights"],
        "logp": {"full": row["logp_full"], "visual": row["logp_visual"], "temporal": row["logp_temporal"],
                 "old": row["logp_old"]},
        "permutation": row["permutation"],
        "frames": {"videos": list(row["videos"] or []), "images": list(row["images"] or []), **video},
        "media": {"videos": list(row["videos"] or []), "images": list(row["images"] or []), **video},
        "settings": settings,
    }


def read_rollout_file(path: str | Path) -> list[dict]:
    """The records of one rollout file (see the module docstring)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = (table.schema.metadata or {}).get(META_KEY)
    settings = json.loads(meta) if meta else {}
    return [_record(row, settings) for row in table.to_pylist()]


def load_rollouts(run_dir: str | Path, step: int | None = None) -> list[dict]:
    """Every logged response of a run (or of one logged step), in (step, rank, row) order. Raises NoRollouts naming
    the directory (and the logged steps, when `step` is not one of them)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NoRollouts(f"{run_dir}: no such run directory")
    files = rollout_files(run_dir)
    if not files:
        raise NoRollouts(f"{run_dir} has no rollout log ({run_dir / ROLLOUT_DIR}/step-*.parquet): {ENABLE_HINT}")
    if step is not None:
        if step not in files:
            raise NoRollouts(f"{run_dir}: step {step} was not logged; logged steps: {_ranges(list(files))}")
        files = {step: files[step]}
    records = [r for paths in files.values() for p in paths for r in read_rollout_file(p)]
    return sorted(records, key=lambda r: (r["step"], r["rank"], r["row"]))


def _ranges(steps: list[int]) -> str:
    return ", ".join(map(str, steps[:20])) + (f", ... ({len(steps)} in all)" if len(steps) > 20 else "")

