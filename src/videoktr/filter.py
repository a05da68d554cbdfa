"""Difficulty filter (paper Sec. 4.1): keep the rows the initial model solves sometimes but not always.

For each Video-R1-format row, sample k responses (k=8, temperature 1.0) with the starting model, score them
with the training accuracy reward, and keep the rows whose accuracy lies in [low, high] = [0.2, 0.8]. Results
are appended to `accuracies.jsonl` row by row, so a killed run resumes without recomputing finished rows;
`kept.jsonl` (the kept rows, unchanged) and `summary.json` are written at the end. Rows with missing or
undecodable media are skipped and recorded in `skipped.jsonl`, as in training.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass
class FilterOptions:
    samples: int = 8  # k responses per row
    low: float = 0.2  # keep rows with low <= accuracy <= high
    high: float = 0.8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 768
    rows_per_batch: int = 2  # rows per generate call (each repeated `samples` times)
    frames: int = 16
    fps: float = 2.0
    max_pixels: int = 128 * 28 * 28
    seed: int = 0

    def validate(self) -> None:
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        if not 0.0 <= self.low <= self.high <= 1.0:
            raise ValueError(f"need 0 <= low <= high <= 1, got low={self.low}, high={self.high}")


def _done(path: Path) -> dict[str, dict]:
    """Finished rows of an earlier (possibly killed) run; a line cut off by the kill is ignored."""
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[str(rec["problem_id"])] = rec
    return done


def run_filter(data: str | Path, data_root: str | Path | None, model: str | Path, output_dir: str | Path,
               options: FilterOptions | None = None, generator=None, progress: bool = True) -> dict:
    """Filter `data` with `model`; returns the summary. `generator` (tests) replaces the HF generator."""
    from tqdm import tqdm

    from .data.videor1 import build_prompt, load_videor1, resolve_media, without_row_ref, write_skipped
    from .eval.benchmarks.base import Item
    from .eval.runner import Request
    from .rewards import accuracy_reward

    options = options or FilterOptions()
    options.validate()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    # the media-check cache lets a resumed filter skip decoding every clip again
    loaded = load_videor1(data, data_root, fps=options.fps, max_frames=options.frames, progress=progress,
                          cache=out / "media_check.jsonl")
    rows, skipped = loaded.rows, loaded.skipped
    write_skipped(out / "skipped.jsonl", skipped)
    ids = [str(r["problem_id"]) for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{data}: problem_id values are not unique; the filter keys its progress on them")
    acc_path = out / "accuracies.jsonl"
    done = _done(acc_path)
    todo = [r for r in rows if str(r["problem_id"]) not in done]
    if generator is None:
        from .eval.generate import HFGenerator

        generator = HFGenerator(model, frames=options.frames, fps=options.fps, max_pixels=options.max_pixels,
                                seed=options.seed)
    bar = tqdm(total=len(rows), initial=len(rows) - len(todo), desc="difficulty filter", unit="row",
               disable=not progress)
    with acc_path.open("a") as sink:
        for start in range(0, len(todo), options.rows_per_batch):
            batch = todo[start : start + options.rows_per_batch]
            requests = []
            for row in batch:
                item = Item(id=str(row["problem_id"]), benchmark="videor1", question=row["problem"],
                            answer=str(row["solution"]), answer_type="open")
                media = resolve_media(row, data_root)
                request = (Request(item, build_prompt(row), images=[media]) if row.get("data_type") == "image"
                           else Request(item, build_prompt(row), video=media))
                requests += [request] * options.samples
            texts = generator.generate(requests, max_new_tokens=options.max_new_tokens,
                                       temperature=options.temperature, top_p=options.top_p)
            for j, row in enumerate(batch):
                mine = texts[j * options.samples : (j + 1) * options.samples]
                n = len(mine)
                scores = accuracy_reward(mine, solution=[row["solution"]] * n, problem_type=[row["problem_type"]] * n,
                                         options=[row.get("options")] * n)
                acc = sum(scores) / n
                rec = {"problem_id": row["problem_id"], "accuracy": acc, "scores": scores,
                       "kept": options.low <= acc <= options.high}
                sink.write(json.dumps(rec) + "\n")
                done[str(row["problem_id"])] = rec
            sink.flush()
            os.fsync(sink.fileno())
            bar.update(len(batch))
    bar.close()
    kept = [without_row_ref(r) for r in rows if done[str(r["problem_id"])]["kept"]]
    (out / "kept.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    accs = [done[i]["accuracy"] for i in ids]
    summary = {"rows": len(rows), "kept": len(kept), "skipped_samples": len(skipped),
               "low": options.low, "high": options.high, "samples": options.samples,
               "too_easy": sum(a > options.high for a in accs), "too_hard": sum(a < options.low for a in accs),
               "kept_file": str(out / "kept.jsonl")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
