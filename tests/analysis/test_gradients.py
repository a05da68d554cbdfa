"""The gradient decomposition of Appendix B.1 (analysis/gradients.py) against an independent reference: one
backward per response of the REINFORCE form of the same loss (equal gradients where the ratio is 1)."""

from __future__ import annotations

import math

import pytest
import torch

from videoktr.analysis.gradients import gradient_decomposition, loss_variances, per_token_loss


def _records(processor, temperature):
    tok = processor.tokenizer
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "Which colour?"}]}],
                                         add_generation_prompt=True, tokenize=False)
    prompt = tok(text, add_special_tokens=False)["input_ids"]
    g = torch.Generator().manual_seed(3)
    out = []
    for i, (n, adv) in enumerate([(5, 1.0), (7, -0.5), (6, 2.0), (4, -1.5)]):
        ids = torch.randint(10, 400, (n,), generator=g).tolist()
        mask = [bool(x) for x in torch.rand(n, generator=g).gt(0.5).tolist()]
        mask[0], mask[-1] = True, False  # both parts non-empty in every response
        out.append({"step": 3, "rank": 0, "row": i, "prompt_group": i // 2, "attributed": True,
                    "prompt": [{"role": "user", "content": [{"type": "text", "text": "Which colour?"}]}],
                    "prompt_ids": prompt, "videos": [], "images": [], "token_ids": ids, "tokens": [""] * n,
                    "advantage": adv, "selected": {"union": mask}, "logp": {"full": None, "old": None},
                    "settings": {"temperature": temperature, "epsilon_low": 0.2, "epsilon_high": 0.2}})
    return out


def _reference(model, records, temperature):
    """Per response: loss = sum_t m_t * (-A) * logp_t / n / N, backward; returns the flat gradients."""
    params = {"last_decoder_layer": list(model.model.language_model.layers[-1].parameters()),
              "lm_head": [model.lm_head.weight]}
    grads = {}
    N = len(records)
    for part in ("key", "rest"):
        model.zero_grad(set_to_none=True)
        for r in records:
            ids = torch.tensor([r["prompt_ids"] + r["token_ids"]])
            P, n = len(r["prompt_ids"]), len(r["token_ids"])
            logits = model(input_ids=ids).logits[0, P - 1 : P - 1 + n] / temperature
            logp = torch.log_softmax(logits.float(), -1)[torch.arange(n), torch.tensor(r["token_ids"])]
            m = torch.tensor(r["selected"]["union"])
            keep = m if part == "key" else ~m
            (-(r["advantage"]) * (logp * keep).sum() / n / N).backward()
        grads[part] = {g: torch.cat([p.grad.reshape(-1).clone() for p in ps]) for g, ps in params.items()}
    return grads


def test_gradient_decomposition_matches_an_independent_backward(tiny_dir):
    from videoktr.models.factory import load_model, load_processor

    model = load_model(tiny_dir, dtype="float32").eval()
    processor = load_processor(tiny_dir)
    temperature = 1.5
    records = _records(processor, temperature)
    table = gradient_decomposition(model, processor, records)
    assert [s["step"] for s in table["steps"]] == [3] and not table["skipped"]
    ref = _reference(model, records, temperature)
    step = table["steps"][0]
    for group in ("last_decoder_layer", "lm_head"):
        k, r = ref["key"][group], ref["rest"][group]
        full = k + r
        got = step[group]
        assert got["norm_key"] == pytest.approx(float(k.norm()), rel=1e-4)
        assert got["norm_rest"] == pytest.approx(float(r.norm()), rel=1e-4)
        assert got["norm_full"] == pytest.approx(float(full.norm()), rel=1e-4)
        cos = lambda a, b: float(a @ b / (a.norm() * b.norm()))  # noqa: E731
        assert got["cos_key_full"] == pytest.approx(cos(k, full), abs=1e-4)
        assert got["cos_rest_full"] == pytest.approx(cos(r, full), abs=1e-4)
        assert -1 <= got["cos_key_rest"] <= 1
    # at ratio 1 each token's term is -A / n: the masked response loss is -A * (key tokens) / n
    masked = [-r["advantage"] * sum(r["selected"]["union"]) / len(r["token_ids"]) for r in records]
    full = [-r["advantage"] for r in records]
    var = lambda xs: sum((x - sum(xs) / len(xs)) ** 2 for x in xs) / len(xs)  # noqa: E731
    assert step["loss_variance_masked"] == pytest.approx(var(masked), rel=1e-4)
    assert step["loss_variance_unmasked"] == pytest.approx(var(full), rel=1e-4)
    assert all(p.requires_grad for p in model.parameters())  # the model is left as it was given


def test_per_token_loss_clips_like_grpo():
    logp = torch.log(torch.tensor([[1.5, 0.5]]))
    old = torch.zeros(1, 2)
    up = per_token_loss(logp, old, torch.tensor([1.0]), 0.2, 0.2)
    down = per_token_loss(logp, old, torch.tensor([-1.0]), 0.2, 0.2)
    assert up[0].tolist() == pytest.approx([-1.2, -0.5]) and down[0].tolist() == pytest.approx([1.5, 0.8])


def test_loss_variances():
    masked, full = loss_variances([[1.0, 2.0], [3.0, 0.0]], [[True, False], [False, False]])
    assert masked == pytest.approx(0.25) and full == pytest.approx(0.0)
    assert all(math.isnan(v) for v in loss_variances([[1.0]], [[True]]))
