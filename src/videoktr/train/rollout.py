"""vLLM rollouts with videos: the request each prompt row sends, and the seam that adds it to TRL's requests.

TRL 1.16's colocated vLLM path sends token ids plus images only; a video prompt reaches vLLM as a run of
`<|video_pad|>` tokens with no frames behind it. Here every row carries its own visual input to vLLM:

- `vllm_requests(template_ids, rows, processor)` builds each row's request. Frames: the exact frames the
  trainer's processor produced (un-patchify its `pixel_values_videos`, undo rescale + normalisation, back to
  uint8), so vLLM's copy of the HF processor sees frames already at their final size (the resize bounds sent
  along admit them, so resizing is the identity); the grid and the number of placeholder tokens equal the
  trainer's, and the fps travels in the video's metadata (it sets `second_per_grid_ts`, the temporal
  position of every group). Tokens: the chat template tokenized *without* the processor's expansion (one
  `<|video_pad|>` per video), which vLLM expands itself (Qwen3-VL's per-group timestamps included); vLLM
  0.33 does not recognise an already-expanded run in a token prompt and would expand its first token a
  second time (measured: 621 prompt tokens became 1,196). bench/vllm_requests.py runs vLLM's own processor
  on these requests and checks that it returns the trainer's prompt ids, grid, pixels and second_per_grid_ts.
- `MediaInjectingLLM` wraps the `vllm.LLM` that TRL drives: TRL builds `{"prompt_token_ids": ids}` requests
  and handles sampling parameters, tensor-parallel gathering, sleep mode and weight sync as it always does;
  the wrapper swaps in each row's request (same position, same expanded ids) before vLLM sees it.

Only vLLM's colocate mode can carry videos: TRL's server mode sends images through the server's chat render
endpoint and has no video route, so `VideoGRPOTrainer` refuses server mode for video rows with a clear error.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class PatchLayout:
    """How a Qwen-VL processor cuts frames into patch rows (from its video/image processor)."""

    patch_size: int  # pixels per patch side (14 for Qwen2/2.5-VL, 16 for Qwen3-VL)
    temporal_patch_size: int  # frames per temporal patch (2)
    merge_size: int  # spatial merge (2)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale_factor: float  # 1/255

    @classmethod
    def of(cls, sub_processor) -> "PatchLayout":
        return cls(int(sub_processor.patch_size), int(sub_processor.temporal_patch_size),
                   int(sub_processor.merge_size), tuple(float(x) for x in sub_processor.image_mean),
                   tuple(float(x) for x in sub_processor.image_std), float(sub_processor.rescale_factor))


# The processor's patch order: frames [gt*tp, C, gh*ps, gw*ps] are viewed as
# (gt, tp, C, gh/m, m, ps, gw/m, m, ps) and permuted by (0, 3, 6, 4, 7, 2, 1, 5, 8) into
# (gt, gh/m, gw/m, m, m, C, tp, ps, ps), one patch per row. UNPATCH is the inverse permutation.
_UNPATCH = (0, 6, 5, 1, 3, 7, 2, 4, 8)


def unpatchify(pixels: torch.Tensor, grid: torch.Tensor, layout: PatchLayout) -> np.ndarray:
    """Patch rows of one video or image back to uint8 frames.

    pixels: [t*h*w, C*tp*ps*ps] normalised patch rows; grid: [1, 3] or [3] (t, h, w) in patches.
    Returns uint8 [t*tp, h*ps, w*ps, C] (an image comes back as tp identical frames).
    """
    t, h, w = (int(x) for x in torch.as_tensor(grid).reshape(-1)[:3])
    ps, tp, m = layout.patch_size, layout.temporal_patch_size, layout.merge_size
    if h % m or w % m:
        raise ValueError(f"grid {t}x{h}x{w} is not divisible by the spatial merge size {m}")
    channels = pixels.shape[-1] // (tp * ps * ps)
    if pixels.shape != (t * h * w, channels * tp * ps * ps):
        raise ValueError(f"pixel rows of shape {tuple(pixels.shape)} do not match grid {t}x{h}x{w}")
    x = pixels.detach().to("cpu", torch.float64).reshape(t, h // m, w // m, m, m, channels, tp, ps, ps)
    x = x.permute(*_UNPATCH).reshape(t * tp, channels, h * ps, w * ps)
    mean = torch.tensor(layout.mean, dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(layout.std, dtype=torch.float64).view(1, -1, 1, 1)
    x = (x * std + mean) / layout.rescale_factor
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def video_metadata_dict(num_frames: int, fps: float) -> dict:
    """vLLM's per-video metadata for frames that are already sampled (vLLM must not sample again)."""
    return {
        "fps": float(fps),
        "duration": num_frames / float(fps),
        "total_num_frames": int(num_frames),
        "frames_indices": list(range(num_frames)),
        "video_backend": "pyav",
        "do_sample_frames": False,
    }


