"""core.objective: advantages, k3 KL and the masked clipped loss (paper Eq. 1-2) against loop references."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from videoktr.core import LOSS_NORMALIZATIONS, group_advantages, k3_kl, masked_clipped_loss


# ---------------------------------------------------------------- advantages and k3

def test_group_advantages_match_reference():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 2.0, 2.0, 2.0, 2.0, 0.0, 1.0, 1.0, 3.0])
    G = 4
    expected = []
    for g in range(0, len(rewards), G):
        r = rewards[g : g + G].tolist()
        mean = sum(r) / G
        std = math.sqrt(sum((x - mean) ** 2 for x in r) / (G - 1))  # unbiased, like TRL
        expected += [(x - mean) / (std + 1e-4) for x in r]
    torch.testing.assert_close(group_advantages(rewards, G).double(), torch.tensor(expected, dtype=torch.float64))
    centred = group_advantages(rewards, G, scale_std=False)
    torch.testing.assert_close(centred, torch.tensor([0.5, -0.5, 0, 0, 0, 0, 0, 0, -1.25, -0.25, -0.25, 1.75]))
    assert (group_advantages(rewards, 4)[4:8] == 0).all()  # equal rewards -> zero advantages, no NaN


def test_group_advantages_edge_cases():
    assert (group_advantages(torch.tensor([3.0, -1.0]), 1) == 0).all()  # groups of one: no NaN
    with pytest.raises(ValueError, match="divisible by group_size=3"):
        group_advantages(torch.zeros(4), 3)
    with pytest.raises(ValueError, match="group_size must be a positive integer, got 0"):
        group_advantages(torch.zeros(4), 0)


def test_k3_kl():
    logp = torch.tensor([-1.0, -2.0, -0.5, -3.0])
    ref = torch.tensor([-1.0, -1.0, -2.5, -0.1])
    expected = [math.exp(r - l) - (r - l) - 1 for l, r in zip(logp.tolist(), ref.tolist())]
    torch.testing.assert_close(k3_kl(logp, ref), torch.tensor(expected))
    assert k3_kl(logp, ref)[0] == 0 and (k3_kl(logp, ref) >= 0).all()


# ---------------------------------------------------------------- loop reference of the loss

def ref_loss(logp, old, adv, cmask, weights, ref, beta, eps_low, eps_high, normalization, mask_kl, iw=None):
    """Eq. 2 written out token by token (float64 scalars, so autograd gives the reference gradient too).
    iw: importance weights [B, T] or [B, 1] multiplying the clipped policy term only (TRL 1.16's vLLM
    importance-sampling correction)."""
    B, T = logp.shape
    rows, total, n_total = [], 0.0, 0
    for i in range(B):
        row, n_i, m_i = 0.0, 0, 0.0
        for t in range(T):
            if not cmask[i, t]:
                continue
            m = 1.0 if weights is None else float(weights[i, t])
            A = float(adv[i] if adv.dim() == 1 else adv[i, t])
            r = torch.exp(logp[i, t] - old[i, t])
            term = -torch.minimum(r * A, torch.clamp(r, 1 - eps_low, 1 + eps_high) * A) * m
            if iw is not None:
                term = term * float(iw[i, t if iw.shape[1] > 1 else 0])
            if beta:
                d = ref[i, t] - logp[i, t]
                term = term + beta * (torch.exp(d) - d - 1) * (m if mask_kl else 1.0)
            row, n_i, m_i = row + term, n_i + 1, m_i + m
        total, n_total = total + row, n_total + n_i
        denom = n_i if normalization == "sequence" else m_i
        rows.append(row / denom if denom > 0 else torch.zeros((), dtype=torch.float64))
    if normalization == "token":
        return total / max(n_total, 1)
    return sum(rows) / B


def make_inputs(seed, B=4, T=6, soft=False, per_token_adv=False):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g) * 3
    logp = old + torch.randn(B, T, generator=g) * 0.8  # ratios from ~0.1 to ~10: clipping active both ways
    ref = old + torch.randn(B, T, generator=g) * 0.5
    adv = torch.randn(B, T, generator=g) if per_token_adv else torch.randn(B, generator=g)
    lengths = torch.tensor([T, T - 2, 1, 0])[:B]  # includes an empty response
    cmask = (torch.arange(T)[None] < lengths[:, None]).float()
    weights = torch.rand(B, T, generator=g) if soft else (torch.rand(B, T, generator=g) < 0.4).float()
    # selected tokens clipped from above (r = e^1.5, A > 0) and from below (r = e^-1.5, A < 0)
    logp[0, 0], logp[1, 0] = old[0, 0] + 1.5, old[1, 0] - 1.5
    adv[0], adv[1] = 1.0, -1.0
    weights[:2, 0] = 1.0
    logp[cmask == 0] = math.nan  # garbage outside the response must never leak into the loss
    return logp, old, adv, cmask, weights, ref


@pytest.mark.parametrize("normalization", LOSS_NORMALIZATIONS)
@pytest.mark.parametrize("beta,mask_kl", [(0.0, False), (0.4, False), (0.4, True)])
@pytest.mark.parametrize("eps", [(0.2, 0.2), (0.1, 0.28)])
@pytest.mark.parametrize("variant", ["binary", "soft", "no_weights", "per_token_adv"])
def test_loss_matches_reference(normalization, beta, mask_kl, eps, variant):
    logp, old, adv, cmask, weights, ref = make_inputs(
        seed=1, soft=variant == "soft", per_token_adv=variant == "per_token_adv")
    if variant == "no_weights":
        weights = None
    a = logp.clone().requires_grad_()
    loss, stats = masked_clipped_loss(a, old, adv, cmask, token_weights=weights, ref_logp=ref, beta=beta,
                                      epsilon_low=eps[0], epsilon_high=eps[1], normalization=normalization,
                                      mask_kl=mask_kl)
    loss.backward()
    b = logp.double().requires_grad_()
    expected = ref_loss(b, old.double(), adv.double(), cmask, weights, ref.double(), beta, *eps, normalization,
                        mask_kl)
    expected.backward()
    assert loss.shape == () and torch.isfinite(loss)
    torch.testing.assert_close(loss.double(), expected.detach(), atol=1e-6, rtol=1e-5)
    grad_ref = torch.nan_to_num(b.grad, nan=0.0)  # the reference never touches positions outside the response
    torch.testing.assert_close(a.grad.double(), grad_ref, atol=1e-6, rtol=1e-5)
    assert (a.grad[cmask == 0] == 0).all()

    # statistics, by loops
    m = torch.ones_like(cmask) if weights is None else weights * cmask
    A = adv[:, None].expand_as(logp) if adv.dim() == 1 else adv
    clipped = sel = 0
    for i, t in (cmask * m > 0).nonzero().tolist():
        r = math.exp(logp[i, t] - old[i, t])
        sel += 1
        clipped += (r < 1 - eps[0] and A[i, t] < 0) or (r > 1 + eps[1] and A[i, t] > 0)
    assert clipped > 0  # the test exercises clipping
    assert stats["clip_ratio"] == pytest.approx(clipped / sel)
    assert stats["selected_share"] == pytest.approx(float((m * cmask).sum() / cmask.sum()))
    kl = [k3_kl(logp[i, t], ref[i, t]).item() for i, t in (cmask > 0).nonzero().tolist()]
    assert stats["kl"] == pytest.approx(sum(kl) / len(kl), rel=1e-5)
    policy_only = ref_loss(logp.double(), old.double(), adv.double(), cmask, weights, ref.double(), 0.0, *eps,
                           normalization, mask_kl)
    assert stats["policy_loss"] == pytest.approx(float(policy_only), rel=1e-5, abs=1e-7)


def test_sequence_normalization_divides_by_response_length_not_selected_count():
    # one response of 4 tokens, one selected, ratio 1 and A = 1: each selected token contributes -1
    logp = torch.full((1, 4), -1.0)
    cmask = torch.ones(1, 4)
    weights = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    adv = torch.ones(1)
    seq, _ = masked_clipped_loss(logp, logp, adv, cmask, weights, normalization="sequence")
    sel, _ = masked_clipped_loss(logp, logp, adv, cmask, weights, normalization="selected")
    tok, _ = masked_clipped_loss(logp, logp, adv, cmask, weights, normalization="token")
    assert (seq.item(), sel.item(), tok.item()) == (-0.25, -1.0, -0.25)
    # "token" pools lengths over the batch: rows of 4 and 2 tokens, 1 selected token each -> -2 / 6
    cmask2 = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0]])
    w2 = torch.tensor([[1.0, 0, 0, 0], [1, 0, 0, 0]])
    zeros = torch.zeros(2, 4)
    tok2, _ = masked_clipped_loss(zeros, zeros, torch.ones(2), cmask2, w2, normalization="token")
    seq2, _ = masked_clipped_loss(zeros, zeros, torch.ones(2), cmask2, w2)
    assert tok2.item() == pytest.approx(-2 / 6) and seq2.item() == pytest.approx((-1 / 4 - 1 / 2) / 2)


def test_plain_grpo_when_weights_are_none():
    logp, old, adv, cmask, _, _ = make_inputs(seed=2)
    ones = torch.ones_like(cmask)
    a, _ = masked_clipped_loss(logp, old, adv, cmask)
    b, _ = masked_clipped_loss(logp, old, adv, cmask, token_weights=ones)
    assert a.item() == b.item()


@pytest.mark.parametrize("normalization", LOSS_NORMALIZATIONS)
@pytest.mark.parametrize("case", ["no_selected", "zero_advantages", "empty_response", "all_at_once"])
def test_degenerate_inputs_give_finite_loss_and_gradient(normalization, case):
    logp, old, adv, cmask, weights, ref = make_inputs(seed=3)
    if case in ("no_selected", "all_at_once"):
        weights = torch.zeros_like(weights)
    if case in ("zero_advantages", "all_at_once"):
        adv = torch.zeros_like(adv)
    if case in ("empty_response", "all_at_once"):
        cmask = torch.zeros_like(cmask)
    a = logp.clone().requires_grad_()
    loss, stats = masked_clipped_loss(a, old, adv, cmask, weights, ref_logp=ref, beta=0.04,
                                      normalization=normalization, mask_kl=True)
    assert torch.isfinite(loss) and loss.requires_grad
    loss.backward()
    assert torch.isfinite(a.grad).all()
    assert all(math.isfinite(v) for v in stats.values())
    if case in ("no_selected", "empty_response", "all_at_once"):  # nothing selected: exactly zero gradient
        assert loss.item() == 0.0 and (a.grad == 0).all()


def test_kl_on_unselected_tokens_when_mask_kl_is_false():
    logp = torch.tensor([[-1.0, -1.0]], requires_grad=True)
    ref = torch.tensor([[-2.0, -2.0]])
    weights = torch.tensor([[1.0, 0.0]])
    loss, _ = masked_clipped_loss(logp, logp.detach(), torch.zeros(1), torch.ones(1, 2), weights, ref_logp=ref,
                                  beta=0.5, mask_kl=False)
    k3 = math.exp(-1) + 1 - 1
    assert loss.item() == pytest.approx(0.5 * 2 * k3 / 2)
    loss.backward()
    assert (logp.grad != 0).all()  # the KL reaches the unselected token
    loss_masked, _ = masked_clipped_loss(logp, logp.detach(), torch.zeros(1), torch.ones(1, 2), weights,
                                         ref_logp=ref, beta=0.5, mask_kl=True)
    assert loss_masked.item() == pytest.approx(0.5 * k3 / 2)


def test_bad_options():
    x = torch.zeros(2, 3)
    args = (x, x, torch.zeros(2), torch.ones(2, 3))
    with pytest.raises(ValueError, match="normalization must be one of"):
        masked_clipped_loss(*args, normalization="mean")
    with pytest.raises(ValueError, match="needs ref_logp"):
        masked_clipped_loss(*args, beta=0.1)
    with pytest.raises(ValueError, match="epsilon_low and epsilon_high must be >= 0"):
        masked_clipped_loss(*args, epsilon_low=-0.1)
    with pytest.raises(ValueError, match="token_weights must have logp's shape"):
        masked_clipped_loss(*args, token_weights=torch.ones(2, 2))
    with pytest.raises(ValueError, match="advantages must be"):
        masked_clipped_loss(x, x, torch.zeros(3), torch.ones(2, 3))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_loss_is_always_finite(data):
    B = data.draw(st.integers(1, 4))
    T = data.draw(st.integers(1, 6))

    def tensor(strategy, shape):
        return torch.tensor(data.draw(st.lists(strategy, min_size=math.prod(shape), max_size=math.prod(shape)))
                            ).view(shape)

    logp = tensor(st.floats(-30, 0), (B, T))
    old = tensor(st.floats(-30, 0), (B, T))
    ref = tensor(st.floats(-30, 0), (B, T))
    adv = tensor(st.floats(-10, 10), (B,))
    cmask = tensor(st.booleans(), (B, T)).float()
    weights = tensor(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0, 1)), (B, T))
    garbage = tensor(st.sampled_from([math.nan, math.inf, -math.inf, -1e30]), (B, T))
    logp = torch.where(cmask > 0, logp, garbage)
    weights = torch.where(cmask > 0, weights, garbage)  # padding may hold anything
    iw = torch.where(cmask > 0, tensor(st.one_of(st.just(0.0), st.floats(0, 5)), (B, T)), garbage)
    a = logp.clone().requires_grad_()
    loss, stats = masked_clipped_loss(
        a, old, adv, cmask, token_weights=data.draw(st.sampled_from([None, weights])), ref_logp=ref,
        importance_weights=data.draw(st.sampled_from([None, iw, tensor(st.floats(0, 5), (B, 1))])),
        beta=data.draw(st.sampled_from([0.0, 0.04, 0.4])), epsilon_low=0.2, epsilon_high=0.28,
        normalization=data.draw(st.sampled_from(LOSS_NORMALIZATIONS)), mask_kl=data.draw(st.booleans()))
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(a.grad).all() and (a.grad[cmask == 0] == 0).all()
    assert all(math.isfinite(v) for v in stats.values())


def test_subnormal_selected_weight_gives_finite_gradient():
    """Found by the property test: with the official "selected" normalisation, soft weights summing to a
    subnormal number made 1/denominator overflow and the gradient NaN; such a response counts as nothing selected."""
    B, T = 2, 3
    cmask = torch.zeros(B, T)
    cmask[1, 2] = 1
    weights = torch.zeros(B, T)
    weights[1, 2] = 2.6819584015807624e-42
    for adv in (torch.zeros(B), torch.ones(B)):
        a = torch.zeros(B, T, requires_grad=True)
        loss, _ = masked_clipped_loss(a, torch.zeros(B, T), adv, cmask, token_weights=weights,
                                      normalization="selected")
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(a.grad).all()


# ---------------------------------------------------------------- vLLM importance-sampling weights


def importance_weights(seed, B=4, T=6, shape="token"):
    """Truncated/masked ratios as TRL makes them: positive, some exactly 0 (masked), NaN outside the response."""
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(B, T if shape == "token" else 1, generator=g) * 2.5
    w[w < 0.4] = 0.0  # the *_mask modes zero out ratios beyond the bounds
    return w


@pytest.mark.parametrize("normalization", LOSS_NORMALIZATIONS)
@pytest.mark.parametrize("beta,mask_kl", [(0.0, False), (0.4, False), (0.4, True)])
@pytest.mark.parametrize("shape", ["token", "sequence", "flat"])
@pytest.mark.parametrize("variant", ["binary", "soft", "no_weights"])
def test_importance_weights_match_reference(normalization, beta, mask_kl, shape, variant):
    logp, old, adv, cmask, weights, ref = make_inputs(seed=4, soft=variant == "soft")
    if variant == "no_weights":
        weights = None
    iw = importance_weights(5, shape="token" if shape == "token" else "sequence")  # [B, T] or [B, 1]
    passed = iw[:, 0] if shape == "flat" else iw.clone()  # [B] means [B, 1]
    if shape == "token":
        passed[cmask == 0] = math.nan  # padding may hold anything
    a = logp.clone().requires_grad_()
    loss, stats = masked_clipped_loss(a, old, adv, cmask, token_weights=weights, ref_logp=ref, beta=beta,
                                      epsilon_low=0.1, epsilon_high=0.28, normalization=normalization,
                                      mask_kl=mask_kl, importance_weights=passed)
    loss.backward()
    b = logp.double().requires_grad_()
    expected = ref_loss(b, old.double(), adv.double(), cmask, weights, ref.double(), beta, 0.1, 0.28,
                        normalization, mask_kl, iw=iw.double())
    expected.backward()
    torch.testing.assert_close(loss.double(), expected.detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(a.grad.double(), torch.nan_to_num(b.grad, nan=0.0), atol=1e-6, rtol=1e-5)
    assert (a.grad[cmask == 0] == 0).all()
    policy_only = ref_loss(logp.double(), old.double(), adv.double(), cmask, weights, ref.double(), 0.0, 0.1,
                           0.28, normalization, mask_kl, iw=iw.double())
    assert stats["policy_loss"] == pytest.approx(float(policy_only), rel=1e-5, abs=1e-7)
    # weights change the policy term and nothing else: not the KL, the clip statistics or the selected share
    _, plain = masked_clipped_loss(logp, old, adv, cmask, token_weights=weights, ref_logp=ref, beta=beta,
                                   epsilon_low=0.1, epsilon_high=0.28, normalization=normalization, mask_kl=mask_kl)
    assert {k: v for k, v in stats.items() if k != "policy_loss"} == \
        {k: v for k, v in plain.items() if k != "policy_loss"}


@pytest.mark.parametrize("normalization", LOSS_NORMALIZATIONS)
def test_importance_weights_none_equals_all_ones(normalization):
    logp, old, adv, cmask, weights, ref = make_inputs(seed=6)
    B, T = logp.shape
    kw = dict(token_weights=weights, ref_logp=ref, beta=0.04, normalization=normalization)
    losses, grads = [], []
    for iw in (None, torch.ones(B, T), torch.ones(B, 1), torch.ones(B)):
        a = logp.clone().requires_grad_()
        loss, _ = masked_clipped_loss(a, old, adv, cmask, importance_weights=iw, **kw)
        loss.backward()
        losses.append(loss.item())
        grads.append(a.grad)
    assert losses == [losses[0]] * 4
    for g in grads[1:]:
        assert torch.equal(g, grads[0])


def test_importance_weights_scale_policy_not_kl_and_get_no_gradient():
    logp = torch.tensor([[-1.0, -1.0]])
    ref = torch.tensor([[-2.0, -2.0]])
    k3 = math.exp(-1) + 1 - 1
    iw = torch.tensor([[0.5, 2.0]], requires_grad=True)
    # ratio 1, A = 1: policy term -1 per token; times w -> -0.5, -2; KL untouched
    loss, _ = masked_clipped_loss(logp, logp, torch.ones(1), torch.ones(1, 2), ref_logp=ref, beta=0.5,
                                  importance_weights=iw)
    assert loss.item() == pytest.approx((-0.5 - 2.0) / 2 + 0.5 * k3)
    assert not loss.requires_grad  # logp is a constant here, and w is treated as one
    zero_w, _ = masked_clipped_loss(logp, logp, torch.ones(1), torch.ones(1, 2), ref_logp=ref, beta=0.5,
                                    importance_weights=torch.zeros(1, 2))
    assert zero_w.item() == pytest.approx(0.5 * k3)  # all masked by the sampler correction: only the KL is left
    with pytest.raises(ValueError, match="importance_weights must be"):
        masked_clipped_loss(logp, logp, torch.ones(1), torch.ones(1, 2), importance_weights=torch.ones(1, 3))
