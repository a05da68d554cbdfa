"""Run configuration: dataclasses with one help string per field. One YAML file reproduces one experiment.

A YAML file has one section per dataclass (`model`, `data`, `rl`, `ktr`, `run`); every field is also a
command-line flag (`--max-steps 20`, `--method grpo`), and flags override the file. `videoktr train --help`
prints every option with its help string.
"""

from __future__ import annotations

import argparse
import dataclasses
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
                               "loaded in this dtype)", ("float32", "bfloat16", "float16"))
    gradient_checkpointing: bool = _f(False, "recompute activations in the backward pass (saves GPU memory; the "
                                             "official 7B script uses it)")
    warmstart_max_steps: int = _f(1500, "upper bound on supervised warm-up steps (stops earlier once held-out "
                                        "accuracy is above chance and below ceiling)")
    warmstart_dir: str = _f("", "where the warm-started model is cached (default: <cache>/warmstart-<hash>)")


@dataclass
class DataConfig:
    data: str = _f("", "training rows (Video-R1 JSON/JSONL); empty = the built-in synthetic world")
    data_root: str = _f("", "directory that media paths in `data` are relative to")
    world_train: int = _f(600, "synthetic world: clips of the supervised warm start")
    world_rl: int = _f(1500, "synthetic world: clips whose questions are the RL prompts (never seen by the warm start)")
    world_eval: int = _f(1000, "synthetic world: held-out clips for accuracy before/after (1000: about +-3 points)")
    attribution_rows: int = _f(300, "synthetic world: held-out reference responses scored for attribution AUC")
    world_seed: int = _f(0, "synthetic world: seed of clips and questions")
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
                            "tokens only; twgrpo: TW-GRPO token weights; tgrpo: Video-R1's T-GRPO temporal bonus",
                 ("grpo", "ktr", "entropy", "twgrpo", "tgrpo"))
    twgrpo_variant: str = _f("source", "TW-GRPO weights: source = the original TW-GRPO code (one weight per prompt "
                                       "group and position from a k3 divergence to the group's mean log-probs, "
                                       "min-max per group to [1, 1.7]); video_ktr_code = the same on raw logits, "
                                       "as the Video-KTR authors' code calls it; kl_to_mean = per-response KL to the "
                                       "group's mean distribution, min-max per response",
                             ("source", "video_ktr_code", "kl_to_mean"))
    tgrpo_alpha: float = _f(0.3, "T-GRPO: reward bonus for correct ordered responses (Video-R1: 0.3)")
    tgrpo_mu: float = _f(0.8, "T-GRPO: bonus when p_ordered >= mu * p_shuffled (Video-R1: 0.8)")
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
    reward_weights: list = _f([1.0, 0.5], "weights of the reward functions (accuracy, format)")
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
    signals: list = _f(["visual", "temporal", "entropy"], "attribution signals whose top-r tokens are unioned "
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
    temporal_strategy: str = _f("shuffle", "temporal perturbation of temporal groups (paper default: shuffle)",
                                ("shuffle", "reverse", "segment"))
    segment_groups: int = _f(2, "temporal groups per segment for the segment strategy")
    mask_kl: bool = _f(False, "apply the key-token mask to the KL term too (official code: yes)")


@dataclass
class RunConfig:
    output_dir: str = _f("runs/default", "run directory: checkpoints, logs, report.json, plots")
    cache_dir: str = _f(".cache/videoktr", "cache for the synthetic world and the warm-started model")
    seed: int = _f(0, "random seed")
    save_steps: int = _f(20, "checkpoint every N optimizer steps (resume continues from the last one)")
    save_total_limit: int = _f(2, "checkpoints kept")
    logging_steps: int = _f(1, "log every N steps")
    resume: bool = _f(True, "continue from the last checkpoint in output_dir if there is one")
    save_final: bool = _f(True, "write the trained model (weights, tokenizer, processor) to <output_dir>/final, "
                                "ready for `videoktr eval --model`")
    eval_attribution: bool = _f(True, "measure attribution AUC on held-out reference responses in the report")


SECTIONS = {"model": ModelConfig, "data": DataConfig, "rl": RLConfig, "ktr": KTRConfig, "run": RunConfig}


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    ktr: KTRConfig = field(default_factory=KTRConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> None:
        for name, cls in SECTIONS.items():
            section = getattr(self, name)
            for f in fields(cls):
                choices = f.metadata.get("choices")
                if choices and getattr(section, f.name) not in choices:
                    raise ValueError(f"{name}.{f.name} must be one of {list(choices)}, got {getattr(section, f.name)!r}")
        if not 0.0 < self.ktr.ratio <= 1.0:
            raise ValueError(f"ktr.ratio must be in (0, 1], got {self.ktr.ratio}")
        bad = [s for s in self.ktr.signals if s not in ("visual", "temporal", "entropy")]
        if bad or not self.ktr.signals:
            raise ValueError(f"ktr.signals must be a non-empty subset of visual/temporal/entropy, got {self.ktr.signals}")
        if self.rl.num_generations < 2:
            raise ValueError(f"rl.num_generations must be >= 2 (group advantages), got {self.rl.num_generations}")
        if self.data.media_workers < 0:
            raise ValueError(f"data.media_workers must be >= 0 (0 = automatic), got {self.data.media_workers}")
        if self.data.min_frames % 2 or self.data.max_frames % 2:
            raise ValueError("data.min_frames and data.max_frames must be even (2 frames per temporal patch)")
        rl = self.rl
        if not (isinstance(rl.length_bonus, (int, float)) and 0 <= rl.length_bonus < float("inf")):
            raise ValueError(f"rl.length_bonus must be a finite number >= 0 (0 = off), got {rl.length_bonus!r}")
        if rl.length_bonus_min_tokens < 0:
            raise ValueError(f"rl.length_bonus_min_tokens must be >= 0, got {rl.length_bonus_min_tokens}")
        if rl.length_bonus_min_tokens > rl.length_bonus_max_tokens:
            raise ValueError(f"rl.length_bonus_min_tokens ({rl.length_bonus_min_tokens}) must be <= "
                             f"rl.length_bonus_max_tokens ({rl.length_bonus_max_tokens})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _field_type(cls, f) -> type:
    hints = typing.get_type_hints(cls)
    return hints[f.name]


def read_yaml_sections(path: str | Path, _seen: tuple = ()) -> dict[str, dict]:
    """Sections of a YAML config; a top-level `base: other.yaml` (relative to this file) is read first and
    this file's values override it section by section."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {p}")
    if p.resolve() in _seen:
        raise ValueError(f"{p}: circular `base`")
    raw = yaml.safe_load(p.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{p}: expected a mapping of sections {sorted(SECTIONS)}")
    base = raw.pop("base", None)
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ValueError(f"{p}: unknown section(s) {unknown}; sections are {sorted(SECTIONS)} (and `base`)")
    merged = read_yaml_sections(p.parent / base, _seen + (p.resolve(),)) if base else {}
    for name, values in raw.items():
        if values is not None and not isinstance(values, dict):
            raise ValueError(f"{p}: section '{name}' must be a mapping of options")
        merged[name] = {**merged.get(name, {}), **(values or {})}
    return merged


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML file (sections model/data/rl/ktr/run, optional `base`) and apply flat overrides
    ({"max_steps": 5})."""
    raw: dict[str, Any] = read_yaml_sections(path) if path else {}
    sections = {}
    for name, cls in SECTIONS.items():
        values = dict(raw.get(name) or {})
        known = {f.name for f in fields(cls)}
        extra = sorted(set(values) - known)
        if extra:
            raise ValueError(f"{path}: unknown option(s) {extra} in section '{name}'; known: {sorted(known)}")
        sections[name] = cls(**values)
    config = TrainConfig(**sections)
    for key, value in (overrides or {}).items():
        section = FLAG_OWNER.get(key)
        if section is None:
            raise ValueError(f"unknown option {key!r}")
        setattr(getattr(config, section), key, value)
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
            flag = "--" + f.name.replace("_", "-")
            help_text = f"{f.metadata['help']} (default: {default})"
            kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text}
            if ftype is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            elif ftype is list:
                kwargs["nargs"] = "+"
                kwargs["type"] = float if default and isinstance(default[0], float) else str
            else:
                kwargs["type"] = ftype
                if f.metadata.get("choices"):
                    kwargs["choices"] = f.metadata["choices"]
            group.add_argument(flag, **kwargs)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = {k: getattr(args, k) for k in FLAG_OWNER if getattr(args, k, None) is not None}
    return load_config(args.config, overrides)
