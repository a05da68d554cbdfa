"""The common `Item`, the adapter base class and helpers shared by the benchmark adapters.

An adapter turns a benchmark's own question files into `Item`s. It never touches videos: `Item.video` and
`Item.image` are paths relative to the data root, resolved (and checked) by the runner. Every error names the
file and, where there is one, the row.
"""

from __future__ import annotations

import json
from pathlib import Path

from ...text.item import ANSWER_TYPES, CHOICE_TYPES, LABELLED_OPTION, Item  # noqa: F401 (re-exported)


class BenchmarkError(ValueError):
    """A question file is missing, ambiguous or malformed. The message names the file (and row)."""


class Benchmark:
    """Base class of the adapters. Subclasses set the class attributes and implement `discover` and
    `load_file`; `load` validates tasks, finds the files and checks that keys are unique."""

    name: str = ""
    title: str = ""
    media: str = "video"  # "video" or "image"
    tasks: tuple[str, ...] = ()  # accepted --task values (besides "all")
    default_tasks: tuple[str, ...] = ()  # used when no --task is given (empty: everything)
    layout: str = ""  # where discovery looks, for --help and error messages

    def resolve_tasks(self, tasks: list[str] | None) -> tuple[str, ...]:
        if not tasks:
            return self.default_tasks or self.tasks
        if "all" in tasks:
            return self.tasks
        for t in tasks:
            if t not in self.tasks:
                allowed = ", ".join(self.tasks + ("all",)) if self.tasks else "none (this benchmark has no tasks)"
                raise BenchmarkError(f"{self.name}: unknown --task {t!r}; choose from {allowed}")
        return tuple(dict.fromkeys(tasks))

    def discover(self, data_root: Path, tasks: tuple[str, ...]) -> list[Path]:
        raise NotImplementedError

    def load_file(self, path: Path, tasks: tuple[str, ...]) -> list[Item]:
        raise NotImplementedError

    def load(self, data_root: str | Path | None = None, questions: str | Path | None = None,
             tasks: list[str] | None = None) -> list[Item]:
        selected = self.resolve_tasks(tasks)
        if questions is not None:
            paths = [Path(questions)]
            if not paths[0].is_file():
                raise BenchmarkError(f"{self.name}: question file not found: {questions}")
        else:
            if data_root is None:
                raise BenchmarkError(f"{self.name}: give --data-root or --questions")
            root = Path(data_root)
            if not root.is_dir():
                raise BenchmarkError(f"{self.name}: data root is not a directory: {root}")
            paths = self.discover(root, selected)
        items: list[Item] = []
        for p in paths:
            items.extend(self.load_file(p, selected))
        check_unique(items, paths)
        return items


# --------------------------------------------------------------------------------------------- helpers


def check_unique(items: list[Item], paths: list[Path]) -> None:
    seen: dict[tuple[str, str], int] = {}
    for i, it in enumerate(items):
        if it.key in seen:
            names = ", ".join(str(p) for p in paths)
            raise BenchmarkError(f"{names}: duplicate item id {it.label!r} (items {seen[it.key]} and {i})")
        seen[it.key] = i


def find_files(root: Path, names: list[str], max_depth: int = 3) -> list[Path]:
    """Files under `root` whose path relative to root is one of `names` (glob patterns allowed), else whose
    file name matches one of the names' last component, searched at most `max_depth` folders deep."""
    found: list[Path] = []
    for name in names:
        found.extend(sorted(p for p in root.glob(name) if p.is_file()))
    if found:
        return list(dict.fromkeys(found))
    basenames = {Path(n).name for n in names}
    for depth in range(1, max_depth + 1):
        pattern = "/".join(["*"] * depth)
        for p in sorted(root.glob(pattern)):
            if p.is_file() and any(p.match(b) for b in basenames):
                found.append(p)
    return list(dict.fromkeys(found))


def discover_files(name: str, data_root: Path, patterns: list[str], what: str = "question file",
                   many: bool = False, max_depth: int = 3) -> list[Path]:
    """`find_files`, with the errors every benchmark gives: none found, or (unless `many`) several found; both
    name the benchmark, the folder and --questions."""
    found = find_files(data_root, patterns, max_depth)
    if not found:
        raise BenchmarkError(f"{name}: no {what} under {data_root} (looked for {', '.join(patterns)}); "
                             f"pass one with --questions")
    if len(found) > 1 and not many:
        raise BenchmarkError(f"{name}: several {what}s apply under {data_root}: "
                             f"{', '.join(map(str, found))}; pick one with --questions")
    return found


