"""Rewards of the world (TRL signature): answer accuracy and format."""

from __future__ import annotations

import re

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.S)
_NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve".split())}


def _text(completion) -> str:
    from ..rewards import completion_text

    return completion_text(completion)


def normalise_answer(text: str | None) -> str | None:
    if text is None:
        return None
    t = re.sub(r"\s+", " ", text.strip().lower()).strip(" .,!;:'\"`*")
    return t


def _number(text: str) -> float | None:
    if text in _NUMBER_WORDS:
        return float(_NUMBER_WORDS[text])
    try:
        return float(text)
    except ValueError:
        return None


def answer_of(text: str) -> str | None:
    """Normalised content of the LAST complete <answer>...</answer>, else None."""
    found = _ANSWER_RE.findall(text or "")
    return normalise_answer(found[-1]) if found else None


def is_correct(completion: str, solution: str) -> bool:
    pred = answer_of(_text(completion))
    gold = answer_of(solution)
    if gold is None:
        gold = normalise_answer(solution)
    if not pred:
        return False
    if pred == gold:
        return True
    a, b = _number(pred), _number(gold)
    return a is not None and b is not None and abs(a - b) < 1e-9


def accuracy_reward(completions, solution, **kwargs) -> list[float]:
    """1.0 when the last <answer> content equals the solution's (case, surrounding whitespace and
    punctuation ignored; numbers compared as numbers, "3" == "3.0" == "three"), else 0.0. TRL signature."""
    return [float(is_correct(c, s)) for c, s in zip(completions, solution)]


def format_reward(completions, **kwargs) -> list[float]:
    """1.0 when the whole response (surrounding whitespace ignored) is <think>...</think> <answer>...</answer>
    (`videoktr.rewards.format_reward`, the reward real data trains with)."""
    from ..rewards import format_reward

    return format_reward(completions)
