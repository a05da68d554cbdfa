"""Video-R1's evaluation JSON format (the rows of its `Evaluation/eval_<name>.json` files and of its training
data): `{problem_id, problem, data_type ("video"|"image"), problem_type ("multiple choice" | "numerical" | "OCR"
| "free-form" | "regression"), options ["A. ..."], solution "<answer>X</answer>", path "./<dir>/<file>",
data_source?}`. Paths are relative to the folder that holds the media (give it as --data-root).

Any benchmark converted to this format (as Video-R1 distributes MMVU, VideoMMMU, VideoMME, TempCompass, ...)
can be evaluated with `--benchmark videor1 --questions FILE`. Item id: `problem_id`. Categories: problem_type and
data_source.
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import (Benchmark, BenchmarkError, Item, find_files, parse_labelled_options, read_records,
                   require)

FIELDS = ("problem_id", "problem", "data_type", "problem_type", "solution", "path")
KINDS = {"multiple choice": "mc", "numerical": "numeric", "regression": "regression", "ocr": "open",
         "free-form": "open"}
_SOLUTION = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.S | re.I)


class VideoR1Format(Benchmark):
    name = "videor1"
    title = "Video-R1 format"
    layout = "exactly one eval_*.json / eval_*.jsonl at the root or in Evaluation/ (else --questions)"

    def discover(self, data_root: Path, tasks) -> list[Path]:
        found = find_files(data_root, ["eval_*.json", "eval_*.jsonl", "Evaluation/eval_*.json",
                                       "Evaluation/eval_*.jsonl"], max_depth=1)
        if len(found) != 1:
            what = ", ".join(map(str, found)) if found else "none"
            raise BenchmarkError(f"videor1: expected exactly one eval_*.json under {data_root} (found: {what}); "
                                 f"pass the file with --questions")
        return found

    def load_file(self, path: Path, tasks) -> list[Item]:
        items = []
        for i, row in enumerate(read_records(path)):
            require(row, FIELDS, path, f"row {i}")
            where = f"row {i} (problem_id {row['problem_id']})"
            ptype = str(row["problem_type"])
            kind = KINDS.get(ptype.lower())
            if kind is None:
                raise BenchmarkError(f"{path}: {where}: unknown problem_type {ptype!r}; expected one of "
                                     f"{', '.join(KINDS)}")
            m = _SOLUTION.search(str(row["solution"]))
            answer = (m.group(1) if m else str(row["solution"])).strip()
            media = str(row["path"])
            media = media[2:] if media.startswith("./") else media
            dtype = str(row["data_type"])
            if dtype not in ("video", "image"):
                raise BenchmarkError(f"{path}: {where}: data_type must be 'video' or 'image', got {dtype!r}")
            categories = {"problem_type": ptype}
            if row.get("data_source"):
                categories["data_source"] = str(row["data_source"])
            options = None
            if kind == "mc":
                options = parse_labelled_options(list(row.get("options") or []), path, where)
                if answer.upper() not in options:
                    raise BenchmarkError(f"{path}: {where}: solution {answer!r} is not one of {list(options)}")
                answer = answer.upper()
            items.append(Item(
                id=str(row["problem_id"]), benchmark=self.name, question=str(row["problem"]).strip(),
                answer=answer, answer_type=kind, options=options,
                video=media if dtype == "video" else None, image=media if dtype == "image" else None,
                categories=categories, extra={"where": f"{path}: {where}", "data_type": dtype},
            ))
        return items


ADAPTER = VideoR1Format()
