"""Qwen2.5-VL 3D RoPE positions in transformers: where the text after a video starts, and fractional seconds per
temporal grid. Self-contained: needs only torch and transformers (a tiny random config, nothing downloaded).

    python transformers_rope_index.py

Qwen2-VL/Qwen2.5-VL give a vision token the position (start + t * interval, start + row, start + col), with
interval = tokens_per_second * second_per_grid_t for a video, and a text token one value in all three
components. In the released models' code (and vLLM) the text after a vision segment continues one past the
segment's highest position: start + max((T - 1) * interval, H - 1, W - 1) + 1. Two checks against that:

1. text after a long video: transformers 5.3 and later continue it at start + max(H, W) (the larger merged
   grid side), ignoring how far the temporal positions reach. For a clip whose temporal span exceeds the grid
   side (Qwen2.5-VL-7B at 2 fps and 448x224 frames: more than 16 frames), the prompt's last tokens and the
   response sit on positions that overlap the video's temporal range.
2. fractional second_per_grid_ts: transformers <= 5.2 casts second_per_grid_t to the integer dtype of
   torch.arange before multiplying, so 0.5 s per grid (4 fps) gives every temporal group position 0 and 1.5 s
   gives the positions of 1.0 s.

Each check prints AFFECTED (with the positions) or FIXED; the exit code is 0 either way.
"""

from __future__ import annotations

import inspect

import torch
import transformers
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel

VIDEO, IMAGE, VISION_START = 5, 6, 4  # token ids of the tiny vocabulary


def tiny_model():
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1, bos_token_id=0,
                         eos_token_id=1, pad_token_id=0,
                         num_attention_heads=2, num_key_value_heads=1,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
                         rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2),
        video_token_id=VIDEO, image_token_id=IMAGE, vision_start_token_id=VISION_START, vision_end_token_id=7)
    torch.manual_seed(0)
    return Qwen2_5_VLModel(config).eval()


def expected_positions(n_before: int, grid_thw, interval: float, n_after: int, merge: int = 2) -> torch.Tensor:
    """Qwen's scheme, one token at a time: [3, L]."""
    t, h, w = int(grid_thw[0]), int(grid_thw[1]) // merge, int(grid_thw[2]) // merge
    cols = [(i, i, i) for i in range(n_before)]
    s = n_before
    for g in range(t):
        for i in range(h):
            for j in range(w):
                cols.append((s + int(g * interval), s + i, s + j))
    nxt = max(max(c) for c in cols) + 1
    cols += [(nxt + k,) * 3 for k in range(n_after)]
    return torch.tensor(cols).T


def library_positions(model, n_before: int, grid_thw, second_per_grid: float, n_after: int, merge: int = 2):
    t, h, w = grid_thw
    n_video = t * (h // merge) * (w // merge)
    ids = [1] * (n_before - 1) + [VISION_START] + [VIDEO] * n_video + [2] * n_after
    input_ids = torch.tensor([ids])
    kwargs = dict(video_grid_thw=torch.tensor([grid_thw]), second_per_grid_ts=torch.tensor([second_per_grid]),
                  attention_mask=torch.ones_like(input_ids))
    if "mm_token_type_ids" in inspect.signature(model.get_rope_index).parameters:  # transformers 5.3+
        kwargs["mm_token_type_ids"] = (input_ids == VIDEO).int() * 2
    positions, _ = model.get_rope_index(input_ids, **kwargs)
    return positions[:, 0]


def check(model, name: str, grid_thw, second_per_grid: float, n_before: int = 3, n_after: int = 3) -> bool:
    tps = model.config.vision_config.tokens_per_second
    want = expected_positions(n_before, grid_thw, tps * second_per_grid, n_after)
    got = library_positions(model, n_before, grid_thw, second_per_grid, n_after)
    ok = torch.equal(got, want)
    print(f"{name}: {'FIXED' if ok else 'AFFECTED'}")
    if not ok:
        n_video = want.shape[1] - n_before - n_after
        print(f"  video grid (t, h, w) = {tuple(grid_thw)}, second_per_grid_t = {second_per_grid}, "
              f"tokens_per_second = {tps}")
        video = slice(n_before, n_before + n_video)
        print(f"  temporal positions of the video, expected {sorted(set(want[0, video].tolist()))}, "
              f"transformers {sorted(set(got[0, video].tolist()))}")
        print(f"  text after the video, expected {want[0, -n_after:].tolist()}, "
              f"transformers {got[0, -n_after:].tolist()}")
    return ok


def main() -> None:
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    model = tiny_model()
    # 12 temporal groups at 1 s per group (2 fps, 2 frames per group), a 2x2 merged grid: span 22 > side 2
    check(model, "text after a long video", (12, 4, 4), 1.0)
    # 4 groups at 0.5 s per group (4 fps), on a grid large enough that the text-after rule does not matter
    check(model, "fractional second_per_grid_ts", (4, 28, 28), 0.5)


if __name__ == "__main__":
    main()
