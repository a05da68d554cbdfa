"""Image benchmarks of the paper's Table 3: MMMU (val), AI2D, MMStar, ChartQA.

No question files of these ship with the project; the adapters read the public Hugging Face exports (parquet,
needs pandas + pyarrow) and the same columns as JSON / JSONL records. Image columns may hold
`{"bytes": ..., "path": ...}` (bytes, or base64 text in JSON) or a path relative to the data root.

- MMMU (MMMU/MMMU): `<Subject>/validation-*.parquet`; columns id, question, options (a Python-literal list as
  text, e.g. "['$6', '$7']"), image_1..image_7, answer (a letter, or text for open questions),
  question_type ("multiple-choice" | "open"), subfield, topic_difficulty. Id: `id`.
- AI2D (lmms-lab/ai2d): `data/test-*.parquet`; columns question, options [str], answer (the 0-based index of the
  right option, as text), image. The rows carry no id: id = the row's 0-based index.
- MMStar (Lin-Chen/MMStar): `mmstar.parquet`; columns index, question (with the options inline:
  "...\\nOptions: A: x, B: y, C: z, D: w"), image, answer (a letter), category, l2_category. Id: `index`.
- ChartQA (ahmed-masry/ChartQA): `test/test_human.json` and `test/test_augmented.json`, rows
  {imgname, query, label}, images `test/png/<imgname>`; id `<split>/<row index>`. Or the Hugging Face export
  (HuggingFaceM4/ChartQA, `data/test-*.parquet`: image, query, label [str], human_or_machine 0|1); id = row index.
  Tasks: human, augmented (default both). Scored with relaxed accuracy.
"""

from __future__ import annotations

import ast
import base64
import re
from pathlib import Path

from .base import (Benchmark, BenchmarkError, Item, discover_files, find_files, lettered_options, letters,
                   read_records, require)
from .videommmu import open_answer


def _image(value, path: Path, where: str) -> tuple[str | None, bytes | None]:
    """An image cell -> (relative path or None, bytes or None)."""
    if value is None:
        return None, None
    if isinstance(value, str):
        return value, None
    if isinstance(value, dict):
        data = value.get("bytes")
        if isinstance(data, str):
            try:
                data = base64.b64decode(data, validate=True)
            except ValueError as exc:
                raise BenchmarkError(f"{path}: {where}: image bytes are text but not base64") from exc
        if data:
            return None, bytes(data)
        if value.get("path"):
            return str(value["path"]), None
    raise BenchmarkError(f"{path}: {where}: unreadable image cell of type {type(value).__name__}")


class MMMU(Benchmark):
    name = "mmmu"
    title = "MMMU (val)"
    media = "image"
    layout = "<Subject>/validation-*.parquet (all subjects), or mmmu_validation.jsonl / .json"

    def discover(self, data_root, tasks):
        return discover_files(self.name, data_root, ["*/validation-*.parquet", "validation-*.parquet",
                                                     "mmmu_validation.jsonl", "mmmu_validation.json"], many=True)

    def load_file(self, path: Path, tasks) -> list[Item]:
        items = []
        for i, row in enumerate(read_records(path)):
            require(row, ("id", "question", "options", "answer"), path, f"row {i}")
            where = f"row {i} ({row['id']})"
            opts = row["options"]
            if isinstance(opts, str):
                try:
                    opts = ast.literal_eval(opts) if opts.strip() else []
                except (ValueError, SyntaxError) as exc:
                    raise BenchmarkError(f"{path}: {where}: options {opts!r} are not a list literal") from exc
            paths, blobs = [], []
            for k in range(1, 8):
                p, b = _image(row.get(f"image_{k}"), path, where)
                if p:
                    paths.append(p)
                if b:
                    blobs.append(b)
            m = re.match(r"^(?:dev|validation|test)_(.+)_\d+$", str(row["id"]))
            categories = {"subject": m.group(1) if m else "unknown"}
            for src, dst in (("subfield", "subfield"), ("topic_difficulty", "difficulty")):
                if row.get(src):
                    categories[dst] = str(row[src])
            common = dict(id=str(row["id"]), benchmark=self.name, question=str(row["question"]).strip(),
                          image=paths[0] if paths else None, image_data=tuple(blobs), categories=categories,
                          extra={"images": paths} if len(paths) > 1 else {})
            answer = str(row["answer"]).strip()
            if opts and row.get("question_type", "multiple-choice") != "open":
                options = lettered_options(opts)
                if answer not in options:
                    raise BenchmarkError(f"{path}: {where}: answer {answer!r} is not one of {list(options)}")
                items.append(Item(answer=answer, answer_type="mc", options=options, **common))
            else:
                items.append(Item(**open_answer(answer), **common))
        return items


