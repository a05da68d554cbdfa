"""Shipped configuration files load: training recipes through our loader, accelerate configs through accelerate's."""

from __future__ import annotations

from pathlib import Path

import pytest

from videoktr.train.config import load_config

ROOT = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(ROOT.glob("*.yaml")), ids=lambda p: p.name)
def test_recipes_load_and_validate(path):
    config = load_config(path)
    assert config.rl.method in ("grpo", "ktr", "entropy", "twgrpo", "tgrpo", "vppo", "papo")


@pytest.mark.parametrize("path", sorted((ROOT / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(path))
    assert config.num_processes == 8 and config.mixed_precision == "bf16"


def test_the_zero3_test_config_has_the_shipped_zero3_settings():
    """configs/accelerate/zero3-test.json (the DeepSpeed config tests/train/test_lockstep.py runs ZeRO-3 with) sets
    what zero3.yaml sets; it only adds partitioning of every parameter, however small (the tiny model's are)."""
    import json

    from accelerate.commands.config.config_args import ClusterConfig

    shipped = ClusterConfig.from_yaml_file(str(ROOT / "accelerate" / "zero3.yaml")).deepspeed_config
    test = json.loads((ROOT / "accelerate" / "zero3-test.json").read_text())
    zero = test["zero_optimization"]
    assert zero["stage"] == shipped["zero_stage"] == 3
    assert zero["offload_optimizer"]["device"] == shipped["offload_optimizer_device"] == "none"
    assert zero["offload_param"]["device"] == shipped["offload_param_device"] == "none"
    assert zero["stage3_gather_16bit_weights_on_model_save"] is shipped["zero3_save_16bit_model"] is True
    assert zero["stage3_param_persistence_threshold"] == 0


def test_unknown_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ktr:\n  ratoi: 0.3\n")
    with pytest.raises(ValueError, match="ratoi"):
        load_config(bad)


def test_base_is_merged_section_by_section():
    config = load_config(ROOT / "table2-V.yaml")
    assert config.ktr.signals == ["visual"] and config.rl.learning_rate == 2e-6 and config.rl.method == "ktr"
    assert load_config(ROOT / "grpo-3b.yaml").model.model.endswith("Qwen2.5-VL-3B-Instruct")


def test_paper_recipe_without_its_files_fails_clearly(capsys, tmp_path):
    from videoktr.cli import main

    code = main(["train", "--config", str(ROOT / "video-ktr-7b.yaml"), "--output-dir", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "video-r1-ktr-15k.json" in err or "Qwen2.5-VL-7B-COT-SFT" in err
