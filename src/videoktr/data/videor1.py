"""Video-R1-format training data: loading and validating rows, probing their media, and the training prompt.

A row (JSON list or JSONL, one object a line):
    {"problem_id": 12, "problem": "What does the man do first?", "data_type": "video",
     "problem_type": "multiple choice", "options": ["A. sits", "B. runs"], "solution": "<answer>B</answer>",
     "path": "./LLaVA-Video-178K/clip.mp4", "data_source": "LLaVA-Video-178K", "process": "<think>..</think>"}
Required: problem_id, problem, data_type (video | image | text), problem_type (multiple choice | numerical | OCR |
free-form | regression; case, "_" and "-" are not significant), solution (with an <answer> tag) and path
(relative to the data root, or absolute; absent or empty for a text row, which has no media). `options` is
required (labelled "A. ...") for multiple choice and optional otherwise; `data_source` and `process` are
optional; other fields are kept as they are.

Policy:
- A malformed row (bad JSON line, missing field, unknown data_type/problem_type, solution without <answer>,
  a multiple-choice answer that is not an option label, a numerical/regression answer that is not a number)
  raises `DataError` naming the file, the row ("line N", 1-based, for JSONL; "index N", 0-based, for a JSON
  list), the problem_id when there is one, and the field. `on_error="skip"` records it as a SkippedSample
  (kind "invalid_row") instead. A JSON file that does not parse at all is always an error.
- A missing or undecodable media file never fails the run and is never replaced by another clip:
  `check_media` probes each unique file once (videos decoded with `read_video`, images with PIL; shared out
  over the processes of a multi-process run, and remembered in a cache file while the file is unchanged) and
  drops the rows that use a bad one, each recorded as a SkippedSample (kinds "missing_media", "undecodable_media")
  with a logged warning; `write_skipped` writes the records as JSONL for the run's report.

Loaded rows are copies of the file's objects with data_type/problem_type canonical, `options` a list (empty
when absent), `data_source` a string, and `ROW_REF` ("_row") holding where the row came from (for messages
and skip records; `without_row_ref` drops it).

`build_prompt(row)` is the Video-R1 training prompt, built from the same reasoning instruction as evaluation
(`videoktr.text.prompts`): the question, "Options:" and one "X. text" a line for multiple choice, then the
instruction to reason inside <think></think> and answer inside <answer></answer>, with a suffix per type (one
option letter, a number, an exact transcription, free text).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..text.extract import to_float
from ..text.prompts import format_question, reasoning_text
from ..rewards import PROBLEM_TYPES, answer_content, canonical_problem_type, options_map

logger = logging.getLogger(__name__)

DATA_TYPES = ("video", "image", "text")  # text: a question without media (mixed batches, as in text reasoning data)
REQUIRED_FIELDS = ("problem_id", "problem", "data_type", "problem_type", "solution", "path")
MEDIA_TYPES = ("video", "image")
ROW_REF = "_row"
ON_ERROR = ("raise", "skip")
SKIP_KINDS = ("invalid_row", "missing_media", "undecodable_media")
# problem_type -> the answer kind of the prompt suffix (keys of text.prompts.ANSWER_SUFFIX)
PROMPT_KIND = {"multiple choice": "mc", "numerical": "numeric", "OCR": "ocr", "free-form": "free_form",
               "regression": "regression"}


class DataError(ValueError):
    """A data file or row is malformed. The message names the file, the row and the field."""


@dataclass(frozen=True)
class SkippedSample:
    """A row left out of training. row: where it is ("FILE line N" / "FILE index N"); path: its media path as
    written in the row (None when unknown); reason: why; kind: one of SKIP_KINDS."""

    row: str
    problem_id: object
    path: str | None
    reason: str
    kind: str = "missing_media"

    def to_json(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------- rows


def _describe(where: str, row) -> str:
    pid = row.get("problem_id") if isinstance(row, dict) else None
    return f"{where} (problem_id {pid!r})" if pid is not None else where


def validate_row(row, where: str) -> dict:
    """Check one raw row; return its canonical copy (see the module docstring) or raise DataError."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    at = _describe(where, row)

    def fail(name: str, msg: str):
        raise DataError(f"{at}: field {name!r}: {msg}")

    text_row = str(row.get("data_type", "")).strip().lower() == "text"
    for name in REQUIRED_FIELDS:
        if name == "path" and text_row:
            continue  # a text row has no media
        if name not in row:
            fail(name, "missing")
        if row[name] is None:
            fail(name, "is null")
    out = dict(row)
    if isinstance(row["problem_id"], (dict, list)):
        fail("problem_id", f"must be a string or a number, got {type(row['problem_id']).__name__}")
    if text_row and row.get("path"):
        fail("path", f"a text row has no media, got {row['path']!r}")
    for name in ("problem", "solution") if text_row else ("problem", "path", "solution"):
        if not isinstance(row[name], str) or not row[name].strip():
            fail(name, f"must be a non-empty string, got {row[name]!r}")
    dtype = str(row["data_type"]).strip().lower()
    if dtype not in DATA_TYPES:
        fail("data_type", f"unknown value {row['data_type']!r}; expected one of: {', '.join(DATA_TYPES)}")
    out["data_type"] = dtype
    ptype = canonical_problem_type(row["problem_type"])
    if ptype is None:
        fail("problem_type", f"unknown value {row['problem_type']!r}; expected one of: {', '.join(PROBLEM_TYPES)}")
    out["problem_type"] = ptype
    answer = answer_content(row["solution"])
    if answer is None:
        fail("solution", f"no <answer>...</answer> tag in {row['solution']!r}")
    if not answer:
        fail("solution", "the <answer> tag is empty")
    options = row.get("options")
    if options is None:
        options = []
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        fail("options", f"must be a list of strings, got {options!r}")
    out["options"] = options
    if ptype == "multiple choice":
        labels = options_map(options)
        if not options:
            fail("options", "a multiple-choice row needs options like ['A. ...', 'B. ...']")
        if not labels:
            fail("options", f"every option must start with a letter label like 'A.', got {options!r}")
        if len(labels) != len(options):
            fail("options", f"an option label appears twice in {options!r}")
        if answer not in labels:
            fail("solution", f"answer {answer!r} is not one of the option labels {list(labels)}")
    if ptype in ("numerical", "regression") and to_float(answer) is None:
        fail("solution", f"answer {answer!r} of a {ptype} row is not a number")
    for name in ("data_source", "process"):
        if row.get(name) is not None and not isinstance(row[name], str):
            fail(name, f"must be a string, got {type(row[name]).__name__}")
    out["data_source"] = row.get("data_source") or ""
    out[ROW_REF] = where
    return out


