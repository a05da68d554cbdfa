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


@pytest.mark.slow
def test_card_snippet_runs_on_a_video(tiny_dir, tmp_path, monkeypatch):
    config = load_config(overrides={"method": "grpo"})
    card = model_card(card_info(config, str(tiny_dir)))
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    write_video(tmp_path / "clip.mp4", random_frames(3), fps=2.0)
    monkeypatch.chdir(tmp_path)
    code = code.replace("PATH_TO_THIS_DIRECTORY", str(tiny_dir)).replace("max_new_tokens=768", "max_new_tokens=4")
    exec(compile(code, "model card snippet", "exec"), {})
