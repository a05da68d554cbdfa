"""The synthetic video world: clips of coloured shapes appearing one after another, questions about them, and
ground-truth token roles computed by construction.

Clips. A clip has `frames` frames (default 8 = 4 temporal groups of 2 frames, the model's temporal patch).
Each temporal group g (frames 2g and 2g+1) is either blank (background only) or shows ONE event: a shape of
one colour, centred. Colours within a clip are distinct; shapes may repeat. Permuting the temporal groups of
a clip therefore permutes its event order and nothing else. Clips are rendered with numpy, written as real
mp4 files (`data.video.write_video`) and decoded back with `data.video.read_video`, the loader real data uses.

A clip's content is its *layout*: a tuple with one entry per temporal group, None (blank) or (colour, shape).

Question families (`FAMILIES`), kinds (`KINDS`; `WorldConfig.kinds` picks those in use) and reference
responses (`<think>...</think><answer>...</answer>`; answers are words or numbers, never option letters):
- order (answer: a colour; order-dependent). Kinds: first, last, after ("Which colour appeared right after
  the blue shape?"). Reasoning narrates every event in order: "first red circle, then blue square, then
  green triangle."
- presence (answer: a word; order-independent). Kinds: shape_of ("What shape was the blue one?"), colour_of
  ("What colour was the square?", the shape appears exactly once), appeared ("Did a blue shape appear?",
  yes/no; off by default: the small model stays at chance on it). Reasoning lists the events sorted by
  colour name, so it does not depend on their order: "by colour: blue square, red circle, white triangle."
- count (answer: a number, problem_type "numerical"). Kinds: count ("How many shapes appeared?"), count_shape
  ("How many circles appeared?"); reasoning is a fixed phrase ("counting the shapes."), so the number
  itself is where the video enters the text.
- text (control; answer determined by the question text alone): "Which colour is named in this question:
  red?" -> "the question names red."
What a small model learns in a warm start (measured): the narrations and listings, first/last/count/named
within a few hundred steps; the look-ups (after, shape_of, colour_of, count_shape) only partly, which keeps
accuracy below ceiling.

Token labels (`token_labels`), defined the way teacher-forced attribution sees a token: let x be the token
ids of the row's reference response (+ the end-of-turn token) and R(c) those of the reference response to the
SAME question for another clip c for which the question is well-posed (e.g. "after X" needs X present and not
last; "colour of the square" needs exactly one square).
- vision (prefix-conditional): some clip c with other content has R(c)[:t] == x[:t] and R(c)[t] != x[t].
  Exact: `LabelIndex` holds the sorted token ids of the reference of EVERY event sequence of the world (a
  response depends on a clip only through its event sequence) and checks the range sharing x[:t].
- order (prefix-conditional): the same over the ORDER counterfactuals: every arrangement of the row's
  temporal groups (same events, same blanks) for which the question is well-posed. Exact.
- vision_uncond / order_uncond (unconditional): token t of x is left unmatched by the alignment of x with
  some counterfactual's R(c) (`difflib.SequenceMatcher(None, x, R(c), autojunk=False)`'s matching blocks):
  the token's content changes in some counterfactual, wherever the change first entered the text. A colour
  copied from the reasoning into the answer is vision_uncond but not vision. vision_uncond uses a sample of
  content counterfactuals (`vision_counterfactuals`: every order counterfactual, every close edit of the
  event sequence and `counterfactual_samples` random layouts, seeded by the row), or every layout with
  `exhaustive=True` (small worlds; tests compare the two).
Tests check the labels against brute-force enumeration on a small world and by hand on examples.

Rows follow the Video-R1 JSON schema (problem_id, problem, data_type "video", problem_type, options [],
solution "<answer>X</answer>", path relative to the world directory, data_source "synthetic", process
"<think>...</think>") plus: family, kind, question (the kind's parameters), layout (list of [colour, shape]
or null per temporal group), events (list of {group, colour, shape}), answer, chance (probability of a
uniform guess over the kind's answer set), response (the warm-start target: process + solution, or for a
`reference_noise` row the reference of another clip) and noisy.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Sequence

import numpy as np

from .video import Clip, read_video, write_video

FAMILIES = ("order", "presence", "count", "text")
KINDS = {"order": ("first", "last", "after"), "presence": ("shape_of", "colour_of", "appeared"),
         "count": ("count", "count_shape"), "text": ("named",)}
PALETTE = (
    ("red", (220, 40, 40)),
    ("green", (40, 170, 60)),
    ("blue", (40, 90, 230)),
    ("yellow", (235, 215, 40)),
    ("purple", (150, 60, 200)),
    ("white", (235, 235, 235)),
)
SHAPES = ("circle", "square", "triangle")
GENERATOR_VERSION = 5  # bump when clips, questions or responses change: part of the world's cache key

Layout = tuple  # tuple[tuple[str, str] | None, ...]: one entry per temporal group


def _f(default, help: str):
    if isinstance(default, (list, tuple, dict)):
        return field(default_factory=lambda d=default: d, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class WorldConfig:
    """Everything that decides the world's clips, questions and references (its hash is the cache key)."""

    frames: int = _f(8, "frames per clip (even); each temporal group of 2 frames holds at most one event, "
                        "so 8 frames = 4 groups")
    size: int = _f(56, "frame width and height in pixels (even)")
    fps: float = _f(2.0, "frame rate of the written clips (and of the metadata passed to the processor)")
    palette: tuple = _f(PALETTE, "colours as (name, (r, g, b)); a clip's colours are distinct")
    shapes: tuple = _f(SHAPES, "shape names; each must be one of circle, square, triangle, diamond, cross")
    min_events: int = _f(2, "fewest events (non-blank temporal groups) per clip (>= 2)")
    max_events: int = _f(4, "most events per clip (<= temporal groups and <= colours)")
    family_mix: tuple = _f((("order", 0.4), ("presence", 0.25), ("count", 0.2), ("text", 0.15)),
                           "question families and their sampling weights")
    kinds: tuple = _f(("first", "last", "after", "shape_of", "colour_of", "count", "count_shape", "named"),
                      "question kinds in use (uniform within a family); 'appeared' (yes/no presence) exists but "
                      "the small model stays at chance on it through a whole warm start, so it is off by default")
    reference_noise: float = _f(0.0, "share of TRAINING rows whose warm-start reference (`response`) is the "
                                     "reference of another clip (a wrong narration/answer); solution stays true")
    pixel_noise: int = _f(0, "uniform per-pixel noise amplitude added to rendered frames (0 = clean)")
    background: tuple = _f((24, 24, 24), "background RGB of every frame (blank groups show only this)")
    counterfactual_samples: int = _f(48, "random content counterfactuals per row for the vision labels "
                                         "(on top of all single edits and all order permutations)")
    seed: int = _f(0, "seed of clips, questions and counterfactual samples")

    @property
    def groups(self) -> int:
        return self.frames // 2

    @property
    def colours(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.palette)

    def validate(self) -> None:
        if self.frames < 4 or self.frames % 2:
            raise ValueError(f"frames must be even and >= 4, got {self.frames}")
        if self.size < 28 or self.size % 2:
            raise ValueError(f"size must be even and >= 28, got {self.size}")
        if not 2 <= self.min_events <= self.max_events <= min(self.groups, len(self.palette)):
            raise ValueError(f"need 2 <= min_events <= max_events <= min(groups={self.groups}, "
                             f"colours={len(self.palette)}), got {self.min_events}..{self.max_events}")
        bad = [s for s in self.shapes if s not in _SHAPE_MASKS]
        if bad or not self.shapes:
            raise ValueError(f"unknown shapes {bad}; choose from {sorted(_SHAPE_MASKS)}")
        fams = [f for f, _ in self.family_mix]
        if not fams or any(f not in FAMILIES for f in fams) or any(w < 0 for _, w in self.family_mix) \
                or sum(w for _, w in self.family_mix) <= 0:
            raise ValueError(f"family_mix must weight families from {FAMILIES}, got {self.family_mix}")
        known = {k for ks in KINDS.values() for k in ks}
        if not self.kinds or any(k not in known for k in self.kinds):
            raise ValueError(f"kinds must be a non-empty subset of {sorted(known)}, got {self.kinds}")
        missing = [f for f, w in self.family_mix if w > 0 and not any(k in self.kinds for k in KINDS[f])]
        if missing:
            raise ValueError(f"families {missing} have weight but no enabled kind")
        if not 0.0 <= self.reference_noise < 1.0:
            raise ValueError(f"reference_noise must be in [0, 1), got {self.reference_noise}")

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> "WorldConfig":
        def tup(x):
            return tuple(tup(i) for i in x) if isinstance(x, list) else x

        names = {f.name for f in fields(cls)}
        return cls(**{k: tup(v) for k, v in d.items() if k in names})

    def digest(self) -> str:
        payload = json.dumps([self.to_dict(), GENERATOR_VERSION], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------- rendering


def _circle(y, x, s):
    return (y - s / 2) ** 2 + (x - s / 2) ** 2 <= (0.33 * s) ** 2


def _square(y, x, s):
    return (abs(y - s / 2) <= 0.29 * s) & (abs(x - s / 2) <= 0.29 * s)


def _triangle(y, x, s):  # apex up
    top, bottom, half = 0.18 * s, 0.80 * s, 0.36 * s
    frac = (y - top) / (bottom - top)
    return (y >= top) & (y <= bottom) & (abs(x - s / 2) <= frac * half)


def _diamond(y, x, s):
    return abs(y - s / 2) + abs(x - s / 2) <= 0.36 * s


def _cross(y, x, s):
    arm, reach = 0.11 * s, 0.36 * s
    return ((abs(y - s / 2) <= arm) & (abs(x - s / 2) <= reach)) | ((abs(x - s / 2) <= arm) & (abs(y - s / 2) <= reach))


_SHAPE_MASKS = {"circle": _circle, "square": _square, "triangle": _triangle, "diamond": _diamond, "cross": _cross}


def render_clip(layout: Layout, config: WorldConfig, rng: np.random.Generator | None = None) -> np.ndarray:
    """layout -> uint8 frames [frames, size, size, 3]: group g (frames 2g, 2g+1) shows layout[g]'s shape."""
    s = config.size
    y, x = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    rgb = dict(config.palette)
    frames = np.empty((config.frames, s, s, 3), dtype=np.uint8)
    frames[:] = np.asarray(config.background, dtype=np.uint8)
    for g, event in enumerate(layout):
        if event is None:
            continue
        colour, shape = event
        mask = _SHAPE_MASKS[shape](y, x, s)
        frames[2 * g : 2 * g + 2, mask] = np.asarray(rgb[colour], dtype=np.uint8)
    if config.pixel_noise:
        rng = rng or np.random.default_rng(0)
        noise = rng.integers(-config.pixel_noise, config.pixel_noise + 1, size=frames.shape)
        frames = np.clip(frames.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return frames


def decode_layout(frames: np.ndarray, config: WorldConfig, tol: float = 40.0) -> Layout:
    """Read the layout back from decoded frames (centre-pixel colour + shape mask match): the inverse of
    `render_clip`, used by tests to check that events sit in the right temporal groups after mp4 round trip."""
    s = config.size
    y, x = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    out = []
    for g in range(frames.shape[0] // 2):
        pair = frames[2 * g : 2 * g + 2].astype(np.float32).mean(0)
        centre = pair[s // 2, s // 2]
        if np.abs(centre - np.asarray(config.background)).max() < tol:
            out.append(None)
            continue
        colour = min(config.palette, key=lambda c: np.abs(centre - np.asarray(c[1])).sum())[0]
        lit = np.abs(pair - np.asarray(config.background)).max(-1) >= tol
        shape = max(config.shapes, key=lambda sh: (lit == _SHAPE_MASKS[sh](y, x, s)).mean())
        out.append((colour, shape))
    return tuple(out)


# ------------------------------------------------------------------------------------------------- questions


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


def reference(layout: Layout, question: dict) -> tuple[str, str]:
    """(reasoning inside <think>, answer inside <answer>) for a well-posed question: deterministic."""
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


def reference_response(layout: Layout, question: dict) -> str:
    return format_response(*reference(layout, question))


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


def family_of(kind: str) -> str:
    return next(f for f, ks in KINDS.items() if kind in ks)


# ------------------------------------------------------------------------------------------------- counterfactuals


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


def row_layout(row: dict) -> Layout:
    return tuple(tuple(e) if e else None for e in row["layout"])


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
    all sequences of the world (about 33k for the default world, ~1 s)."""

    def __init__(self, tokenizer, config: WorldConfig | None = None, add_eos: bool = True):
        self.tokenizer = tokenizer
        self.config = config or WorldConfig()
        self.eos = tokenizer.eos_token if add_eos else ""
        self._by_question: dict[str, list[tuple[int, ...]]] = {}
        self._sequences = None

    def responses(self, question: dict) -> list[tuple[int, ...]]:
        key = question_text(question)
        if key not in self._by_question:
            if self._sequences is None:
                self._sequences = [_as_layout(q, self.config) for q in all_sequences(self.config)]
            texts = sorted({reference_response(c, question) + self.eos
                            for c in self._sequences if well_posed(c, question)})
            ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
            self._by_question[key] = sorted(tuple(i) for i in ids)
        return self._by_question[key]

    def vision_labels(self, x: Sequence[int], question: dict) -> list[bool]:
        import bisect

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
    """
    import torch

    config = config or WorldConfig()
    index = index or LabelIndex(tokenizer, config, add_eos)
    layout = row_layout(row)
    question = row["question"]
    eos = tokenizer.eos_token if add_eos else ""
    text = reference_response(layout, question)
    order_cf = order_counterfactuals(layout, question)
    vision_cf = vision_counterfactuals(layout, question, config, _row_rng(row, config), exhaustive=exhaustive)
    order_texts = sorted({reference_response(c, question) for c in order_cf} - {text})
    vision_texts = sorted({reference_response(c, question) for c in vision_cf} - {text})
    all_texts = [text] + order_texts + vision_texts
    ids = tokenizer([t + eos for t in all_texts], add_special_tokens=False)["input_ids"]
    x, order_ids, vision_ids = ids[0], ids[1 : 1 + len(order_texts)], ids[1 + len(order_texts) :]
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
    return {
        "input_ids": torch.tensor(x, dtype=torch.long),
        "vision": as_bool(index.vision_labels(x, question)),
        "order": as_bool(prefix_labels(x, order_ids)),
        "vision_uncond": as_bool(unconditional_labels(x, vision_ids)),
        "order_uncond": as_bool(unconditional_labels(x, order_ids)),
        "answer": as_bool(answer),
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
    return [token_labels(r, tokenizer, config, add_eos, index=index) for r in rows]


# ------------------------------------------------------------------------------------------------- rows and files


def make_row(problem_id: int, layout: Layout, question: dict, path: str, config: WorldConfig,
             response: str | None = None) -> dict:
    think, answer = reference(layout, question)
    kind = question["kind"]
    clean = format_response(think, answer)
    return {
        "problem_id": problem_id,
        "problem": question_text(question),
        "data_type": "video",
        "problem_type": "numerical" if family_of(kind) == "count" else "free-form",
        "options": [],
        "solution": f"<answer>{answer}</answer>",
        "path": path,
        "data_source": "synthetic",
        "process": f"<think>{think}</think>",
        "family": family_of(kind),
        "kind": kind,
        "question": dict(question),
        "layout": [list(e) if e else None for e in layout],
        "events": [{"group": g, "colour": e[0], "shape": e[1]} for g, e in enumerate(layout) if e],
        "answer": answer,
        "chance": chance_of(question, config),
        "response": response or clean,
        "noisy": response is not None and response != clean,
    }


def prompt_text(row: dict) -> str:
    """The text part of the row's prompt (the video comes first, placed by the chat template)."""
    return row["problem"]


def sample_rows(config: WorldConfig, split: str, n: int, start_id: int = 0, exclude: set | None = None) -> list[dict]:
    """`n` rows of a split (without writing clips). Rows whose (layout, question) is in `exclude` are re-drawn."""
    config.validate()
    rng = np.random.default_rng([config.seed, {"train": 0, "eval": 1}.get(split, 2)])
    fams = [f for f, _ in config.family_mix]
    weights = np.asarray([w for _, w in config.family_mix], dtype=float)
    weights /= weights.sum()
    rows = []
    exclude = exclude or set()
    while len(rows) < n:
        layout = sample_layout(rng, config)
        family = fams[int(rng.choice(len(fams), p=weights))]
        question = sample_question(rng, family, layout, config)
        key = (layout, question_text(question))
        if key in exclude:
            continue
        pid = start_id + len(rows)
        response = None
        if split == "train" and config.reference_noise and rng.random() < config.reference_noise:
            clean = reference_response(layout, question)
            others = sorted({reference_response(c, question) for c in vision_counterfactuals(layout, question, config, rng)}
                            - {clean})
            if others:  # a text-family question has no other reference: it stays clean
                response = others[int(rng.integers(len(others)))]
        rows.append(make_row(pid, layout, question, f"clips/{split}_{pid:06d}.mp4", config, response))
    return rows


@dataclass
class WorldPaths:
    root: Path
    train: Path  # train.jsonl (the warm start's supervised rows)
    eval: Path  # eval.jsonl (held out from everything)
    config: WorldConfig
    reused: bool = False
    rl: Path | None = None  # rl.jsonl: prompts for RL, unseen by the warm start (when n_rl > 0)


def read_rows(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def load_world_config(world_dir: str | Path) -> WorldConfig:
    meta = json.loads((Path(world_dir) / "world.json").read_text())
    return WorldConfig.from_dict(meta["config"])


def _world_key(config: WorldConfig, n_train: int, n_eval: int, n_rl: int = 0) -> str:
    counts = [n_train, n_eval] + ([n_rl] if n_rl else [])
    return hashlib.sha256(json.dumps([config.digest(), *counts]).encode()).hexdigest()[:16]


def generate_world(out_dir: str | Path, config: WorldConfig | None = None, n_train: int = 600,
                   n_eval: int = 300, n_rl: int = 0) -> WorldPaths:
    """Write clips/*.mp4, train.jsonl, eval.jsonl (and rl.jsonl when n_rl > 0) and world.json (config +
    counts + key) under `out_dir`.

    Cached: when world.json names the same key (config hash, generator version, counts) and every file
    exists, nothing is rewritten. Eval rows never repeat a training (clip, question) pair; RL rows repeat
    neither a training nor an eval pair (RL prompts are new to the warm-started model, as in the paper, where
    RL data is separate from the SFT data)."""
    config = config or WorldConfig()
    config.validate()
    out = Path(out_dir)
    key = _world_key(config, n_train, n_eval, n_rl)
    paths = WorldPaths(out, out / "train.jsonl", out / "eval.jsonl", config, rl=out / "rl.jsonl" if n_rl else None)
    meta_path = out / "world.json"
    splits = [p for p in (paths.train, paths.eval, paths.rl) if p is not None]
    if meta_path.is_file() and all(p.is_file() for p in splits):
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key and meta.get("complete"):
            rows = [r for p in splits for r in read_rows(p)]
            if all((out / r["path"]).is_file() for r in rows):
                paths.reused = True
                return paths
    out.mkdir(parents=True, exist_ok=True)
    if meta_path.exists():
        meta_path.unlink()  # incomplete until rewritten below
    train = sample_rows(config, "train", n_train)
    seen = {(row_layout(r), r["problem"]) for r in train}
    evals = sample_rows(config, "eval", n_eval, start_id=n_train, exclude=seen)
    seen |= {(row_layout(r), r["problem"]) for r in evals}
    rl = sample_rows(config, "rl", n_rl, start_id=n_train + n_eval, exclude=seen) if n_rl else []
    noise_rng = np.random.default_rng([config.seed, 99])
    for row in train + evals + rl:
        write_video(out / row["path"], render_clip(row_layout(row), config, noise_rng), config.fps)
    for path, rows in ((paths.train, train), (paths.eval, evals), (paths.rl, rl)):
        if path is not None:
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    meta_path.write_text(json.dumps({"key": key, "config": config.to_dict(), "n_train": n_train,
                                     "n_eval": n_eval, "n_rl": n_rl, "generator_version": GENERATOR_VERSION,
                                     "complete": True}, indent=2))
    return paths


def load_clip(world_dir: str | Path, row: dict, config: WorldConfig | None = None) -> Clip:
    """Decode a row's clip with the shared loader (every frame kept: 2 fps, `frames` frames)."""
    config = config or WorldConfig()
    return read_video(Path(world_dir) / row["path"], target_fps=config.fps, min_frames=4,
                      max_frames=max(16, config.frames))


def load_clips(world_dir: str | Path, rows: Sequence[dict], config: WorldConfig | None = None,
               cache: dict | None = None) -> dict[str, Clip]:
    """Decode the clips of `rows` once: {row path: Clip} (reuses and fills `cache` when given)."""
    cache = {} if cache is None else cache
    for row in rows:
        if row["path"] not in cache:
            cache[row["path"]] = load_clip(world_dir, row, config)
    return cache


def chat_prompt(processor, row: dict) -> str:
    """The chat-template text of the row's prompt: one user turn with the video, then the question."""
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt_text(row)}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode_rows(processor, rows: Sequence[dict], clips: dict[str, Clip], responses: Sequence[str] | None = None,
                padding_side: str = "left"):
    """Processor inputs for `rows` (input_ids, attention_mask, mm_token_type_ids, pixel_values_videos,
    video_grid_thw, second_per_grid_ts), with each clip's fps metadata (`do_sample_frames=False`, so temporal
    positions follow the clip's real 2 fps). With `responses`, each text is prompt + response + end-of-turn
    (for teacher forcing; use padding_side="right")."""
    texts = [chat_prompt(processor, r) for r in rows]
    if responses is not None:
        eos = processor.tokenizer.eos_token
        texts = [t + resp + eos for t, resp in zip(texts, responses)]
    videos = [clips[r["path"]] for r in rows]
    return processor(text=texts, videos=[c.frames for c in videos], video_metadata=[c.metadata() for c in videos],
                     do_sample_frames=False, padding=True, padding_side=padding_side, return_tensors="pt")


# ------------------------------------------------------------------------------------------------- tokenizer corpus


def vocabulary(config: WorldConfig | None = None) -> list[str]:
    """Every word of the world's questions and responses."""
    config = config or WorldConfig()
    texts = corpus(config, repeats=1)
    return sorted({w for t in texts for w in re.findall(r"[A-Za-z]+|\d+", t)})


def corpus(config: WorldConfig | None = None, repeats: int = 20) -> list[str]:
    """Texts for training the tokenizer: every question and reference template with every colour, shape and
    count, repeated so that the world's words win the BPE merges (each becomes one token)."""
    config = config or WorldConfig()
    texts: list[str] = []
    colours, shapes = config.colours, config.shapes
    counts = [str(n) for n in range(config.min_events, config.max_events + 1)]
    for c in colours:
        texts += [question_text({"kind": "after", "colour": c}), question_text({"kind": "appeared", "colour": c}),
                  question_text({"kind": "shape_of", "colour": c}),
                  question_text({"kind": "named", "colour": c}), format_response(f"the question names {c}.", c)]
        for s in shapes:
            texts += [format_response(f"first {c} {s}, then {c} {s}.", c),
                      format_response(f"by colour: {c} {s}, {c} {s}.", "yes"),
                      format_response(f"by colour: {c} {s}.", "no")]
    for s in shapes:
        texts += [question_text({"kind": "colour_of", "shape": s}), question_text({"kind": "count_shape", "shape": s})]
        texts += [format_response(f"counting the {s}s.", str(n)) for n in range(config.max_events + 1)]
    texts += [question_text({"kind": k}) for k in ("first", "last", "count")]
    texts += [format_response("counting the shapes.", n) for n in counts]
    return texts * repeats


# ------------------------------------------------------------------------------------------------- rewards

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
