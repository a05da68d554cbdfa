"""The documented core API: every public name importable from videoktr.core, documented, torch-only."""

from __future__ import annotations

import subprocess
import sys

import videoktr.core as core

PUBLIC = {
    "selective_log_softmax", "token_entropy", "logprobs_and_entropy", "lm_head_logprobs",
    "logprob_shift", "DISTANCES", "distribution_distance", "lm_head_distribution_distance",
    "top_ratio_mask", "group_top_ratio_mask", "global_top_ratio_mask", "quantile_threshold_mask",
    "union_masks", "selection_stats", "WEIGHTINGS", "soft_token_weights",
    "group_advantages", "k3_kl", "LOSS_NORMALIZATIONS", "masked_clipped_loss",
    "group_position_kl", "tw_grpo_weights", "group_position_divergence_source", "tw_grpo_source_weights",
    "CONTROLS", "random_count_mask", "complement_mask", "top_count_mask", "control_mask",
    "constant_groups", "fill_from_rounds", "k3_dependency", "vppo_advantage_scaling", "negative_logp_mean",
    "papo_perception_kl",
}


def test_public_names_are_exported_and_documented():
    assert set(core.__all__) == PUBLIC
    for name in PUBLIC:
        obj = getattr(core, name)
        assert name in core.__doc__, name  # listed in the package docstring
        if callable(obj):
            assert obj.__doc__ and len(obj.__doc__) > 40, name


def test_option_tuples():
    assert core.DISTANCES == ("kl", "jsd", "l1", "l2", "cosine", "hellinger")
    assert core.WEIGHTINGS == ("binary", "softmax", "sigmoid", "linear", "exponential")
    assert core.LOSS_NORMALIZATIONS == ("sequence", "token", "selected")
    assert core.CONTROLS == ("none", "random", "complement", "entropy_matched")


def test_core_imports_torch_only():
    code = ("import sys, videoktr.core; print(','.join(m for m in ('transformers', 'trl', 'accelerate') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
