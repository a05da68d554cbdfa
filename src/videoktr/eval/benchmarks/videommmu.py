"""VideoMMMU (EvolvingLMMs-Lab/VideoMMMU): lecture videos, three tracks.

Question files: `{perception,comprehension,adaptation}_video.json`, each `{"<Track>": {"0": row, ...}}` with
rows `{id, link_selected, question, options [str], answer, question_type?}`; 2 to 14 options labelled A, B, ...
in order; adaptation has open questions (empty options) whose answer is a number, a letter or a list written as
a string ("['24/7', '3.429', '3.43]"). The subject is parsed from ids like `validation_Art_Theory_12`.

Ids repeat across the tracks (the same lecture is asked about three times), so the track is the item's task
(`perception`, `comprehension`, `adaptation`) and the item id is the file's `id`. Videos:
`<Track>/<id>.mp4` (the Hugging Face layout), or `videos/<id>.mp4` / `<id>.mp4`.

Adaptation questions refer to an image (`<image 1>`) that the Hugging Face release shows in the video's last
frames; the JSON files carry no image, so none is attached here.
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import Benchmark, BenchmarkError, Item, discover_files, lettered_options, read_json, require

TRACKS = {"perception": "Perception", "comprehension": "Comprehension", "adaptation": "Adaptation"}
FIELDS = ("id", "question", "options", "answer")
_ID = re.compile(r"^(?:dev|validation|test|new)_(.+)_\d+$")
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)(/\d+)?%?$")


def subject_of(item_id: str) -> str:
    m = _ID.match(item_id)
    return m.group(1) if m else "unknown"


def split_answers(answer: str) -> list[str]:
    """"['24/7', '3.429', '3.43]" -> ["24/7", "3.429", "3.43"]; a plain answer -> [answer]."""
    text = answer.strip()
    if text.startswith("[") and text.endswith("]"):
        parts = [p.strip().strip("'\"").strip() for p in text[1:-1].split(",")]
        parts = [p for p in parts if p]
        if parts:
            return parts
    return [text]


def open_answer(answer: str) -> dict:
    """Item fields of an open answer: the first of `split_answers` as the answer, the rest as alternatives,
    scored as numbers when every one is a number, else as text."""
    answers = split_answers(answer)
    kind = "numeric" if all(_NUMBER.match(a.replace(",", "")) for a in answers) else "open"
    return dict(answer=answers[0], alternatives=tuple(answers[1:]), answer_type=kind)


class VideoMMMU(Benchmark):
    name = "videommmu"
    title = "VideoMMMU"
    tasks = tuple(TRACKS)
    layout = "{perception,comprehension,adaptation}_video.json (root or up to 3 folders deep); <Track>/<id>.mp4"

    def discover(self, data_root: Path, tasks) -> list[Path]:
        paths = []
        for task in tasks:
            paths.extend(discover_files(self.name, data_root, [f"{task}_video.json"], what=f"{task}_video.json"))
        return paths

    def load_file(self, path: Path, tasks) -> list[Item]:
        data = read_json(path)
        if not isinstance(data, dict) or not data:
            raise BenchmarkError(f"{path}: expected {{\"<Track>\": {{\"0\": row, ...}}}}")
        items = []
        for track, rows in data.items():
            task = track.strip().lower()
            if task not in TRACKS:
                raise BenchmarkError(f"{path}: unknown track {track!r}; expected one of {list(TRACKS.values())}")
            if task not in tasks:
                continue
            if not isinstance(rows, dict):
                raise BenchmarkError(f"{path}: track {track!r}: expected an object of rows keyed '0', '1', ...")
            for key, row in rows.items():
                items.append(self._item(row, path, f"{track} row {key}", task, track))
        return items

    def _item(self, row, path: Path, where: str, task: str, track: str) -> Item:
        require(row, FIELDS, path, where)
        item_id = str(row["id"])
        where = f"{where} ({item_id})"
        opts = row["options"] or []
        if not isinstance(opts, list):
            raise BenchmarkError(f"{path}: {where}: 'options' must be a list")
        answer = str(row["answer"]).strip()
        categories = {"track": track, "subject": subject_of(item_id)}
        common = dict(id=item_id, benchmark=self.name, question=str(row["question"]).strip(),
                      video=f"{track}/{item_id}.mp4", categories=categories, task=task)
        qtype = row.get("question_type")
        if opts and qtype != "open":
            options = lettered_options(opts)
            if answer not in options:
                raise BenchmarkError(f"{path}: {where}: answer {answer!r} is not an option label {list(options)}")
            categories["question_type"] = "multiple-choice"
            return Item(answer=answer, answer_type="mc", options=options, **common)
        categories["question_type"] = "open"
        return Item(**open_answer(answer), **common)


ADAPTER = VideoMMMU()
