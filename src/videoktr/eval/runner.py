"""Resumable, batched generation: items -> prompts (+ media paths) -> a generator -> `predictions.jsonl`.

Each batch's outputs are appended to `<out_dir>/predictions.jsonl` and flushed to disk before the next batch
starts, so a run that is killed loses at most the batch in flight; started again with the same output
directory it skips every item already there. A line cut off by the kill is dropped on restart. `run.json`
records the generation settings; resuming with different settings is refused (the predictions would mix two
configurations).

An item whose media cannot be read (a video that does not decode, an image file that is not an image, or a
file of the other kind than the item declares, e.g. a Video-R1 row with `data_type: image` pointing at an
.mp4) is handled by `on_media_error`: "skip" (default) records it in `<out_dir>/failed.jsonl` (id, task, file,
reason) and goes on; "stop" raises MediaFailure naming the item and the file (the good outputs of the batch
are kept). Wrong media types are found before any generation. A resumed run does not retry items recorded as
failed (so one bad file is not decoded again on every resume); `retry_failed=True` (`--retry-failed`) retries
them, e.g. once the file is fixed. Missing files are still an error before any generation (MissingMediaError):
they usually mean a wrong data root.

The generator is any object with
    generate(batch: list[Request], *, max_new_tokens: int, temperature: float, top_p: float) -> list[str]
returning one raw output text per request (see generate.HFGenerator; tests use fakes). When the media of some
requests cannot be read it raises MediaError listing them (the runner drops them and calls it again with the
rest); a VideoDecodeError that names no request makes the runner retry the batch one request at a time.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from .benchmarks import resolve_media
from .benchmarks.base import Item
from ..text.prompts import build_prompt

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
FAILED_FILE = "failed.jsonl"
MEDIA_ERROR_MODES = ("skip", "stop")


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


class MediaError(Exception):
    """Raised by a generator: the media of some requests of a batch cannot be read.
    failures: [(index of the request in the batch, file (None for embedded data), reason)]."""

    def __init__(self, failures: list[tuple[int, Path | str | None, str]]):
        self.failures = list(failures)
        super().__init__("; ".join(reason for _, _, reason in self.failures))


class MediaFailure(ValueError):
    """on_media_error="stop": an item's media cannot be read. The message names the item and the file."""


VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".flv", ".wmv", ".mpg", ".mpeg", ".ts",
                  ".3gp"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
_IMAGE_BRANDS = {b"heic", b"heix", b"mif1", b"msf1", b"avif"}  # ISO-BMFF brands of still images