def _raw_rows(path: Path) -> Iterator[tuple[str, object]]:
    """(where, parsed object or a DataError for a malformed line) for each row of a JSON list or JSONL file.
    A file starting with "[" is a JSON list, otherwise JSON Lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"data file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read data file {path}: {exc}") from exc
    if path.suffix.lower() != ".jsonl" and text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
        for i, row in enumerate(data):
            yield f"{path} index {i}", row
        return
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {n}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as exc:
            yield where, DataError(f"{where}: malformed JSON (column {exc.colno}: {exc.msg})")


def load_rows(path: str | Path, on_error: str = "raise") -> tuple[list[dict], list[SkippedSample]]:
    """Read and validate the rows of a Video-R1-format JSON/JSONL file -> (rows, skipped invalid rows).
    `on_error="raise"` (default): the first malformed row raises DataError; `"skip"`: it is recorded instead."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    path = Path(path)
    rows: list[dict] = []
    skipped: list[SkippedSample] = []
    for where, raw in _raw_rows(path):
        try:
            if isinstance(raw, DataError):
                raise raw
            rows.append(validate_row(raw, where))
        except DataError as exc:
            if on_error == "raise":
                raise
            pid = raw.get("problem_id") if isinstance(raw, dict) else None
            media = raw.get("path") if isinstance(raw, dict) and isinstance(raw.get("path"), str) else None
            skipped.append(SkippedSample(where, pid, media, str(exc), "invalid_row"))
            logger.warning("skipping invalid row: %s", exc)
    if not rows and not skipped:
        raise DataError(f"{path}: the file holds no rows (empty, or an empty JSON list)")
    return rows, skipped


def without_row_ref(row: dict) -> dict:
    """The row without the loader's ROW_REF field (e.g. to write rows back to a file)."""
    return {k: v for k, v in row.items() if k != ROW_REF}


# --------------------------------------------------------------------------------------------- media


def resolve_media(row: dict, data_root: str | Path | None) -> Path:
    """The media file of `row`: its `path` under `data_root`, or the path itself when absolute."""
    p = Path(row["path"])
    if p.is_absolute():
        return p
    if data_root is None:
        raise ValueError(f"{row.get(ROW_REF, 'row')}: media path {row['path']!r} is relative; give a data root")
    return Path(data_root) / p


def probe_media(path: Path, data_type: str, fps: float = 2.0, min_frames: int = 4,
                max_frames: int = 16, backend: str = "pyav") -> tuple[str, str] | None:
    """None when `path` decodes, else (kind, reason). Videos are decoded with `read_video`, images with PIL."""
    if not path.is_file():
        return "missing_media", f"{data_type} file not found: {path}"
    if data_type == "image":
        try:
            from PIL import Image

            with Image.open(path) as im:
                im.load()
        except Exception as exc:  # PIL raises several error types for damaged files
            return "undecodable_media", f"cannot decode image {path}: {exc}"
        return None
    from .video import read_video

    try:
        read_video(path, target_fps=fps, min_frames=min_frames, max_frames=max_frames, backend=backend)
    except ImportError:
        raise  # a missing optional backend is a setup error, not a bad file
    except Exception as exc:  # VideoDecodeError names the file; anything else is reported the same way
        return "undecodable_media", str(exc) if str(path) in str(exc) else f"cannot decode video {path}: {exc}"
    return None


