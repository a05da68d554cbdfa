"""Which TRL GRPOConfig options videoktr's loss honours, so that a run never silently ignores one.

`VideoGRPOTrainer._compute_loss` replaces TRL 1.16's `GRPOTrainer._compute_loss` with
`core.masked_clipped_loss`. Every loss-affecting field of `trl.GRPOConfig` (1.16) falls in one of three groups:

- applied by TRL before the loss, so honoured as it is: `scale_rewards`, `multi_objective_aggregation`,
  `reward_weights` (advantages come from TRL), `mask_truncated_completions` (TRL zeroes the truncated
  responses' `completion_mask`, which the loss uses), `num_iterations`, `steps_per_generation`,
  `generation_batch_size` (old log-probs from TRL), `temperature` and `cast_lm_head_to_fp32` (TRL's fused LM
  head, which the trainer's log-prob passes call, applies both), `disable_dropout`, `sync_ref_model` and its
  knobs, the sampling options;
- implemented by our loss: `beta`, `epsilon`, `epsilon_high`, and the vLLM importance-sampling correction
  (`vllm_importance_sampling_correction`, `_mode`, `_clip_min`, `_clip_max`: TRL computes
  `inputs["importance_sampling_ratio"]`, the loss multiplies its policy term by it);
- ignored by our loss: refused below whenever they differ from the value our loss implements.

`sapo_*` and `vespo_*` only act through `loss_type` ("sapo", "vespo"), which is refused, so they are not listed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["UNSUPPORTED_RULES", "check_trl_options", "unsupported_trl_options"]

# the GRPOConfig default, which `run.grpo_args` leaves; our `_compute_loss` never reads loss_type
DEFAULT_LOSS_TYPE = "dapo"


@dataclass(frozen=True)
class Rule:
    """A GRPOConfig option our loss does not implement: `ok(args)` says whether its value is one the loss
    computes anyway; `supported` names those values, `reason` says what TRL would do that we do not."""

    name: str
    ok: Callable[[Any], bool]
    supported: str
    reason: str


UNSUPPORTED_RULES: tuple[Rule, ...] = (
    Rule("loss_type", lambda a: a.loss_type == DEFAULT_LOSS_TYPE, f"{DEFAULT_LOSS_TYPE!r} (the default, unused)",
         "videoktr's loss does not read it: rl.loss_normalization chooses the normalisation "
         "(sequence = TRL's 'grpo', token = TRL's 'bnpo', selected = the official Video-KTR code)"),
    Rule("importance_sampling_level", lambda a: a.importance_sampling_level == "token", "'token'",
         "sequence-level (GSPO) ratios are not implemented"),
    Rule("top_entropy_quantile", lambda a: a.top_entropy_quantile == 1.0, "1.0",
         "TRL's entropy mask is not applied; use rl.method=entropy with ktr.ratio instead"),
    Rule("off_policy_mask_threshold", lambda a: a.off_policy_mask_threshold is None, "None",
         "off-policy sequence masking (DeepSeek-V3.2) is not implemented"),
    Rule("delta", lambda a: a.delta is None, "None", "two-sided clipping (INTELLECT-2) is not implemented"),
    Rule("use_bias_correction_kl", lambda a: not a.use_bias_correction_kl or a.beta == 0.0,
         "False when beta != 0", "the KL term is not multiplied by the policy ratio"),
    Rule("entropy_coef", lambda a: a.entropy_coef == 0.0, "0.0", "no entropy bonus is added to the loss"),
    Rule("use_adaptive_entropy", lambda a: not a.use_adaptive_entropy, "False",
         "no entropy bonus is added to the loss"),
    Rule("router_aux_loss_coef", lambda a: a.router_aux_loss_coef in (None, 0.0), "None or 0.0",
         "the MoE load-balancing loss is not added"),
)


def unsupported_trl_options(args) -> list[str]:
    """Names of the options of `args` (a trl.GRPOConfig) whose values videoktr's loss would silently ignore."""
    return [rule.name for rule in UNSUPPORTED_RULES if not rule.ok(args)]


def check_trl_options(args) -> None:
    """Raise ValueError naming every option of `args` (a trl.GRPOConfig) that videoktr's loss does not honour,
    with its value, the supported values and what would be lost; return None when there is none."""
    bad = [rule for rule in UNSUPPORTED_RULES if not rule.ok(args)]
    if bad:
        items = "; ".join(f"{r.name}={getattr(args, r.name)!r} (supported: {r.supported}; {r.reason})"
                          for r in bad)
        raise ValueError(f"TRL option(s) not supported by videoktr's loss: {items}")
