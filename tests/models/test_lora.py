"""models.lora: which modules get adapters, vision modes, merging."""

from __future__ import annotations

import re

import pytest
import torch

from videoktr.models.lora import (LoraError, LoraOptions, base_model, merge_adapter, names_pattern, peft_config,
                                  target_names, trainable_parameters, training_state_bytes)


@pytest.fixture()
def model(tiny_dir):
    from videoktr.models.factory import load_model

    return load_model(tiny_dir, dtype="float32")


def linear_names(model):
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def test_targets_are_the_language_models_named_layers_only(model):
    names = target_names(model, LoraOptions(r=4))
    # reference: by hand, every LM layer's seven projections; the vision MLP's gate/up/down share their names
    layers = model.config.text_config.num_hidden_layers
    expected = [f"model.language_model.layers.{i}.{part}" for i in range(layers) for part in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
        "mlp.up_proj", "mlp.down_proj")]
    assert sorted(names) == sorted(expected)
    assert not any("visual" in n for n in names)


def test_vision_lora_adds_every_vision_linear_layer(model):
    names = target_names(model, LoraOptions(r=4, vision="lora"))
    vision = [n for n in linear_names(model) if n.startswith("model.visual.")]
    assert set(vision) <= set(names) and "model.visual.merger.mlp.0" in names


@pytest.mark.parametrize("vision", ["frozen", "lora"])
def test_pattern_matches_exactly_the_targets(model, vision):
    names = target_names(model, LoraOptions(r=4, target_modules=("q_proj", "down_proj"), vision=vision))
    pattern = names_pattern(names)
    every = [n for n, _ in model.named_modules()]
    assert sorted(n for n in every if re.fullmatch(pattern, n)) == sorted(names)
    assert "merger\\.mlp\\.\\d+" not in pattern  # mlp.1 is the activation between the merger's linear layers


def test_unknown_target_and_lm_head_are_refused(model):
    with pytest.raises(LoraError, match=r"lora_target_modules: \['qproj'\].*available"):
        target_names(model, LoraOptions(r=4, target_modules=("qproj",)))
    with pytest.raises(LoraError, match="lm_head"):
        LoraOptions(r=4, target_modules=("q_proj", "lm_head")).validate()
    with pytest.raises(LoraError, match="lora_r > 0"):
        LoraOptions(r=0, vision="lora").validate()


def test_auto_vision_mode():
    assert LoraOptions(r=0).vision_mode() == "train"
    assert LoraOptions(r=8).vision_mode() == "frozen"


@pytest.mark.parametrize("vision,vision_trainable", [("frozen", False), ("lora", True), ("train", True)])
def test_peft_model_trains_what_the_mode_says(model, vision, vision_trainable):
    from peft import get_peft_model

    wrapped = get_peft_model(model, peft_config(model, LoraOptions(r=4, vision=vision)))
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    assert any("visual" in n for n in trainable) == vision_trainable
    assert base_model(wrapped) is model  # adapters injected into the same modules
    assert base_model(model) is model
    t, total = trainable_parameters(wrapped)
    assert 0 < t < total


def test_merged_directory_loads_and_equals_the_adapted_model(model, tiny_dir, tmp_path):
    """merge_adapter writes a plain model whose outputs equal the base model with the adapter on."""
    from peft import get_peft_model

    from videoktr.models.factory import load_model, load_processor

    wrapped = get_peft_model(model, peft_config(model, LoraOptions(r=4, vision="lora")))
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in wrapped.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)  # a trained-looking adapter (B starts at zero)
    wrapped.save_pretrained(tmp_path / "adapter")
    out = merge_adapter(tmp_path / "adapter", tmp_path / "merged", base=tiny_dir)
    merged = load_model(out, dtype="float32").eval()
    assert load_processor(out).tokenizer is not None
    assert not (out / "adapter_config.json").exists()
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    wrapped.eval()
    with torch.no_grad():
        expect = wrapped(input_ids=ids).logits
        got = merged(input_ids=ids).logits
        plain = load_model(tiny_dir, dtype="float32").eval()(input_ids=ids).logits
    assert torch.allclose(got, expect, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)  # the adapter did change the model


def test_merge_errors_name_the_directory(tmp_path):
    with pytest.raises(LoraError, match="not an adapter directory"):
        merge_adapter(tmp_path, tmp_path / "out")
    (tmp_path / "adapter_config.json").write_text('{"base_model_name_or_path": "/nowhere"}')
    with pytest.raises(LoraError, match="base model '/nowhere'"):
        merge_adapter(tmp_path, tmp_path / "out")


def test_training_state_bytes_by_hand():
    est = training_state_bytes(total_params=1000, trainable_params=10, weight_dtype_bytes=2)
    assert est.weight_bytes == 2000 and est.state_bytes == 10 * (2 + 8 + 4)
    full = training_state_bytes(1000, 1000, weight_dtype_bytes=4)
    assert full.state_bytes == 1000 * (4 + 8)  # fp32 weights: no separate master copy