ProbeKey = tuple[str, str]  # (resolved media path, data_type)
ProbeResult = tuple[str, str] | None  # None: the file decodes; else (kind, reason)


class MediaCache:
    """Probe results kept in a JSONL file and reused while a file is unchanged.

    One line per probed file: its path, data_type, size and mtime_ns, the probe settings (fps, frame bounds,
    backend) and the result. An entry is reused only when the file's size and mtime and the settings all still
    match, so an edited or replaced clip is probed again. A damaged cache line is ignored (and rewritten)."""

    def __init__(self, path: str | Path, settings: dict):
        self.path = Path(path)
        self.settings = settings
        self._entries: dict[ProbeKey, dict] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    e = json.loads(line)
                    self._entries[(e["path"], e["data_type"])] = e
                except (ValueError, KeyError, TypeError):
                    continue

    @staticmethod
    def _stamp(path: str) -> tuple[int, int] | None:
        try:
            st = Path(path).stat()
        except OSError:
            return None
        return st.st_size, st.st_mtime_ns

    def get(self, key: ProbeKey) -> tuple[bool, ProbeResult]:
        """(found, result): found is False when the file was not probed with these settings as it is now."""
        e = self._entries.get(key)
        stamp = self._stamp(key[0])
        if e is None or stamp is None or e.get("settings") != self.settings or tuple(e.get("stamp", ())) != stamp:
            return False, None
        result = e.get("result")
        return True, (tuple(result) if result else None)

    def update(self, results: dict[ProbeKey, ProbeResult]) -> None:
        """Record `results` (files that exist only: a missing file is probed again next time) and rewrite the
        file atomically (runs sharing one cache may overwrite each other's new entries: those files are only
        probed again)."""
        for key, result in results.items():
            stamp = self._stamp(key[0])
            if stamp is not None:
                self._entries[key] = {"path": key[0], "data_type": key[1], "stamp": list(stamp),
                                      "settings": self.settings, "result": list(result) if result else None}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for e in self._entries.values():
                f.write(json.dumps(e, ensure_ascii=False) + "\n")
        tmp.replace(self.path)


def _probe_all(keys: list[ProbeKey], probe, workers: int, progress: bool) -> dict[ProbeKey, ProbeResult]:
    from tqdm.auto import tqdm

    results: dict[ProbeKey, ProbeResult] = {}
    with tqdm(total=len(keys), desc="checking media", unit="file", disable=not progress) as bar:
        if workers > 1 and len(keys) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(workers) as pool:  # decoding releases the GIL (PyAV, decord, PIL)
                for key, res in zip(keys, pool.map(probe, keys)):
                    results[key] = res
                    bar.update()
        else:
            for key in keys:
                results[key] = probe(key)
                bar.update()
    return results


