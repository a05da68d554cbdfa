"""Build a Qwen-VL-family model fully offline, and load any model directory.

`create_model_dir` writes a complete, `from_pretrained`-loadable directory (tokenizer trained here with the
`tokenizers` library, processor with image and video processors, randomly initialised weights) for one of the
supported families (`FAMILIES`: Qwen2.5-VL, the paper's; Qwen2-VL; Qwen3-VL). The same `load_model` /
`load_processor` then load either such a directory or a real checkpoint directory (for example a downloaded
Qwen2.5-VL-7B-Instruct): nothing in the loading path is specific to the toy models.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

# The special tokens of Qwen2.5-VL, in the order the real tokenizer numbers them. The vision tokens are what
# the processor and the model look up by name; the rest keep the chat format identical to the real one.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Reasoning-format tags: ordinary (non-special) added tokens, so that decoding with skip_special_tokens=True
# keeps them and the format reward can see them, while a tiny model still emits each as one token.
REASONING_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")

# Vision special tokens that must never be sampled: a sampled <|video_pad|> makes the next forward fail with
# "video features and video tokens do not match".
VISION_SPECIAL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")

# Chat templates written for videoktr. They render the same text layout as the real models' templates: turns
# <|im_start|>role ... <|im_end|>, vision placeholders wrapped in <|vision_start|> ... <|vision_end|>.
_TURNS_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen2.5-VL / Qwen2-VL: a default system turn first.
CHAT_TEMPLATE = (
    "{% if messages and messages[0]['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}" + _TURNS_TEMPLATE
)
# Qwen3-VL: no default system turn. Qwen3VLProcessor (transformers 5.x) replaces only the <|video_pad|> with
# "<t seconds><|vision_start|>pads<|vision_end|>" per temporal group and keeps the outer pair, so the prompt
# matches what the released checkpoints get from transformers.
QWEN3_CHAT_TEMPLATE = _TURNS_TEMPLATE


@dataclass(frozen=True)
class Family:
    """What differs between the supported architectures when building a model offline."""

    model_type: str  # config.model_type, the key of FAMILIES
    name: str
    model_class: str  # transformers class names
    config_class: str
    processor_class: str
    video_processor_class: str
    patch_size: int  # vision patch side in pixels (14 for Qwen2/2.5-VL, 16 for Qwen3-VL)
    chat_template: str


FAMILIES: dict[str, Family] = {
    "qwen2_5_vl": Family("qwen2_5_vl", "Qwen2.5-VL", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLConfig",
                         "Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor", 14, CHAT_TEMPLATE),
    "qwen2_vl": Family("qwen2_vl", "Qwen2-VL", "Qwen2VLForConditionalGeneration", "Qwen2VLConfig",
                       "Qwen2VLProcessor", "Qwen2VLVideoProcessor", 14, CHAT_TEMPLATE),
    "qwen3_vl": Family("qwen3_vl", "Qwen3-VL", "Qwen3VLForConditionalGeneration", "Qwen3VLConfig",
                       "Qwen3VLProcessor", "Qwen3VLVideoProcessor", 16, QWEN3_CHAT_TEMPLATE),
}
DEFAULT_FAMILY = "qwen2_5_vl"


def get_family(family: str) -> Family:
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; choose one of {sorted(FAMILIES)}")
    return FAMILIES[family]


# Built-in corpus: enough English and formatting to cover prompts of the synthetic world and short
# benchmark-style questions. Byte-level BPE never produces an unknown token, so any text still encodes.
DEFAULT_CORPUS = (
    "You are a helpful assistant.",
    "Which colour appeared first? Which colour appeared last? Which shape appeared after the red one?",
    "How many shapes appeared in the video? Did a blue circle appear? What colour was the square?",
    "red green blue yellow purple orange white black cyan magenta circle square triangle star",
    "first second third then after before last next finally none zero one two three four five six",
    "Options: A. B. C. D. E. F. Answer with the option's letter from the given choices directly.",
    "Please think about this question as if you were a human pondering deeply. Provide your detailed "
    "reasoning between the <think> </think> tags, and then give your final answer between the "
    "<answer> </answer> tags.",
    "Let me think. The video shows a red circle, then a blue square, and finally a green triangle. "
    "So the answer is B. Wait, let me check again. Hmm, I see.",
    "0 1 2 3 4 5 6 7 8 9 10 . , : ; ? ! ( ) ' \" - + = % / * # < > [ ] { }",
    "the a an is was are were it this that of in on at to from with and or not yes no true false",
)


@dataclass(frozen=True)
class ModelSize:
    """Dimensions of a built-in model size. All sizes share the real models' vision layout (2x2 spatial merge,
    2-frame temporal patches; 14 px patches, or 16 px for Qwen3-VL), so every code path matches the real
    model's. Pixel budgets are stated for 14 px patches; a family with larger patches scales them by
    (patch/14)^2, which keeps the same token grid (56x56 frames -> 64x64 for Qwen3-VL: 2x2 tokens per group)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vision_depth: int
    vision_hidden: int
    vision_heads: int
    vision_intermediate: int
    max_pixels: int  # per-frame pixel budget of the image and video processors
    min_pixels: int


