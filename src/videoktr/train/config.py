"""Run configuration: dataclasses with one help string per field. One YAML file reproduces one experiment.

A YAML file has one section per dataclass (`model`, `data`, `rl`, `ktr`, `run`); every field is also a
command-line flag (`--max-steps 20`, `--method grpo`), and flags override the file. `videoktr train --help`
prints every option with its help string.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


def _f(default, help: str, choices: tuple | None = None, **kw):
    meta = {"help": help}
    if choices:
        meta["choices"] = choices
    if isinstance(default, (list, tuple, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass
class ModelConfig:
    model: str = _f("", "model directory: a Qwen2.5-VL checkpoint on disk, or empty to build the 'small' offline "
                        "model and warm-start it on the synthetic world (the default run)")
    model_size: str = _f("small", "size of the offline model built when `model` is empty", ("tiny", "small"))
    dtype: str = _f("float32", "compute dtype: bfloat16/float16 run the forward under autocast with fp32 master "
                               "weights (under DeepSpeed, whose optimizer keeps the fp32 copy, the modules are "
                               "loaded in this dtype); auto = the checkpoint's own (config.json), recorded resolved",
                    ("float32", "bfloat16", "float16", "auto"))
    gradient_checkpointing: bool = _f(False, "recompute activations in the backward pass (saves GPU memory; the "
                                             "official 7B script uses it)")
    rope_positions: str = _f("qwen", "Qwen2-VL/2.5-VL 3D positions of the text after a video: qwen = past the "
                                     "video's highest position (the released models' scheme, vLLM's; transformers "
                                     "<= 5.2's for whole seconds per temporal group only); transformers = "
                                     "transformers 5.23's (video start + larger grid side), "
                                     "which differs for clips longer than the grid side (7B, 448x224: > 16 frames)",
                             ("qwen", "transformers"))
    warmstart_max_steps: int = _f(1500, "upper bound on supervised warm-up steps (stops earlier once held-out "
                                        "accuracy is above chance and below ceiling)")
    warmstart_dir: str = _f("", "where the warm-started model is cached (default: <cache>/warmstart-<hash>)")
    lora_r: int = _f(0, "LoRA rank (peft): > 0 trains low-rank adapters on the language model's linear layers "
                        "instead of every weight (the reference policy is then the model with adapters off); "
                        "0 = full fine-tuning")
    lora_alpha: float = _f(32.0, "LoRA scaling numerator (the update is alpha/r * B A)")
    lora_dropout: float = _f(0.05, "dropout on the LoRA branch's input (training only; attribution runs in eval "
                                   "mode without it)")
    lora_target_modules: list[str] = _f(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                         "down_proj"],
                                        "language-model linear layers that get adapters, by the last part of their "
                                        "name (the LM head may not: attribution reads its weight directly)")
    vision_tower: str = _f("auto", "the vision tower in training: train (full gradient), frozen (none), lora "
                                   "(adapters on its linear layers; needs lora_r > 0), auto (train without LoRA, "
                                   "frozen with it)", ("auto", "train", "frozen", "lora"))
    merge_lora: bool = _f(True, "with LoRA: write <output_dir>/final as a plain model with the adapter merged "
                                "(loadable by `videoktr eval`), the adapter itself in final/adapter; false = the "
                                "adapter only (`videoktr merge-lora` merges it later)")


@dataclass
class DataConfig:
    data: str = _f("", "training rows (Video-R1 JSON/JSONL); empty = the built-in synthetic world")
    data_root: str = _f("", "directory that media paths in `data` are relative to")
    world_train: int = _f(600, "synthetic world: clips of the supervised warm start")
    world_rl: int = _f(1500, "synthetic world: clips whose questions are the RL prompts (never seen by the warm start)")
    world_eval: int = _f(1000, "synthetic world: held-out clips for accuracy before/after (1000: about +-3 points)")
    attribution_rows: int = _f(300, "synthetic world: held-out reference responses scored for attribution AUC")
    world_seed: int = _f(0, "synthetic world: seed of clips and questions")
    world_style: str = _f("short", "synthetic world: reference style; short = terse reasoning (the default), "
                                   "long_cot = 100-250-token chains of thought, mostly filler and restatement, "
                                   "walking through the clip (docs/world-long-cot.md); sampled_cot = the same walk "
                                   "with every filler word drawn independently, so a policy samples its filler with "
                                   "real entropy (docs/world-sampled-cot.md); the long styles raise "
                                   "rl.max_completion_length to what the world needs",
                          ("short", "long_cot", "sampled_cot"))
    world_rl_filter: bool = _f(False, "synthetic world: before RL, keep only the RL prompts whose accuracy over "
                                      "rl.num_generations samples of the starting model lies in [0.2, 0.8] (the "
                                      "difficulty rule of `videoktr filter`, paper Sec. 4.1), so that most prompt "
                                      "groups carry a learning signal; cached per starting model, and reported")
    fps: float = _f(2.0, "frames sampled per second of video")
    min_frames: int = _f(4, "fewest frames per clip (even)")
    max_frames: int = _f(16, "most frames per clip (even; the paper trains with 16)")
    max_pixels: int = _f(128 * 28 * 28, "per-frame pixel budget for training (paper: 128*28*28)")
    min_pixels: int = _f(56 * 56, "per-frame lower pixel bound")
    video_backend: str = _f("pyav", "video decoder: pyav (default) or decord (optional: pip install decord); "
                                    "both sample the same frame indices", ("pyav", "decord"))
    media_workers: int = _f(0, "threads per process that decode media in the start-up check (0 = one per core, "
                               "at most 8; the files are shared out over the processes of a multi-process run)")
    media_cache: str = _f("", "JSONL file of media-check results, reused by later runs for files whose size and "
                              "mtime are unchanged (empty = <output_dir>/media_check.jsonl; 'none' = no cache)")


@dataclass
class RLConfig:
    method: str = _f("ktr", "ktr: Video-KTR (key-token masked GRPO, Eq. 2); grpo: plain GRPO; entropy: top-r entropy "
                            "tokens only; twgrpo: TW-GRPO token weights; tgrpo: Video-R1's T-GRPO temporal bonus; "
                            "vppo: VPPO (advantage reweighted by the response's visual dependency, gradient on its "
                            "most dependent tokens); papo: PAPO (GRPO + implicit perception loss)",
                 ("grpo", "ktr", "entropy", "twgrpo", "tgrpo", "vppo", "papo"))
    twgrpo_variant: str = _f("source", "TW-GRPO weights: source = the original TW-GRPO code (one weight per prompt "
                                       "group and position from a k3 divergence to the group's mean log-probs, "
                                       "min-max per group to [1, 1.7]); video_ktr_code = the same on raw logits, "
                                       "as the Video-KTR authors' code calls it; kl_to_mean = per-response KL to the "
                                       "group's mean distribution, min-max per response",
                             ("source", "video_ktr_code", "kl_to_mean"))
    tgrpo_alpha: float = _f(0.3, "T-GRPO: reward bonus for correct ordered responses (Video-R1: 0.3)")
    tgrpo_mu: float = _f(0.8, "T-GRPO: bonus when p_ordered >= mu * p_shuffled (Video-R1: 0.8)")
    dynamic_sampling: bool = _f(False, "DAPO's dynamic sampling, with any method: prompt groups whose rewards are all "
                                       "equal (no advantage, no gradient) are replaced by groups of freshly drawn "
                                       "training prompts until the batch is full again or "
                                       "rl.dynamic_sampling_max_batches is reached (then the rest keep constant "
                                       "groups, logged as dynamic_sampling/unfilled_groups)")
    dynamic_sampling_metric: str = _f("reward", "what must differ within a group for it to stay: reward = the "
                                                "weighted reward the advantages come from (verl's seq_reward); "
                                                "accuracy = the accuracy reward alone (verl's acc)",
                                      ("reward", "accuracy"))
    dynamic_sampling_max_batches: int = _f(10, "most generation batches per step with dynamic sampling, the first "
                                               "included (verl's max_num_gen_batches; DAPO's script: 10)")
    vppo_ratio: float = _f(0.4, "VPPO: share k of each response's tokens that get the gradient, the most visually "
                                "dependent (VPPO's 7B script: 0.4)")
    vppo_dependency: str = _f("kl", "VPPO: per-token visual dependency; kl = KL between the next-token "
                                    "distributions on the real and the visually perturbed input (the paper); k3 = "
                                    "its k3 estimate on the sampled token, clamped to [0, 10] (VPPO's code)",
                              ("kl", "k3"))
    vppo_advantage_min: float = _f(0.9, "VPPO: advantage factor of the batch's least visually dependent response; "
                                        "factors rise linearly with dependency and average 1 (VPPO's 7B script: 0.9)")
    vppo_entropy_penalty: float = _f(0.06, "VPPO: weight of the mean negative log-probability of the sampled tokens "
                                           "added to the loss (VPPO's 7B script: 0.06; 0 = off)")
    papo_coef: float = _f(0.02, "PAPO: weight gamma of the implicit perception loss, the KL between the policy on "
                                "the real and on the masked visual input, subtracted from the loss (PAPO's 7B GRPO "
                                "script: 0.02)")
    papo_entropy_coef: float = _f(0.05, "PAPO: double entropy loss, weight of the entropy estimate on the real input "
                                        "(PAPO's 7B script: 0.05; 0 = off)")
    papo_masked_entropy_coef: float = _f(0.05, "PAPO: double entropy loss, weight of the entropy estimate on the "
                                               "masked input (PAPO's 7B script: 0.05; 0 = off)")
    papo_kl_clip: float = _f(0.0, "PAPO: clamp each token's perception KL to [0, this] against loss hacking (PAPO's "
                                  "code: 0.2 when on; its released scripts leave it off; 0 = off)")
    num_train_epochs: float = _f(0.0, "passes over the training prompts; when > 0 it decides the run's length "
                                      "instead of rl.max_steps (0 = rl.max_steps decides)")
    max_steps: int = _f(500, "optimizer steps")
    learning_rate: float = _f(1e-4, "learning rate (paper, 7B: 2e-6)")
    prompts_per_step: int = _f(4, "distinct prompts per optimizer step and process")
    num_generations: int = _f(8, "G: responses sampled per prompt")
    temperature: float = _f(1.0, "sampling temperature (paper: 1.0)")
    top_p: float = _f(1.0, "nucleus sampling (official script: 0.95)")
    max_completion_length: int = _f(64, "longest sampled response in tokens (official script: 768)")
    beta: float = _f(0.0, "KL coefficient to the reference model (paper: 0.4; official script: 0.04)")
    epsilon: float = _f(0.2, "lower clip range of the ratio (1 - epsilon)")
    epsilon_high: float = _f(0.2, "upper clip range of the ratio (1 + epsilon_high)")
    num_iterations: int = _f(1, "policy updates per generated batch (mu); >1 makes the clip active")
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimizer step")
    weight_decay: float = _f(0.0, "AdamW weight decay (official script: 0.01)")
    max_grad_norm: float = _f(1.0, "gradient clipping (official script: 5)")
    lr_scheduler_type: str = _f("constant", "learning-rate schedule (official script: cosine)")
    warmup_steps: int = _f(0, "warm-up steps of the schedule")
    loss_normalization: str = _f("sequence", "sequence: Eq. 2 (1/|o_i| over all response tokens, mean over "
                                             "responses; TRL's 'grpo'); token: sum over the response tokens of "
                                             "each micro-batch / their number (TRL's 'bnpo'; not DAPO, which "
                                             "divides by the response tokens of the whole generation batch); "
                                             "selected: per response over selected tokens (official code, without "
                                             "its NaN)",
                                 ("sequence", "token", "selected"))
    reward_weights: list[float] = _f([1.0, 0.5], "weights of the reward functions (accuracy, format)")
    length_bonus: float = _f(0.0, "Video-R1's length bonus (data runs only): this reward is added, with weight 1, to "
                                  "each correct response (accuracy > 0.1) whose true token length is in "
                                  "[length_bonus_min_tokens, length_bonus_max_tokens], in prompt groups with at "
                                  "least 2 correct responses; 0 = off (the official Video-KTR script uses 0.2 on "
                                  "[320, 512])")
    length_bonus_min_tokens: int = _f(320, "shortest response (tokens) that earns the length bonus")
    length_bonus_max_tokens: int = _f(512, "longest response (tokens) that earns the length bonus")
    use_vllm: bool = _f(False, "sample rollouts with vLLM (needs vLLM and a GPU; videos and images ride along in "
                               "colocate mode, see README 'vLLM rollouts')")
    vllm_mode: str = _f("colocate", "colocate: a vLLM engine inside each training process (videos supported); "
                                    "server: `trl vllm-serve` on other GPUs (text-only data: video and image rows are "
                                    "refused there)",
                        ("colocate", "server"))
    vllm_gpu_memory_utilization: float = _f(0.3, "colocate: share of GPU memory vLLM may take")
    vllm_tensor_parallel_size: int = _f(1, "colocate: GPUs one vLLM engine spans")
    vllm_enable_sleep_mode: bool = _f(False, "colocate: release vLLM's memory during the optimizer step")
    vllm_server_base_url: str = _f("", "server: base URL of the vLLM server (empty: http://localhost:8000)")


@dataclass
class KTRConfig:
    signals: list[str] = _f(["visual", "temporal", "entropy"], "attribution signals whose top-r tokens are unioned "
                                                          "(paper Table 2: any subset of visual/temporal/entropy)")
    ratio: float = _f(0.2, "r: share of each response's tokens kept per signal, in (0, 1] (paper: 0.2)")
    selection: str = _f("response", "response: exactly ceil(r*n) per response; group: one threshold per prompt "
                                    "group; global: one threshold across processes; quantile: official code",
                        ("response", "group", "global", "quantile"))
    weighting: str = _f("binary", "binary mask (paper) or soft weights (RQ4)",
                        ("binary", "softmax", "sigmoid", "linear", "exponential"))
    distance: str = _f("logprob", "score: |Δ log p| (paper) or a full-distribution distance (RQ5)",
                       ("logprob", "kl", "jsd", "l1", "l2", "cosine", "hellinger"))
    signed: bool = _f(False, "official code's signed score logp_full - logp_perturbed instead of |.|")
    visual_strategy: str = _f("zero", "visual perturbation of encoder outputs (paper default: zero)",
                              ("zero", "zero_fraction", "replace"))
    visual_fraction: float = _f(0.5, "share of visual tokens zeroed by zero_fraction")
    temporal_strategy: str = _f("shuffle", "temporal perturbation of temporal groups (paper default: shuffle; "
                                           "derange: a random order in which every group moves)",
                                ("shuffle", "derange", "reverse", "segment"))
    segment_groups: int = _f(2, "temporal groups per segment for the segment strategy")
    temporal_samples: int = _f(1, "temporal score = mean over this many permutation draws (each adds one "
                                  "temporally perturbed pass over the attributed rows; paper: 1)")
    mask_kl: bool = _f(False, "apply the key-token mask to the KL term too (official code: yes)")
    control: str = _f("none", "a control for the masked methods (ktr, entropy): train, instead of the key-token "
                              "union, as many tokens per response chosen otherwise; random = a uniformly random set "
                              "(drawn with run.seed), complement = the tokens the union leaves out (capped at its "
                              "size), entropy_matched = the highest-entropy tokens at the union's update ratio "
                              "(matched per response); none = the union (core.controls)",
                      ("none", "random", "complement", "entropy_matched"))
    reuse_rollout_logps: bool = _f(True, "where TRL has already computed the old-policy log-probs of the responses "
                                         "(vLLM importance sampling, num_iterations > 1, steps_per_generation > "
                                         "gradient_accumulation_steps), take the scores' unperturbed side (log-probs "
                                         "and entropies) from that pass and run only the perturbed inputs; exact "
                                         "only without active dropout, so with lora_dropout > 0 attribution keeps "
                                         "its own unperturbed pass (docs/cost.md)")
    select_in_loss: bool = _f(True, "where TRL computes no old-policy pass (num_iterations 1, generation aligned with "
                                    "the optimizer step, no vLLM importance sampling): attribution evaluates only "
                                    "the perturbed inputs at the rollout, and the mask is chosen when the loss is "
                                    "reduced, from the policy forward's own log-probs and entropies (the weights "
                                    "have not moved since sampling); exact only without active dropout, with "
                                    "selection response, distance logprob and one temporal draw, else (and at "
                                    "rollout-logged steps) attribution keeps its own unperturbed pass "
                                    "(docs/cost.md)")


@dataclass
class RunConfig:
    output_dir: str = _f("runs/default", "run directory: checkpoints, logs, report.json, plots")
    cache_dir: str = _f(".cache/videoktr", "cache for the synthetic world and the warm-started model")
    seed: int = _f(0, "random seed")
    save_steps: int = _f(20, "checkpoint every N optimizer steps (resume continues from the last one)")
    save_only_model: bool = _f(False, "checkpoints hold the weights only, not the optimizer and schedule state "
                                      "(tens of GB at 7B); a run resumed from one restarts its optimizer")
    save_total_limit: int = _f(2, "checkpoints kept (0 = all)")
    logging_steps: int = _f(1, "log every N steps")
    resume: bool = _f(True, "continue from the last checkpoint in output_dir if there is one")
    report_to: list[str] = _f([], "experiment trackers that receive every logged metric (ktr/* included): any of "
                                  "tensorboard, trackio, wandb (each needs its package; wandb honours WANDB_MODE="
                                  "offline); empty = none")
    log_completions: bool = _f(False, "send a table of sampled completions to the trackers at each logging step")
    log_rollouts_every: int = _f(10, "every N optimizer steps, write a sample of that step's rollouts (prompt, token "
                                     "ids and text, rewards, advantages, per-signal scores and selections, token "
                                     "weights, log-probs) to <output_dir>/rollouts/step-NNNNNN-rankR.parquet, what "
                                     "`videoktr analyze` and `videoktr explain --run` read; 0 = off")
    log_rollouts_max: int = _f(32, "responses written per process and logged step (whole prompt groups, at least "
                                   "one); 0 = every response")
    save_final: bool = _f(True, "write the trained model (weights, tokenizer, processor) to <output_dir>/final, "
                                "ready for `videoktr eval --model`")
    eval_attribution: bool = _f(True, "measure attribution AUC on held-out reference responses in the report")
    cpu_threads: int = _f(0, "torch threads on the CPU: 0 = auto (one thread, unless OMP_NUM_THREADS is set; the small "
                             "models of the CPU path run fastest on one and do not stall when other jobs share the "
                             "cores: bench/threads.py), N = N threads; a GPU run keeps torch's default under auto. "
                             "The default run's warm start always uses one thread, so it is the same cached model "
                             "for every setting")


def lora_options(model: ModelConfig):
    """The LoRA settings of a model section (models.lora.LoraOptions)."""
    from ..models.lora import LoraOptions

    return LoraOptions(r=model.lora_r, alpha=model.lora_alpha, dropout=model.lora_dropout,
                       target_modules=tuple(model.lora_target_modules), vision=model.vision_tower)


SECTIONS = {"model": ModelConfig, "data": DataConfig, "rl": RLConfig, "ktr": KTRConfig, "run": RunConfig}


class ConfigError(ValueError):
    """A mistake in the options (a YAML file, a flag or a value), reported with where the value came from;
    `videoktr train` prints it and exits with code 2."""


@dataclass(frozen=True)
class Range:
    """The values a numeric option (each element, for a list) may take; None = unbounded. Never inf or nan."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # the bound itself is excluded
    high_open: bool = False
    note: str = ""  # why, or what a boundary value means, shown after the range

    def __contains__(self, value) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def bounds(self) -> str:
        def fmt(x) -> str:
            return str(x) if isinstance(x, int) else f"{x:g}"

        if self.low is not None and self.high is not None:
            return (f"in {'(' if self.low_open else '['}{fmt(self.low)}, {fmt(self.high)}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {fmt(self.low)}"
        return f"{'<' if self.high_open else '<='} {fmt(self.high)}"

    def describe(self, kind: type) -> str:
        """What a value out of range is told: "in (0, 1]", "a finite number > 0", ">= 1 (why)"."""
        text = self.bounds()
        if kind is float and not text.startswith("in "):
            text = f"a finite number {text}"
        return f"{text} ({self.note})" if self.note else text


def _ge(low, note=""):
    return Range(low=low, note=note)


def _gt(low, note=""):
    return Range(low=low, low_open=True, note=note)


SEED_RANGE = Range(0, 2**32 - 1, note="numpy's seed range")

# "section.option" -> allowed values, for every int and float option (and the elements of a list of numbers);
# test_config_validation checks that none is missing
RANGES: dict[str, Range] = {
    "model.warmstart_max_steps": _ge(0, "0 = no supervised warm-up"),
    "model.lora_r": _ge(0, "0 = full fine-tuning"),
    "model.lora_alpha": _gt(0),
    "model.lora_dropout": Range(0.0, 1.0, high_open=True),
    "data.world_train": _ge(1),
    "data.world_rl": _ge(1),
    "data.world_eval": _ge(1),
    "data.attribution_rows": _ge(1, "run.eval_attribution false turns the measurement off"),
    "data.world_seed": SEED_RANGE,
    "data.fps": _gt(0),
    "data.min_frames": _ge(2, "2 frames per temporal patch"),
    "data.max_frames": _ge(2, "2 frames per temporal patch"),
    "data.max_pixels": _ge(1),
    "data.min_pixels": _ge(1),
    "data.media_workers": _ge(0, "0 = automatic"),
    "run.cpu_threads": _ge(0, "0 = auto"),
    "rl.tgrpo_alpha": _ge(0),
    "rl.dynamic_sampling_max_batches": _ge(1, "1 = no resampling"),
    "rl.vppo_ratio": Range(0, 1, low_open=True),
    "rl.vppo_advantage_min": Range(0, 1),
    "rl.vppo_entropy_penalty": _ge(0, "0 = off"),
    "rl.papo_coef": _ge(0),
    "rl.papo_entropy_coef": _ge(0, "0 = off"),
    "rl.papo_masked_entropy_coef": _ge(0, "0 = off"),
    "rl.papo_kl_clip": _ge(0, "0 = off"),
    "rl.tgrpo_mu": _gt(0),
    "rl.max_steps": _ge(1, "0 would still train one step, and -1 TRL's default of 3 epochs"),
    "rl.num_train_epochs": _ge(0, "0 = rl.max_steps decides"),
    "rl.learning_rate": _gt(0),
    "rl.prompts_per_step": _ge(1),
    "rl.num_generations": _ge(2, "group advantages"),
    "rl.temperature": _gt(0, "sampling divides the logits by it; 0 is not greedy decoding here"),
    "rl.top_p": Range(0, 1, low_open=True),
    "rl.max_completion_length": _ge(1),
    "rl.beta": _ge(0, "0 = no KL term"),
    "rl.epsilon": Range(0, 1),
    "rl.epsilon_high": _ge(0),
    "rl.num_iterations": _ge(1),
    "rl.gradient_accumulation_steps": _ge(1),
    "rl.weight_decay": _ge(0),
    "rl.max_grad_norm": _ge(0, "0 = no clipping"),
    "rl.warmup_steps": _ge(0),
    "rl.reward_weights": _ge(0),
    "rl.length_bonus": _ge(0, "0 = off"),
    "rl.length_bonus_min_tokens": _ge(0),
    "rl.length_bonus_max_tokens": _ge(0),
    "rl.vllm_gpu_memory_utilization": Range(0, 1, low_open=True),
    "rl.vllm_tensor_parallel_size": _ge(1),
    "ktr.ratio": Range(0, 1, low_open=True),
    "ktr.visual_fraction": Range(0, 1, low_open=True),
    "ktr.segment_groups": _ge(1),
    "ktr.temporal_samples": _ge(1, "1 = one draw, as the paper"),
    "run.seed": SEED_RANGE,
    "run.save_steps": _ge(1),
    "run.save_total_limit": _ge(0, "0 = keep every checkpoint"),
    "run.logging_steps": _ge(1),
    "run.log_rollouts_every": _ge(0, "0 = off"),
    "run.log_rollouts_max": _ge(0, "0 = every response"),
}
# string options that must not be empty
NON_EMPTY = {"run.output_dir", "run.cache_dir"}
# the rewards rl.reward_weights weighs, in order (Video-R1's length bonus, when on, is added with weight 1)
REWARD_NAMES = ("accuracy", "format")
SIGNALS = ("visual", "temporal", "entropy")

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_KIND = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _given(value) -> str:
    if value is None:
        return "nothing (null: an empty value in YAML)"
    kind = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "a list",
            tuple: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)
    return f"{value!r} ({kind})"


