"""bench/world_design_check.py: the rollout measures by hand on a few logged responses, and the model-free
measures on the sampled_cot world."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _module():
    sys.path.insert(0, str(BENCH))
    try:
        import world_design_check
    finally:
        sys.path.remove(str(BENCH))
    return world_design_check


def test_rollout_measures_by_hand(monkeypatch, tmp_path):
    import videoktr.analysis.rollouts as rollouts

    lp = math.log
    records = [  # step 1: one group with different rewards, one with equal rewards
        {"step": 1, "rank": 0, "prompt_group": 0, "reward": 1.5, "rewards_per_func": [1.0, 1.0], "attributed": True,
         "advantage": 1.0, "tokens": ["a", "b", "c", "d"], "selected": {"union": [True, False, False, True]},
         "logp": {"full": [lp(0.5), lp(0.5), lp(0.999), lp(0.9)]}, "weights": [1, 0, 0, 1], "settings": {}},
        {"step": 1, "rank": 0, "prompt_group": 0, "reward": 0.5, "rewards_per_func": [0.0, 1.0], "attributed": True,
         "advantage": -1.0, "tokens": ["a", "b"], "selected": {"union": [False, True]},
         "logp": {"full": [lp(0.8), lp(0.6)]}, "weights": [0, 1], "settings": {}},
        {"step": 1, "rank": 0, "prompt_group": 1, "reward": 0.5, "rewards_per_func": [0.0, 1.0], "attributed": False,
         "advantage": 0.0, "tokens": ["a"] * 6, "selected": {"union": None}, "logp": {"full": None},
         "weights": None, "settings": {}},
        {"step": 1, "rank": 0, "prompt_group": 1, "reward": 0.5, "rewards_per_func": [0.0, 1.0], "attributed": False,
         "advantage": 0.0, "tokens": ["a"] * 6, "selected": {"union": None}, "logp": {"full": None},
         "weights": None, "settings": {}},
    ]
    monkeypatch.setattr(rollouts, "load_rollouts", lambda run_dir: records)
    got = _module().rollout_measures(tmp_path, budget=6)
    assert got["groups"] == 2 and got["groups_with_gradient"] == 0.5
    assert got["attributed"] == 2 and got["update_ratio"] == pytest.approx((0.5 + 0.5) / 2)
    chosen = 1 * (0.5 + 0.1) + 1 * 0.4
    rest = 1 * (0.5 + 0.001) + 1 * 0.2
    assert got["unselected_share"] == pytest.approx(rest / (chosen + rest))
    assert got["unselected_confident"] == pytest.approx(1 / 3)
    assert got["response_tokens"]["max"] == 6 and got["response_tokens"]["at_budget"] == 0.5
    assert got["accuracy_reward"] == pytest.approx(0.25)
    assert got["mean_one_minus_p"]["left_out"] == pytest.approx((0.5 + 0.001 + 0.2) / 3)
