"""The default experiment: synthetic video world -> small offline model -> warm start -> GRPO / Video-KTR.

Everything expensive is cached under `run.cache_dir` (the world's clips, the base model, the warm start), so a
second `videoktr train` only repeats the RL part. Held-out accuracy before and after RL, attribution quality
on the warm-started model, and the training curves go into the report.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..train.config import TrainConfig


HELDOUT_ITEMS_NAME = "heldout_items.json"  # per-clip 1/0 correctness before and after RL, in held-out order


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def world_directory(config: TrainConfig) -> Path:
    """Where the run's synthetic world is cached: named by its settings and split sizes."""
    from .. import world as synthetic

    d = config.data
    world_cfg = synthetic.world_config(d.world_style, seed=d.world_seed)
    # to_dict: the default (short) world keeps the directory it had before world styles existed
    digest = _digest([world_cfg.to_dict(), d.world_train, d.world_eval, d.world_rl])
    return Path(config.run.cache_dir) / f"world-{digest}"


def prepare_world_and_model(config: TrainConfig):
    """The synthetic world and the starting model directory (both cached under run.cache_dir)."""
    from .. import world as synthetic
    from ..models.factory import create_model_dir
    from . import warmstart

    cache = Path(config.run.cache_dir)
    d = config.data
    world_cfg = synthetic.world_config(d.world_style, seed=d.world_seed)
    world_dir = world_directory(config)
    print(f"[1/5] synthetic world: {world_dir}")
    world = synthetic.generate_world(world_dir, world_cfg, n_train=d.world_train, n_eval=d.world_eval,
                                     n_rl=d.world_rl)
    if config.model.model:
        model_dir = Path(config.model.model)
        print(f"[2/5] model: {model_dir}")
        return world, model_dir
    base_dir = cache / f"base-{config.model.model_size}-{_digest([world_cfg.to_dict(), config.run.seed])}"
    if not (base_dir / "config.json").is_file():
        create_model_dir(base_dir, size=config.model.model_size, corpus=synthetic.corpus(world_cfg),
                         seed=config.run.seed)
    # long references need a longer greedy validation budget (the short world keeps the warm start's default)
    budget = {} if world_cfg.style == "short" else {"max_new_tokens": world_cfg.completion_tokens}
    settings = {"max_steps": config.model.warmstart_max_steps, "seed": config.run.seed,
                "rope_positions": config.model.rope_positions, **budget}
    model_dir = Path(config.model.warmstart_dir or cache / f"warmstart-{warmstart_digest(base_dir, world, settings)}")
    reused = warmstart.is_built(base_dir, world_dir, model_dir, **settings)
    if not reused and not config.model.warmstart_dir:  # built before under another spelling of the cache's path
        found = warmstart.find_built(base_dir, world_dir, cache, **settings)
        model_dir, reused = (found, True) if found is not None else (model_dir, False)
    print(f"[2/5] warm start ({'cached, reused' if reused else 'building; cached for later runs'}): {model_dir}")
    warmstart.warm_start(base_dir, world_dir, model_dir, **settings)
    return world, model_dir


# warm_start() settings the folder name carries through other parts: the base model's folder names the run's seed
# and the world (whose style sets max_new_tokens); the position scheme has its own rule below
NAMED_ELSEWHERE = ("seed", "max_new_tokens", "rope_positions")


def warmstart_digest(base_dir: Path, world, settings: dict) -> str:
    """The name of a warm start's cache folder: a digest of what it reads (the base model and the supervised rows;
    not the held-out or RL clips) and of every setting passed to warm_start(). The position scheme enters it
    unless it is transformers' (the name warm starts had before the option existed), and every other setting
    when it differs from warm_start()'s default (WarmStartSettings), so existing caches keep their names."""
    from .warmstart import WarmStartSettings

    train_digest = hashlib.sha256(world.train.read_bytes()).hexdigest()
    named = [str(base_dir), train_digest] + ([] if settings["rope_positions"] == "transformers"
                                             else [settings["rope_positions"]])
    changed = {k: v for k, v in settings.items()
               if k not in NAMED_ELSEWHERE and v != getattr(WarmStartSettings, k, object())}
    if changed:
        named.append(changed)
    return _digest(named)


