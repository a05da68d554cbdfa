"""`videoktr train`: one function that runs an experiment from a TrainConfig and writes its report (`run`), and the
experiment on Video-R1-format data (`run_dataset`). The synthetic world's default run is `videoktr.world.run`; the
command picks it when no data is given. The pieces: `build` (model and trainer), `rundir` (the run directory's
identity, resume and wall time), `report` (statistics, plot, report.json).
"""

from __future__ import annotations

import time
from pathlib import Path

from .build import (GRADIENT_CHECKPOINTING_DEPRECATION, build_trainer, load_training_model, resolve_auto_dtype,
                    save_final, trl_rows)
from .config import TrainConfig
from .preflight import preflight
from .report import PLOT_NAME, REPORT_NAME, plot_history, publish, training_summary
from .rundir import FINAL_NAME, RunComplete, RunStart, WallClock, prepare_resume, process_state, start_run_dir


def train_and_record(config: TrainConfig, trainer, out: Path, accuracy_key: str, start: RunStart) -> dict:
    """Train (from `start.resume` when given), write the trained model to `final/` (complete or absent),
    log_history.json and the plot on the main process, and return the training statistics of the report."""
    import shutil

    from .checkpoint import write_json_atomic

    if start.resume:
        print(f"      resuming from {start.resume}")
        if not any(Path(start.resume).glob("optimizer.*")):
            print("      (a weights-only checkpoint, run.save_only_model: the optimizer and schedule start afresh)")
    trainer.train(resume_from_checkpoint=start.resume)
    final = None
    state = process_state()
    if config.run.save_final:  # every process takes part (DeepSpeed ZeRO-3 gathers the shards); rank 0 writes
        final, partial = out / FINAL_NAME, out / f".{FINAL_NAME}.partial"
        if state.is_main_process and partial.exists():
            shutil.rmtree(partial)
        state.wait_for_everyone()
        save_final(config, trainer, partial)
        state.wait_for_everyone()
        if state.is_main_process and trainer.card is not None:
            from ..models.info import write_model_info
            from .card import model_card, model_info

            (partial / "README.md").write_text(model_card(trainer.card, trainer.state.global_step))
            write_model_info(partial, model_info(trainer.card, trainer.state.global_step))  # eval's default prompt
        if state.is_main_process:  # renamed into place once whole: `final/` is complete or absent
            if final.exists():
                shutil.rmtree(final)
            partial.rename(final)
    history = trainer.state.log_history
    if state.is_main_process:
        write_json_atomic(out / "log_history.json", history)
        plot_history(history, out / PLOT_NAME, accuracy_key=accuracy_key)
    return {**training_summary(history, config.rl.method), "final_model": str(final) if final else None}


def run(config: TrainConfig, experiment=None) -> dict:
    """Run the experiment described by `config`; returns the report (also written to report.json).
    `experiment(config, clock) -> report` does the work between the checks and the report: `run_dataset` (the
    default: training on data.data) or the synthetic world's (`videoktr.world.run.run(config)` passes it; the
    `videoktr train` command picks that one when data.data is empty)."""
    import warnings

    if experiment is None:
        experiment = run_dataset if config.data.data else _world_experiment()
    warnings.filterwarnings("ignore", message=GRADIENT_CHECKPOINTING_DEPRECATION, category=FutureWarning)
    preflight(config)  # every option checked (types, ranges, paths, model config) before any expensive work
    resolve_auto_dtype(config)
    start = time.perf_counter()
    clock = WallClock(Path(config.run.output_dir), start)
    try:
        report = experiment(config, clock)
    except RunComplete as done:
        if process_state().is_main_process:
            print(f"{done}: nothing to do (report: {done.out / REPORT_NAME}). Raise --max-steps to train it "
                  f"further, or --no-resume to start over (the earlier files are moved aside, not deleted).")
        return done.report
    report["wall_seconds"] = time.perf_counter() - start
    state = process_state()
    report["processes"] = state.num_processes
    if state.is_main_process:  # one report per run, whatever the number of processes
        report["wall_seconds_total"] = clock.record(report["wall_seconds"])  # with every earlier invocation's
        publish(config, report)
    return report