def convert_value(value, kind, label: str, allowed: Range | None = None):
    """`value` as option type `kind` (int, float, bool, str, list[...]); ConfigError naming `label` (and the
    `allowed` range) when it is not one. Only unambiguous conversions: an int or a numeric string for a float
    (PyYAML follows YAML 1.1, which reads `1e-5` as a string and `1.0e-5` as a float), a tuple for a list. Never
    a float or a string for an int, nor anything but a boolean for a boolean."""
    if typing.get_origin(kind) is list or kind is list:
        if not isinstance(value, (list, tuple)):
            item = (typing.get_args(kind) or (None,))[0]
            of = {int: " of integers", float: " of numbers", str: " of strings"}.get(item, "")
            raise ConfigError(f"{label} must be a list{of}, got {_given(value)}")
        (item,) = typing.get_args(kind) or (None,)
        return [v if item is None else convert_value(v, item, f"{label}[{i}]", allowed)
                for i, v in enumerate(value)]
    ok = False
    if kind is bool or kind is str:
        ok = isinstance(value, kind)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    if not ok:
        expected = _KIND.get(kind, getattr(kind, "__name__", str(kind)))
        if allowed is not None:
            expected += f" {allowed.bounds()}" + (f" ({allowed.note})" if allowed.note else "")
        raise ConfigError(f"{label} must be {expected}, got {_given(value)}")
    return value


