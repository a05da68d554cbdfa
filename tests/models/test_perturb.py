"""Perturbations of vision-encoder outputs, against obvious loops (the pixel-level reference of the group
permutation, per family, is in test_families.py)."""

from __future__ import annotations

import pytest
import torch

from videoktr.models.perturb import (
    permute_groups,
    replace_features,
    temporal_permutation,
    zero_features,
    zero_fraction,
)


def test_temporal_permutation_is_never_identity():
    g = torch.Generator().manual_seed(0)
    for n in (2, 3, 4, 8):
        for _ in range(200):
            p = temporal_permutation(n, "shuffle", g)
            assert sorted(p.tolist()) == list(range(n)) and p.tolist() != list(range(n))
    assert temporal_permutation(1, "shuffle", g).tolist() == [0]


def test_temporal_permutation_is_seeded_and_covers_all_nonidentity():
    seen = {tuple(temporal_permutation(3, "shuffle", torch.Generator().manual_seed(s)).tolist()) for s in range(300)}
    assert len(seen) == 5  # 3! - 1 non-identity permutations
    a = temporal_permutation(8, "shuffle", torch.Generator().manual_seed(5))
    b = temporal_permutation(8, "shuffle", torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_derange_moves_every_group_uniformly():
    """derange: every draw is a derangement, and all derangements come up about equally often (4 groups: 9)."""
    g = torch.Generator().manual_seed(0)
    counts: dict = {}
    for _ in range(1800):
        p = temporal_permutation(4, "derange", g).tolist()
        assert sorted(p) == [0, 1, 2, 3] and all(p[i] != i for i in range(4))
        counts[tuple(p)] = counts.get(tuple(p), 0) + 1
    assert len(counts) == 9 and min(counts.values()) > 130 and max(counts.values()) < 270  # ~200 each
    assert temporal_permutation(2, "derange", g).tolist() == [1, 0]
    assert temporal_permutation(1, "derange", g).tolist() == [0]


def test_reverse_and_segment_permutations():
    assert temporal_permutation(4, "reverse").tolist() == [3, 2, 1, 0]
    g = torch.Generator().manual_seed(1)
    for _ in range(100):
        p = temporal_permutation(7, "segment", g, segment_groups=3).tolist()
        assert sorted(p[0:3]) == [0, 1, 2] and sorted(p[3:6]) == [3, 4, 5] and p[6] == 6
        assert p != list(range(7))
    with pytest.raises(ValueError, match="temporal_strategy"):
        temporal_permutation(4, "sideways")


def test_permute_groups_matches_loop():
    f = torch.randn(12, 5)
    perm = torch.tensor([2, 0, 1])
    out = permute_groups(f, 3, perm)
    for g in range(3):
        assert torch.equal(out[4 * g : 4 * g + 4], f[4 * perm[g] : 4 * perm[g] + 4])
    with pytest.raises(ValueError):
        permute_groups(f, 5, torch.arange(5))


def test_visual_perturbations():
    f = torch.randn(10, 4) + 3
    assert torch.equal(zero_features(f), torch.zeros(10, 4))
    z = zero_fraction(f, 0.5, torch.Generator().manual_seed(0))
    zeroed = (z == 0).all(-1)
    assert zeroed.sum().item() == 5 and torch.equal(z[~zeroed], f[~zeroed])
    assert (zero_fraction(f, 0.01) == 0).all(-1).sum().item() == 1
    with pytest.raises(ValueError, match="visual_fraction"):
        zero_fraction(f, 0.0)
    donor = torch.randn(4, 4)
    r = replace_features(f, donor)
    assert torch.equal(r, torch.cat([donor, donor, donor[:2]]))  # 4 donor rows cycled to 10