def world_trainer(config: TrainConfig):
    """The trainer of the default experiment on the world's RL prompts (difficulty-filtered with
    data.world_rl_filter), built as `run_synthetic` builds it, without the held-out evaluation or the run-directory
    bookkeeping (benchmarks). Returns (trainer, world, model_dir)."""
    from .. import world as synthetic
    from ..models.factory import load_processor
    from ..train.build import build_trainer, load_training_model, trl_rows

    world, model_dir = prepare_world_and_model(config)
    model = load_training_model(config, model_dir)
    processor = load_processor(model_dir, min_pixels=config.data.min_pixels, max_pixels=config.data.max_pixels)
    rl_rows, summary = synthetic.read_rows(world.rl), None
    if config.data.world_rl_filter:
        rl_rows, summary = filter_rl_prompts(config, model, processor, model_dir, world, rl_rows)
    rows = trl_rows(rl_rows, world.root, synthetic.prompt_text)
    trainer = build_trainer(config, model, processor, rows, [synthetic.accuracy_reward, synthetic.format_reward])
    trainer.world_rl_filter = summary  # the filter's summary (None without data.world_rl_filter)
    return trainer, world, model_dir


def filter_rl_prompts(config: TrainConfig, model, processor, model_dir, world, rl_rows: list[dict]):
    """data.world_rl_filter: the RL prompts the starting model solves sometimes but not always (world/filter.py),
    and the filter's summary. One process samples (the result is cached); the others read its cache."""
    from ..models.lora import base_model
    from ..train.rundir import process_state
    from .filter import filter_world_prompts

    rl = config.rl
    with process_state().main_process_first():
        kept, summary = filter_world_prompts(
            base_model(model), processor, model_dir, rl_rows, world.root, world.rl, config.run.cache_dir,
            samples=rl.num_generations, temperature=rl.temperature, top_p=rl.top_p,
            max_new_tokens=rl.max_completion_length, seed=config.data.world_seed)
    print(f"RL prompt filter (accuracy over {summary['samples']} samples in [{summary['low']}, {summary['high']}]): "
          f"kept {summary['kept']} of {summary['rows']} ({summary['too_easy']} too easy, {summary['too_hard']} too "
          f"hard); prompts with an accuracy signal {summary['signal_share_before']:.2f} -> "
          f"{summary['signal_share_after']:.2f}")
    if not kept:
        raise ValueError(f"data.world_rl_filter kept no RL prompt of {summary['rows']} (too easy "
                         f"{summary['too_easy']}, too hard {summary['too_hard']}); turn the filter off")
    return kept, summary


