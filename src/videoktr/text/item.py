"""The question every reader of model text works on: an `Item` (question, options, answer and its type), the
answer types and how an option line is labelled ("A. text"). Shared by training rows, rewards and evaluation
(`videoktr.eval.benchmarks` builds Items from the benchmarks' files)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# How an item's answer is compared (see scoring.py):
#   mc               one option label (A, B, ...); options maps label -> text
#   yes_no           "yes" or "no"
#   caption_matching one caption label as the file writes it ("Caption A", "Sentence B", "Option 1")
#   numeric          a number (equal after rounding both to 2 decimals)
#   open             free text (normalised exact match; benchmarks judge these with an LLM, see text/extract.py)
#   relaxed          ChartQA's relaxed accuracy: numbers within 5% relative error, other text exact
#   regression       a number scored with mean relative accuracy (Video-R1's "regression" rows)
ANSWER_TYPES = ("mc", "yes_no", "caption_matching", "numeric", "open", "relaxed", "regression")
CHOICE_TYPES = ("mc", "caption_matching")


@dataclass(frozen=True)
class Item:
    """One question of a benchmark.

    id: the benchmark's own id where its files have one (unique within `task`).
    task: sub-task for benchmarks whose files repeat ids across sub-tasks (TempCompass task types, VideoMMMU
        tracks); None otherwise. (task, id) is unique within a benchmark.
    options: ordered mapping label -> option text for choice questions, else None.
    answer: the correct label (choice types), "yes"/"no", or the answer text/number.
    alternatives: further accepted answers (e.g. VideoMMMU open answers given as a list).
    video / image: paths relative to the data root (None when absent); image_data: embedded image bytes
        (Hugging Face parquet exports), used when `image` is None.
    categories: fields reported per category, e.g. {"question_type": "TA"} or {"duration": "short", ...}.
    extra: raw fields that official scoring rules need (e.g. TempCompass's raw question and answer strings).
    """

    id: str
    benchmark: str
    question: str
    answer: str
    answer_type: str
    options: dict[str, str] | None = None
    video: str | None = None
    image: str | None = None
    categories: dict[str, str] = field(default_factory=dict)
    task: str | None = None
    alternatives: tuple[str, ...] = ()
    image_data: tuple[bytes, ...] = field(default=(), repr=False)
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.answer_type not in ANSWER_TYPES:
            raise ValueError(f"item {self.id!r}: unknown answer_type {self.answer_type!r}")
        if self.answer_type in CHOICE_TYPES and not self.options:
            raise ValueError(f"item {self.id!r}: a {self.answer_type} item needs options")

    @property
    def key(self) -> tuple[str, str]:
        """(task or "", id): unique within one benchmark."""
        return (self.task or "", self.id)

    @property
    def label(self) -> str:
        """Human-readable unique name: "task/id" when the item has a task, else the id."""
        return f"{self.task}/{self.id}" if self.task else self.id


LABELLED_OPTION = re.compile(r"^\s*\(?([A-Z])[.):]\s*(.*)$", re.S)