def read_json(path: Path):
    """Parse a JSON file; tolerate trailing commas (the VideoMME answer template has them)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BenchmarkError(f"cannot read {path}: {exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as first:
        try:
            return json.loads(strip_trailing_commas(text))
        except json.JSONDecodeError:
            raise BenchmarkError(f"{path}: not valid JSON (line {first.lineno}, column {first.colno}: "
                                 f"{first.msg})") from first


def iter_jsonl(path: Path):
    """(line number, parsed row) for each non-blank line of a JSONL file."""
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BenchmarkError(f"{path}: line {n} is not valid JSON ({exc.msg})") from exc
            yield n, row


def read_jsonl(path: Path) -> list:
    return [row for _, row in iter_jsonl(path)]


def read_records(path: Path) -> list[dict]:
    """Rows of a .json (list), .jsonl or .parquet file as dicts."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return read_parquet(path)
    if suffix == ".jsonl":
        return read_jsonl(path)
    data = read_json(path)
    if isinstance(data, dict):
        for key in ("data", "rows", "results"):
            if isinstance(data.get(key), list):
                return data[key]
    if not isinstance(data, list):
        raise BenchmarkError(f"{path}: expected a list of rows, got {type(data).__name__}")
    return data


def read_parquet(path: Path) -> list[dict]:
    try:
        import pandas as pd
    except ImportError as exc:
        raise BenchmarkError(f"{path}: reading parquet needs pandas and pyarrow (pip install pandas pyarrow), "
                             f"or pass the benchmark's JSON question file with --questions") from exc
    try:
        frame = pd.read_parquet(path)
    except ImportError as exc:
        raise BenchmarkError(f"{path}: reading parquet needs pyarrow (pip install pyarrow): {exc}") from exc
    except Exception as exc:
        raise BenchmarkError(f"{path}: cannot read parquet: {exc}") from exc
    return [{k: _plain(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def _plain(value):
    """numpy scalars/arrays from pandas -> Python values."""
    if hasattr(value, "tolist") and not isinstance(value, (bytes, str)):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def strip_trailing_commas(text: str) -> str:
    """Remove commas that directly precede a closing bracket or brace, outside strings."""
    out: list[str] = []
    in_str = escape = False
    pending: list[str] = []  # a comma plus whitespace held back until we know what follows
    for ch in text:
        if in_str:
            out.append(ch)
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_str = False
            continue
        if pending:
            if ch.isspace():
                pending.append(ch)
                continue
            if ch in "]}":
                out.extend(pending[1:])  # drop the comma, keep the whitespace
            else:
                out.extend(pending)
            pending = []
        if ch == ",":
            pending = [ch]
            continue
        out.append(ch)
        if ch == '"':
            in_str = True
    out.extend(pending)
    return "".join(out)


def require(row: dict, keys: tuple[str, ...], path: Path, where: str) -> None:
    if not isinstance(row, dict):
        raise BenchmarkError(f"{path}: {where}: expected an object, got {type(row).__name__}")
    missing = [k for k in keys if k not in row]
    if missing:
        raise BenchmarkError(f"{path}: {where}: missing field(s) {', '.join(map(repr, missing))}")


def parse_labelled_options(lines: list[str], path: Path, where: str) -> dict[str, str]:
    """["A. text", "B) text", " C.text"] -> {"A": "text", ...}; labels must be distinct letters."""
    options: dict[str, str] = {}
    for line in lines:
        m = LABELLED_OPTION.match(str(line))
        if not m:
            raise BenchmarkError(f"{path}: {where}: option {line!r} does not start with a letter label "
                                 f"like 'A.'")
        if m.group(1) in options:
            raise BenchmarkError(f"{path}: {where}: option label {m.group(1)} appears twice")
        options[m.group(1)] = m.group(2).strip()
    return options


def letters(n: int) -> list[str]:
    if n > 26:
        raise ValueError(f"{n} options: at most 26 are supported")
    return [chr(ord("A") + i) for i in range(n)]


def lettered_options(texts) -> dict[str, str]:
    """["x", " y"] -> {"A": "x", "B": "y"}: option texts labelled A, B, ... in order."""
    texts = list(texts)
    return dict(zip(letters(len(texts)), (str(t).strip() for t in texts)))


def relative_url_path(url: str, marker: str = "/resolve/main/") -> str:
    """A Hugging Face download URL -> the file's path inside the dataset repository."""
    if marker in url:
        return url.split(marker, 1)[1]
    if "://" in url:
        return url.split("://", 1)[1].split("/", 1)[-1]
    return url.lstrip("./")
