"""Step time of each method relative to GRPO on the default run (issue target: KTR within 5% of GRPO),
measured in one run.

  .venv/bin/python bench/step_time.py [--steps 12] [--repeats 2] [--methods grpo ktr ...] [--model DIR]

Uses the default run's cached world and warm-started model (run `videoktr train` once first, or this script
builds them) or `--model DIR` (e.g. `videoktr init-model --size tiny`), then trains every method from the same
weights for the same steps, cycling through the methods `--repeats` times to spread machine noise over all,
and prints each method's median step time over GRPO's (first step of each run excluded).
Writes bench/results/step_time.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cache-dir", default=".cache/videoktr")
    parser.add_argument("--methods", nargs="+", default=["grpo", "ktr"])
    parser.add_argument("--model", default="", help="model directory (default: the default run's warm start)")
    args = parser.parse_args()

    import torch

    from videoktr.train.config import load_config
    from videoktr.world.run import world_trainer

    torch.set_num_threads(2)
    methods = ["grpo"] + [m for m in args.methods if m != "grpo"]
    times: dict[str, list[float]] = {m: [] for m in methods}
    attribution: list[float] = []
    for repeat in range(args.repeats):
        for method in methods:
            out = tempfile.mkdtemp(prefix=f"steptime-{method}-")
            config = load_config(overrides={"method": method, "max_steps": args.steps, "cache_dir": args.cache_dir,
                                            "output_dir": out, "save_steps": 10_000,
                                            "model": args.model})
            trainer, _, _ = world_trainer(config)
            trainer.train()
            logs = [h for h in trainer.state.log_history if "step_time" in h][1:]
            times[method] += [h["step_time"] for h in logs]
            attribution += [h["ktr/attribution_seconds"] for h in logs if "ktr/attribution_seconds" in h]
    grpo = statistics.median(times["grpo"])
    result = {"steps_per_run": args.steps, "repeats": args.repeats, "model": args.model or "default warm start",
              "median_step_s": {m: statistics.median(t) for m, t in times.items()},
              "over_grpo": {m: statistics.median(t) / grpo for m, t in times.items()},
              "ktr_attribution_median_s": statistics.median(attribution) if attribution else None}
    out = Path(__file__).parent / "results" / "step_time.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    for m in methods:
        print(f"{m:>8}: median step {result['median_step_s'][m]:.3f} s, {result['over_grpo'][m]:.3f} x grpo "
              f"({len(times[m])} steps)")
    if attribution:
        print(f"KTR attribution: median {result['ktr_attribution_median_s']:.3f} s per step")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
