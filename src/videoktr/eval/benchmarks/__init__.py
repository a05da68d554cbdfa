"""Benchmark adapters: one small module per benchmark, all producing `Item`s (see base.py).

    from videoktr.eval.benchmarks import load_items
    items = load_items("tempcompass", data_root="/data/TempCompass", tasks=["all"])

Names: video_holmes, videommmu, mmvu, tempcompass, videomme, videor1 (Video-R1's evaluation JSON format),
mmmu, ai2d, mmstar, chartqa. Aliases with dashes or capitals (e.g. "Video-Holmes", "VideoMME") are accepted.
"""

from __future__ import annotations

from pathlib import Path

from .base import ANSWER_TYPES, Benchmark, BenchmarkError, Item
from .images import AI2D_ADAPTER, CHARTQA_ADAPTER, MMMU_ADAPTER, MMSTAR_ADAPTER
from .mmvu import ADAPTER as _MMVU
from .tempcompass import ADAPTER as _TEMPCOMPASS
from .video_holmes import ADAPTER as _HOLMES
from .videomme import ADAPTER as _VIDEOMME
from .videommmu import ADAPTER as _VIDEOMMMU
from .videor1 import ADAPTER as _VIDEOR1

BENCHMARKS: dict[str, Benchmark] = {
    b.name: b for b in (_HOLMES, _VIDEOMMMU, _MMVU, _TEMPCOMPASS, _VIDEOMME, _VIDEOR1,
                        MMMU_ADAPTER, AI2D_ADAPTER, MMSTAR_ADAPTER, CHARTQA_ADAPTER)
}

__all__ = ["ANSWER_TYPES", "BENCHMARKS", "Benchmark", "BenchmarkError", "Item", "get_benchmark", "load_items",
           "resolve_media"]


def canonical_name(name: str) -> str:
    key = name.strip().lower().replace("-", "").replace("_", "").replace(" ", "")
    for b in BENCHMARKS:
        if b.replace("_", "") == key:
            return b
    aliases = {"videor1format": "videor1", "mmmuval": "mmmu", "holmes": "video_holmes"}
    if key in aliases:
        return aliases[key]
    raise BenchmarkError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")


def get_benchmark(name: str) -> Benchmark:
    return BENCHMARKS[canonical_name(name)]


def load_items(name: str, data_root: str | Path | None = None, questions: str | Path | None = None,
               tasks: list[str] | None = None) -> list[Item]:
    """Items of benchmark `name` from `questions` (one file) or from the files discovered under `data_root`."""
    return get_benchmark(name).load(data_root, questions, tasks)


def resolve_media(data_root: str | Path | None, rel: str | None) -> Path | None:
    """The file an item's relative media path refers to: `data_root/rel` if it exists, else the same file name
    in `data_root/videos`, `data_root/data` or `data_root` itself; an absolute `rel` is used as is. Returns the
    first candidate (which may not exist) when none exists, so that callers can report it."""
    if rel is None:
        return None
    p = Path(rel)
    if p.is_absolute() or data_root is None:
        return p
    root = Path(data_root)
    candidates = [root / p, root / "videos" / p.name, root / "data" / p.name, root / p.name]
    for c in candidates:
        if c.is_file():
            return c
    return candidates[0]
