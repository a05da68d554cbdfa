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
