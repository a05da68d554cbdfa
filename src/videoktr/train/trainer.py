"""A video-aware GRPO trainer on TRL, with Video-KTR's key-token mask (paper Eq. 2).

TRL 1.16's GRPOTrainer wires images only: a video in the prompt reaches generation but is dropped from the
old/reference/policy log-prob passes. `VideoGRPOTrainer` closes that gap with three overrides:

- `_tokenize_prompts`: decodes each prompt's video with the project's loader and runs the processor with fps
  metadata (TRL's tokenize path drops it), so `second_per_grid_ts` is right in every pass; it records the
  video of every row (`RowVideo`), which travels with the batch through TRL's buffering and shuffling.
- `_get_per_token_logps_and_entropies` (old and reference passes) and `_compute_loss` (policy pass): the
  vision tower runs once per unique clip of the batch, its outputs are scattered to the rows through
  `mm_encoder_outputs=`, and TRL's fused LM head returns per-token log-probs and entropies.
- `_generate_and_score_completions`: adds explicit per-row fields to TRL's rollouts (each row's media, its
  prompt group and, for "ktr"/"entropy"/"twgrpo", the token weights), so they travel with the rows through
  TRL's shuffling and splitting. The key-token mask is computed there, once per rollout over whole prompt
  groups, from one eval-mode no-grad pass (`attribute`) that evaluates the unperturbed, visually and temporally
  perturbed inputs together; `_compute_loss` applies `core.masked_clipped_loss` (Eq. 2) with it.
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import torch
from trl import GRPOTrainer

from ..attribution import (AttributionOptions, SelectionOptions, attribute, eval_mode, scores_from_logps,
                           select_key_tokens)
from ..core import (constant_groups, fill_from_rounds, group_position_divergence_source, group_position_kl,
                    k3_dependency, logprobs_and_entropy, masked_clipped_loss, negative_logp_mean, papo_perception_kl,
                    top_ratio_mask, tw_grpo_source_weights, tw_grpo_weights, vppo_advantage_scaling)
from ..data.video import read_video
from ..models.adapters import adapter_for, encode_each_item_once
from ..models.lora import base_model
from ..models.positions import install as install_positions
from ..models.positions import record_scheme, scheme_of
from .checkpoint import CHECKPOINT_PREFIX, load_checkpoint_weights, mark_complete, weight_files
from .compat import check_trl_options
from .distributed import all_gather_1d, any_process, full_parameters, gathered_parameters
from .rollout import MediaInjectingLLM, check_vllm_budget, vllm_requests
from .rollout_log import RolloutLog, RolloutLogOptions


@dataclass
class RowVideo:
    """The visual input of one prompt row (a video, or an image): processor outputs for it alone."""

    key: str  # identifies the clip (its path): equal keys are encoded once per pass
    pixels: torch.Tensor  # [t*h*w, patch_dim]
    grid: torch.Tensor  # [1, 3] (t, h, w) in patches
    seconds_per_group: torch.Tensor | None  # [1] second_per_grid_ts (None for images and e.g. Qwen2-VL)
    kind: str = "video"  # "video" or "image"


@dataclass
class EncodedMedia:
    """Encoder outputs of one pass, per row in row order: the rows' videos and their images."""

    videos: list[RowVideo]
    video_features: list[torch.Tensor]
    images: list[RowVideo]
    image_features: list[torch.Tensor]

    @property
    def video_keys(self) -> list[str]:
        return [r.key for r in self.videos]

    def forward_kwargs(self, adapter, device) -> dict:
        """mm_encoder_outputs + grids for the model forward."""
        if not self.videos and not self.images:
            return {}
        kwargs = adapter.media_kwargs(list(self.video_features), list(self.image_features))
        if self.videos:
            kwargs.update(_grid_kwargs(self.videos, device))
        if self.images:
            kwargs["image_grid_thw"] = torch.cat([r.grid for r in self.images]).to(device)
        return kwargs


@dataclass
class VideoOptions:
    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 16
    backend: str = "pyav"  # data.video.VIDEO_BACKENDS


def media_parts(prompt, kind: str = "video") -> list[str]:
    """Sources of one media kind named in a conversational prompt ([{"type": "video", "video": path}, ...])."""
    out = []
    for message in prompt:
        content = message.get("content")
        if isinstance(content, list):
            out += [part[kind] for part in content if part.get("type") == kind]
    return out


METHODS = ("grpo", "ktr", "entropy", "twgrpo", "tgrpo", "vppo", "papo")
WEIGHTED_METHODS = ("ktr", "entropy", "twgrpo", "vppo")  # methods whose rollouts carry `token_weights`
TWGRPO_VARIANTS = ("source", "video_ktr_code", "kl_to_mean")  # see core.baselines


@dataclass
class TemporalGRPOOptions:
    """T-GRPO (Video-R1): G/2 extra responses per prompt on temporally shuffled frames (scored, not trained on);
    if the ordered group's accuracy p >= mu * p_shuffled, ordered responses with accuracy > 0.1 get +alpha."""

    alpha: float = 0.3
    mu: float = 0.8
    reward_index: int = 0  # position of the accuracy reward among the reward functions


@dataclass
class DynamicSamplingOptions:
    """DAPO's dynamic sampling (core.perception.constant_groups / fill_from_rounds): groups whose rewards are all
    equal are replaced by groups of freshly drawn training prompts, up to `max_batches` generation batches."""

    enabled: bool = False
    metric: str = "reward"  # "reward" (the weighted reward of the advantages) or "accuracy" (reward function 0)
    max_batches: int = 10  # generation batches per step, the first included (verl's max_num_gen_batches)


@dataclass
class PerceptionOptions:
    """VPPO's and PAPO's settings (see core.perception for the sources and formulas)."""

    vppo_ratio: float = 0.4
    vppo_dependency: str = "kl"  # "kl" (paper: full next-token distributions) or "k3" (code: sampled token)
    vppo_advantage_min: float = 0.9
    vppo_entropy_penalty: float = 0.06
    papo_coef: float = 0.02
    papo_entropy_coef: float = 0.05
    papo_masked_entropy_coef: float = 0.05
    papo_kl_clip: float = 0.0