def _world_experiment():
    """`run(config)` without data.data ran the synthetic world's default experiment before 0.2, and still does for
    one release, with a DeprecationWarning: train/ does not import world/ (the world stands on train), so the
    experiment is looked up by name here. Remove in 0.2 (then `run` refuses a config without data)."""
    import importlib
    import warnings

    warnings.warn("videoktr.train.run.run(config) without data.data is deprecated: call "
                  "videoktr.world.run.run(config) for the synthetic world's default run (what `videoktr train` does)",
                  DeprecationWarning, stacklevel=3)
    return importlib.import_module("videoktr.world.run").run_synthetic


def media_check_options(data, out: Path, state) -> dict:
    """How the start-up media check runs: decoding threads, cache file, and (several processes) each process
    probing its share of the files, combined with all_gather_objects."""
    import os

    from .distributed import all_gather_objects

    world = state.num_processes
    workers = data.media_workers or max(1, min(8, (os.cpu_count() or 1) // world))
    cache = None if data.media_cache == "none" else Path(data.media_cache or out / "media_check.jsonl")
    return {"workers": workers, "cache": cache, "rank": state.process_index, "world_size": world,
            "progress": state.is_main_process, "gather": all_gather_objects if world > 1 else None}


def dataset_rewards(config: TrainConfig) -> dict:
    """The rewards of a run on Video-R1 rows, as `rewards.build_rewards` reads them: accuracy and format weighted
    by rl.reward_weights, then (rl.length_bonus > 0) Video-R1's length bonus with weight 1.0, its value
    rl.length_bonus, counted per prompt group of rl.num_generations responses (at least 2 correct)."""
    rl = config.rl
    weights = list(rl.reward_weights)
    rewards: dict = {"accuracy": weights[0], "format": weights[1] if len(weights) > 1 else 1.0}
    if rl.length_bonus > 0:
        rewards["length_bonus"] = {"weight": 1.0, "bonus": float(rl.length_bonus),
                                   "min_tokens": rl.length_bonus_min_tokens, "max_tokens": rl.length_bonus_max_tokens,
                                   "group_size": rl.num_generations}
    return rewards


def run_dataset(config: TrainConfig, clock: WallClock | None = None) -> dict:
    """Train on Video-R1-format rows: validated rows, media probed once, bad samples skipped and recorded
    (never substituted), rewards by problem_type."""
    from ..data.videor1 import build_prompt, load_videor1, without_row_ref, write_skipped
    from ..models.factory import load_processor
    from ..rewards import build_rewards

    if not config.model.model:
        raise ValueError("model.model (--model) must name a model directory when training on data "
                         "(e.g. a Qwen2.5-VL checkpoint, or one written by `videoktr init-model`)")
    out = start_run_dir(config)
    start = prepare_resume(config, out, config.model.model)
    d, state = config.data, process_state()
    data = load_videor1(d.data, d.data_root or None, fps=d.fps, min_frames=d.min_frames, max_frames=d.max_frames,
                        backend=d.video_backend, **media_check_options(d, out, state))
    rows, skipped = [without_row_ref(row) for row in data.rows], list(data.skipped)
    main_process = state.is_main_process
    if main_process:
        write_skipped(out / "skipped.jsonl", skipped)
    if skipped and main_process:
        print(f"skipped {len(skipped)} of {len(rows) + len(skipped)} rows (reasons in {out / 'skipped.jsonl'})")
    if not rows:
        raise ValueError(f"{d.data}: no trainable rows left (see {out / 'skipped.jsonl'})")
    model = load_training_model(config, config.model.model)
    processor = load_processor(config.model.model, min_pixels=d.min_pixels, max_pixels=d.max_pixels)
    reward_funcs, _ = build_rewards(dataset_rewards(config))
    trainer = build_trainer(config, model, processor, trl_rows(rows, Path(d.data_root or "."), build_prompt),
                            reward_funcs, identity=start.identity, clock=clock)
    train = train_and_record(config, trainer, out, accuracy_key="rewards/accuracy/mean", start=start)
    return {
        "method": config.rl.method,
        "model": config.model.model,
        "data": d.data,
        "rows": len(rows),
        "skipped_samples": len(skipped),
        "media_check": data.media_check,  # files, from_cache, probed_here (by this process), processes
        "skipped_file": str(out / "skipped.jsonl"),
        "steps": trainer.state.global_step,
        "train": train,
        "plot": str(out / PLOT_NAME),
    }
