"""Resumable, batched generation: items -> prompts (+ media paths) -> a generator -> `predictions.jsonl`.

Each batch's outputs are appended to `<out_dir>/predictions.jsonl` and flushed to disk before the next batch
starts, so a run that is killed loses at most the batch in flight; started again with the same output
directory it skips every item already there. A line cut off by the kill is dropped on restart. `run.json`
records the generation settings; resuming with different settings is refused (the predictions would mix two
configurations).

The generator is any object with
    generate(batch: list[Request], *, max_new_tokens: int, temperature: float, top_p: float) -> list[str]
returning one raw output text per request (see generate.HFGenerator; tests use fakes).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from .benchmarks import resolve_media
from .benchmarks.base import Item
from .prompts import build_prompt

# Video-R1's evaluation settings, which the paper follows.
DEFAULT_MAX_NEW_TOKENS = 1024
DEFAULT_TEMPERATURE = 0.1
DEFAULT_TOP_P = 0.001
DEFAULT_FRAMES = 16  # maximum frames per video; the paper reports 16, 32 and 64
DEFAULT_FPS = 2.0
DEFAULT_MAX_PIXELS = 256 * 28 * 28  # per frame
DEFAULT_BATCH_SIZE = 8
PREDICTIONS_FILE = "predictions.jsonl"
RUN_FILE = "run.json"


@dataclass
class Request:
    """What a generator needs for one item: the prompt text and resolved media (absolute or cwd-relative)."""

    item: Item
    prompt: str
    video: Path | None = None
    images: list[Path | bytes] = field(default_factory=list)


class Generator(Protocol):
    def generate(self, batch: list[Request], *, max_new_tokens: int, temperature: float,
                 top_p: float) -> list[str]: ...


@dataclass
class GenerationSettings:
    prompt_style: str = "reasoning"
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    batch_size: int = DEFAULT_BATCH_SIZE
    generator: dict = field(default_factory=dict)  # the generator's own settings (model, frames, pixels...)

    def identity(self) -> dict:
        """Settings that change outputs (batch size does not, in principle)."""
        d = asdict(self)
        d.pop("batch_size")
        return d


class MissingMediaError(FileNotFoundError):
    pass


class RunConfigMismatch(ValueError):
    pass


def build_requests(items: list[Item], data_root: str | Path | None, prompt_style: str) -> list[Request]:
    """Prompts and resolved media for `items`; raises MissingMediaError listing missing files (no item is
    ever run without its video or image)."""
    requests, missing = [], []
    for it in items:
        video = resolve_media(data_root, it.video)
        images: list[Path | bytes] = []
        paths = it.extra.get("images") or ([it.image] if it.image else [])
        for rel in paths:
            images.append(resolve_media(data_root, rel))
        if not paths:
            images.extend(it.image_data)
        for p in [video, *images]:
            if isinstance(p, Path) and not p.is_file():
                missing.append(f"{it.label}: {p}")
        requests.append(Request(it, build_prompt(it, prompt_style), video, images))
    if missing:
        shown = "\n  ".join(missing[:10]) + ("\n  ..." if len(missing) > 10 else "")
        raise MissingMediaError(f"{len(missing)} media file(s) not found under the data root:\n  {shown}")
    return requests


def load_predictions_file(path: Path) -> dict[tuple[str, str], str]:
    """Existing predictions (key -> output). A last line cut off by a kill is removed from the file."""
    return dict(read_resumable_jsonl(path, lambda row: ((row.get("task") or "", str(row["id"])), row["output"])))


def read_resumable_jsonl(path: Path, parse=lambda row: row) -> list:
    """parse(row) of each row of a JSONL file that a run appends to and may be killed while writing: a last line
    cut off by the kill (or that `parse` rejects with KeyError) is removed from the file, and a missing final
    newline added, so that appending continues on a clean line; a corrupt line elsewhere is a ValueError naming
    the file and line. No file: []."""
    rows: list = []
    if not path.is_file():
        return rows
    data = path.read_bytes()
    lines = data.split(b"\n")
    good_end = 0  # byte offset just past the last line read
    for n, line in enumerate(lines):
        end = good_end + len(line) + (1 if n < len(lines) - 1 else 0)
        if line.strip():
            try:
                rows.append(parse(json.loads(line)))
            except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as exc:
                if n == len(lines) - 1:  # the partial last line of an interrupted write
                    break
                raise ValueError(f"{path}: line {n + 1} is corrupt ({exc}); fix or delete it") from exc
        good_end = end
    if good_end < len(data):
        with path.open("r+b") as f:
            f.truncate(good_end)
        data = data[:good_end]
    if data and not data.endswith(b"\n"):  # a complete last row whose newline was not written
        with path.open("ab") as f:
            f.write(b"\n")
    return rows


def _check_run_file(out_dir: Path, settings: GenerationSettings, resuming: bool) -> None:
    run_file = out_dir / RUN_FILE
    current = settings.identity()
    if run_file.is_file() and resuming:
        previous = json.loads(run_file.read_text())
        diff = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
        if diff:
            raise RunConfigMismatch(
                f"{out_dir}: existing predictions were made with different settings ({', '.join(diff)}: "
                f"{ {k: previous.get(k) for k in diff} } now { {k: current.get(k) for k in diff} }); use a new "
                f"--output-dir, or delete {PREDICTIONS_FILE} to start over")
    run_file.write_text(json.dumps(current, indent=2) + "\n")


def run_generation(items: list[Item], generator: Generator, out_dir: str | Path, *,
                   data_root: str | Path | None = None, settings: GenerationSettings | None = None,
                   progress: bool = True, desc: str = "") -> dict[tuple[str, str], str]:
    """Generate outputs for every item not yet in `<out_dir>/predictions.jsonl`; return all outputs by key."""
    settings = settings or GenerationSettings()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pred_path = out_dir / PREDICTIONS_FILE
    done = load_predictions_file(pred_path)
    wanted = {it.key for it in items}
    _check_run_file(out_dir, settings, resuming=bool(done))
    todo = [it for it in items if it.key not in done]
    requests = build_requests(todo, data_root, settings.prompt_style)
    from tqdm import tqdm

    bar = tqdm(total=len(items), initial=len(items) - len(todo), unit="item", desc=desc or None,
               disable=not progress, dynamic_ncols=True)
    size = max(1, settings.batch_size)
    try:
        with pred_path.open("a", encoding="utf-8") as f:
            for start in range(0, len(requests), size):
                batch = requests[start:start + size]
                outputs = generator.generate(batch, max_new_tokens=settings.max_new_tokens,
                                             temperature=settings.temperature, top_p=settings.top_p)
                if len(outputs) != len(batch):
                    raise RuntimeError(f"generator returned {len(outputs)} outputs for {len(batch)} requests")
                for req, out in zip(batch, outputs):
                    row = {"id": req.item.id, "output": out}
                    if req.item.task:
                        row = {"id": req.item.id, "task": req.item.task, "output": out}
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    done[req.item.key] = out
                f.flush()
                os.fsync(f.fileno())
                bar.update(len(batch))
    finally:
        bar.close()
    return {k: v for k, v in done.items() if k in wanted}
