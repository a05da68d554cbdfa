"""Token weights of the baselines the paper compares against (Sec. 4, RQ1), as pure functions.

TW-GRPO (Dang et al., 2025). Three definitions, one `rl.twgrpo_variant` each:

- "source" (default): the original TW-GRPO code, `group_position_divergence_source` + `tw_grpo_source_weights`;
- "video_ktr_code": the same function on raw logits, as the Video-KTR authors' code calls it (`log_softmax=False`);
- "kl_to_mean": videoktr's earlier simplification, `group_position_kl` + `tw_grpo_weights`: each response token
  gets a weight from the KL divergence between its next-token distribution and the mean distribution of its
  prompt group at the same position, min-max scaled per response to [low, high] = [1, 1.7]:

    p_bar_{g,t} = mean_{i in g, t < |o_i|} p_{i,t}          (group mean at position t)
    d_{i,t}     = KL(p_{i,t} || p_bar_{g,t})
    w_{i,t}     = low + (high - low) * (d_{i,t} - min_t d_{i,.}) / (max_t d_{i,.} - min_t d_{i,.})

A response whose distances are all equal gets `low` everywhere. Padding gets weight 0.
Provenance note: the only TW-GRPO code found in the history of
github.com/zywang0104/Video-KTR (all commits searched) is the source function described below, applied to raw
logits; no arithmetic-mean, per-response variant appears there.

The original TW-GRPO code (named option "source") differs; `group_position_divergence_source` and
`tw_grpo_source_weights` reproduce it. Facts, from github.com/longmalongma/TW-GRPO at commit
aa529ffca7ae408e4f3df7ba71cb0dc58544c6b7 (the trainer file has had one version since the initial commit 3abc3c3):
src/open_r1/trainer/grpo_trainer.py, `compute_token_importance_kl_logs_uniform` (lines 640-690), called for
`loss_type == "tw_grpo"` at lines 605-609 on the policy's full log-softmax `per_logps` (lines 462-474, 495-498):

    l_{i,t}  = log p_{i,t}  where response i is valid at t (up to and including its first EOS),
               the uniform log-probability -log V everywhere else (rows padded after their EOS)
    m_{g,t}  = mean over the G responses of group g of l_{i,t}   (a mean of log-probs, NOT renormalised: the
                                                                 log of an unnormalised geometric mean)
    r        = clamp(m_{g,t} - l_{i,t}, -11, 11)                 (per vocabulary entry)
    k_{i,t}  = sum over the vocabulary of (exp(r) - r - 1)       (k3 terms, summed unweighted: not E_p[...])
    d_{g,t}  = mean over the G responses of k_{i,t}              (padded responses included)
    w_{g,t}  = 1 + (alpha - 1) (d_{g,t} - min_t d_{g,.}) / (max_t d_{g,.} - min_t d_{g,.} + 1e-8)

one weight per (group, position), repeated for the group's G rows and multiplied by the completion mask. The
min / max run over every column of the group's [G, L] block: with `per_device_train_batch_size 1` (the released
script scripts/tw-grpo.sh) L is the group's longest response, so every column has a valid response (our
`scale_over="group"`). alpha (`max_weight`) is 1.7 in scripts/tw-grpo.sh and the README (1.4 is the code default).
The weights are not detached in the source (they are computed from the graph-carrying `per_logps`).

The Video-KTR authors' history (github.com/zywang0104/Video-KTR, commits e483c84 .. 1f59306, file
src/r1-v/src/open_r1/trainer/grpo_trainer.py lines 1012-1016 and 1122-1172) holds the same function, called
with max_weight=1.7 on `per_token_logits`, the RAW logits (its `_get_per_token_logps` returns logits, not
log-probs): `log_softmax=False` below reproduces that.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["SOURCE_SCALE_OVER", "group_position_divergence_source", "group_position_kl", "tw_grpo_source_weights",
           "tw_grpo_weights"]


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


SOURCE_SCALE_OVER = ("group", "all")


def group_position_divergence_source(hidden: torch.Tensor, weight: torch.Tensor, valid: torch.Tensor,
                                     group_ids: torch.Tensor, bias: torch.Tensor | None = None,
                                     temperature: float = 1.0, chunk_positions: int = 16, clamp: float = 11.0,
                                     log_softmax: bool = True) -> torch.Tensor:
    """TW-GRPO's own token divergence d_{g,t} (module docstring), one value per (group, position).

    hidden [B, C, H] (hidden state predicting response token t); weight [V, H] (LM head); valid [B, C] bool;
    group_ids [B] long (any values, rows of a group need not be adjacent). Every row of a group counts in its
    means (a row invalid at t contributes the uniform log-probability -log V). Returns [B, C] float32: d_{g,t}
    on EVERY row of group g (invalid rows included; `tw_grpo_source_weights` zeroes them), exactly 0 at columns
    where no response of the group is valid. `log_softmax=False` uses the raw logits z / temperature in place of
    log-probs (the Video-KTR history's call). Differentiable through `hidden` (the source does not detach;
    call it under no_grad for fixed weights). Works on one group and `chunk_positions` positions at a time:
    at most a few [n_group, chunk_positions, V] float32 tensors exist.
    """
    if clamp <= 0:
        raise ValueError(f"clamp must be positive, got {clamp}")
    B, C, _ = hidden.shape
    V = weight.shape[0]
    uniform = -math.log(V)
    out = torch.zeros(B, C, dtype=torch.float32, device=hidden.device)
    for g in torch.unique(group_ids):
        rows = (group_ids == g).nonzero().squeeze(-1)  # [n]
        for s in range(0, C, chunk_positions):
            h = hidden[rows, s : s + chunk_positions]  # [n, c, H]
            v = valid[rows, s : s + chunk_positions]  # [n, c]
            z = F.linear(h.to(weight.dtype), weight, bias).float() / temperature  # [n, c, V]
            lp = z.log_softmax(-1) if log_softmax else z
            lp = torch.where(v[..., None], lp, uniform)  # padding -> uniform
            r = (lp.mean(0, keepdim=True) - lp).clamp(-clamp, clamp)  # [n, c, V]
            k = (r.exp() - r - 1.0).sum(-1)  # [n, c]
            out[rows, s : s + chunk_positions] = k.mean(0, keepdim=True).expand_as(k)
    return out


def tw_grpo_source_weights(divergence: torch.Tensor, valid: torch.Tensor, group_ids: torch.Tensor,
                           low: float = 1.0, high: float = 1.7, eps: float = 1e-8,
                           scale_over: str = "group") -> torch.Tensor:
    """TW-GRPO's own scaling: w = low + (high - low) (d - min) / (max - min + eps), 0 where not valid.

    divergence [B, C] (d_{g,t} on every row of its group, as `group_position_divergence_source` returns);
    valid [B, C] bool; group_ids [B]. min / max per group over `scale_over`: "group" = the columns where at
    least one response of the group is valid (the source with one prompt per process, as its script runs);
    "all" = every column of the tensor (the source with several prompts per process padded to one length,
    where a group's all-padding columns have d = 0). A constant divergence gives `low` everywhere.
    Returns [B, C] float32.
    """
    if not high >= low:
        raise ValueError(f"need high >= low, got low={low}, high={high}")
    if scale_over not in SOURCE_SCALE_OVER:
        raise ValueError(f"unknown scale_over {scale_over!r}; choose one of {SOURCE_SCALE_OVER}")
    d = divergence.float()
    if scale_over == "all":
        span = torch.ones_like(valid, dtype=torch.bool)
    else:
        _, inverse = torch.unique(group_ids, return_inverse=True)  # [B]
        counts = torch.zeros(int(inverse.max()) + 1 if inverse.numel() else 0, valid.shape[1],
                             dtype=torch.float32, device=valid.device)
        counts.index_add_(0, inverse, valid.float())  # [groups, C]: valid responses per group and column
        span = counts[inverse] > 0  # [B, C]
    big = torch.finfo(torch.float32).max
    has = span.any(-1, keepdim=True)  # [B, 1]
    lo = torch.where(has, torch.where(span, d, big).amin(-1, keepdim=True), 0.0)  # [B, 1]
    hi = torch.where(has, torch.where(span, d, -big).amax(-1, keepdim=True), 0.0)
    w = low + (high - low) * (d - lo) / (hi - lo + eps)
    return torch.where(valid.bool(), w, 0.0)
