"""Counterfactual perturbations of video features (paper Sec. 3.1, RQ7), applied to vision-encoder outputs.

The vision tower runs once; these functions build perturbed copies of its outputs, which the model then
consumes through `mm_encoder_outputs=` with every position id unchanged. Each function takes the feature
rows of ONE video, f [N, D] with N = groups * rows_per_group in temporal-group-major order (see
`models/adapters.py`), and returns a new tensor of the same shape.

Visual (v~ in the paper):  "zero" (paper default: v~ = 0), "zero_fraction" (zero a random share of the
visual tokens, the official history's 50% masking), "replace" (another sample's video features).
Temporal (v^ in the paper): "shuffle" (random permutation of temporal groups, never the identity when there
are >= 2 groups; paper default), "reverse", "segment" (shuffle within consecutive segments of k groups).
"""

from __future__ import annotations

import torch

VISUAL_STRATEGIES = ("zero", "zero_fraction", "replace")
TEMPORAL_STRATEGIES = ("shuffle", "derange", "reverse", "segment")


def zero_features(f: torch.Tensor) -> torch.Tensor:
    """f [N, D] -> zeros [N, D] (the paper's v~ = 0)."""
    return torch.zeros_like(f)


def zero_fraction(f: torch.Tensor, fraction: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """f [N, D] -> copy with round(fraction * N) randomly chosen rows (at least one) set to zero."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"visual_fraction must be in (0, 1], got {fraction}")
    n = f.shape[0]
    k = max(1, round(fraction * n))
    rows = torch.randperm(n, generator=generator)[:k].to(f.device)
    out = f.clone()
    out[rows] = 0
    return out


def replace_features(f: torch.Tensor, donor: torch.Tensor) -> torch.Tensor:
    """f [N, D], donor [M, D] (another video's features) -> [N, D]: the donor's rows, cycled or truncated to N
    rows when the two videos have different sizes."""
    if donor.shape[-1] != f.shape[-1]:
        raise ValueError(f"donor features have width {donor.shape[-1]}, expected {f.shape[-1]}")
    idx = torch.arange(f.shape[0], device=donor.device) % donor.shape[0]
    return donor[idx].to(device=f.device, dtype=f.dtype)


def temporal_permutation(
    num_groups: int, strategy: str = "shuffle", generator: torch.Generator | None = None, segment_groups: int = 2
) -> torch.Tensor:
    """A permutation of temporal groups [num_groups]: output group g shows input group perm[g].

    shuffle: uniformly random among the non-identity permutations when num_groups >= 2 (re-drawn until not the
    identity; the official code's single randperm may be the identity, which scores every token 0). With few
    groups most draws leave most groups in place (4 groups: 14 of the 23 non-identity permutations fix at least
    one group; [0, 1, 3, 2] only swaps the last two events), so events that stay put get no temporal score.
    derange: uniformly random among the derangements (no group stays in place; re-drawn until so): every event
    moves. Two groups: the swap.
    reverse: perm = [G-1, ..., 0]. segment: independent shuffles inside consecutive blocks of `segment_groups`
    groups, re-drawn until not the identity (the first block always has >= 2 groups, so one exists).
    """
    if strategy not in TEMPORAL_STRATEGIES:
        raise ValueError(f"temporal_strategy must be one of {TEMPORAL_STRATEGIES}, got {strategy!r}")
    identity = torch.arange(num_groups)
    if num_groups < 2:
        return identity
    if strategy == "reverse":
        return identity.flip(0)
    if strategy == "segment" and segment_groups < 2:
        raise ValueError(f"segment_groups must be >= 2, got {segment_groups}")
    while True:
        if strategy in ("shuffle", "derange"):
            perm = torch.randperm(num_groups, generator=generator)
            if strategy == "derange" and (perm == identity).any():
                continue
        else:
            blocks = [identity[i : i + segment_groups] for i in range(0, num_groups, segment_groups)]
            perm = torch.cat([b[torch.randperm(len(b), generator=generator)] for b in blocks])
        if not torch.equal(perm, identity):
            return perm


def permute_groups(f: torch.Tensor, num_groups: int, perm: torch.Tensor) -> torch.Tensor:
    """f [G*n, D] (temporal-group-major) -> [G*n, D] with group g replaced by group perm[g]."""
    if f.shape[0] % num_groups:
        raise ValueError(f"{f.shape[0]} feature rows do not split into {num_groups} temporal groups")
    if perm.numel() != num_groups:
        raise ValueError(f"permutation has {perm.numel()} entries for {num_groups} groups")
    return f.view(num_groups, -1, f.shape[-1])[perm.to(f.device)].reshape(f.shape)
