"""core.perception (dynamic sampling, VPPO, PAPO) against slow, obvious references: Python loops over rows,
groups and tokens, written from the sources' definitions."""

from __future__ import annotations

import math

import pytest
import torch

from videoktr.core import (constant_groups, distribution_distance, fill_from_rounds, k3_dependency, negative_logp_mean,
                           papo_perception_kl, top_ratio_mask, vppo_advantage_scaling)


def slow_constant_groups(rewards, G):
    out = []
    for g in range(len(rewards) // G):
        scored = [float(x) for x in rewards[g * G : (g + 1) * G] if not math.isnan(float(x))]
        out.append(len(scored) < 2 or max(scored) == min(scored))
    return out


@pytest.mark.parametrize("seed", range(20))
def test_constant_groups_equals_reference(seed):
    g = torch.Generator().manual_seed(seed)
    G = int(torch.randint(1, 6, (1,), generator=g))
    n = int(torch.randint(1, 7, (1,), generator=g))
    rewards = torch.randint(0, 2, (n * G,), generator=g).float() * 0.5  # many constant groups
    rewards[torch.rand(n * G, generator=g) < 0.2] = float("nan")
    assert constant_groups(rewards, G).tolist() == slow_constant_groups(rewards.tolist(), G)


def test_constant_groups_cases():
    r = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 1.0, float("nan"), 2.0, float("nan"), float("nan")])
    assert constant_groups(r[:6], 3).tolist() == [True, False]
    assert constant_groups(r[6:], 2).tolist() == [True, True]  # one scored reward, none scored
    assert constant_groups(torch.tensor([0.1 + 0.2, 0.3], dtype=torch.float64), 2).tolist() == [False]  # exact
    with pytest.raises(ValueError, match="divisible"):
        constant_groups(torch.zeros(5), 2)


def slow_fill(informative, needed):
    picks = []
    for r, mask in enumerate(informative):
        for g, ok in enumerate(mask.tolist()):
            if ok and len(picks) < needed:
                picks.append((r, g))
    unfilled = needed - len(picks)
    for g, ok in enumerate(informative[0].tolist()):
        if not ok and len(picks) < needed:
            picks.append((0, g))
    return picks, unfilled


@pytest.mark.parametrize("seed", range(20))
def test_fill_from_rounds_equals_reference(seed):
    g = torch.Generator().manual_seed(seed)
    needed = int(torch.randint(1, 6, (1,), generator=g))
    rounds = [torch.rand(needed, generator=g) < 0.4]
    for _ in range(int(torch.randint(0, 4, (1,), generator=g))):
        rounds.append(torch.rand(int(torch.randint(1, needed + 1, (1,), generator=g)), generator=g) < 0.4)
    picks, unfilled = fill_from_rounds(rounds, needed)
    assert (picks, unfilled) == slow_fill(rounds, needed)
    assert len(picks) == needed and len(set(picks)) == needed


def test_fill_keeps_round0_informative_groups_first():
    picks, unfilled = fill_from_rounds([torch.tensor([False, True, False]), torch.tensor([True, True])], 3)
    assert picks == [(0, 1), (1, 0), (1, 1)] and unfilled == 0
    picks, unfilled = fill_from_rounds([torch.tensor([False, True, False]), torch.tensor([False])], 3)
    assert picks == [(0, 1), (0, 0), (0, 2)] and unfilled == 2


def test_k3_dependency_reference_and_expectation():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 5, generator=g) * 3, torch.randn(3, 5, generator=g) * 3
    out = k3_dependency(a, b)
    for i in range(3):
        for t in range(5):
            d = min(max(float(b[i, t] - a[i, t]), -20.0), 20.0)
            assert out[i, t].item() == pytest.approx(min(max(math.exp(d) - d - 1, 0.0), 10.0), rel=1e-5, abs=1e-6)
    # its mean under y ~ p is KL(p || q) (the paper's full-distribution dependency)
    zp, zq = torch.randn(7, generator=g), torch.randn(7, generator=g)
    p, logp, logq = zp.softmax(-1), zp.log_softmax(-1), zq.log_softmax(-1)
    expected = (p * k3_dependency(logp[None], logq[None])[0]).sum()
    assert expected.item() == pytest.approx(distribution_distance(zp, zq, "kl").item(), rel=1e-5)


