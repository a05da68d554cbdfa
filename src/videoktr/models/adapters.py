"""Model-family adapters: the only place that knows where a family's vision-encoder outputs live, how they
are laid out in temporal groups, and which token ids are video placeholders.

Supported families (transformers 5.23; each verified in tests/models/test_families.py):

* Qwen2.5-VL (`qwen2_5_vl`, the paper's) and Qwen2-VL (`qwen2_vl`): vision tower `model.model.visual`,
  reached through `model.model.get_video_features`, whose `pooler_output` is one tensor per video; the model
  takes them back through `mm_encoder_outputs={"video": BaseModelOutputWithPooling(pooler_output=...)}`.
  Extra per-video forward input: Qwen2.5-VL's `second_per_grid_ts` (seconds per temporal group, from the
  processor's fps metadata, scales the temporal RoPE ids); Qwen2-VL has none (its processor emits none and its
  temporal RoPE id is the group index, whatever the fps).
* Qwen3-VL (`qwen3_vl`): same entry points, but the encoder also returns DeepStack features (one tensor per
  video for each layer in `vision_config.deepstack_visual_indexes`) that the decoder adds to the hidden states
  of its first layers at the visual positions, and `mm_encoder_outputs["video"]` must carry them
  (`Qwen3VLModel.forward` reads `.deepstack_features` and fails on None). The adapter therefore returns per
  video ONE tensor [N, D * (1 + K)]: the main features and the K DeepStack features concatenated along the
  width, row-aligned (all come from the same patch-merge order). Row perturbations (zeroing, group
  permutation, replacement) then act on every level at once, which is the right counterfactual: zeroing only
  the main features would leave the video visible through DeepStack. `video_kwargs` splits the width back.
  Timestamps: Qwen3-VL writes "<t seconds>" text before each temporal group's <|vision_start|> pads
  <|vision_end|> block (computed by the processor from the video metadata, not from pixels) and takes no
  per-video forward input; its temporal RoPE id of a group is its text position. The placeholder count per
  video is still t*h*w/m^2, in t runs.

Layout (all three; verified by `test_group_permutation_of_features_equals_reencoding_permuted_frames` and
the per-family layout test): for a video with grid (t, h, w) in patches and spatial merge m, the encoder returns
t * (h/m) * (w/m) rows in temporal-group-major order, so rows [g*n, (g+1)*n) with n = h*w/m^2 belong to
temporal group g (2 frames). The encoder attends only within one temporal group (transformers'
`get_vision_cu_seqlens`: one attention segment per temporal patch) and its position signals are spatial only
(2D rotary; Qwen3-VL's learned position table is resampled per frame), so permuting those row blocks equals
re-encoding permuted frame pairs. For Qwen3-VL the timestamps text stays in place (it describes when, not
what), exactly as when re-encoding the permuted frames with the same metadata.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch


class UnsupportedModelError(ValueError):
    pass


@dataclass(frozen=True)
class QwenVLAdapter:
    """Qwen2.5-VL and Qwen2-VL: vision tower at `model.model.visual`, features passed back with
    `mm_encoder_outputs={"video": ...}`."""

    family: str
    video_token_id: int
    image_token_id: int
    spatial_merge_size: int
    # Names of per-video forward inputs the family's processor emits besides pixel_values_videos and
    # video_grid_thw (and that the model's forward consumes).
    extra_video_inputs: tuple[str, ...] = ()
    # True when the processor writes each temporal group's timestamp as text before its placeholders.
    timestamps_in_text: bool = False

    def tokens_per_group(self, grid_thw: torch.Tensor) -> torch.Tensor:
        """grid_thw [N, 3] -> feature rows per temporal group [N]."""
        return grid_thw[:, 1] * grid_thw[:, 2] // (self.spatial_merge_size**2)

    def num_groups(self, grid_thw: torch.Tensor) -> torch.Tensor:
        """grid_thw [N, 3] -> temporal groups per video [N]."""
        return grid_thw[:, 0]

    def _per_item(self, out) -> list[torch.Tensor]:
        """The vision tower's output -> one feature tensor per video or image."""
        return list(out.pooler_output)

    def encode_videos(self, model, pixel_values_videos: torch.Tensor, video_grid_thw: torch.Tensor) -> list[torch.Tensor]:
        """Run the vision tower once: returns one feature tensor [t*h*w/m^2, D] per video (Qwen3-VL: see
        `Qwen3VLAdapter`)."""
        return self._per_item(model.model.get_video_features(pixel_values_videos, video_grid_thw, return_dict=True))

    def split_pixels(self, pixel_values_videos: torch.Tensor, video_grid_thw: torch.Tensor) -> list[torch.Tensor]:
        """pixel_values_videos [sum t*h*w, P] -> one patch tensor per video [t*h*w, P]."""
        return list(torch.split(pixel_values_videos, video_grid_thw.prod(-1).tolist()))

    def encode_images(self, model, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> list[torch.Tensor]:
        """Run the vision tower once on images: one feature tensor [h*w/m^2, D] per image."""
        return self._per_item(model.model.get_image_features(pixel_values, image_grid_thw, return_dict=True))

    def _encoder_output(self, features: list[torch.Tensor]):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return BaseModelOutputWithPooling(pooler_output=tuple(features))

    def media_kwargs(self, video_features: list[torch.Tensor], image_features: list[torch.Tensor] = ()) -> dict:
        """Forward kwargs that feed precomputed (possibly perturbed) video and image features to the model."""
        outputs = {}
        if len(video_features):
            outputs["video"] = self._encoder_output(list(video_features))
        if len(image_features):
            outputs["image"] = self._encoder_output(list(image_features))
        return {"mm_encoder_outputs": outputs}

    def video_kwargs(self, features: list[torch.Tensor]) -> dict:
        """Forward kwargs that feed precomputed (possibly perturbed) video features to the model."""
        return self.media_kwargs(features)

    def mm_token_type_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [B, L] -> [B, L] with 1 at image placeholders, 2 at video placeholders (what the model's
        3D RoPE needs to place vision tokens; completions carry none)."""
        types = torch.zeros_like(input_ids, dtype=torch.int32)
        types[input_ids == self.image_token_id] = 1
        types[input_ids == self.video_token_id] = 2
        return types


@dataclass(frozen=True)
class Qwen3VLAdapter(QwenVLAdapter):
    """Qwen3-VL: per-video features are [N, D * (1 + K)], the main features then the K DeepStack levels."""

    num_deepstack: int = 0  # K = len(vision_config.deepstack_visual_indexes)

    def _per_item(self, out) -> list[torch.Tensor]:
        """One tensor [N, D * (1 + K)] per video or image: its main features | its K DeepStack levels."""
        deep = list(out.deepstack_features or [])
        if len(deep) != self.num_deepstack:
            raise ValueError(f"the vision tower returned {len(deep)} DeepStack levels, the config names "
                             f"{self.num_deepstack}")
        return [torch.cat([main] + [level[v] for level in deep], dim=-1) for v, main in enumerate(out.pooler_output)]

    def split_features(self, feature: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """[N, D * (1 + K)] -> (main [N, D], K DeepStack tensors [N, D])."""
        parts = list(feature.chunk(1 + self.num_deepstack, dim=-1))
        return parts[0], parts[1:]

    def _encoder_output(self, features: list[torch.Tensor]):
        from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

        split = [self.split_features(f) for f in features]
        main = tuple(s[0] for s in split)
        deep = [tuple(s[1][k] for s in split) for k in range(self.num_deepstack)]
        return BaseModelOutputWithDeepstackFeatures(pooler_output=main, deepstack_features=deep)


SUPPORTED = {"qwen2_5_vl": "Qwen2.5-VL", "qwen2_vl": "Qwen2-VL", "qwen3_vl": "Qwen3-VL"}


def adapter_for_config(config) -> QwenVLAdapter:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED:
        raise UnsupportedModelError(
            f"unsupported model architecture {model_type!r} (config class {type(config).__name__}); "
            f"videoktr supports: {', '.join(f'{k} ({v})' for k, v in SUPPORTED.items())}"
        )
    vision = config.vision_config
    common = dict(
        family=model_type,
        video_token_id=int(config.video_token_id),
        image_token_id=int(config.image_token_id),
        spatial_merge_size=int(vision.spatial_merge_size),
    )
    if model_type == "qwen3_vl":
        return Qwen3VLAdapter(**common, timestamps_in_text=True,
                              num_deepstack=len(vision.deepstack_visual_indexes or ()))
    extra = ("second_per_grid_ts",) if model_type == "qwen2_5_vl" else ()
    return QwenVLAdapter(**common, extra_video_inputs=extra)


def adapter_for(model) -> QwenVLAdapter:
    return adapter_for_config(model.config)


def unique_items(pixels: list[torch.Tensor], grid_thw: torch.Tensor) -> list[int]:
    """For each video (or image), the index of the first identical one (same grid and pixels): the G responses
    to one prompt carry G copies of one clip, which is encoded once."""
    first: list[int] = []
    for i, p in enumerate(pixels):
        match = i
        for j in set(first):
            if torch.equal(grid_thw[i], grid_thw[j]) and pixels[j].shape == p.shape and torch.equal(pixels[j], p):
                match = j
                break
        first.append(match)
    return first


# families whose get_video_features/get_image_features return only `pooler_output` per item (Qwen3-VL's also
# carry DeepStack features: left to encode every copy)
_DEDUPLICATED_FAMILIES = ("qwen2_5_vl", "qwen2_vl")


def _encode_unique(original):
    """Wrap a model's get_video_features/get_image_features(pixels, grid, ...) so that identical items are
    encoded once and their features shared (pooler_output keeps one entry per item, in order). The wrapper keeps
    the original's signature: `generate` picks the encoder's arguments by their names."""
    import functools
    import inspect

    pixels_name, grid_name = list(inspect.signature(original).parameters)[:2]

    @functools.wraps(original)
    def encode(*args, **kwargs):
        args = list(args)
        pixels = args.pop(0) if args else kwargs.pop(pixels_name)
        grid_thw = args.pop(0) if args else kwargs.pop(grid_name, None)
        if grid_thw is None or len(grid_thw) < 2:
            return original(pixels, grid_thw, *args, **kwargs)
        pieces = list(torch.split(pixels, grid_thw.prod(-1).tolist()))
        owner = unique_items(pieces, grid_thw)
        uniq = sorted(set(owner))
        if len(uniq) == len(owner):
            return original(pixels, grid_thw, *args, **kwargs)
        out = original(torch.cat([pieces[u] for u in uniq]), grid_thw[uniq], *args, **kwargs)
        pooled = dict(zip(uniq, out.pooler_output))
        out.pooler_output = tuple(pooled[o] for o in owner)
        return out

    return encode


@contextmanager
def encode_each_item_once(model):
    """Within the block, the model's own forward (e.g. inside `generate`, which TRL hands every copy of a
    prompt's video) runs the vision tower on each distinct video and image once, sharing the features among
    copies (`unique_items`: identical grid and pixels). Qwen2.5-VL and Qwen2-VL; other families unchanged."""
    inner = model.model
    if getattr(model.config, "model_type", None) not in _DEDUPLICATED_FAMILIES:
        yield
        return
    names = ("get_video_features", "get_image_features")
    saved = {n: inner.__dict__.get(n) for n in names}
    for n in names:
        setattr(inner, n, _encode_unique(getattr(inner, n)))
    try:
        yield
    finally:
        for n in names:
            if saved[n] is None:
                delattr(inner, n)
            else:
                setattr(inner, n, saved[n])
