"""Two CPU processes (gloo) whose data differ in every way that matters to DDP, FSDP and DeepSpeed ZeRO-3: one process
has only video prompts, the other image prompts (and, under DDP, text-only prompts) whose groups all have zero
advantage.
Every method trains 2 steps without a hang (bounded by a timeout), with gradient checkpointing on (DDP then
expects every parameter to get a gradient), and each process's token weights equal one process's on the same
rollouts. "grpo+ds" is GRPO with dynamic sampling: rank 1's groups are all constant, so it resamples until the cap
while rank 0, which may need fewer groups, must join every round."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from builders import random_frames

from videoktr.data.video import write_video

WORKER = Path(__file__).resolve().parents[1] / "lockstep_worker.py"
METHODS = ("ktr", "entropy", "twgrpo", "tgrpo", "grpo", "vppo", "papo", "grpo+ds")

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lockstep_data(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("lockstep")
    video_rows, image_rows = [], []
    for i in range(2):
        clip = write_video(root / f"clip{i}.mp4", random_frames(300 + i), fps=2.0)
        video_rows.append({"prompt": [{"role": "user", "content": [
            {"type": "video", "video": str(clip)}, {"type": "text", "text": "Which colour appeared first?"}]}]})
        image = root / f"img{i}.png"
        Image.fromarray(random_frames(310 + i, n=1)[0]).save(image)
        image_rows.append({"prompt": [{"role": "user", "content": [
            {"type": "image", "image": str(image)}, {"type": "text", "text": "What colour is the square?"}]}]})
    text_row = {"prompt": [{"role": "user", "content": [{"type": "text", "text": "What is 2 + 3?"}]}]}
    # each process's dataset covers a global batch; under DDP rank 1 also has text-only rows (ZeRO-3/FSDP refuse
    # them among media rows: tests/train/test_trainer.py)
    data = {"ddp": {0: video_rows * 2, 1: [image_rows[0], text_row, image_rows[1], text_row]},
            "fsdp": {0: video_rows * 2, 1: image_rows * 2}}
    for engine, rows in data.items():
        (root / engine).mkdir()
        for rank, mine in rows.items():
            (root / engine / f"rank{rank}.json").write_text(json.dumps(mine))
    return root, data


# LoRA (adapters on the LM and the vision tower, peft's model as FSDP's outermost unit): the methods with their own
# forwards (attribution, TW-GRPO's pass, T-GRPO's shuffled sampling); the others share their code paths
LORA_METHODS = ("ktr", "twgrpo", "tgrpo")


# ZeRO-3 (DeepSpeed on its CPU accelerator over gloo; tests/lockstep_worker.py shims accelerate's refusal of
# DeepSpeed on CPU): the methods with their own forwards, as under LoRA
ZERO3_METHODS = ("ktr", "twgrpo", "tgrpo")


@pytest.mark.parametrize("engine", ["ddp", "fsdp", "ddp+lora", "fsdp+lora", "zero3", "zero3+lora"])
def test_two_processes_with_different_data_stay_in_lockstep(engine, lockstep_data, tiny_dir, tmp_path):
    zero3 = engine.startswith("zero3")
    root = lockstep_data[0] / ("fsdp" if zero3 else engine.removesuffix("+lora"))  # ZeRO-3 refuses text rows too
    methods = LORA_METHODS if engine.endswith("+lora") else ZERO3_METHODS if zero3 else METHODS
    if zero3 and importlib.util.find_spec("deepspeed") is None:
        pytest.fail("deepspeed is not installed: pip install -e '.[test]' (the test extra brings it)")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), str(WORKER), str(tiny_dir), str(root), str(tmp_path), engine, ",".join(methods)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    # DDP/FSDP: accelerate's CPU setup; ZeRO-3: DeepSpeed's CPU accelerator (use_cpu would make accelerate drop it)
    env.update({"DS_ACCELERATOR": "cpu"} if zero3 else {"ACCELERATE_USE_CPU": "true"})
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    except subprocess.TimeoutExpired as exc:  # a hang: some process waits in a collective the other never joins
        pytest.fail(f"{engine}: no result in 600 s (hang?): {str(exc.stderr)[-3000:]}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    for method in methods:
        for rank in (0, 1):
            assert f"rank {rank}: {engine} {method} done" in proc.stdout
    if engine in ("ddp", "zero3", "fsdp+lora"):  # no dropout, one temporal draw: ktr's mask is chosen in the loss
        assert f"rank 1: {engine} ktr done (mask chosen in the loss)" in proc.stdout
    # each process's token weights equal one process's on the same rollout and the same perturbation draws; the
    # comparison runs in a fresh process at the workers' thread count (the tiny model's entropies tie to 1e-4:
    # another summation order flips near-ties)
    weighted = ",".join(m for m in methods if m in ("ktr", "entropy", "twgrpo", "vppo"))
    compare = subprocess.run([sys.executable, str(WORKER), "compare", str(tiny_dir), str(root), str(tmp_path), engine,
                              weighted], capture_output=True, text=True, timeout=600, env=env)
    assert compare.returncode == 0, compare.stderr[-3000:]
    assert compare.stdout.count("same weights as one process") == 2 * len(weighted.split(","))


@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_controls_stay_in_lockstep(engine, lockstep_data, tiny_dir, tmp_path):
    """ktr with each control (ktr.control) trains 2 steps on two processes without a hang: under FSDP a process
    whose groups all have zero advantage runs the stand-in forwards and the control on them."""
    root = lockstep_data[0] / engine
    methods = ("ktr+random", "ktr+complement", "ktr+entropy_matched")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), str(WORKER), str(tiny_dir), str(root), str(tmp_path), engine, ",".join(methods)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "ACCELERATE_USE_CPU": "true"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{engine}: no result in 600 s (hang?): {str(exc.stderr)[-3000:]}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    for method in methods:
        for rank in (0, 1):
            assert f"rank {rank}: {engine} {method} done (mask chosen in the loss)" in proc.stdout

