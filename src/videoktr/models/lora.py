"""LoRA adapters (through `peft`) for the Qwen-VL families: which modules get adapters, what happens to the
vision tower, and merging a trained adapter back into a plain model directory.

Targets are the language model's linear layers named in `target_modules` (the last component of the module
name: q_proj, k_proj, ... as in every Qwen LM) and, with `vision="lora"`, every linear layer of the vision
tower (its blocks and the merger). The LM head is never adapted: attribution reads its weight directly to
build log-probs chunk by chunk (core.lm_head_logprobs), so an adapter there would be invisible to the
key-token scores. Modules are matched by name, never guessed: the Qwen2.5-VL vision MLP has gate/up/down
projections of the same names as the LM's, so a plain suffix list would adapt both.

Vision modes: "train" (full gradient, the default without LoRA: Video-R1 and Video-KTR train it), "frozen"
(no gradient), "lora" (adapters, needs LoRA), "auto" (= "train" without LoRA, "frozen" with LoRA, where the
memory saving is the point).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

VISION_MODES = ("auto", "train", "frozen", "lora")
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_CONFIG = "adapter_config.json"


class LoraError(ValueError):
    """A LoRA option that cannot apply to this model; the message names the option."""


@dataclass
class LoraOptions:
    """LoRA settings (config fields model.lora_*; r = 0 means full fine-tuning, no adapters)."""

    r: int = 0
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    vision: str = "auto"

    @property
    def enabled(self) -> bool:
        return self.r > 0

    def vision_mode(self) -> str:
        """The vision tower's resolved mode ("auto" decided by whether LoRA is on)."""
        if self.vision == "auto":
            return "frozen" if self.enabled else "train"
        return self.vision

    def validate(self, label=lambda name: f"model.{name}") -> None:
        """Raises LoraError naming the option (`label(field)`: the config's name for it, with its source)."""
        if self.vision not in VISION_MODES:
            raise LoraError(f"{label('vision_tower')} must be one of {VISION_MODES}, got {self.vision!r}")
        if self.vision == "lora" and not self.enabled:
            raise LoraError(f"{label('vision_tower')}: 'lora' puts adapters on the vision tower and needs "
                            "model.lora_r > 0 (e.g. 64)")
        if self.enabled and not self.target_modules:
            raise LoraError(f"{label('lora_target_modules')} is empty: name at least one linear layer (e.g. q_proj)")
        if "lm_head" in self.target_modules:
            raise LoraError(f"{label('lora_target_modules')} may not contain lm_head: key-token attribution reads "
                            "the LM head's weight directly, so an adapter there would not be seen by the scores")


def vision_prefix(model) -> str:
    """Module-name prefix of the vision tower (`model.visual` for the Qwen-VL families)."""
    visual = model.model.visual
    for name, module in model.named_modules():
        if module is visual:
            return name
    raise LoraError(f"{type(model).__name__}: no vision tower found under model.visual")


def _linear_names(model) -> list[str]:
    import torch

    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def target_names(model, options: LoraOptions) -> list[str]:
    """Full names of the linear layers that get adapters: the LM's whose last name component is in
    `options.target_modules`, plus every vision-tower linear layer when the vision mode is "lora". Raises
    LoraError naming the option when a requested name matches nothing in the language model."""
    prefix = vision_prefix(model) + "."
    names = _linear_names(model)
    language = [n for n in names if not n.startswith(prefix) and n != "lm_head" and not n.endswith(".lm_head")]
    wanted = set(options.target_modules)
    chosen = [n for n in language if n.rsplit(".", 1)[-1] in wanted]
    found = {n.rsplit(".", 1)[-1] for n in chosen}
    missing = sorted(wanted - found)
    if missing:
        available = sorted({n.rsplit(".", 1)[-1] for n in language})
        raise LoraError(f"model.lora_target_modules: {missing} name no linear layer of the language model "
                        f"(available: {available})")
    if options.vision_mode() == "lora":
        chosen += [n for n in names if n.startswith(prefix)]
    return chosen


