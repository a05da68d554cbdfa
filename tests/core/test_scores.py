"""core.scores against float64 loop references: the log-probability shift and the RQ5 distances."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from videoktr.core import DISTANCES, distribution_distance, lm_head_distribution_distance, logprob_shift

V = 9


def softmax_row(row: list[float]) -> list[float]:
    mx = max(row)
    e = [math.exp(z - mx) for z in row]
    return [x / sum(e) for x in e]


def ref_distance(p: list[float], q: list[float], metric: str) -> float:
    """The definitions of the module docstring, written out for one token."""
    if metric == "kl":
        return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)
    if metric == "jsd":
        m = [(a + b) / 2 for a, b in zip(p, q)]
        return 0.5 * ref_distance(p, m, "kl") + 0.5 * ref_distance(q, m, "kl")
    if metric == "l1":
        return sum(abs(a - b) for a, b in zip(p, q))
    if metric == "l2":
        return math.sqrt(sum((a - b) ** 2 for a, b in zip(p, q)))
    if metric == "cosine":
        dot = sum(a * b for a, b in zip(p, q))
        return 1 - dot / (math.sqrt(sum(a * a for a in p)) * math.sqrt(sum(b * b for b in q)))
    assert metric == "hellinger"
    return math.sqrt(0.5 * sum((math.sqrt(a) - math.sqrt(b)) ** 2 for a, b in zip(p, q)))


def reference(z_full: torch.Tensor, z_pert: torch.Tensor, metric: str) -> torch.Tensor:
    rows_p = z_full.double().reshape(-1, z_full.shape[-1]).tolist()
    rows_q = z_pert.double().reshape(-1, z_pert.shape[-1]).tolist()
    out = [ref_distance(softmax_row(a), softmax_row(b), metric) for a, b in zip(rows_p, rows_q)]
    return torch.tensor(out, dtype=torch.float64).reshape(z_full.shape[:-1])


def test_logprob_shift_abs_and_signed():
    full = torch.tensor([[-0.1, -2.0, -3.0]])
    pert = torch.tensor([[-0.5, -1.0, -3.0]])
    torch.testing.assert_close(logprob_shift(full, pert), torch.tensor([[0.4, 1.0, 0.0]]))
    torch.testing.assert_close(logprob_shift(full, pert, signed=True), torch.tensor([[0.4, -1.0, 0.0]]))
    assert logprob_shift(full.bfloat16(), pert.bfloat16()).dtype == torch.float32
    with pytest.raises(ValueError, match="same shape"):
        logprob_shift(full, pert[:, :2])


@pytest.mark.parametrize("metric", DISTANCES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # the reference uses the same rounded values
@pytest.mark.parametrize("shape", [(5,), (2, 3), (2, 2, 2)])
def test_distance_matches_reference(metric, dtype, shape):
    g = torch.Generator().manual_seed(0)
    z_full = (torch.randn(*shape, V, generator=g) * 2).to(dtype)
    z_pert = (z_full.float() + torch.randn(*shape, V, generator=g)).to(dtype)
    d = distribution_distance(z_full, z_pert, metric, chunk_size=3)  # partial last chunk
    assert d.dtype == torch.float32 and d.shape == shape
    torch.testing.assert_close(d.double(), reference(z_full, z_pert, metric), atol=1e-5, rtol=1e-4)
    assert (d > 0).all()  # different distributions: strictly positive


@pytest.mark.parametrize("metric", DISTANCES)
def test_distance_zero_for_identical_and_nonnegative(metric):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(4, 6, V, generator=g) * 5
    same = distribution_distance(z, z.clone(), metric)
    torch.testing.assert_close(same, torch.zeros(4, 6), atol=1e-6, rtol=0)
    # shifting all logits by a constant leaves the distribution unchanged
    torch.testing.assert_close(distribution_distance(z, z + 3.0, metric), torch.zeros(4, 6), atol=1e-5, rtol=0)
    far = distribution_distance(z, torch.randn(4, 6, V, generator=g) * 20, metric)
    assert (far >= 0).all() and torch.isfinite(far).all()


def test_distance_known_values():
    # p = (1, 0) vs q = (0, 1) in the limit: l1 = 2, jsd = log 2, cosine = 1, hellinger = 1, l2 = sqrt 2
    z_p = torch.tensor([[50.0, -50.0]])
    z_q = torch.tensor([[-50.0, 50.0]])
    expected = {"l1": 2.0, "jsd": math.log(2), "cosine": 1.0, "hellinger": 1.0, "l2": math.sqrt(2)}
    for metric, value in expected.items():
        assert distribution_distance(z_p, z_q, metric).item() == pytest.approx(value, abs=1e-5), metric
    assert distribution_distance(z_p, z_q, "kl").item() == pytest.approx(100.0, rel=1e-4)


@pytest.mark.parametrize("metric", DISTANCES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_lm_head_distance_matches_logits_version(metric, with_bias):
    g = torch.Generator().manual_seed(2)
    H = 4
    h_full, h_pert = torch.randn(2, 5, H, generator=g), torch.randn(2, 5, H, generator=g)
    weight = torch.randn(V, H, generator=g)
    bias = torch.randn(V, generator=g) if with_bias else None
    d = lm_head_distribution_distance(h_full, h_pert, weight, metric, bias=bias, chunk_size=3)
    ref = reference(F.linear(h_full.double(), weight.double(), None if bias is None else bias.double()),
                    F.linear(h_pert.double(), weight.double(), None if bias is None else bias.double()), metric)
    assert d.shape == (2, 5)
    torch.testing.assert_close(d.double(), ref, atol=1e-5, rtol=1e-4)


def test_distance_bad_input():
    z = torch.randn(2, V)
    with pytest.raises(ValueError, match="metric must be one of"):
        distribution_distance(z, z, "emd")
    with pytest.raises(ValueError, match="same shape"):
        distribution_distance(z, z[:1], "kl")
    with pytest.raises(ValueError, match="metric must be one of"):
        lm_head_distribution_distance(torch.randn(2, 3), torch.randn(2, 3), torch.randn(V, 3), "wasserstein")
