"""MMVU (yale-nlp/MMVU): expert-level knowledge-intensive video understanding.

Question file: `validation.json`, a list of rows `{id, video, youtube_url, question_type ("multiple-choice" |
"open-ended"), metadata {subject, textbook, knowledge, rationale}, question, choices {A..E}, answer}`. Open-ended
rows carry empty choices. Tasks: `mc` (the multiple-choice subset, 625 items; the paper's "MMVU(mc)", default),
`open` (375 items) or `all`. Videos: the path inside the dataset repository taken from the `video` URL, e.g.
`videos/Art/0.mp4`. Item id: the file's `id`.
"""

from __future__ import annotations

from pathlib import Path

from .base import Benchmark, BenchmarkError, Item, discover_files, read_records, relative_url_path, require

FIELDS = ("id", "video", "question_type", "question", "choices", "answer")


class MMVU(Benchmark):
    name = "mmvu"
    title = "MMVU"
    tasks = ("mc", "open")
    default_tasks = ("mc",)
    layout = "validation.json (root, data/ or up to 3 folders deep); videos/<Subject>/<n>.mp4"

    def discover(self, data_root: Path, tasks) -> list[Path]:
        return discover_files(self.name, data_root, ["validation.json", "data/validation.json"],
                              what="validation.json")

    def load_file(self, path: Path, tasks) -> list[Item]:
        items = []
        for i, row in enumerate(read_records(path)):
            require(row, FIELDS, path, f"row {i}")
            where = f"row {i} ({row['id']})"
            qtype = str(row["question_type"])
            if qtype not in ("multiple-choice", "open-ended"):
                raise BenchmarkError(f"{path}: {where}: unknown question_type {qtype!r}")
            is_mc = qtype == "multiple-choice"
            if ("mc" if is_mc else "open") not in tasks:
                continue
            meta = row.get("metadata") or {}
            categories = {"subject": str(meta.get("subject", "unknown")), "question_type": qtype}
            common = dict(id=str(row["id"]), benchmark=self.name, question=str(row["question"]).strip(),
                          video=relative_url_path(str(row["video"])), categories=categories)
            answer = str(row["answer"]).strip()
            if is_mc:
                choices = row["choices"]
                if not isinstance(choices, dict):
                    raise BenchmarkError(f"{path}: {where}: 'choices' must be an object {{A: text, ...}}")
                options = {str(k).strip().upper(): str(v).strip() for k, v in choices.items() if str(v).strip()}
                if answer not in options:
                    raise BenchmarkError(f"{path}: {where}: answer {answer!r} is not one of {list(options)}")
                items.append(Item(answer=answer, answer_type="mc", options=options, **common))
            else:
                items.append(Item(answer=answer, answer_type="open", **common))
        return items


ADAPTER = MMVU()
