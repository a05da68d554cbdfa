"""core.selection: exact top-r% selection against loop references, with hypothesis properties."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from videoktr.core import (
    global_top_ratio_mask,
    group_top_ratio_mask,
    quantile_threshold_mask,
    selection_stats,
    top_ratio_mask,
    union_masks,
)

FAST = settings(max_examples=60, deadline=None)


# ---------------------------------------------------------------- references (plain Python loops)

def ref_k(n: int, ratio: float) -> int:
    """ceil(r * n) with r taken as the decimal the user wrote (Fraction('0.3') == 3/10), >= 1 when n >= 1."""
    return 0 if n == 0 else max(1, math.ceil(Fraction(repr(ratio)) * n))


def key(score: float) -> float:
    return -math.inf if math.isnan(score) else score


def ref_select(pool: list[tuple[float, tuple]], ratio: float) -> set[tuple]:
    """pool: (score, tie-break key) of the valid tokens; the top ceil(r n), ties to the smaller tie-break key."""
    ranked = sorted(pool, key=lambda item: (-key(item[0]), item[1]))
    return {tie for _, tie in ranked[: ref_k(len(pool), ratio)]}


def ref_top_ratio(scores: torch.Tensor, valid: torch.Tensor, ratio: float, group_ids=None) -> torch.Tensor:
    B, T = scores.shape
    groups = list(range(B)) if group_ids is None else group_ids.tolist()
    mask = torch.zeros(B, T, dtype=torch.bool)
    for g in set(groups):
        pool = [(scores[b, t].item(), (b, t)) for b in range(B) if groups[b] == g for t in range(T) if valid[b, t]]
        for b, t in ref_select(pool, ratio):
            mask[b, t] = True
    return mask


# ---------------------------------------------------------------- strategies

GARBAGE = [math.nan, math.inf, -math.inf, 1e30]
VALUES = st.one_of(st.sampled_from([0.0, 1.0, -1.0, 2.5]),  # ties are common
                   st.floats(-1e3, 1e3, allow_nan=False),
                   st.sampled_from([math.inf, -math.inf, math.nan]))
RATIOS = st.integers(1, 1000).map(lambda i: i / 1000)


@st.composite
def batches(draw, max_rows=5, max_len=10):
    B = draw(st.integers(1, max_rows))
    T = draw(st.integers(1, max_len))
    valid = torch.tensor(draw(st.lists(st.booleans(), min_size=B * T, max_size=B * T))).view(B, T)
    vals = draw(st.lists(VALUES, min_size=B * T, max_size=B * T))
    junk = draw(st.lists(st.sampled_from(GARBAGE), min_size=B * T, max_size=B * T))
    scores = torch.tensor([v if ok else j for v, j, ok in zip(vals, junk, valid.view(-1).tolist())]).view(B, T)
    return scores, valid


# ---------------------------------------------------------------- top_ratio_mask

@FAST
@given(batches(), RATIOS)
def test_top_ratio_mask_properties(batch, ratio):
    scores, valid = batch
    mask = top_ratio_mask(scores, valid, ratio)
    assert mask.dtype == torch.bool and mask.shape == scores.shape
    assert not (mask & ~valid).any()  # only valid positions
    for b in range(scores.shape[0]):
        n = int(valid[b].sum())
        assert int(mask[b].sum()) == ref_k(n, ratio)  # exact count; >= 1 when n > 0; 0 when n == 0
    assert torch.equal(mask, ref_top_ratio(scores, valid, ratio))
    assert torch.equal(mask, top_ratio_mask(scores.clone(), valid.clone(), ratio))  # deterministic


def test_top_ratio_mask_picks_highest_scores():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.3], [5.0, 4.0, 3.0, 2.0, 1.0]])
    valid = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]], dtype=torch.bool)
    mask = top_ratio_mask(scores, valid, 0.4)  # ceil(2.0) = 2 and ceil(1.6) = 2
    assert mask.tolist() == [[False, True, False, True, False], [False, True, True, False, False]]


def test_ties_pick_earliest_valid_positions():
    scores = torch.zeros(2, 6)
    valid = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 0, 1, 1]], dtype=torch.bool)
    mask = top_ratio_mask(scores, valid, 0.5)
    assert mask.tolist() == [[True, True, True, False, False, False], [False, False, True, False, True, False]]


def test_invalid_nan_and_inf_never_selected_and_valid_nan_ranks_last():
    scores = torch.tensor([[math.nan, math.inf, 1.0, math.nan, -math.inf, 0.0]])
    valid = torch.tensor([[False, False, True, True, True, True]])
    assert top_ratio_mask(scores, valid, 0.5).tolist() == [[False, False, True, False, False, True]]
    # k = 3: after 1.0 and 0.0, -inf (position 4) and NaN (position 3, counted as -inf) tie: earlier wins
    assert top_ratio_mask(scores, valid, 0.75).tolist() == [[False, False, True, True, False, True]]


@pytest.mark.parametrize("ratio,n,k", [(0.2, 5, 1), (0.3, 10, 3), (0.7, 10, 7), (0.1, 3, 1), (0.6, 5, 3),
                                       (1.0, 7, 7), (1e-6, 5, 1), (0.2, 11, 3), (0.35, 20, 7),
                                       (0.28, 25, 7), (0.56, 25, 14)])  # plain ceil gives 8 and 15
def test_count_is_robust_to_float_rounding(ratio, n, k):
    mask = top_ratio_mask(torch.randn(1, n), torch.ones(1, n, dtype=torch.bool), ratio)
    assert int(mask.sum()) == k


def test_empty_rows_select_nothing():
    valid = torch.tensor([[False, False, False], [True, False, False]])
    mask = top_ratio_mask(torch.randn(2, 3), valid, 0.2)
    assert mask.tolist() == [[False, False, False], [True, False, False]]


@pytest.mark.parametrize("ratio", [0, 1.5, -0.1, math.nan])
def test_bad_ratio(ratio):
    s, v = torch.zeros(1, 3), torch.ones(1, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\], got"):
        top_ratio_mask(s, v, ratio)
    with pytest.raises(ValueError, match="ratio must be in"):
        group_top_ratio_mask(s, v, ratio, torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="ratio must be in"):
        global_top_ratio_mask(s, v, ratio)
    with pytest.raises(ValueError, match="ratio must be in"):
        quantile_threshold_mask(s, v, ratio, torch.zeros(1, dtype=torch.long))


def test_bad_shapes():
    with pytest.raises(ValueError, match="must both be"):
        top_ratio_mask(torch.zeros(2, 3), torch.ones(2, 4, dtype=torch.bool), 0.5)
    with pytest.raises(ValueError, match="bool"):
        top_ratio_mask(torch.zeros(2, 3), torch.ones(2, 3), 0.5)
    with pytest.raises(ValueError, match="group_ids"):
        group_top_ratio_mask(torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool), 0.5, torch.zeros(3).long())


def test_error_message_names_the_value():
    with pytest.raises(ValueError, match=r"^ratio must be in \(0, 1\], got 1.5$"):
        top_ratio_mask(torch.zeros(1, 3), torch.ones(1, 3, dtype=torch.bool), 1.5)


# ---------------------------------------------------------------- group mode

@FAST
@given(batches(max_rows=6), RATIOS, st.data())
def test_group_top_ratio_mask_properties(batch, ratio, data):
    scores, valid = batch
    B = scores.shape[0]
    group_ids = torch.tensor(data.draw(st.lists(st.integers(0, 2), min_size=B, max_size=B)))
    mask = group_top_ratio_mask(scores, valid, ratio, group_ids)
    assert not (mask & ~valid).any()
    for g in group_ids.unique():
        rows = group_ids == g
        assert int(mask[rows].sum()) == ref_k(int(valid[rows].sum()), ratio)
    assert torch.equal(mask, ref_top_ratio(scores, valid, ratio, group_ids))


def test_group_mode_pools_rows_and_may_leave_a_row_empty():
    scores = torch.tensor([[9.0, 8.0, 7.0], [1.0, 2.0, 3.0], [5.0, 5.0, 5.0], [5.0, 5.0, 5.0]])
    valid = torch.ones(4, 3, dtype=torch.bool)
    mask = group_top_ratio_mask(scores, valid, 0.5, torch.tensor([0, 0, 1, 1]))
    # group 0: ceil(3) = 3 best of 6 -> all of row 0, none of row 1; group 1: all tied -> row 2 first
    assert mask.tolist() == [[True] * 3, [False] * 3, [True] * 3, [False] * 3]


# ---------------------------------------------------------------- global mode

def shard_run(scores, valid, ratio, cuts):
    """Simulate len(cuts)+1 processes: shard rows, each calls global_top_ratio_mask with a fake all_gather."""
    bounds = [0, *cuts, scores.shape[0]]
    shards = [(scores[a:b], valid[a:b]) for a, b in zip(bounds, bounds[1:])]
    gathered = [s[v] for s, v in shards]  # what every process contributes, in rank order

    def make_gather(rank):
        def all_gather(local):
            assert torch.equal(local.nan_to_num(), gathered[rank].nan_to_num())
            return list(gathered)
        return all_gather

    masks = [global_top_ratio_mask(s, v, ratio, all_gather=make_gather(r), rank=r) for r, (s, v) in enumerate(shards)]
    return torch.cat(masks)


@FAST
@given(batches(max_rows=6), RATIOS, st.data())
def test_global_mode_across_simulated_processes(batch, ratio, data):
    scores, valid = batch
    B = scores.shape[0]
    single = global_top_ratio_mask(scores, valid, ratio)
    one_group = group_top_ratio_mask(scores, valid, ratio, torch.zeros(B, dtype=torch.long))
    assert torch.equal(single, one_group)
    assert int(single.sum()) == ref_k(int(valid.sum()), ratio)
    cuts = sorted(data.draw(st.lists(st.integers(0, B), min_size=1, max_size=2)))  # 2-3 processes, maybe empty
    assert torch.equal(shard_run(scores, valid, ratio, cuts), single)


def test_global_mode_tie_break_is_rank_then_row_then_position():
    scores = torch.ones(4, 2)
    valid = torch.ones(4, 2, dtype=torch.bool)
    union = shard_run(scores, valid, 0.25, [2])  # k = 2 of 8: rank 0, row 0, positions 0 and 1
    assert union.tolist() == [[True, True], [False, False], [False, False], [False, False]]


def test_global_mode_rejects_inconsistent_gather():
    s, v = torch.zeros(1, 3), torch.ones(1, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="all_gather must return"):
        global_top_ratio_mask(s, v, 0.5, all_gather=lambda x: [x[:1], x], rank=0)
    with pytest.raises(ValueError, match="all_gather must return"):
        global_top_ratio_mask(s, v, 0.5, all_gather=lambda x: [x], rank=1)


# ---------------------------------------------------------------- official quantile threshold

def ref_quantile(values: list[float], q: float) -> float:
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def test_quantile_threshold_matches_reference():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 7, generator=g)
    valid = torch.rand(6, 7, generator=g) > 0.3
    scores[~valid] = math.nan
    group_ids = torch.tensor([0, 0, 0, 1, 1, 1])
    mask = quantile_threshold_mask(scores, valid, 0.2, group_ids)
    expected = torch.zeros(6, 7, dtype=torch.bool)
    for rows in ([0, 1, 2], [3, 4, 5]):
        pool = [scores[b, t].item() for b in rows for t in range(7) if valid[b, t]]
        thr = ref_quantile(pool, 0.8)
        for b in rows:
            for t in range(7):
                expected[b, t] = bool(valid[b, t]) and scores[b, t].item() >= thr
    assert torch.equal(mask, expected)


def test_quantile_ties_exceed_ratio_and_rows_may_be_empty():
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    valid = torch.ones(2, 4, dtype=torch.bool)
    mask = quantile_threshold_mask(scores, valid, 0.2, torch.tensor([0, 0]))
    assert mask.tolist() == [[True] * 4, [False] * 4]  # 4 of 8 selected at r = 0.2; row 1 gets none
    tied = quantile_threshold_mask(torch.zeros(1, 5), torch.ones(1, 5, dtype=torch.bool), 0.2, torch.tensor([0]))
    assert int(tied.sum()) == 5


# ---------------------------------------------------------------- union and statistics

def test_union_masks():
    a = torch.tensor([[True, False, False]])
    b = torch.tensor([[False, False, True]])
    assert union_masks({"a": a, "b": b}).tolist() == [[True, False, True]]
    assert union_masks({"a": a}).tolist() == a.tolist()
    with pytest.raises(ValueError, match="at least one mask"):
        union_masks({})


def test_selection_stats_values():
    valid = torch.tensor([[True] * 5 + [False]])
    masks = {
        "visual": torch.tensor([[1, 1, 0, 0, 0, 0]], dtype=torch.bool),
        "entropy": torch.tensor([[0, 1, 1, 0, 0, 0]], dtype=torch.bool),
        "temporal": torch.tensor([[0, 0, 0, 0, 1, 0]], dtype=torch.bool),
    }
    stats = selection_stats(masks, valid)
    assert stats == pytest.approx({
        "update_ratio": 4 / 5,
        "ratio/entropy": 2 / 5, "ratio/temporal": 1 / 5, "ratio/visual": 2 / 5,
        "overlap/entropy&temporal": 0.0, "overlap/entropy&visual": 1 / 3, "overlap/temporal&visual": 0.0,
        "unique/entropy": 1 / 4, "unique/temporal": 1 / 4, "unique/visual": 1 / 4,
    })
    assert all(isinstance(v, float) for v in stats.values())


def test_selection_stats_empty_denominators_are_zero():
    valid = torch.zeros(2, 3, dtype=torch.bool)
    masks = {"a": torch.zeros(2, 3, dtype=torch.bool), "b": torch.zeros(2, 3, dtype=torch.bool)}
    stats = selection_stats(masks, valid)
    assert set(stats) == {"update_ratio", "ratio/a", "ratio/b", "overlap/a&b", "unique/a", "unique/b"}
    assert all(v == 0.0 for v in stats.values())
