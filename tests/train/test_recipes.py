"""The recipe matrix: every shipped recipe in configs/ runs on CPU, scaled down to the tiny model and a small
Video-R1-format dataset whose every step mixes a video, an image and a text-only prompt, with the recipe's own
training settings (gradient checkpointing, bf16 autocast, loss normalisation, beta, selection scope, weighting,
strategies, TW-GRPO variant, ...). For the key-token methods the masks of every step equal the reference path's
(eval mode, fp32, no checkpointing, unshared forward) on the same rollouts, within the stated tolerance; so do
VPPO's token filters (tests/builders.reference_vppo)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from builders import loss_token_weights, reference_key_token_weights, reference_vppo

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RECIPES = sorted(p.name for p in CONFIGS.glob("*.yaml"))
# Share of response tokens whose weight equals the reference path's. Recipes train in bf16 autocast: the tiny
# random model's visual/temporal scores (about 1e-3 nats) sit below bf16's rounding of a log-probability, so
# near-threshold tokens flip (tests/train/test_recipe_settings.py: fp32 settings agree exactly).
BF16_AGREEMENT = 0.75
# VPPO's filter ranks one score, the KL between full next-token distributions, which on the tiny random model is
# about 1e-6 nats per token with 40% of the tokens kept: the shared-prefix pass and the reference's unshared one
# already differ by 5e-7 in fp32 (94% agreement with zero_fraction masking), and bf16 rounds far coarser (65-70%
# here, against 52% for two independent random 40% masks). Exact equality in fp32 on clip prompts with zero masking:
# tests/train/test_perception.py.
VPPO_BF16_AGREEMENT = 0.6

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning")]



def test_every_recipe_is_in_the_matrix():
    assert len(RECIPES) >= 13 and "video-ktr-7b.yaml" in RECIPES


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_runs_scaled_down(recipe, mixed_data, tiny_dir, tmp_path, monkeypatch):
    from videoktr.train import trainer as trainer_module
    from videoktr.train.config import load_config
    from videoktr.train.run import run

    data, root = mixed_data
    config = load_config(CONFIGS / recipe, {
        "model": str(tiny_dir), "data": str(data), "data_root": str(root), "output_dir": str(tmp_path / "run"),
        "max_steps": 2, "prompts_per_step": 3, "num_generations": 4, "max_completion_length": 12,
        "save_steps": 1000, "save_final": False, "media_cache": "none", "max_pixels": 56 * 56})
    kept = {"dtype": config.model.dtype, "gradient_checkpointing": config.model.gradient_checkpointing,
            "beta": config.rl.beta}
    assert kept["gradient_checkpointing"] and kept["dtype"] == "bfloat16"  # the recipes' own settings stay on
    checked = []
    real = trainer_module.VideoGRPOTrainer._generate_and_score_completions

    def checking(self, inputs):
        assert self.args.bf16 and self.args.gradient_checkpointing and self.beta == kept["beta"]
        state = self._attr_generator.get_state()
        batch = real(self, inputs)
        assert sorted({"none" if v is None else v.kind for v in batch["videos"]}) == ["image", "none", "video"]
        if self.method in ("ktr", "entropy"):
            reference = reference_key_token_weights(self, batch, state, tiny_dir)
            valid = batch["completion_mask"].bool()
            checked.append((loss_token_weights(self, batch) == reference)[valid].float().mean().item())
        if self.method == "vppo":  # its token filter against VPPO's reference path (all rows: no skipping)
            reference, _, _ = reference_vppo(self, batch, tiny_dir, state)
            valid = batch["completion_mask"].bool()
            checked.append((batch["token_weights"] == reference)[valid].float().mean().item())
        return batch

    monkeypatch.setattr(trainer_module.VideoGRPOTrainer, "_generate_and_score_completions", checking)
    report = run(config)
    assert report["steps"] == 2 and report["skipped_samples"] == 0
    history = json.loads((tmp_path / "run" / "log_history.json").read_text())
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(x)) for x in losses)
    if config.rl.method in ("ktr", "entropy", "vppo"):
        floor = VPPO_BF16_AGREEMENT if config.rl.method == "vppo" else BF16_AGREEMENT
        assert len(checked) == 2 and min(checked) >= floor, checked