def media_kind(path: Path) -> str | None:
    """"video" or "image" from the first bytes of the file (its name's suffix when they say nothing), None when
    unknown or either (an animated GIF can be both)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*")) or (
            head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "image"
    if head[4:8] == b"ftyp":
        return "image" if head[8:12] in _IMAGE_BRANDS else "video"
    if head.startswith((b"\x1aE\xdf\xa3", b"FLV", b"\x00\x00\x01\xba", b"0&\xb2u")) or (
            head[:4] == b"RIFF" and head[8:11] == b"AVI"):
        return "video"
    if head.startswith(b"GIF8"):
        return None
    suffix = Path(path).suffix.lower()
    return "video" if suffix in VIDEO_SUFFIXES else "image" if suffix in IMAGE_SUFFIXES else None


def wrong_media_type(req: Request) -> tuple[Path, str] | None:
    """(file, reason) when a file of `req` is of the other kind than the item declares, else None. Video-R1 rows
    are named by file and row (their adapter records it in `extra["where"]`)."""
    it = req.item
    names = it.extra.get("images") or ([it.image] if it.image else [])
    declared = [("video", it.video, req.video)] if req.video is not None else []
    declared += [("image", rel, p) for rel, p in zip(names, req.images) if isinstance(p, Path)]
    for want, rel, path in declared:
        kind = media_kind(path)
        if kind is None or kind == want:
            continue
        a = "an image" if kind == "image" else "a video"
        if "data_type" in it.extra:
            where = it.extra.get("where", f"item {it.label}")
            return path, f"{where}: data_type {it.extra['data_type']!r} but {rel} is {a} file"
        return path, f"item {it.label}: expects {'an image' if want == 'image' else 'a video'} but {rel} is {a} file"
    return None


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


def load_failures(out_dir: str | Path) -> dict[tuple[str, str], dict]:
    """Items recorded as failed in `<out_dir>/failed.jsonl`: key -> {id, task?, file, reason}."""
    return dict(read_resumable_jsonl(Path(out_dir) / FAILED_FILE,
                                     lambda row: ((row.get("task") or "", str(row["id"])), row)))


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


def _failure_row(req: Request, path, reason: str) -> dict:
    row = {"id": req.item.id}
    if req.item.task:
        row["task"] = req.item.task
    row.update(file=None if path is None else str(path), reason=reason)
    return row


def _failure_message(row: dict, label: str | None) -> str:
    """The reason, naming the item (unless `label` is None: the reason names it) and the file."""
    reason = row["reason"]
    if row["file"] and row["file"] not in reason:
        reason += f" (file {row['file']})"
    return reason if label is None else f"item {label}: {reason}"


def _generate_batch(generator: Generator, batch: list[Request], settings: GenerationSettings
                    ) -> tuple[list[tuple[Request, str]], list[tuple[Request, dict]]]:
    """(request, output) for the requests whose media could be read, (request, failure row) for the others."""
    from videoktr.data.video import VideoDecodeError

    failed: list[tuple[Request, dict]] = []
    while batch:
        try:
            outputs = generator.generate(batch, max_new_tokens=settings.max_new_tokens,
                                         temperature=settings.temperature, top_p=settings.top_p)
        except MediaError as exc:
            bad = {i: (path, reason) for i, path, reason in exc.failures}
            if not bad or not all(0 <= i < len(batch) for i in bad):
                raise RuntimeError(f"generator raised MediaError for request(s) {sorted(bad)} of a batch of "
                                   f"{len(batch)}") from exc
            failed += [(batch[i], _failure_row(batch[i], *bad[i])) for i in sorted(bad)]
            batch = [r for i, r in enumerate(batch) if i not in bad]
            continue
        except VideoDecodeError as exc:  # a generator that does not say which request: find it
            if len(batch) == 1:
                failed.append((batch[0], _failure_row(batch[0], batch[0].video, str(exc))))
                return [], failed
            done: list[tuple[Request, str]] = []
            for req in batch:
                ok, bad_one = _generate_batch(generator, [req], settings)
                done += ok
                failed += bad_one
            return done, failed
        if len(outputs) != len(batch):
            raise RuntimeError(f"generator returned {len(outputs)} outputs for {len(batch)} requests")
        return list(zip(batch, outputs)), failed
    return [], failed


def run_generation(items: list[Item], generator: Generator, out_dir: str | Path, *,
                   data_root: str | Path | None = None, settings: GenerationSettings | None = None,
                   progress: bool = True, desc: str = "", on_media_error: str = "skip",
                   retry_failed: bool = False) -> dict[tuple[str, str], str]:
    """Generate outputs for every item not yet in `<out_dir>/predictions.jsonl` (nor recorded as failed in
    `failed.jsonl`, unless `retry_failed`); return all outputs by key. See the module docstring for
    `on_media_error`."""
    if on_media_error not in MEDIA_ERROR_MODES:
        raise ValueError(f"on_media_error must be one of {MEDIA_ERROR_MODES}, got {on_media_error!r}")
    settings = settings or GenerationSettings()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pred_path, fail_path = out_dir / PREDICTIONS_FILE, out_dir / FAILED_FILE
    done = load_predictions_file(pred_path)
    failed = load_failures(out_dir)
    wanted = {it.key for it in items}
    if retry_failed and any(k in wanted for k in failed):
        failed = {k: row for k, row in failed.items() if k not in wanted}  # those of other selections stay
        fail_path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in failed.values()))
    _check_run_file(out_dir, settings, resuming=bool(done) or bool(failed))
    todo = [it for it in items if it.key not in done and it.key not in failed]
    requests = build_requests(todo, data_root, settings.prompt_style)
    prefix = f"{desc}: " if desc else ""
    from tqdm import tqdm

    wrong = [(req, _failure_row(req, *bad)) for req in requests if (bad := wrong_media_type(req)) is not None]
    if wrong and on_media_error == "stop":
        shown = "\n  ".join(_failure_message(row, None) for _, row in wrong[:10])
        more = "\n  ..." if len(wrong) > 10 else ""
        raise MediaFailure(f"{prefix}{len(wrong)} item(s) whose media is of the wrong type:\n  {shown}{more}\n"
                           f"fix the question file, or pass --on-media-error skip to record them as failed")
    wrong_ids = {id(req) for req, _ in wrong}
    requests = [r for r in requests if id(r) not in wrong_ids]

    bar = tqdm(total=len(items), initial=len(items) - len(todo), unit="item", desc=desc or None,
               disable=not progress, dynamic_ncols=True)
    size = max(1, settings.batch_size)

    def record_failures(rows: list[tuple[Request, dict]], named: bool = False) -> None:
        if not rows:
            return
        with fail_path.open("a", encoding="utf-8") as g:
            for req, row in rows:
                g.write(json.dumps(row, ensure_ascii=False) + "\n")
                failed[req.item.key] = row
                label = None if named else req.item.label
                tqdm.write(f"{prefix}skipped {_failure_message(row, label)}", file=sys.stderr)
            g.flush()
            os.fsync(g.fileno())

    try:
        record_failures(wrong, named=True)
        bar.update(len(wrong))
        with pred_path.open("a", encoding="utf-8") as f:
            for start in range(0, len(requests), size):
                batch = requests[start:start + size]
                results, bad = _generate_batch(generator, batch, settings)
                for req, out in results:
                    row = {"id": req.item.id, "output": out}
                    if req.item.task:
                        row = {"id": req.item.id, "task": req.item.task, "output": out}
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    done[req.item.key] = out
                f.flush()
                os.fsync(f.fileno())
                if bad and on_media_error == "stop":
                    req, row = bad[0]
                    raise MediaFailure(f"{prefix}{_failure_message(row, req.item.label)}\nfix or remove the file, "
                                       f"or pass --on-media-error skip to record such items as failed and go on")
                record_failures(bad)
                bar.update(len(batch))
    finally:
        bar.close()
    return {k: v for k, v in done.items() if k in wanted}
