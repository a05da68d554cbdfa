"""`videoktr train`: one function that runs an experiment from a TrainConfig and writes its report.

Default run (no data, no model given): the synthetic video world (cached), the small offline model warm-started
on it (cached), then GRPO or Video-KTR on CPU; `report.json` + `training.png` in the run directory.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import NamedTuple

from .config import TrainConfig
from .preflight import preflight

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


# transformers 5 renamed gradient checkpointing to activation checkpointing and warns at every use of the old names,
# which TRL 1.16 still calls at every step (e.g. model.is_gradient_checkpointing): nothing a user can act on
GRADIENT_CHECKPOINTING_DEPRECATION = r".*gradient_checkpointing.* is deprecated"


def grpo_args(config: TrainConfig, suppress_tokens: list[int]):
    """TRL GRPOConfig for this run (CPU unless a GPU is present)."""
    from trl import GRPOConfig

    import warnings

    rl, run = config.rl, config.run
    with warnings.catch_warnings():  # transformers warns that the field TRL declares is deprecated, even when off
        warnings.filterwarnings("ignore", message=GRADIENT_CHECKPOINTING_DEPRECATION, category=FutureWarning)
        return GRPOConfig(
            output_dir=run.output_dir,
            max_steps=-1 if rl.num_train_epochs > 0 else rl.max_steps,
            num_train_epochs=rl.num_train_epochs if rl.num_train_epochs > 0 else 3.0,  # 3.0: TRL's default, unused
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
            save_only_model=run.save_only_model,
            report_to=list(run.report_to) or "none",
            log_completions=run.log_completions,
            use_cpu=cpu_only(),
            bf16=config.model.dtype == "bfloat16",
            fp16=config.model.dtype == "float16",
            gradient_checkpointing=config.model.gradient_checkpointing,
            disable_tqdm=False,
        )


def build_trainer(config: TrainConfig, model, processor, train_rows: list[dict], reward_funcs: list,
                  identity: str = "", base_model: str = "", clock: "WallClock | None" = None):
    """The run's VideoGRPOTrainer; `identity` (RunStart.identity) goes into every checkpoint's completion marker,
    and `clock` (run's WallClock) records the invocation's wall time as it trains."""
    from datasets import Dataset

    from ..attribution import AttributionOptions, SelectionOptions
    from ..models.factory import suppressed_token_ids
    from .card import card_info
    from .console import use_compact_progress
    from .rollout_log import RolloutLogOptions
    from .trainer import (DynamicSamplingOptions, PerceptionOptions, TemporalGRPOOptions, VideoGRPOTrainer,
                          VideoOptions)

    k, d = config.ktr, config.data
    peft = adapters_or_frozen_tower(config, model)
    trainer = VideoGRPOTrainer(
        model=model,
        peft_config=peft,
        processing_class=processor,
        reward_funcs=reward_funcs,
        args=grpo_args(config, suppressed_token_ids(processor.tokenizer)),
        train_dataset=Dataset.from_list(train_rows),
        method=config.rl.method,
        attribution=AttributionOptions(
            signals=tuple(k.signals), visual_strategy=k.visual_strategy, visual_fraction=k.visual_fraction,
            temporal_strategy=k.temporal_strategy, segment_groups=k.segment_groups,
            temporal_samples=k.temporal_samples, distance=k.distance,
            signed=k.signed),
        selection=SelectionOptions(ratio=k.ratio, scope=k.selection, weighting=k.weighting, control=k.control),
        video=VideoOptions(fps=d.fps, min_frames=d.min_frames, max_frames=d.max_frames, backend=d.video_backend),
        loss_normalization=config.rl.loss_normalization,
        mask_kl=k.mask_kl,
        reuse_rollout_logps=k.reuse_rollout_logps,
        seed=config.run.seed,
        tgrpo=TemporalGRPOOptions(alpha=config.rl.tgrpo_alpha, mu=config.rl.tgrpo_mu),
        twgrpo_variant=config.rl.twgrpo_variant,
        perception=PerceptionOptions(**{f.name: getattr(config.rl, f.name)
                                        for f in dataclasses.fields(PerceptionOptions)}),
        dynamic_sampling=DynamicSamplingOptions(enabled=config.rl.dynamic_sampling,
                                                metric=config.rl.dynamic_sampling_metric,
                                                max_batches=config.rl.dynamic_sampling_max_batches),
        run_identity=identity,
        card=card_info(config, base_model or config.model.model),
        rollout_log=RolloutLogOptions(every=config.run.log_rollouts_every, max_responses=config.run.log_rollouts_max),
        callbacks=[learning_signal_callback(config=config)] + ([clock.callback()] if clock is not None else []),
    )
    use_compact_progress(trainer, config.run.output_dir)
    return trainer


def adapters_or_frozen_tower(config: TrainConfig, model):
    """With LoRA (model.lora_r > 0): the peft config that TRL's trainer applies (the reference policy is then the
    model with adapters off). Without: None, after freezing the vision tower if model.vision_tower is frozen."""
    from ..models.lora import freeze_vision_tower, peft_config
    from .config import lora_options

    options = lora_options(config.model)
    if options.enabled:
        return peft_config(model, options)
    if options.vision_mode() == "frozen":
        freeze_vision_tower(model)
    return None


def save_final(config: TrainConfig, trainer, partial: Path) -> None:
    """Write the trained model into `partial` (every process takes part; rank 0 writes). With LoRA: the
    adapter into `partial/adapter`, then (model.merge_lora) the merged plain model into `partial` itself, in
    the dtype the run trained its parameters in (merged in float32 first)."""
    from ..models.lora import base_model, merge_adapter

    from ..models.positions import record_scheme

    core = base_model(trainer.accelerator.unwrap_model(trainer.model))
    state = process_state()
    scheme = config.model.rope_positions
    if core is trainer.accelerator.unwrap_model(trainer.model):
        trainer.save_model(str(partial))
        if state.is_main_process:
            record_scheme(partial, scheme)
        return
    adapter = partial / "adapter"
    trainer.save_model(str(adapter))
    state.wait_for_everyone()
    if state.is_main_process:
        record_scheme(adapter, scheme)
    if config.model.merge_lora and state.is_main_process:
        print(f"      merging the LoRA adapter into {core.name_or_path} (float32) -> final/")
        merge_adapter(adapter, partial, base=core.name_or_path,
                      save_dtype=parameter_dtype(config.model.dtype, state.distributed_type), rope_positions=scheme)


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average (bias-corrected, NaN-skipping) of a noisy per-step series, as TensorBoard's."""
    out, avg, seen = [], 0.0, 0
    for v in values:
        if v == v:  # not NaN
            avg, seen = weight * avg + (1 - weight) * v, seen + 1
        out.append(avg / (1 - weight**seen) if seen else float("nan"))
    return out


