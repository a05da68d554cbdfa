"""Rendering: a layout (one entry per temporal group, None or (colour, shape)) -> uint8 frames, and back."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .config import Layout, WorldConfig

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
