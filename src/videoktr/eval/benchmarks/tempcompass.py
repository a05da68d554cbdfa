"""TempCompass (llyx97/TempCompass): temporal perception in five dimensions.

Question files: `questions/{multi-choice,yes_no,caption_matching}.json` (or the same names flat), each
`{video_id: {dimension: [{"question": str, "answer": str}]}}` with dimensions action, speed, direction, order,
attribute_change. Multi-choice questions carry their options as lines "A. text" and answers like
"A. dunking a basketball"; yes/no answers are "yes"/"no"; caption-matching questions carry two lines
"Caption A: ..." / "Sentence B: ..." / "Option 1: ..." and the answer repeats one line.

The task type is the item's task (`multi-choice` is the default: the paper's Table 1 reports it, as Video-R1's
evaluation set does; `all` loads the three). The captioning task is scored only by an LLM judge officially and
is not supported. Item id: `<video_id>/<dimension>/<index>`, index 0-based within that dimension's list of that
file. Videos: `videos/<video_id>.mp4`.
"""

from __future__ import annotations

from pathlib import Path

from .base import Benchmark, BenchmarkError, Item, find_files, parse_labelled_options, read_json

TASKS = ("multi-choice", "yes_no", "caption_matching")
DIMENSIONS = ("action", "speed", "direction", "order", "attribute_change")


class TempCompass(Benchmark):
    name = "tempcompass"
    title = "TempCompass"
    tasks = TASKS
    default_tasks = ("multi-choice",)
    layout = "questions/<task>.json or <task>.json (task: multi-choice, yes_no, caption_matching); videos/<id>.mp4"

    def discover(self, data_root: Path, tasks) -> list[Path]:
        paths = []
        for task in tasks:
            found = find_files(data_root, [f"questions/{task}.json", f"{task}.json"])
            if not found:
                raise BenchmarkError(f"tempcompass: no {task}.json under {data_root} (looked for "
                                     f"questions/{task}.json and {task}.json); pass it with --questions")
            paths.append(found[0])
        return paths

    def load_file(self, path: Path, tasks) -> list[Item]:
        if path.stem in TASKS:
            task = path.stem
        elif len(tasks) == 1:
            task = tasks[0]
        elif path.stem == "captioning":
            raise BenchmarkError(f"{path}: the captioning task is judged by an LLM only; not supported")
        else:
            raise BenchmarkError(f"{path}: cannot tell the task from the file name; name it "
                                 f"<task>.json or give exactly one --task ({', '.join(TASKS)})")
        data = read_json(path)
        if not isinstance(data, dict):
            raise BenchmarkError(f"{path}: expected {{video_id: {{dimension: [questions]}}}}")
        items = []
        for video_id, dims in data.items():
            if not isinstance(dims, dict):
                raise BenchmarkError(f"{path}: video {video_id}: expected {{dimension: [questions]}}")
            for dim, rows in dims.items():
                if not isinstance(rows, list):
                    raise BenchmarkError(f"{path}: video {video_id}, dimension {dim}: expected a list")
                for index, row in enumerate(rows):
                    where = f"video {video_id}, dimension {dim}, index {index}"
                    items.append(self._item(row, path, where, task, str(video_id), str(dim), index))
        return items

    def _item(self, row, path: Path, where: str, task: str, video_id: str, dim: str, index: int) -> Item:
        if not isinstance(row, dict) or "question" not in row or "answer" not in row:
            raise BenchmarkError(f"{path}: {where}: expected {{\"question\", \"answer\"}}")
        raw_q, raw_a = str(row["question"]), str(row["answer"])
        lines = raw_q.split("\n")
        common = dict(id=f"{video_id}/{dim}/{index}", benchmark=self.name, video=f"videos/{video_id}.mp4",
                      categories={"task": task, "dimension": dim}, task=task,
                      extra={"raw_question": raw_q, "raw_answer": raw_a})
        if task == "yes_no":
            answer = raw_a.strip().lower()
            if answer not in ("yes", "no"):
                raise BenchmarkError(f"{path}: {where}: yes/no answer expected, got {raw_a!r}")
            return Item(question=raw_q.strip(), answer=answer, answer_type="yes_no", **common)
        if len(lines) < 3:
            raise BenchmarkError(f"{path}: {where}: expected a question line followed by option lines")
        if task == "multi-choice":
            options = parse_labelled_options(lines[1:], path, where)
            answer = parse_labelled_options([raw_a], path, where + " (answer)")
            label = next(iter(answer))
            kind = "mc"
        else:
            options = {}
            for line in lines[1:]:
                if ": " not in line:
                    raise BenchmarkError(f"{path}: {where}: caption line {line!r} has no 'label: text' form")
                label_, text = line.split(": ", 1)
                options[label_.strip()] = text.strip()
            label = raw_a.split(": ", 1)[0].strip()
            kind = "caption_matching"
        if label not in options:
            raise BenchmarkError(f"{path}: {where}: answer {raw_a!r} matches no option label {list(options)}")
        return Item(question=lines[0].strip(), answer=label, answer_type=kind, options=options, **common)


ADAPTER = TempCompass()