def names_pattern(names: list[str]) -> str:
    """A regular expression that matches exactly `names` (peft full-matches a string `target_modules`), kept
    short by writing layer indices as \\d+: 'model\\.language_model\\.layers\\.\\d+\\.self_attn\\.q_proj|...'.
    Only indices followed by a dot are generalised: `merger.mlp.0` and `merger.mlp.2` are linear layers, while
    `merger.mlp.1` (between them) is an activation that LoRA cannot adapt."""
    shapes = dict.fromkeys(re.sub(r"\\\.\d+(?=\\\.)", r"\\.\\d+", re.escape(n)) for n in names)
    return "|".join(shapes)


def peft_config(model, options: LoraOptions):
    """The `peft.LoraConfig` for `model` (no task type: the model's own forward runs unchanged under the
    adapters, every keyword argument passed through)."""
    from peft import LoraConfig

    options.validate()
    pattern = names_pattern(target_names(model, options))
    modules_to_save = [vision_prefix(model)] if options.vision_mode() == "train" else None
    return LoraConfig(r=options.r, lora_alpha=options.alpha, lora_dropout=options.dropout, target_modules=pattern,
                      modules_to_save=modules_to_save, bias="none")


def freeze_vision_tower(model) -> int:
    """Full fine-tuning with vision mode "frozen": the vision tower gets no gradient. Returns how many
    parameters were frozen."""
    frozen = 0
    for p in model.model.visual.parameters():
        p.requires_grad_(False)
        frozen += p.numel()
    return frozen


def base_model(model):
    """The transformers model under a peft wrapper (adapters stay injected and active), else `model`. Code
    that reaches into the model's modules (vision tower, LM head, decoder) goes through this."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) and hasattr(model, "peft_config") else model


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def merge_adapter(adapter_dir: str | Path, output_dir: str | Path, base: str | Path | None = None,
                  dtype: str = "float32", save_dtype: str | None = None, rope_positions: str | None = None) -> Path:
    """Merge a trained adapter into its base model and write a plain model directory (weights, config, the
    processor) that `load_model` and `videoktr eval` load like any checkpoint. `base`: the base model directory
    (default: the one recorded in the adapter's config). The merge runs in `dtype` (float32 by default: a
    low-rank update added in bf16 rounds away wherever it is smaller than bf16's resolution of the weight);
    `save_dtype` (default: `dtype`) is the dtype written. The merged directory records the 3D position scheme
    the adapter was trained under (`rope_positions`, else the adapter's record, else what an earlier videoktr
    left beside it, else the base model's; models.positions)."""
    import json

    from peft import PeftModel

    from .factory import load_model, load_processor

    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    if not is_adapter_dir(adapter_dir):
        raise LoraError(f"{adapter_dir}: not an adapter directory (no {ADAPTER_CONFIG})")
    recorded = json.loads((adapter_dir / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    base = Path(base or recorded or "")
    if not (base / "config.json").is_file():
        raise LoraError(f"{adapter_dir}: base model {str(base)!r} is not a model directory; pass the base "
                        "model's directory")
    from .positions import legacy_scheme, recorded_scheme

    legacy = legacy_scheme(adapter_dir)
    scheme = rope_positions or recorded_scheme(adapter_dir) or (legacy[0] if legacy else None)
    model = load_model(base, dtype=dtype, rope_positions=scheme)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    if save_dtype and save_dtype != dtype:
        import torch

        merged.to(getattr(torch, save_dtype))
    output_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(output_dir)
    load_processor(base).save_pretrained(output_dir)
    return output_dir


@dataclass
class MemoryEstimate:
    """Training-state bytes per process for full fine-tuning vs LoRA (weights, gradients, AdamW moments, fp32
    master copy), from parameter counts. Activations are not counted: they are the same for both."""

    total_params: int
    trainable_params: int
    weight_bytes: int
    state_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.state_bytes


def training_state_bytes(total_params: int, trainable_params: int, weight_dtype_bytes: int = 2,
                         master_fp32: bool = True) -> MemoryEstimate:
    """Bytes of weights (every parameter in the weight dtype) plus, for trainable parameters only, the
    gradient (weight dtype), AdamW's two fp32 moments and an fp32 master copy (when the weights are not
    fp32 already)."""
    per_trainable = weight_dtype_bytes + 8 + (4 if master_fp32 and weight_dtype_bytes != 4 else 0)
    return MemoryEstimate(total_params, trainable_params, total_params * weight_dtype_bytes,
                          trainable_params * per_trainable)
