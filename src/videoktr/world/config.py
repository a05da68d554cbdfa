"""The world's configuration: palette, shapes, question families and kinds, and `WorldConfig` (its digest is the
world's cache key)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields

from .render import _SHAPE_MASKS

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
# bump when only the long_cot world's questions or references change (part of its cache key only, so the short
# world keeps its digest): 1 the first version, 2 count_shape's balanced draw (docs/world-long-cot.md)
LONG_COT_REVISION = 2
# bump when only the sampled_cot world's questions or references change (part of its cache key only)
SAMPLED_COT_REVISION = 1

STYLES = ("short", "long_cot", "sampled_cot")
LONG_COT_COMPLETION_TOKENS = 320  # sampling budget of the long_cot world (its references are at most 250 tokens)
SAMPLED_COT_COMPLETION_TOKENS = 192  # sampling budget of the sampled_cot world (docs/world-sampled-cot.md)
_LATER_FIELDS = {"style": "short"}  # fields added after version 5, with the default that leaves them out of to_dict

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
    style: str = _f("short", "reference style: short (terse reasoning), long_cot (100-250-token chains of thought "
                             "that walk through the clip with filler and restatement; `long_cot_config` is its "
                             "fixed preset, docs/world-long-cot.md) or sampled_cot (the same walk with every "
                             "filler word drawn independently per row and slot; `sampled_cot_config`, "
                             "docs/world-sampled-cot.md)")

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
        if self.style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {self.style!r}")
        if not 0.0 <= self.reference_noise < 1.0:
            raise ValueError(f"reference_noise must be in [0, 1), got {self.reference_noise}")

    @property
    def completion_tokens(self) -> int:
        """Longest reference response in tokens the world expects a policy to need (sampling/greedy budget)."""
        return {"long_cot": LONG_COT_COMPLETION_TOKENS, "sampled_cot": SAMPLED_COT_COMPLETION_TOKENS}.get(self.style, 48)

    def to_dict(self) -> dict:
        """The config as JSON types. Fields added after generator version 5 (`style`) are left out at their
        default, so the default world keeps its digest, cache key and directory."""
        d = json.loads(json.dumps(asdict(self)))
        for name, default in _LATER_FIELDS.items():
            if d.get(name) == default:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "WorldConfig":
        def tup(x):
            return tuple(tup(i) for i in x) if isinstance(x, list) else x

        names = {f.name for f in fields(cls)}
        return cls(**{k: tup(v) for k, v in d.items() if k in names})

    def digest(self) -> str:
        versions = [GENERATOR_VERSION] + {"long_cot": [LONG_COT_REVISION],
                                          "sampled_cot": [SAMPLED_COT_REVISION]}.get(self.style, [])
        payload = json.dumps([self.to_dict(), *versions], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


# The long_cot world's fixed preset (docs/world-long-cot.md): the default world's clips, no text-answerable control
# family ("named") and no yes/no kind ("appeared"); fixed before any method comparison on it.
LONG_COT_FAMILY_MIX = (("order", 0.45), ("presence", 0.3), ("count", 0.25))
LONG_COT_KINDS = ("first", "last", "after", "shape_of", "colour_of", "count", "count_shape")


def long_cot_config(**overrides) -> WorldConfig:
    """The long_cot world: `WorldConfig(style="long_cot")` with its family mix and kinds (overridable)."""
    return WorldConfig(**{"style": "long_cot", "family_mix": LONG_COT_FAMILY_MIX, "kinds": LONG_COT_KINDS,
                          **overrides})


def sampled_cot_config(**overrides) -> WorldConfig:
    """The sampled_cot world: the long_cot world's clips, families and kinds, with sampled filler (overridable)."""
    return WorldConfig(**{"style": "sampled_cot", "family_mix": LONG_COT_FAMILY_MIX, "kinds": LONG_COT_KINDS,
                          **overrides})


def world_config(style: str = "short", **overrides) -> WorldConfig:
    """The world of a style: `WorldConfig(**overrides)` for short (today's default), else the style's preset."""
    if style == "short":
        return WorldConfig(**overrides)
    if style == "long_cot":
        return long_cot_config(**overrides)
    if style == "sampled_cot":
        return sampled_cot_config(**overrides)
    raise ValueError(f"unknown world style {style!r}; choose from {STYLES}")
