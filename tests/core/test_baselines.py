"""TW-GRPO token weights against a loop over groups, positions and responses in float64."""

from __future__ import annotations

import pytest
import torch

from videoktr.core.baselines import group_position_kl, tw_grpo_weights


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
