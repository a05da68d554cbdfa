"""Resuming loads a checkpoint's weights under the model's own names, for every supported family."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from videoktr.models.factory import FAMILIES, create_model_dir, load_model
from videoktr.train.checkpoint import load_checkpoint_weights, saved_names, weight_files


def _nudged(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    return model


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_model(request, tmp_path_factory):
    """(family, tiny model directory of it)."""
    return request.param, create_model_dir(tmp_path_factory.mktemp(request.param), size="tiny", seed=0,
                                           family=request.param)


# whether a family's checkpoint format renames weights (Qwen2-VL and Qwen2.5-VL do, Qwen3-VL does not)
RENAMES = {"qwen2_5_vl": True, "qwen2_vl": True, "qwen3_vl": False}


def test_saved_names_are_the_names_save_pretrained_writes(family_model, tmp_path):
    family, model_dir = family_model
    model = load_model(model_dir)
    model.save_pretrained(tmp_path / "ckpt")
    written = set(load_file(tmp_path / "ckpt" / "model.safetensors"))
    names = saved_names(model)
    assert set(names) == set(model.state_dict())
    assert written <= set(names.values())  # tied weights may be left out of the file
    assert any(k != v for k, v in names.items()) == RENAMES[family]  # model.visual.* -> visual.*


@pytest.mark.parametrize("shard", [False, True])
def test_a_saved_checkpoint_loads_back_exactly(family_model, tmp_path, shard):
    family, model_dir = family_model
    trained = _nudged(load_model(model_dir))
    kwargs = {"max_shard_size": "20KB"} if shard else {}
    trained.save_pretrained(tmp_path / "ckpt", **kwargs)
    files = weight_files(tmp_path / "ckpt")
    assert (len(files) > 1) == shard
    fresh = load_model(model_dir)
    assert load_checkpoint_weights(fresh, tmp_path / "ckpt") > 0
    want, got = trained.state_dict(), fresh.state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)
    # the plain load_state_dict transformers' Trainer uses would have loaded none of the renamed weights
    plain = load_model(model_dir)
    result = plain.load_state_dict({k: v for f in files for k, v in load_file(f).items()}, strict=False)
    assert bool(result.unexpected_keys) == RENAMES[family]


def test_mismatched_checkpoints_are_refused_naming_the_directory(tmp_path):
    tiny = create_model_dir(tmp_path / "tiny", size="tiny", seed=0)
    small = create_model_dir(tmp_path / "small", size="small", seed=0)
    with pytest.raises(ValueError, match="small.*does not match"):  # other shapes
        load_checkpoint_weights(load_model(tiny), small)
    model = load_model(tiny)
    model.save_pretrained(tmp_path / "ckpt")
    weights = load_file(tmp_path / "ckpt" / "model.safetensors")
    dropped = sorted(k for k in weights if "visual" in k)[0]
    save_file({k: v for k, v in weights.items() if k != dropped}, tmp_path / "ckpt" / "model.safetensors")
    with pytest.raises(ValueError, match="1 weights missing"):
        load_checkpoint_weights(model, tmp_path / "ckpt")
    save_file({**weights, "extra.weight": torch.zeros(1)}, tmp_path / "ckpt" / "model.safetensors")
    with pytest.raises(ValueError, match="1 unexpected"):
        load_checkpoint_weights(model, tmp_path / "ckpt")
    with pytest.raises(ValueError, match="no model weights"):
        load_checkpoint_weights(model, tmp_path / "empty")


def test_a_weight_tied_to_a_loaded_one_may_be_absent(tmp_path):
    from transformers import AutoConfig, AutoModelForImageTextToText

    tiny = create_model_dir(tmp_path / "tiny", size="tiny", seed=0)
    config = AutoConfig.from_pretrained(tiny)
    config.tie_word_embeddings = True
    config.get_text_config().tie_word_embeddings = True
    model = _nudged(AutoModelForImageTextToText.from_config(config))
    assert model.lm_head.weight is model.get_input_embeddings().weight
    model.save_pretrained(tmp_path / "ckpt")
    assert "lm_head.weight" not in load_file(tmp_path / "ckpt" / "model.safetensors")
    fresh = AutoModelForImageTextToText.from_config(config)
    load_checkpoint_weights(fresh, tmp_path / "ckpt")
    assert torch.equal(fresh.lm_head.weight, model.lm_head.weight)
