"""models.adapters.encode_each_item_once: the model's own forward (generation) encodes each distinct clip once."""

from __future__ import annotations

import pytest
import torch
from builders import encode_prompts, random_frames

from videoktr.models.adapters import encode_each_item_once, unique_items


def count_tower_videos(model):
    """A forward hook on the vision tower recording the number of temporal-patch grids of each call."""
    calls = []

    def hook(module, args, kwargs, output):
        calls.append(int(kwargs["grid_thw"].shape[0]))

    return calls, model.model.visual.register_forward_hook(hook, with_kwargs=True)


@pytest.fixture(scope="module")
def copies(tiny):
    """Three copies of clip A and one of clip B, as TRL hands them to generation (G copies per prompt)."""
    _, processor = tiny
    a, b = random_frames(11), random_frames(12)
    rows = [("Which colour first?", a)] * 3 + [("Which colour first?", b)]
    return encode_prompts(processor, rows)


def test_unique_items_by_hand():
    x, y = torch.ones(4, 3), torch.zeros(4, 3)
    grid = torch.tensor([[2, 2, 1]] * 4)
    assert unique_items([x, y, x.clone(), y], grid) == [0, 1, 0, 1]
    assert unique_items([x, x], torch.tensor([[2, 2, 1], [1, 2, 2]])) == [0, 1]  # same pixels, other grid


def test_features_equal_and_the_tower_sees_each_clip_once(tiny, copies):
    model, _ = tiny
    pixels, grid = copies["pixel_values_videos"], copies["video_grid_thw"]
    calls, handle = count_tower_videos(model)
    try:
        with torch.no_grad():
            plain = model.model.get_video_features(pixels, grid, return_dict=True).pooler_output
            with encode_each_item_once(model):
                once = model.model.get_video_features(pixels, grid, return_dict=True).pooler_output
    finally:
        handle.remove()
    assert calls == [4, 2]
    assert len(once) == 4 and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, once))
    assert "get_video_features" not in model.model.__dict__  # the class's method again


def test_greedy_generation_is_unchanged(tiny, copies):
    model, processor = tiny
    inputs = dict(copies)
    calls, handle = count_tower_videos(model)
    try:
        with torch.no_grad():
            plain = model.generate(**inputs, max_new_tokens=6, do_sample=False)
            with encode_each_item_once(model):
                once = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    finally:
        handle.remove()
    assert torch.equal(plain, once)
    assert calls == [4, 2]  # prefill only: the decode steps read the cache


def test_the_trainer_generates_with_one_encoding_per_clip(tiny_dir, tmp_path):
    """The training loop's sampling (TRL hands generate every copy of a prompt's video) encodes each clip once:
    2 prompts x G=4 responses -> 2 videos in the generation's tower call, not 8."""
    from builders import clip_rows, make_trainer

    rows = clip_rows(tmp_path / "clips", 500, n=2)
    trainer = make_trainer(tiny_dir, rows * 2, tmp_path, per_device_train_batch_size=8, num_generations=4)
    calls, handle = count_tower_videos(trainer.model)
    try:
        trainer.model.train()
        raw = next(iter(trainer.get_train_dataloader()))
        trainer._generate_and_score_completions(raw)
    finally:
        handle.remove()
    # generation's prefill (2 distinct clips of 8 rows), then TRL's old/ref passes and attribution (once each,
    # already per unique clip)
    assert calls[0] == 2, calls
    assert all(c == 2 for c in calls), calls
