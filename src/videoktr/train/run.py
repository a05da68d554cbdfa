"""`videoktr train`: one function that runs an experiment from a TrainConfig and writes its report.

Default run (no data, no model given): the synthetic video world (cached), the small offline model warm-started
on it (cached), then GRPO or Video-KTR on CPU; `report.json` + `training.png` in the run directory.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .config import TrainConfig

REPORT_NAME = "report.json"
PLOT_NAME = "training.png"
FINAL_NAME = "final"  # the trained model, loadable like any checkpoint (videoktr eval --model)


def trl_rows(rows: list[dict], media_root: Path, prompt_fn=None) -> list[dict]:
    """Video-R1-style rows -> TRL rows: a conversational prompt with the video part, plus the reward columns.
    prompt_fn(row) gives the prompt text (default: the row's `problem` as it is)."""
    out = []
    for row in rows:
        content = []
        kind = row.get("data_type", "video")
        if kind in ("video", "image") and row.get("path"):
            content.append({"type": kind, kind: str(Path(media_root) / row["path"])})
        content.append({"type": "text", "text": prompt_fn(row) if prompt_fn else row["problem"]})
        out.append({"prompt": [{"role": "user", "content": content}],
                    **{k: v for k, v in row.items() if k not in ("prompt",)}})
    return out


def grpo_args(config: TrainConfig, suppress_tokens: list[int]):
    """TRL GRPOConfig for this run (CPU unless a GPU is present)."""
    from trl import GRPOConfig

    rl, run = config.rl, config.run
    return GRPOConfig(
        output_dir=run.output_dir,
        max_steps=rl.max_steps,
        learning_rate=rl.learning_rate,
        per_device_train_batch_size=rl.prompts_per_step * rl.num_generations,
        num_generations=rl.num_generations,
        gradient_accumulation_steps=rl.gradient_accumulation_steps,
        temperature=rl.temperature,
        top_p=rl.top_p,
        max_completion_length=rl.max_completion_length,
        beta=rl.beta,
        use_bias_correction_kl=False,  # what videoktr's loss computes (TRL 1.16's default True; see train.compat)
        epsilon=rl.epsilon,
        epsilon_high=rl.epsilon_high,
        num_iterations=rl.num_iterations,
        weight_decay=rl.weight_decay,
        max_grad_norm=rl.max_grad_norm,
        lr_scheduler_type=rl.lr_scheduler_type,
        warmup_steps=rl.warmup_steps,
        # + Video-R1's length bonus (weight 1.0), the last of `dataset_rewards` (refused on the synthetic world)
        reward_weights=list(rl.reward_weights) + ([1.0] if rl.length_bonus > 0 else []),
        # vision special tokens never sampled: transformers' suppress_tokens, vLLM's logit_bias
        generation_kwargs=({"logit_bias": {t: -100.0 for t in suppress_tokens}} if rl.use_vllm
                           else {"suppress_tokens": suppress_tokens}),
        use_vllm=rl.use_vllm,
        vllm_mode=rl.vllm_mode,
        vllm_gpu_memory_utilization=rl.vllm_gpu_memory_utilization,
        vllm_tensor_parallel_size=rl.vllm_tensor_parallel_size,
        vllm_enable_sleep_mode=rl.vllm_enable_sleep_mode,
        vllm_server_base_url=rl.vllm_server_base_url or None,
        seed=run.seed,
        logging_steps=run.logging_steps,
        save_strategy="steps",
        save_steps=run.save_steps,
        save_total_limit=run.save_total_limit,
        report_to=[],
        use_cpu=cpu_only(),
        bf16=config.model.dtype == "bfloat16",
        fp16=config.model.dtype == "float16",
        gradient_checkpointing=config.model.gradient_checkpointing,
        disable_tqdm=False,
    )


def build_trainer(config: TrainConfig, model, processor, train_rows: list[dict], reward_funcs: list):
    from datasets import Dataset

    from ..attribution import AttributionOptions, SelectionOptions
    from ..models.factory import suppressed_token_ids
    from .trainer import TemporalGRPOOptions, VideoGRPOTrainer, VideoOptions

    k, d = config.ktr, config.data
    return VideoGRPOTrainer(
        model=model,
        processing_class=processor,
        reward_funcs=reward_funcs,
        args=grpo_args(config, suppressed_token_ids(processor.tokenizer)),
        train_dataset=Dataset.from_list(train_rows),
        method=config.rl.method,
        attribution=AttributionOptions(
            signals=tuple(k.signals), visual_strategy=k.visual_strategy, visual_fraction=k.visual_fraction,
            temporal_strategy=k.temporal_strategy, segment_groups=k.segment_groups, distance=k.distance,
            signed=k.signed),
        selection=SelectionOptions(ratio=k.ratio, scope=k.selection, weighting=k.weighting),
        video=VideoOptions(fps=d.fps, min_frames=d.min_frames, max_frames=d.max_frames, backend=d.video_backend),
        loss_normalization=config.rl.loss_normalization,
        mask_kl=k.mask_kl,
        seed=config.run.seed,
        tgrpo=TemporalGRPOOptions(alpha=config.rl.tgrpo_alpha, mu=config.rl.tgrpo_mu),
        twgrpo_variant=config.rl.twgrpo_variant,
    )


def last_checkpoint(output_dir: str | Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None


def plot_history(log_history: list[dict], path: Path, accuracy_key: str | None) -> Path:
    """Reward (and accuracy reward) per step as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in log_history if "reward" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [h["reward"] for h in log_history if "reward" in h], label="mean reward")
    if accuracy_key:
        ax.plot(steps, [h.get(accuracy_key, float("nan")) for h in log_history if "reward" in h],
                label="accuracy reward")
    ratio = [h.get("ktr/update_ratio") for h in log_history if "reward" in h]
    if any(r is not None for r in ratio):
        ax.plot(steps, [float("nan") if r is None else r for r in ratio], label="KTR update ratio", linestyle=":")
    ax.set_xlabel("optimizer step")
    ax.set_title("training")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parameter_dtype(compute_dtype: str, distributed_type=None) -> str:
    """The dtype a run's trainable parameters are loaded in, for `model.dtype` = `compute_dtype`.

    bf16/fp16 training needs fp32 master weights: an optimizer step on a bf16 tensor rounds updates below bf16's
    resolution away (AdamW at lr 2e-6 left 96% of a bf16 tensor's entries unchanged after 10 steps). DeepSpeed
    keeps fp32 master weights in its optimizer, so its modules stay in `compute_dtype`; everywhere else (one
    process, DDP, FSDP) the parameters are fp32 and the forward runs under autocast in `compute_dtype`
    (GRPOConfig's bf16/fp16), as accelerate's mixed precision expects."""
    from accelerate.utils import DistributedType

    if compute_dtype == "float32" or distributed_type == DistributedType.DEEPSPEED:
        return compute_dtype
    return "float32"


def load_training_model(config: TrainConfig, path: str | Path):
    """The model to train, with parameters in `parameter_dtype` for this run's engine."""
    from ..models.factory import load_model

    return load_model(path, dtype=parameter_dtype(config.model.dtype, process_state().distributed_type))


def cpu_only() -> bool:
    """Whether the run trains on CPU (no GPU present): GRPOConfig's `use_cpu` and `process_state` agree on it."""
    import torch

    return not torch.cuda.is_available()


def process_state():
    """accelerate's view of this run's processes, set up as the trainer sets it up (a bare PartialState()
    under torchrun on CPU would see one process while the trainer later sees all)."""
    from accelerate import PartialState

    return PartialState(cpu=cpu_only())


def start_run_dir(config: TrainConfig) -> Path:
    """Seed the run, create its directory and record the resolved configuration there."""
    import torch

    torch.manual_seed(config.run.seed)
    out = Path(config.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if process_state().is_main_process:
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    return out


IDENTITY_NAME = "run_identity.json"
# options a resumed run may change: how long it runs, how it saves and logs, where things are written
RESUMABLE = {"rl": ("max_steps",), "data": ("media_workers", "media_cache"),
             "run": ("output_dir", "cache_dir", "save_steps", "save_total_limit", "logging_steps", "resume",
                     "eval_attribution", "save_final")}


def run_identity(config: TrainConfig, start_model: str | Path) -> dict:
    """What a checkpoint in the run directory must have been trained with to be resumed: every option except
    the RESUMABLE ones, and the resolved starting model (e.g. the default run's warm start, named by a hash of
    its inputs)."""
    sections = config.to_dict()
    for section, names in RESUMABLE.items():
        for name in names:
            sections[section].pop(name, None)
    return {"config": sections, "start_model": str(Path(start_model).resolve())}


def _differences(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix.rstrip('.')}: {b!r} -> {a!r}"]


def checkpoint_to_resume(config: TrainConfig, out: Path, identity: dict) -> str | None:
    """The run directory's last checkpoint when it may be resumed, None to start fresh; raises ValueError when
    the checkpoints there come from another experiment (or one that cannot be told), rather than continuing
    a different run silently."""
    resume = last_checkpoint(out) if config.run.resume else None
    if resume is None:
        return None
    remedy = "use another --output-dir, or --no-resume to start over in this one"
    path = out / IDENTITY_NAME
    if not path.is_file():
        raise ValueError(f"{out} holds checkpoints ({Path(resume).name}) but no {IDENTITY_NAME}, so they cannot be "
                         f"matched to this run's options: {remedy}")
    differences = _differences(identity, json.loads(path.read_text()))
    if differences:
        raise ValueError(f"{out} holds checkpoints of a different run ({'; '.join(differences[:5])}"
                         f"{'; ...' if len(differences) > 5 else ''}): {remedy}")
    return resume


def prepare_resume(config: TrainConfig, out: Path, start_model: str | Path) -> str | None:
    """Before any expensive work: the checkpoint to resume (None: start fresh, and record this run's identity
    in the run directory); raises ValueError when the directory holds another run's checkpoints."""
    identity = run_identity(config, start_model)
    resume = checkpoint_to_resume(config, out, identity)
    if resume is None and process_state().is_main_process:
        (out / IDENTITY_NAME).write_text(json.dumps(identity, indent=2))
    return resume


def train_and_record(config: TrainConfig, trainer, out: Path, accuracy_key: str, resume: str | None) -> dict:
    """Train (from `resume`, a checkpoint from `prepare_resume`, when given), write log_history.json and the
    plot on the main process, and return the training statistics of the report."""
    if resume:
        print(f"      resuming from {resume}")
    trainer.train(resume_from_checkpoint=resume)
    final = None
    if config.run.save_final:  # every process takes part (DeepSpeed ZeRO-3 gathers the shards); rank 0 writes
        final = out / FINAL_NAME
        trainer.save_model(str(final))
    history = trainer.state.log_history
    if process_state().is_main_process:
        (out / "log_history.json").write_text(json.dumps(history, indent=2))
        plot_history(history, out / PLOT_NAME, accuracy_key=accuracy_key)
    steps = [h for h in history if "reward" in h]

    def mean(key):
        values = [h[key] for h in steps if key in h]
        return sum(values) / len(values) if values else None

    return {
        "reward_first": steps[0]["reward"] if steps else None,
        "reward_last": steps[-1]["reward"] if steps else None,
        "mean_step_seconds": mean("step_time"),
        "mean_update_ratio": mean("ktr/update_ratio"),
        "mean_attributed_share": mean("ktr/attributed_share"),
        "final_model": str(final) if final else None,
    }


def write_report(output_dir: Path, report: dict) -> Path:
    path = output_dir / REPORT_NAME
    path.write_text(json.dumps(report, indent=2, default=float))
    return path


def run(config: TrainConfig) -> dict:
    """Run the experiment described by `config`; returns the report (also written to report.json)."""
    config.validate()
    start = time.perf_counter()
    if config.data.data:
        report = run_dataset(config)
    else:
        from .world_run import run_synthetic

        report = run_synthetic(config)
    report["wall_seconds"] = time.perf_counter() - start
    state = process_state()
    report["processes"] = state.num_processes
    if state.is_main_process:  # one report per run, whatever the number of processes
        out = Path(config.run.output_dir)
        path = write_report(out, report)
        print(f"report: {path}")
        if (out / PLOT_NAME).exists():
            print(f"plot:   {out / PLOT_NAME}")
    return report


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


def run_dataset(config: TrainConfig) -> dict:
    """Train on Video-R1-format rows: validated rows, media probed once, bad samples skipped and recorded
    (never substituted), rewards by problem_type."""
    from ..data.videor1 import build_prompt, load_videor1, without_row_ref, write_skipped
    from ..models.factory import load_processor
    from ..rewards import build_rewards

    if not config.model.model:
        raise ValueError("model.model (--model) must name a model directory when training on data "
                         "(e.g. a Qwen2.5-VL checkpoint, or one written by `videoktr init-model`)")
    out = start_run_dir(config)
    resume = prepare_resume(config, out, config.model.model)
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
                            reward_funcs)
    train = train_and_record(config, trainer, out, accuracy_key="rewards/accuracy/mean", resume=resume)
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
