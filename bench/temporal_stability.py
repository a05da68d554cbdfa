"""How steady is the temporal signal's attribution quality from one permutation draw to the next?

  .venv/bin/python bench/temporal_stability.py [--rows 300] [--seeds 5] [--model DIR]

On the default run's warm-started model (or --model) and the synthetic world's held-out reference responses,
the temporal score's ROC AUC against the ground-truth order-dependent tokens (world.metrics.attribution_quality)
for several temporal perturbations, each with several draw seeds:
  shuffle (paper: one uniformly random non-identity order), derange (every group moves), shuffle averaged over
  K draws (ktr.temporal_samples), reverse (deterministic: one seed).
Prints per configuration the mean, std, min and max AUC over the seeds and the attribution time relative to one
shuffle draw; writes bench/results/temporal_stability.json. Also counts, for the world's clips, how many temporal
groups they have and what share of shuffle draws leave a group in place (the suspected cause of the spread).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

CONFIGS = {
    "shuffle": dict(temporal_strategy="shuffle"),
    "derange": dict(temporal_strategy="derange"),
    "shuffle x4": dict(temporal_strategy="shuffle", temporal_samples=4),
    "derange x4": dict(temporal_strategy="derange", temporal_samples=4),
    "reverse": dict(temporal_strategy="reverse"),
}


def fixed_point_share(groups: int, draws: int = 2000) -> float:
    """Share of shuffle draws (non-identity) that leave at least one temporal group in place."""
    import torch

    from videoktr.models.perturb import temporal_permutation

    g = torch.Generator().manual_seed(0)
    hits = sum(bool((temporal_permutation(groups, "shuffle", g) == torch.arange(groups)).any()) for _ in range(draws))
    return hits / draws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300, help="held-out reference responses scored")
    parser.add_argument("--seeds", type=int, default=5, help="draw seeds per configuration")
    parser.add_argument("--model", default="", help="model directory (default: the default run's warm start)")
    parser.add_argument("--cache-dir", default=".cache/videoktr")
    args = parser.parse_args()

    import torch

    from videoktr.world.metrics import attribution_quality
    from videoktr.attribution import AttributionOptions
    from videoktr import world as synthetic
    from videoktr.models.factory import load_model, load_processor
    from videoktr.train.config import load_config
    from videoktr.world.run import prepare_world_and_model

    torch.set_num_threads(2)
    config = load_config(overrides={"cache_dir": args.cache_dir, "model": args.model})
    world, model_dir = prepare_world_and_model(config)
    model = load_model(model_dir, dtype="float32").eval()
    processor = load_processor(model_dir, min_pixels=config.data.min_pixels, max_pixels=config.data.max_pixels)
    rows = synthetic.read_rows(world.eval)[: args.rows]
    clips = synthetic.load_clips(world.root, rows, synthetic.load_world_config(world.root))

    results: dict = {}
    for name, overrides in CONFIGS.items():
        seeds = [0] if overrides["temporal_strategy"] == "reverse" else list(range(args.seeds))
        aucs, seconds = [], []
        for seed in seeds:
            options = AttributionOptions(signals=("temporal",), **overrides)
            start = time.perf_counter()
            q = attribution_quality(model, processor, rows, world.root, {name: options}, seed=seed, clips=clips)
            seconds.append(time.perf_counter() - start)
            aucs.append(q["auc"]["temporal"][overrides["temporal_strategy"]]["order"])
        results[name] = {"auc": aucs, "mean": statistics.mean(aucs),
                         "std": statistics.stdev(aucs) if len(aucs) > 1 else 0.0, "min": min(aucs), "max": max(aucs),
                         "seconds": statistics.median(seconds)}
    base = results["shuffle"]["seconds"]
    for name, r in results.items():
        r["time_ratio"] = r["seconds"] / base
        print(f"{name:12s} AUC mean {r['mean']:.3f} std {r['std']:.3f} [{r['min']:.3f}, {r['max']:.3f}] over "
              f"{len(r['auc'])} seed(s)  time x{r['time_ratio']:.2f}")
    frames = sorted({len(clip.frames) for clip in clips.values()})
    groups = sorted({n // 2 for n in frames})
    fixed = {g: fixed_point_share(g) for g in groups if g >= 2}
    for g, share in fixed.items():
        print(f"clips with {g} temporal groups: {share:.0%} of shuffle draws leave a group in place")
    out = Path(__file__).resolve().parent / "results" / "temporal_stability.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"rows": len(rows), "model": str(model_dir), "results": results,
                               "groups": groups, "shuffle_fixed_point_share": fixed}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
