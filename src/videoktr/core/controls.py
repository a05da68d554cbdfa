"""Controls for key-token selection: masks that update as many tokens as the key-token union but choose them
otherwise, so that a gain can be credited to WHICH tokens are chosen rather than to updating fewer of them.

  * random: per response, a uniformly random set of valid tokens of the same size as its union;
  * complement: the valid tokens the union leaves out, capped at the union's size per response (a uniformly random
    subset of them when there are more), so that both update equally many tokens;
  * entropy_matched: per response, its |union| highest-entropy valid tokens (entropy-only selection at the update
    ratio of the union, matched response by response).

Shapes: union/valid [B, T] bool (valid: the tokens that may be chosen, i.e. the response's tokens); scores [B, T]
float; counts [B] long. Random draws use `generator` (a CPU torch.Generator) and do not depend on the device.
"""

from __future__ import annotations

import torch

from .selection import _take_top

__all__ = ["CONTROLS", "random_count_mask", "complement_mask", "top_count_mask", "control_mask"]

CONTROLS = ("none", "random", "complement", "entropy_matched")


def _check(mask: torch.Tensor, valid: torch.Tensor) -> None:
    if mask.dim() != 2 or mask.shape != valid.shape:
        raise ValueError(f"masks must both be [B, T], got {tuple(mask.shape)} and {tuple(valid.shape)}")
    if valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool tensor, got {valid.dtype}")


def _counts(counts: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """counts [B] clamped to [0, n_valid] per row (long, on valid's device)."""
    if counts.shape != valid.shape[:1]:
        raise ValueError(f"counts must be [B] = [{valid.shape[0]}], got {tuple(counts.shape)}")
    return counts.to(valid.device).long().clamp(min=0).minimum(valid.sum(1))


def random_count_mask(counts: torch.Tensor, valid: torch.Tensor, generator: torch.Generator | None = None
                      ) -> torch.Tensor:
    """Per row r, min(counts[r], n_valid[r]) valid positions drawn uniformly without replacement.

    counts [B] long, valid [B, T] bool -> mask [B, T] bool. Draw: one uniform key per position (CPU, `generator`),
    the row's top keys among its valid positions: every subset of that size is equally likely."""
    _check(valid, valid)
    keys = torch.rand(valid.shape, generator=generator, dtype=torch.float64).to(valid.device)  # [B, T]
    return _take_top(keys, valid, _counts(counts, valid))


def complement_mask(union: torch.Tensor, valid: torch.Tensor, generator: torch.Generator | None = None,
                    cap: bool = True) -> torch.Tensor:
    """The valid tokens the union leaves out; with `cap`, at most |union & valid| of them per row (a uniformly
    random subset when the complement is larger). union/valid [B, T] bool -> mask [B, T] bool."""
    _check(union, valid)
    rest = valid & ~union.bool()  # [B, T]
    if not cap:
        return rest
    return random_count_mask((union.bool() & valid).sum(1), rest, generator)


def top_count_mask(scores: torch.Tensor, valid: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per row r, the min(counts[r], n_valid[r]) valid positions with the highest scores (NaN ranks last; ties:
    the earlier position). scores [B, T] float, valid [B, T] bool, counts [B] long -> mask [B, T] bool."""
    _check(scores, valid)
    return _take_top(scores, valid, _counts(counts, valid))


def control_mask(control: str, union: torch.Tensor, valid: torch.Tensor, entropy: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """The mask a control trains instead of the union (control "none": the union itself, restricted to valid).

    union/valid [B, T] bool; entropy [B, T] float (needed by "entropy_matched") -> mask [B, T] bool with, per row,
    as many tokens as union & valid (complement: fewer when fewer are left out)."""
    union = union.bool() & valid
    if control == "none":
        return union
    if control == "random":
        return random_count_mask(union.sum(1), valid, generator)
    if control == "complement":
        return complement_mask(union, valid, generator)
    if control == "entropy_matched":
        if entropy is None:
            raise ValueError("control 'entropy_matched' needs the per-token entropy of the responses")
        return top_count_mask(entropy, valid, union.sum(1))
    raise ValueError(f"control must be one of {CONTROLS}, got {control!r}")
