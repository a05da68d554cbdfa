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


def fsdp_units(model) -> list:
    """The FSDP2 (`fully_shard`) modules of `model` (itself included), outermost first; [] when not sharded."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def _owning_units(model, params) -> list:
    """The FSDP units that own `params` (a parameter belongs to the innermost unit above it), and the outermost
    unit (it owns what no nested unit does, e.g. the final norm, the vision tower's patch embedding)."""
    units = fsdp_units(model)
    if not units:
        return []
    wanted = {id(p) for p in params}
    owners, nested = [], set()
    for unit in reversed(units):  # innermost first: a parameter is claimed by the first unit that holds it
        mine = [p for p in unit.parameters() if id(p) not in nested]
        nested.update(id(p) for p in mine)
        if any(id(p) in wanted for p in mine) and unit is not units[0]:
            owners.append(unit)
    return [units[0]] + owners


@contextmanager
def gathered_parameters(model, params):
    """Make `params` (e.g. the LM head's weight) full, readable tensors for the duration of the block, whatever
    engine shards them, so that code outside a module's own forward can use them (and can call submodules such
    as the decoder, `model.model`, directly):

    - DeepSpeed ZeRO-3: a partitioned parameter is an empty placeholder outside its module's forward; it is
      gathered with `deepspeed.zero.GatheredParameters` (read only: nothing is written back); submodules called
      directly gather their own weights through ZeRO-3's per-module hooks;
    - FSDP2 (`fully_shard`): parameters are DTensor shards; the units that own `params` (accelerate makes the
      LM head a unit of its own) and the outermost unit are unsharded (`unshard()`) and resharded afterwards;
      nested units (decoder layers, vision blocks, embeddings) gather themselves in their own forward;
    - anything else (one process, DDP): nothing to do.

    Every process must enter the block together (gathering is a collective)."""
    params = [p for p in params if p is not None]
    zero3 = [p for p in params if hasattr(p, "ds_id")]
    units = _owning_units(model, params)
    with ExitStack() as stack:
        if zero3:
            import deepspeed

            stack.enter_context(deepspeed.zero.GatheredParameters(zero3, modifier_rank=None))
        for unit in units:
            unit.unshard()
        try:
            yield
        finally:
            for unit in units:
                unit.reshard()


@contextmanager
def full_parameters(model):
    """FSDP2: every unit of `model` unsharded, and kept so across forwards, for the duration of the block (e.g.
    generation: each process's prompts decide which modules its forwards call, e.g. the vision tower in the
    prefill of a video prompt only, so per-module all-gathers would not match across processes; with every
    parameter already full the forwards issue none). The all-gathers happen here, in the same order on every
    process. Other engines: nothing to do (TRL gathers ZeRO-3 parameters for generation itself). Costs the
    memory of the full model on each process, as ZeRO-3's gathered generation does."""
    units = fsdp_units(model)
    if not units:
        yield
        return
    previous = [getattr(u._get_fsdp_state()._fsdp_param_group, "_reshard_after_forward", True)
                if u._get_fsdp_state()._fsdp_param_group is not None else True for u in units]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit, before in zip(units, previous):
            unit.reshard()
            unit.set_reshard_after_forward(before, recurse=False)