def check_media(rows: list[dict], data_root: str | Path | None, *, fps: float = 2.0, min_frames: int = 4,
                max_frames: int = 16, progress: bool = True, workers: int = 1,
                max_warnings: int = 20, backend: str = "pyav", cache: str | Path | None = None,
                rank: int = 0, world_size: int = 1, gather=None,
                stats: dict | None = None) -> tuple[list[dict], list[SkippedSample]]:
    """Probe each unique media file of `rows` once -> (rows whose media decodes, skipped rows). Never raises
    for a bad file: each affected row is skipped, logged (the first `max_warnings` individually, then a
    summary) and recorded with its reason. `stats` (a dict) receives files, from_cache, probed_here and
    processes.

    cache: a `MediaCache` JSONL file; unchanged files probed before with the same settings are not decoded
    again, and new results are added (read and written by rank 0 only).
    Several processes (rank, world_size, gather): each probes every world_size-th file still to probe, and
    gather(dict) -> [dict of each rank] (e.g. torch.distributed.all_gather_object) combines the results, so
    N processes share the work instead of each decoding every file."""
    keys = [(str(resolve_media(r, data_root)), r["data_type"]) if r["data_type"] in MEDIA_TYPES else None
            for r in rows]
    unique = list(dict.fromkeys(k for k in keys if k is not None))
    settings = {"fps": fps, "min_frames": min_frames, "max_frames": max_frames, "backend": backend}
    store = MediaCache(cache, settings) if cache and rank == 0 else None
    if world_size > 1 and gather is None:
        raise ValueError("check_media: world_size > 1 needs a gather function")
    results: dict[ProbeKey, ProbeResult] = {}
    if store:
        for key in unique:
            found, res = store.get(key)
            if found:
                results[key] = res
    if world_size > 1:  # rank 0's cache decides for all, so every process shares out the same files
        results = gather(results if rank == 0 else {})[0]
    if results:
        logger.info("media check: %d of %d files known from the cache %s", len(results), len(unique), cache)
    todo = [key for key in unique if key not in results]

    def probe(key: ProbeKey) -> ProbeResult:
        return probe_media(Path(key[0]), key[1], fps, min_frames, max_frames, backend)

    mine = _probe_all(todo[rank::world_size], probe, workers, progress)
    new: dict[ProbeKey, ProbeResult] = {}
    for part in (gather(mine) if world_size > 1 else [mine]):
        new.update(part)
    missing = [k for k in todo if k not in new]
    if missing:
        raise RuntimeError(f"media check: {len(missing)} files were probed by no process (first: {missing[0][0]})")
    if stats is not None:
        stats.update(files=len(unique), from_cache=len(results), probed_here=len(mine), processes=world_size)
    results.update(new)
    if store and new:
        store.update(new)
    kept, skipped = [], []
    for row, key in zip(rows, keys):
        bad = None if key is None else results[key]
        if bad is None:
            kept.append(row)
            continue
        kind, reason = bad
        sample = SkippedSample(row.get(ROW_REF, ""), row.get("problem_id"), row.get("path"), reason, kind)
        skipped.append(sample)
        if len(skipped) <= max_warnings:
            logger.warning("skipping %s (problem_id %r): %s", sample.row or "row", sample.problem_id, reason)
    if skipped:
        n_bad = sum(1 for v in results.values() if v is not None)
        logger.warning("skipped %d of %d rows: %d of %d media files are missing or undecodable (%s)",
                       len(skipped), len(rows), n_bad, len(unique),
                       ", ".join(f"{k}: {n}" for k, n in sorted(Counter(s.kind for s in skipped).items())))
        if unique and all(v is not None and v[0] == "missing_media" for v in results.values()):
            logger.error("no media file of the data was found under %s: is the data root right?", data_root)
    return kept, skipped


def write_skipped(path: str | Path, skipped: Iterable[SkippedSample]) -> Path:
    """Write skip records as JSON Lines (row, problem_id, path, reason, kind); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for s in skipped:
            f.write(json.dumps(s.to_json(), ensure_ascii=False, default=str) + "\n")
    return path


@dataclass
class VideoR1Data:
    """Rows ready for training and the rows left out (invalid rows and bad media), with their reasons."""

    rows: list[dict]
    skipped: list[SkippedSample] = field(default_factory=list)
    media_check: dict = field(default_factory=dict)  # check_media's stats (empty when not checked)

    @property
    def skipped_count(self) -> int:
        return len(self.skipped)

    def skipped_by_kind(self) -> dict[str, int]:
        return dict(Counter(s.kind for s in self.skipped))

    def write_skipped(self, path: str | Path) -> Path:
        return write_skipped(path, self.skipped)


def load_videor1(path: str | Path, data_root: str | Path | None, *, on_error: str = "raise",
                 check: bool = True, fps: float = 2.0, min_frames: int = 4, max_frames: int = 16,
                 progress: bool = True, workers: int = 1, backend: str = "pyav", cache: str | Path | None = None,
                 rank: int = 0, world_size: int = 1, gather=None) -> VideoR1Data:
    """`load_rows` then (when `check`) `check_media`: the rows a run can train on, and what was left out."""
    rows, skipped = load_rows(path, on_error=on_error)
    stats: dict = {}
    if check:
        rows, bad_media = check_media(rows, data_root, fps=fps, min_frames=min_frames, max_frames=max_frames,
                                      progress=progress, workers=workers, backend=backend, cache=cache,
                                      rank=rank, world_size=world_size, gather=gather, stats=stats)
        skipped = skipped + bad_media
    return VideoR1Data(rows, skipped, stats)


# --------------------------------------------------------------------------------------------- prompt


def build_prompt(row: dict) -> str:
    """The training prompt text of a row (the media part is not included; the chat template places it)."""
    ptype = canonical_problem_type(row.get("problem_type"))
    if ptype is None:
        raise DataError(f"{row.get(ROW_REF, 'row')}: field 'problem_type': unknown value "
                        f"{row.get('problem_type')!r}; expected one of: {', '.join(PROBLEM_TYPES)}")
    options = options_map(row.get("options")) if ptype == "multiple choice" else None
    return reasoning_text(format_question(str(row["problem"]).strip(), options), PROMPT_KIND[ptype])
