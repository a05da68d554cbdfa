"""Soft token weights of paper RQ4: alternatives to the binary top-r% mask, used in place of m_{i,t} in Eq. 2.

Per response (row), over its valid positions only, with s the scores and tau the temperature:

    softmax      softmax(s / tau) divided by its row maximum         = exp((s - max s) / tau)
    sigmoid      sigmoid((s - mean s) / (std s + 1e-6) / tau), divided by its row maximum (std: population)
    linear       (s - min s) / (max s - min s)                        (all scores equal: all ones)
    exponential  (exp(u / tau) - 1) / (exp(1 / tau) - 1), u = linear(s) (all scores equal: all ones)

Every scheme gives weights in [0, 1], non-decreasing in the score within a row, exactly 1 at the row's top
token, and 0 at invalid positions (whose scores are never read; they may be NaN or inf). Valid scores are
expected finite. "binary" (the paper's choice) is the hard mask of `selection.top_ratio_mask`.
"""

from __future__ import annotations

import math

import torch

__all__ = ["WEIGHTINGS", "soft_token_weights"]

WEIGHTINGS = ("binary", "softmax", "sigmoid", "linear", "exponential")
_STD_EPS = 1e-6


def soft_token_weights(scores: torch.Tensor, valid: torch.Tensor, scheme: str,
                       temperature: float = 1.0) -> torch.Tensor:
    """Soft importance weights (paper RQ4; definitions in the module docstring).

    scores [B, T] float, valid [B, T] bool -> weights [B, T] (at least float32), 0 at invalid positions.
    """
    if scheme == "binary":
        raise ValueError("scheme 'binary' is a hard mask, not a soft weighting: use selection.top_ratio_mask")
    if scheme not in WEIGHTINGS:
        raise ValueError(f"scheme must be one of {WEIGHTINGS[1:]}, got {scheme!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if scores.dim() != 2 or valid.shape != scores.shape:
        raise ValueError(f"scores and valid must both be [B, T], got {tuple(scores.shape)} and {tuple(valid.shape)}")
    valid = valid.bool()
    s = scores.to(torch.promote_types(scores.dtype, torch.float32))
    s = torch.where(valid, s, torch.zeros_like(s))  # [B, T]; invalid entries neutralised
    inf = torch.full_like(s, torch.inf)
    hi = torch.where(valid, s, -inf).amax(1, keepdim=True)  # [B, 1] row max over valid
    lo = torch.where(valid, s, inf).amin(1, keepdim=True)  # [B, 1] row min over valid
    n = valid.sum(1, keepdim=True).clamp(min=1)  # [B, 1]

    if scheme == "softmax":
        w = torch.exp((s - hi) / temperature)  # softmax / its max
    elif scheme == "sigmoid":
        mean = s.sum(1, keepdim=True) / n
        std = torch.sqrt((torch.where(valid, s - mean, torch.zeros_like(s)) ** 2).sum(1, keepdim=True) / n)
        w = torch.sigmoid((s - mean) / (std + _STD_EPS) / temperature)
        w = w / torch.where(valid, w, torch.zeros_like(w)).amax(1, keepdim=True).clamp(min=1e-30)
    else:
        span = hi - lo  # [B, 1]
        flat = ~(span > 0)  # all valid scores equal (or no valid score)
        u = torch.where(flat, torch.ones_like(s), (s - lo) / torch.where(flat, 1.0, span))  # min-max scaled
        if scheme == "linear":
            w = u
        else:  # (e^{u/tau} - 1) / (e^{1/tau} - 1), rewritten so that no exp overflows for small tau
            w = torch.exp((u - 1) / temperature) * torch.expm1(-u / temperature) / math.expm1(-1.0 / temperature)
            w = torch.where(u >= 1, torch.ones_like(w), w)  # exactly 1 at the top (rounding)
    return torch.where(valid, w.clamp(0.0, 1.0), torch.zeros_like(w))
