"""Rewards for Video-R1-format rows, with TRL's reward-function signature, and a registry that a config names.

Every reward function has TRL's signature `f(completions, **kwargs) -> list[float]`: `completions` are strings
or conversational lists (`[{"role": "assistant", "content": text}]`), and the dataset's columns (`solution`,
`problem_type`, `options`, ...) arrive as keyword lists aligned with `completions`, as do TRL's own extras
(`prompts`, `completion_ids`, `trainer_state`, ...), which the functions ignore unless they need them.

Accuracy by `problem_type` (on the content of the LAST complete `<answer>...</answer>`, stripped; a response
without a complete answer tag scores 0, so does an empty one):
- multiple choice: exact string equality with the solution's answer ("B" == "B", "B." != "B"), as Video-R1;
  `mc_mode="tolerant"` reads the option label with `text.extract.parse_choice` (the evaluation's reader), so
  "B.", "(B)", "B) text", "b", "**B**", "Answer: B" or the option's own text count as "B". `mc_mode="soft"`:
  TW-GRPO's partial credit for multi-answer questions (`soft_choice_score`): both answers are read as sets of
  comma-separated options (spaces removed, case kept); a subset of the true set scores |answer| / |truth|
  ("A,C" against "A,B,C": 2/3; "A" against "A": 1), anything else 0 ("A,D" against "A,B,C": 0).
- numerical: both parse as numbers (`text.extract.to_float`: "1,234", "$3", "45%" accepted) and are equal
  after rounding to 2 decimals ("3.0" == "3"). `strict_decimals=True` adds Video-R1's extra rule: 0 when
  exactly one of the two is written with a "." or "," (so there "3.0" != "3").
- OCR: 1 - word error rate (words split on whitespace, case kept, as Video-R1), clipped to [0, 1].
- free-form: mean of the ROUGE-1, ROUGE-2 and ROUGE-L F1 scores (`rouge_scores`; our own small
  implementation: lower-cased alphanumeric tokens, no stemming; Video-R1 uses the rouge_score package with
  a Porter stemmer, so scores differ slightly on inflected words).
- regression: 1 - min(1, |pred - gt| / |gt|); a ground truth of 0 scores 1 only for a prediction of 0
  (Video-R1's 1e-9 smoothing gives 0 there, even for the exact answer).

Differences from Video-R1's reward code (reasons in the functions): it reads the FIRST `<answer>` tag; we read
the last, as our evaluation does (`text.extract`), so training rewards what evaluation scores.

`soft_choice` (registered reward; TW-GRPO's `accuracy_reward`, github.com/longmalongma/TW-GRPO commit aa529ff,
src/open_r1/grpo.py lines 92-155, used by its scripts/tw-grpo.sh): the soft rule above on multiple-choice rows
and on rows without a `problem_type` (TW-GRPO's data has none), accuracy by type elsewhere. Its answer is read
as ours (last complete tag) unless `source_extraction=True`: then, as TW-GRPO, the first
`<answer>...</answer>` (tags case-sensitive), else the whole stripped response. Not reproduced: TW-GRPO first
tries math_verify's symbolic match on the whole response and gives 1.0 when it succeeds. Its
`origin_accuracy` (the GRPO baseline's reward) is the same rule with any score below 1 set to 0.

`format_reward`: 1.0 when the whole response (surrounding whitespace ignored) matches
`<think>.*?</think>\\s*<answer>.*?</answer>` (DOTALL), else 0.0.

`length_bonus`: +bonus (0.2) for responses whose accuracy reward exceeds `threshold` (0.1) and whose TRUE
length (number of completion token ids, as TRL passes them: up to and including the end-of-sequence token)
lies in [min_tokens, max_tokens] ([320, 512]). The official Video-KTR code counted the length on the
key-token selection mask, so the bonus fired on the wrong responses; Video-R1 also required more than one
correct response in the per-GPU batch (`group_size` / `min_correct` reproduce that per group of responses).

Config: `build_rewards({"accuracy": 1.0, "format": 1.0})` -> (reward functions, weights) for GRPOTrainer;
a value may be a mapping with "weight" and the reward's options, e.g.
`{"accuracy": {"weight": 1.0, "mc_mode": "tolerant"}, "length_bonus": 1.0}`.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .text.item import LABELLED_OPTION
from .text.extract import parse_choice, to_float

# --------------------------------------------------------------------------------------------- problem types

PROBLEM_TYPES = ("multiple choice", "numerical", "OCR", "free-form", "regression")
_TYPE_KEYS = {re.sub(r"[\s_-]+", " ", t.lower()): t for t in PROBLEM_TYPES}


def canonical_problem_type(value) -> str | None:
    """"Multiple Choice" / "multiple_choice" / "ocr" / "free form" -> the canonical Video-R1 name; None when
    `value` names no known type."""
    if not isinstance(value, str):
        return None
    return _TYPE_KEYS.get(re.sub(r"[\s_-]+", " ", value.strip().lower()))


def _problem_type(value) -> str:
    ptype = canonical_problem_type(value)
    if ptype is None:
        raise ValueError(f"unknown problem_type {value!r}; known: {', '.join(PROBLEM_TYPES)}")
    return ptype


# --------------------------------------------------------------------------------------------- text plumbing

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_FORMAT = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.S)


def completion_text(completion) -> str:
    """The response text of one completion: a string, or a conversational list of messages (the content of
    its last message; a content given as parts joins their "text" fields). None -> ""."""
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        completion = [completion]
    if isinstance(completion, Sequence) and completion:
        content = completion[-1].get("content", "") if isinstance(completion[-1], Mapping) else completion[-1]
        if isinstance(content, str):
            return content
        if isinstance(content, Sequence):
            return "".join(p.get("text", "") if isinstance(p, Mapping) else str(p) for p in content)
        return "" if content is None else str(content)
    return ""


def answer_content(text: str | None) -> str | None:
    """Stripped content of the last complete <answer>...</answer> (tags case-insensitive), else None."""
    if not text:
        return None
    found = _ANSWER.findall(text)
    return found[-1].strip() if found else None


def solution_answer(solution) -> str:
    """The ground truth of a `solution` column: its <answer> content, else the whole stripped text."""
    text = "" if solution is None else str(solution)
    content = answer_content(text)
    return content if content is not None else text.strip()


def options_map(options) -> dict[str, str]:
    """["A. red", "B) blue"] -> {"A": "red", "B": "blue"}; unlabelled or missing options -> {}."""
    out: dict[str, str] = {}
    for line in options or ():
        m = LABELLED_OPTION.match(str(line))
        if not m:
            return {}
        out.setdefault(m.group(1), m.group(2).strip())
    return out


# --------------------------------------------------------------------------------------------- per-type scores


MC_MODES = ("exact", "tolerant", "soft")


def choice_set(text: str) -> set[str]:
    """TW-GRPO's reading of a multiple-choice answer: spaces removed, split on ",", each part stripped."""
    return {part.strip() for part in text.replace(" ", "").split(",")}


