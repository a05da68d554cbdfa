"""Metrics on the synthetic world: ROC-AUC, Wilson interval, held-out accuracy, attribution quality."""

from __future__ import annotations

import math

import numpy as np
import pytest

from videoktr.world import metrics as A
from videoktr import world as S

SMALL = S.WorldConfig(palette=S.PALETTE[:3], shapes=("circle", "square"), frames=6, max_events=3)


def brute_auc(scores, labels) -> float:
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(6))
def test_roc_auc_equals_brute_force_pair_count(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    scores = rng.integers(0, 5, size=n).astype(float)  # many ties
    if seed % 2:
        scores = rng.normal(size=n)
    labels = rng.random(n) < 0.3
    labels[0], labels[1] = True, False
    assert A.roc_auc(scores, labels) == pytest.approx(brute_auc(scores.tolist(), labels.tolist()))


def test_roc_auc_edge_cases():
    assert A.roc_auc([1, 2, 3], [0, 1, 1]) == 1.0
    assert A.roc_auc([3, 2, 1], [0, 1, 1]) == 0.0
    assert A.roc_auc([1, 1, 1, 1], [0, 1, 0, 1]) == 0.5
    assert math.isnan(A.roc_auc([1, 2], [1, 1])) and math.isnan(A.roc_auc([], []))


def test_wilson_interval():
    lo, hi = A.wilson_interval(25, 50)
    assert (lo, hi) == pytest.approx((0.3664, 0.6336), abs=1e-4)
    assert A.wilson_interval(0, 10)[0] == 0.0 and A.wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert A.wilson_interval(0, 0) == (0.0, 1.0)


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    import torch

    from videoktr.models.factory import create_model_dir, load_model, load_processor

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("aw")
    world = S.generate_world(root / "world", SMALL, n_train=4, n_eval=10)
    base = create_model_dir(root / "base", size="tiny", corpus=S.corpus(SMALL), seed=0)
    return world, load_model(base, dtype="float32").eval(), load_processor(base)


def test_heldout_accuracy_keys_and_counts(tiny_world):
    world, model, processor = tiny_world
    rows = S.read_rows(world.eval)
    acc = A.heldout_accuracy(model, processor, rows, world.root, batch_size=4, max_new_tokens=6)
    overall = acc["overall"]
    assert set(overall) == {"accuracy", "correct", "n", "ci95", "chance", "format"}
    assert overall["n"] == 10 and 0 <= overall["correct"] <= 10
    assert overall["ci95"][0] <= overall["accuracy"] <= overall["ci95"][1]
    assert sum(s["n"] for s in acc["per_family"].values()) == 10
    assert sum(s["n"] for s in acc["per_kind"].values()) == 10
    assert set(acc["per_family"]) == {r["family"] for r in rows}
    assert all(set(e) == {"family", "problem", "response", "solution"} for e in acc["examples"])


def test_reference_responses_are_scored_correct(tiny_world, monkeypatch):
    world, model, processor = tiny_world
    rows = S.read_rows(world.eval)
    monkeypatch.setattr(A, "generate_responses", lambda *a, **k: [r["process"] + r["solution"] for r in rows])
    acc = A.heldout_accuracy(model, processor, rows, world.root)
    assert acc["overall"]["accuracy"] == 1.0 and acc["overall"]["format"] == 1.0
    assert acc["per_item_response"] == [r["process"] + r["solution"] for r in rows]  # in row order


def test_attribution_quality_returns_every_strategy(tiny_world):
    world, model, processor = tiny_world
    rows = S.read_rows(world.eval)
    q = A.attribution_quality(model, processor, rows, world.root, ratio=0.2, seed=0, batch_size=4)
    assert set(q["auc"]) == set(q["precision"]) == set(q["mean_score"]) == {"visual", "temporal", "entropy"}
    assert set(q["auc"]["visual"]) == {"zero", "zero_fraction", "replace"}
    assert set(q["auc"]["temporal"]) == {"shuffle", "derange", "reverse", "segment"}
    for strategy in q["auc"]["visual"].values():
        assert set(strategy) == {"vision", "vision_uncond"}
    for strategy in q["precision"]["temporal"].values():
        assert set(strategy) == {"order", "order_uncond"}
    assert set(q["auc"]["entropy"]) == {"vision", "order", "vision_uncond", "order_uncond"}
    values = [v for sig in ("visual", "temporal") for s in q["auc"][sig].values() for v in s.values()]
    values += list(q["auc"]["entropy"].values())
    assert all(math.isnan(v) or 0.0 <= v <= 1.0 for v in values)
    assert q["n_responses"] == 10 and q["n_tokens"] > 0 and 0 < q["label_share"]["vision"] < 1
    for v in q["precision"]["visual"].values():
        assert 0.0 <= v["vision"] <= q["precision_max"]["visual"]["vision"] <= 1.0
    assert set(q["precision_max"]) == {"visual", "temporal", "entropy"}


def test_attribution_quality_with_chosen_options(tiny_world):
    from videoktr.attribution import AttributionOptions

    world, model, processor = tiny_world
    rows = S.read_rows(world.eval)[:4]
    options = {"zero": AttributionOptions(signals=("visual",), visual_strategy="zero")}
    q = A.attribution_quality(model, processor, rows, world.root, options_by_strategy=options, batch_size=2)
    assert set(q["auc"]) == {"visual"} and set(q["auc"]["visual"]) == {"zero"}


def test_paired_gain_against_hand_counts():
    from videoktr.world.metrics import paired_gain

    before = [1, 1, 0, 0, 0, 1, 0, 0, 1, 0]
    after = [1, 0, 1, 1, 1, 1, 0, 1, 1, 0]  # 4 wrong->right, 1 right->wrong
    g = paired_gain(before, after)
    assert g["gain"] == pytest.approx(0.3) and (g["improved"], g["worsened"]) == (4, 1)
    se = (5 - 9 / 10) ** 0.5 / 10
    assert g["ci95"] == pytest.approx([0.3 - 1.96 * se, 0.3 + 1.96 * se])
    assert g["p_value"] == pytest.approx(2 * (1 + 5) / 32)  # exact McNemar: P(X <= 1 | 5 discordant)
    assert paired_gain([1, 0], [1, 0])["p_value"] == 1.0
    with pytest.raises(ValueError):
        paired_gain([1], [1, 0])
