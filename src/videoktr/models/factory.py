"""Build a Qwen2.5-VL-architecture model fully offline, and load any model directory.

`create_model_dir` writes a complete, `from_pretrained`-loadable directory (tokenizer trained here with the
`tokenizers` library, processor with image and video processors, randomly initialised weights). The same
`load_model` / `load_processor` then load either such a directory or a real checkpoint directory (for example
a downloaded Qwen2.5-VL-7B-Instruct): nothing in the loading path is specific to the toy models.
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

# A Qwen2.5-VL-style chat template written for videoktr. It renders the same text layout as the real model's
# template (system turn, <|im_start|>role ... <|im_end|>, vision placeholders wrapped in vision_start/end).
CHAT_TEMPLATE = (
    "{% if messages and messages[0]['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
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
    """Dimensions of a built-in model size. All sizes share the Qwen2.5-VL vision layout (14 px patches,
    2x2 spatial merge, 2-frame temporal patches), so every code path matches the real model's."""

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


def build_processor(tokenizer, min_pixels: int, max_pixels: int):
    """A Qwen2.5-VL processor (image processor + video processor + tokenizer) with a per-frame pixel budget."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    image_processor = Qwen2VLImageProcessor(size=size)
    # cap_pixels_per_frame=False: the per-frame budget is exactly `max_pixels` (what configs and the paper
    # state), not an extra share of a whole-video token budget.
    video_processor = Qwen2VLVideoProcessor(size=size, cap_pixels_per_frame=False)
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def build_config(size: ModelSize, tokenizer):
    """A Qwen2.5-VL config with the given dimensions; token ids taken from `tokenizer`."""
    from transformers import Qwen2_5_VLConfig

    head_dim = size.hidden_size // size.num_heads
    # Multimodal RoPE splits each head's rotary half-dimension into (temporal, height, width) sections.
    half = head_dim // 2
    t_sec = half // 4 if half >= 8 else 1
    h_sec = (half - t_sec) // 2
    mrope_section = [t_sec, h_sec, half - t_sec - h_sec]
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
        num_key_value_heads=size.num_kv_heads,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        depth=size.vision_depth,
        hidden_size=size.vision_hidden,
        intermediate_size=size.vision_intermediate,
        num_heads=size.vision_heads,
        out_hidden_size=size.hidden_size,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[size.vision_depth - 1],
    )
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def create_model_dir(
    output: str | Path,
    size: str = "tiny",
    corpus: Iterable[str] | None = None,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised Qwen2.5-VL model, its tokenizer and processor to `output`.

    `corpus` is the text the tokenizer is trained on (default: a small built-in corpus); pass the texts of
    your task (e.g. the synthetic world's prompts and responses) so that its words become single tokens.
    """
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {sorted(SIZES)}")
    spec = SIZES[size]
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    texts = list(DEFAULT_CORPUS) + list(corpus or [])
    tokenizer = train_tokenizer(texts, spec.vocab_size)
    processor = build_processor(tokenizer, spec.min_pixels, spec.max_pixels)
    config = build_config(spec, tokenizer)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.save_pretrained(output)
    processor.save_pretrained(output)
    (output / "videoktr_model.json").write_text(
        json.dumps({"size": size, "seed": seed, "spec": asdict(spec),
                    "parameters": sum(p.numel() for p in model.parameters())}, indent=2)
    )
    return output


def load_processor(path: str | Path, min_pixels: int | None = None, max_pixels: int | None = None):
    """Load the processor of a model directory (built here or a real checkpoint); optionally override the
    per-frame pixel budget of its image and video processors (e.g. 128*28*28 for training)."""
    from transformers import AutoProcessor

    _check_dir(path)
    processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
    for sub in (getattr(processor, "image_processor", None), getattr(processor, "video_processor", None)):
        if sub is None:
            continue
        if min_pixels is not None:
            sub.size["shortest_edge"] = min_pixels
        if max_pixels is not None:
            sub.size["longest_edge"] = max_pixels
    if getattr(processor, "video_processor", None) is not None:
        # The per-frame budget is the budget (as configs and the paper state it), not a share of a whole-video cap.
        processor.video_processor.cap_pixels_per_frame = False
    return processor


def load_model(path: str | Path, dtype: str | None = None, device: str | None = None, attn_implementation=None):
    """Load a vision-language model from a local directory with `from_pretrained` (never the Hub).

    dtype: "float32", "bfloat16", "float16" or None/"auto" (the checkpoint's own dtype).
    """
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    _check_dir(path)
    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    from .adapters import adapter_for_config

    adapter_for_config(config)  # clear error for an unsupported architecture, before loading weights
    torch_dtype = "auto" if dtype in (None, "auto") else getattr(torch, dtype)
    kwargs = {"dtype": torch_dtype, "local_files_only": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForImageTextToText.from_pretrained(str(path), **kwargs)
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
