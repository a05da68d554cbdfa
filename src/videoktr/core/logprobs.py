"""Per-token log-probabilities and entropies from logits or from hidden states, in row chunks.

Paper Sec. 3.1: the attribution scores need log softmax(z_i)_{y_i} under several inputs and the entropy
H(i) = -sum_w p(w) log p(w). The vocabulary is large (152,064 for Qwen2.5-VL), so every function here flattens
the leading dimensions into rows and works on `chunk_size` rows at a time, upcasting only that chunk to fp32:
no full fp32 [B, T, V] tensor is ever alive (the extra memory is a few fp32 [chunk_size, V] temporaries).
`lm_head_logprobs` goes one step further and builds the logits chunk by chunk from the hidden states, so that
not even the bf16 [B, T, V] logits exist (the official code keeps three such tensors alive). When a gradient
is needed, each chunk is checkpointed: backward recomputes it instead of keeping every chunk's intermediates.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

__all__ = ["selective_log_softmax", "token_entropy", "logprobs_and_entropy", "lm_head_logprobs"]


def _check_chunk_size(chunk_size: int) -> None:
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")


def _map_row_chunks(fn: Callable[..., tuple[torch.Tensor, ...]], rows: tuple[torch.Tensor, ...],
                    lead: torch.Size, chunk_size: int, params: tuple = ()) -> tuple[torch.Tensor, ...]:
    """Apply fn to successive chunks of rows and concatenate its per-row outputs.

    rows: tensors whose first dimension is N = prod(lead) (e.g. logits [N, V], index [N]); params: extra
    arguments passed whole to every call (e.g. the LM head weight). fn(*chunk_rows, *params) -> tuple of [c]
    tensors; returns a tuple of tensors shaped `lead`. When a gradient is needed each call is checkpointed, so
    backward recomputes a chunk's fp32 intermediates instead of keeping those of all chunks alive.
    """
    _check_chunk_size(chunk_size)
    needs_grad = torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in (*rows, *params))
    run = (lambda *a: checkpoint(fn, *a, use_reentrant=False, preserve_rng_state=False)) if needs_grad else fn
    n = rows[0].shape[0]
    pieces = [run(*(r[s : s + chunk_size] for r in rows), *params) for s in range(0, n, chunk_size)]
    if not pieces:  # no rows at all
        pieces = [fn(*(r[:0] for r in rows), *params)]
    return tuple(torch.cat(parts).reshape(lead) for parts in zip(*pieces))


def _logp_entropy(z: torch.Tensor, idx: torch.Tensor | None, with_entropy: bool):
    """One chunk: z [c, V] -> (log p(idx) [c] | None, entropy [c] | None), all fp32, one logsumexp."""
    z = z.float()  # [c, V]
    lse = torch.logsumexp(z, dim=-1)  # [c]
    out_logp = z.gather(-1, idx[:, None]).squeeze(-1) - lse if idx is not None else None  # [c]
    out_ent = None
    if with_entropy:
        logp = z - lse[:, None]  # [c, V]
        p = logp.exp()
        # H = -sum p log p; a -inf logit has p = 0 and contributes 0 (not 0 * -inf = NaN)
        out_ent = -torch.where(p > 0, p * logp, 0.0).sum(-1)  # [c]
    return out_logp, out_ent


def _check_index(logits: torch.Tensor, index: torch.Tensor) -> None:
    if logits.shape[:-1] != index.shape:
        raise ValueError(f"index shape {tuple(index.shape)} must equal logits shape without the vocabulary "
                         f"dimension {tuple(logits.shape[:-1])}")


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
    """log softmax(logits)[index] (paper Sec. 3.1, the log-probabilities in Delta^vis / Delta^temp; Eq. 1's pi).

    logits [..., V] any float dtype; index [...] long -> [...] float32. Differentiable w.r.t. logits.
    """
    _check_index(logits, index)
    V = logits.shape[-1]
    (logp,) = _map_row_chunks(lambda z, i: _logp_entropy(z, i, False)[:1],
                              (logits.reshape(-1, V), index.reshape(-1)), index.shape, chunk_size)
    return logp


def token_entropy(logits: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
    """Predictive entropy H(i) = -sum_w p(w) log p(w) (paper Sec. 3.1, "Entropy-Aware Tokens").

    logits [..., V] any float dtype -> [...] float32 (natural log).
    """
    V = logits.shape[-1]
    (ent,) = _map_row_chunks(lambda z: _logp_entropy(z, None, True)[1:],
                             (logits.reshape(-1, V),), logits.shape[:-1], chunk_size)
    return ent


def logprobs_and_entropy(logits: torch.Tensor, index: torch.Tensor,
                         chunk_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(selective_log_softmax, token_entropy) of the same logits with one logsumexp per chunk.

    logits [..., V], index [...] -> (log p(index) [...], entropy [...]), both float32.
    """
    _check_index(logits, index)
    V = logits.shape[-1]
    logp, ent = _map_row_chunks(lambda z, i: _logp_entropy(z, i, True),
                                (logits.reshape(-1, V), index.reshape(-1)), index.shape, chunk_size)
    return logp, ent


def _check_head(weight: torch.Tensor, hidden_size: int) -> None:
    if weight.dim() != 2 or weight.shape[1] != hidden_size:
        raise ValueError(f"weight must be [V, H] with H = {hidden_size}, got {tuple(weight.shape)}")


def _head_logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """h [c, H] -> logits [c, V] in the head's dtype (as the model's lm_head would make them)."""
    return F.linear(h.to(weight.dtype), weight, bias)


def _head_chunk(h: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                with_entropy: bool):
    logp, ent = _logp_entropy(_head_logits(h, weight, bias), idx, with_entropy)
    return (logp, ent) if with_entropy else (logp,)


def lm_head_logprobs(hidden: torch.Tensor, weight: torch.Tensor, index: torch.Tensor,
                     bias: torch.Tensor | None = None, chunk_size: int = 1024, with_entropy: bool = False):
    """log softmax(hidden @ weight.T + bias)[index] (and the entropy) without materialising the logits.

    Same quantities as `logprobs_and_entropy(F.linear(hidden, weight, bias), index)` (paper Sec. 3.1 and the
    pi_theta of Eq. 1-2), computed `chunk_size` rows at a time: the chunk's logits are made in the head's
    dtype (as the model's lm_head would), upcast to fp32, reduced, and freed.

    hidden [..., H] (cast to weight's dtype); weight [V, H] (the LM head); bias [V] or None; index [...] long.
    Returns logp [...] float32, or (logp, entropy) when with_entropy.

    Autograd: gradients w.r.t. hidden, weight and bias equal the naive computation's. When grad is needed,
    each chunk is checkpointed (its logits are recomputed in backward), so backward also holds one chunk's
    logits at a time instead of all of them.
    """
    if hidden.shape[:-1] != index.shape:
        raise ValueError(f"index shape {tuple(index.shape)} must equal hidden shape without the hidden "
                         f"dimension {tuple(hidden.shape[:-1])}")
    H = hidden.shape[-1]
    _check_head(weight, H)
    out = _map_row_chunks(_head_chunk, (hidden.reshape(-1, H), index.reshape(-1)), index.shape, chunk_size,
                          params=(weight, bias, with_entropy))
    return out if with_entropy else out[0]