def check_option(cls, name: str, value, label: str):
    """One option's value, converted to its field type, checked against its choices and range (RANGES)."""
    section = next(s for s, c in SECTIONS.items() if c is cls)
    f = next(f for f in fields(cls) if f.name == name)
    kind = typing.get_type_hints(cls)[name]
    allowed = RANGES.get(f"{section}.{name}")
    value = convert_value(value, kind, label, allowed)
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{label} must be one of {list(choices)}, got {value!r}")
    if f"{section}.{name}" in NON_EMPTY and not value.strip():
        raise ConfigError(f"{label} must not be empty")
    if allowed is not None:
        item = typing.get_args(kind)[0] if typing.get_origin(kind) is list else kind
        for i, v in enumerate(value if isinstance(value, list) else [value]):
            if v not in allowed:
                where = f"{label}[{i}]" if isinstance(value, list) else label
                raise ConfigError(f"{where} must be {allowed.describe(item)}, got {v!r}")
    return value


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    ktr: KTRConfig = field(default_factory=KTRConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def source(self, section: str, name: str) -> str:
        """Where an option's value came from: a YAML file, a flag, or "" (the default, or set in code)."""
        return getattr(self, "_sources", {}).get((section, name), "")

    def label(self, section: str, name: str) -> str:
        """`section.name`, prefixed with where its value came from ("configs/x.yaml: rl.max_steps")."""
        where = self.source(section, name)
        return f"{where}: {section}.{name}" if where else f"{section}.{name}"

    def validate(self) -> None:
        """One pass over every option, before any work: its type (converted in place where unambiguous, see
        `convert_value`, so config.json records the converted value), choices and range (RANGES), then the rules
        between options. Raises ConfigError naming the file or flag, section, option, what was expected and
        the value given."""
        for name, cls in SECTIONS.items():
            section = getattr(self, name)
            if not isinstance(section, cls):
                raise ConfigError(f"config section '{name}' must be a {cls.__name__}, got {_given(section)}")
            for f in fields(cls):
                setattr(section, f.name, check_option(cls, f.name, getattr(section, f.name), self.label(name, f.name)))
        d, rl, k = self.data, self.rl, self.ktr
        bad = [s for s in k.signals if s not in SIGNALS]
        if bad or not k.signals:
            raise ConfigError(f"{self.label('ktr', 'signals')} must be a non-empty subset of visual/temporal/entropy, "
                              f"got {k.signals}")
        if k.control != "none" and rl.method not in ("ktr", "entropy"):
            raise ConfigError(f"{self.label('ktr', 'control')} {k.control!r} replaces the key-token mask of the masked "
                              f"methods (ktr, entropy); rl.method is {rl.method!r}")
        if k.control != "none" and k.weighting != "binary":
            raise ConfigError(f"{self.label('ktr', 'control')} {k.control!r} replaces a binary mask; ktr.weighting "
                              f"must be 'binary', got {k.weighting!r}")
        if k.signed and k.distance != "logprob":
            raise ConfigError(f"{self.label('ktr', 'signed')}: a signed score applies only to ktr.distance 'logprob', "
                              f"got ktr.distance {k.distance!r}")
        for key in ("min_frames", "max_frames"):
            if getattr(d, key) % 2:
                raise ConfigError(f"{self.label('data', key)} must be even (2 frames per temporal patch), "
                                  f"got {getattr(d, key)}")
        if d.min_frames > d.max_frames:
            raise ConfigError(f"{self.label('data', 'min_frames')} ({d.min_frames}) must be <= data.max_frames "
                              f"({d.max_frames})")
        if d.min_pixels > d.max_pixels:
            raise ConfigError(f"{self.label('data', 'min_pixels')} ({d.min_pixels}) must be <= data.max_pixels "
                              f"({d.max_pixels})")
        if len(rl.reward_weights) != len(REWARD_NAMES):
            raise ConfigError(f"{self.label('rl', 'reward_weights')} must have {len(REWARD_NAMES)} values, one per "
                              f"reward ({', '.join(REWARD_NAMES)}; the length bonus, when on, is added with weight "
                              f"1), got {len(rl.reward_weights)}: {rl.reward_weights}")
        from ..models.lora import LoraError

        try:
            lora_options(self.model).validate(label=lambda name: self.label("model", name))
        except LoraError as exc:
            raise ConfigError(str(exc)) from None
        if rl.use_vllm and self.model.rope_positions != "qwen":
            raise ConfigError(f"{self.label('model', 'rope_positions')} {self.model.rope_positions!r} cannot be used "
                              f"with vLLM rollouts (rl.use_vllm): vLLM computes Qwen's 3D positions, so on clips "
                              f"longer than the grid side the responses would be sampled under one scheme and "
                              f"trained under the other (biased importance ratios). Use model.rope_positions: "
                              f"qwen, or sample with transformers (rl.use_vllm: false)")
        if rl.length_bonus_min_tokens > rl.length_bonus_max_tokens:
            raise ConfigError(f"{self.label('rl', 'length_bonus_min_tokens')} ({rl.length_bonus_min_tokens}) must be "
                              f"<= rl.length_bonus_max_tokens ({rl.length_bonus_max_tokens})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _field_type(cls, f) -> type:
    hints = typing.get_type_hints(cls)
    return hints[f.name]


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _yaml_error(path: Path, exc) -> ConfigError:
    """A YAML syntax error as one line naming the file, line and column (PyYAML's own names "<unicode string>")."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return ConfigError(f"{path}: invalid YAML{where}: {problem}" + (f" ({context})" if context else ""))


def read_yaml_sections(path: str | Path, _seen: tuple = (), sources: dict | None = None) -> dict[str, dict]:
    """Sections of a YAML config; a top-level `base: other.yaml` (relative to this file) is read first and
    this file's values override it section by section. `sources`, when given, receives (section, option) ->
    the file that set the value."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {p}")
    if p.resolve() in _seen:
        raise ConfigError(f"{p}: circular `base`")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise _yaml_error(p, exc) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not a UTF-8 text file ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping of sections {sorted(SECTIONS)}, got {_given(raw)}")
    base = raw.pop("base", None)
    unknown = sorted(map(str, set(raw) - set(SECTIONS)))
    if unknown:
        raise ConfigError(f"{p}: unknown section(s) {unknown}{did_you_mean(unknown, SECTIONS)}; sections are "
                          f"{sorted(SECTIONS)} (and `base`)")
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"{p}: `base` must be a file name (a string), got {_given(base)}")
    merged = read_yaml_sections(p.parent / base, _seen + (p.resolve(),), sources) if base else {}
    for name, values in raw.items():
        if values is not None and not isinstance(values, dict):
            raise ConfigError(f"{p}: section '{name}' must be a mapping of options, got {_given(values)}")
        merged[name] = {**merged.get(name, {}), **(values or {})}
        if sources is not None:
            sources.update({(name, key): str(p) for key in values or {}})
    return merged


