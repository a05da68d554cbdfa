"""run.cpu_threads: the rule (train/threads.py), its effect on a run's process, and the warm start's one thread."""

from __future__ import annotations

import pytest
import torch

from videoktr.train.config import load_config
from videoktr.train.threads import apply_cpu_threads, one_thread, resolve_cpu_threads, torch_threads


def test_rule():
    assert resolve_cpu_threads(0, on_gpu=False, environ={}) == 1  # auto on the CPU: one thread
    assert resolve_cpu_threads(3, on_gpu=False, environ={}) == 3  # an explicit count wins
    assert resolve_cpu_threads(3, on_gpu=False, environ={"OMP_NUM_THREADS": "2"}) == 3
    assert resolve_cpu_threads(0, on_gpu=False, environ={"OMP_NUM_THREADS": "2"}) is None  # the user's choice
    assert resolve_cpu_threads(0, on_gpu=True, environ={}) is None  # GPU: torch's default
    assert resolve_cpu_threads(2, on_gpu=True, environ={}) == 2


def test_a_run_sets_its_threads(tmp_path, monkeypatch):
    from videoktr.train.rundir import start_run_dir

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        start_run_dir(load_config(overrides={"output_dir": str(tmp_path / "a")}))
        assert torch.get_num_threads() == 1
        start_run_dir(load_config(overrides={"output_dir": str(tmp_path / "b"), "cpu_threads": 2}))
        assert torch.get_num_threads() == 2
        assert apply_cpu_threads(1) == 1
    finally:
        torch.set_num_threads(before)


def test_cpu_threads_is_resumable_and_validated():
    from videoktr.train.config import ConfigError
    from videoktr.train.rundir import run_identity

    a = run_identity(load_config(overrides={"cpu_threads": 1}), "m")
    b = run_identity(load_config(overrides={"cpu_threads": 4}), "m")
    assert a == b  # a resumed run may change it
    with pytest.raises(ConfigError, match="cpu_threads"):
        load_config(overrides={"cpu_threads": -1})


def test_the_warm_start_trains_with_one_thread(monkeypatch):
    import videoktr.world.warmstart as ws

    seen = []
    monkeypatch.setattr(ws, "cache_key", lambda *a, **k: seen.append(torch.get_num_threads()) or "k")
    monkeypatch.setattr(ws, "is_complete", lambda *a, **k: True)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        ws.warm_start("base", "world", "out")
        assert seen == [1] and torch.get_num_threads() == 2  # one thread inside, restored after
    finally:
        torch.set_num_threads(before)


def test_context_restores_on_error():
    before = torch.get_num_threads()

    @one_thread
    def boom():
        assert torch.get_num_threads() == 1
        raise RuntimeError("x")

    try:
        boom()
    except RuntimeError:
        pass
    assert torch.get_num_threads() == before
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


@pytest.mark.slow
def test_warm_start_is_the_same_model_on_any_thread_count(tmp_path):
    """Issue 20 item 6b: builds of one warm start under 1 and 2 torch threads were different models (a sum split over
    two threads rounds differently; on this tiny world after 6 steps too), so one cache name held different
    warm starts on different machines. Now every build trains with one thread: the same bytes."""
    import hashlib

    from videoktr import world as synthetic
    from videoktr.models.factory import create_model_dir
    from videoktr.world.warmstart import warm_start

    cfg = synthetic.world_config("short")
    world = synthetic.generate_world(tmp_path / "world", cfg, n_train=200, n_eval=8, n_rl=8)
    create_model_dir(tmp_path / "base", size="tiny", corpus=synthetic.corpus(cfg), seed=0)
    digests = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = warm_start(tmp_path / "base", world.root, tmp_path / f"ws-{threads}", max_steps=6, eval_every=1000,
                             val_per_family=2, progress=False)
            digests.append(hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest())
    finally:
        torch.set_num_threads(before)
    assert digests[0] == digests[1]
