"""What the rollout log (run.log_rollouts_every) costs a training step.

  .venv/bin/python bench/rollout_log_cost.py [--steps 20] [--repeats 3] [--model DIR] [--method ktr]

1. Training: the default run (its cached world and warm-started model; `--model DIR` for another, e.g.
   `videoktr init-model --size tiny`) trained with the log at every OTHER step, `--repeats` times: the median
   step time of the logged steps over that of the unlogged steps of the same runs (paired under the same machine
   load, which a comparison of separate runs on a shared machine is not), and the seconds the log itself took per
   logged step (the trainer's rollout_log_seconds, measured around the write). The overhead of logging every N
   steps is that cost / (N x step time).
2. Paper scale, the log alone: `RolloutLog.write` on a made-up rollout of `--rows` responses of `--tokens` tokens
   with every signal's scores, selections and log-probs, logging the default sample (run.log_rollouts_max = 32)
   and every row.
Writes bench/results/rollout_log_cost.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def train_once(args) -> tuple[list[float], list[float], list[float]]:
    """One run logging every other step: (step times of logged steps, of unlogged steps, log seconds)."""
    from videoktr.train.config import load_config
    from videoktr.world.run import world_trainer

    out = tempfile.mkdtemp(prefix="rolloutlog-")
    config = load_config(overrides={"method": args.method, "max_steps": args.steps, "cache_dir": args.cache_dir,
                                    "output_dir": out, "save_steps": 10_000, "model": args.model,
                                    "log_rollouts_every": 2})
    trainer, _, _ = world_trainer(config)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "step_time" in h][1:]
    written = sorted((Path(out) / "rollouts").glob("step-*.parquet"))
    assert len(written) == args.steps // 2, f"expected {args.steps // 2} rollout files, found {len(written)}"
    logged = [h["step_time"] for h in logs if "rollout_log_seconds" in h]
    unlogged = [h["step_time"] for h in logs if "rollout_log_seconds" not in h]
    return logged, unlogged, [h["rollout_log_seconds"] for h in logs if "rollout_log_seconds" in h]


def paper_scale(rows: int, tokens: int, max_responses: int, repeats: int = 3) -> dict:
    """Seconds of one `RolloutLog.write` on a made-up rollout (G = 8, every response of full length)."""
    import torch

    from videoktr.attribution import Attribution
    from videoktr.models.factory import create_model_dir, load_processor
    from videoktr.train.rollout_log import RolloutLog, RolloutLogOptions

    tmp = Path(tempfile.mkdtemp(prefix="rolloutlog-scale-"))
    tokenizer = load_processor(create_model_dir(tmp / "tiny", size="tiny")).tokenizer
    g = torch.Generator().manual_seed(0)
    B, C, V = rows, tokens, len(tokenizer)
    batch = {"prompt_ids": torch.randint(0, V, (B, 200), generator=g), "prompt_mask": torch.ones(B, 200),
             "completion_ids": torch.randint(0, V, (B, C), generator=g), "completion_mask": torch.ones(B, C),
             "advantages": torch.randn(B, generator=g), "prompt_group": torch.arange(B) // 8,
             "token_weights": torch.ones(B, C)}
    scores = {s: torch.rand(B, C, generator=g) for s in ("visual", "temporal", "entropy")}
    att = Attribution(scores, {s: torch.ones(B, C, dtype=torch.bool) for s in scores}, -torch.rand(B, C), None, 0.0,
                      perturbed_logp={s: -torch.rand(B, C) for s in ("visual", "temporal")})
    masks = {s: v > 0.8 for s, v in scores.items()}
    inputs = [{"prompt": [{"role": "user", "content": [{"type": "text", "text": "What happened first?"}]}],
               "solution": "<answer>A</answer>"} for _ in range(B)]
    log = RolloutLog(tmp / "run", RolloutLogOptions(every=1, max_responses=max_responses), tokenizer)
    seconds = []
    for step in range(1, repeats + 1):
        _, s = log.write(step, batch, inputs, {"rows": list(range(B)), "attribution": att, "masks": masks},
                         torch.rand(B, 2), torch.ones(2), method="ktr", ratio=0.2)
        seconds.append(s)
    size = (tmp / "run" / "rollouts" / "step-000001-rank0.parquet").stat().st_size
    logged = B if max_responses == 0 else min(B, max_responses)
    return {"rows_in_batch": B, "tokens_per_response": C, "responses_logged": logged,
            "median_seconds": statistics.median(seconds), "file_bytes": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache-dir", default=".cache/videoktr")
    parser.add_argument("--model", default="", help="model directory (default: the default run's warm start)")
    parser.add_argument("--method", default="ktr")
    parser.add_argument("--rows", type=int, default=64, help="paper-scale part: responses in one process's rollout")
    parser.add_argument("--tokens", type=int, default=768, help="paper-scale part: tokens per response")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(2)
    on, off, log_seconds = [], [], []
    for _ in range(args.repeats):
        logged, unlogged, seconds = train_once(args)
        on += logged
        off += unlogged
        log_seconds += seconds
    median_on, median_off = statistics.median(on), statistics.median(off)
    per_logged = statistics.median(log_seconds)
    result = {
        "model": args.model or "default warm start", "method": args.method, "steps_per_run": args.steps,
        "repeats": args.repeats,
        "median_step_s": {"logged_steps": median_on, "unlogged_steps": median_off},
        "step_time_ratio_logged_over_unlogged": median_on / median_off,
        "rollout_log_s_per_logged_step": per_logged,
        "overhead_share": {f"every_{n}": per_logged / (n * median_off) for n in (1, 10, 100)},
        "paper_scale": [paper_scale(args.rows, args.tokens, m) for m in (32, 0)],
    }
    print(json.dumps(result, indent=2))
    out = Path(__file__).parent / "results" / "rollout_log_cost.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"step time of logged / unlogged steps: {result['step_time_ratio_logged_over_unlogged']:.3f}; "
          f"{1000 * per_logged:.1f} ms per logged step = {result['overhead_share']['every_10']:.2%} of training "
          f"at the default run.log_rollouts_every 10")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"({time.perf_counter() - start:.0f} s)")
