"""Label oracles: order and content counterfactuals of a row and its ground-truth token roles (vision, order,
their unconditional variants, answer); see the package docstring for the definitions."""

from __future__ import annotations

import difflib
import hashlib
import itertools
import math
from typing import Sequence

import numpy as np

from .config import Layout, WorldConfig
from .questions import (
    events_of,
    question_text,
    reference_response,
    row_layout,
    sample_layout,
    well_posed,
)


def order_counterfactuals(layout: Layout, question: dict, max_permutations: int = 720,
                          rng: np.random.Generator | None = None) -> list[Layout]:
    """Distinct arrangements of the layout's temporal groups (same events, same blanks) other than the layout
    itself, for which the question is well-posed. All of them up to `max_permutations`, else a random sample."""
    n = len(layout)
    if math.factorial(n) <= max_permutations:
        perms = itertools.permutations(range(n))
    else:
        rng = rng or np.random.default_rng(0)
        perms = (tuple(rng.permutation(n).tolist()) for _ in range(max_permutations))
    out = {tuple(layout[i] for i in p) for p in perms}
    out.discard(tuple(layout))
    return sorted((c for c in out if well_posed(c, question)), key=repr)


def all_layouts(config: WorldConfig):
    """Every layout of the world (for exhaustive labels on small worlds)."""
    for seq in all_sequences(config):
        for where in itertools.combinations(range(config.groups), len(seq)):
            layout: list = [None] * config.groups
            for g, event in zip(where, seq):
                layout[g] = event
            yield tuple(layout)


def _as_layout(events: Sequence[tuple[str, str]], config: WorldConfig) -> Layout:
    """An event sequence placed in the first temporal groups (responses depend only on the sequence)."""
    return tuple(events) + (None,) * (config.groups - len(events))


def single_edits(layout: Layout, config: WorldConfig) -> set[Layout]:
    """Layouts whose event SEQUENCE is close to the layout's: at any position an event's colour (to an unused
    one) or shape changed, an event deleted (if more than min_events) or inserted (if fewer than max_events),
    two events' colours swapped; every reordering of the events; and every branch (the first i events, then
    the end or any other event). Responses depend only on the event sequence, so these reach every point
    where a response can diverge (tests check against exhaustive enumeration)."""
    ev = events_of(layout)
    used = {c for c, _ in ev}
    free = [c for c in config.colours if c not in used]
    seqs: set[tuple] = set()
    for i, (c, s) in enumerate(ev):
        seqs.update(tuple(ev[:i] + [(c2, s)] + ev[i + 1:]) for c2 in free)
        seqs.update(tuple(ev[:i] + [(c, s2)] + ev[i + 1:]) for s2 in config.shapes if s2 != s)
        if len(ev) > config.min_events:
            seqs.add(tuple(ev[:i] + ev[i + 1:]))
    for i, j in itertools.combinations(range(len(ev)), 2):
        new = list(ev)
        new[i], new[j] = (ev[j][0], ev[i][1]), (ev[i][0], ev[j][1])
        seqs.add(tuple(new))
    if len(ev) < config.max_events:
        for i in range(len(ev) + 1):
            seqs.update(tuple(ev[:i] + [(c2, s2)] + ev[i:]) for c2 in free for s2 in config.shapes)
    if len(ev) <= 6:
        seqs.update(itertools.permutations(ev))
    # branches: the sequence's first i events, then the end or any other next event (filled up to min_events
    # with unused colours): every way a serialised event sequence can diverge from this one after i events
    for i in range(len(ev) + 1):
        prefix = ev[:i]
        if i >= config.min_events:
            seqs.add(tuple(prefix))
        if i >= config.max_events:
            continue
        taken = {c for c, _ in prefix}
        for c2 in (c for c in config.colours if c not in taken):
            for s2 in config.shapes:
                seq = prefix + [(c2, s2)]
                fill = [c for c in config.colours if c not in taken and c != c2]
                seq += [(c, config.shapes[0]) for c in fill[: max(0, config.min_events - len(seq))]]
                seqs.add(tuple(seq))
    out = {_as_layout(q, config) for q in seqs}
    out.discard(tuple(layout))
    return out


