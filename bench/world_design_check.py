"""The design check of a synthetic world (issue 18, item 2), fixed before any method comparison on it: can the
key-token mask matter there at all? On the warm start's OWN rollouts, with GRPO advantages and the default KTR
mask (r = 0.2, visual + temporal + entropy), it measures

  * the share of GRPO's policy-gradient proxy sum |A| (1 - p) on the tokens the mask leaves out (target >= 0.3),
  * the share of those left-out tokens that the policy samples with p > 0.99 (target <= 0.5),
  * the share of prompt groups whose rewards differ (groups with any gradient),
  * the union's update ratio and the sampled responses' lengths (and how many hit the completion budget);

and, without a model, the text-only baseline (majority answer per question text, fitted on training rows) against
uniform chance, the reference responses' lengths and their token roles (vision, order, sampled filler, answer).

The rollouts come from `videoktr train --method ktr` on the world's RL prompts at learning rate 1e-12 (Adam moves
each weight by about the learning rate per step, so every logged step samples from the warm start itself), with
every response of every step logged (run.log_rollouts_every 1, run.log_rollouts_max 0) and no held-out
evaluation. The measurement is bench/study.py's "what the mask leaves out".

    .venv/bin/python bench/world_design_check.py --world-style sampled_cot --steps 8 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from statistics import mean, median

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

TARGETS = {"unselected_share": (">=", 0.3), "unselected_confident": ("<=", 0.5)}


def reference_measures(style: str, rows: int, baseline_train: int, baseline_eval: int, seed: int) -> dict:
    """Text-only baseline, reference lengths and token-role shares (no model)."""
    from world_long_cot import text_only_baseline

    from videoktr import world as S
    from videoktr.models.factory import DEFAULT_CORPUS, SIZES, train_tokenizer

    config = S.world_config(style, seed=seed)
    tok = train_tokenizer(list(DEFAULT_CORPUS) + S.corpus(config), SIZES["small"].vocab_size)
    sample = S.sample_rows(config, "eval", rows)
    labels = S.label_rows(sample, tok, config)
    lengths = [len(lab["input_ids"]) for lab in labels]
    total = sum(lengths)
    roles = {}
    for key in ("vision", "order", "vision_uncond", "order_uncond", "answer", "sampled"):
        if all(key in lab for lab in labels):
            roles[key] = sum(int(lab[key].sum()) for lab in labels) / total
    key_tokens = sum(int((lab["vision"] | lab["order"]).sum()) for lab in labels) / total
    return {"rows": rows, "reference_tokens": {"min": min(lengths), "mean": mean(lengths), "median": median(lengths),
                                               "max": max(lengths)},
            "roles": roles, "key_token_share": key_tokens,
            "text_only_baseline": text_only_baseline(config, baseline_train, baseline_eval)}


def rollout_measures(run_dir: Path, budget: int) -> dict:
    """From the check run's rollout log: the mask measures, groups with gradient, update ratio, lengths."""
    from study import logged_rollouts, mask_gradient_share

    records = logged_rollouts(run_dir) or []
    share = mask_gradient_share(run_dir, records)
    groups: dict[tuple, list[float]] = {}
    for r in records:
        groups.setdefault((r["step"], r["rank"], r["prompt_group"]), []).append(r["reward"])
    lengths = [len(r["tokens"]) for r in records]
    attributed = [r for r in records if r["attributed"] and r["selected"].get("union") is not None]
    ratios = [sum(r["selected"]["union"]) / max(1, len(r["selected"]["union"])) for r in attributed]
    accuracy = [r["rewards_per_func"][0] for r in records if r.get("rewards_per_func")]
    # where the left-out gradient sits: the mean (1 - p) of left-out and selected tokens
    out_g, in_g = [], []
    for r in attributed:
        for picked, lp in zip(r["selected"]["union"], r["logp"]["full"] or []):
            if lp is not None:
                (in_g if picked else out_g).append(1.0 - math.exp(lp))
    return {
        "responses": len(records), "attributed": len(attributed),
        "unselected_share": share.get("unselected_share"), "unselected_confident": share.get("unselected_confident"),
        "groups": len(groups),
        "groups_with_gradient": sum(len(set(v)) > 1 for v in groups.values()) / max(1, len(groups)),
        "update_ratio": mean(ratios) if ratios else None,
        "mean_one_minus_p": {"selected": mean(in_g) if in_g else None, "left_out": mean(out_g) if out_g else None},
        "accuracy_reward": mean(accuracy) if accuracy else None,
        "response_tokens": {"min": min(lengths), "mean": mean(lengths), "median": median(lengths),
                            "max": max(lengths), "at_budget": sum(n >= budget for n in lengths) / len(lengths)}
        if lengths else None,
    }


