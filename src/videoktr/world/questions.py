"""Question logic: question texts, well-posedness, reference responses, chance levels, sampling of layouts and
questions."""

from __future__ import annotations

import functools
import itertools
from collections import Counter

import numpy as np

from .config import KINDS, Layout, WorldConfig
from .long_cot import PHRASINGS, long_think
from .sampled_cot import sampled_response, split_response


def events_of(layout: Layout) -> list[tuple[str, str]]:
    return [e for e in layout if e is not None]


def question_text(question: dict) -> str:
    kind = question["kind"]
    if kind == "first":
        return "Which colour appeared first?"
    if kind == "last":
        return "Which colour appeared last?"
    if kind == "after":
        return f"Which colour appeared right after the {question['colour']} shape?"
    if kind == "colour_of":
        return f"What colour was the {question['shape']}?"
    if kind == "shape_of":
        return f"What shape was the {question['colour']} one?"
    if kind == "appeared":
        return f"Did a {question['colour']} shape appear?"
    if kind == "count":
        return "How many shapes appeared?"
    if kind == "count_shape":
        return f"How many {question['shape']}s appeared?"
    if kind == "named":
        return f"Which colour is named in this question: {question['colour']}?"
    raise ValueError(f"unknown question kind {kind!r}")


def well_posed(layout: Layout, question: dict) -> bool:
    """Whether the question has an answer for this layout (its presupposition holds)."""
    ev = events_of(layout)
    kind = question["kind"]
    if kind == "after":
        colours = [c for c, _ in ev]
        return question["colour"] in colours[:-1]
    if kind == "shape_of":
        return any(c == question["colour"] for c, _ in ev)
    if kind == "colour_of":
        return sum(s == question["shape"] for _, s in ev) == 1
    return len(ev) >= 1


def reference(layout: Layout, question: dict, style: str = "short") -> tuple[str, str]:
    """(reasoning inside <think>, answer inside <answer>) for a well-posed question: deterministic. `style`
    "long_cot" gives the long walk-through (`long_cot.long_think`) with the same answer."""
    if style == "long_cot":
        _, answer = reference(layout, question)
        return long_think(events_of(layout), question, question_text(question), answer), answer
    if style == "sampled_cot":
        _, answer = reference(layout, question)
        return split_response(sampled_response(events_of(layout), question, answer))
    if style != "short":
        raise ValueError(f"unknown reference style {style!r}")
    ev = events_of(layout)
    kind = question["kind"]
    if kind in ("first", "last", "after"):
        think = "first " + ", then ".join(f"{c} {s}" for c, s in ev) + "."
        colours = [c for c, _ in ev]
        if kind == "first":
            answer = colours[0]
        elif kind == "last":
            answer = colours[-1]
        else:
            answer = colours[colours.index(question["colour"]) + 1]
        return think, answer
    if kind in ("colour_of", "appeared", "shape_of"):
        think = "by colour: " + ", ".join(f"{c} {s}" for c, s in sorted(ev)) + "."  # alphabetical
        if kind == "colour_of":
            return think, next(c for c, s in ev if s == question["shape"])
        if kind == "shape_of":
            return think, next(s for c, s in ev if c == question["colour"])
        return think, "yes" if any(c == question["colour"] for c, _ in ev) else "no"
    if kind == "count":
        return "counting the shapes.", str(len(ev))
    if kind == "count_shape":
        return f"counting the {question['shape']}s.", str(sum(s == question["shape"] for _, s in ev))
    if kind == "named":
        return f"the question names {question['colour']}.", question["colour"]
    raise ValueError(f"unknown question kind {kind!r}")


def format_response(think: str, answer: str) -> str:
    return f"<think>{think}</think><answer>{answer}</answer>"


def reference_response(layout: Layout, question: dict, style: str = "short") -> str:
    return format_response(*reference(layout, question, style))


def chance_of(question: dict, config: WorldConfig) -> float:
    """Probability that a uniform guess over the kind's answer set is right."""
    kind = question["kind"]
    if kind == "appeared":
        return 0.5
    if kind == "shape_of":
        return 1.0 / len(config.shapes)
    if kind == "count":
        return 1.0 / (config.max_events - config.min_events + 1)
    if kind == "count_shape":
        return 1.0 / (config.max_events + 1)
    if kind == "after":
        return 1.0 / (len(config.palette) - 1)
    return 1.0 / len(config.palette)


def sample_layout(rng: np.random.Generator, config: WorldConfig) -> Layout:
    k = int(rng.integers(config.min_events, config.max_events + 1))
    where = sorted(rng.choice(config.groups, size=k, replace=False).tolist())
    colours = rng.choice(len(config.palette), size=k, replace=False)
    shapes = rng.integers(0, len(config.shapes), size=k)
    layout: list = [None] * config.groups
    for g, c, s in zip(where, colours, shapes):
        layout[g] = (config.palette[int(c)][0], config.shapes[int(s)])
    return tuple(layout)