def vision_counterfactuals(layout: Layout, question: dict, config: WorldConfig, rng: np.random.Generator | None = None,
                           exhaustive: bool = False) -> list[Layout]:
    """Layouts with other content (order included) for which the question is well-posed: all order
    counterfactuals, all single edits (`single_edits`) and `counterfactual_samples` random layouts; with
    `exhaustive=True`, every layout of the world."""
    layout = tuple(layout)
    if exhaustive:
        out = set(all_layouts(config))
    else:
        rng = rng or np.random.default_rng(0)
        out = set(order_counterfactuals(layout, question)) | single_edits(layout, config)
        out.update(sample_layout(rng, config) for _ in range(config.counterfactual_samples))
    out.discard(layout)
    return sorted((c for c in out if well_posed(c, question)), key=repr)


def question_key(question: dict) -> str:
    """A question's identity for the label index: its text, plus the hidden phrasing of long references (or the
    filler seed of sampled ones)."""
    return (question_text(question) + (f"|phrasing={question['phrasing']}" if "phrasing" in question else "")
            + (f"|filler={question['filler']}" if "filler" in question else ""))


_WELL_POSED: dict[tuple, list] = {}


def _well_posed_sequences(question: dict, config: WorldConfig) -> list[tuple]:
    """Every event sequence of the world for which the question is well-posed (cached per question text)."""
    key = (config.digest(), question_text(question))
    if key not in _WELL_POSED:
        if len(_WELL_POSED) >= 64:
            _WELL_POSED.pop(next(iter(_WELL_POSED)))
        _WELL_POSED[key] = [q for q in all_sequences(config) if well_posed(q, question)]
    return _WELL_POSED[key]


END_OF_EVENTS = "end"


def branch_counterfactuals(layout: Layout, question: dict, config: WorldConfig) -> list[Layout]:
    """Exact branch points of the narration: for every i (0..number of events) and every way a well-posed clip
    sharing the row's first i events can go on (the end, or any other next event), ONE such clip (the first in
    enumeration order). References whose narration first departs from the row's at the same event and in the same
    way depart from its text at the same token, so these clips reach every token where some clip's reference
    first departs (with the filler held fixed; `token_labels` for style sampled_cot)."""
    ev = tuple(events_of(layout))
    out = []
    sequences = _well_posed_sequences(question, config)
    for i in range(len(ev) + 1):
        own = ev[i] if i < len(ev) else END_OF_EVENTS
        seen = {own}
        for q in sequences:
            if q[:i] != ev[:i]:
                continue
            nxt = q[i] if i < len(q) else END_OF_EVENTS
            if nxt not in seen:
                seen.add(nxt)
                out.append(_as_layout(q, config))
    return out


def _first_divergence(x: Sequence[int], y: Sequence[int]) -> int | None:
    n = min(len(x), len(y))
    for t in range(n):
        if x[t] != y[t]:
            return t
    return n if len(x) > n else None  # y is a strict prefix of x: x continues where y ends


def prefix_labels(x: Sequence[int], others: Sequence[Sequence[int]]) -> list[bool]:
    """label[t] = some y in `others` has y[:t] == x[:t] and y[t] != x[t] (or y ends at t)."""
    out = [False] * len(x)
    for y in others:
        t = _first_divergence(x, y)
        if t is not None:
            out[t] = True
    return out


def unconditional_labels(x: Sequence[int], others: Sequence[Sequence[int]]) -> list[bool]:
    """label[t] = token t of x is not in a matching block of difflib's alignment of x with some y."""
    out = [False] * len(x)
    for y in others:
        if list(y) == list(x):
            continue
        matched = [False] * len(x)
        for a, _, size in difflib.SequenceMatcher(None, list(x), list(y), autojunk=False).get_matching_blocks():
            for t in range(a, a + size):
                matched[t] = True
        out = [o or not m for o, m in zip(out, matched)]
    return out


def _row_rng(row: dict, config: WorldConfig) -> np.random.Generator:
    key = int(hashlib.sha256(f"{config.seed}:{row['problem_id']}".encode()).hexdigest()[:12], 16)
    return np.random.default_rng(key)


def all_sequences(config: WorldConfig):
    """Every event sequence of the world (responses depend on a layout only through its event sequence)."""
    for k in range(config.min_events, config.max_events + 1):
        for colours in itertools.permutations(config.colours, k):
            for shapes in itertools.product(config.shapes, repeat=k):
                yield tuple(zip(colours, shapes))


