"""The GRPO objective (paper Eq. 1) and its key-token version (Eq. 2), as a loss to minimise.

    J(theta) = 1/G sum_i 1/|o_i| sum_t m_{i,t} * min(r_{i,t} A_i, clip(r_{i,t}, 1 - eps_low, 1 + eps_high) A_i)

with r_{i,t} = pi_theta(o_{i,t}) / pi_old(o_{i,t}), A_i the group-normalised reward, m_{i,t} the key-token
mask (all ones: Eq. 1). The loss is -J plus beta times the k3 estimate of KL(pi_theta || pi_ref) (the term
the paper omits "for simplicity"; beta = 0.4 in its recipe).
"""

from __future__ import annotations

import torch

__all__ = ["group_advantages", "k3_kl", "LOSS_NORMALIZATIONS", "masked_clipped_loss"]

LOSS_NORMALIZATIONS = ("sequence", "token", "selected")


def group_advantages(rewards: torch.Tensor, group_size: int, scale_std: bool = True,
                     eps: float = 1e-4) -> torch.Tensor:
    """A_i = (R_i - mean(group)) / (std(group) + eps) over consecutive groups of `group_size` rewards (GRPO).

    rewards [N] with N a multiple of group_size -> advantages [N] (at least float32). std is the unbiased
    (n - 1) standard deviation, as in TRL (0 for groups of one); scale_std=False returns R_i - mean(group).
    """
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a length divisible by group_size={group_size}, "
                         f"got shape {tuple(rewards.shape)}")
    r = rewards.to(torch.promote_types(rewards.dtype, torch.float32)).view(-1, group_size)  # [N/G, G]
    centred = r - r.mean(1, keepdim=True)
    if scale_std:
        std = r.std(1, keepdim=True) if group_size > 1 else torch.zeros_like(r[:, :1])
        centred = centred / (std + eps)
    return centred.reshape(-1)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi_theta || pi_ref): exp(ref - logp) - (ref - logp) - 1 (>= 0)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def _check_loss_inputs(logp, old_logp, advantages, completion_mask, token_weights, ref_logp, beta, epsilon_low,
                       epsilon_high, normalization, importance_weights) -> None:
    """masked_clipped_loss's arguments: a ValueError naming the first bad one (options, then shapes)."""
    if normalization not in LOSS_NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {LOSS_NORMALIZATIONS}, got {normalization!r}")
    if not (epsilon_low >= 0 and epsilon_high >= 0):
        raise ValueError(f"epsilon_low and epsilon_high must be >= 0, got {epsilon_low} and {epsilon_high}")
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta > 0 and ref_logp is None:
        raise ValueError(f"beta={beta} > 0 needs ref_logp")
    shape = logp.shape
    if logp.dim() != 2:
        raise ValueError(f"logp must be [B, T], got {tuple(shape)}")
    for name, t in (("old_logp", old_logp), ("completion_mask", completion_mask),
                    ("token_weights", token_weights), ("ref_logp", ref_logp)):
        if t is not None and t.shape != shape:
            raise ValueError(f"{name} must have logp's shape {tuple(shape)}, got {tuple(t.shape)}")
    if advantages.shape not in ((shape[0],), shape):
        raise ValueError(f"advantages must be [B] or [B, T] with [B, T] = {tuple(shape)}, "
                         f"got {tuple(advantages.shape)}")
    if importance_weights is not None and importance_weights.shape not in ((shape[0],), (shape[0], 1), shape):
        raise ValueError(f"importance_weights must be [B], [B, 1] or [B, T] with [B, T] = {tuple(shape)}, "
                         f"got {tuple(importance_weights.shape)}")


