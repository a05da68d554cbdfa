"""Video-MME (MME-Benchmarks/Video-MME): general video understanding, four options A-D.

Two question-file formats:
- the official JSON answer format: a list of videos `{video_id, duration (short|medium|long), domain,
  sub_category, questions: [{question_id, task_type, question, options ["A. ..."], answer, response?}]}` (older
  files name the video fields duration_category, video_category, video_subcategory; trailing commas, as in the
  official template, are tolerated);
- the Hugging Face parquet (`videomme/test-00000-of-00001.parquet`): one row per question with the same fields
  plus `videoID` (the YouTube id that names the video file); needs pandas and pyarrow.
Tasks: the duration (`short`, `medium`, `long`; default all). Item id: `question_id`. Videos: `data/<videoID>.mp4`
(the Hugging Face layout) when the file names the YouTube id, else `data/<video_id>.mp4`.
"""

from __future__ import annotations

from pathlib import Path

from .base import (Benchmark, BenchmarkError, Item, discover_files, parse_labelled_options, read_records,
                   require)

CANDIDATES = ["videomme/test-00000-of-00001.parquet", "test-00000-of-00001.parquet", "videomme_questions.json",
              "videomme.json"]
Q_FIELDS = ("question_id", "task_type", "question", "options", "answer")


def _first(row: dict, *keys, default=None):
    for k in keys:
        if row.get(k) not in (None, ""):
            return row[k]
    return default


class VideoMME(Benchmark):
    name = "videomme"
    title = "VideoMME"
    tasks = ("short", "medium", "long")
    layout = ("videomme/test-00000-of-00001.parquet, test-00000-of-00001.parquet, videomme_questions.json or "
              "videomme.json (exactly one; else --questions); data/<videoID>.mp4")

    def discover(self, data_root: Path, tasks) -> list[Path]:
        return discover_files(self.name, data_root, CANDIDATES, max_depth=2)

    def load_file(self, path: Path, tasks) -> list[Item]:
        rows = read_records(path)
        if rows and isinstance(rows[0], dict) and "questions" not in rows[0]:  # flat parquet rows
            rows = [{**r, "questions": [r]} for r in rows]
        items = []
        for i, video in enumerate(rows):
            require(video, ("video_id", "questions"), path, f"row {i}")
            duration = str(_first(video, "duration", "duration_category", default="unknown"))
            if duration not in tasks:
                continue
            file_id = str(_first(video, "videoID", "video_id"))
            categories = {"duration": duration,
                          "domain": str(_first(video, "domain", "video_category", default="unknown")),
                          "sub_category": str(_first(video, "sub_category", "video_subcategory", default="unknown"))}
            for j, q in enumerate(video["questions"]):
                where = f"row {i} (video {video['video_id']}), question {j}"
                require(q, Q_FIELDS, path, where)
                where = f"{where} ({q['question_id']})"
                options = parse_labelled_options(list(q["options"]), path, where)
                answer = str(q["answer"]).strip()
                if answer not in options:
                    raise BenchmarkError(f"{path}: {where}: answer {answer!r} is not one of {list(options)}")
                items.append(Item(
                    id=str(q["question_id"]), benchmark=self.name, question=str(q["question"]).strip(),
                    answer=answer, answer_type="mc", options=options, video=f"data/{file_id}.mp4",
                    categories={**categories, "task_type": str(q["task_type"])},
                ))
        return items


ADAPTER = VideoMME()
