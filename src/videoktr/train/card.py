"""The model card written beside a trained model (README.md in the run directory, its checkpoints and `final/`):
what it was trained from, how and on what, and how to run it on a video. TRL's card says "fine-tuned version of
[None]" for a local base model and shows a text-generation pipeline that does not apply to a video model."""

from __future__ import annotations

import json
from pathlib import Path

from .config import TrainConfig

METHOD_NAMES = {
    "ktr": "Video-KTR (key-token masked GRPO: the union of the top-r visual, temporal and entropy tokens)",
    "entropy": "entropy-only key tokens (top-r highest-entropy tokens)",
    "grpo": "GRPO (clipped, every response token)",
    "twgrpo": "TW-GRPO token weights",
    "tgrpo": "Video-R1's T-GRPO (temporal contrast bonus)",
    "vppo": "VPPO (advantage reweighted by visual dependency, gradient on the most visually dependent tokens)",
    "papo": "PAPO (GRPO with the implicit perception loss and the double entropy loss)",
}


def card_info(config: TrainConfig, base_model: str) -> dict:
    """What the card says, from the run's resolved options and starting model."""
    rl, k = config.rl, config.ktr
    options = {"rl": {name: getattr(rl, name) for name in (
        "learning_rate", "num_generations", "temperature", "top_p", "max_completion_length", "beta", "epsilon",
        "epsilon_high", "loss_normalization", "reward_weights", "length_bonus")}}
    if rl.method in ("ktr", "entropy"):
        options["ktr"] = {name: getattr(k, name) for name in (
            "signals", "ratio", "selection", "weighting", "distance", "visual_strategy", "temporal_strategy",
            "temporal_samples", "mask_kl", "control")}
    if rl.method == "twgrpo":
        options["rl"]["twgrpo_variant"] = rl.twgrpo_variant
    if rl.method == "vppo":
        options["rl"].update({name: getattr(rl, name) for name in (
            "vppo_ratio", "vppo_dependency", "vppo_advantage_min", "vppo_entropy_penalty")})
    if rl.method == "papo":
        options["rl"].update({name: getattr(rl, name) for name in (
            "papo_coef", "papo_entropy_coef", "papo_masked_entropy_coef", "papo_kl_clip")})
    if rl.method in ("vppo", "papo"):
        options["ktr"] = {"visual_strategy": k.visual_strategy, "visual_fraction": k.visual_fraction}
    if rl.dynamic_sampling:
        options["rl"].update({name: getattr(rl, name) for name in (
            "dynamic_sampling", "dynamic_sampling_metric", "dynamic_sampling_max_batches")})
    m = config.model
    if m.lora_r:
        options["model"] = {name: getattr(m, name) for name in (
            "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "vision_tower")}
    elif m.vision_tower == "frozen":
        options["model"] = {"vision_tower": "frozen"}
    # a directory on disk by its absolute path (a relative one means nothing beside the card); a hub id as it is
    base = str(Path(base_model).resolve()) if base_model and Path(base_model).exists() else base_model
    return {"base_model": base, "method": rl.method, "options": options, "lora": bool(m.lora_r),
            # the prompt style of the training rows (models.info): Video-R1 rows get the reasoning prompt
            "prompt": "reasoning" if config.data.data else "plain",
            "data": config.data.data or "the built-in synthetic video world (videoktr.world)",
            "fps": config.data.fps, "max_frames": config.data.max_frames, "max_pixels": config.data.max_pixels,
            "dtype": config.model.dtype, "rope_positions": config.model.rope_positions}


LORA_LINE = (", with LoRA adapters (peft): a checkpoint holds the adapter; the run's `final/` holds the base model "
             "with the adapter merged (model.merge_lora) and the adapter alone in `final/adapter/`")


def model_card(info: dict, steps: int | None = None) -> str:
    """Markdown model card from `card_info` (and the optimizer steps trained so far)."""
    method = METHOD_NAMES.get(info["method"], info["method"])
    trained = f" for {steps} optimizer steps" if steps is not None else ""
    return f"""---
library_name: transformers
pipeline_tag: image-text-to-text
tags: [videoktr, video, reinforcement-learning, {info["method"]}]
---

# Trained with videoktr

- **Base model:** `{info["base_model"]}`
- **Method:** {method}{trained}{LORA_LINE if info.get("lora") else ""}
- **Data:** `{info["data"]}`
- **Training precision:** {info["dtype"]}; videos sampled at {info["fps"]} fps, at most {info["max_frames"]} frames of
  {info["max_pixels"]} pixels

Options that define the run (the run directory's `config.json` has all of them):

```json
{json.dumps(info["options"], indent=2)}
```

## Use with transformers

```python
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor
from videoktr.data.video import read_video  # or any decoder: pass the real fps as video_metadata
from videoktr.models.positions import install

model = AutoModelForImageTextToText.from_pretrained("PATH_TO_THIS_DIRECTORY", dtype="auto")
install(model, "{info.get('rope_positions', 'qwen')}")  # its 3D positions (transformers 5.3+ differ after long clips)
processor = AutoProcessor.from_pretrained("PATH_TO_THIS_DIRECTORY")
clip = read_video("clip.mp4", target_fps={info["fps"]}, max_frames={info["max_frames"]})
messages = [{{"role": "user", "content": [{{"type": "video"}}, {{"type": "text", "text": "What happens first?"}}]}}]
text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
inputs = processor(text=[text], videos=[clip.frames], video_metadata=[clip.metadata()], do_sample_frames=False,
                   return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=768)
print(processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0])
```

Without `video_metadata` the processor assumes 24 fps and the clip's temporal positions collapse.
Evaluate on the five video benchmarks with `videoktr eval --model PATH_TO_THIS_DIRECTORY --benchmark NAME ...`.
"""


def model_info(info: dict, steps: int | None = None) -> dict:
    """What videoktr.json beside the trained model records (models.info), from `card_info`."""
    return {"prompt": info.get("prompt", "reasoning"), "method": info["method"], "base_model": info["base_model"],
            "data": info["data"], **({"steps": steps} if steps is not None else {})}