def sample_question(rng: np.random.Generator, family: str, layout: Layout, config: WorldConfig) -> dict:
    """A question of `family` (kind uniform among the family's enabled kinds that are well-posed here)."""
    ev = events_of(layout)
    colours = [c for c, _ in ev]
    unique = [s for s in config.shapes if sum(s == e for _, e in ev) == 1]
    kinds = [k for k in KINDS[family] if k in config.kinds and (k != "colour_of" or unique)]
    if not kinds:
        raise ValueError(f"family {family!r} has no enabled kind (config.kinds={config.kinds})")
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "count_shape" and config.style in ("long_cot", "sampled_cot"):
        question = {"kind": kind, "shape": _balanced_count_shape(rng, ev, config)}
    else:
        question = _question_params(rng, kind, colours, unique, config)
    if config.style == "long_cot":  # the hidden phrasing of the long reference (not in the prompt)
        question["phrasing"] = int(rng.integers(PHRASINGS))
    if config.style == "sampled_cot":  # the seed of every filler choice of the reference (not in the prompt)
        question["filler"] = int(rng.integers(2**31))
    return question


def _question_params(rng: np.random.Generator, kind: str, colours: list, unique: list, config: WorldConfig) -> dict:
    if kind in ("first", "last", "count"):
        return {"kind": kind}
    if kind == "after":
        return {"kind": kind, "colour": colours[int(rng.integers(len(colours) - 1))]}
    if kind == "shape_of":
        return {"kind": kind, "colour": colours[int(rng.integers(len(colours)))]}
    if kind == "colour_of":
        return {"kind": kind, "shape": unique[int(rng.integers(len(unique)))]}
    if kind == "appeared":
        absent = [c for c in config.colours if c not in colours]
        pool = colours if (rng.random() < 0.5 or not absent) else absent
        return {"kind": kind, "colour": pool[int(rng.integers(len(pool)))]}
    if kind == "count_shape":
        return {"kind": kind, "shape": config.shapes[int(rng.integers(len(config.shapes)))]}
    if kind == "named":
        return {"kind": kind, "colour": config.colours[int(rng.integers(len(config.colours)))]}
    raise ValueError(f"unknown question kind {kind!r}")


COUNT_SHAPE_FIT_ROUNDS = 200  # rounds of proportional fitting of the long_cot count_shape weights


@functools.lru_cache(maxsize=16)
def count_shape_log_weights(n_shapes: int, min_events: int, max_events: int) -> tuple[float, ...]:
    """Log-weights w(n), n = 0..max_events, of the long_cot world's count_shape draw: a clip's asked count is
    drawn among the counts its shapes have (`_balanced_count_shape`) with probability proportional to exp(w(n)).
    Fitted by proportional fitting (w(n) -= log share of answer n, repeated) over the exact distribution of
    `sample_layout`'s shape counts (event count uniform, shapes independent and uniform), so that the answer
    shares over the world's clips are as flat as the clips allow: counts that few clips have (3 or 4 of one
    shape) are asked whenever a clip has them, the common ones (0, 1, 2) share the rest equally. Rounded, so
    the draw is the same on every platform."""
    sets: Counter = Counter()  # achievable count set -> probability of a clip having it
    n_k = max_events - min_events + 1
    for k in range(min_events, max_events + 1):
        for shapes in itertools.product(range(n_shapes), repeat=k):
            per = Counter(shapes)
            sets[tuple(sorted({per.get(s, 0) for s in range(n_shapes)}))] += 1.0 / (n_k * n_shapes ** k)
    logw = np.zeros(max_events + 1)
    for _ in range(COUNT_SHAPE_FIT_ROUNDS):
        share = np.zeros(max_events + 1)
        for counts, p in sets.items():
            w = np.exp(logw[list(counts)] - logw[list(counts)].max())
            share[list(counts)] += p * w / w.sum()
        logw[share > 0] -= np.log(share[share > 0])
        logw -= logw.max()
    return tuple(round(float(x), 6) for x in logw)


def _balanced_count_shape(rng: np.random.Generator, ev: list, config: WorldConfig) -> str:
    """The shape a long_cot count_shape question asks about: first the answer, drawn among the counts the
    clip's shapes have with `count_shape_log_weights` (so a text-only guess gains little: docs/world-long-cot.md),
    then a shape with that count, uniformly."""
    per = Counter(s for _, s in ev)
    counts = sorted({per.get(s, 0) for s in config.shapes})
    logw = np.asarray(count_shape_log_weights(len(config.shapes), config.min_events, config.max_events))[counts]
    p = np.exp(logw - logw.max())
    n = counts[int(rng.choice(len(counts), p=p / p.sum()))]
    with_n = [s for s in config.shapes if per.get(s, 0) == n]
    return with_n[int(rng.integers(len(with_n)))]


def family_of(kind: str) -> str:
    return next(f for f, ks in KINDS.items() if kind in ks)


def row_layout(row: dict) -> Layout:
    return tuple(tuple(e) if e else None for e in row["layout"])
