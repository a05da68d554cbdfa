"""Key-token selection of paper Sec. 3.2: the top r% tokens of each attribution signal, and their union
S = S_vis | S_temp | S_ent, which is the mask m_{i,t} of Eq. 2.

Conventions shared by every selector:
  * scores [B, T] float; valid [B, T] bool marks the response tokens that may be selected (not padding, not
    after EOS, and - for visual/temporal signals - only responses that have a video). Invalid positions may
    hold anything (NaN, inf); they are never read and never selected.
  * A valid NaN score counts as -inf (ranked last).
  * k = ceil(r * n) with n the number of valid tokens in the pool, computed as ceil(r * n - 1e-9) so that
    float error (0.3 * 10 = 3.0000000000000004) does not add a token; k >= 1 whenever n >= 1.
  * Exactly k tokens are selected per pool; among equal scores the earlier token in the pool's order wins
    (position within a row; row, then position within a group; rank, row, position across processes).
"""

from __future__ import annotations

from itertools import combinations
from typing import Callable, Mapping

import torch

__all__ = ["top_ratio_mask", "group_top_ratio_mask", "global_top_ratio_mask", "quantile_threshold_mask",
           "union_masks", "selection_stats"]


def _check(scores: torch.Tensor, valid: torch.Tensor, ratio: float) -> None:
    if not (isinstance(ratio, (int, float)) and 0.0 < ratio <= 1.0):
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    if scores.dim() != 2 or valid.shape != scores.shape:
        raise ValueError(f"scores and valid must both be [B, T], got {tuple(scores.shape)} and {tuple(valid.shape)}")
    if valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool tensor, got {valid.dtype}")


def _check_groups(group_ids: torch.Tensor, batch: int) -> None:
    if group_ids.shape != (batch,):
        raise ValueError(f"group_ids must be [B] = [{batch}], got {tuple(group_ids.shape)}")


def _num_selected(n: torch.Tensor, ratio: float) -> torch.Tensor:
    """k = ceil(ratio * n), robust to float error, at least 1 when n >= 1, never more than n. n [R] -> [R] long."""
    k = torch.ceil(n.double() * ratio - 1e-9).long()
    return torch.where(n > 0, k.clamp(min=1), torch.zeros_like(k)).minimum(n)