SIZES: dict[str, ModelSize] = {
    # Tests: well under 1M parameters, a forward pass in milliseconds.
    "tiny": ModelSize(
        vocab_size=512, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64,
        vision_depth=2, vision_hidden=32, vision_heads=2, vision_intermediate=64,
        max_pixels=56 * 56, min_pixels=56 * 56,
    ),
    # The default CPU run: large enough to learn the synthetic world, small enough for 2 cores.
    "small": ModelSize(
        vocab_size=1024, hidden_size=128, num_layers=3, num_heads=4, num_kv_heads=2, intermediate_size=256,
        vision_depth=2, vision_hidden=64, vision_heads=2, vision_intermediate=128,
        max_pixels=56 * 56, min_pixels=56 * 56,
    ),
}


def train_tokenizer(corpus: Iterable[str], vocab_size: int):
    """Train a byte-level BPE tokenizer on `corpus` and wrap it as a transformers fast tokenizer carrying
    Qwen2.5-VL's special tokens, the reasoning tags and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    fast.add_tokens(list(REASONING_TOKENS), special_tokens=False)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_processor(tokenizer, min_pixels: int, max_pixels: int, family: str = DEFAULT_FAMILY):
    """The family's processor (image processor + video processor + tokenizer) with a per-frame pixel budget
    (`min_pixels`/`max_pixels` as given: callers scale them for the family's patch size)."""
    import transformers
    from transformers import Qwen2VLImageProcessor

    fam = get_family(family)
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels}, patch_size=fam.patch_size,
        merge_size=2, temporal_patch_size=2)
    if fam.video_processor_class == "Qwen3VLVideoProcessor":
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor as video_cls
    else:
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor as video_cls
    video_processor = video_cls(patch_size=fam.patch_size, merge_size=2, temporal_patch_size=2)
    set_video_pixel_budget(video_processor, min_pixels, max_pixels)
    processor_cls = getattr(transformers, fam.processor_class)
    return processor_cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=fam.chat_template,
    )


