"""Scoring: items + raw outputs -> per-item records and a summary (accuracy in percent, overall and per
category, with counts of unparsed and missing answers).

Per answer type (after `extract.extract`):
- mc, caption_matching, yes_no: the extracted label equals the answer;
- numeric: equal after rounding both to 2 decimals (MMMU's and Video-R1's convention; fractions such as
  "24/7" are evaluated), any of the accepted answers;
- regression: mean relative accuracy over thresholds 0.50, 0.55, ..., 0.95 (Video-R1's metric), a fraction;
- relaxed (ChartQA): numbers within 5% relative error of the answer (exactly equal when the answer is 0),
  other answers equal ignoring case and surrounding spaces;
- open: normalised text equal (case, punctuation, articles and spacing ignored), or the answer contained as a
  phrase in a prediction at most 5 words longer. Benchmarks judge open answers with an LLM; this is stricter.

Summary fields: `accuracy` = 100 * score / total (unparsed and missing answers, and items whose media could not
be read, count as wrong); `accuracy_parsed` = 100 * score / (total - unparsed - missing - failed), the
denominator Video-MME's official script uses (it leaves unreadable responses out). Items that failed (their
media could not be read) are records with method "failed" and their reason in `error`, counted in `failed`.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass

from .benchmarks.base import Item
from ..text.extract import extract, to_float


@dataclass
class Record:
    id: str
    output: str | None
    extracted: str | None
    correct: bool
    score: float
    method: str
    answer: str
    task: str | None = None
    error: str | None = None  # why the item could not be run (method "failed")

    def to_json(self) -> dict:
        d = asdict(self)
        for k in ("task", "error"):
            if d[k] is None:
                d.pop(k)
        return d


def numbers_equal(pred: str | None, gold: str) -> bool:
    p, g = to_float(pred), to_float(gold)
    if p is None or g is None or not (math.isfinite(p) and math.isfinite(g)):
        return False
    return round(p, 2) == round(g, 2)


def relaxed_match(pred: str | None, gold: str, tolerance: float = 0.05) -> bool:
    if pred is None:
        return False
    p, g = to_float(pred), to_float(gold)
    if p is not None and g is not None:
        return p == g if g == 0 else abs(p - g) / abs(g) <= tolerance
    return pred.strip().lower() == gold.strip().lower()


def mean_relative_accuracy(pred: str | None, gold: str) -> float:
    p, g = to_float(pred), to_float(gold)
    if p is None or g is None:
        return 0.0
    if g == 0:
        return float(p == 0)
    # relative error < 1 - t for t = 0.50, 0.55, ..., 0.95, i.e. 20 |p - g| < (10 - k) |g| (exact at the bounds)
    return sum(20 * abs(p - g) < (10 - k) * abs(g) for k in range(10)) / 10


def _norm_text(text: str) -> str:
    words = re.sub(r"[^\w\s]", " ", text.lower()).split()
    if len(words) > 1:  # drop articles, but keep a one-word answer such as "A"
        words = [w for w in words if w not in ("a", "an", "the")]
    return " ".join(words)


def text_match(pred: str | None, gold: str) -> bool:
    if pred is None:
        return False
    p, g = _norm_text(pred), _norm_text(gold)
    if not g:
        return False
    if p == g:
        return True
    return bool(re.search(rf"(?<!\w){re.escape(g)}(?!\w)", p)) and len(p.split()) <= len(g.split()) + 5


def judge(value: str | None, item: Item) -> float:
    """Score in [0, 1] of an extracted answer (0 when None)."""
    if value is None:
        return 0.0
    golds = (item.answer, *item.alternatives)
    kind = item.answer_type
    if kind in ("mc", "caption_matching"):
        return float(value == item.answer)
    if kind == "yes_no":
        return float(value.lower() == item.answer.lower())
    if kind == "numeric":
        return float(any(numbers_equal(value, g) for g in golds))
    if kind == "regression":
        return mean_relative_accuracy(value, item.answer)
    if kind == "relaxed":
        return float(any(relaxed_match(value, g) for g in golds))
    return float(any(text_match(value, g) for g in golds))


def score_item(item: Item, output: str | None, missing: bool = False, failed: str | None = None) -> Record:
    if failed is not None:
        return Record(item.id, None, None, False, 0.0, "failed", item.answer, item.task, error=failed)
    if missing:
        return Record(item.id, None, None, False, 0.0, "missing", item.answer, item.task)
    ex = extract(output, item)
    score = judge(ex.value, item)
    return Record(item.id, output, ex.value, score == 1.0, score, ex.method, item.answer, item.task)


class MissingPredictionsError(ValueError):
    pass


def score_items(items: list[Item], outputs: dict[tuple[str, str], str | None],
                allow_missing: bool = False, failed: dict[tuple[str, str], str] | None = None) -> list[Record]:
    """outputs: item.key -> raw output; failed: item.key -> why it could not be run (recorded as failed, score
    0). Other items without an output raise, unless `allow_missing` (then they score 0 and are counted as
    missing)."""
    failed = {k: v for k, v in (failed or {}).items() if k not in outputs}
    absent = [it for it in items if it.key not in outputs and it.key not in failed]
    if absent and not allow_missing:
        names = ", ".join(it.label for it in absent[:5]) + (" ..." if len(absent) > 5 else "")
        raise MissingPredictionsError(f"{len(absent)} of {len(items)} items have no prediction ({names}); "
                                      f"pass --allow-missing to score them as wrong")
    return [score_item(it, outputs.get(it.key), missing=it.key not in outputs, failed=failed.get(it.key))
            for it in items]


def _bucket(records: list[Record]) -> dict:
    total = len(records)
    score = sum(r.score for r in records)
    unparsed = sum(1 for r in records if r.extracted is None and r.method not in ("missing", "failed"))
    missing = sum(1 for r in records if r.method == "missing")
    failed = sum(1 for r in records if r.method == "failed")
    parsed = total - unparsed - missing - failed
    out = {
        "total": total,
        "correct": round(score, 4) if score != int(score) else int(score),
        "accuracy": round(100.0 * score / total, 4) if total else 0.0,
        "unparsed": unparsed,
    }
    if missing:
        out["missing"] = missing
    if failed:
        out["failed"] = failed
    out["accuracy_parsed"] = round(100.0 * score / parsed, 4) if parsed else 0.0
    return out


def summarize(items: list[Item], records: list[Record], benchmark: str = "") -> dict:
    """Overall and per-category accuracy (percent). Categories: every key of the items' `categories`."""
    by_key = {(r.task or "", r.id): r for r in records}
    summary = {"benchmark": benchmark or (items[0].benchmark if items else ""), **_bucket(records)}
    groups: dict[str, dict[str, list[Record]]] = defaultdict(lambda: defaultdict(list))
    for it in items:
        rec = by_key.get(it.key)
        if rec is None:
            continue
        for field, value in it.categories.items():
            groups[field][str(value)].append(rec)
    summary["categories"] = {field: {v: _bucket(rs) for v, rs in sorted(vals.items())}
                             for field, vals in groups.items()}
    summary["methods"] = dict(sorted(Counter(r.method for r in records).items()))
    return summary
