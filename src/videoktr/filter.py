"""Difficulty filter (paper Sec. 4.1): keep the rows the initial model solves sometimes but not always.

For each Video-R1-format row, sample k responses (k=8, temperature 1.0) with the starting model, score them
with the training accuracy reward, and keep the rows whose accuracy lies in [low, high] = [0.2, 0.8]. Results
are appended to `accuracies.jsonl` row by row, so a killed run resumes without recomputing finished rows;
`kept.jsonl` (the kept rows, unchanged) and `summary.json` are written at the end. Rows with missing or
undecodable media are skipped and recorded in `skipped.jsonl`, as in training.

Several GPUs: run one process per GPU with `shard=i, num_shards=n` (`--shard i --num-shards n`) into the same
output directory. Shard i takes rows i, i+n, i+2n, ... (of the validated rows, in file order) and writes
`accuracies.shard-i-of-n.jsonl` and `skipped.shard-i-of-n.jsonl`; whichever shard finishes last (every row
is then scored or skipped) writes the merged `kept.jsonl` and `summary.json`. Finished rows are read from
every `accuracies*.jsonl` in the directory, so a run resumes under any sharding.
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
    shard: int = 0  # this process takes rows shard, shard + num_shards, ...
    num_shards: int = 1

    def validate(self) -> None:
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        if not 0.0 <= self.low <= self.high <= 1.0:
            raise ValueError(f"need 0 <= low <= high <= 1, got low={self.low}, high={self.high}")
        if self.num_shards < 1 or not 0 <= self.shard < self.num_shards:
            raise ValueError(f"need 0 <= shard < num_shards, got shard={self.shard}, num_shards={self.num_shards}")

    @property
    def tag(self) -> str:
        """File-name tag of this shard ("" when unsharded)."""
        return "" if self.num_shards == 1 else f".shard-{self.shard}-of-{self.num_shards}"


def difficulty_decision(scores, low: float = 0.2, high: float = 0.8) -> tuple[float, bool]:
    """The difficulty rule (paper Sec. 4.1) for one prompt: (accuracy, kept) from the accuracy rewards of its k
    sampled responses; kept when low <= accuracy <= high. Used by `run_filter` and by the synthetic world's RL
    prompt filter (world/filter.py)."""
    scores = [float(x) for x in scores]
    if not scores:
        raise ValueError("difficulty_decision needs at least one sampled response's score")
    acc = sum(scores) / len(scores)
    return acc, low <= acc <= high


def _jsonl_records(out: Path, pattern: str) -> list[dict]:
    """Records of every file matching `pattern` in `out`; a line cut off by a kill is ignored (other shards'
    files are only read: their own process repairs them)."""
    records = []
    for path in sorted(out.glob(pattern)):
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def _done(out: Path) -> dict[str, dict]:
    """Finished rows of earlier (possibly killed) runs and of other shards, by problem_id."""
    return {str(rec["problem_id"]): rec for rec in _jsonl_records(out, "accuracies*.jsonl")}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # shards may finish together: one tmp each
    tmp.write_text(text)
    tmp.replace(path)


def run_filter(data: str | Path, data_root: str | Path | None, model: str | Path, output_dir: str | Path,
               options: FilterOptions | None = None, generator=None, progress: bool = True) -> dict:
    """Filter `data` with `model`; returns the summary. `generator` (tests) replaces the HF generator."""
    from tqdm import tqdm

    from .data.videor1 import build_prompt, check_media, load_rows, resolve_media, write_skipped
    from .eval.benchmarks.base import Item
    from .eval.runner import Request, read_resumable_jsonl
    from .rewards import accuracy_reward

    options = options or FilterOptions()
    options.validate()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    all_rows, _ = load_rows(data)  # a malformed row is an error naming the file and row
    ids = [str(r["problem_id"]) for r in all_rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{data}: problem_id values are not unique; the filter keys its progress on them")
    tag = options.tag
    # this shard's rows; the media-check cache lets a resumed filter skip decoding every clip again
    rows, skipped = check_media(all_rows[options.shard :: options.num_shards], data_root, fps=options.fps,
                                max_frames=options.frames, progress=progress, cache=out / f"media_check{tag}.jsonl")
    write_skipped(out / f"skipped{tag}.jsonl", skipped)
    acc_path = out / f"accuracies{tag}.jsonl"
    read_resumable_jsonl(acc_path)  # a record cut off by a kill is removed before this shard appends again
    done = _done(out)
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
                kind = row.get("data_type")
                media = resolve_media(row, data_root) if kind in ("video", "image") else None
                request = (Request(item, build_prompt(row), images=[media]) if kind == "image"
                           else Request(item, build_prompt(row), video=media))
                requests += [request] * options.samples
            texts = generator.generate(requests, max_new_tokens=options.max_new_tokens,
                                       temperature=options.temperature, top_p=options.top_p)
            for j, row in enumerate(batch):
                mine = texts[j * options.samples : (j + 1) * options.samples]
                n = len(mine)
                scores = accuracy_reward(mine, solution=[row["solution"]] * n, problem_type=[row["problem_type"]] * n,
                                         options=[row.get("options")] * n)
                acc, kept = difficulty_decision(scores, options.low, options.high)
                rec = {"problem_id": row["problem_id"], "accuracy": acc, "scores": scores, "kept": kept}
                sink.write(json.dumps(rec) + "\n")
                done[str(row["problem_id"])] = rec
            sink.flush()
            os.fsync(sink.fileno())
            bar.update(len(batch))
    bar.close()
    return _merge(out, all_rows, options, shard_rows=len(rows))


def _merge(out: Path, all_rows: list[dict], options: FilterOptions, shard_rows: int) -> dict:
    """The summary; once every row of every shard is scored or skipped, also kept.jsonl and summary.json."""
    from .data.videor1 import without_row_ref

    done = _done(out)
    skipped_ids = {str(rec["problem_id"]) for rec in _jsonl_records(out, "skipped*.jsonl")}
    pending = [r for r in all_rows if str(r["problem_id"]) not in done and str(r["problem_id"]) not in skipped_ids]
    if pending:
        return {"complete": False, "shard": options.shard, "num_shards": options.num_shards,
                "shard_rows": shard_rows, "pending": len(pending)}
    scored = [r for r in all_rows if str(r["problem_id"]) in done]
    kept = [without_row_ref(r) for r in scored if done[str(r["problem_id"])]["kept"]]
    _write_atomic(out / "kept.jsonl", "".join(json.dumps(r) + "\n" for r in kept))
    accs = [done[str(r["problem_id"])]["accuracy"] for r in scored]
    summary = {"complete": True, "rows": len(scored), "kept": len(kept), "skipped_samples": len(all_rows) - len(scored),
               "low": options.low, "high": options.high, "samples": options.samples,
               "too_easy": sum(a > options.high for a in accs), "too_hard": sum(a < options.low for a in accs),
               "num_shards": options.num_shards, "kept_file": str(out / "kept.jsonl")}
    _write_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return summary
