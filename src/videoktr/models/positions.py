"""3D RoPE position ids of Qwen2-VL and Qwen2.5-VL prompts, as the checkpoints were trained with them.

Qwen's multimodal RoPE gives every token a (temporal, height, width) position. A text token has the same value in
all three; a vision token of temporal group g at merged-patch row i and column j of a segment that starts at s
gets (s + floor(g * interval), s + i, s + j), where interval = tokens_per_second * seconds per group (Qwen2.5-VL)
or 1 (Qwen2-VL, and images). Where the text AFTER a vision segment starts is the point of this module:

* Qwen's scheme (the released models' code, vLLM, and transformers up to 5.2): at the segment's highest position
  + 1, i.e. s + max((t - 1) * interval, h - 1, w - 1) + 1.
* transformers 5.3 to 5.23: at s + max(h, w), whatever the temporal span.

The two agree for images and for clips whose temporal span stays within the larger spatial side; for longer
clips (Qwen2.5-VL-7B at 2 fps and 448x224 frames: more than 16 frames) transformers puts the text after the
video, and so the response, on positions the model never saw in pretraining and that vLLM's rollouts do not
use. (HF generation follows the library's own scheme: it extends the prompt's position ids, so it agrees with
the training forward either way, tests/models/test_positions.py; only the `rope_deltas` it stores, highest
position + 1, differ, which is why attribution computes its positions instead of reading them.)
`install(model, "qwen")` makes the model compute Qwen's scheme everywhere (training, attribution, generation),
which is also what vLLM rollouts use; `"transformers"` leaves the library's scheme in place.
"""

from __future__ import annotations

import itertools
import types

import torch

SCHEMES = ("qwen", "transformers")


def segment_positions(start: int, grid_thw, spatial_merge_size: int, interval: float) -> torch.Tensor:
    """Positions [3, t*h*w/m^2] of one vision segment starting at `start`, temporal-group-major, row-major."""
    t, h, w = int(grid_thw[0]), int(grid_thw[1]) // spatial_merge_size, int(grid_thw[2]) // spatial_merge_size
    temporal = (torch.arange(t) * interval).long().view(t, 1, 1).expand(t, h, w)
    rows = torch.arange(h).view(1, h, 1).expand(t, h, w)
    cols = torch.arange(w).view(1, 1, w).expand(t, h, w)
    return torch.stack([temporal, rows, cols]).reshape(3, -1) + start


def row_positions(token_types: list[int], grids: dict[int, list], intervals: list[float],
                  spatial_merge_size: int) -> torch.Tensor:
    """Qwen's scheme for one unpadded sequence: token_types [L] (0 text, 1 image, 2 video), the grids of its
    images (key 1) and videos (key 2) in order, and each video's temporal interval -> positions [3, L].
    Text continues one past the highest position so far."""
    parts, next_pos = [], 0
    counters = {1: 0, 2: 0}
    for kind, run in itertools.groupby(token_types):
        n = len(list(run))
        if kind == 0:
            parts.append(torch.arange(next_pos, next_pos + n).expand(3, n))
        else:
            grid = grids[kind][counters[kind]]
            interval = intervals[counters[kind]] if kind == 2 else 1.0
            counters[kind] += 1
            seg = segment_positions(next_pos, grid, spatial_merge_size, interval)
            if seg.shape[1] != n:
                raise ValueError(f"a vision segment of {n} placeholder tokens does not match its grid {list(grid)} "
                                 f"({seg.shape[1]} tokens)")
            parts.append(seg)
        next_pos = int(parts[-1].max()) + 1
    return torch.cat(parts, dim=1) if parts else torch.zeros(3, 0, dtype=torch.long)


def qwen_rope_index(model, input_ids: torch.Tensor, mm_token_type_ids: torch.Tensor, image_grid_thw=None,
                    video_grid_thw=None, second_per_grid_ts=None, attention_mask=None, **_):
    """Drop-in for `Qwen2VLModel.get_rope_index` / `Qwen2_5_VLModel.get_rope_index` with Qwen's scheme:
    input_ids [B, L] -> (position_ids [3, B, L] (pads 0), rope_deltas [B, 1] = highest position + 1 - length),
    the deltas generation adds to a new token's index."""
    vision = model.config.vision_config
    merge = vision.spatial_merge_size
    per_second = getattr(vision, "tokens_per_second", None)  # Qwen2.5-VL only
    B, L = input_ids.shape
    positions = torch.zeros(3, B, L, dtype=input_ids.dtype, device=input_ids.device)
    deltas = []
    images = list(image_grid_thw) if image_grid_thw is not None else []
    videos = list(video_grid_thw) if video_grid_thw is not None else []
    seconds = [float(s) for s in second_per_grid_ts] if second_per_grid_ts is not None else [1.0] * len(videos)
    used = {1: 0, 2: 0}
    for b in range(B):
        keep = attention_mask[b].bool() if attention_mask is not None else torch.ones(L, dtype=torch.bool,
                                                                                      device=input_ids.device)
        types_ = mm_token_type_ids[b][keep].tolist()
        counts = {k: sum(1 for kind, _ in itertools.groupby(types_) if kind == k) for k in (1, 2)}
        grids = {1: images[used[1]: used[1] + counts[1]], 2: videos[used[2]: used[2] + counts[2]]}
        intervals = [(per_second * s) if per_second is not None else 1.0
                     for s in seconds[used[2]: used[2] + counts[2]]]
        used[1] += counts[1]
        used[2] += counts[2]
        row = row_positions(types_, grids, intervals, merge)
        positions[:, b, keep] = row.to(positions)
        deltas.append(int(row.max()) + 1 - row.shape[1] if row.numel() else 0)
    return positions, torch.tensor(deltas, device=input_ids.device).unsqueeze(1)


def install(model, scheme: str = "qwen"):
    """Make a loaded Qwen2-VL / Qwen2.5-VL model compute its 3D positions with `scheme` (training forward,
    attribution and generation all go through `model.model.get_rope_index`). Other families are left as they
    are (Qwen3-VL writes timestamps as text and gives every temporal group one temporal step). Returns model."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown position scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    inner = getattr(model, "model", None)
    family = getattr(getattr(model, "config", None), "model_type", "")
    if inner is None or family not in ("qwen2_vl", "qwen2_5_vl") or not hasattr(inner, "get_rope_index"):
        return model
    if scheme == "qwen":
        inner.get_rope_index = types.MethodType(qwen_rope_index, inner)
    elif "get_rope_index" in vars(inner):
        del inner.get_rope_index
    return model


def scheme_of(model) -> str:
    """Which scheme a model computes ("qwen" once `install`ed, else "transformers")."""
    inner = getattr(model, "model", None)
    bound = vars(inner).get("get_rope_index") if inner is not None else None
    return "qwen" if bound is not None and getattr(bound, "__func__", None) is qwen_rope_index else "transformers"
