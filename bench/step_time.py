"""KTR vs GRPO step time on the default run (issue target: KTR within 5% of GRPO), measured in one run.

  .venv/bin/python bench/step_time.py [--steps 12] [--repeats 2]

Uses the default run's cached world and warm-started model (run `videoktr train` once first, or this script
builds them), then trains GRPO and Video-KTR from the same weights for the same steps, alternating the two
methods `--repeats` times to spread machine noise over both, and prints the ratio of median step times
(first step of each run excluded). Writes bench/results/step_time.json.
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
    args = parser.parse_args()

    import torch

    from videoktr.data import synthetic
    from videoktr.models.factory import load_model, load_processor
    from videoktr.train.config import load_config
    from videoktr.train.run import build_trainer, trl_rows
    from videoktr.train.world_run import prepare_world_and_model

    torch.set_num_threads(2)
    times: dict[str, list[float]] = {"grpo": [], "ktr": []}
    attribution: list[float] = []
    for repeat in range(args.repeats):
        for method in ("grpo", "ktr"):
            out = tempfile.mkdtemp(prefix=f"steptime-{method}-")
            config = load_config(overrides={"method": method, "max_steps": args.steps, "cache_dir": args.cache_dir,
                                            "output_dir": out, "save_steps": 10_000, "seed": repeat})
            world, model_dir = prepare_world_and_model(config)
            model = load_model(model_dir, dtype=config.model.dtype)
            processor = load_processor(model_dir, min_pixels=config.data.min_pixels, max_pixels=config.data.max_pixels)
            rows = trl_rows(synthetic.read_rows(world.rl), world.root, synthetic.prompt_text)
            trainer = build_trainer(config, model, processor, rows, [synthetic.accuracy_reward, synthetic.format_reward])
            trainer.train()
            logs = [h for h in trainer.state.log_history if "step_time" in h][1:]
            times[method] += [h["step_time"] for h in logs]
            attribution += [h["ktr/attribution_seconds"] for h in logs if "ktr/attribution_seconds" in h]
    grpo, ktr = statistics.median(times["grpo"]), statistics.median(times["ktr"])
    result = {"steps_per_run": args.steps, "repeats": args.repeats, "grpo_median_step_s": grpo,
              "ktr_median_step_s": ktr, "ktr_over_grpo": ktr / grpo,
              "ktr_attribution_median_s": statistics.median(attribution) if attribution else None}
    out = Path(__file__).parent / "results" / "step_time.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"KTR / GRPO step time: {ktr / grpo:.3f} (median {ktr:.3f} s vs {grpo:.3f} s over "
          f"{len(times['ktr'])} and {len(times['grpo'])} steps; attribution {result['ktr_attribution_median_s']:.3f} s "
          f"per step)")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
