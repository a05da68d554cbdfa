"""Perception-aware RL baselines and DAPO's dynamic sampling, as pure functions (no model, no trainer).

Dynamic sampling (DAPO, arXiv 2503.14476 Sec. 3.2; verl's `algorithm.filter_groups`, volcengine/verl commit
b178a3c, verl/trainer/config/algorithm.py `FilterGroupsConfig`: a metric, "acc" or "seq_reward", and
`max_num_gen_batches`; the loop in docs/algo/dapo.md: keep the groups whose metric has std > 0, generate again until
`train_batch_size` groups are kept, error out at `max_num_gen_batches`): a prompt group whose G rewards are all
equal has zero advantage and no policy gradient; such groups are replaced by groups of freshly sampled prompts
until the batch holds as many groups as before (here, at the cap, constant groups fill the rest instead).
    constant_groups(rewards, group_size)          [N] -> [N/G] bool: the group's rewards are all equal
    fill_from_rounds(informative, needed)         which (round, group) pairs make up the batch, and how many
                                                  slots no informative group filled

VPPO (Huang et al., "Spotlight on Token Perception for Multimodal Reinforcement Learning", arXiv 2510.09285;
code huaixuheqing/VPPO-RL commit a23c54b, verl/workers/actor/dp_actor.py `update_policy`):
    k3_dependency(logp_real, logp_masked)         the code's per-token visual dependency: the k3 estimate of
                                                  KL(pi(.|real) || pi(.|masked)) on the sampled token, clamped
    (the paper's own definition, the KL between the two full next-token distributions, is
    core.distribution_distance(..., "kl"))
    vppo_advantage_scaling(dependency, valid, minimum)   trajectory-level advantage shaping (TAS) factors [B]
    (token-level gradient filtering, TGF, is core.top_ratio_mask: the top ceil(k * n) tokens of each response)
    negative_logp_mean(logp, valid)               -mean log p over response tokens: the sampled estimate of the
                                                  entropy that VPPO's and PAPO's entropy terms weigh

PAPO (Wang et al., "Perception-Aware Policy Optimization for Multimodal Reasoning", arXiv 2507.06448; code
MikeWangWZHL/PAPO commit fb63bf4, verl/workers/actor/dp_actor.py and verl/trainer/core_algos.py `compute_kl`):
    papo_perception_kl(logp_real, logp_masked, valid, clip)   the implicit perception loss's KL term
"""

from __future__ import annotations

import torch

__all__ = ["constant_groups", "fill_from_rounds", "k3_dependency", "vppo_advantage_scaling", "negative_logp_mean",
           "papo_perception_kl"]


