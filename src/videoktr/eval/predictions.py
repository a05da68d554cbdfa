"""Reading model outputs to score: our JSONL format and three published formats.

- JSONL (ours; what `predictions.jsonl` holds): one object per line with `id` and `output` (the raw model
  text); optional `task` (needed only where an id repeats across a benchmark's tasks, e.g. TempCompass task
  types, VideoMMMU tracks) and `benchmark` (to keep one file for several benchmarks apart).
- Video-MME's official answer file (JSON): videos with `questions: [{question_id, ..., response}]`.
- Video-R1 / Video-KTR evaluation output (JSON): `{"results": [{problem_id, ..., output}]}`.
- TempCompass's prediction files (JSON): `{video_id: {dimension: [{question, answer?, prediction}]}}`; the task
  is taken from the file name (multi-choice.json, yes_no.json, caption_matching.json) when it is one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .benchmarks.base import BenchmarkError, Item, iter_jsonl, read_json

TEMPCOMPASS_TASKS = ("multi-choice", "yes_no", "caption_matching")


@dataclass(frozen=True)
class Prediction:
    id: str
    output: str | None
    task: str | None = None
    benchmark: str | None = None
    where: str = field(default="", compare=False)  # "file:line" (JSONL) or "file: results[i]" etc., for errors


def read_predictions(path: str | Path) -> list[Prediction]:
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"predictions file not found: {path}")
    if path.suffix.lower() == ".jsonl":
        return _read_jsonl(path)
    data = read_json(path)
    if isinstance(data, dict) and isinstance(data.get("results"), list):
        return [_video_r1_row(r, path, i) for i, r in enumerate(data["results"])]
    if isinstance(data, list) and data and isinstance(data[0], dict) and "questions" in data[0]:
        return _videomme(data, path)
    if isinstance(data, list):
        return [_our_row(r, path, f"row {i}", f"{path}: row {i}") for i, r in enumerate(data)]
    if isinstance(data, dict):
        return _tempcompass(data, path)
    raise BenchmarkError(f"{path}: unrecognised predictions format")


def _our_row(row, path: Path, where: str, loc: str) -> Prediction:
    if not isinstance(row, dict) or "id" not in row or "output" not in row:
        raise BenchmarkError(f"{path}: {where}: expected an object with 'id' and 'output'")
    out = row["output"]
    return Prediction(str(row["id"]), None if out is None else str(out), row.get("task"), row.get("benchmark"),
                      loc)


def _read_jsonl(path: Path) -> list[Prediction]:
    return [_our_row(row, path, f"line {n}", f"{path}:{n}") for n, row in iter_jsonl(path)]


def _video_r1_row(row, path: Path, i: int) -> Prediction:
    if not isinstance(row, dict) or "problem_id" not in row or "output" not in row:
        raise BenchmarkError(f"{path}: results[{i}]: expected 'problem_id' and 'output'")
    return Prediction(str(row["problem_id"]), row["output"], None, "videor1", f"{path}: results[{i}]")


def _videomme(videos: list, path: Path) -> list[Prediction]:
    rows = []
    for i, video in enumerate(videos):
        for j, q in enumerate(video.get("questions", [])):
            if "question_id" not in q or "response" not in q:
                raise BenchmarkError(f"{path}: video {i}, question {j}: expected 'question_id' and 'response'")
            rows.append(Prediction(str(q["question_id"]), q["response"], None, "videomme",
                                   f"{path}: video {i}, question {j}"))
    return rows


def _tempcompass(data: dict, path: Path) -> list[Prediction]:
    task = path.stem if path.stem in TEMPCOMPASS_TASKS else None
    rows = []
    for vid, dims in data.items():
        if not isinstance(dims, dict):
            raise BenchmarkError(f"{path}: video {vid}: expected {{dimension: [predictions]}}")
        for dim, preds in dims.items():
            for k, p in enumerate(preds):
                if not isinstance(p, dict) or ("prediction" not in p and "response" not in p):
                    raise BenchmarkError(f"{path}: video {vid}, {dim}[{k}]: expected 'prediction'")
                out = p.get("prediction", p.get("response"))
                rows.append(Prediction(f"{vid}/{dim}/{k}", out, task, "tempcompass",
                                       f"{path}: video {vid}, {dim}[{k}]"))
    return rows


def match_predictions(preds: list[Prediction], items: list[Item], benchmark: str,
                      source: str = "predictions") -> tuple[dict[tuple[str, str], str | None], int]:
    """Map predictions onto item keys. Returns (key -> output, number of predictions matching no item).
    A prediction without `task` whose id names items of several tasks is an error (add `task`), and so are two
    predictions for the same item (the error names both places and the id)."""
    by_id: dict[str, list[tuple[str, str]]] = {}
    for it in items:
        by_id.setdefault(it.id, []).append(it.key)
    outputs: dict[tuple[str, str], str | None] = {}
    first: dict[tuple[str, str], Prediction] = {}
    unknown = 0
    for p in preds:
        if p.benchmark is not None and p.benchmark != benchmark:
            continue
        keys = by_id.get(p.id, [])
        if p.task is not None:
            keys = [k for k in keys if k[0] == p.task]
        if not keys:
            unknown += 1
            continue
        if len(keys) > 1:
            tasks = ", ".join(k[0] for k in keys)
            raise BenchmarkError(f"{source}: id {p.id!r} names items of several {benchmark} tasks ({tasks}); "
                                 f"add a 'task' field to each prediction")
        if keys[0] in first:
            q = first[keys[0]]
            label = f"{p.task}/{p.id}" if p.task else p.id
            raise BenchmarkError(f"duplicate prediction for id {label!r}: {q.where or source} and "
                                 f"{p.where or source}; keep one of them")
        first[keys[0]] = p
        outputs[keys[0]] = p.output
    return outputs, unknown