def soft_choice_score(pred: str, gt: str) -> float:
    """TW-GRPO's partial credit: |P| / |G| when the answer's option set P is a subset of the truth's G, else 0."""
    answer, truth = choice_set(pred), choice_set(gt)
    return len(answer) / len(truth) if answer <= truth else 0.0


def multiple_choice_score(pred: str, gt: str, options=None, mode: str = "exact") -> float:
    """`mode="exact"`: 1.0 iff the stripped strings are equal (Video-R1). `mode="tolerant"`: the option label
    read from `pred` by the evaluation's reader equals `gt` (case-insensitively); options are the row's
    ["A. ..."] lines (every letter is a possible label when the row has none). `mode="soft"`:
    `soft_choice_score` (TW-GRPO's partial credit for multi-answer questions)."""
    gt = gt.strip()
    if mode == "exact":
        return float(pred.strip() == gt)
    if mode == "soft":
        return soft_choice_score(pred, gt)
    if mode != "tolerant":
        raise ValueError(f"unknown multiple-choice mode {mode!r}; choose exact, tolerant or soft")
    labels = options_map(options) or dict.fromkeys(string.ascii_uppercase, "")
    label = parse_choice(pred, labels)
    return float(label is not None and label == gt.upper())


def numerical_score(pred: str, gt: str, strict_decimals: bool = False) -> float:
    """1.0 iff both are numbers equal after rounding to 2 decimals. `strict_decimals`: also 0.0 when only one of
    the two is written with a "." or "," (Video-R1's rule)."""
    if strict_decimals and (("." in gt or "," in gt) != ("." in pred or "," in pred)):
        return 0.0
    a, b = to_float(pred), to_float(gt)
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
        return 0.0
    return float(round(a, 2) == round(b, 2))


