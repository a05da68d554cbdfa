"""What a run trains: the model (`load_training_model`, in `parameter_dtype`), TRL's GRPOConfig (`grpo_args`), the
VideoGRPOTrainer with its attribution, selection and logging options (`build_trainer`), LoRA or the frozen vision
tower (`adapters_or_frozen_tower`), and the trained model written to `final/` (`save_final`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from .config import TrainConfig

if TYPE_CHECKING:
    from .rundir import WallClock



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

    from .rundir import cpu_only

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
    from .report import learning_signal_callback
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
        select_in_loss=k.select_in_loss,
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
    from .rundir import process_state

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
    from .rundir import process_state

    return load_model(path, dtype=parameter_dtype(config.model.dtype, process_state().distributed_type),
                      rope_positions=config.model.rope_positions)
