"""train.compat: every TRL GRPOConfig option videoktr's loss would ignore is refused by name."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from trl import GRPOConfig

from videoktr.train.compat import UNSUPPORTED_RULES, check_trl_options, unsupported_trl_options

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers: gradient_checkpointing

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# one value per refused option that our loss would silently ignore (extra options make the value matter)
NON_DEFAULT = {
    "loss_type": ("grpo", {}),
    "importance_sampling_level": ("sequence", {}),
    "top_entropy_quantile": (0.2, {}),
    "off_policy_mask_threshold": (0.5, {}),
    "delta": (1.5, {}),
    "use_bias_correction_kl": (True, {"beta": 0.04}),
    "entropy_coef": (0.01, {}),
    "use_adaptive_entropy": (True, {}),
    "router_aux_loss_coef": (0.001, {}),
}


def grpo_config(tmp_path, **kw) -> GRPOConfig:
    return GRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], **kw)


def test_default_grpo_config_passes(tmp_path):
    args = grpo_config(tmp_path)
    assert unsupported_trl_options(args) == []
    check_trl_options(args)


def test_rules_name_real_grpo_config_fields():
    names = {f.name for f in dataclasses.fields(GRPOConfig)}
    assert {r.name for r in UNSUPPORTED_RULES} <= names  # a TRL rename must not silently disable a rule
    assert set(NON_DEFAULT) == {r.name for r in UNSUPPORTED_RULES}


@pytest.mark.parametrize("name", sorted(NON_DEFAULT))
def test_each_unsupported_option_is_named(tmp_path, name):
    value, extra = NON_DEFAULT[name]
    args = grpo_config(tmp_path, **{name: value}, **extra)
    assert unsupported_trl_options(args) == [name]
    with pytest.raises(ValueError, match="not supported by videoktr's loss") as err:
        check_trl_options(args)
    assert f"{name}={value!r} (supported: " in str(err.value)


def test_all_unsupported_options_are_listed_together(tmp_path):
    kw = {name: value for name, (value, _) in NON_DEFAULT.items()}
    args = grpo_config(tmp_path, beta=0.04, **kw)
    assert unsupported_trl_options(args) == list(NON_DEFAULT)
    with pytest.raises(ValueError) as err:
        check_trl_options(args)
    assert all(f"{name}=" in str(err.value) for name in NON_DEFAULT)


def test_options_honoured_elsewhere_pass(tmp_path):
    """Applied by TRL before the loss (advantages, completion_mask), or implemented by our loss."""
    args = grpo_config(
        tmp_path, scale_rewards="batch", multi_objective_aggregation="normalize_then_sum",
        mask_truncated_completions=True, beta=0.04, use_bias_correction_kl=False, epsilon=0.1, epsilon_high=0.28,
        num_iterations=2, temperature=0.7, vllm_importance_sampling_mode="token_truncate",
        vllm_importance_sampling_clip_min=0.5)
    check_trl_options(args)
    # bias-corrected KL only matters with a KL term
    check_trl_options(grpo_config(tmp_path, beta=0.0, use_bias_correction_kl=True))


@pytest.mark.parametrize("recipe", [None] + sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_run_arguments_pass(tmp_path, recipe):
    """The GRPOConfig every run builds (the default run and each paper recipe) passes the check."""
    from videoktr.train.config import load_config
    from videoktr.train.build import grpo_args

    config = load_config(CONFIGS / recipe if recipe else None, {"output_dir": str(tmp_path)})
    args = grpo_args(config, suppress_tokens=[])
    assert unsupported_trl_options(args) == []