def _edit_distance(a: Sequence, b: Sequence) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1]


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level edit distance / number of reference words (at least 1); words split on whitespace."""
    ref, hyp = reference.split(), hypothesis.split()
    return _edit_distance(ref, hyp) / max(1, len(ref))


def ocr_score(pred: str, gt: str) -> float:
    return max(0.0, min(1.0, 1.0 - word_error_rate(gt, pred)))


def rouge_tokens(text: str) -> list[str]:
    """Lower-cased runs of letters and digits (any script); punctuation and underscores separate tokens."""
    return re.findall(r"[^\W_]+", text.lower())


def _f1(overlap: int, n_pred: int, n_ref: int) -> float:
    return 2.0 * overlap / (n_pred + n_ref) if overlap else 0.0


def rouge_n(reference: str, hypothesis: str, n: int) -> float:
    """ROUGE-N F1: n-gram overlap (clipped counts) against both lengths."""
    ref, hyp = rouge_tokens(reference), rouge_tokens(hypothesis)
    ref_grams = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
    hyp_grams = Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
    overlap = sum((ref_grams & hyp_grams).values())
    return _f1(overlap, sum(hyp_grams.values()), sum(ref_grams.values()))


def _lcs_length(a: Sequence, b: Sequence) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(reference: str, hypothesis: str) -> float:
    """ROUGE-L F1: longest common token subsequence against both lengths."""
    ref, hyp = rouge_tokens(reference), rouge_tokens(hypothesis)
    return _f1(_lcs_length(ref, hyp), len(hyp), len(ref))


def rouge_scores(reference: str, hypothesis: str) -> dict[str, float]:
    return {"rouge1": rouge_n(reference, hypothesis, 1), "rouge2": rouge_n(reference, hypothesis, 2),
            "rougeL": rouge_l(reference, hypothesis)}


def free_form_score(pred: str, gt: str) -> float:
    scores = rouge_scores(gt, pred)
    return max(0.0, min(1.0, sum(scores.values()) / 3.0))


def regression_score(pred: str, gt: str) -> float:
    """1 - min(1, |pred - gt| / |gt|); for gt == 0: 1.0 iff pred == 0. Non-numbers score 0."""
    a, b = to_float(pred), to_float(gt)
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
        return 0.0
    if b == 0:
        return float(a == 0)
    return 1.0 - min(1.0, abs(a - b) / abs(b))


def score_answer(pred: str | None, solution, problem_type, options=None, mc_mode: str = "exact",
                 strict_decimals: bool = False) -> float:
    """Accuracy in [0, 1] of an extracted answer `pred` (None or empty: 0.0) against a row's `solution`."""
    ptype = _problem_type(problem_type)
    if pred is None or not pred.strip():
        return 0.0
    gt = solution_answer(solution)
    if ptype == "multiple choice":
        return multiple_choice_score(pred, gt, options, mc_mode)
    if ptype == "numerical":
        return numerical_score(pred.strip(), gt, strict_decimals)
    if ptype == "OCR":
        return ocr_score(pred, gt)
    if ptype == "free-form":
        return free_form_score(pred, gt)
    return regression_score(pred.strip(), gt)


# --------------------------------------------------------------------------------------------- reward functions


def _column(kwargs_value, n: int, name: str) -> list:
    if kwargs_value is None:
        return [None] * n
    values = list(kwargs_value)
    if len(values) != n:
        raise ValueError(f"reward column {name!r} has {len(values)} values for {n} completions")
    return values


def accuracy_reward(completions, solution, problem_type, options=None, mc_mode: str = "exact",
                    strict_decimals: bool = False, **kwargs) -> list[float]:
    """Accuracy of each completion's last <answer> against its row, by `problem_type` (module docstring)."""
    n = len(completions)
    solution = _column(solution, n, "solution")
    problem_type = _column(problem_type, n, "problem_type")
    options = _column(options, n, "options")
    return [score_answer(answer_content(completion_text(c)), sol, pt, opts, mc_mode, strict_decimals)
            for c, sol, pt, opts in zip(completions, solution, problem_type, options)]


