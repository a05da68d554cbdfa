"""core.logprobs against slow float64 loop references (style of TRL's selective_log_softmax tests)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from videoktr.core import lm_head_logprobs, logprobs_and_entropy, selective_log_softmax, token_entropy

SHAPES = [(7,), (3, 5), (2, 3, 4)]  # leading shapes: 1-D, 2-D, 3-D
V = 11


def ref_row(row: list[float], i: int) -> tuple[float, float]:
    """log p(i) and entropy of one logits row, float64, written out."""
    mx = max(row)
    lse = mx + math.log(sum(math.exp(z - mx) for z in row))
    ent = -sum(math.exp(z - lse) * (z - lse) for z in row if z != -math.inf)
    return row[i] - lse, ent


def reference(logits: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows = logits.double().reshape(-1, logits.shape[-1]).tolist()
    out = [ref_row(r, i) for r, i in zip(rows, index.reshape(-1).tolist())]
    logp = torch.tensor([o[0] for o in out], dtype=torch.float64).reshape(index.shape)
    ent = torch.tensor([o[1] for o in out], dtype=torch.float64).reshape(index.shape)
    return logp, ent


def make(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(*shape, V, generator=g) * 4).to(dtype)
    index = torch.randint(0, V, shape, generator=g)
    flat = index.view(-1)
    flat[0], flat[-1] = 0, V - 1  # extremes of the vocabulary
    return logits, index


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("chunk_size", [1, 4, 4096])  # 4 leaves a partial last chunk for 7 and 15 rows
def test_logprobs_and_entropy_match_reference(dtype, shape, chunk_size):
    logits, index = make(shape, dtype)
    ref_logp, ref_ent = reference(logits, index)  # from the same (bf16-rounded) values, in float64
    logp = selective_log_softmax(logits, index, chunk_size=chunk_size)
    ent = token_entropy(logits, chunk_size=chunk_size)
    both = logprobs_and_entropy(logits, index, chunk_size=chunk_size)
    for x in (logp, ent, *both):
        assert x.dtype == torch.float32 and x.shape == shape
    torch.testing.assert_close(logp.double(), ref_logp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent.double(), ref_ent, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[0], logp, atol=0, rtol=0)
    torch.testing.assert_close(both[1], ent, atol=1e-6, rtol=0)


def test_chunk_size_not_dividing_rows():
    logits, index = make((5, 7), torch.float32, seed=1)  # 35 rows in chunks of 8
    ref_logp, ref_ent = reference(logits, index)
    logp, ent = logprobs_and_entropy(logits, index, chunk_size=8)
    torch.testing.assert_close(logp.double(), ref_logp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent.double(), ref_ent, atol=1e-5, rtol=1e-5)


def test_neg_inf_logits_give_finite_entropy():
    logits, index = make((4,), torch.float32)
    logits[:, 3] = -math.inf  # a banned token
    index[index == 3] = 4
    ref_logp, ref_ent = reference(logits, index)
    logp, ent = logprobs_and_entropy(logits, index)
    assert torch.isfinite(ent).all()
    torch.testing.assert_close(ent.double(), ref_ent, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logp.double(), ref_logp, atol=1e-5, rtol=1e-5)


def test_one_hot_distribution():
    logits = torch.full((2, V), -1e4)
    logits[:, 2] = 10.0
    logp, ent = logprobs_and_entropy(logits, torch.tensor([2, 0]))
    torch.testing.assert_close(ent, torch.zeros(2), atol=1e-6, rtol=0)
    assert logp[0].item() == pytest.approx(0.0, abs=1e-6) and logp[1].item() < -1e3


def test_gradient_wrt_logits_matches_naive():
    logits, index = make((3, 5), torch.float32, seed=2)
    g1, g2 = torch.randn(3, 5), torch.randn(3, 5)
    a = logits.clone().requires_grad_()
    logp, ent = logprobs_and_entropy(a, index, chunk_size=4)
    (logp * g1 + ent * g2).sum().backward()
    b = logits.double().requires_grad_()
    lsm = b.log_softmax(-1)
    naive = lsm.gather(-1, index[..., None]).squeeze(-1) * g1 - (lsm.exp() * lsm).sum(-1) * g2
    naive.sum().backward()
    torch.testing.assert_close(a.grad.double(), b.grad, atol=1e-5, rtol=1e-5)


def naive_head(hidden, weight, bias, index):
    z = F.linear(hidden, weight, bias).double()
    lsm = z.log_softmax(-1)
    return lsm.gather(-1, index[..., None]).squeeze(-1), -(lsm.exp() * lsm).sum(-1)


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_lm_head_logprobs_match_naive(dtype, atol, shape, with_bias):
    g = torch.Generator().manual_seed(3)
    H = 6
    hidden = torch.randn(*shape, H, generator=g).to(dtype)
    weight = torch.randn(V, H, generator=g).to(dtype)
    bias = torch.randn(V, generator=g).to(dtype) if with_bias else None
    index = torch.randint(0, V, shape, generator=g)
    index.view(-1)[0], index.view(-1)[-1] = 0, V - 1
    # reference in float64 from the same (rounded) parameters; bf16 differs by the bf16 rounding of the logits
    ref_logp, ref_ent = naive_head(hidden.double(), weight.double(), None if bias is None else bias.double(), index)
    logp = lm_head_logprobs(hidden, weight, index, bias=bias, chunk_size=5)
    logp2, ent = lm_head_logprobs(hidden, weight, index, bias=bias, chunk_size=5, with_entropy=True)
    assert logp.dtype == ent.dtype == torch.float32 and logp.shape == ent.shape == shape
    torch.testing.assert_close(logp.double(), ref_logp, atol=atol, rtol=0)
    torch.testing.assert_close(ent.double(), ref_ent, atol=atol, rtol=0)
    torch.testing.assert_close(logp2, logp, atol=0, rtol=0)


@pytest.mark.parametrize("with_bias", [False, True])
def test_lm_head_logprobs_gradient_matches_naive(with_bias):
    g = torch.Generator().manual_seed(4)
    B, T, H = 2, 7, 5
    hidden0 = torch.randn(B, T, H, generator=g)
    weight0 = torch.randn(V, H, generator=g)
    bias0 = torch.randn(V, generator=g) if with_bias else None
    index = torch.randint(0, V, (B, T), generator=g)
    c1, c2 = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)

    params = [hidden0.clone().requires_grad_(), weight0.clone().requires_grad_()]
    if with_bias:
        params.append(bias0.clone().requires_grad_())
    logp, ent = lm_head_logprobs(params[0], params[1], index, bias=params[2] if with_bias else None,
                                 chunk_size=3, with_entropy=True)
    (logp * c1 + ent * c2).sum().backward()

    ref = [p.detach().double().requires_grad_() for p in params]
    r_logp, r_ent = naive_head(ref[0], ref[1], ref[2] if with_bias else None, index)
    (r_logp * c1 + r_ent * c2).sum().backward()
    for p, r in zip(params, ref):
        torch.testing.assert_close(p.grad.double(), r.grad, atol=1e-4, rtol=1e-4)


def test_lm_head_logprobs_no_grad_and_only_logp_grad():
    hidden = torch.randn(4, 3, requires_grad=True)
    weight = torch.randn(V, 3)
    index = torch.randint(0, V, (4,))
    with torch.no_grad():
        assert not lm_head_logprobs(hidden, weight, index).requires_grad
    logp = lm_head_logprobs(hidden, weight, index, chunk_size=3)
    logp.sum().backward()
    z = (hidden.detach() @ weight.T).double()
    p = z.softmax(-1)
    expected = (F.one_hot(index, V).double() - p) @ weight.double()  # d log p(i) / d h = W_i - E_p[W]
    torch.testing.assert_close(hidden.grad.double(), expected, atol=1e-5, rtol=1e-5)


def test_empty_rows():
    logits = torch.randn(0, 5, V)
    index = torch.zeros(0, 5, dtype=torch.long)
    assert selective_log_softmax(logits, index).shape == (0, 5)
    assert token_entropy(logits).shape == (0, 5)
    assert lm_head_logprobs(torch.randn(0, 3), torch.randn(V, 3), torch.zeros(0, dtype=torch.long)).shape == (0,)


def test_bad_input_raises():
    logits, index = make((3,), torch.float32)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer, got 0"):
        selective_log_softmax(logits, index, chunk_size=0)
    with pytest.raises(ValueError, match="index shape"):
        selective_log_softmax(logits, index[:2])
    with pytest.raises(ValueError, match=r"weight must be \[V, H\]"):
        lm_head_logprobs(torch.randn(3, 4), torch.randn(V, 5), index)


def test_lm_head_never_builds_or_keeps_full_logits(monkeypatch):
    """Forward: every logits block has at most chunk_size rows. Backward: what autograd keeps between forward
    and backward (outside the per-chunk checkpoints) holds far fewer than N x V logits."""
    N, H, Vbig, chunk = 64, 4, 50, 8
    hidden = torch.randn(N, H, requires_grad=True)
    weight = torch.randn(Vbig, H, requires_grad=True)
    index = torch.randint(0, Vbig, (N,))
    rows_seen = []
    linear = F.linear

    def spy(x, w, b=None):
        out = linear(x, w, b)
        rows_seen.append(out.shape[0])
        return out

    monkeypatch.setattr(F, "linear", spy)
    kept = []

    def pack(t):
        kept.append(t.numel() if t.dim() and t.shape[-1] == Vbig else 0)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logp, ent = lm_head_logprobs(hidden, weight, index, chunk_size=chunk, with_entropy=True)
    assert rows_seen and max(rows_seen) <= chunk
    assert sum(kept) < N * Vbig // 4
    (logp + ent).sum().backward()
    assert max(rows_seen) <= chunk and hidden.grad is not None and weight.grad is not None
