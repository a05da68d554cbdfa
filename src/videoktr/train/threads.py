"""CPU threads for runs on the CPU.

torch's default (one thread per core) is the wrong choice for the small models the CPU path trains: their
matrices are too small for a second thread to pay off, and when other jobs share the cores, threads that
wait on each other stall every step (bench/threads.py; README "CPU threads"). `run.cpu_threads: 0` (auto) uses one
thread on the CPU unless OMP_NUM_THREADS is set, and leaves torch alone on a GPU. The warm start of the
default run always trains with one thread: it is one cached model shared by runs of any thread count, and a
matrix product summed over a different number of threads rounds differently, so only a fixed count gives the same
warm start whatever the run's setting.
"""

from __future__ import annotations

import functools
import os
from contextlib import contextmanager


def resolve_cpu_threads(setting: int, on_gpu: bool, environ=os.environ) -> int | None:
    """The intra-op thread count to set, or None to keep torch's. `setting`: run.cpu_threads (0 = auto)."""
    if setting > 0:
        return setting
    if on_gpu or environ.get("OMP_NUM_THREADS"):  # a GPU run, or the user chose through the environment
        return None
    return 1


def apply_cpu_threads(setting: int) -> int:
    """Set torch's intra-op threads for this process from run.cpu_threads; returns the count in force."""
    import torch

    n = resolve_cpu_threads(setting, on_gpu=torch.cuda.is_available())
    if n is not None and n != torch.get_num_threads():
        torch.set_num_threads(n)
    return torch.get_num_threads()


def one_thread(fn):
    """Decorator: `fn` runs with one intra-op thread (the warm start: the same cached model for every setting)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch_threads(1):
            return fn(*args, **kwargs)

    return wrapper


@contextmanager
def torch_threads(n: int):
    """Run the block with `n` intra-op threads, restoring the previous count after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