def did_you_mean(unknown: list[str], known) -> str:
    """'; did you mean learning_rate?' for the closest known name of each unknown one (difflib), or ''."""
    import difflib

    close = [f"{name} -> {match[0]}" if len(unknown) > 1 else match[0] for name in unknown
             if (match := difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6))]
    return f"; did you mean {', '.join(close)}?" if close else ""


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML file (sections model/data/rl/ktr/run, optional `base`) and apply flat overrides
    ({"max_steps": 5}, named after their flag in errors), then validate the result (`TrainConfig.validate`)."""
    sources: dict = {}
    raw: dict[str, Any] = read_yaml_sections(path, sources=sources) if path else {}
    sections = {}
    for name, cls in SECTIONS.items():
        values = dict(raw.get(name) or {})
        known = {f.name for f in fields(cls)}
        extra = sorted(map(str, set(values) - known))
        if extra:
            files = sorted({sources.get((name, key), str(path)) for key in values if str(key) in extra})
            elsewhere = [f"{key} belongs in section '{FLAG_OWNER[key]}'" for key in extra if key in FLAG_OWNER]
            hint = f" ({'; '.join(elsewhere)})" if elsewhere else did_you_mean(extra, known)
            raise ConfigError(f"{', '.join(files)}: unknown option(s) {extra} in section '{name}'{hint}; "
                              f"known: {sorted(known)}")
        sections[name] = cls(**values)
    config = TrainConfig(**sections)
    for key, value in (overrides or {}).items():
        section = FLAG_OWNER.get(key)
        if section is None:
            raise ConfigError(f"unknown option {key!r}{did_you_mean([key], FLAG_OWNER)}")
        setattr(getattr(config, section), key, value)
        sources[(section, key)] = flag_name(key)
    config._sources = sources
    config.validate()
    return config


FLAG_OWNER: dict[str, str] = {}
for _name, _cls in SECTIONS.items():
    for _f_ in fields(_cls):
        assert _f_.name not in FLAG_OWNER, f"option name {_f_.name} is used in two sections"
        FLAG_OWNER[_f_.name] = _name


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per config field (default None = keep the file's or the dataclass's value)."""
    parser.add_argument("--config", default=None, help="YAML file with sections model/data/rl/ktr/run")
    for name, cls in SECTIONS.items():
        group = parser.add_argument_group(f"{name} options")
        for f in fields(cls):
            ftype = _field_type(cls, f)
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            flag = flag_name(f.name)
            help_text = f"{f.metadata['help']} (default: {default})"
            kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text}
            if ftype is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            elif typing.get_origin(ftype) is list or ftype is list:
                kwargs["nargs"] = "+"
                kwargs["type"] = (typing.get_args(ftype) or (str,))[0]
            else:
                kwargs["type"] = ftype
                if f.metadata.get("choices"):
                    kwargs["choices"] = f.metadata["choices"]
            group.add_argument(flag, **kwargs)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = {k: getattr(args, k) for k in FLAG_OWNER if getattr(args, k, None) is not None}
    return load_config(args.config, overrides)