class LabelIndex:
    """Exact prefix-conditional vision labels. For each question (built on first use, then cached), the
    lexicographically sorted token ids of the reference responses of EVERY well-posed event sequence of the
    world; the responses sharing a prefix x[:t] are a contiguous range, so "some clip continues x[:t]
    differently" is a check of the range's first and last entries. Building one question tokenizes up to
    all sequences of the world (about 33k for the default world, ~1 s).

    Long references (style long_cot, about 150 tokens each) are indexed as sorted TEXTS instead (no
    tokenization of the whole world; the last `max_text_questions` questions are kept): token t of x, spanning
    characters [a, b) of its text, is labelled when some reference shares the text's first a characters but
    not its first b. This equals the token definition when references that share a character prefix ending
    on a token boundary of x also share x's tokens up to there, which the long templates are written for
    (`long_cot`) and tests check against brute-force token enumeration."""

    max_text_questions = 6

    def __init__(self, tokenizer, config: WorldConfig | None = None, add_eos: bool = True):
        self.tokenizer = tokenizer
        self.config = config or WorldConfig()
        self.eos = tokenizer.eos_token if add_eos else ""
        self._by_question: dict[str, list[tuple[int, ...]]] = {}
        self._texts: dict[str, list[str]] = {}
        self._sequences = None

    def _layouts(self):
        if self._sequences is None:
            self._sequences = [_as_layout(q, self.config) for q in all_sequences(self.config)]
        return self._sequences

    def texts(self, question: dict) -> list[str]:
        """Sorted reference texts (+ end-of-turn) of every well-posed event sequence (cached, bounded)."""
        key = question_key(question)
        if key not in self._texts:
            while len(self._texts) >= self.max_text_questions:
                self._texts.pop(next(iter(self._texts)))
            self._texts[key] = sorted({reference_response(c, question, self.config.style) + self.eos
                                       for c in self._layouts() if well_posed(c, question)})
        return self._texts[key]

    def _vision_labels_text(self, x: Sequence[int], question: dict) -> list[bool]:
        import bisect

        pieces = [self.tokenizer.decode([int(i)]) for i in x]
        text = "".join(pieces)
        texts = self.texts(question)
        lo, hi = 0, len(texts)
        k = bisect.bisect_left(texts, text)
        if k >= len(texts) or texts[k] != text:
            raise ValueError("the reference response is not among the world's responses (tokenizer or config "
                             "mismatch, or tokens that do not decode to the text piece by piece)")
        out, end = [], 0
        for piece in pieces:
            end += len(piece)
            prefix = text[:end]
            lo2 = bisect.bisect_left(texts, prefix, lo, hi)
            hi2 = bisect.bisect_left(texts, prefix + "\U0010ffff", lo2, hi)
            out.append(hi2 - lo2 != hi - lo)
            lo, hi = lo2, hi2
        return out

    def responses(self, question: dict) -> list[tuple[int, ...]]:
        key = question_key(question)
        if key not in self._by_question:
            texts = sorted({reference_response(c, question, self.config.style) + self.eos
                            for c in self._layouts() if well_posed(c, question)})
            ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
            self._by_question[key] = sorted(tuple(i) for i in ids)
        return self._by_question[key]

    def vision_labels(self, x: Sequence[int], question: dict) -> list[bool]:
        import bisect

        if self.config.style != "short":
            return self._vision_labels_text(x, question)
        seqs = self.responses(question)
        x = tuple(x)
        lo, hi = 0, len(seqs)
        out = []
        for t in range(len(x)):
            first, last = seqs[lo], seqs[hi - 1]
            same = len(first) > t and first[t] == x[t] and len(last) > t and last[t] == x[t]
            out.append(not same)
            lo = bisect.bisect_left(seqs, x[: t + 1], lo, hi)
            hi = bisect.bisect_left(seqs, x[:t] + (x[t] + 1,), lo, hi)
            if lo >= hi:
                raise ValueError("the reference response is not among the world's responses (tokenizer or "
                                 "config mismatch)")
        return out


