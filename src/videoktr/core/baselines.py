"""Token weights of the baselines the paper compares against (Sec. 4, RQ1), as pure functions.

TW-GRPO (Dang et al., 2025; as in the official Video-KTR history): each response token gets a weight from the
KL divergence between its next-token distribution and the mean distribution of its prompt group at the same
position, min-max scaled per response to [low, high] = [1, 1.7]:

    p_bar_{g,t} = mean_{i in g, t < |o_i|} p_{i,t}          (group mean at position t)
    d_{i,t}     = KL(p_{i,t} || p_bar_{g,t})
    w_{i,t}     = low + (high - low) * (d_{i,t} - min_t d_{i,.}) / (max_t d_{i,.} - min_t d_{i,.})

A response whose distances are all equal gets `low` everywhere. Padding gets weight 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["group_position_kl", "tw_grpo_weights"]


def group_position_kl(hidden: torch.Tensor, weight: torch.Tensor, valid: torch.Tensor, group_ids: torch.Tensor,
                      bias: torch.Tensor | None = None, temperature: float = 1.0,
                      chunk_positions: int = 16) -> torch.Tensor:
    """d_{i,t} = KL(p_{i,t} || mean over the group's responses of p_{.,t}), from hidden states.

    hidden [B, T, H] (hidden state predicting response token t); weight [V, H]; valid [B, T] bool;
    group_ids [B] long. Returns [B, T] float32 (0 where not valid). Works on `chunk_positions` positions at
    a time, so at most [B, chunk_positions, V] probabilities exist.
    """
    B, T, _ = hidden.shape
    out = torch.zeros(B, T, dtype=torch.float32, device=hidden.device)
    groups = torch.unique(group_ids)
    for s in range(0, T, chunk_positions):
        z = F.linear(hidden[:, s : s + chunk_positions].to(weight.dtype), weight, bias).float() / temperature
        logp = z.log_softmax(-1)  # [B, c, V]
        v = valid[:, s : s + chunk_positions]  # [B, c]
        for g in groups:
            rows = group_ids == g
            lp, vg = logp[rows], v[rows].float()  # [n, c, V], [n, c]
            p = lp.exp()
            count = vg.sum(0).clamp(min=1.0)  # [c]
            mean_p = (p * vg[..., None]).sum(0) / count[:, None]  # [c, V]
            log_mean = mean_p.clamp_min(1e-30).log()
            kl = (p * (lp - log_mean[None])).sum(-1)  # [n, c]
            out[rows, s : s + chunk_positions] = torch.where(vg > 0, kl.clamp_min(0.0), 0.0)
    return out


def tw_grpo_weights(distances: torch.Tensor, valid: torch.Tensor, low: float = 1.0, high: float = 1.7) -> torch.Tensor:
    """Min-max scale each response's distances [B, T] over its valid positions to [low, high]; 0 elsewhere."""
    if not high >= low:
        raise ValueError(f"need high >= low, got low={low}, high={high}")
    d = distances.float()
    big = torch.finfo(torch.float32).max
    lo = torch.where(valid, d, big).amin(-1, keepdim=True)  # [B, 1]
    hi = torch.where(valid, d, -big).amax(-1, keepdim=True)
    span = hi - lo
    scaled = torch.where(span > 0, (d - lo) / torch.where(span > 0, span, 1.0), 0.0)
    return torch.where(valid, low + (high - low) * scaled, 0.0)
