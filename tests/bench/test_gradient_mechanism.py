"""bench/gradient_mechanism.py: the summary (leave-one-out cosine to the expected GRPO gradient, relative per-batch
variance, norm share) by hand, and the per-response method masks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _module():
    sys.path.insert(0, str(BENCH))
    try:
        import gradient_mechanism
    finally:
        sys.path.remove(str(BENCH))
    return gradient_mechanism


def test_summary_by_hand():
    gm = _module()
    grpo = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0])]
    batches = []
    for b, g in enumerate(grpo):
        entry = {"grpo": g}
        for name in gm.METHODS[1:]:
            entry[name] = torch.tensor([1.0, 1.0])  # every other method: the same gradient in every batch
            entry[f"grpo@rest-{name}"] = torch.tensor([0.0, 3.0])
        batches.append(entry)
    out = gm.summarise(batches)
    # leave-one-out expected gradients: (.5, 1), (1, .5), (.5, .5)
    expected = [torch.tensor([0.5, 1.0]), torch.tensor([1.0, 0.5]), torch.tensor([0.5, 0.5])]
    cos = [float(torch.nn.functional.cosine_similarity(g, e, dim=0)) for g, e in zip(grpo, expected)]
    assert out["grpo"]["mean_cosine_to_expected"] == pytest.approx(sum(cos) / 3)
    mean = torch.stack(grpo).mean(0)
    var = sum(float(((g - mean) ** 2).sum()) for g in grpo) / 3 / float(mean.pow(2).sum())
    assert out["grpo"]["relative_variance"] == pytest.approx(var)
    assert out["ktr"]["relative_variance"] == 0.0
    assert out["ktr"]["mean_cosine_to_expected"] == pytest.approx(
        sum(float(torch.nn.functional.cosine_similarity(torch.tensor([1.0, 1.0]), e, dim=0)) for e in expected) / 3)
    assert out["ktr"]["grpo_norm_share_on_its_tokens"] == pytest.approx(2**0.5 / (2**0.5 + 3))


def test_method_masks():
    gm = _module()
    r = {"attributed": True, "token_ids": [1, 2, 3, 4, 5, 6],
         "selected": {"union": [True, False, False, True, False, False], "entropy": [True, False, False, False,
                                                                                     False, False],
                      "visual": [False, False, False, True, False, False], "temporal": None},
         "scores": {"entropy": [0.1, 0.9, 0.8, 0.2, None, 0.3]}}
    m = gm.method_masks(r, torch.Generator().manual_seed(0))
    assert m["grpo"].all() and m["ktr"].tolist() == r["selected"]["union"]
    assert m["T"].sum() == 0 and m["random"].sum() == 2
    assert not (m["complement"] & m["ktr"]).any() and m["complement"].sum() == 2
    assert m["entropy"].tolist() == [False, True, True, False, False, False]
    assert gm.method_masks({**r, "attributed": False}, torch.Generator()) is None