def constant_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Whether each prompt group's rewards are all equal (DAPO's groups with accuracy 0 or 1, generalised).

    rewards [N] (N a multiple of group_size; NaN = a response no reward function scored, left out) -> [N/G]
    bool. A group is constant when its largest scored reward equals its smallest, or when it has fewer than two
    scored responses: its advantages are then all zero (TRL zeroes NaN advantages) and it carries no gradient.
    """
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a length divisible by group_size={group_size}, "
                         f"got shape {tuple(rewards.shape)}")
    r = rewards.double().view(-1, group_size)  # [N/G, G]
    scored = ~torch.isnan(r)
    high = torch.where(scored, r, -torch.inf).amax(1)  # [N/G]
    low = torch.where(scored, r, torch.inf).amin(1)
    return (scored.sum(1) < 2) | (high == low)


def fill_from_rounds(informative: list[torch.Tensor], needed: int) -> tuple[list[tuple[int, int]], int]:
    """The groups a dynamically sampled batch keeps: informative groups in sampling order (round 0 = the batch
    as first sampled, then each round of fresh prompts, each in its own order) until `needed` are kept; when the
    rounds ran out first (the cap), the remaining slots take constant groups of round 0, in order, so that the
    batch keeps its size (they carry no policy gradient, as without dynamic sampling).

    informative: per round, [g_r] bool (True = the group's rewards differ); round 0 must have `needed` groups.
    Returns (picks: `needed` (round, group) pairs, unfilled: slots given to constant groups).
    """
    if not informative or informative[0].numel() != needed:
        raise ValueError(f"round 0 must hold the batch's {needed} groups")
    picks = [(r, g) for r, mask in enumerate(informative) for g in mask.nonzero().flatten().tolist()][:needed]
    unfilled = needed - len(picks)
    if unfilled:
        picks += [(0, g) for g in (~informative[0]).nonzero().flatten().tolist()[:unfilled]]
    return picks, unfilled


def k3_dependency(logp_real: torch.Tensor, logp_masked: torch.Tensor) -> torch.Tensor:
    """VPPO code's token visual dependency: with d = clamp(log q(y) - log p(y), -20, 20) for the sampled token y,
    p the policy on the real input and q on the masked one, clamp(exp(d) - d - 1, 0, 10); its mean under y ~ p
    is KL(p || q). logp_real, logp_masked [B, T] -> [B, T] float32."""
    if logp_real.shape != logp_masked.shape:
        raise ValueError(f"logp_real {tuple(logp_real.shape)} and logp_masked {tuple(logp_masked.shape)} differ")
    d = (logp_masked.float() - logp_real.float()).clamp(-20.0, 20.0)
    return (d.exp() - d - 1).clamp(0.0, 10.0)


def vppo_advantage_scaling(dependency: torch.Tensor, valid: torch.Tensor, minimum: float = 0.9,
                           eps: float = 1e-8) -> torch.Tensor:
    """VPPO's trajectory-level advantage shaping as its code computes it: the factor [B] each response's
    advantage is multiplied by.

    dependency [B, T] per-token visual dependency, valid [B, T] bool (response tokens of responses with a visual
    input). Per response, S_i = mean of its dependency over its valid tokens; over the responses with at least
    one valid token, s_i = (S_i - min S) / (max S - min S) in [0, 1], mu = mean s_i, and the factor is
    minimum + s_i * (1 - minimum) / (mu + eps): minimum for the least dependent response, and the factors of
    the batch average 1 (the code's "dynamic target max" = minimum + (1 - minimum) / mu). Responses without a
    valid token, and every response when max S - min S <= 1e-6 (the code's guard), get 1.
    """
    if dependency.shape != valid.shape or dependency.dim() != 2:
        raise ValueError(f"dependency {tuple(dependency.shape)} and valid {tuple(valid.shape)} must be one [B, T]")
    if not 0.0 <= minimum <= 1.0:
        raise ValueError(f"minimum must be in [0, 1], got {minimum}")
    v = valid.bool()
    n = v.sum(1)  # [B]
    mean = torch.where(v, dependency.float(), 0.0).sum(1) / n.clamp(min=1)  # [B] S_i
    has = n > 0
    out = torch.ones_like(mean)
    if int(has.sum()) < 2:
        return out
    low, high = mean[has].min(), mean[has].max()
    if not high - low > 1e-6:
        return out
    s = ((mean[has] - low) / (high - low)).clamp(0.0, 1.0)  # [B'] normalised scores
    out[has] = minimum + s * (1.0 - minimum) / (s.mean() + eps)
    return out


def negative_logp_mean(logp: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """-sum(logp * valid) / max(sum(valid), 1): the mean negative log-probability of the sampled tokens, the
    estimate of the policy's entropy that VPPO's entropy penalty and PAPO's double entropy loss add to the loss
    (logp [B, T], valid [B, T]; differentiable in logp; 0 with no valid token)."""
    if logp.shape != valid.shape:
        raise ValueError(f"logp {tuple(logp.shape)} and valid {tuple(valid.shape)} must have the same shape")
    v = valid.bool()
    return -torch.where(v, logp, torch.zeros_like(logp)).sum() / v.sum().clamp(min=1)


def papo_perception_kl(logp_real: torch.Tensor, logp_masked: torch.Tensor, valid: torch.Tensor,
                       clip: float = 0.0) -> torch.Tensor:
    """PAPO's implicit perception KL, the term the loss subtracts (so training maximises it), as its code computes
    it: per token, with d = clamp(log q(y) - log p(y), -20, 20) (p on the real input, q on the masked one, y the
    sampled token), k = clamp(exp(d) - d - 1, -10, 10), the k3 estimate of KL(p || q); with clip > 0, k is
    clamped to [0, clip] (the code's `kl_prcp_clipping`, against loss hacking); then the mean over the valid
    tokens of the batch (the code's token-level `average_loss`).

    logp_real, logp_masked [B, T] (both differentiable: the gradient reaches the masked pass too), valid [B, T]
    -> scalar (0 with no valid token)."""
    if not (logp_real.shape == logp_masked.shape == valid.shape):
        raise ValueError(f"logp_real {tuple(logp_real.shape)}, logp_masked {tuple(logp_masked.shape)} and valid "
                         f"{tuple(valid.shape)} must have the same shape")
    if clip < 0:
        raise ValueError(f"clip must be >= 0 (0 = off), got {clip}")
    v = valid.bool()
    zero = torch.zeros_like(logp_real, dtype=torch.float32)
    d = torch.where(v, logp_masked.float() - logp_real.float(), zero).clamp(-20.0, 20.0)
    k = (d.exp() - d - 1).clamp(-10.0, 10.0)
    if clip > 0:
        k = k.clamp(0.0, clip)
    return torch.where(v, k, zero).sum() / v.sum().clamp(min=1)
