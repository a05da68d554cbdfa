"""Controls (core.controls) against slow, obvious references: sizes, validity, uniformity of the random draw, the
capped complement and the count-matched top-entropy selection."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
import torch

from videoktr.core import CONTROLS, complement_mask, control_mask, random_count_mask, top_count_mask


def _example(seed: int = 0, B: int = 6, T: int = 11):
    g = torch.Generator().manual_seed(seed)
    valid = torch.rand(B, T, generator=g) > 0.2
    valid[0] = False  # an empty response
    valid[1, :] = True
    union = (torch.rand(B, T, generator=g) > 0.6) & valid
    union[2] = valid[2]  # the union takes every token: the complement is empty
    scores = torch.randn(B, T, generator=g)
    scores[3, 2] = float("nan")
    scores[4, 1] = scores[4, 5]  # a tie
    return valid, union, scores


def slow_top_count(scores, valid, counts):
    out = torch.zeros_like(valid)
    for r in range(valid.shape[0]):
        pos = [t for t in range(valid.shape[1]) if valid[r, t]]
        key = lambda t: (-(-math.inf if math.isnan(scores[r, t]) else float(scores[r, t])), t)  # noqa: E731
        for t in sorted(pos, key=key)[: int(counts[r])]:
            out[r, t] = True
    return out


def test_top_count_equals_slow_reference():
    valid, union, scores = _example()
    counts = union.sum(1)
    assert torch.equal(top_count_mask(scores, valid, counts), slow_top_count(scores, valid, counts))
    big = torch.full_like(counts, 100)  # more than a row has: every valid token
    assert torch.equal(top_count_mask(scores, valid, big), valid)


@pytest.mark.parametrize("seed", range(5))
def test_random_and_complement_sizes_and_validity(seed):
    valid, union, _ = _example(seed)
    g = torch.Generator().manual_seed(seed)
    r = random_count_mask(union.sum(1), valid, g)
    assert not (r & ~valid).any() and torch.equal(r.sum(1), union.sum(1))
    c = complement_mask(union, valid, g)
    assert not (c & (union | ~valid)).any()
    rest = (valid & ~union).sum(1)
    assert torch.equal(c.sum(1), torch.minimum(rest, union.sum(1)))  # capped at the union's size
    for row in range(valid.shape[0]):  # where the complement is no larger than the union: all of it
        if rest[row] <= union[row].sum():
            assert torch.equal(c[row], valid[row] & ~union[row])
    assert torch.equal(complement_mask(union, valid, cap=False), valid & ~union)


def test_random_draw_is_uniform_and_seeded():
    valid = torch.tensor([[True, True, False, True, True]])
    counts = torch.tensor([2])
    g = torch.Generator().manual_seed(0)
    seen = Counter(tuple(random_count_mask(counts, valid, g)[0].nonzero().squeeze(-1).tolist()) for _ in range(6000))
    subsets = {tuple(c) for c in itertools.combinations([0, 1, 3, 4], 2)}
    assert set(seen) == subsets
    assert all(abs(n - 1000) < 150 for n in seen.values()), seen  # 6 subsets, 1000 each expected
    a = random_count_mask(counts, valid, torch.Generator().manual_seed(7))
    b = random_count_mask(counts, valid, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_control_mask_dispatch():
    valid, union, scores = _example(1)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(control_mask("none", union, valid), union & valid)
    assert torch.equal(control_mask("entropy_matched", union, valid, entropy=scores),
                       slow_top_count(scores, valid, union.sum(1)))
    for name in CONTROLS:
        m = control_mask(name, union, valid, entropy=scores, generator=g)
        assert m.dtype == torch.bool and not (m & ~valid).any() and (m.sum(1) <= union.sum(1)).all()
    with pytest.raises(ValueError, match="entropy"):
        control_mask("entropy_matched", union, valid)
    with pytest.raises(ValueError, match="control must be one of"):
        control_mask("everything", union, valid)