def _take_top(scores: torch.Tensor, valid: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """In each row, the k[row] valid positions with the highest scores; ties: lower position first.

    scores [R, L], valid [R, L] bool, k [R] long (k <= number of valid positions) -> mask [R, L] bool.
    """
    s = scores.to(torch.promote_types(scores.dtype, torch.float32))
    s = torch.where(valid & ~s.isnan(), s, torch.full_like(s, -torch.inf))  # [R, L]
    by_score = torch.argsort(s, dim=1, descending=True, stable=True)  # [R, L]; equal scores keep position order
    # stable re-sort on validity: valid positions first, each part still in (score desc, position asc) order
    by_valid = torch.argsort(valid.gather(1, by_score).to(torch.int8), dim=1, descending=True, stable=True)
    order = by_score.gather(1, by_valid)  # [R, L]: rank -> position
    take = torch.arange(s.shape[1], device=s.device)[None, :] < k[:, None]  # [R, L]: rank < k
    return torch.zeros_like(valid).scatter(1, order, take)


def top_ratio_mask(scores: torch.Tensor, valid: torch.Tensor, ratio: float) -> torch.Tensor:
    """Per response: the top ceil(ratio * n_valid) valid tokens by score (paper Sec. 3.2, "top r%").

    scores [B, T] float, valid [B, T] bool, ratio in (0, 1] -> mask [B, T] bool with exactly
    ceil(ratio * n_valid) (>= 1 if n_valid > 0) selected per row; ties: the earlier position wins.
    """
    _check(scores, valid, ratio)
    return _take_top(scores, valid, _num_selected(valid.sum(1), ratio))


def group_top_ratio_mask(scores: torch.Tensor, valid: torch.Tensor, ratio: float,
                         group_ids: torch.Tensor) -> torch.Tensor:
    """One threshold per prompt group: the top ceil(ratio * n_group_valid) of the group's pooled tokens.

    scores/valid [B, T]; group_ids [B] long (rows with equal ids are responses to the same prompt) -> mask
    [B, T] bool. Ties: lower row first, then earlier position. A row may get no token at all in this mode.
    """
    _check(scores, valid, ratio)
    _check_groups(group_ids, scores.shape[0])
    mask = torch.zeros_like(valid)
    for g in torch.unique(group_ids):
        rows = (group_ids == g).nonzero().squeeze(1)  # ascending row order
        v = valid[rows].reshape(1, -1)  # [1, G*T], row-major
        sel = _take_top(scores[rows].reshape(1, -1), v, _num_selected(v.sum(1), ratio))
        mask[rows] = sel.view(len(rows), -1)
    return mask


def global_top_ratio_mask(scores: torch.Tensor, valid: torch.Tensor, ratio: float,
                          all_gather: Callable[[torch.Tensor], list[torch.Tensor]] | None = None,
                          rank: int = 0) -> torch.Tensor:
    """One threshold across all processes: the top ceil(ratio * N_total) valid tokens of the whole batch.

    scores/valid [B, T] (this process's shard); all_gather(x [n_local]) -> [x_rank0, x_rank1, ...] gathers
    every process's valid scores (flattened row-major) in rank order; rank is this process's index in that
    list. Returns this shard's mask [B, T]. Ties: lower rank, then lower row, then earlier position.
    all_gather=None: a single process (same as group_top_ratio_mask with one group).
    """
    _check(scores, valid, ratio)
    local = scores[valid]  # [n_local], row-major
    shards = [local] if all_gather is None else list(all_gather(local))
    if not 0 <= rank < len(shards) or shards[rank].numel() != local.numel():
        raise ValueError(f"all_gather must return one 1-D tensor per process in rank order with this process's "
                         f"{local.numel()} scores at index rank={rank}; got sizes {[x.numel() for x in shards]}")
    dtype = torch.promote_types(scores.dtype, torch.float32)
    pooled = torch.cat([x.to(local.device, dtype).reshape(-1) for x in shards])[None, :]  # [1, N_total]
    everything = torch.ones_like(pooled, dtype=torch.bool)
    n_total = torch.tensor([pooled.shape[1]], device=local.device)
    sel = _take_top(pooled, everything, _num_selected(n_total, ratio))[0]  # [N_total]
    start = sum(x.numel() for x in shards[:rank])
    mask = torch.zeros_like(valid)
    mask[valid] = sel[start : start + local.numel()]
    return mask


def quantile_threshold_mask(scores: torch.Tensor, valid: torch.Tensor, ratio: float,
                            group_ids: torch.Tensor) -> torch.Tensor:
    """The official code's selection: per group, keep valid tokens with score >= quantile(scores, 1 - ratio).

    scores/valid [B, T]; group_ids [B] long -> mask [B, T] bool. torch.quantile with linear interpolation
    over the group's valid scores; ties at the threshold may select more than ratio, and a row may get
    zero tokens. Valid scores are expected finite (a NaN makes the threshold NaN: nothing selected).
    """
    _check(scores, valid, ratio)
    _check_groups(group_ids, scores.shape[0])
    s = scores.to(torch.promote_types(scores.dtype, torch.float32))
    mask = torch.zeros_like(valid)
    for g in torch.unique(group_ids):
        rows = (group_ids == g).nonzero().squeeze(1)
        pool = s[rows][valid[rows]]  # [n_group_valid]
        if pool.numel():
            threshold = torch.quantile(pool, 1.0 - ratio)
            mask[rows] = valid[rows] & (s[rows] >= threshold)
    return mask


def union_masks(masks: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """S = S_vis | S_temp | S_ent (paper Sec. 3.2): the logical OR of the per-signal masks [B, T]."""
    if not masks:
        raise ValueError("union_masks needs at least one mask, got an empty mapping")
    out = None
    for name, m in masks.items():
        if out is not None and m.shape != out.shape:
            raise ValueError(f"mask {name!r} has shape {tuple(m.shape)}, expected {tuple(out.shape)}")
        out = m.bool().clone() if out is None else out | m.bool()
    return out


def selection_stats(masks: Mapping[str, torch.Tensor], valid: torch.Tensor) -> dict[str, float]:
    """Statistics of a selection (paper RQ3/RQ4 and Fig. 5), as Python floats (0.0 for empty denominators).

    masks: name -> [B, T] bool; valid [B, T] bool (the tokens that could be selected). Keys:
      update_ratio        |union| / |valid|
      ratio/<name>        |mask| / |valid|
      overlap/<a>&<b>     |A & B| / |A | B| (Jaccard), each unordered pair, a < b alphabetically
      unique/<name>       |tokens selected by this signal only| / |union|
    """
    valid = valid.bool()
    sel = {name: masks[name].bool() & valid for name in sorted(masks)}
    union = union_masks(sel)
    rows: list[tuple[str, torch.Tensor, torch.Tensor]] = [("update_ratio", union, valid)]  # (key, num, den)
    rows += [(f"ratio/{name}", m, valid) for name, m in sel.items()]
    rows += [(f"overlap/{a}&{b}", sel[a] & sel[b], sel[a] | sel[b]) for a, b in combinations(sel, 2)]
    votes = torch.stack(list(sel.values())).sum(0)  # [B, T]: how many signals selected each token
    rows += [(f"unique/{name}", m & (votes == 1), union) for name, m in sel.items()]
    num = torch.stack([r[1].sum() for r in rows]).double()
    den = torch.stack([r[2].sum() for r in rows]).double()
    values = torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num)).tolist()  # one sync
    return {key: value for (key, _, _), value in zip(rows, values)}
