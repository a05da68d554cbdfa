"""Multi-process pieces on CPU with gloo: global key-token selection across processes, and a 2-process
`accelerate launch` training run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from videoktr.core import global_top_ratio_mask


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, scores, valid, ratio, out_dir):
    import torch.distributed as dist

    from videoktr.train.distributed import all_gather_1d

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        rows = scores.shape[0] // world
        mine = slice(rank * rows, (rank + 1) * rows)
        mask = global_top_ratio_mask(scores[mine], valid[mine], ratio, all_gather=all_gather_1d, rank=rank)
        torch.save(mask, os.path.join(out_dir, f"mask{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_global_selection_across_two_gloo_processes_equals_one_process(tmp_path):
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 9, generator=g).round(decimals=1)  # rounding makes ties across processes
    valid = torch.rand(6, 9, generator=g) > 0.3  # uneven valid counts per process
    mp.spawn(_worker, args=(2, _free_port(), scores, valid, 0.3, str(tmp_path)), nprocs=2, join=True)
    got = torch.cat([torch.load(tmp_path / f"mask{r}.pt") for r in range(2)])
    assert torch.equal(got, global_top_ratio_mask(scores, valid, 0.3))


@pytest.fixture
def one_process_group():
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    yield dist
    if dist.is_initialized():
        dist.destroy_process_group()


def test_end_process_group_closes_a_live_group_and_is_a_no_op_without_one(one_process_group):
    from videoktr.train.distributed import end_process_group

    assert end_process_group() is True
    assert not one_process_group.is_initialized()
    assert end_process_group() is False


@pytest.mark.parametrize("fails", [False, True])
def test_train_command_closes_the_process_group_on_success_and_on_error(one_process_group, monkeypatch, fails):
    # a live gloo group at interpreter exit can abort the process (SIGABRT) after training succeeded
    import videoktr.train.run as run_module
    from videoktr.cli import main

    def fake_run(config):
        if fails:
            raise ValueError("bad row")
        return {}

    monkeypatch.setattr(run_module, "run", fake_run)
    assert main(["train", "--max-steps", "1"]) == (2 if fails else 0)
    assert not one_process_group.is_initialized()


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(tiny_dir, tmp_path):
    from videor1_fixture import write_videor1_fixture

    fx = write_videor1_fixture(tmp_path / "data")
    out = tmp_path / "run"
    # accelerate picks up torchrun's environment; ACCELERATE_USE_CPU selects gloo on CPU
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(_free_port()), "-m", "videoktr.cli", "train",
           "--data", str(fx.data_file), "--data-root", str(fx.root), "--model", str(tiny_dir), "--method", "ktr",
           "--selection", "global", "--max-steps", "2", "--prompts-per-step", "1", "--num-generations", "4",
           "--max-completion-length", "8", "--output-dir", str(out), "--save-steps", "100"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "ACCELERATE_USE_CPU": "true"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "terminate called" not in proc.stderr  # every process shut down cleanly, not only rank 0
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 2 and report["processes"] == 2  # accelerate saw a world of 2 processes
    # the two processes shared out the media check (all_gather_object) and agree on the 2 skipped rows
    assert report["skipped_samples"] == 2 and report["rows"] == 18
    assert report["media_check"] == {"files": 19, "from_cache": 0, "probed_here": 10, "processes": 2}
    assert len((out / "media_check.jsonl").read_text().splitlines()) == 18  # every file that exists
