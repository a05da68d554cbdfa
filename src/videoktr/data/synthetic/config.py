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
