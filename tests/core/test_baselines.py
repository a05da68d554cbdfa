"""TW-GRPO token weights against a loop over groups, positions and responses in float64: the Video-KTR authors'
variant (`group_position_kl`, `tw_grpo_weights`) and the original TW-GRPO code's (`..._source`)."""

from __future__ import annotations

import math

import pytest
import torch

from videoktr.core.baselines import (group_position_divergence_source, group_position_kl, tw_grpo_source_weights,
                                     tw_grpo_weights)


def _reference_kl(hidden, weight, valid, groups):
    p = torch.softmax(hidden.double() @ weight.double().T, -1)  # [B, T, V]
    B, T, _ = p.shape
    out = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            if not valid[b, t]:
                continue
            members = [i for i in range(B) if groups[i] == groups[b] and valid[i, t]]
            mean = sum(p[i, t] for i in members) / len(members)
            out[b, t] = (p[b, t] * (p[b, t].log() - mean.log())).sum()
    return out


def test_group_position_kl_matches_loop():
    torch.manual_seed(0)
    B, T, H, V = 6, 7, 5, 11
    hidden, weight = torch.randn(B, T, H), torch.randn(V, H)
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, 5:] = False
    valid[4, 2:] = False
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    got = group_position_kl(hidden, weight, valid, groups, chunk_positions=3)
    ref = _reference_kl(hidden, weight, valid, groups)
    assert torch.allclose(got.double(), ref, atol=1e-5)
    assert (got[~valid] == 0).all() and (got >= 0).all()


def test_identical_responses_have_zero_distance():
    hidden = torch.randn(1, 4, 3).repeat(4, 1, 1)
    d = group_position_kl(hidden, torch.randn(9, 3), torch.ones(4, 4, dtype=torch.bool), torch.zeros(4, dtype=torch.long))
    assert d.abs().max() < 1e-6


def test_tw_grpo_weights_scale_per_response():
    d = torch.tensor([[0.0, 2.0, 1.0, 9.0], [3.0, 3.0, 3.0, 0.0]])
    valid = torch.tensor([[True, True, True, False], [True, True, True, False]])
    w = tw_grpo_weights(d, valid)
    assert torch.allclose(w[0], torch.tensor([1.0, 1.7, 1.35, 0.0]))
    assert torch.allclose(w[1], torch.tensor([1.0, 1.0, 1.0, 0.0]))  # constant row -> low
    with pytest.raises(ValueError):
        tw_grpo_weights(d, valid, low=2.0, high=1.0)


# --------------------------------------------------------------------------------------------- TW-GRPO source


def _reference_source_divergence(hidden, weight, valid, groups, clamp=11.0, log_softmax=True):
    """d_{g,t}: the mean over the group's rows (padding -> uniform -log V) of sum_v exp(r) - r - 1, with
    r = clamp(mean_j l_j[v] - l_i[v]), one scalar at a time in float64."""
    z = hidden.double() @ weight.double().T  # [B, T, V]
    logp = torch.log_softmax(z, -1) if log_softmax else z
    B, T, V = z.shape
    out = torch.zeros(B, T, dtype=torch.float64)
    for g in sorted(set(groups.tolist())):
        members = [i for i in range(B) if groups[i] == g]
        for t in range(T):
            l = {i: [float(logp[i, t, v]) if valid[i, t] else -math.log(V) for v in range(V)] for i in members}
            total = 0.0
            for i in members:
                for v in range(V):
                    mean = sum(l[j][v] for j in members) / len(members)
                    r = min(max(mean - l[i][v], -clamp), clamp)
                    total += math.exp(r) - r - 1.0
            for i in members:
                out[i, t] = total / len(members)
    return out


def _reference_source_weights(d, valid, groups, low=1.0, high=1.7, scale_over="group"):
    B, T = d.shape
    out = torch.zeros(B, T, dtype=torch.float64)
    for i in range(B):
        members = [j for j in range(B) if groups[j] == groups[i]]
        cols = [t for t in range(T) if scale_over == "all" or any(valid[j, t] for j in members)]
        if not cols:
            continue
        lo, hi = min(float(d[i, t]) for t in cols), max(float(d[i, t]) for t in cols)
        for t in range(T):
            if valid[i, t]:
                out[i, t] = low + (high - low) * (float(d[i, t]) - lo) / (hi - lo + 1e-8)
    return out


def _source_case(scale=1.0, seed=0):
    torch.manual_seed(seed)
    B, T, H, V = 7, 6, 5, 11
    hidden, weight = torch.randn(B, T, H), scale * torch.randn(V, H)
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, 4:] = False
    valid[2, 2:] = False
    valid[5, 3:] = False  # group 1 = rows 3, 5: only row 3 valid from t = 3 on
    valid[6, 5:] = False  # group 2 = row 6 alone, then a column where no response of the group is valid
    groups = torch.tensor([0, 0, 0, 1, 0, 1, 2])  # rows of a group need not be adjacent
    return hidden, weight, valid, groups


