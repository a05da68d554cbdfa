"""Attribution scores of paper Sec. 3.1 (visual / temporal) and the distribution distances of RQ5.

The paper's score of response token y_i under a perturbation (video masked, or frames shuffled) is the
log-probability shift  Delta_i = | log softmax(z_i^full)_{y_i} - log softmax(z_i^perturbed)_{y_i} |.
RQ5 compares it with distances between the two full next-token distributions p = softmax(z^full) and
q = softmax(z^perturbed); those are here too (all in nats where a log appears):

    kl         KL(p || q) = sum_w p log(p / q)
    jsd        Jensen-Shannon divergence = 0.5 KL(p || m) + 0.5 KL(q || m), m = (p + q) / 2   (in [0, log 2])
    l1         sum_w |p - q|                                                                   (in [0, 2])
    l2         sqrt(sum_w (p - q)^2)
    cosine     1 - <p, q> / (|p| |q|)                                                          (in [0, 1])
    hellinger  sqrt(0.5 * sum_w (sqrt p - sqrt q)^2)                                           (in [0, 1])

Each is computed per token, in fp32, `chunk_size` rows at a time, and clamped at 0 against rounding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .logprobs import _check_head, _head_logits, _map_row_chunks

__all__ = ["DISTANCES", "logprob_shift", "distribution_distance", "lm_head_distribution_distance"]

DISTANCES = ("kl", "jsd", "l1", "l2", "cosine", "hellinger")


def logprob_shift(logp_full: torch.Tensor, logp_perturbed: torch.Tensor, signed: bool = False) -> torch.Tensor:
    """Delta_i^vis / Delta_i^temp of paper Sec. 3.1: |log p_full(y_i) - log p_perturbed(y_i)|.

    logp_full, logp_perturbed [B, T] -> [B, T] (at least float32). signed=True returns logp_full -
    logp_perturbed without the absolute value (the official code's variant: only tokens the perturbation
    made LESS likely score high).
    """
    if logp_full.shape != logp_perturbed.shape:
        raise ValueError(f"logp_full {tuple(logp_full.shape)} and logp_perturbed {tuple(logp_perturbed.shape)} "
                         "must have the same shape")
    dtype = torch.promote_types(torch.promote_types(logp_full.dtype, logp_perturbed.dtype), torch.float32)
    diff = logp_full.to(dtype) - logp_perturbed.to(dtype)  # [B, T]
    return diff if signed else diff.abs()


def _check_metric(metric: str) -> None:
    if metric not in DISTANCES:
        raise ValueError(f"metric must be one of {DISTANCES}, got {metric!r}")


def _distance(z_p: torch.Tensor, z_q: torch.Tensor, metric: str) -> tuple[torch.Tensor]:
    """One chunk: logits z_p, z_q [c, V] -> (distance [c] float32,)."""
    logp = torch.log_softmax(z_p.float(), dim=-1)  # [c, V]
    logq = torch.log_softmax(z_q.float(), dim=-1)  # [c, V]
    p, q = logp.exp(), logq.exp()

    def kl(a, loga, logb):  # sum a log(a/b), with 0 log 0 = 0
        return torch.where(a > 0, a * (loga - logb), 0.0).sum(-1)

    if metric == "kl":
        d = kl(p, logp, logq)
    elif metric == "jsd":
        logm = torch.logaddexp(logp, logq) - math.log(2.0)  # log((p + q) / 2)
        d = 0.5 * kl(p, logp, logm) + 0.5 * kl(q, logq, logm)
    elif metric == "l1":
        d = (p - q).abs().sum(-1)
    elif metric == "l2":
        d = torch.linalg.vector_norm(p - q, dim=-1)
    elif metric == "cosine":
        d = 1.0 - F.cosine_similarity(p, q, dim=-1)
    else:  # hellinger; sqrt p = exp(log p / 2) keeps precision for tiny p
        d = torch.sqrt(0.5 * ((0.5 * logp).exp() - (0.5 * logq).exp()).pow(2).sum(-1))
    return (d.clamp_min(0.0),)


def distribution_distance(logits_full: torch.Tensor, logits_perturbed: torch.Tensor, metric: str,
                          chunk_size: int = 4096) -> torch.Tensor:
    """Per-token distance between softmax(logits_full) and softmax(logits_perturbed) (paper RQ5).

    logits_full, logits_perturbed [..., V] any float dtype -> [...] float32; metric in DISTANCES (definitions
    in the module docstring).
    """
    _check_metric(metric)
    if logits_full.shape != logits_perturbed.shape:
        raise ValueError(f"logits_full {tuple(logits_full.shape)} and logits_perturbed "
                         f"{tuple(logits_perturbed.shape)} must have the same shape")
    V = logits_full.shape[-1]
    (d,) = _map_row_chunks(lambda a, b: _distance(a, b, metric),
                           (logits_full.reshape(-1, V), logits_perturbed.reshape(-1, V)),
                           logits_full.shape[:-1], chunk_size)
    return d


def lm_head_distribution_distance(hidden_full: torch.Tensor, hidden_perturbed: torch.Tensor,
                                  weight: torch.Tensor, metric: str, bias: torch.Tensor | None = None,
                                  chunk_size: int = 1024) -> torch.Tensor:
    """`distribution_distance` of F.linear(hidden, weight, bias) for both inputs, logits built per chunk.

    hidden_full, hidden_perturbed [..., H] (cast to weight's dtype); weight [V, H]; bias [V] or None
    -> [...] float32. Only `chunk_size` rows of each logits tensor exist at a time.
    """
    _check_metric(metric)
    if hidden_full.shape != hidden_perturbed.shape:
        raise ValueError(f"hidden_full {tuple(hidden_full.shape)} and hidden_perturbed "
                         f"{tuple(hidden_perturbed.shape)} must have the same shape")
    H = hidden_full.shape[-1]
    _check_head(weight, H)

    def chunk(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor]:
        return _distance(_head_logits(a, weight, bias), _head_logits(b, weight, bias), metric)

    (d,) = _map_row_chunks(chunk, (hidden_full.reshape(-1, H), hidden_perturbed.reshape(-1, H)),
                           hidden_full.shape[:-1], chunk_size)
    return d