def run_synthetic(config: TrainConfig, clock=None) -> dict:
    """The default experiment; `clock` (train.rundir.WallClock) records the invocation's wall time as it trains."""
    if config.rl.length_bonus > 0:
        # the world's answers are a few tokens long (responses of at most rl.max_completion_length, 64 by default):
        # a bonus for 320-512-token reasoning has nothing to reward there, and its rewards are the world's own
        raise ValueError(f"rl.length_bonus={config.rl.length_bonus} applies to runs on Video-R1 data (data.data); "
                         "the synthetic world (no data.data) does not use it: set rl.length_bonus to 0")
    from .metrics import attribution_quality, heldout_accuracy, paired_gain
    from .. import world as synthetic
    from ..models.factory import load_processor
    from ..models.lora import base_model
    from ..train.build import build_trainer, load_training_model, trl_rows
    from ..train.report import PLOT_NAME, plot_history
    from ..train.rundir import prepare_resume, process_state, start_run_dir
    from ..train.run import train_and_record

    world_cfg = synthetic.world_config(config.data.world_style)
    if config.rl.max_completion_length < world_cfg.completion_tokens and world_cfg.style != "short":
        # the long_cot world's references run to about 180 tokens: 64 (the default) would cut every one
        print(f"rl.max_completion_length raised from {config.rl.max_completion_length} to "
              f"{world_cfg.completion_tokens}: the {world_cfg.style} world's references need it")
        config.rl.max_completion_length = world_cfg.completion_tokens
    out = start_run_dir(config)
    with process_state().main_process_first():  # several processes: one builds the caches, the others reuse them
        world, model_dir = prepare_world_and_model(config)
    start = prepare_resume(config, out, model_dir)
    world_dir = world.root
    rl_rows = synthetic.read_rows(world.rl)
    eval_rows = synthetic.read_rows(world.eval)

    model = load_training_model(config, model_dir)
    processor = load_processor(model_dir, min_pixels=config.data.min_pixels, max_pixels=config.data.max_pixels)
    rl_filter = None
    if config.data.world_rl_filter:
        rl_rows, rl_filter = filter_rl_prompts(config, model, processor, model_dir, world, rl_rows)

    # 3. before RL: held-out accuracy and attribution quality of the starting model
    print(f"[3/5] held-out accuracy and attribution on {len(eval_rows)} clips")
    gen = {} if world_cfg.style == "short" else {"max_new_tokens": world_cfg.completion_tokens}
    before = heldout_accuracy(model, processor, eval_rows, world_dir, **gen)
    attribution = None
    if config.run.eval_attribution:
        attribution = attribution_quality(model, processor, eval_rows[: config.data.attribution_rows], world_dir,
                                          ratio=config.ktr.ratio,
                                          seed=config.run.seed)

    # 4. RL
    print(f"[4/5] {config.rl.method} for {config.rl.max_steps} steps")
    trainer = build_trainer(config, model, processor, trl_rows(rl_rows, world_dir, synthetic.prompt_text),
                            [synthetic.accuracy_reward, synthetic.format_reward], identity=start.identity,
                            base_model=str(model_dir), clock=clock)
    train = train_and_record(config, trainer, out, accuracy_key="rewards/accuracy_reward/mean", start=start)

    # 5. after RL
    print("[5/5] held-out accuracy after RL")
    after = heldout_accuracy(base_model(trainer.model), processor, eval_rows, world_dir, **gen)  # LoRA: adapters on
    before_items, after_items = before.pop("per_item"), after.pop("per_item")
    before_responses, after_responses = before.pop("per_item_response"), after.pop("per_item_response")
    gain = paired_gain(before_items, after_items)
    if process_state().is_main_process:  # the plot again, with held-out accuracy before and after
        from ..train.checkpoint import write_json_atomic

        # per-clip correctness, for paired comparisons between runs on the same held-out clips (bench/study.py),
        # and the greedy responses themselves (what a collapsed run's outputs became)
        write_json_atomic(out / HELDOUT_ITEMS_NAME, {
            "world": str(world_dir), "families": [r["family"] for r in eval_rows],
            "kinds": [r["kind"] for r in eval_rows], "solutions": [r["solution"] for r in eval_rows],
            "before": before_items, "after": after_items,
            "responses_before": before_responses, "responses_after": after_responses})
        plot_history(trainer.state.log_history, out / PLOT_NAME, accuracy_key="rewards/accuracy_reward/mean",
                     heldout=(before["overall"]["accuracy"], after["overall"]["accuracy"]))
    report = {
        "method": config.rl.method,
        "model": str(model_dir),
        "world": str(world_dir),
        "steps": trainer.state.global_step,
        "accuracy_before": before,
        "accuracy_after": after,
        "accuracy_gain": gain,  # paired over the same held-out clips: gain, ci95, McNemar p_value
        "attribution": attribution,  # auc, precision (each strategy's), label shares, ...
        "attribution_strategies": {"visual": config.ktr.visual_strategy, "temporal": config.ktr.temporal_strategy},
        "rl_filter": rl_filter,
        "train": train,
        "plot": str(out / PLOT_NAME),
    }
    return report


def run(config: TrainConfig) -> dict:
    """`videoktr train` without data: the default experiment (`run_synthetic`), checked, timed and reported by
    `videoktr.train.run.run` as a run on data is. Returns the report (also written to report.json)."""
    from ..train.run import run as run_experiment

    if config.data.data:
        raise ValueError(f"data.data is {config.data.data!r}: the synthetic world's default run takes no data; "
                         "videoktr.train.run.run(config) trains on it")
    return run_experiment(config, run_synthetic)