# processor settings besides `size` that decide the resize, sent with every request so vLLM's copy of the
# processor (loaded from the checkpoint, without the run's pixel budget) resizes as the trainer's. Qwen3-VL's
# `max_video_tokens` is not among them: its processor reads it from the object only (see check_vllm_budget).
_RESIZE_SETTINGS = ("cap_pixels_per_frame",)


def _resize_kwargs(sub_processor, frames: np.ndarray) -> dict:
    """Resize settings that make `frames` (already at their final size) a fixed point of the processor's
    smart resize: the pixel bounds are widened to admit them (a budget with min close to max can floor a frame
    below its own minimum, and a second resize would then scale it up again)."""
    size = sub_processor.size
    get = size.get if isinstance(size, dict) else (lambda k: getattr(size, k, None))
    per_frame = int(frames.shape[1] * frames.shape[2])
    low, high = get("shortest_edge"), get("longest_edge")
    out = {"size": {"shortest_edge": per_frame if low is None else min(int(low), per_frame),
                    "longest_edge": max(int(high or 0), per_frame * int(frames.shape[0]))}}
    for name in _RESIZE_SETTINGS:
        if getattr(sub_processor, name, None) is not None:
            out[name] = getattr(sub_processor, name)
    return out


def _media_fields(row, processor) -> dict:
    """multi_modal_data, mm_processor_kwargs and multi_modal_uuids for one row's video or image."""
    if row.kind == "video":
        layout = PatchLayout.of(processor.video_processor)
        frames = unpatchify(row.pixels, row.grid, layout)
        if row.seconds_per_group is not None:
            fps = layout.temporal_patch_size / float(torch.as_tensor(row.seconds_per_group).reshape(-1)[0])
        else:
            fps = float(getattr(processor.video_processor, "fps", 2.0) or 2.0)
        data = {"video": [(frames, video_metadata_dict(frames.shape[0], fps))]}
        kwargs = {"do_sample_frames": False, "videos_kwargs": _resize_kwargs(processor.video_processor, frames)}
    elif row.kind == "image":
        from PIL import Image

        layout = PatchLayout.of(processor.image_processor)
        frames = unpatchify(row.pixels, row.grid, layout)
        data = {"image": [Image.fromarray(frames[0])]}
        kwargs = {"images_kwargs": _resize_kwargs(processor.image_processor, frames[:1])}
    else:
        raise ValueError(f"unknown media kind {row.kind!r} (expected 'video' or 'image')")
    # identical rows (the G copies of a prompt) share an id, so vLLM processes and hashes them once
    uid = hashlib.sha1(f"{row.key}|{row.kind}|{row.grid.tolist()}".encode()).hexdigest()
    return {"multi_modal_data": data, "mm_processor_kwargs": kwargs, "multi_modal_uuids": {row.kind: [uid]}}


