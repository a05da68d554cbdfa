"""Offline model factory: build, save, load; tokenizer/template; fps metadata reaches temporal positions."""

from __future__ import annotations

import json

import pytest
import torch
from builders import encode_prompts, random_frames

from videoktr.models.adapters import UnsupportedModelError, adapter_for
from videoktr.models.factory import (
    QWEN_SPECIAL_TOKENS,
    REASONING_TOKENS,
    load_model,
    load_processor,
    suppressed_token_ids,
)


def test_tiny_model_is_small_and_a_real_qwen25vl(tiny, tiny_dir):
    model, processor = tiny
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    n = sum(p.numel() for p in model.parameters())
    assert n < 1_000_000
    assert json.loads((tiny_dir / "videoktr_model.json").read_text())["parameters"] == n
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert processor.video_processor is not None and processor.image_processor is not None


def test_tokenizer_special_and_reasoning_tokens(tiny):
    model, processor = tiny
    tok = processor.tokenizer
    for t in QWEN_SPECIAL_TOKENS:
        assert tok.convert_tokens_to_ids(t) != tok.unk_token_id
    assert model.config.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    text = "<think>red then blue</think><answer>red</answer>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    for t in REASONING_TOKENS:  # one token each, and kept when special tokens are skipped
        assert tok.convert_tokens_to_ids(t) in ids
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_chat_template_layout(tiny):
    _, processor = tiny
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Q?"}]}]
    text = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|video_pad|><|vision_end|>Q?<|im_end|>\n<|im_start|>assistant\n")


def test_reload_gives_identical_outputs(tiny, tiny_dir):
    model, processor = tiny
    again = load_model(tiny_dir, dtype="float32").eval()
    inputs = encode_prompts(processor, [("Which colour appeared first?", random_frames(0))])
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, again(**inputs).logits)


def test_temporal_groups_get_distinct_positions_from_fps_metadata(tiny):
    model, processor = tiny
    frames = random_frames(1, n=8)
    inputs = encode_prompts(processor, [("Q?", frames)], fps=2.0)
    assert inputs["second_per_grid_ts"].tolist() == [1.0]  # 2 frames per group at 2 fps
    pos, _ = model.model.get_rope_index(
        inputs["input_ids"], video_grid_thw=inputs["video_grid_thw"], attention_mask=inputs["attention_mask"],
        second_per_grid_ts=inputs["second_per_grid_ts"], mm_token_type_ids=inputs["mm_token_type_ids"])
    video = inputs["input_ids"][0] == model.config.video_token_id
    temporal = pos[0, 0, video]  # [groups * tokens_per_group]
    groups = int(inputs["video_grid_thw"][0, 0])
    per_group = temporal.view(groups, -1)
    assert (per_group == per_group[:, :1]).all()  # one temporal id per group
    firsts = per_group[:, 0]
    assert len(set(firsts.tolist())) == groups and (firsts.diff() > 0).all()


def test_missing_metadata_collapses_temporal_positions(tiny):
    """Why the loader always passes fps: without it the processor assumes 24 fps and groups collide."""
    model, processor = tiny
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Q?"}]}]
    text = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], videos=[random_frames(1)], return_tensors="pt", do_sample_frames=False)
    pos, _ = model.model.get_rope_index(
        inputs["input_ids"], video_grid_thw=inputs["video_grid_thw"], attention_mask=inputs["attention_mask"],
        second_per_grid_ts=inputs["second_per_grid_ts"], mm_token_type_ids=inputs["mm_token_type_ids"])
    temporal = pos[0, 0, inputs["input_ids"][0] == model.config.video_token_id]
    assert len(set(temporal.tolist())) < int(inputs["video_grid_thw"][0, 0])


def test_pixel_budget_override(tiny_dir):
    processor = load_processor(tiny_dir, max_pixels=112 * 112, min_pixels=56 * 56)
    inputs = encode_prompts(processor, [("Q?", random_frames(2, n=4, size=112))])
    assert inputs["video_grid_thw"].tolist() == [[2, 8, 8]]


def test_generation_never_samples_vision_tokens(tiny):
    model, processor = tiny
    inputs = encode_prompts(processor, [("Q?", random_frames(3))] * 4)
    banned = suppressed_token_ids(processor.tokenizer)
    assert model.config.video_token_id in banned and model.config.image_token_id in banned
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=True, temperature=1.5, max_new_tokens=24,
                             suppress_tokens=banned, pad_token_id=processor.tokenizer.pad_token_id)
    new = out[:, inputs["input_ids"].shape[1]:]
    assert not torch.isin(new, torch.tensor(banned)).any()


def test_clear_errors_for_missing_dir_and_unsupported_architecture(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope")
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                vocab_size=64).save_pretrained(tmp_path / "llama")
    with pytest.raises(UnsupportedModelError, match="unsupported model architecture 'llama'"):
        load_model(tmp_path / "llama")


def test_adapter_reports_layout(tiny):
    model, processor = tiny
    adapter = adapter_for(model)
    grid = torch.tensor([[4, 4, 4], [2, 8, 6]])
    assert adapter.num_groups(grid).tolist() == [4, 2]
    assert adapter.tokens_per_group(grid).tolist() == [4, 12]