_FIRST_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)


def source_answer(text: str) -> str:
    """TW-GRPO's answer reading: the stripped content of the FIRST <answer>...</answer> (tags case-sensitive),
    else the whole stripped response."""
    found = _FIRST_ANSWER.search(text)
    return found.group(1).strip() if found else text.strip()


def soft_choice_reward(completions, solution, problem_type=None, options=None, source_extraction: bool = False,
                       strict_decimals: bool = False, **kwargs) -> list[float]:
    """TW-GRPO's soft multiple-choice accuracy (module docstring): multiple-choice rows and rows without a
    problem_type score `soft_choice_score`; other rows score `score_answer` by their type."""
    n = len(completions)
    solution = _column(solution, n, "solution")
    problem_type = _column(problem_type, n, "problem_type")
    options = _column(options, n, "options")
    out = []
    for c, sol, pt, opts in zip(completions, solution, problem_type, options):
        text = completion_text(c)
        pred = source_answer(text) if source_extraction else answer_content(text)
        out.append(score_answer(pred, sol, "multiple choice" if pt is None else pt, opts, "soft", strict_decimals))
    return out


def format_reward(completions, **kwargs) -> list[float]:
    """1.0 when the whole response is <think>...</think> then <answer>...</answer> (whitespace between and
    around allowed), else 0.0."""
    return [float(_FORMAT.fullmatch(completion_text(c).strip()) is not None) for c in completions]


def length_bonus_values(accuracies: Sequence[float], lengths: Sequence[int], min_tokens: int = 320,
                        max_tokens: int = 512, bonus: float = 0.2, threshold: float = 0.1,
                        group_size: int | None = None, min_correct: int = 2) -> list[float]:
    """`bonus` for each response with accuracy > `threshold` and `min_tokens` <= length <= `max_tokens`.
    With `group_size`, responses come in consecutive groups of that size and a group earns bonuses only when
    at least `min_correct` of its responses are correct (Video-R1's "more than one correct" rule)."""
    if len(accuracies) != len(lengths):
        raise ValueError(f"{len(accuracies)} accuracies but {len(lengths)} lengths")
    if min_tokens > max_tokens:
        raise ValueError(f"min_tokens ({min_tokens}) > max_tokens ({max_tokens})")
    correct = [a > threshold for a in accuracies]
    eligible = [True] * len(correct)
    if group_size is not None:
        if group_size < 1 or len(correct) % group_size:
            raise ValueError(f"{len(correct)} responses do not split into groups of {group_size}")
        for start in range(0, len(correct), group_size):
            ok = sum(correct[start:start + group_size]) >= min_correct
            eligible[start:start + group_size] = [ok] * group_size
    return [bonus if c and e and min_tokens <= n <= max_tokens else 0.0
            for c, e, n in zip(correct, eligible, lengths)]


def length_bonus(completions, solution, problem_type, completion_ids=None, options=None, min_tokens: int = 320,
                 max_tokens: int = 512, bonus: float = 0.2, threshold: float = 0.1, group_size: int | None = None,
                 min_correct: int = 2, mc_mode: str = "exact", strict_decimals: bool = False,
                 **kwargs) -> list[float]:
    """Length bonus on the true response length (`completion_ids`, which TRL passes to reward functions)."""
    if completion_ids is None:
        raise ValueError("length_bonus needs `completion_ids` (the generated token ids, which TRL passes to "
                         "reward functions) to count the true response length")
    lengths = [len(ids) for ids in _column(completion_ids, len(completions), "completion_ids")]
    acc = accuracy_reward(completions, solution, problem_type, options=options, mc_mode=mc_mode,
                          strict_decimals=strict_decimals)
    return length_bonus_values(acc, lengths, min_tokens, max_tokens, bonus, threshold, group_size, min_correct)


# --------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class RewardEntry:
    func: Callable
    options: tuple[str, ...] = ()
    doc: str = ""