def placeholder_token(processor, kind: str) -> int:
    """Token id of the video or image placeholder (`<|video_pad|>` / `<|image_pad|>` in Qwen-VL)."""
    name = getattr(processor, f"{kind}_token", None) or ("<|video_pad|>" if kind == "video" else "<|image_pad|>")
    return int(processor.tokenizer.convert_tokens_to_ids(name))


def vllm_requests(template_ids: list[list[int]], rows: list, processor) -> list[dict | None]:
    """One vLLM request per prompt row ({prompt_token_ids, multi_modal_data, mm_processor_kwargs,
    multi_modal_uuids}), None for a text-only row. template_ids: the prompt's tokens with one placeholder
    token per video/image (the chat template tokenized without the processor's expansion), which vLLM expands
    into exactly the trainer's prompt. Rows sharing a clip (the G copies of a prompt) share one media entry."""
    if len(template_ids) != len(rows):
        raise ValueError(f"{len(template_ids)} prompts but {len(rows)} media rows")
    cache: dict[tuple, dict] = {}
    out: list[dict | None] = []
    for ids, row in zip(template_ids, rows):
        if row is None:
            out.append(None)
            continue
        k = (row.key, row.kind, tuple(row.grid.reshape(-1).tolist()))
        if k not in cache:
            cache[k] = _media_fields(row, processor)
        n = ids.count(placeholder_token(processor, row.kind))
        if n != 1:
            raise ValueError(f"a prompt with one {row.kind} ({row.key}) has {n} {row.kind} placeholder tokens")
        out.append({"prompt_token_ids": list(ids), **cache[k]})
    return out


def check_vllm_budget(model_dir: str, processor) -> None:
    """Fail early when vLLM would resize the run's frames differently from the trainer.

    vLLM loads the processor from the checkpoint and applies request kwargs on top, but Qwen3-VL's video
    processor reads its per-frame cap (`max_video_tokens`) from the processor object only, never from call
    kwargs (transformers 5.20 to 5.23), so a run budget above the checkpoint's cap would give vLLM smaller
    frames, a different grid and a different number of placeholder tokens than the trainer.
    """
    ours = getattr(processor.video_processor, "max_video_tokens", None)
    if ours is None:
        return
    from transformers import AutoProcessor

    saved = getattr(AutoProcessor.from_pretrained(str(model_dir), local_files_only=True).video_processor,
                    "max_video_tokens", None)
    if saved is not None and int(saved) < int(ours):
        raise ValueError(
            f"the run's per-frame video budget ({ours} vision tokens per frame) exceeds max_video_tokens={saved} "
            f"in {model_dir}'s video processor config, which vLLM uses and cannot override per request: raise "
            f"max_video_tokens there to at least {ours}, or lower data.max_pixels")


class MediaInjectingLLM:
    """A `vllm.LLM` whose next `generate` call gets each request's media added, in request order.

    TRL's colocate path calls `llm.generate([{"prompt_token_ids": ids}, ...], sampling_params=...)`; set
    `pending` to one `vllm_requests` entry per request (None for text-only) right before it, and
    `pending_ids` to the trainer's token ids of the same rows (checked against TRL's requests, so a batch
    that went out of step fails loudly). Everything else (weight sync, sleep/wake, collective_rpc) passes
    through to the wrapped LLM.
    """

    def __init__(self, llm):
        self._llm = llm
        self.pending: list[dict | None] | None = None
        self.pending_ids: list[list[int]] | None = None

    def generate(self, prompts, *args, **kwargs):
        pending, expected, self.pending, self.pending_ids = self.pending, self.pending_ids, None, None
        if pending is not None:
            given = [list(p["prompt_token_ids"]) for p in prompts]
            if len(pending) != len(prompts) or (expected is not None and given != [list(e) for e in expected]):
                raise RuntimeError(f"{len(prompts)} vLLM requests do not match the {len(pending)} rows whose media "
                                   "were prepared: the rollout batch and its videos are out of step")
            prompts = [request or p for p, request in zip(prompts, pending)]
        return self._llm.generate(prompts, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._llm, name)