class VideoGRPOTrainer(GRPOTrainer):
    """GRPOTrainer with videos in every pass. Methods: "grpo" (plain, Eq. 1), "ktr" (key-token mask, Eq. 2),
    "entropy" (top-r entropy tokens only, "Beyond the 80/20 rule"), "twgrpo" (TW-GRPO token weights),
    "tgrpo" (Video-R1's T-GRPO temporal reward bonus), "vppo" (VPPO: advantage reweighted by the response's
    visual dependency, gradient on its top-k dependent tokens), "papo" (PAPO: GRPO with the implicit perception
    loss, through a second, perturbed policy pass). With `dynamic_sampling`, any method: DAPO's group resampling.

    Extra arguments: method, attribution (AttributionOptions), selection (SelectionOptions), video
    (VideoOptions), loss_normalization ("sequence" = Eq. 2), mask_kl, seed, rollout_log (RolloutLogOptions: a
    sample of every N-th step's rollouts in <output_dir>/rollouts/, see train/rollout_log.py),
    reuse_rollout_logps and select_in_loss (where the scores' unperturbed side comes from: `reuses_old_policy_pass`,
    `selects_in_loss`).
    """

    def __init__(self, *args, method: str = "ktr", attribution: AttributionOptions | None = None,
                 selection: SelectionOptions | None = None, video: VideoOptions | None = None,
                 loss_normalization: str = "sequence", mask_kl: bool = False, seed: int = 0,
                 reuse_rollout_logps: bool = True, select_in_loss: bool = True,
                 tgrpo: TemporalGRPOOptions | None = None, twgrpo_variant: str = "source", run_identity: str = "",
                 card: dict | None = None, rollout_log: RolloutLogOptions | None = None,
                 perception: PerceptionOptions | None = None, dynamic_sampling: DynamicSamplingOptions | None = None,
                 **kwargs):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if twgrpo_variant not in TWGRPO_VARIANTS:
            raise ValueError(f"twgrpo_variant must be one of {TWGRPO_VARIANTS}, got {twgrpo_variant!r}")
        self.twgrpo_variant = twgrpo_variant
        self.run_identity = run_identity  # recorded in every checkpoint's completion marker (train/checkpoint.py)
        self.card = card  # train.card.card_info: what the model card says (None: TRL's card)
        if kwargs.get("args") is not None:  # TRL options our loss would silently ignore are refused up front
            check_trl_options(kwargs["args"])
        super().__init__(*args, **kwargs)
        self.method = method
        self.attribution_options = attribution or AttributionOptions()
        if method == "entropy":
            self.attribution_options.signals = ("entropy",)
        self.attribution_options.temperature = self.temperature
        self.attribution_options.validate()
        self.selection_options = selection or SelectionOptions()
        self.selection_options.validate()
        self.video_options = video or VideoOptions()
        self.loss_normalization = loss_normalization
        self.mask_kl = mask_kl
        self.reuse_rollout_logps = reuse_rollout_logps
        self.select_in_loss = select_in_loss
        # TRL's old-policy pass of the rollout being generated: (log-probs, entropies) of each call of
        # _get_per_token_logps_and_entropies made while it runs (None: not capturing), see _old_policy_entropies
        self._captured_passes: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.adapter = adapter_for(self._core())
        if getattr(self, "ref_model", None) is not None:  # TRL loads the reference from the checkpoint path itself:
            # it must compute the policy's 3D position scheme (models.positions), or the KL compares two schemes
            install_positions(self.accelerator.unwrap_model(self.ref_model), scheme_of(self._core()))
        if self.is_fsdp_enabled:
            self._wrap_vision_tower_as_fsdp_unit()
        elif self.is_deepspeed_enabled and self.accelerator.num_processes > 1:
            refuse_text_rows_when_sharded(self.train_dataset, "DeepSpeed ZeRO")
        handler = getattr(self.accelerator, "ddp_handler", None)
        if self.accelerator.num_processes > 1 and not self.lockstep and handler is not None:
            # DDP: a pass without media (a text-only batch) leaves the vision tower unused on that process; DDP
            # must then know to reduce zero gradients for it (transformers turns this off under gradient
            # checkpointing; with non-reentrant checkpointing, the default, both work together)
            handler.find_unused_parameters = True
        self.tgrpo_options = tgrpo or TemporalGRPOOptions()
        self.perception_options = perception or PerceptionOptions()
        self.dynamic_sampling = dynamic_sampling or DynamicSamplingOptions()
        if self.dynamic_sampling.metric not in ("reward", "accuracy"):
            raise ValueError("dynamic sampling metric must be 'reward' or 'accuracy', "
                             f"got {self.dynamic_sampling.metric!r}")
        # fresh prompts of dynamic sampling: the run's seed, a stream of its own per process
        self._resample_generator = torch.Generator().manual_seed(seed + 1000 * self.accelerator.process_index + 13)
        self._local_rewards: torch.Tensor | None = None  # this process's rows' rewards [B, F] of the last rollout
        self._pending: EncodedPrompts | None = None  # the batch being generated for (None: no media in it)
        self._rows: list[RowVideo | None] | None = None  # each row's video/image in the batch being generated for
        self._attr_generator = torch.Generator().manual_seed(seed + 1000 * self.accelerator.process_index)
        # the draws of a control (selection.control "random"/"complement"): the run's seed, its own stream, so that
        # a control run's attribution (temporal permutations) is drawn as the uncontrolled run's
        self._control_generator = torch.Generator().manual_seed(seed + 1000 * self.accelerator.process_index + 7)
        self._donors: list[tuple[str, torch.Tensor]] = []  # (clip key, features) of earlier batches ("replace")
        # decoded clips of the current batches (the G copies of a prompt decode once); small, since full-resolution
        # frames of real videos take tens of MB each
        self._load_clip = lru_cache(maxsize=16)(self._decode)
        self._rollout_capture: dict | None = None  # what a logged step's attribution leaves for the rollout log
        self.rollout_log = self._make_rollout_log(rollout_log) if rollout_log and rollout_log.every > 0 else None
        if self.use_vllm:
            self._prepare_vllm()

    # ----------------------------------------------------------------------------------------------------------
    # Prompts: decode videos, processor with fps metadata, remember each row's video
    def _decode(self, path: str):
        o = self.video_options
        return read_video(path, target_fps=o.fps, min_frames=o.min_frames, max_frames=o.max_frames, backend=o.backend)

    def _tokenize_prompts(self, prompts: list):
        self._pending = encode_prompts(self.processing_class, self.adapter, prompts, self._load_clip)
        self._rows = [None] * len(prompts) if self._pending is None else self._pending.rows
        if self._pending is None:
            return super()._tokenize_prompts(prompts)
        return self._pending.prompt_ids, None, self._pending.fields

    def _core(self, model=None):
        """The transformers model inside the engine's wrapper and, with LoRA, inside peft's (adapters stay
        injected and active): what reaches into the vision tower, the decoder and the LM head goes through it."""
        return base_model(self.accelerator.unwrap_model(self.model if model is None else model))

    @property
    def lockstep(self) -> bool:
        """Whether every process must run the same forwards, in the same order, whatever its data: several
        processes under ZeRO-3 or FSDP, where each module's forward gathers its weights collectively (a forward
        one process skips hangs the others) and generation's synced steps all-reduce. Then attribution runs its
        forwards on a stand-in row when a process has no response to attribute, and a process without a video
        prompt joins T-GRPO's sampling. DDP's forwards and generation have no collectives, so none of that work
        is done there. (The vision tower runs once per pass with media; DDP reduces zero gradients for it on a
        process whose pass had none, and ZeRO-3/FSDP refuse text-only rows among media rows.)"""
        return self.accelerator.num_processes > 1 and bool(self.is_fsdp_enabled or self.is_deepspeed_enabled)

    def _wrap_vision_tower_as_fsdp_unit(self) -> None:
        """FSDP: the vision tower becomes an FSDP unit of its own. The trainer runs it outside the model's own
        forward (once per clip, its outputs passed back through `mm_encoder_outputs=`); as a unit it gathers its
        weights in its own forward and reduce-scatters its gradients in its own backward, instead of using the
        root's parameters (patch embedding, merger), which are shards outside the root's forward.

        Every prompt must then have a video or an image: a process whose pass has no media would skip the
        tower while the others run it, and FSDP's collectives would no longer match (tried: the backward
        deadlocks); a text-only row is refused here, before any work."""
        plugin = self.accelerator.state.fsdp_plugin
        vision = type(self._core().model.visual).__name__
        names = list(plugin.transformer_cls_names_to_wrap or [])
        if vision not in names:
            plugin.transformer_cls_names_to_wrap = names + [vision]
        refuse_text_rows_when_sharded(self.train_dataset, "FSDP")

    # ----------------------------------------------------------------------------------------------------------
    # Resume: load the checkpoint's weights under the model's names (transformers loads none of a Qwen-VL's)
    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = self.model if model is None else model
        if self.is_deepspeed_enabled or self.is_fsdp_enabled or not weight_files(resume_from_checkpoint) \
                or hasattr(model, "peft_config"):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)  # their own formats
        load_checkpoint_weights(model, resume_from_checkpoint)

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """videoktr's model card (train/card.py) in the output directory: base model, method and options, data,
        and how to run the model on a video; TRL's when the trainer was built without `card`."""
        if self.card is None:
            return super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if self.is_world_process_zero():
            from .card import model_card

            (Path(self.args.output_dir) / "README.md").write_text(model_card(self.card, self.state.global_step))

    def _save_checkpoint(self, model, trial):
        """TRL's checkpoint, then (once every process has written its part) the completion marker: a checkpoint
        without it (a kill while saving) is never resumed (run.checkpoint_to_resume skips it and says so)."""
        super()._save_checkpoint(model, trial)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"{CHECKPOINT_PREFIX}{self.state.global_step}"
            if self.card is not None:  # the prompt it trains with, for `videoktr eval --model <checkpoint>`
                from ..models.info import write_model_info
                from .card import model_info

                write_model_info(folder, model_info(self.card, self.state.global_step))
            record_scheme(folder, scheme_of(self._core()))  # the 3D positions it trained under (adapters: a file)
            mark_complete(folder, self.run_identity, self.state.global_step,
                          length={"max_steps": self.args.max_steps, "num_train_epochs": self.args.num_train_epochs,
                                  "planned_steps": self.state.max_steps})

    def _run_epoch(self, *args, **kwargs):
        """transformers' epoch, except when resumed at the run's last step: its loop trains one step before it
        checks the step count (a run resumed from checkpoint-60 of 60 trained step 61); here it trains none."""
        if self.state.max_steps > 0 and self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    # ----------------------------------------------------------------------------------------------------------
    # vLLM rollouts with videos (colocate): each request carries its row's frames, see train/rollout.py
    def _prepare_vllm(self):
        """Wrap TRL's colocated vLLM engine so requests carry media; check vLLM will resize as we do."""
        if self.vllm_mode != "colocate":
            return  # server mode: text-only batches go through TRL unchanged, media rows are refused per batch
        generation = self.vllm_generation
        if not isinstance(generation.llm, MediaInjectingLLM):
            generation.llm = MediaInjectingLLM(generation.llm)
        name = getattr(self.accelerator.unwrap_model(self.model), "name_or_path", "")
        if name and Path(name).is_dir() and getattr(self.processing_class, "video_processor", None) is not None:
            check_vllm_budget(name, self.processing_class)

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        rows = self._rows
        if self.use_vllm and rows is not None and any(r is not None for r in rows):
            self._queue_vllm_media(prompt_ids, rows)
        # FSDP: see distributed.full_parameters; HF generation gets every copy of a prompt's video from TRL: the
        # vision tower encodes each distinct clip once (models.adapters.encode_each_item_once)
        with full_parameters(self.model_wrapped), self._sampling_encoder():
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                 has_tool_images)

    def _sampling_encoder(self):
        """The context HF sampling runs in: the vision tower encodes each distinct clip once, not the G copies
        TRL passes (models.adapters.encode_each_item_once; bench/cost.py's official structure overrides it)."""
        return encode_each_item_once(self._core())

    def _queue_vllm_media(self, prompt_ids, rows):
        generation = self.vllm_generation
        if generation.mode != "colocate":
            raise ValueError("vLLM server mode cannot carry videos or the trainer's images: TRL 1.16 sends images "
                             "through the server's chat render endpoint and has no video route. Use "
                             "--vllm-mode colocate (rl.vllm_mode) for video data.")
        if len(prompt_ids) != len(rows):
            raise RuntimeError(f"{len(prompt_ids)} prompts to generate for but {len(rows)} media rows "
                               "(multi-turn tool calls with videos are not supported)")
        requests = vllm_requests(self._pending.template_ids, rows, self.processing_class)
        ids = [list(p) for p in prompt_ids]
        if generation.tensor_parallel_size > 1:  # TRL gathers the prompts of the TP group; gather ours alike
            gathered = [None] * generation.tensor_parallel_size
            torch.distributed.all_gather_object(gathered, (requests, ids), group=generation.tp_group)
            requests = [r for part in gathered for r in part[0]]
            ids = [i for part in gathered for i in part[1]]
        generation.llm.pending, generation.llm.pending_ids = requests, ids

    def _generate_and_score_completions(self, inputs):
        """TRL's rollouts, plus explicit per-row fields that travel with them through TRL's shuffling and
        splitting into micro-batches: `videos` (each row's video or image, None for text), `prompt_group` (which
        of this process's prompts the row answers: the G responses to one prompt share it) and, for the
        token-weighting methods, `token_weights` [B, C], computed here once per rollout over whole prompt
        groups, at the policy that sampled them (the paper's per-rollout mask)."""
        output = self._sample_round(inputs)
        if self.dynamic_sampling.enabled and self.model.training:
            output, inputs = self._dynamically_sampled(output, inputs)
        rows = output["videos"]
        output["prompt_group"] = prompt_groups(output["prompt_ids"], output["prompt_mask"], rows,
                                               self.num_generations)
        step = self.state.global_step + 1  # the optimizer step these rollouts train
        logged = self.rollout_log is not None and self.model.training and self.rollout_log.due(step)
        self._rollout_capture = {} if logged else None  # only a logged step keeps its attribution tensors
        if self.method == "vppo":
            output["token_weights"], scaling = self._vppo_weights(output)
            output["advantages"] = output["advantages"] * scaling.to(output["advantages"].dtype)
        elif self.method in ("ktr", "entropy") and self.selects_in_loss() and not logged:
            output.update(self._perturbed_side(output))  # the mask is chosen in the loss (_loss_time_weights)
        elif self.method in WEIGHTED_METHODS:
            output["token_weights"] = self._rollout_weights(output)
        output.pop("old_entropies", None)  # used by the weights only
        if logged:
            _, seconds = self.rollout_log.write(
                step, output, inputs, self._rollout_capture, self._local_rewards,
                self.reward_weights, method=self.method,
                ratio=self.selection_options.ratio if self.method in ("ktr", "entropy") else None)
            self._metrics["train"]["rollout_log_seconds"].append(seconds)
        self._rollout_capture = None
        return output

    def _sample_round(self, inputs) -> dict:
        """TRL's rollouts of `inputs` (G consecutive copies of each prompt) with each row's media (`videos`); keeps
        this process's rows of the rewards in `_local_rewards`. Every process calls it together (TRL gathers the
        rewards across processes)."""
        reuse = self.reuses_old_policy_pass()
        self._captured_passes = [] if reuse else None
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            captured, self._captured_passes = self._captured_passes, None
        if reuse:
            entropies = self._old_policy_entropies(output, captured)
            # ZeRO-3 / FSDP: every process must run the same attribution forwards, so one process without the
            # old-policy entropies sends every process back to the full pass
            missing = entropies is None
            if self.lockstep:
                missing = any_process(missing, output["completion_ids"].device)
            if not missing:
                output["old_entropies"] = entropies
        B = output["completion_ids"].shape[0]
        output["videos"] = self._rows if self._rows is not None else [None] * B
        self._pending, self._rows = None, None
        rewards = getattr(self, "_rewards_per_func", None)
        start = self.accelerator.process_index * B  # this process's rows of the gathered rewards
        self._local_rewards = None if rewards is None else rewards[start : start + B].clone()
        return output

    def reuses_old_policy_pass(self) -> bool:
        """Whether this rollout's key-token scores take their unperturbed side (log-probs and entropies) from TRL's
        old-policy pass instead of evaluating the unperturbed input again: ktr.reuse_rollout_logps, a method that
        scores with the log-prob shift (ktr, entropy), TRL computing that pass (as it decides: vLLM with importance
        sampling, or generation not aligned with the optimizer step: num_iterations > 1 or steps_per_generation >
        gradient_accumulation_steps), and no dropout live in it (TRL runs it in train mode; attribution runs in
        eval mode, and a dropped-out log-prob is not the policy's)."""
        return self.reuse_rollout_logps and self._training_logps_are_the_policys() and self._trl_computes_old_logps()

    def _training_logps_are_the_policys(self) -> bool:
        """What both ways of taking the scores' unperturbed side from a training-time pass need: a masked method
        (ktr, entropy) in training, distance "logprob" (a full-distribution distance needs the unperturbed hidden
        states, not only log-probs) and no dropout live in that train-mode pass (a dropped-out log-prob is not the
        policy's)."""
        return (self.method in ("ktr", "entropy") and self.model.training
                and self.attribution_options.distance == "logprob" and not live_dropout(self.model))

    def _trl_computes_old_logps(self) -> bool:
        """Whether TRL runs its old-policy pass over each rollout (as TRL 1.16 decides): vLLM with importance
        sampling, or generation not aligned with the optimizer step (the weights move between sampling and some
        of the rollout's loss passes)."""
        generate_every = self.args.steps_per_generation * self.num_iterations
        return (self.args.gradient_accumulation_steps % generate_every != 0
                or (self.use_vllm and self.vllm_importance_sampling_correction))

    def selects_in_loss(self) -> bool:
        """Whether this rollout's key-token mask is chosen when the loss is reduced, from the policy forward's own
        log-probs and entropies (the unperturbed side), with only the perturbed inputs evaluated at the rollout:
        ktr.select_in_loss, a masked method (ktr, entropy) in training, where TRL runs no old-policy pass (else
        `reuses_old_policy_pass`) so that the weights of every loss pass of the rollout are the sampling weights,
        and where that forward's log-probs are the ones attribution would compute: no live dropout, distance
        "logprob", one temporal draw; and the mask must be computable per micro-batch (scope "response": each
        response's own top r%). The same answer on every process (a function of the options and the model only).
        At a rollout-logged step the rollout path runs anyway (the rollout log records its mask)."""
        return (self.select_in_loss and self.attribution_options.temporal_samples == 1
                and self.selection_options.scope == "response" and self._training_logps_are_the_policys()
                and not self._trl_computes_old_logps())

    def _old_policy_entropies(self, output: dict, captured: list) -> torch.Tensor | None:
        """The entropies [B, C] of TRL's old-policy pass: the captured call whose log-probs are exactly the rollout's
        `old_per_token_logps` (the reference model's pass, also captured, has its own). None, logged as
        ktr/reused_old_logps 0, when TRL did not run that pass after all."""
        old = output.get("old_per_token_logps")
        found = None
        if old is not None:
            found = next((ent for lp, ent in captured
                          if ent is not None and lp.shape == old.shape and torch.equal(lp, old)), None)
        self._metrics["train"]["ktr/reused_old_logps"].append(float(found is not None))
        return found

    def _informative(self, output: dict) -> torch.Tensor:
        """[groups] bool: the prompt groups of a round whose rewards differ (dynamic sampling's metric)."""
        rewards = self._local_rewards
        if self.dynamic_sampling.metric == "accuracy":
            values = rewards[:, self.tgrpo_options.reward_index]
        else:  # the weighted reward the advantages come from (TRL: NaN where no function scored the response)
            w = self.reward_weights.to(rewards.device)
            values = (rewards * w).nansum(1)
            values[torch.isnan(rewards).all(1)] = float("nan")
        return ~constant_groups(values, self.num_generations)

    def _dynamically_sampled(self, first: dict, inputs: list) -> tuple[dict, list]:
        """DAPO's dynamic sampling over this process's generation batch (all its micro-batches, so gradient
        accumulation and num_iterations see one full batch). Groups whose rewards are all equal are replaced by
        groups of fresh prompts, drawn uniformly from the training rows with the run's seed, until the batch holds
        as many informative groups as it has groups, or `max_batches` generation rounds ran (the rest then keep
        constant groups: `dynamic_sampling/unfilled_groups`). Every process runs the same number of rounds of the
        same size (the largest need of any process; TRL gathers rewards across processes in each round, and
        ZeRO-3/FSDP generation is collective); a process that needs fewer groups keeps the first it needs.
        Returns the batch in the row order of its groups, and the rows (inputs) it answers."""
        G = self.num_generations
        n_groups = first["completion_ids"].shape[0] // G
        rounds, round_inputs = [first], [inputs]
        informative = [self._informative(first)]
        rewards = [self._local_rewards]
        device = self.accelerator.device
        sampled_groups = 0
        while len(rounds) < self.dynamic_sampling.max_batches:
            need = max(0, n_groups - sum(int(m.sum()) for m in informative))
            need_all = int(self.accelerator.gather(torch.tensor([need], device=device)).max())
            if need_all == 0:
                break
            picked = torch.randint(len(self.train_dataset), (need_all,), generator=self._resample_generator).tolist()
            fresh = [self.train_dataset[i] for i in picked for _ in range(G)]
            out = self._sample_round(fresh)
            rounds.append(out)
            round_inputs.append(fresh)
            informative.append(self._informative(out))
            rewards.append(self._local_rewards)
            sampled_groups += need_all
        picks, unfilled = fill_from_rounds(informative, n_groups)
        merged = merge_rollouts(rounds, picks, G, self._tokenizer.pad_token_id)
        loss_mask = merged["completion_mask"]
        if "tool_mask" in merged:
            loss_mask = loss_mask * merged["tool_mask"]
        merged["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()  # every process, every step
        rows = [r for r_idx, g in picks for r in round_inputs[r_idx][g * G : (g + 1) * G]]
        if all(x is not None for x in rewards):
            self._local_rewards = torch.cat([rewards[r][g * G : (g + 1) * G] for r, g in picks])
        replaced = sum(1 for r, _ in picks if r > 0)
        metrics = self._metrics["train"]
        metrics["dynamic_sampling/informative_share"].append(informative[0].float().mean().item())
        metrics["dynamic_sampling/resampled_groups"].append(float(replaced))
        metrics["dynamic_sampling/sampled_groups"].append(float(sampled_groups))
        metrics["dynamic_sampling/generation_batches"].append(float(len(rounds)))
        metrics["dynamic_sampling/unfilled_groups"].append(float(unfilled))
        return merged, rows

    def _make_rollout_log(self, options: RolloutLogOptions) -> RolloutLog:
        """The rollout log of this process, with the run's settings in every file's metadata."""
        a, s, v = self.attribution_options, self.selection_options, self.video_options
        settings = {"signals": list(a.signals), "selection": s.scope, "weighting": s.weighting, "control": s.control,
                    "distance": a.distance, "signed": a.signed, "visual_strategy": a.visual_strategy,
                    "temporal_strategy": a.temporal_strategy, "temperature": self.temperature,
                    "num_generations": self.num_generations, "epsilon_low": self.epsilon_low,
                    "epsilon_high": self.epsilon_high, "beta": self.beta, "loss_normalization": self.loss_normalization,
                    "reward_names": list(self.reward_func_names), "reward_weights": self.reward_weights.tolist(),
                    "video": dataclasses.asdict(v),
                    "model": str(getattr(self.accelerator.unwrap_model(self.model), "name_or_path", "")),
                    "world_size": self.accelerator.num_processes}
        return RolloutLog(self.args.output_dir, options, getattr(self.processing_class, "tokenizer",
                                                                 self.processing_class),
                          rank=self.accelerator.process_index, settings=settings)

    # ----------------------------------------------------------------------------------------------------------
    # T-GRPO: temporal contrast on shuffled frames
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._rewards_per_func = rewards  # all processes' rows [N, F] (T-GRPO's bonus is added in place below)
        # every process goes on whatever its data: the bonus is gathered (a collective) even where it is all 0
        if self.method != "tgrpo" or not self.model.training:
            return rewards
        n, idx = len(prompts), self.tgrpo_options.reward_index
        start = self.accelerator.process_index * n
        bonus = self._temporal_bonus(inputs, prompts, rewards[start : start + n, idx])
        rewards[:, idx] += self.accelerator.gather(bonus)
        return rewards

    @torch.no_grad()
    def _temporal_bonus(self, inputs, prompts, accuracy: torch.Tensor) -> torch.Tensor:
        """Bonus [n] for this process's rows: one shuffled clip per prompt group, G/2 responses on it."""
        from ..models.perturb import permute_groups, temporal_permutation

        G, opts = self.num_generations, self.tgrpo_options
        n = accuracy.numel()
        if n % G:
            raise ValueError(f"tgrpo needs whole prompt groups on each process: {n} rows for G={G}")
        per = max(1, G // 2)
        groups = [g for g in range(n // G) if self._rows[g * G] is not None and self._rows[g * G].kind == "video"]
        bonus = torch.zeros(n, device=accuracy.device)
        if not groups:
            if self.lockstep and any_process(False, accuracy.device) and not self._sampling_on_own_engine():
                self._sample_stand_in()  # others sample with the training model: join in (see `lockstep`)
            return bonus
        if self.lockstep:
            any_process(True, accuracy.device)
        shuffled_rows = []
        for g in groups:
            row = self._rows[g * G]
            t = int(row.grid[0, 0])
            perm = temporal_permutation(t, "shuffle", self._attr_generator)
            shuffled_rows.append(RowVideo(f"{row.key}#order={perm.tolist()}", permute_groups(row.pixels, t, perm),
                                          row.grid, row.seconds_per_group))
        if self._sampling_on_own_engine():
            texts = self._sample_shuffled_vllm(groups, shuffled_rows, per)
        else:  # the training model samples them (server mode, TP > 1, sleep mode, or no vLLM)
            texts = self._sample_shuffled_hf(groups, shuffled_rows, per)
        rows = [inputs[g * G] for g in groups for _ in range(per)]
        kwargs = {k: [r[k] for r in rows] for k in rows[0] if k not in ("prompt", "completion", "completion_ids")}
        reward_fn = self.reward_funcs[opts.reward_index]
        shuffled_acc = torch.tensor(
            [float("nan") if v is None else v for v in reward_fn(
                prompts=[prompts[g * G] for g in groups for _ in range(per)],
                completions=[[{"role": "assistant", "content": t}] for t in texts], completion_ids=None, **kwargs)],
            device=accuracy.device).view(len(groups), per)
        p_ordered, p_shuffled = [], []
        for k, g in enumerate(groups):
            acc = accuracy[g * G : (g + 1) * G]
            p, ps = acc.nanmean(), shuffled_acc[k].nanmean()
            p_ordered.append(p.item())
            p_shuffled.append(ps.item())
            if p >= opts.mu * ps:
                bonus[g * G : (g + 1) * G] = opts.alpha * (acc > 0.1).float()
        self._metrics["train"]["tgrpo/p_ordered"].append(sum(p_ordered) / len(p_ordered))
        self._metrics["train"]["tgrpo/p_shuffled"].append(sum(p_shuffled) / len(p_shuffled))
        self._metrics["train"]["tgrpo/bonus_share"].append((bonus > 0).float().mean().item())
        return bonus

    def _sampling_on_own_engine(self) -> bool:
        """T-GRPO's shuffled responses come from this process's own colocated vLLM engine (no collective)."""
        generation = getattr(self, "vllm_generation", None)
        return bool(self.use_vllm and generation.mode == "colocate" and generation.tensor_parallel_size == 1
                    and not generation.enable_sleep_mode)

    def _sample_stand_in(self) -> None:
        """Join the other processes' T-GRPO sampling with the training model when this process has no video
        prompt (ZeRO-3/FSDP generation is collective): one response to a one-token text prompt, discarded."""
        from trl.models import unwrap_model_for_generation

        ids = torch.tensor([[self._tokenizer.eos_token_id]], device=self.accelerator.device)
        with full_parameters(self.model_wrapped), unwrap_model_for_generation(
                self.model_wrapped, self.accelerator, generation_kwargs=self.generation_kwargs) as unwrapped:
            unwrapped.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                               generation_config=self.generation_config)

    def _sample_shuffled_hf(self, groups: list[int], shuffled: list[RowVideo], per: int) -> list[str]:
        """T-GRPO's `per` responses per group on its shuffled clip, sampled by the training model."""
        from trl.models import unwrap_model_for_generation

        from trl.trainer.utils import pad

        G, device = self.num_generations, self.accelerator.device
        ids = [torch.tensor(self._pending.prompt_ids[g * G]) for g in groups for _ in range(per)]
        rows = [r for r in shuffled for _ in range(per)]
        input_ids = pad(ids, padding_value=self._tokenizer.pad_token_id, padding_side="left").to(device)
        attention = pad([torch.ones_like(x) for x in ids], padding_value=0, padding_side="left").to(device)
        width = input_ids.shape[1]
        with full_parameters(self.model_wrapped), self._sampling_encoder(), unwrap_model_for_generation(
                self.model_wrapped, self.accelerator, generation_kwargs=self.generation_kwargs) as unwrapped:
            out = unwrapped.generate(
                input_ids=input_ids, attention_mask=attention,
                pixel_values_videos=torch.cat([r.pixels for r in rows]).to(device),
                mm_token_type_ids=self.adapter.mm_token_type_ids(input_ids),
                generation_config=self.generation_config, **_grid_kwargs(rows, device))
        return self._tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)

    def _sample_shuffled_vllm(self, groups: list[int], shuffled: list[RowVideo], per: int) -> list[str]:
        """The same responses sampled by the colocated vLLM engine (weights already synced for this step):
        one request per group with n=per, the shuffled clip rebuilt from its permuted patches."""
        from trl.generation import vllm_generation

        G, generation = self.num_generations, self.vllm_generation
        requests = vllm_requests([self._pending.template_ids[g * G] for g in groups], shuffled, self.processing_class)
        params = dict(n=per, temperature=generation.temperature, top_p=generation.top_p, top_k=generation.top_k,
                      min_p=0.0 if generation.min_p is None else generation.min_p,
                      repetition_penalty=generation.repetition_penalty, max_tokens=generation.max_completion_length)
        params.update(generation.generation_kwargs)
        llm = generation.llm._llm if isinstance(generation.llm, MediaInjectingLLM) else generation.llm
        outputs = llm.generate(requests, sampling_params=vllm_generation.SamplingParams(**params), use_tqdm=False)
        return self._tokenizer.batch_decode([o.token_ids for out in outputs for o in out.outputs],
                                            skip_special_tokens=True)

    # ----------------------------------------------------------------------------------------------------------
    # Forward passes with video: vision tower once per unique clip, features through mm_encoder_outputs
    def _encode_media(self, model, rows: list[RowVideo | None]) -> EncodedMedia:
        """Encode the unique clips and images among `rows` in ONE vision-tower call (the G copies of a prompt
        share one encoding; the tower treats an image's patches as a one-group clip's: `encode_videos` and
        `encode_images` agree, tests/models), with gradient when the caller's pass has one (the policy pass),
        without in TRL's no-grad old/ref passes. One call per pass with media, whatever its mix of videos and
        images: under ZeRO-3/FSDP every process then gathers the tower's weights the same number of times."""
        videos = [r for r in rows if r is not None and r.kind == "video"]
        images = [r for r in rows if r is not None and r.kind == "image"]
        unwrapped = self._core(model)
        device = self.accelerator.device
        unique: dict[tuple[str, str], RowVideo] = {}
        for r in videos + images:
            unique.setdefault((r.kind, r.key), r)
        media = EncodedMedia(videos, [], images, [])
        if not unique:
            return media
        encoded = self.adapter.encode_videos(unwrapped, torch.cat([r.pixels for r in unique.values()]).to(device),
                                             torch.cat([r.grid for r in unique.values()]).to(device))
        by_key = dict(zip(unique, encoded))
        media.video_features = [by_key[("video", r.key)] for r in videos]
        media.image_features = [by_key[("image", r.key)] for r in images]
        return media

    def _forward_logps(self, model, input_ids, attention_mask, logits_to_keep, rows, compute_entropy,
                       media: EncodedMedia | None = None):
        """Per-token log-probs (and entropies) [B, logits_to_keep] of the last `logits_to_keep` tokens, with each
        row's media. TRL's fused LM head never materialises the logits; under FSDP it reads the LM head's weight
        outside the head's own forward, so the gradient skips FSDP's reduce-scatter (each process keeps its own
        unreduced shard), and the logits come from the head's forward instead. `media`: encoder outputs to use
        instead of encoding `rows` (PAPO's masked pass)."""
        media = self._encode_media(model, rows) if media is None else media
        kwargs = dict(input_ids=input_ids, attention_mask=attention_mask,
                      mm_token_type_ids=self.adapter.mm_token_type_ids(input_ids),
                      **media.forward_kwargs(self.adapter, self.accelerator.device))
        with self.accelerator.autocast():
            if self.is_fsdp_enabled:
                logits = model(**kwargs, logits_to_keep=logits_to_keep + 1).logits[:, :-1] / self.temperature
                logps, entropy = logprobs_and_entropy(logits, input_ids[:, -logits_to_keep:])
            else:
                labels = input_ids.masked_fill(attention_mask == 0, -100)
                labels[:, :-logits_to_keep] = -100
                out = model(**kwargs, labels=labels, fused_lm_head=True)
                logps = out.log_probs[:, -logits_to_keep:]
                # the reference model's fused head computes log-probs only (TRL): no entropy there
                entropy = out.entropy[:, -logits_to_keep:] if compute_entropy and out.entropy is not None else None
        return logps, (entropy if compute_entropy else None), media

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **kwargs):
        rows = self._rows
        capture = self._captured_passes is not None  # inside a rollout that reuses TRL's old-policy pass
        with_entropy = compute_entropy or capture
        if rows is None or all(r is None for r in rows):
            logps, entropies, aux = super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                compute_entropy=with_entropy, compute_aux_loss=compute_aux_loss, **kwargs)
        else:
            batch_size = batch_size or input_ids.size(0)
            chunks = []
            for start in range(0, input_ids.size(0), batch_size):
                end = start + batch_size
                lp, ent, _ = self._forward_logps(model, input_ids[start:end], attention_mask[start:end],
                                                 logits_to_keep, rows[start:end], with_entropy)
                chunks.append((lp, ent))
            logps = torch.cat([lp for lp, _ in chunks])
            with_entropy = with_entropy and all(ent is not None for _, ent in chunks)
            entropies = torch.cat([ent for _, ent in chunks]) if with_entropy else None
            aux = None
        if capture:
            self._captured_passes.append((logps, entropies))
        return logps, (entropies if compute_entropy else None), aux

    # ----------------------------------------------------------------------------------------------------------
    # Token weights: computed once per rollout, over whole prompt groups (see _generate_and_score_completions)
    @contextmanager
    def _scoring(self):
        """The model as attribution needs it, whatever the training settings: eval mode (transformers'
        checkpointed layers drop the KV cache in train mode, and dropout is live), no gradient, the run's
        autocast, and the LM head's weight gathered where ZeRO-3 or FSDP shard it. Every process enters."""
        wrapped = self.accelerator.unwrap_model(self.model)  # with LoRA, peft's model: FSDP's outermost unit
        unwrapped = base_model(wrapped)
        head = unwrapped.lm_head
        with torch.no_grad(), eval_mode(unwrapped), self.accelerator.autocast(), \
                gathered_parameters(wrapped, [head.weight, getattr(head, "bias", None)]):
            yield unwrapped

    def _rollout_weights(self, batch: dict) -> torch.Tensor:
        """Token weights [B, C] of one generated batch (TRL's output dict, with `videos` and `prompt_group`)."""
        if self.method == "vppo":
            return self._vppo_weights(batch)[0]
        if self.method == "twgrpo":
            return self._tw_grpo_weights(batch)
        return self._key_token_weights(batch)

    def skipping_is_exact(self) -> bool:
        """Whether leaving zero-advantage responses out of attribution changes no weight that matters: their
        policy term is 0 whatever their weights, but their scores move a threshold pooled over several
        responses (scopes group, quantile, global), and their weights reach the loss through the KL term
        (beta > 0 with mask_kl, or the "selected" normalisation that divides the row, KL included, by them)."""
        if self.selection_options.scope != "response":
            return False
        return self.beta == 0.0 or not (self.mask_kl or self.loss_normalization == "selected")

    def _key_token_weights(self, batch: dict) -> torch.Tensor:
        """Key-token weights [B, C] for methods "ktr" and "entropy": every score (the unperturbed, visually and
        temporally perturbed log-probs, and the entropy) from ONE batched eval-mode pass over this batch, so the
        differences compare like with like in any precision. Responses with a zero advantage are left out (weight
        0) when `skipping_is_exact`; statistics are over the attributed responses."""
        start = time.perf_counter()
        completion_mask = batch["completion_mask"]
        device = completion_mask.device
        weights = torch.zeros(completion_mask.shape, dtype=torch.float32, device=device)
        mode = "train" if self.model.training else "eval"
        active = self._attributed_rows(batch)
        idx = active.nonzero().squeeze(-1).tolist()
        stand_in = not idx  # nothing to attribute here: under lockstep, still run the same forwards (on row 0)
        if stand_in and not self.lockstep:
            return weights
        idx = idx or [0]
        pick = torch.tensor(idx, device=device)
        unperturbed = {}
        if "old_entropies" in batch:  # TRL's old-policy pass: only the perturbed inputs are evaluated here
            unperturbed = {"logp": batch["old_per_token_logps"][pick], "entropy": batch["old_entropies"][pick]}
        attribution = self._attribute(batch, idx, self.attribution_options,
                                      keep_perturbed_logp=self._rollout_capture is not None,  # a logged step keeps them
                                      **unperturbed)
        group_ids = batch["prompt_group"][pick] if self.selection_options.scope in ("group", "quantile") else None
        all_gather = all_gather_1d if self.selection_options.scope == "global" else None
        sub_weights, masks, stats = select_key_tokens(attribution, self.selection_options, group_ids=group_ids,
                                                      all_gather=all_gather, rank=self.accelerator.process_index,
                                                      response_valid=completion_mask[pick].bool(),
                                                      generator=self._control_generator)
        if stand_in:
            return weights
        if self._rollout_capture is not None:  # a logged step: keep what the rollout log records (no copy)
            self._rollout_capture.update(rows=idx, attribution=attribution, masks=masks)
        weights[pick] = sub_weights
        for k, v in stats.items():
            self._metrics[mode][f"ktr/{k}"].append(v)
        self._metrics[mode]["ktr/attribution_seconds"].append(time.perf_counter() - start)
        return weights

    def _attributed_rows(self, batch: dict) -> torch.Tensor:
        """[B] bool: the rows of a generated batch that get key-token scores: those with a nonzero advantage when
        `skipping_is_exact`, else all (logged as ktr/attributed_share)."""
        B = batch["completion_mask"].shape[0]
        active = batch["advantages"].reshape(B, -1).ne(0).any(-1)
        if not self.skipping_is_exact():
            active = torch.ones_like(active)
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["ktr/attributed_share"].append(active.float().mean().item())
        return active

    def _perturbed_side(self, batch: dict) -> dict:
        """The rollout fields that `_loss_time_weights` chooses the mask from (`selects_in_loss`): `ktr_attributed`
        [B] bool (the rows to select in), and per perturbation signal s, `ktr_perturbed_<s>` [B, C] float32 (the
        perturbed log-probs, 0 where undefined) and `ktr_valid_<s>` [B, C] bool (where the score is defined), from
        ONE eval-mode no-grad pass over the perturbed inputs of the attributed rows (none with the entropy signal
        alone). The fields travel with the rows through TRL's shuffling and splitting into micro-batches."""
        start = time.perf_counter()
        completion_mask = batch["completion_mask"]
        B, C, device = *completion_mask.shape, completion_mask.device
        active = self._attributed_rows(batch)
        out = {"ktr_attributed": active}
        kinds = [s for s in ("visual", "temporal") if s in self.attribution_options.signals]
        if not kinds:
            return out
        idx = active.nonzero().squeeze(-1).tolist()
        if not idx and not self.lockstep:
            attribution = None
        else:  # under lockstep a process with nothing to score still runs the same forward (on row 0)
            attribution = self._attribute(batch, idx or [0], self.attribution_options, keep_perturbed_logp=True,
                                          perturbed_only=True)
        pick = torch.tensor(idx, dtype=torch.long, device=device)
        for kind in kinds:
            perturbed = torch.zeros(B, C, dtype=torch.float32, device=device)
            valid = torch.zeros(B, C, dtype=torch.bool, device=device)
            if idx and attribution is not None:
                if kind in attribution.perturbed_logp:
                    perturbed[pick] = attribution.perturbed_logp[kind].float()
                valid[pick] = attribution.valid[kind]
            out[f"ktr_perturbed_{kind}"], out[f"ktr_valid_{kind}"] = perturbed, valid
        self._metrics["train"]["ktr/attribution_seconds"].append(time.perf_counter() - start)
        return out

    def _loss_time_weights(self, inputs: dict, logp: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
        """Key-token weights [B, C] of a micro-batch whose rollout carries `_perturbed_side`'s fields: the scores'
        unperturbed side is the policy forward's own log-probs and entropies `logp`, `entropy` [B, C] (detached),
        the selection that of `_key_token_weights` over the attributed rows (weight 0 elsewhere)."""
        completion_mask = inputs["completion_mask"]
        weights = torch.zeros(completion_mask.shape, dtype=torch.float32, device=completion_mask.device)
        idx = inputs["ktr_attributed"].nonzero().squeeze(-1)
        if idx.numel() == 0:
            return weights
        kinds = [s for s in ("visual", "temporal") if s in self.attribution_options.signals]
        attribution = scores_from_logps(
            logp[idx], entropy[idx], {k: inputs[f"ktr_perturbed_{k}"][idx] for k in kinds},
            {k: inputs[f"ktr_valid_{k}"][idx] for k in kinds}, completion_mask[idx], self.attribution_options)
        sub_weights, _, stats = select_key_tokens(attribution, self.selection_options,
                                                  response_valid=completion_mask[idx].bool(),
                                                  generator=self._control_generator)
        weights[idx] = sub_weights
        for k, v in stats.items():
            self._metrics["train"][f"ktr/{k}"].append(v)
        return weights

    def _attribute(self, batch: dict, idx: list[int], options: AttributionOptions, keep_perturbed_logp: bool = False,
                   logp: torch.Tensor | None = None, entropy: torch.Tensor | None = None,
                   perturbed_only: bool = False):
        """`attribute()` over rows `idx` of a generated batch, in one eval-mode no-grad pass (`_scoring`), the
        vision tower once per clip; with visual_strategy "replace", the donor bank of earlier batches (the first
        batch of a run with one clip falls back to "zero", logged as ktr/replace_fallback). `logp`, `entropy`
        [len(idx), C]: the unperturbed side already computed (TRL's old-policy pass): only perturbed rows run."""
        device = batch["completion_mask"].device
        rows = batch["videos"]
        pick = torch.tensor(idx, device=device)
        replace = options.visual_strategy == "replace"
        mode = "train" if self.model.training else "eval"
        with self._scoring() as unwrapped:
            media = self._encode_media(unwrapped, [rows[i] for i in idx])
            kwargs = {}
            if media.videos:
                kwargs.update(_grid_kwargs(media.videos, device), video_features=media.video_features,
                              video_keys=media.video_keys)
            if media.images:
                kwargs.update(image_grid_thw=torch.cat([r.grid for r in media.images]).to(device),
                              image_features=media.image_features, image_keys=[r.key for r in media.images])
            chosen = options
            if replace and not self._has_donor(media):
                # the first batch of a run with one clip: nothing else to put in its place yet; zero it (the
                # paper's default) rather than swapping it for itself, and say so in the logs
                chosen = dataclasses.replace(options, visual_strategy="zero")
            if replace:
                self._metrics[mode]["ktr/replace_fallback"].append(float(chosen is not options))
            attribution = attribute(
                unwrapped, batch["prompt_ids"][pick], batch["prompt_mask"][pick], batch["completion_ids"][pick],
                batch["completion_mask"][pick], options=chosen, generator=self._attr_generator,
                donors=self._donors if replace else (), keep_perturbed_logp=keep_perturbed_logp, logp=logp,
                entropy=entropy, perturbed_only=perturbed_only, **kwargs)
        if replace:  # this batch's clips become donors for later batches (never for themselves: keyed)
            self._bank_donors(media)
        return attribution

    def _bank_donors(self, media: EncodedMedia) -> None:
        fresh = dict(zip(media.video_keys, media.video_features))
        self._donors = ([(k, f.detach()) for k, f in fresh.items()]
                        + [(k, f) for k, f in self._donors if k not in fresh])[:16]

    def _vppo_weights(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """VPPO's two signals for one generated batch (core.perception): (token weights [B, C]: the top
        ceil(k * n) most visually dependent tokens of each response with a visual input, every response token of
        a text-only one; advantage factors [B]: trajectory-level shaping by mean dependency, 1 for text-only
        responses). The dependency of a token is the KL between its next-token distributions on the real input
        and with the visual features perturbed by ktr.visual_strategy (rl.vppo_dependency "kl"), or the k3
        estimate of it on the sampled token ("k3"), from one eval-mode no-grad pass over every row (the shaping
        normalises over all the batch's responses, zero-advantage ones included, as VPPO's code does)."""
        start = time.perf_counter()
        o = self.perception_options
        completion_mask = batch["completion_mask"]
        B = completion_mask.shape[0]
        options = dataclasses.replace(self.attribution_options, signals=("visual",), signed=False,
                                      distance="kl" if o.vppo_dependency == "kl" else "logprob")
        attribution = self._attribute(batch, list(range(B)), options)
        valid = attribution.valid["visual"]  # [B, C] response tokens of the rows with a video or an image
        if o.vppo_dependency == "kl":
            dependency = attribution.scores["visual"]
        else:
            dependency = k3_dependency(attribution.logp, attribution.perturbed_logp.get(
                "visual", attribution.logp))
        dependency = torch.where(valid, dependency.float(), 0.0)  # [B, C]
        has_media = valid.any(1) | torch.tensor([r is not None for r in batch["videos"]], device=valid.device)
        mask = top_ratio_mask(dependency, valid, o.vppo_ratio)
        weights = torch.where(has_media[:, None], mask, completion_mask.bool()).float()  # [B, C]
        scaling = vppo_advantage_scaling(dependency, valid, o.vppo_advantage_min)  # [B]
        if self._rollout_capture is not None:  # what the rollout log records under the "visual" signal
            from ..attribution import Attribution

            self._rollout_capture.update(rows=list(range(B)), masks={"visual": mask}, attribution=Attribution(
                {"visual": dependency}, {"visual": valid}, attribution.logp, None, attribution.seconds))
        mode = "train" if self.model.training else "eval"
        m, n = self._metrics[mode], valid.sum().clamp(min=1)
        m["vppo/dependency_mean"].append((dependency.sum() / n).item())
        m["vppo/selected_dependency_mean"].append((dependency * mask).sum().item() / max(1, int(mask.sum())))
        m["vppo/update_ratio"].append(weights.sum().item() / max(1, int(completion_mask.sum())))
        m["vppo/advantage_factor_min"].append(scaling.min().item())
        m["vppo/advantage_factor_max"].append(scaling.max().item())
        m["vppo/seconds"].append(time.perf_counter() - start)
        return weights, scaling

    def _has_donor(self, media: EncodedMedia) -> bool:
        """Whether every clip of this pass has another clip to take its place (visual_strategy "replace")."""
        keys = set(media.video_keys) | {r.key for r in media.images}
        return len(keys) > 1 or any(k not in keys for k, _ in self._donors) or not keys

    def _tw_grpo_weights(self, batch: dict) -> torch.Tensor:
        """TW-GRPO weights [B, C] (core.baselines) from one eval-mode no-grad pass over the batch."""
        prompt_ids, completion_ids = batch["prompt_ids"], batch["completion_ids"]
        ids = torch.cat([prompt_ids, completion_ids], 1)
        mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
        with self._scoring() as unwrapped:
            media = self._encode_media(unwrapped, batch["videos"])
            kwargs = media.forward_kwargs(self.adapter, ids.device)
            hidden = unwrapped.model(input_ids=ids, attention_mask=mask, use_cache=False,
                                     mm_token_type_ids=self.adapter.mm_token_type_ids(ids), **kwargs).last_hidden_state
            P, C = prompt_ids.shape[1], completion_ids.shape[1]
            valid, groups = batch["completion_mask"].bool(), batch["prompt_group"]
            head, h = unwrapped.lm_head, hidden[:, P - 1 : P - 1 + C].float()
            bias = getattr(head, "bias", None)
            if self.twgrpo_variant == "kl_to_mean":
                distances = group_position_kl(h, head.weight, valid, groups, bias=bias, temperature=self.temperature)
                return tw_grpo_weights(distances, valid)
            divergence = group_position_divergence_source(h, head.weight, valid, groups, bias=bias,
                                                          temperature=self.temperature,
                                                          log_softmax=self.twgrpo_variant == "source")
        return tw_grpo_source_weights(divergence, valid, groups)

    def _compute_loss(self, model, inputs):
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        C = completion_ids.size(1)
        rows = inputs.get("videos") or [None] * input_ids.size(0)
        masked_logps = None
        if self.method == "papo" and any(r is not None for r in rows):
            logps, entropy, masked_logps = self._papo_forward(model, input_ids, attention_mask, C, rows)
        else:
            logps, entropy, _ = self._forward_logps(model, input_ids, attention_mask, C, rows, compute_entropy=True)
        weights = inputs.get("token_weights")  # a field of the rollout (see _generate_and_score_completions)
        if weights is None and "ktr_attributed" in inputs:  # chosen here, from this forward (selects_in_loss)
            weights = self._loss_time_weights(inputs, logps.detach(), entropy.detach())
        if weights is None and self.method in WEIGHTED_METHODS:
            raise KeyError("a rollout of a token-weighting method carries token_weights or the ktr_* fields")
        old = inputs.get("old_per_token_logps")
        old = logps.detach() if old is None else old
        loss, stats = masked_clipped_loss(
            logps, old, inputs["advantages"], completion_mask, token_weights=weights,
            ref_logp=inputs.get("ref_per_token_logps") if self.beta != 0.0 else None, beta=self.beta,
            epsilon_low=self.epsilon_low, epsilon_high=self.epsilon_high, normalization=self.loss_normalization,
            mask_kl=self.mask_kl, importance_weights=inputs.get("importance_sampling_ratio"))  # vLLM IS correction
        mode = "train" if self.model.training else "eval"
        if self.method == "vppo" and self.perception_options.vppo_entropy_penalty > 0:
            # VPPO's entropy penalty: + coef * mean(-log p) over the micro-batch's response tokens
            entropy_term = negative_logp_mean(logps, completion_mask)
            loss = loss + self.perception_options.vppo_entropy_penalty * entropy_term
            self._metrics[mode]["vppo/entropy_penalty_term"].append(entropy_term.item())
        if self.method == "papo":
            loss = loss + self._papo_terms(logps, masked_logps, completion_mask, rows, mode)
        if mode == "train":
            # the loss is scaled for gradient accumulation here (TRL turns the Trainer's own scaling off)
            loss = loss / getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        mask = completion_mask.bool()
        ent = entropy.detach()[mask].mean() if mask.any() else torch.zeros((), device=logps.device)
        self._metrics[mode]["entropy"].append(self.accelerator.gather(ent.reshape(1)).mean().item())
        for k, v in stats.items():
            self._metrics[mode][k].append(float(v))
        return loss


    def _papo_forward(self, model, input_ids, attention_mask, C, rows):
        """PAPO's policy pass: the rows on the real input and again with their visual features masked
        (`_masked_media`), in ONE forward of 2B rows WITH gradient (the perception term's gradient reaches both
        halves; one forward keeps DDP at one forward per backward). The vision tower runs once per clip. Returns
        (logps [B, C], entropy [B, C], masked logps [B, C])."""
        B = input_ids.shape[0]
        media = self._encode_media(model, rows)
        masked = self._masked_media(media)
        both = EncodedMedia(media.videos + masked.videos, media.video_features + masked.video_features,
                            media.images + masked.images, media.image_features + masked.image_features)
        logps, entropy, _ = self._forward_logps(model, torch.cat([input_ids, input_ids]),
                                                torch.cat([attention_mask, attention_mask]), C, rows + rows,
                                                compute_entropy=True, media=both)
        return logps[:B], entropy[:B], logps[B:]

    def _papo_terms(self, logps, masked_logps, completion_mask, rows, mode):
        """PAPO's additions to the loss (core.perception): - gamma * KL_prcp + eta_real * H_real + eta_masked *
        H_masked, where KL_prcp is the k3 KL between the policy on the real input and on the masked one (its
        visual features perturbed by ktr.visual_strategy, e.g. zero_fraction 0.6 for the source's 60% patch
        blackening) over the response tokens of the rows with media, and H the mean negative log-probability of
        the sampled tokens (H_real over every response token, H_masked over those of the rows with media).
        masked_logps None: no row of the micro-batch has media (only the real-input entropy term applies)."""
        o = self.perception_options
        valid = completion_mask.bool()
        terms = o.papo_entropy_coef * negative_logp_mean(logps, valid)
        if masked_logps is None:
            return terms
        has_media = torch.tensor([r is not None for r in rows], device=valid.device)
        on = valid & has_media[:, None]
        kl = papo_perception_kl(logps, masked_logps, on, clip=o.papo_kl_clip)
        masked_entropy = negative_logp_mean(masked_logps, on)
        terms = terms - o.papo_coef * kl + o.papo_masked_entropy_coef * masked_entropy
        self._metrics[mode]["papo/perception_kl"].append(kl.item())
        self._metrics[mode]["papo/masked_entropy"].append(masked_entropy.item())
        return terms

    def _masked_media(self, media: EncodedMedia) -> EncodedMedia:
        """The encoder outputs of a pass with every video's and image's features perturbed by ktr.visual_strategy
        (one draw per clip, shared by its rows; "replace" takes another clip of the batch or of the donor bank, and
        zeroes when there is none). The features keep their graph: gradient flows into the unmasked ones."""
        from ..attribution import perturbed_features

        options = self.attribution_options
        has_other = len({r.key for r in media.videos} | {r.key for r in media.images}) > 1 or bool(self._donors)
        if options.visual_strategy == "replace" and not has_other:
            options = dataclasses.replace(options, visual_strategy="zero")
        out = EncodedMedia(media.videos, list(media.video_features), media.images, list(media.image_features))
        if media.videos:
            keys = media.video_keys
            owner = [keys.index(k) for k in keys]
            groups = self.adapter.num_groups(torch.cat([r.grid for r in media.videos])).tolist()
            out.video_features, _ = perturbed_features(media.video_features, groups, "visual", options,
                                                       self._attr_generator, self._donors, owner, keys)
        if media.images:
            keys = [r.key for r in media.images]
            owner = [keys.index(k) for k in keys]
            out.image_features, _ = perturbed_features(media.image_features, [1] * len(keys), "visual", options,
                                                       self._attr_generator, self._donors, owner, keys)
        return out


def live_dropout(model) -> bool:
    """Whether a forward of `model` in its current mode drops anything out: a dropout module with p > 0 (LoRA's
    lora_dropout among them) or an attention dropout in the config, while the model is in train mode."""
    if not model.training:
        return False
    if any(isinstance(m, torch.nn.Dropout) and m.p > 0 and m.training for m in model.modules()):
        return True
    config = getattr(base_model(model), "config", None)
    configs = [config, getattr(config, "text_config", None)]
    return any((getattr(c, "attention_dropout", 0.0) or 0.0) > 0 for c in configs if c is not None)


# fields of TRL's rollout dict by layout: left-padded prompt side [B, P], right-padded completion side [B, C]
PROMPT_FIELDS = ("prompt_ids", "prompt_mask", "mm_token_type_ids", "token_type_ids")
COMPLETION_FIELDS = ("completion_ids", "completion_mask", "old_per_token_logps", "ref_per_token_logps",
                     "sampling_per_token_logps", "importance_sampling_ratio", "tool_mask", "token_weights",
                     "old_entropies")


def merge_rollouts(rounds: list[dict], picks: list[tuple[int, int]], group_size: int, pad_token_id: int) -> dict:
    """One rollout dict from the prompt groups `picks` ((round, group) pairs, core.fill_from_rounds) of several
    rollout dicts (TRL's, with `videos`), in the order of `picks`: prompt-side fields left-padded to the widest
    round, completion-side fields right-padded (ids with the pad token, everything else with 0: outside the
    masks), per-row fields ([B], [B, 1], lists) concatenated. `num_items_in_batch` is left out (a count gathered
    over the processes: the caller recomputes it). A field this function does not know is refused."""
    G = group_size
    out: dict = {}
    for key in rounds[0]:
        if key == "num_items_in_batch":
            continue
        parts = [rounds[r][key][g * G : (g + 1) * G] for r, g in picks]
        if isinstance(parts[0], list):
            out[key] = [x for part in parts for x in part]
            continue
        if not torch.is_tensor(parts[0]):
            raise NotImplementedError(f"dynamic sampling cannot merge the rollout field {key!r}")
        if parts[0].dim() == 2 and (key in PROMPT_FIELDS or key in COMPLETION_FIELDS):
            width = max(p.shape[1] for p in parts)
            value = pad_token_id if key in ("prompt_ids", "completion_ids") else 0
            left = key in PROMPT_FIELDS
            parts = [torch.nn.functional.pad(p, (width - p.shape[1], 0) if left else (0, width - p.shape[1]),
                                             value=value) for p in parts]
        elif not (parts[0].dim() == 1 or (parts[0].dim() == 2 and parts[0].shape[1] == 1)):
            raise NotImplementedError(f"dynamic sampling cannot merge the rollout field {key!r} of shape "
                                      f"{tuple(parts[0].shape)}")
        out[key] = torch.cat(parts)
    return out


class EncodedPrompts(NamedTuple):
    prompt_ids: list[list[int]]  # per prompt, unpadded, placeholders expanded (what the model reads)
    rows: list[RowVideo | None]  # per prompt: its video or image (None: text only)
    fields: dict  # batched processor outputs TRL carries to generation (pixels, grids, mm_token_type_ids)
    template_ids: list[list[int]]  # per prompt, one placeholder token per video/image (what vLLM expands)


def encode_prompts(processor, adapter, prompts: list, load_clip):
    """Tokenize conversational prompts with their videos/images as the trainer does (fps metadata included).

    Returns None when no prompt has a video or image, else an `EncodedPrompts`.
    """
    videos = [media_parts(p, "video") for p in prompts]
    images = [media_parts(p, "image") for p in prompts]
    if not any(videos) and not any(images):
        return None
    for v, i in zip(videos, images):
        if len(v) + len(i) > 1:
            raise ValueError("one video or image per prompt is supported; a prompt names " + ", ".join(map(str, v + i)))
    texts = [processor.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    # TRL repeats each prompt G times: the processor (resize + patchify of every frame) runs once per distinct
    # (text, media) prompt and its outputs are shared by the copies
    seen: dict[tuple, int] = {}
    unique: list[int] = []  # first row of each distinct prompt
    copy_of: list[int] = []  # row -> index into `unique`
    for r, key in enumerate(zip(texts, map(str, videos), map(str, images))):
        if key not in seen:
            seen[key] = len(unique)
            unique.append(r)
        copy_of.append(seen[key])
    u_videos, u_images = [videos[r] for r in unique], [images[r] for r in unique]
    clips = [load_clip(str(v[0])) for v in u_videos if v]
    kwargs = dict(text=[texts[r] for r in unique], padding=True, padding_side="left", return_tensors="pt")
    if clips:
        kwargs.update(videos=[c.frames for c in clips], video_metadata=[c.metadata() for c in clips],
                      do_sample_frames=False)
    if any(u_images):
        from PIL import Image

        kwargs["images"] = [Image.open(i[0]).convert("RGB") for i in u_images if i]
    enc = processor(**kwargs)
    mask = enc["attention_mask"].bool()
    u_ids = [ids[m].tolist() for ids, m in zip(enc["input_ids"], mask)]
    u_types = [t[m].tolist() for t, m in zip(enc["mm_token_type_ids"], mask)]
    video_pixels = adapter.split_pixels(enc["pixel_values_videos"], enc["video_grid_thw"]) if clips else []
    image_pixels = adapter.split_pixels(enc["pixel_values"], enc["image_grid_thw"]) if any(u_images) else []
    secs = enc.get("second_per_grid_ts")
    u_rows: list[RowVideo | None] = []
    v = i = 0
    for vid, img in zip(u_videos, u_images):
        if vid:
            u_rows.append(RowVideo(str(vid[0]), video_pixels[v], enc["video_grid_thw"][v : v + 1],
                                   None if secs is None else torch.as_tensor(secs)[v : v + 1]))
            v += 1
        elif img:
            u_rows.append(RowVideo(str(img[0]), image_pixels[i], enc["image_grid_thw"][i : i + 1], None, "image"))
            i += 1
        else:
            u_rows.append(None)
    rows = [u_rows[u] for u in copy_of]
    prompt_ids = [u_ids[u] for u in copy_of]
    # batched fields for every row, in row order (what the processor would have returned for all of them)
    fields: dict = {"mm_token_type_ids": [u_types[u] for u in copy_of]}
    row_videos = [r for r in rows if r is not None and r.kind == "video"]
    row_images = [r for r in rows if r is not None and r.kind == "image"]
    if row_videos:
        fields["pixel_values_videos"] = torch.cat([r.pixels for r in row_videos])
        fields["video_grid_thw"] = torch.cat([r.grid for r in row_videos])
        if secs is not None:
            fields["second_per_grid_ts"] = torch.cat([r.seconds_per_group for r in row_videos])
    if row_images:
        fields["pixel_values"] = torch.cat([r.pixels for r in row_images])
        fields["image_grid_thw"] = torch.cat([r.grid for r in row_images])
    u_template = [processor.tokenizer(texts[r], add_special_tokens=False)["input_ids"] for r in unique]
    template_ids = [u_template[u] for u in copy_of]
    return EncodedPrompts(prompt_ids, rows, fields, template_ids)


def _grid_kwargs(rows: list[RowVideo], device) -> dict:
    """video_grid_thw (and second_per_grid_ts where the family has it) for the given rows' videos."""
    out = {"video_grid_thw": torch.cat([r.grid for r in rows]).to(device)}
    if rows and rows[0].seconds_per_group is not None:
        out["second_per_grid_ts"] = torch.cat([r.seconds_per_group for r in rows]).to(device)
    return out


def prompt_groups(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, rows: list[RowVideo | None],
                  group_size: int) -> torch.Tensor:
    """Group id per row [B]: TRL places the G responses to one prompt in consecutive rows of a process's
    generation batch, so row i answers prompt i // G. Checked rather than assumed: the rows of a group must have
    one prompt (ids and media); rows with equal prompts in different groups (two clips that give the same
    prompt ids, or the same question asked twice) stay apart."""
    B = prompt_ids.shape[0]
    if B % group_size:
        raise ValueError(f"a generation batch of {B} rows is not whole groups of G={group_size}")
    groups = torch.arange(B, device=prompt_ids.device) // group_size
    for g in range(B // group_size):
        block = slice(g * group_size, (g + 1) * group_size)
        ids, mask = prompt_ids[block], prompt_mask[block]
        keys = {None if r is None else r.key for r in rows[block]}
        if len(keys) > 1 or not (torch.equal(mask, mask[:1].expand_as(mask))
                                 and torch.equal(ids * mask, (ids * mask)[:1].expand_as(ids))):
            raise RuntimeError(f"rows {g * group_size}..{(g + 1) * group_size - 1} of the generation batch are not "
                               "the G responses to one prompt (TRL's sampler places them consecutively)")
    return groups


def refuse_text_rows_when_sharded(dataset, engine: str) -> None:
    """Under ZeRO-3/FSDP a text-only prompt among media prompts would leave the vision tower out of some
    processes' passes (their collectives then no longer match): refuse it, naming the row."""
    if dataset is None or "prompt" not in getattr(dataset, "column_names", ()):
        return
    has_media = [bool(media_parts(p, "video") or media_parts(p, "image")) for p in dataset["prompt"]]
    if any(has_media) and not all(has_media):
        row = has_media.index(False)
        raise ValueError(f"training row {row} has no video or image while other rows do: under {engine} every "
                         "process must run the vision tower in every pass, so text-only rows can be mixed with "
                         "media rows only under DDP (configs/accelerate/ddp.yaml) or in one process")
