"""Model-family adapters: the only place that knows where a family's vision-encoder outputs live, how they
are laid out in temporal groups, and which token ids are video placeholders.

Layout of Qwen2.5-VL video features (verified in tests/models/test_perturb.py): for a video with grid
(t, h, w) in patches and spatial merge m, the encoder returns t * (h/m) * (w/m) rows in temporal-group-major
order, so rows [g*n, (g+1)*n) with n = h*w/m^2 belong to temporal group g (2 frames). The encoder attends
only within one temporal group, so permuting those row blocks equals re-encoding permuted frame pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class UnsupportedModelError(ValueError):
    pass


@dataclass(frozen=True)
class QwenVLAdapter:
    """Qwen2.5-VL (and the same layout in Qwen2-VL): vision tower at `model.model.visual`, features passed
    back with `mm_encoder_outputs={"video": ...}`."""

    family: str
    video_token_id: int
    image_token_id: int
    spatial_merge_size: int

    def tokens_per_group(self, grid_thw: torch.Tensor) -> torch.Tensor:
        """grid_thw [N, 3] -> feature rows per temporal group [N]."""
        return grid_thw[:, 1] * grid_thw[:, 2] // (self.spatial_merge_size**2)

    def num_groups(self, grid_thw: torch.Tensor) -> torch.Tensor:
        """grid_thw [N, 3] -> temporal groups per video [N]."""
        return grid_thw[:, 0]

    def encode_videos(self, model, pixel_values_videos: torch.Tensor, video_grid_thw: torch.Tensor) -> list[torch.Tensor]:
        """Run the vision tower once: returns one feature tensor [t*h*w/m^2, D] per video."""
        out = model.model.get_video_features(pixel_values_videos, video_grid_thw, return_dict=True)
        return list(out.pooler_output)

    def split_pixels(self, pixel_values_videos: torch.Tensor, video_grid_thw: torch.Tensor) -> list[torch.Tensor]:
        """pixel_values_videos [sum t*h*w, P] -> one patch tensor per video [t*h*w, P]."""
        return list(torch.split(pixel_values_videos, video_grid_thw.prod(-1).tolist()))

    def video_kwargs(self, features: list[torch.Tensor]) -> dict:
        """Forward kwargs that feed precomputed (possibly perturbed) video features to the model."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return {"mm_encoder_outputs": {"video": BaseModelOutputWithPooling(pooler_output=tuple(features))}}

    def mm_token_type_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [B, L] -> [B, L] with 1 at image placeholders, 2 at video placeholders (what the model's
        3D RoPE needs to place vision tokens; completions carry none)."""
        types = torch.zeros_like(input_ids, dtype=torch.int32)
        types[input_ids == self.image_token_id] = 1
        types[input_ids == self.video_token_id] = 2
        return types


SUPPORTED = {"qwen2_5_vl": "Qwen2.5-VL"}


def adapter_for_config(config) -> QwenVLAdapter:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED:
        raise UnsupportedModelError(
            f"unsupported model architecture {model_type!r} (config class {type(config).__name__}); "
            f"videoktr supports: {', '.join(f'{k} ({v})' for k, v in SUPPORTED.items())}"
        )
    vision = config.vision_config
    return QwenVLAdapter(
        family=model_type,
        video_token_id=int(config.video_token_id),
        image_token_id=int(config.image_token_id),
        spatial_merge_size=int(vision.spatial_merge_size),
    )


def adapter_for(model) -> QwenVLAdapter:
    return adapter_for_config(model.config)
