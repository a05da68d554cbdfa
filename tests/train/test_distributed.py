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
    import videoktr.cli as cli
    from videoktr.cli import main

    def fake_run(config):
        if fails:
            raise ValueError("bad row")
        return {}

    monkeypatch.setattr(cli, "train", fake_run)
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
    # issue 20 item 4 under two processes: killed between its last checkpoint and its report, the rerun trains
    # no step past max_steps (every process skips the loop) and writes the report; once more: already complete
    (out / "report.json").unlink()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 3/" not in proc.stdout + proc.stderr and not (out / "checkpoint-3").exists()
    assert json.loads((out / "report.json").read_text())["steps"] == 2
    report = (out / "report.json").read_text()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count(f"{out} is already complete: 2 of 2 steps") == 1  # said once, by the main process
    assert (out / "report.json").read_text() == report


class _FakeZero3:
    """A stand-in for DeepSpeed ZeRO-3's parameter partitioning of one weight: outside a
    `deepspeed.zero.GatheredParameters` block the weight is an empty placeholder (its data moved away), as a
    partitioned parameter is outside its module's forward; inside, it is whole again."""

    def __init__(self, param):
        self.param, self.full = param, param.data
        param.ds_id = 0
        param.data = torch.empty(0)
        self.gathers = 0

    def module(self):
        import contextlib
        import importlib.machinery
        import types

        stand_in = self

        @contextlib.contextmanager
        def gathered_parameters(params, modifier_rank=None):
            assert any(p is stand_in.param for p in params) and modifier_rank is None
            stand_in.gathers += 1
            stand_in.param.data = stand_in.full
            try:
                yield
            finally:
                stand_in.param.data = torch.empty(0)

        module = types.ModuleType("deepspeed")
        module.__spec__ = importlib.machinery.ModuleSpec("deepspeed", None)
        module.zero = types.SimpleNamespace(GatheredParameters=gathered_parameters)
        # where deepspeed is installed, accelerate (unwrap_model) checks for its engine class: none is in use here
        module.DeepSpeedEngine = type("DeepSpeedEngine", (), {})
        return module


@pytest.mark.parametrize("method", ["ktr", "twgrpo"])
def test_lm_head_is_gathered_the_way_zero3_requires(tiny_dir, tmp_path, monkeypatch, method):
    """Finding: attribution and TW-GRPO read lm_head.weight directly, an empty placeholder under ZeRO-3 outside
    the head's own forward. They now gather it (deepspeed.zero.GatheredParameters) and give the same weights."""
    import sys

    from builders import make_trainer, random_frames

    from videoktr.data.video import write_video

    clip = write_video(tmp_path / "clip.mp4", random_frames(7), fps=2.0)
    rows = [{"prompt": [{"role": "user", "content": [{"type": "video", "video": str(clip)},
                                                     {"type": "text", "text": "Which colour?"}]}]}] * 2
    trainer = make_trainer(tiny_dir, rows, tmp_path, method=method)
    trainer.model.train()
    batch = trainer._generate_and_score_completions(next(iter(trainer.get_train_dataloader())))
    batch["advantages"] = torch.linspace(-1, 1, batch["advantages"].shape[0])
    state = trainer._attr_generator.get_state()
    expected = trainer._rollout_weights(batch)
    stand_in = _FakeZero3(trainer.model.lm_head.weight)
    monkeypatch.setitem(sys.modules, "deepspeed", stand_in.module())
    trainer._attr_generator.set_state(state)
    assert torch.equal(trainer._rollout_weights(batch), expected)
    assert stand_in.gathers == 1 and trainer.model.lm_head.weight.numel() == 0  # gathered once, released after