def masked_clipped_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    token_weights: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    normalization: str = "sequence",
    mask_kl: bool = False,
    importance_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss = -J of paper Eq. 2 (Eq. 1 when token_weights is None) + beta * k3 KL.

    logp, old_logp, ref_logp [B, T]: log-probs of the sampled tokens under pi_theta, pi_old, pi_ref;
    advantages [B] (or [B, T]); completion_mask [B, T]: 1 on response tokens, 0 on padding / after EOS;
    token_weights [B, T]: m_{i,t} (binary key-token mask or soft weights), None = all ones.
    importance_weights [B, T], [B, 1] or [B]: w_{i,t}, the truncated/masked importance ratio pi_old / pi_sampler
    correcting for the rollout engine (vLLM) sampling from a slightly different distribution than the training
    model (TRL's `inputs["importance_sampling_ratio"]`: [B, T] in its token_* modes, [B, 1] in its sequence_*
    modes); None = all ones. A constant: no gradient flows into it.

    per token: w * m * -min(r A, clip(r, 1 - epsilon_low, 1 + epsilon_high) A) + beta * k3 * (m if mask_kl else 1),
    everything zero outside completion_mask. As in TRL 1.16's GRPOTrainer._compute_loss, w multiplies the
    clipped policy term only, never the KL term, and no normaliser ("selected" divides by sum m, not sum w*m).
    normalization:
      "sequence"  Eq. 2: per response, sum over t / |o_i| (response length, not the selected count); mean
                  over responses (an empty response contributes 0 and still counts in the mean); TRL's "grpo"
      "token"     sum over all response tokens of the micro-batch / their number (TRL's "bnpo"; not DAPO, which
                  divides by the response tokens of the whole generation batch)
      "selected"  per response, sum / sum_t m_{i,t} (the official code); a response with no selected token
                  contributes 0; mean over responses

    Returns (loss scalar, stats) with float stats: policy_loss (the clipped term alone, times w, same
    normalization), clip_ratio (share of selected tokens whose gradient the clip removed), selected_share (sum of
    m over response tokens / number of response tokens), kl (mean k3 over response tokens; only when ref_logp
    given).
    The loss is finite and differentiable in every degenerate case (nothing selected, zero advantages, empty
    responses). Positions outside the response get exactly zero gradient, and so do unselected ones (m = 0)
    unless the KL term covers them (beta > 0 and mask_kl=False).
    """
    _check_loss_inputs(logp, old_logp, advantages, completion_mask, token_weights, ref_logp, beta, epsilon_low,
                       epsilon_high, normalization, importance_weights)
    shape = logp.shape

    live = completion_mask.bool()  # [B, T] response tokens
    zero = torch.zeros_like(logp)
    # Garbage outside the response (inf, NaN) is replaced before any arithmetic: where() passes zero gradient
    # to the replaced entries, whereas multiplying by a mask would give 0 * inf = NaN in value or gradient.
    logp = torch.where(live, logp, zero)
    old_logp = torch.where(live, old_logp.to(logp.dtype), zero)
    cmask = live.to(logp.dtype)
    m = cmask if token_weights is None else torch.where(live, token_weights.to(logp.dtype), zero)  # [B, T] m_{i,t}
    A = (advantages[:, None] if advantages.dim() == 1 else advantages).to(logp.dtype)  # [B, 1] or [B, T]

    ratio = torch.exp(logp - old_logp)  # [B, T] r_{i,t}; 1 outside the response
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    policy = -torch.minimum(ratio * A, clipped * A) * m  # [B, T]
    if importance_weights is not None:
        w = importance_weights.detach().to(logp.dtype)
        w = (w[:, None] if w.dim() == 1 else w).expand(shape)  # [B, T]
        policy = policy * torch.where(live, w, zero)  # where(): garbage outside the response never leaks
    per_token = policy
    kl = None
    if ref_logp is not None:
        kl = k3_kl(logp, torch.where(live, ref_logp.to(logp.dtype), zero))  # [B, T]; 0 outside the response
        if beta > 0:
            per_token = policy + beta * kl * (m if mask_kl else cmask)

    def reduce(x: torch.Tensor) -> torch.Tensor:  # [B, T] -> scalar
        if normalization == "token":
            return x.sum() / cmask.sum().clamp(min=1)
        denom = cmask.sum(1) if normalization == "sequence" else m.sum(1)  # [B]
        # a denominator below the smallest normal float (soft weights summing to a subnormal) counts as nothing
        # selected: 1/denom would overflow to inf and 0 * inf is a NaN gradient
        ok = denom > torch.finfo(denom.dtype).tiny
        rows = torch.where(ok, x.sum(1) / torch.where(ok, denom, 1), 0)  # [B]
        return rows.mean() if rows.numel() else x.sum()

    loss = reduce(per_token)
    with torch.no_grad():
        selected = m > 0
        is_clipped = ((ratio < 1 - epsilon_low) & (A < 0)) | ((ratio > 1 + epsilon_high) & (A > 0))  # [B, T]
        n_response = cmask.sum()
        values = {
            "policy_loss": reduce(policy),
            "clip_ratio": (is_clipped & selected).sum() / selected.sum().clamp(min=1),
            "selected_share": m.sum() / n_response.clamp(min=1),
        }
        if kl is not None:
            values["kl"] = kl.sum() / n_response.clamp(min=1)
        stats = dict(zip(values, torch.stack([v.float() for v in values.values()]).tolist()))
    return loss, stats
