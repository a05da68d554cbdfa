"""The model card beside a trained model: it names the base model, the method and its options and the data, and
its transformers snippet runs on a video as written."""

from __future__ import annotations

import re

import pytest
from builders import random_frames

from videoktr.data.video import write_video
from videoktr.train.card import card_info, model_card
from videoktr.train.config import load_config


def test_card_names_base_model_method_options_and_data():
    config = load_config(overrides={"method": "ktr", "ratio": 0.3, "data": "data/rows.jsonl"})
    card = model_card(card_info(config, "checkpoints/Qwen2.5-VL-7B-COT-SFT"), steps=470)
    assert "`checkpoints/Qwen2.5-VL-7B-COT-SFT`" in card and "[None]" not in card
    assert "Video-KTR" in card and "470 optimizer steps" in card and '"ratio": 0.3' in card
    assert "`data/rows.jsonl`" in card and "pipeline(" not in card
    assert 'install(model, "qwen")' in card  # the snippet gives the model the 3D positions it trained with
    other = load_config(overrides={"rope_positions": "transformers"})
    assert 'install(model, "transformers")' in model_card(card_info(other, "base"))


def test_card_names_a_local_base_model_by_its_absolute_path(tmp_path, monkeypatch):
    """Issue 20 item 9: the default run's card named its base model `.cache/videoktr/warmstart-...`, relative
    to wherever the run was started. A directory on disk is named absolutely; a hub id stays as it is."""
    (tmp_path / ".cache" / "warm").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    config = load_config()
    card = model_card(card_info(config, ".cache/warm"))
    assert f"**Base model:** `{tmp_path.resolve() / '.cache' / 'warm'}`" in card
    assert "`Qwen/Qwen2.5-VL-7B-Instruct`" in model_card(card_info(config, "Qwen/Qwen2.5-VL-7B-Instruct"))


def test_model_info_records_the_prompt_the_model_was_trained_with(tmp_path):
    """videoktr.json beside a trained model: the synthetic world trains plain prompts, Video-R1 rows the
    reasoning prompt; eval and explain default to it (models.info)."""
    from videoktr.models.info import default_prompt, write_model_info
    from videoktr.train.card import model_info

    world = model_info(card_info(load_config(), "base"), steps=3)
    rows = model_info(card_info(load_config(overrides={"data": "rows.jsonl"}), "base"))
    assert world["prompt"] == "plain" and world["steps"] == 3 and rows["prompt"] == "reasoning"
    write_model_info(tmp_path, world)
    assert default_prompt(tmp_path) == "plain" and default_prompt(tmp_path / "elsewhere") == "reasoning"


@pytest.mark.slow
def test_card_snippet_runs_on_a_video(tiny_dir, tmp_path, monkeypatch):
    config = load_config(overrides={"method": "grpo"})
    card = model_card(card_info(config, str(tiny_dir)))
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    write_video(tmp_path / "clip.mp4", random_frames(3), fps=2.0)
    monkeypatch.chdir(tmp_path)
    code = code.replace("PATH_TO_THIS_DIRECTORY", str(tiny_dir)).replace("max_new_tokens=768", "max_new_tokens=4")
    exec(compile(code, "model card snippet", "exec"), {})