class AI2D(Benchmark):
    name = "ai2d"
    title = "AI2D"
    media = "image"
    layout = "data/test-*.parquet, test-*.parquet, ai2d.jsonl or ai2d.json"

    def discover(self, data_root, tasks):
        return discover_files(self.name, data_root,
                              ["data/test-*.parquet", "test-*.parquet", "ai2d.jsonl", "ai2d.json"])

    def load_file(self, path: Path, tasks) -> list[Item]:
        items = []
        for i, row in enumerate(read_records(path)):
            where = f"row {i}"
            require(row, ("question", "options", "answer", "image"), path, where)
            options = lettered_options(row["options"])
            try:
                answer = list(options)[int(str(row["answer"]).strip())]
            except (ValueError, IndexError) as exc:
                raise BenchmarkError(f"{path}: {where}: answer {row['answer']!r} is not an option index "
                                     f"0..{len(options) - 1}") from exc
            p, b = _image(row["image"], path, where)
            items.append(Item(id=str(row.get("id", i)), benchmark=self.name, question=str(row["question"]).strip(),
                              answer=answer, answer_type="mc", options=options, image=p,
                              image_data=(b,) if b else ()))
        return items


def split_inline_options(question: str, path: Path, where: str) -> tuple[str, dict[str, str]]:
    """MMStar: "stem\\nOptions: A: x, B: y, C: z" -> ("stem", {"A": "x", ...}); labels in order from A."""
    head, sep, tail = question.rpartition("Options:")
    if not sep:
        raise BenchmarkError(f"{path}: {where}: no 'Options:' in the question")
    labels = letters(26)
    starts = []
    pos = 0
    for k, label in enumerate(labels):
        marker = f"{label}: " if k == 0 else f", {label}: "
        j = tail.find(marker, pos)
        if j < 0:
            break
        starts.append((label, j, j + len(marker)))
        pos = j + len(marker)
    if len(starts) < 2:
        raise BenchmarkError(f"{path}: {where}: cannot read the options after 'Options:'")
    options = {}
    for k, (label, _, begin) in enumerate(starts):
        end = starts[k + 1][1] if k + 1 < len(starts) else len(tail)
        options[label] = tail[begin:end].strip()
    return head.strip(), options


class MMStar(Benchmark):
    name = "mmstar"
    title = "MMStar"
    media = "image"
    layout = "mmstar.parquet, mmstar.jsonl or mmstar.json"

    def discover(self, data_root, tasks):
        return discover_files(self.name, data_root, ["mmstar.parquet", "MMStar/mmstar.parquet", "mmstar.jsonl",
                                                     "mmstar.json"])

    def load_file(self, path: Path, tasks) -> list[Item]:
        items = []
        for i, row in enumerate(read_records(path)):
            require(row, ("index", "question", "answer", "image"), path, f"row {i}")
            where = f"row {i} (index {row['index']})"
            stem, options = split_inline_options(str(row["question"]), path, where)
            answer = str(row["answer"]).strip()
            if answer not in options:
                raise BenchmarkError(f"{path}: {where}: answer {answer!r} is not one of {list(options)}")
            p, b = _image(row["image"], path, where)
            categories = {k: str(row[k]) for k in ("category", "l2_category") if row.get(k)}
            items.append(Item(id=str(row["index"]), benchmark=self.name, question=stem, answer=answer,
                              answer_type="mc", options=options, image=p, image_data=(b,) if b else (),
                              categories=categories))
        return items


class ChartQA(Benchmark):
    name = "chartqa"
    title = "ChartQA"
    media = "image"
    tasks = ("human", "augmented")
    layout = "test/test_{human,augmented}.json (images test/png/), or data/test-*.parquet"

    def discover(self, data_root, tasks):
        found = find_files(data_root, [f"test/test_{t}.json" for t in tasks] + [f"test_{t}.json" for t in tasks])
        if found:
            return found
        return discover_files(self.name, data_root, ["data/test-*.parquet", "test-*.parquet"])

    def load_file(self, path: Path, tasks) -> list[Item]:
        original = path.stem in ("test_human", "test_augmented")
        items = []
        for i, row in enumerate(read_records(path)):
            where = f"row {i}"
            require(row, ("query", "label"), path, where)
            if original:
                split = path.stem.removeprefix("test_")
                item_id = f"{split}/{i}"
                require(row, ("imgname",), path, where)
                p, b = str(path.parent / "png" / str(row["imgname"])), None  # beside the question file
            else:
                require(row, ("image",), path, where)
                split = "augmented" if int(row.get("human_or_machine", 0) or 0) else "human"
                item_id = str(i)
                p, b = _image(row["image"], path, where)
            if split not in tasks:
                continue
            labels = row["label"] if isinstance(row["label"], list) else [row["label"]]
            if not labels:
                raise BenchmarkError(f"{path}: {where}: empty label")
            items.append(Item(id=item_id, benchmark=self.name, question=str(row["query"]).strip(),
                              answer=str(labels[0]).strip(), alternatives=tuple(str(x).strip() for x in labels[1:]),
                              answer_type="relaxed", image=p, image_data=(b,) if b else (),
                              categories={"split": split}))
        return items


MMMU_ADAPTER, AI2D_ADAPTER, MMSTAR_ADAPTER, CHARTQA_ADAPTER = MMMU(), AI2D(), MMStar(), ChartQA()