@pytest.mark.parametrize("scale, log_softmax", [(1.0, True), (6.0, True), (1.0, False), (6.0, False)])
def test_source_divergence_matches_loop(scale, log_softmax):
    hidden, weight, valid, groups = _source_case(scale)
    ref = _reference_source_divergence(hidden, weight, valid, groups, log_softmax=log_softmax)
    if scale > 1:  # the +-11 clamp is active in this case
        z = hidden.double() @ weight.double().T
        assert (torch.log_softmax(z, -1) if log_softmax else z).abs().max() > 22
    for chunk in (1, 4, 16):
        got = group_position_divergence_source(hidden, weight, valid, groups, chunk_positions=chunk,
                                               log_softmax=log_softmax)
        assert got.dtype == torch.float32 and got.shape == valid.shape
        assert torch.allclose(got.double(), ref, rtol=1e-4, atol=1e-5)
    # one value per (group, position), on every row of the group, padded rows included
    assert torch.equal(got[0], got[1]) and torch.equal(got[0], got[2]) and torch.equal(got[0], got[4])
    assert torch.equal(got[3], got[5])
    assert got[6, 5] == 0  # no response of group 2 valid there: uniform against uniform
    assert (got[6, :5] == 0).all()  # a group of one response: its mean is itself
    assert (got[3, 3:] > 0).all()  # one valid response against a uniform-filled one still diverges


def test_source_divergence_bias_temperature_and_unclamped():
    hidden, weight, valid, groups = _source_case(1.0)
    bias = torch.randn(weight.shape[0])
    got = group_position_divergence_source(hidden, weight, valid, groups, bias=bias, temperature=0.5, clamp=1e9)
    ref = _reference_source_divergence(hidden * 2.0, weight, valid, groups, clamp=1e9)  # no bias yet
    assert not torch.allclose(got.double(), ref, rtol=1e-3)
    z_bias = torch.cat([hidden * 2.0, torch.full(hidden.shape[:2] + (1,), 2.0)], -1)  # bias as an extra feature
    ref = _reference_source_divergence(z_bias, torch.cat([weight, bias[:, None]], -1), valid, groups, clamp=1e9)
    assert torch.allclose(got.double(), ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError):
        group_position_divergence_source(hidden, weight, valid, groups, clamp=0.0)


def test_source_divergence_identical_responses_and_gradient():
    hidden = torch.randn(1, 4, 3).repeat(4, 1, 1)
    valid = torch.ones(4, 4, dtype=torch.bool)
    d = group_position_divergence_source(hidden, torch.randn(9, 3), valid, torch.zeros(4, dtype=torch.long))
    assert d.abs().max() < 1e-5
    w = tw_grpo_source_weights(d, valid, torch.zeros(4, dtype=torch.long))
    assert torch.allclose(w, torch.ones(4, 4))  # all equal -> the low end everywhere
    h = torch.randn(4, 3, 2, requires_grad=True)  # differentiable, as in the source (callers may detach)
    group_position_divergence_source(h, torch.randn(5, 2), torch.ones(4, 3, dtype=torch.bool),
                                     torch.tensor([0, 0, 1, 1])).sum().backward()
    assert h.grad is not None and h.grad.abs().sum() > 0


@pytest.mark.parametrize("scale_over", ["group", "all"])
def test_source_weights_match_loop(scale_over):
    hidden, weight, valid, groups = _source_case(1.0, seed=3)
    valid[3, 5:] = False
    valid[5, 5:] = False  # group 1 has no valid response at the last column either
    d = group_position_divergence_source(hidden, weight, valid, groups)
    got = tw_grpo_source_weights(d, valid, groups, scale_over=scale_over)
    ref = _reference_source_weights(d.double(), valid, groups, scale_over=scale_over)
    assert torch.allclose(got.double(), ref, atol=1e-6)
    assert (got[~valid] == 0).all() and (got[valid] >= 1.0).all() and (got[valid] <= 1.7 + 1e-6).all()
    # shared by the group's responses wherever they are valid
    both = valid[0] & valid[1]
    assert torch.equal(got[0][both], got[1][both])
    if scale_over == "group":
        assert torch.isclose(got[0].max(), torch.tensor(1.7)) and torch.isclose(got[0][valid[0]].min(),
                                                                                  torch.tensor(1.0))


def test_source_weights_hand_computed():
    d = torch.tensor([[0.0, 2.0, 1.0, 9.0],
                      [0.0, 2.0, 1.0, 9.0],
                      [3.0, 3.0, 0.0, 0.0],
                      [5.0, 5.0, 5.0, 5.0]])
    valid = torch.tensor([[True, True, True, False],
                          [True, True, False, False],
                          [True, True, False, False],
                          [True, True, True, True]])
    groups = torch.tensor([0, 0, 1, 2])
    w = tw_grpo_source_weights(d, valid, groups)  # group 0 spans columns 0-2, group 1 columns 0-1
    span = 2.0 + 1e-8
    assert torch.allclose(w[0], torch.tensor([1.0, 1.0 + 0.7 * 2 / span, 1.0 + 0.7 / span, 0.0]))
    assert torch.allclose(w[1], torch.tensor([1.0, 1.0 + 0.7 * 2 / span, 0.0, 0.0]))
    assert torch.allclose(w[2], torch.tensor([1.0, 1.0, 0.0, 0.0]))  # constant over its span -> low
    assert torch.allclose(w[3], torch.ones(4))
    w = tw_grpo_source_weights(d, valid, groups, scale_over="all", low=0.5, high=2.5)  # column 3 joins group 0
    assert torch.allclose(w[0], torch.tensor([0.5, 0.5 + 2 * 2 / 9, 0.5 + 2 / 9, 0.0]))
    assert torch.allclose(w[2], torch.tensor([2.5, 2.5, 0.0, 0.0]))  # now min 0 from its padded columns
    with pytest.raises(ValueError):
        tw_grpo_source_weights(d, valid, groups, low=2.0, high=1.0)
    with pytest.raises(ValueError):
        tw_grpo_source_weights(d, valid, groups, scale_over="response")