def run_check(args) -> dict:
    from videoktr import world as S
    from videoktr.train.config import load_config

    out = Path(args.out)
    overrides = {"world_style": args.world_style, "world_seed": args.world_seed, "seed": args.seed,
                 "method": "ktr", "learning_rate": 1e-12, "max_steps": args.steps,
                 "log_rollouts_every": 1, "log_rollouts_max": 0, "save_steps": 10**6, "save_final": False,
                 "output_dir": str(out / "run"), "cache_dir": args.cache_dir, "eval_attribution": False,
                 "resume": False}
    if args.prompts_per_step:
        overrides["prompts_per_step"] = args.prompts_per_step
    if args.rl_filter:  # the RL prompts the warm start solves in 20-80% of its samples (data.world_rl_filter)
        overrides["world_rl_filter"] = True
    if args.model:  # a given starting model (a warm start built earlier: --seed then only seeds the rollouts)
        overrides["model"] = args.model
    world = S.world_config(args.world_style)
    if world.style != "short":  # what `videoktr train` raises it to on a long world
        overrides["max_completion_length"] = world.completion_tokens
    config = load_config(overrides=overrides)
    budget = config.rl.max_completion_length
    start = time.perf_counter()
    checked = check_trainer(config) if not args.skip_rollouts else None
    seconds = time.perf_counter() - start
    result = {"world_style": args.world_style, "settings": {"steps": args.steps, "seed": args.seed,
                                                            "prompts_per_step": config.rl.prompts_per_step,
                                                            "num_generations": config.rl.num_generations,
                                                            "completion_budget": budget},
              "reference": reference_measures(args.world_style, args.rows, args.baseline_train, args.baseline_eval,
                                              args.world_seed)}
    if checked is not None:
        result["rollouts"] = rollout_measures(out / "run", budget)
        result["rollouts"]["seconds_per_step"] = checked["seconds_per_step"]
        result["rollouts"]["warm_start"] = checked["warm_start"]
        result["rl_filter"] = checked.get("rl_filter")
        result["check_seconds"] = seconds
        r = result["rollouts"]
        result["passed"] = {k: (r[k] >= v if op == ">=" else r[k] <= v) if r.get(k) is not None else None
                            for k, (op, v) in TARGETS.items()}
    return result


def check_trainer(config) -> dict:
    """Train (at 1e-12) for config.rl.max_steps on the world's RL prompts; the rollout log is the result."""
    from videoktr.train.rundir import start_run_dir
    from videoktr.world.warmstart import read_info
    from videoktr.world.run import world_trainer

    start_run_dir(config)
    trainer, world, model_dir = world_trainer(config)

    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    info = read_info(model_dir) if (Path(model_dir) / "warmstart.json").is_file() else {}
    return {"rl_filter": trainer.world_rl_filter, "seconds_per_step": seconds / max(1, trainer.state.global_step),
            "warm_start": {"dir": str(model_dir), "steps": info.get("steps"), "stop_reason": info.get("stop_reason"),
                           "validation_accuracy": (info.get("accuracy_after") or {}).get("overall", {}).get("accuracy")}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world-style", default="sampled_cot")
    p.add_argument("--world-seed", type=int, default=0)
    p.add_argument("--seed", type=int, default=0, help="run seed of the check's rollouts (and of the warm start, "
                                                         "unless --model names one)")
    p.add_argument("--model", default="", help="the starting model (default: the world's warm start, built or "
                                               "reused under --cache-dir with --seed)")
    p.add_argument("--steps", type=int, default=8, help="logged rollout steps (prompts_per_step x G responses each)")
    p.add_argument("--prompts-per-step", type=int, default=0, help="0 = the run's default")
    p.add_argument("--rows", type=int, default=100, help="reference rows labelled for the role shares")
    p.add_argument("--baseline-train", type=int, default=3000)
    p.add_argument("--baseline-eval", type=int, default=2000)
    p.add_argument("--cache-dir", default=".cache/videoktr", help="where the world and its warm start are cached")
    p.add_argument("--out", default="runs/design-check", help="directory of the check's run")
    p.add_argument("--rl-filter", action="store_true", help="difficulty-filter the RL prompts first "
                                                             "(data.world_rl_filter) and report the filter")
    p.add_argument("--skip-rollouts", action="store_true", help="only the model-free measures")
    p.add_argument("--json", default="", help="also write the result here")
    args = p.parse_args(argv)
    result = run_check(args)
    text = json.dumps(result, indent=2, default=float)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