def set_video_pixel_budget(video_processor, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
    """Make `max_pixels` (and `min_pixels`) a per-frame pixel budget (what configs and the paper state), for
    either kind of Qwen video processor.

    Qwen2VLVideoProcessor (Qwen2-VL, Qwen2.5-VL): `size` is per frame; `cap_pixels_per_frame=False` keeps it
    the budget rather than a share of a whole-video cap.
    Qwen3VLVideoProcessor (Qwen3-VL): `size` bounds the whole clip (frames * h * w), so a per-frame budget is
    set through its per-frame cap instead: `cap_pixels_per_frame=True`, `max_video_tokens = max_pixels //
    (patch*merge)^2` (the per-frame cap), `longest_edge = cap * max_frames` (never the binding limit) and
    `shortest_edge <= cap / 1.05` (transformers floors the per-frame share at 1.05 * shortest_edge). Qwen3-VL
    has no per-frame minimum: `min_pixels` bounds the whole clip from below. With neither budget given, a
    Qwen3-VL processor keeps its own (e.g. a checkpoint's whole-clip) budget, with the per-frame cap on (the
    reference behaviour of qwen-vl-utils; transformers otherwise warns and leaves it off).
    """
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    size = dict(video_processor.size)
    if isinstance(video_processor, Qwen3VLVideoProcessor):
        if min_pixels is None and max_pixels is None:
            if video_processor.cap_pixels_per_frame is None:
                video_processor.cap_pixels_per_frame = True
            return
        factor = int(video_processor.patch_size) * int(video_processor.merge_size)
        if max_pixels is not None:
            video_processor.max_video_tokens = max(1, int(max_pixels) // factor**2)
        cap = int(video_processor.max_video_tokens) * factor**2
        size["longest_edge"] = cap * int(video_processor.max_frames)
        shortest = size.get("shortest_edge") if min_pixels is None else min_pixels
        size["shortest_edge"] = min(int(shortest), int(cap / 1.05))
        video_processor.size = size
        video_processor.cap_pixels_per_frame = True
        return
    if min_pixels is not None:
        size["shortest_edge"] = min_pixels
    if max_pixels is not None:
        size["longest_edge"] = max_pixels
    video_processor.size = size
    video_processor.cap_pixels_per_frame = False


def _mrope_section(head_dim: int, interleaved: bool) -> list[int]:
    """Split a head's rotary half-dimension into (temporal, height, width) sections.

    Qwen2/2.5-VL use contiguous sections; Qwen3-VL interleaves them (height takes every third frequency from
    index 1, width from index 2, for mrope_section[1|2] * 3 indices), in the released models' proportions
    (24, 20, 20 of 64)."""
    half = head_dim // 2
    if interleaved:
        hw = max(1, (half * 20) // 64)
        return [half - 2 * hw, hw, hw]
    t_sec = half // 4 if half >= 8 else 1
    h_sec = (half - t_sec) // 2
    return [t_sec, h_sec, half - t_sec - h_sec]


def build_config(size: ModelSize, tokenizer, family: str = DEFAULT_FAMILY):
    """A config of the given family with the given dimensions; token ids taken from `tokenizer`."""
    import transformers

    fam = get_family(family)
    head_dim = size.hidden_size // size.num_heads
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
        num_key_value_heads=size.num_kv_heads,
        max_position_embeddings=4096,
        pad_token_id=ids["<|endoftext|>"],
    )
    common = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    # Qwen2.5-VL and Qwen3-VL vision towers take the same core dimensions
    vision = dict(depth=size.vision_depth, hidden_size=size.vision_hidden, intermediate_size=size.vision_intermediate,
                  num_heads=size.vision_heads, out_hidden_size=size.hidden_size, patch_size=fam.patch_size,
                  spatial_merge_size=2, temporal_patch_size=2)
    if family == "qwen3_vl":
        text.update(head_dim=head_dim, rope_parameters={
            "rope_type": "default", "rope_theta": 10000.0,
            "mrope_section": _mrope_section(head_dim, interleaved=True), "mrope_interleaved": True})
        vision.update(
            num_position_embeddings=64,  # an 8x8 learned grid, resampled to each frame's patch grid
            # DeepStack: merged features of these vision layers are added to the first decoder layers' hidden
            # states at the visual positions (the released models take 3 of 27 layers).
            deepstack_visual_indexes=sorted({0, size.vision_depth - 1}),
        )
    else:
        text.update(
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                             "mrope_section": _mrope_section(head_dim, interleaved=False)},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
        )
        if family == "qwen2_vl":
            vision = dict(
                depth=size.vision_depth,
                embed_dim=size.vision_hidden,
                hidden_size=size.hidden_size,  # Qwen2-VL: the merger's output width (the LLM's hidden size)
                mlp_ratio=max(1, size.vision_intermediate // size.vision_hidden),
                num_heads=size.vision_heads,
                patch_size=fam.patch_size,
                spatial_merge_size=2,
                temporal_patch_size=2,
            )
        else:
            vision.update(window_size=112, fullatt_block_indexes=[size.vision_depth - 1])
    return getattr(transformers, fam.config_class)(text_config=text, vision_config=vision, **common)


def family_pixels(pixels: int, family: str) -> int:
    """A pixel budget stated for 14 px patches, scaled to the family's patch size (same token count)."""
    patch = get_family(family).patch_size
    return int(round(pixels * patch * patch / (14 * 14)))


def create_model_dir(
    output: str | Path,
    size: str = "tiny",
    corpus: Iterable[str] | None = None,
    seed: int = 0,
    family: str = DEFAULT_FAMILY,
) -> Path:
    """Write a randomly initialised model of `family` (see FAMILIES; default Qwen2.5-VL), its tokenizer and
    processor to `output`.

    `corpus` is the text the tokenizer is trained on (default: a small built-in corpus); pass the texts of
    your task (e.g. the synthetic world's prompts and responses) so that its words become single tokens.
    """
    import torch
    import transformers

    fam = get_family(family)
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {sorted(SIZES)}")
    spec = SIZES[size]
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    texts = list(DEFAULT_CORPUS) + list(corpus or [])
    tokenizer = train_tokenizer(texts, spec.vocab_size)
    processor = build_processor(tokenizer, family_pixels(spec.min_pixels, family),
                                family_pixels(spec.max_pixels, family), family=family)
    config = build_config(spec, tokenizer, family=family)
    torch.manual_seed(seed)
    model = getattr(transformers, fam.model_class)(config)
    model.generation_config.pad_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.save_pretrained(output)
    processor.save_pretrained(output)
    (output / "videoktr_model.json").write_text(
        json.dumps({"family": family, "size": size, "seed": seed, "spec": asdict(spec),
                    "parameters": sum(p.numel() for p in model.parameters())}, indent=2)
    )
    return output


def load_processor(path: str | Path, min_pixels: int | None = None, max_pixels: int | None = None):
    """Load the processor of a model directory (built here or a real checkpoint); optionally override the
    per-frame pixel budget of its image and video processors (e.g. 128*28*28 for training). The budget is
    applied as given (not rescaled for a family's patch size)."""
    from transformers import AutoProcessor

    _check_dir(path)
    processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None:
        if min_pixels is not None:
            image_processor.size["shortest_edge"] = min_pixels
        if max_pixels is not None:
            image_processor.size["longest_edge"] = max_pixels
    if getattr(processor, "video_processor", None) is not None:
        set_video_pixel_budget(processor.video_processor, min_pixels, max_pixels)
    return processor


def load_model(path: str | Path, dtype: str | None = None, device: str | None = None, attn_implementation=None,
               rope_positions: str | None = None):
    """Load a vision-language model from a local directory with `from_pretrained` (never the Hub).

    dtype: "float32", "bfloat16", "float16" or None/"auto" (the checkpoint's own dtype).
    rope_positions: where Qwen2-VL/Qwen2.5-VL put the text after a video in their 3D positions ("qwen", the
    released models' and vLLM's scheme, or "transformers", transformers 5.23's; `models.positions`). None: the
    scheme the directory records (config.json `videoktr_rope_positions`), else the one an earlier videoktr
    trained it under, else "qwen" (`positions.resolve_scheme`, which says which it chose). A given scheme that
    differs from the record is used, with one warning.
    """
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    _check_dir(path)
    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    from .adapters import adapter_for_config

    adapter_for_config(config)  # clear error for an unsupported architecture, before loading weights
    from .positions import FAMILIES_WITH_SCHEMES, install, resolve_scheme

    scheme = None
    if getattr(config, "model_type", "") in FAMILIES_WITH_SCHEMES:
        scheme = resolve_scheme(path, rope_positions)
    elif rope_positions is not None:
        install(None, rope_positions)  # still refuses an unknown name
    torch_dtype = "auto" if dtype in (None, "auto") else getattr(torch, dtype)
    kwargs = {"dtype": torch_dtype, "local_files_only": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForImageTextToText.from_pretrained(str(path), **kwargs)
    if scheme is not None:
        install(model, scheme)
    if device:
        model.to(device)
    return model


def suppressed_token_ids(tokenizer) -> list[int]:
    """Ids of vision special tokens that sampling must never produce (pass as `suppress_tokens`)."""
    ids = []
    for token in VISION_SPECIAL_TOKENS:
        tid = tokenizer.convert_tokens_to_ids(token)
        if tid is not None and tid != tokenizer.unk_token_id:
            ids.append(int(tid))
    return ids


def _check_dir(path: str | Path) -> None:
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(
            f"model directory {str(path)!r} does not exist (videoktr never downloads; pass a local path, "
            f"e.g. one written by `videoktr init-model --size tiny --output DIR` or a downloaded checkpoint)"
        )
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"model directory {str(path)!r} has no config.json")