REWARDS: dict[str, RewardEntry] = {
    "accuracy": RewardEntry(accuracy_reward, ("mc_mode", "strict_decimals"),
                            "accuracy by problem_type (Video-R1)"),
    "format": RewardEntry(format_reward, (), "<think>...</think><answer>...</answer>"),
    "length_bonus": RewardEntry(length_bonus, ("min_tokens", "max_tokens", "bonus", "threshold", "group_size",
                                               "min_correct", "mc_mode", "strict_decimals"),
                                "bonus for correct answers of a given true length"),
    "soft_choice": RewardEntry(soft_choice_reward, ("source_extraction", "strict_decimals"),
                               "TW-GRPO's partial credit for multi-answer multiple choice"),
}


def register_reward(name: str, func: Callable, options: Sequence[str] = (), doc: str = "") -> None:
    """Add a reward a config can name (a function with TRL's signature; `options` are the keyword arguments a
    config may set)."""
    if name in REWARDS:
        raise ValueError(f"a reward named {name!r} is already registered")
    REWARDS[name] = RewardEntry(func, tuple(options), doc)


@dataclass
class RewardSpec:
    """One reward of a run: registry `name`, `weight` in the weighted sum, and options for the function."""

    name: str
    weight: float = 1.0
    options: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.name not in REWARDS:
            raise ValueError(f"unknown reward {self.name!r}; known rewards: {', '.join(sorted(REWARDS))}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) \
                or not math.isfinite(self.weight):
            raise ValueError(f"reward {self.name!r}: weight must be a finite number, got {self.weight!r}")
        allowed = REWARDS[self.name].options
        unknown = [k for k in self.options if k not in allowed]
        if unknown:
            raise ValueError(f"reward {self.name!r}: unknown option(s) {', '.join(map(repr, unknown))}; "
                             f"allowed: {', '.join(allowed) if allowed else 'none'}")


class NamedReward:
    """A registered reward bound to its options; `__name__` is the spec's name (TRL logs rewards by it)."""

    def __init__(self, name: str, func: Callable, options: Mapping | None = None):
        self.__name__ = name
        self.func = func
        self.options = dict(options or {})

    def __call__(self, completions, **kwargs) -> list[float]:
        return self.func(completions, **{**kwargs, **self.options})

    def __repr__(self) -> str:
        return f"NamedReward({self.__name__!r}, options={self.options})"


def parse_reward_specs(config) -> list[RewardSpec]:
    """A config's rewards -> validated specs. Accepted: {"accuracy": 1.0, "format": 1.0};
    {"accuracy": {"weight": 1.0, "mc_mode": "tolerant"}}; a list of names, RewardSpecs or
    {"name": ..., "weight": ..., **options} mappings."""
    specs: list[RewardSpec] = []
    if isinstance(config, Mapping):
        for name, value in config.items():
            if isinstance(value, Mapping):
                opts = dict(value)
                specs.append(RewardSpec(str(name), opts.pop("weight", 1.0), opts))
            else:
                specs.append(RewardSpec(str(name), value))
    elif isinstance(config, Sequence) and not isinstance(config, str):
        for item in config:
            if isinstance(item, RewardSpec):
                specs.append(RewardSpec(item.name, item.weight, dict(item.options)))
            elif isinstance(item, str):
                specs.append(RewardSpec(item))
            elif isinstance(item, Mapping) and "name" in item:
                opts = dict(item)
                name = opts.pop("name")
                specs.append(RewardSpec(str(name), opts.pop("weight", 1.0), opts))
            else:
                raise ValueError(f"cannot read reward {item!r}: give a name, a RewardSpec or a mapping with "
                                 "'name'")
    else:
        raise ValueError(f"rewards must be a mapping name -> weight or a list, got {type(config).__name__}")
    if not specs:
        raise ValueError(f"no reward given; known rewards: {', '.join(sorted(REWARDS))}")
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"reward(s) named more than once: {', '.join(dupes)}")
    for s in specs:
        s.validate()
    return specs


def build_rewards(config) -> tuple[list[NamedReward], list[float]]:
    """(reward functions, weights) for TRL's GRPOTrainer(reward_funcs=...) and GRPOConfig(reward_weights=...)."""
    specs = parse_reward_specs(config)
    funcs = [NamedReward(s.name, REWARDS[s.name].func, s.options) for s in specs]
    return funcs, [float(s.weight) for s in specs]
