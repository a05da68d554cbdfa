"""CPU threads for the default run: warm-start and RL step rates at 1, 2 and torch's default thread count, on
the machine as it is and with other jobs competing for the cores. The numbers behind `run.cpu_threads: 0` (auto).

  .venv/bin/python bench/threads.py [--threads 1 2 0] [--busy 0 2] [--warmstart-steps 30] [--rl-steps 6]

Each (threads, busy) cell runs in a fresh process (thread pools are per process) on the default run's cached
world and base model (built first if missing): `--warmstart-steps` supervised steps of the warm start's loop
(batch 32), then `--rl-steps` Video-KTR steps (4 prompts x 8 responses) from the cached warm start (built
first if missing). `--busy N` starts N competing processes, each one thread of
matrix products (a stand-in for other jobs on the machine), for the cell's duration. Thread count 0 means
torch's default (the number of cores, here `os.cpu_count()`). A cell that has not finished in `--timeout`
seconds is reported as timed out with the steps it had done. Writes bench/results/threads.json and prints rates
and their ratio to one thread's in the same busy setting (the cells of a setting run one after another, so
drift in the machine's other load moves all of them; run it twice to see the spread).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "threads.json"


def _spin(stop) -> None:
    import torch

    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    while not stop.is_set():
        a = torch.tanh(a @ a)


def _cell(threads: int, warmstart_steps: int, rl_steps: int, cache_dir: str, world: str, model_dir: str,
          progress_path: str) -> None:
    """Runs in a child process: prints one JSON line of rates."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from videoktr import world as synthetic
    from videoktr.models.factory import load_model, load_processor
    from videoktr.train.config import load_config
    from videoktr.world.warmstart import response_weights

    config = load_config(overrides={"cache_dir": cache_dir, "max_steps": rl_steps, "save_steps": 10_000,
                                    "output_dir": str(Path(progress_path).parent / f"rl-{threads}"),
                                    "log_rollouts_every": 0, "eval_attribution": False})
    world_dir = Path(world)
    progress = Path(progress_path)
    result = {"threads": torch.get_num_threads()}
    # warm-start steps (the warm start's loss and optimizer, on its batches)
    model = load_model(model_dir, dtype="float32")  # the warm start's weights: the same cost as the base model's
    processor = load_processor(model_dir)
    tok = processor.tokenizer
    rows = synthetic.read_rows(world_dir / "train.jsonl")
    rows = rows[: 32 * warmstart_steps]
    clips = synthetic.load_clips(world_dir, rows, synthetic.load_world_config(world_dir))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    open_id, close_id = tok.convert_tokens_to_ids("<answer>"), tok.convert_tokens_to_ids("</answer>")
    model.train()
    start = time.perf_counter()
    for step in range(warmstart_steps):
        batch = [rows[(32 * step + i) % len(rows)] for i in range(32)]  # cycling over the rows
        enc = synthetic.encode_rows(processor, batch, clips, responses=[r["response"] for r in batch],
                                    padding_side="right")
        lengths = [len(x) for x in tok([r["response"] + tok.eos_token for r in batch],
                                       add_special_tokens=False)["input_ids"]]
        w = response_weights(enc["input_ids"], enc["attention_mask"], lengths, open_id, close_id, 5.0)[:, 1:]
        logits = model(**enc).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                enc["input_ids"][:, 1:].reshape(-1), reduction="none").view_as(w)
        loss = (nll * w).sum() / w.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        progress.write_text(json.dumps({"warmstart_steps": step + 1,
                                        "warmstart_seconds": time.perf_counter() - start}))
    result["warmstart_steps_per_s"] = warmstart_steps / (time.perf_counter() - start)
    # RL steps through the trainer (rollout sampling, attribution, update), median step time after the first
    from videoktr.world.run import world_trainer

    trainer, _, _ = world_trainer(config)
    trainer.train()
    times = [h["step_time"] for h in trainer.state.log_history if "step_time" in h][1:]
    times.sort()
    result["rl_step_s"] = times[len(times) // 2] if times else None
    print("RESULT " + json.dumps(result), flush=True)


def run_cell(threads: int, busy: int, args) -> dict:
    stop = mp.Event()
    spinners = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(busy)]
    for p in spinners:
        p.start()
    work = Path(args.work) / f"t{threads}-b{busy}"
    work.mkdir(parents=True, exist_ok=True)
    progress = work / "progress.json"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import threads; "
            f"threads._cell({threads}, {args.warmstart_steps}, {args.rl_steps}, {args.cache_dir!r}, "
            f"{args.world!r}, {args.model_dir!r}, {str(progress)!r})")
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                              timeout=args.timeout)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not lines:
            raise RuntimeError(f"cell threads={threads} busy={busy} failed:\n{proc.stderr[-3000:]}")
        out = json.loads(lines[-1][len("RESULT "):])
    except subprocess.TimeoutExpired:
        done = json.loads(progress.read_text()) if progress.is_file() else {"warmstart_steps": 0}
        out = {"threads": threads or os.cpu_count(), "timed_out": True, **done,
               "warmstart_steps_per_s": done["warmstart_steps"] / done.get("warmstart_seconds", args.timeout)}
    finally:
        stop.set()
        for p in spinners:
            p.join(timeout=10)
    out.update(busy=busy, setting=threads, wall_s=time.perf_counter() - start, load_before=args.load)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 0], help="0 = torch's default")
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 2], help="competing one-thread jobs")
    parser.add_argument("--warmstart-steps", type=int, default=30)
    parser.add_argument("--rl-steps", type=int, default=6)
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per cell")
    parser.add_argument("--cache-dir", default=".cache/videoktr")
    parser.add_argument("--work", default="/tmp/videoktr-threads")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from videoktr.train.config import load_config
    from videoktr.world.run import prepare_world_and_model

    world, model_dir = prepare_world_and_model(load_config(overrides={"cache_dir": args.cache_dir}))  # built once
    args.world, args.model_dir = str(world.root), str(model_dir)
    cells = []
    for busy in args.busy:
        for threads in args.threads:
            args.load = os.getloadavg()[0]
            cell = run_cell(threads, busy, args)
            cells.append(cell)
            rl = f"{cell['rl_step_s']:.2f} s/RL step" if cell.get("rl_step_s") else "RL not reached"
            print(f"busy {busy} | threads {cell['setting'] or 'default'} ({cell['threads']}) | "
                  f"{cell['warmstart_steps_per_s']:.2f} warm-start steps/s | {rl}"
                  + (" | timed out" if cell.get("timed_out") else ""), flush=True)
    for busy in args.busy:
        one = next((c for c in cells if c["busy"] == busy and c["setting"] == 1), None)
        for c in cells:
            if c["busy"] == busy and one:
                c["warmstart_rate_over_one_thread"] = c["warmstart_steps_per_s"] / one["warmstart_steps_per_s"]
                if c.get("rl_step_s") and one.get("rl_step_s"):
                    c["rl_step_time_over_one_thread"] = c["rl_step_s"] / one["rl_step_s"]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"cores": os.cpu_count(), "cells": cells}, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