# training.png's panels after the rewards: (title, ((logged key, label), ...))
HISTORY_PANELS = (
    ("what the update reaches", (("ktr/update_ratio", "share of tokens updated (KTR mask)"),
                                 ("frac_reward_zero_std", "share of prompt groups without gradient"))),
    ("KL to the reference policy", (("kl", "KL to the reference policy"),)),
    ("clip ratio", (("clip_ratio", "clip ratio"),)),
)
# why a series may be absent or 0 throughout, said in the figure's note
ABSENT_HINTS = {"kl": "rl.beta 0: no KL term", "clip_ratio": "one policy update per batch (rl.num_iterations 1)"}


def history_panels(log_history: list[dict], accuracy_key: str | None) -> tuple[list[tuple[str, list]], list[str]]:
    """What training.png shows: the rewards panel, then each HISTORY_PANELS panel with the series the run logged
    with a value other than 0 (a panel left with no series is not drawn), and a note per series left out
    ("kl: not logged (rl.beta 0: no KL term)", "clip_ratio: 0 at every step (...)")."""
    logs = [h for h in log_history if "reward" in h]

    def values(key):
        return [float(h[key]) for h in logs if h.get(key) is not None and float(h[key]) == float(h[key])]

    rewards = [("reward", "mean reward")] + ([(accuracy_key, "accuracy reward")] if accuracy_key else [])
    panels, notes = [("rewards", rewards)], []
    for title, series in HISTORY_PANELS:
        kept = []
        for key, label in series:
            found = values(key)
            hint = f" ({ABSENT_HINTS[key]})" if key in ABSENT_HINTS else ""
            if not found:
                if key != "ktr/update_ratio":  # not a masking method: nothing to say
                    notes.append(f"{key}: not logged{hint}")
            elif all(v == 0 for v in found):
                notes.append(f"{key}: 0 at every step{hint}")
            else:
                kept.append((key, label))
        if kept:
            panels.append((title, kept))
    return panels, notes


