"""Shared fixtures: one tiny offline Qwen2.5-VL model directory per test session, and batch builders."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from videoktr.models.factory import create_model_dir

    return create_model_dir(tmp_path_factory.mktemp("tiny"), size="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    """(model, processor) of the tiny model, in eval mode, float32."""
    from videoktr.models.factory import load_model, load_processor

    model = load_model(tiny_dir, dtype="float32").eval()
    return model, load_processor(tiny_dir)


@pytest.fixture(scope="session")
def mixed_data(tmp_path_factory):
    """Video-R1 rows, one of each kind (a video, an image and a text-only row) in one JSONL file: with 3 prompts per
    step every step holds all three. Returns (data file, media root)."""
    import json

    from videor1_fixture import IMAGE_INDEX, write_videor1_fixture

    root = tmp_path_factory.mktemp("mixed")
    fx = write_videor1_fixture(root)
    rows = [fx.rows[0], fx.rows[IMAGE_INDEX],
            {"problem_id": 99, "problem": "What is 2 + 3?", "data_type": "text", "problem_type": "numerical",
             "solution": "<answer>5</answer>"}]
    path = root / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, fx.root
