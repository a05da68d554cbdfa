"""TRL GRPOTrainer with a vision-language model: a video in the prompt reaches generation but not the forward
passes that compute the log-probabilities of the loss. Self-contained: needs torch, transformers, trl,
tokenizers, datasets, pillow and numpy (a tiny random Qwen2.5-VL with a tokenizer trained here, on CPU, nothing
downloaded).

    python trl_grpo_video.py

GRPOTrainer renders a conversational prompt with `processor.apply_chat_template(..., tokenize=True)`, which
loads a {"type": "video"} part and returns `pixel_values_videos` and `video_grid_thw` beside the prompt's
<|video_pad|> placeholders; generation gets them. The old/reference/policy log-prob passes are built from the
prompt's *images* only (`_get_per_token_logps_and_entropies` has no video arguments, and the processor is
re-run with `images=` alone), so the model is run on the video's placeholder tokens without the video: no error,
the placeholders are embedded as ordinary tokens, and the policy is trained on prompts it never sampled from.

The script trains one step on one video prompt and records every forward of the model: a forward over a
sequence that holds video placeholders, not a decoding step (no KV cache), that gets neither
`pixel_values_videos` nor the encoded features generation passes as `mm_encoder_outputs` is a pass that dropped
the video. It prints AFFECTED (with the counts) or FIXED.
"""

from __future__ import annotations

import tempfile
import warnings

import numpy as np
import torch
import transformers
import trl

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
           "<|image_pad|>", "<|video_pad|>"]
TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_processor():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2_5_VLProcessor, Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["What happens first in the video? A red circle, then a blue square."],
                            trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIAL, show_progress=False,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=SPECIAL[1:], padding_side="left")
    fast.chat_template = TEMPLATE
    size = {"shortest_edge": 56 * 56, "longest_edge": 56 * 56}
    video = Qwen2VLVideoProcessor(patch_size=14, merge_size=2, temporal_patch_size=2, size=size)
    return Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(size=size), tokenizer=fast,
                               video_processor=video, chat_template=TEMPLATE)


def tiny_model(tokenizer):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL}
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, bos_token_id=ids["<|endoftext|>"],
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    return Qwen2_5_VLForConditionalGeneration(config)


def prompts(folder: str):
    """Two copies of one prompt with a 4-frame 56x56 video given as frame files (no video decoder needed)."""
    from datasets import Dataset
    from PIL import Image

    frames = np.random.default_rng(0).integers(0, 256, (4, 56, 56, 3), dtype=np.uint8)
    video = []
    for i, f in enumerate(frames):
        video.append(f"{folder}/frame{i}.png")
        Image.fromarray(f).save(video[-1])
    row = {"prompt": [{"role": "user", "content": [{"type": "video", "video": video, "text": None},
                                                   {"type": "text", "video": None, "text": "What happens first?"}]}]}
    return Dataset.from_list([row, row])


def length_reward(completions, **kwargs):
    return [float(len(str(c))) for c in completions]


def main() -> None:
    print(f"trl {trl.__version__}, transformers {transformers.__version__}, torch {torch.__version__}")
    warnings.filterwarnings("ignore")
    processor = tiny_processor()
    model = tiny_model(processor.tokenizer)
    video_token = model.config.video_token_id
    passes = []  # (has video placeholders, got pixel_values_videos, decoding step)

    def record(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            cache = kwargs.get("past_key_values")
            decoding = cache is not None and cache.get_seq_length() > 0
            # the video reaches a forward as pixels, or (transformers 5.2x generation) as encoded features
            got_video = kwargs.get("pixel_values_videos") is not None or kwargs.get("mm_encoder_outputs") is not None
            passes.append((bool((ids == video_token).any()), got_video, decoding))

    model.register_forward_pre_hook(record, with_kwargs=True)
    with tempfile.TemporaryDirectory() as out:
        args = trl.GRPOConfig(output_dir=out, max_steps=1, per_device_train_batch_size=2, num_generations=2,
                              max_completion_length=4, report_to=[], use_cpu=True, logging_strategy="no",
                              save_strategy="no", disable_tqdm=True, beta=0.0)  # beta 0: no reference model
        trainer = trl.GRPOTrainer(model=model, reward_funcs=length_reward, args=args, train_dataset=prompts(out),
                                  processing_class=processor)
        trainer.train()
    with_video = [p for p in passes if p[0] and not p[2]]
    dropped = [p for p in with_video if not p[1]]
    print(f"forwards over prompts with a video (not decoding steps): {len(with_video)}, "
          f"with the video: {len(with_video) - len(dropped)}, without: {len(dropped)}")
    if not with_video:
        print("UNKNOWN: no forward saw the video prompt")
    elif dropped:
        print("AFFECTED: the log-prob passes of the loss run on the video's placeholder tokens without the video")
    else:
        print("FIXED")


if __name__ == "__main__":
    main()