def token_labels(row: dict, tokenizer, config: WorldConfig | None = None, add_eos: bool = True,
                 index: LabelIndex | None = None, exhaustive: bool = False) -> dict:
    """Ground-truth roles of the row's reference response tokens (see the module docstring).

    Returns {"input_ids": long [T], "vision", "order", "vision_uncond", "order_uncond", "answer": bool [T]}
    where input_ids are `tokenizer(process + solution (+ eos))` and "answer" marks the tokens inside
    <answer>...</answer>. The reference is always the clean one (process + solution), never a noisy `response`.
    "vision" and "order" are exact (every event sequence of the world via `index`; every group permutation);
    the unconditional labels use the sampled content counterfactuals (`vision_counterfactuals`), or every
    layout with `exhaustive=True` (small worlds only). Pass one `index` (or use `label_rows`) for many rows.
    Style sampled_cot (sampled filler): every counterfactual is rendered with the row's own filler choices; "vision"
    comes from the exact branch clips (`branch_counterfactuals`) instead of the index, and the result gains
    "sampled": tokens whose distribution given the prefix and the clip is not a point mass (the row re-rendered with
    one choice changed); docs/world-sampled-cot.md says why holding the filler fixed is exact.
    """
    import torch

    config = config or WorldConfig()
    index = index or LabelIndex(tokenizer, config, add_eos)
    layout = row_layout(row)
    question = row["question"]
    eos = tokenizer.eos_token if add_eos else ""
    style = config.style
    text = reference_response(layout, question, style)
    order_cf = order_counterfactuals(layout, question)
    vision_cf = vision_counterfactuals(layout, question, config, _row_rng(row, config), exhaustive=exhaustive)
    order_texts = sorted({reference_response(c, question, style) for c in order_cf} - {text})
    vision_texts = sorted({reference_response(c, question, style) for c in vision_cf} - {text})
    extra: list[str] = []
    sampled = style == "sampled_cot"
    if sampled:  # the filler held fixed (the row's seed): exact branch clips, and the row with one choice changed
        from .questions import reference as _reference
        from .sampled_cot import filler_variants

        branch_texts = sorted({reference_response(c, question, style)
                               for c in branch_counterfactuals(layout, question, config)} - {text})
        filler_texts = sorted(set(filler_variants(events_of(layout), question, _reference(layout, question)[1]))
                              - {text})
        extra = branch_texts + filler_texts
    all_texts = [text] + order_texts + vision_texts + extra
    ids = tokenizer([t + eos for t in all_texts], add_special_tokens=False)["input_ids"]
    n_o, n_v = len(order_texts), len(vision_texts)
    x, order_ids, vision_ids = ids[0], ids[1 : 1 + n_o], ids[1 + n_o : 1 + n_o + n_v]
    answer = [False] * len(x)
    open_id = tokenizer.convert_tokens_to_ids("<answer>")
    close_id = tokenizer.convert_tokens_to_ids("</answer>")
    inside = False
    for t, tid in enumerate(x):
        if tid == close_id:
            inside = False
        answer[t] = inside
        if tid == open_id:
            inside = True
    as_bool = lambda v: torch.tensor(v, dtype=torch.bool)  # noqa: E731
    out = {}
    if sampled:
        branch_ids = ids[1 + n_o + n_v : 1 + n_o + n_v + len(branch_texts)]
        vision = prefix_labels(x, branch_ids)
        out["sampled"] = as_bool(prefix_labels(x, ids[1 + n_o + n_v + len(branch_texts) :]))
    else:
        vision = index.vision_labels(x, question)
    return {
        "input_ids": torch.tensor(x, dtype=torch.long),
        "vision": as_bool(vision),
        "order": as_bool(prefix_labels(x, order_ids)),
        "vision_uncond": as_bool(unconditional_labels(x, vision_ids)),
        "order_uncond": as_bool(unconditional_labels(x, order_ids)),
        "answer": as_bool(answer),
        **out,
    }


_INDEX_CACHE: dict[tuple, LabelIndex] = {}


def label_index(tokenizer, config: WorldConfig | None = None, add_eos: bool = True) -> LabelIndex:
    """A LabelIndex shared within the process (keyed by the world config and the tokenizer's content)."""
    config = config or WorldConfig()
    tok_hash = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()
    key = (config.digest(), tok_hash, tokenizer.eos_token, add_eos)
    if key not in _INDEX_CACHE:
        if len(_INDEX_CACHE) >= 4:
            _INDEX_CACHE.pop(next(iter(_INDEX_CACHE)))
        _INDEX_CACHE[key] = LabelIndex(tokenizer, config, add_eos)
    return _INDEX_CACHE[key]


def label_rows(rows: Sequence[dict], tokenizer, config: WorldConfig | None = None, add_eos: bool = True) -> list[dict]:
    """`token_labels` of many rows with one shared (process-wide cached) LabelIndex."""
    index = label_index(tokenizer, config, add_eos)
    # by question, so that each question's index (bounded for long references) is built once
    order = sorted(range(len(rows)), key=lambda i: question_key(rows[i]["question"]))
    out: list = [None] * len(rows)
    for i in order:
        out[i] = token_labels(rows[i], tokenizer, config, add_eos, index=index)
    return out
