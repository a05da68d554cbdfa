"""Collectives the trainer needs beyond accelerate's: gathering tensors whose length differs per process."""

from __future__ import annotations

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