def slow_scaling(dep, valid, minimum):
    B = dep.shape[0]
    means = {}
    for i in range(B):
        vals = [float(dep[i, t]) for t in range(dep.shape[1]) if valid[i, t]]
        if vals:
            means[i] = sum(vals) / len(vals)
    out = [1.0] * B
    if len(means) < 2:
        return out
    lo, hi = min(means.values()), max(means.values())
    if not hi - lo > 1e-6:
        return out
    s = {i: min(max((m - lo) / (hi - lo), 0.0), 1.0) for i, m in means.items()}
    mu = sum(s.values()) / len(s)
    top = minimum + (1 - minimum) / (mu + 1e-8)  # the code's dynamic target max
    for i, si in s.items():
        out[i] = minimum + si * (top - minimum)
    return out


@pytest.mark.parametrize("seed", range(15))
def test_vppo_advantage_scaling_equals_reference(seed):
    g = torch.Generator().manual_seed(seed)
    B, T = int(torch.randint(1, 7, (1,), generator=g)), int(torch.randint(1, 9, (1,), generator=g))
    dep = torch.rand(B, T, generator=g) * 2
    valid = torch.rand(B, T, generator=g) < 0.7
    minimum = float(torch.rand(1, generator=g))
    out = vppo_advantage_scaling(dep, valid, minimum)
    assert out.tolist() == pytest.approx(slow_scaling(dep, valid, minimum), rel=1e-5)


def test_vppo_scaling_averages_one_and_bottoms_at_minimum():
    dep = torch.tensor([[0.0, 0.2], [1.0, 1.0], [0.5, 0.5], [9.0, 9.0]])
    valid = torch.tensor([[True, True], [True, True], [True, False], [False, False]])
    out = vppo_advantage_scaling(dep, valid, 0.9)
    assert out[3] == 1.0 and out[0].item() == pytest.approx(0.9)
    assert out[:3].mean().item() == pytest.approx(1.0, rel=1e-6)
    assert vppo_advantage_scaling(torch.ones(3, 2), torch.ones(3, 2, dtype=torch.bool)).tolist() == [1.0] * 3


def test_vppo_token_filter_is_the_top_ceil_k_of_each_response():
    """TGF: ceil(k * n) tokens of each response, the most dependent (core.top_ratio_mask; VPPO's sort)."""
    dep = torch.tensor([[0.1, 0.9, 0.3, 0.5, 0.0], [0.2, 0.1, 0.7, 0.0, 0.0]])
    valid = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]).bool()
    mask = top_ratio_mask(dep, valid, 0.4)
    assert mask.tolist() == [[False, True, False, True, False], [True, False, True, False, False]]  # ceil(0.4 * 3) = 2


def test_negative_logp_mean_and_papo_kl_reference():
    g = torch.Generator().manual_seed(3)
    a = (torch.randn(4, 6, generator=g) - 2).requires_grad_()
    b = (torch.randn(4, 6, generator=g) - 2).requires_grad_()
    valid = torch.rand(4, 6, generator=g) < 0.6
    n = int(valid.sum())
    ref_ent = -sum(float(a[i, t]) for i in range(4) for t in range(6) if valid[i, t]) / n
    assert negative_logp_mean(a, valid).item() == pytest.approx(ref_ent, rel=1e-5)
    for clip in (0.0, 0.2):
        vals = []
        for i in range(4):
            for t in range(6):
                if valid[i, t]:
                    d = min(max(float(b[i, t] - a[i, t]), -20.0), 20.0)
                    k = min(max(math.exp(d) - d - 1, -10.0), 10.0)
                    vals.append(min(max(k, 0.0), clip) if clip else k)
        assert papo_perception_kl(a, b, valid, clip).item() == pytest.approx(sum(vals) / n, rel=1e-5)
    # differentiable in both passes (PAPO's term needs the masked pass's gradient), none outside valid
    papo_perception_kl(a, b, valid).backward()
    assert b.grad[valid].abs().sum() > 0 and a.grad[valid].abs().sum() > 0
    assert (a.grad[~valid] == 0).all() and (b.grad[~valid] == 0).all()
    assert papo_perception_kl(a, b, torch.zeros_like(valid)).item() == 0.0
