"""Collectives the trainer needs beyond accelerate's: gathering tensors whose length differs per process."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager

import torch


def all_gather_1d(values: torch.Tensor) -> list[torch.Tensor]:
    """Gather a 1-D tensor of any length from every process, in rank order (pad to the longest, trim).

    Single process (or torch.distributed not initialised): [values]. Works with gloo (CPU) and NCCL (the
    tensors stay on `values.device`)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [values]
    world = dist.get_world_size()
    n = torch.tensor([values.numel()], device=values.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=values.dtype, device=values.device)
    padded[: values.numel()] = values
    gathered = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return [g[: int(s.item())] for g, s in zip(gathered, sizes)]


def all_gather_objects(value) -> list:
    """Every process's `value` (any picklable object), in rank order; [value] without torch.distributed."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, value)
    return parts


def end_process_group(*, wait: bool = True) -> bool:
    """Tear down torch.distributed's default process group, if one is up; returns whether one was.

    A process that exits with a live gloo group can abort at interpreter shutdown ("terminate called without
    an active exception", SIGABRT): gloo's worker threads still hold work objects whose tensors need the
    interpreter that is being torn down. Destroying the group while the interpreter is alive avoids that.
    `wait` first waits for every process (use it on success only: a process that failed would never
    arrive)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    if wait:
        dist.barrier()
    dist.destroy_process_group()
    return True


def any_process(flag: bool, device=None) -> bool:
    """True when `flag` is true on at least one process (every process must call this; single process: flag)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def _fsdp_roots(model) -> list:
    """The outermost FSDP2 (`fully_shard`) modules of `model` (itself, or the first ones on each path down): they
    own the parameters outside any nested FSDP module (e.g. the LM head and the embeddings)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return []
    found: list = []

    def visit(module):
        if isinstance(module, FSDPModule):
            found.append(module)  # nested FSDP modules unshard themselves in their own forward hooks
            return
        for child in module.children():
            visit(child)

    visit(model)
    return found


@contextmanager
def gathered_parameters(model, params):
    """Make `params` (e.g. the LM head's weight) full, readable tensors for the duration of the block, whatever
    engine shards them, so that code outside the module's own forward can use them:

    - DeepSpeed ZeRO-3: a partitioned parameter is an empty placeholder outside its module's forward; it is
      gathered with `deepspeed.zero.GatheredParameters` (read only: nothing is written back);
    - FSDP2 (`fully_shard`): parameters are DTensor shards; the outermost FSDP modules are unsharded
      (`unshard()`: the parameters they own become plain full tensors) and resharded afterwards; nested FSDP
      modules (decoder layers, vision blocks) gather themselves in their own forward as usual;
    - anything else (one process, DDP): nothing to do.

    Every process must enter the block together (gathering is a collective)."""
    params = [p for p in params if p is not None]
    zero3 = [p for p in params if hasattr(p, "ds_id")]
    fsdp = _fsdp_roots(model)
    with ExitStack() as stack:
        if zero3:
            import deepspeed

            stack.enter_context(deepspeed.zero.GatheredParameters(zero3, modifier_rank=None))
        for m in fsdp:
            m.unshard()
        try:
            yield
        finally:
            for m in fsdp:
                m.reshard()