def plot_history(log_history: list[dict], path: Path, accuracy_key: str | None,
                 heldout: tuple[float, float] | None = None) -> Path:
    """The run's curves as a PNG, each series raw (faint) under its smoothed curve: rewards (and held-out accuracy
    before and after, when the run measured it), then what the run logged of the share of updated tokens and of
    prompt groups without gradient, the KL to the reference and the clip ratio (`history_panels`: series never
    logged, or 0 throughout, are named in a note under the panels instead of drawn)."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = [h for h in log_history if "reward" in h]
    steps = [h["step"] for h in logs]
    panels, notes = history_panels(log_history, accuracy_key)

    def draw(ax, key, label):
        values = [float("nan") if h.get(key) is None else float(h[key]) for h in logs]
        if all(v != v for v in values):
            return
        line, = ax.plot(steps, smooth(values), label=label)
        ax.plot(steps, values, color=line.get_color(), alpha=0.25, linewidth=0.8)

    cols = min(2, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.5 * rows + (0.4 if notes else 0)), sharex=True,
                             squeeze=False)
    flat = list(axes.flat)
    for ax, (title, series) in zip(flat, panels):
        for key, label in series:
            draw(ax, key, label)
        if title == "rewards" and heldout is not None and steps:
            ax.scatter([steps[0], steps[-1]], list(heldout), marker="D", color="black", zorder=3,
                       label=f"held-out accuracy {heldout[0]:.3f} -> {heldout[1]:.3f}")
        if title == "what the update reaches":
            ax.set_ylim(-0.02, 1.02)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in flat[len(panels):]:
        fig.delaxes(ax)
    for ax in flat[:len(panels)][-cols:]:
        ax.set_xlabel("optimizer step")
        ax.xaxis.set_tick_params(labelbottom=True)
    if notes:
        fig.text(0.01, 0.01, "not drawn: " + "; ".join(notes), fontsize=8, color="#555555")
    fig.tight_layout(rect=(0, 0.04 if notes else 0, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parameter_dtype(compute_dtype: str, distributed_type=None) -> str:
    """The dtype a run's trainable parameters are loaded in, for `model.dtype` = `compute_dtype`.

    bf16/fp16 training needs fp32 master weights: an optimizer step on a bf16 tensor rounds updates below bf16's
    resolution away (AdamW at lr 2e-6 left 99.9% of a bf16 tensor's entries unchanged after 10 steps, 0.3% of an
    fp32 copy's). DeepSpeed keeps fp32 master weights in its optimizer, so its modules stay in `compute_dtype`;
    everywhere else (one process, DDP, FSDP) the parameters are fp32 and the forward runs under autocast in
    `compute_dtype` (GRPOConfig's bf16/fp16), as accelerate's mixed precision expects."""
    from accelerate.utils import DistributedType

    if compute_dtype == "float32" or distributed_type == DistributedType.DEEPSPEED:
        return compute_dtype
    return "float32"


def resolve_auto_dtype(config: TrainConfig) -> None:
    """model.dtype "auto" -> the checkpoint's own dtype (its config.json), so the run (and its config.json and
    identity) names the dtype it trains in; the default run's offline model is float32."""
    if config.model.dtype != "auto":
        return
    found = None
    if config.model.model:
        raw = json.loads((Path(config.model.model) / "config.json").read_text())
        found = raw.get("dtype") or raw.get("torch_dtype") or (raw.get("text_config") or {}).get("dtype")
    config.model.dtype = found if found in ("float32", "bfloat16", "float16") else "float32"


def load_training_model(config: TrainConfig, path: str | Path):
    """The model to train, with parameters in `parameter_dtype` for this run's engine."""
    from ..models.factory import load_model

    return load_model(path, dtype=parameter_dtype(config.model.dtype, process_state().distributed_type),
                      rope_positions=config.model.rope_positions)


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
    """Set the run's CPU threads, seed it and create its directory (`prepare_resume` records the resolved
    configuration there)."""
    import torch

    from .threads import apply_cpu_threads

    apply_cpu_threads(config.run.cpu_threads)
    torch.manual_seed(config.run.seed)
    out = Path(config.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


IDENTITY_NAME = "run_identity.json"
WALL_TIME_NAME = "wall_time.json"  # seconds of every invocation of the run, so the report can total them
# what stays when a fresh run takes over a directory: the media-check cache (results per file, not per run) and
# the earlier runs already moved aside
KEPT_ON_FRESH_START = ("media_check.jsonl",)
SUPERSEDED_PREFIX = "superseded-"
# option fields that are paths: the run identity compares them resolved (a job script may cd elsewhere)
PATH_FIELDS = {"model": ("model", "warmstart_dir"), "data": ("data", "data_root")}
# options a resumed run may change: how long it runs, how it saves and logs, where things are written
RESUMABLE = {"rl": ("max_steps", "num_train_epochs"), "data": ("media_workers", "media_cache"),
             "run": ("output_dir", "cache_dir", "save_steps", "save_total_limit", "save_only_model", "logging_steps",
                     "resume", "eval_attribution", "save_final", "log_rollouts_every", "log_rollouts_max",
                     "cpu_threads")}


def run_identity(config: TrainConfig, start_model: str | Path) -> dict:
    """What a checkpoint in the run directory must have been trained with to be resumed: every option except
    the RESUMABLE ones, and the resolved starting model (e.g. the default run's warm start, named by a hash of
    its inputs)."""
    sections = config.to_dict()
    for section, names in PATH_FIELDS.items():
        for name in names:
            if sections[section].get(name):
                sections[section][name] = str(Path(sections[section][name]).resolve())
    for section, names in RESUMABLE.items():
        for name in names:
            sections[section].pop(name, None)
    return {"config": sections, "start_model": str(Path(start_model).resolve())}


def identity_digest(identity: dict) -> str:
    """A short digest of a run identity: what each checkpoint's completion marker records."""
    import hashlib

    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _differences(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix.rstrip('.')}: {b!r} -> {a!r}"]


def checkpoint_to_resume(config: TrainConfig, out: Path, identity: dict) -> str | None:
    """The newest complete checkpoint this run wrote in `out` (None: start fresh), after saying which newer ones
    it skips and why (incomplete: killed while saving). Raises ValueError when the directory holds complete
    checkpoints of another experiment, rather than continuing a different run or discarding it silently."""
    from .checkpoint import resumable_checkpoint

    if not config.run.resume:
        return None
    resume, skipped = resumable_checkpoint(out, identity_digest(identity))
    for name, reason in skipped:
        print(f"      not resuming {out / name}: {reason}")
    if resume is not None:
        return str(resume)
    others = [name for name, reason in skipped if reason.startswith("written by another run")]
    if others:
        recorded = out / IDENTITY_NAME
        differences = _differences(identity, json.loads(recorded.read_text())) if recorded.is_file() else []
        what = "; ".join(differences[:5]) + ("; ..." if len(differences) > 5 else "") if differences else others[0]
        raise ValueError(f"{out} holds checkpoints of a different run ({what}): use another --output-dir, or "
                         f"--no-resume to start over in this one (the earlier run's files are then moved to "
                         f"{out / SUPERSEDED_PREFIX}<time>/, nothing is deleted)")
    return None


def move_aside(out: Path) -> Path | None:
    """Move an earlier run's files out of the way of a fresh start: into `<out>/superseded-<UTC time>/`, all but
    the media-check cache and earlier superseded folders. Returns that folder, None when there was nothing."""
    import shutil
    from datetime import datetime, timezone

    old = [p for p in out.iterdir() if p.name not in KEPT_ON_FRESH_START and not p.name.startswith(SUPERSEDED_PREFIX)
           and not p.name.startswith(".")]
    if not old:
        return None
    dest = out / f"{SUPERSEDED_PREFIX}{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%f')}"
    dest.mkdir()
    for p in old:
        shutil.move(str(p), str(dest / p.name))
    return dest


class RunStart(NamedTuple):
    resume: str | None  # the checkpoint to continue from, None for a fresh start
    identity: str  # digest of the run identity, recorded in every checkpoint's completion marker


class RunComplete(Exception):
    """The run directory holds this run finished (its last step's checkpoint, report and final model): `run`
    says so and returns the report without doing anything."""

    def __init__(self, out: Path, steps: int, report: dict):
        super().__init__(f"{out} is already complete: {steps} of {steps} steps")
        self.out, self.steps, self.report = out, steps, report


def planned_steps(config: TrainConfig, checkpoint: str | Path) -> int | None:
    """The optimizer steps this configuration trains in all: rl.max_steps, or (rl.num_train_epochs > 0) the steps
    that the checkpoint's run planned for the same number of epochs (its completion marker); None when unknown."""
    from .checkpoint import read_marker

    if config.rl.num_train_epochs <= 0:
        return config.rl.max_steps
    length = read_marker(checkpoint).get("length") or {}
    if length.get("max_steps") == -1 and length.get("num_train_epochs") == config.rl.num_train_epochs:
        return length.get("planned_steps")
    return None


def finished_report(config: TrainConfig, out: Path, checkpoint: str | Path) -> RunComplete | None:
    """RunComplete when `checkpoint` (the one to resume) is the run's last step and the run wrote its report for
    that step (and final/, when run.save_final): re-running the same command then has nothing to do. A run killed
    between its last checkpoint and its report is not complete (the rerun writes them without training)."""
    from .checkpoint import read_marker

    step, planned = read_marker(checkpoint).get("step"), planned_steps(config, checkpoint)
    if step is None or planned is None or step < planned:
        return None
    try:
        report = json.loads((out / REPORT_NAME).read_text())
    except (OSError, ValueError):
        return None
    if report.get("steps") != step or (config.run.save_final and not (out / FINAL_NAME).is_dir()):
        return None
    return RunComplete(out, step, report)


def prepare_resume(config: TrainConfig, out: Path, start_model: str | Path) -> RunStart:
    """Before any expensive work: the checkpoint to resume, or a fresh start that moves an earlier run's files
    aside (`move_aside`) and records this run's identity; the resolved configuration is written either way.
    Raises ValueError when the directory holds another run's checkpoints and --no-resume was not given, and
    RunComplete when the checkpoint to resume ends the run and its report is written (`finished_report`)."""
    from .checkpoint import write_json_atomic

    identity = run_identity(config, start_model)
    resume = checkpoint_to_resume(config, out, identity)
    done = finished_report(config, out, resume) if resume else None
    if done is not None:
        raise done
    state = process_state()
    if state.is_main_process:
        if resume is None:
            moved = move_aside(out)
            if moved is not None:
                print(f"      starting fresh: the earlier contents of {out} were moved to {moved}")
            write_json_atomic(out / IDENTITY_NAME, identity)
        write_json_atomic(out / "config.json", config.to_dict())
    state.wait_for_everyone()  # no process reads the directory while the main process moves things
    return RunStart(resume, identity_digest(identity))


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


def training_summary(history: list[dict], method: str, window: int = 10) -> dict:
    """The report's training statistics from the whole log history (a resumed run's history includes the
    steps of earlier invocations): rewards at the start and the end (means over `window` logged steps), the
    learning signal, step time, for the masking methods (and VPPO) the update ratio, for PAPO its perception KL,
    and with dynamic sampling the mean counts it logged per step."""
    steps = [h for h in history if "reward" in h]

    def mean(key, rows=steps):
        values = [h[key] for h in rows if h.get(key) is not None]
        return sum(values) / len(values) if values else None

    out = {
        "logged_steps": len(steps),
        "reward_start": mean("reward", steps[:window]),
        "reward_end": mean("reward", steps[-window:]),
        "mean_step_seconds": mean("step_time"),
        "learning_signal": learning_signal(steps),
    }
    if method in ("ktr", "entropy"):
        out["mean_update_ratio"] = mean("ktr/update_ratio")
        out["mean_attributed_share"] = mean("ktr/attributed_share")
    if method == "vppo":
        out["mean_update_ratio"] = mean("vppo/update_ratio")
    if method == "papo":
        out["mean_perception_kl"] = mean("papo/perception_kl")
    if any("dynamic_sampling/resampled_groups" in h for h in steps):  # rl.dynamic_sampling: per logged step
        out["dynamic_sampling"] = {name: mean(f"dynamic_sampling/{name}") for name in (
            "informative_share", "resampled_groups", "sampled_groups", "generation_batches", "unfilled_groups")}
    return out


def no_gradient(log: dict) -> bool:
    """Whether a logged step carried no learning signal: every prompt group's responses had equal rewards (zero
    advantages: loss 0, no update), or the gradient norm was 0."""
    return log.get("frac_reward_zero_std") == 1.0 or log.get("grad_norm") == 0.0


def learning_signal(steps: list[dict]) -> dict:
    """How much of the run could learn at all: logged steps without any gradient, and the mean share of prompt
    groups whose responses all got the same reward (TRL's frac_reward_zero_std)."""
    n = len(steps)
    dead = sum(no_gradient(h) for h in steps)
    zero_std = [h["frac_reward_zero_std"] for h in steps if h.get("frac_reward_zero_std") is not None]
    return {"steps_without_gradient": dead, "share_steps_without_gradient": dead / n if n else None,
            "mean_share_groups_without_gradient": sum(zero_std) / len(zero_std) if zero_std else None}


NO_SIGNAL_HINT = ("every prompt group's responses got the same reward, so the advantages are 0 and nothing is "
                  "updated. Likely: the data is too hard or too easy for this model (all wrong or all right), or "
                  "the reward never parses its answers (see rewards/*/mean and a few completions)")


WORLD_NO_SIGNAL_NOTE = ("every prompt group's responses got the same reward. Expected on the synthetic world: most "
                        "of its RL prompts are ones the warm start answers right in every sample or in none (82% of "
                        "them for the default run's warm start); data.world_rl_filter keeps only the others, which did "
                        "not raise held-out accuracy (docs/default-run.md)")


def no_signal_message(config: TrainConfig, dead: int, span: str) -> str:
    """The console line for `dead` steps of `span` ("500 logged steps") without a learning signal: a warning on
    data, where it means something is likely wrong; a note on the synthetic world, its difficulty mix."""
    if config.data.data:
        return f"warning: {dead} of {span} had no learning signal: {NO_SIGNAL_HINT}"
    return f"note: {dead} of {span} had no gradient: {WORLD_NO_SIGNAL_NOTE}"


def learning_signal_callback(window: int = 20, threshold: float = 0.8, every: int = 100, config=None):
    """A TrainerCallback that warns on the console when most of the last `window` logged steps had no learning
    signal (`no_gradient`), at most once every `every` steps."""
    from transformers import TrainerCallback

    class LearningSignalMonitor(TrainerCallback):
        def __init__(self):
            self.recent: list[bool] = []
            self.warned_at = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "reward" not in logs:
                return
            self.recent = (self.recent + [no_gradient(logs)])[-window:]
            dead = sum(self.recent)
            if (len(self.recent) == window and dead >= threshold * window and state.is_world_process_zero
                    and (self.warned_at is None or state.global_step - self.warned_at >= every)):
                self.warned_at = state.global_step
                message = (no_signal_message(config, dead, f"the last {window} logged steps") if config is not None
                           else f"{dead} of the last {window} logged steps had no learning signal: {NO_SIGNAL_HINT}")
                print(f"\nvideoktr: {message}", flush=True)

    return LearningSignalMonitor()


def write_report(output_dir: Path, report: dict) -> Path:
    from .checkpoint import write_json_atomic

    return write_json_atomic(output_dir / REPORT_NAME, report)


class WallClock:
    """This invocation's seconds in the run's `wall_time.json` (one entry per invocation), written as it goes:
    when training starts, at each checkpoint, at most every `every` seconds between them, and at the end, so
    that an invocation killed half-way still counts in the total that a later invocation's report gives."""

    def __init__(self, out: Path, started: float, every: float = 10.0):
        import os

        self.out, self.started, self.every = Path(out), started, every
        self.id = f"{os.getpid()}-{time.time_ns()}"
        self.written_at: float | None = None

    def record(self, seconds: float | None = None) -> float:
        """Write this invocation's seconds so far (or `seconds`); return the total over every invocation."""
        from .checkpoint import write_json_atomic

        path = self.out / WALL_TIME_NAME
        try:
            invocations = json.loads(path.read_text())["invocations"] if path.is_file() else []
        except (OSError, ValueError, KeyError, TypeError):
            invocations = []
        # entries of older videoktr versions are bare numbers
        mine = {"id": self.id, "seconds": time.perf_counter() - self.started if seconds is None else seconds}
        invocations = [e for e in invocations if not (isinstance(e, dict) and e.get("id") == self.id)] + [mine]
        if self.out.is_dir():
            write_json_atomic(path, {"invocations": invocations})
        self.written_at = time.perf_counter()
        return sum(e["seconds"] if isinstance(e, dict) else float(e) for e in invocations)

    def callback(self):
        """A TrainerCallback that records on the main process as training goes."""
        from transformers import TrainerCallback

        clock = self

        class WallTime(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                if state.is_world_process_zero:
                    clock.record()

            def on_save(self, args, state, control, **kwargs):
                if state.is_world_process_zero:
                    clock.record()

            def on_step_end(self, args, state, control, **kwargs):
                if state.is_world_process_zero and (clock.written_at is None
                                                    or time.perf_counter() - clock.written_at >= clock.every):
                    clock.record()

        return WallTime()


def run(config: TrainConfig) -> dict:
    """Run the experiment described by `config`; returns the report (also written to report.json)."""
    import warnings

    warnings.filterwarnings("ignore", message=GRADIENT_CHECKPOINTING_DEPRECATION, category=FutureWarning)
    preflight(config)  # every option checked (types, ranges, paths, model config) before any expensive work
    resolve_auto_dtype(config)
    start = time.perf_counter()
    clock = WallClock(Path(config.run.output_dir), start)
    try:
        if config.data.data:
            report = run_dataset(config, clock)
        else:
            from .world_run import run_synthetic

            report = run_synthetic(config, clock)
    except RunComplete as done:
        if process_state().is_main_process:
            print(f"{done}: nothing to do (report: {done.out / REPORT_NAME}). Raise --max-steps to train it "
                  f"further, or --no-resume to start over (the earlier files are moved aside, not deleted).")
        return done.report
    report["wall_seconds"] = time.perf_counter() - start
    state = process_state()
    report["processes"] = state.num_processes
    if state.is_main_process:  # one report per run, whatever the number of processes
        out = Path(config.run.output_dir)
        report["wall_seconds_total"] = clock.record(report["wall_seconds"])  # with every earlier invocation's
        signal = (report.get("train") or {}).get("learning_signal") or {}
        if signal.get("share_steps_without_gradient") and signal["share_steps_without_gradient"] >= 0.5:
            print(no_signal_message(config, signal["steps_without_gradient"],
                                    f"{report['train']['logged_steps']} logged steps"))
        path = write_report(out, report)
        from .summary import add_results_to_card, console_table

        final = (report.get("train") or {}).get("final_model")
        if final:
            add_results_to_card(Path(final), report)
        print("\n" + console_table(report) + "\n")
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
