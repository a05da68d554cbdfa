"""core.weighting: soft token weights (paper RQ4) against per-row loop references, plus their properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from videoktr.core import WEIGHTINGS, soft_token_weights

SOFT = [w for w in WEIGHTINGS if w != "binary"]


def ref_row(s: list[float], scheme: str, tau: float) -> list[float]:
    """The docstring definitions for one row's valid scores, in float64."""
    hi, lo = max(s), min(s)
    if scheme == "softmax":
        e = [math.exp(x / tau) for x in s]  # s are small in these tests: the textbook formula is fine
        return [x / sum(e) / (max(e) / sum(e)) for x in e]
    if scheme == "sigmoid":
        mean = sum(s) / len(s)
        std = math.sqrt(sum((x - mean) ** 2 for x in s) / len(s))
        w = [1 / (1 + math.exp(-(x - mean) / (std + 1e-6) / tau)) for x in s]
        return [x / max(w) for x in w]
    u = [1.0] * len(s) if hi == lo else [(x - lo) / (hi - lo) for x in s]
    if scheme == "linear":
        return u
    return [(math.exp(x / tau) - 1) / (math.exp(1 / tau) - 1) for x in u]


def reference(scores, valid, scheme, tau):
    out = torch.zeros(scores.shape, dtype=torch.float64)
    for b in range(scores.shape[0]):
        pos = [t for t in range(scores.shape[1]) if valid[b, t]]
        if pos:
            for t, w in zip(pos, ref_row([scores[b, t].item() for t in pos], scheme, tau)):
                out[b, t] = w
    return out


@pytest.mark.parametrize("scheme", SOFT)
@pytest.mark.parametrize("tau", [0.5, 1.0, 3.0])
def test_matches_reference(scheme, tau):
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 9, generator=g) * 2
    valid = torch.rand(4, 9, generator=g) > 0.3
    valid[3] = False  # an empty row
    valid[2] = False
    valid[2, 4] = True  # a single valid token
    scores[~valid] = math.nan  # never read
    w = soft_token_weights(scores, valid, scheme, temperature=tau)
    assert w.dtype == torch.float32 and w.shape == (4, 9)
    torch.testing.assert_close(w.double(), reference(scores, valid, scheme, tau), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("scheme", SOFT)
def test_all_equal_scores_give_ones(scheme):
    w = soft_token_weights(torch.full((2, 5), 0.7), torch.ones(2, 5, dtype=torch.bool), scheme)
    torch.testing.assert_close(w, torch.ones(2, 5))


def test_small_temperature_does_not_overflow():
    scores = torch.tensor([[0.0, 0.5, 1.0, 10.0]])
    valid = torch.ones(1, 4, dtype=torch.bool)
    for scheme in SOFT:
        w = soft_token_weights(scores, valid, scheme, temperature=1e-3)
        assert torch.isfinite(w).all() and w[0, -1] == 1.0
    w = soft_token_weights(scores, valid, "exponential", temperature=1e-3)
    torch.testing.assert_close(w, torch.tensor([[0.0, 0.0, 0.0, 1.0]]))
    w = soft_token_weights(scores, valid, "exponential", temperature=0.1)  # (e^{10u} - 1) / (e^{10} - 1)
    u = torch.tensor([0.0, 0.05, 0.1, 1.0], dtype=torch.float64)
    torch.testing.assert_close(w[0].double(), torch.expm1(10 * u) / math.expm1(10), atol=1e-6, rtol=1e-5)


def test_bad_options():
    s, v = torch.zeros(1, 3), torch.ones(1, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="top_ratio_mask"):
        soft_token_weights(s, v, "binary")
    with pytest.raises(ValueError, match="scheme must be one of"):
        soft_token_weights(s, v, "cubic")
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        soft_token_weights(s, v, "softmax", temperature=0)


@settings(max_examples=50, deadline=None)
@given(st.data(), st.sampled_from(SOFT), st.sampled_from([0.3, 1.0, 2.0]))
def test_properties(data, scheme, tau):
    B = data.draw(st.integers(1, 4))
    T = data.draw(st.integers(1, 8))
    vals = data.draw(st.lists(st.floats(-50, 50), min_size=B * T, max_size=B * T))
    scores = torch.tensor(vals).view(B, T)
    valid = torch.tensor(data.draw(st.lists(st.booleans(), min_size=B * T, max_size=B * T))).view(B, T)
    scores[~valid] = data.draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    w = soft_token_weights(scores, valid, scheme, temperature=tau)
    assert torch.isfinite(w).all() and (w >= 0).all() and (w <= 1).all()
    assert (w[~valid] == 0).all()
    for b in range(B):
        pos = valid[b].nonzero().squeeze(1).tolist()
        if not pos:
            continue
        top = max(pos, key=lambda t: scores[b, t].item())
        assert w[b, top].item() == 1.0
        ranked = sorted(pos, key=lambda t: scores[b, t].item())
        weights = [w[b, t].item() for t in ranked]
        assert all(x <= y for x, y in zip(weights, weights[1:]))  # non-decreasing in the score
