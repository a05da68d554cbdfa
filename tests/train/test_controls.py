"""Controls (ktr.control: random, complement, entropy_matched) in the trainer: the masks equal the reference
path's on the same rollouts, they train as many tokens as the union (the complement no more), they are logged
like any mask, and they run from the CLI options on Video-R1-format data with mixed video/image/text batches
under a 7B recipe's settings (gradient checkpointing, bf16), scaled down to the tiny model on CPU."""

from __future__ import annotations


import pytest
import torch
from builders import clip_rows as make_clip_rows
from builders import loss_token_weights, make_trainer, reference_key_token_weights

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
CONTROLS = ("random", "complement", "entropy_matched")


@pytest.fixture(scope="module")
def clip_rows(tmp_path_factory):
    return make_clip_rows(tmp_path_factory.mktemp("clips"), 300)


def _batch(trainer):
    trainer.model.train()
    raw = next(iter(trainer.get_train_dataloader()))
    state, control_state = trainer._attr_generator.get_state(), trainer._control_generator.get_state()
    return trainer._generate_and_score_completions(raw), state, control_state


@pytest.mark.parametrize("control", CONTROLS)
def test_control_masks_equal_the_reference_path_under_checkpointing(tiny_dir, clip_rows, tmp_path, control):
    trainer = make_trainer(tiny_dir, clip_rows, tmp_path, gradient_checkpointing=True)
    trainer.selection_options.control = control
    batch, state, control_state = _batch(trainer)
    reference = reference_key_token_weights(trainer, batch, state, tiny_dir, control_state=control_state)
    weights = loss_token_weights(trainer, batch)  # chosen in the loss (ktr.select_in_loss, on by default here)
    assert "token_weights" not in batch and torch.equal(weights, reference)
    # the union of the same rollouts (no control) sets the size of every response's control mask
    trainer.selection_options.control = "none"
    union = reference_key_token_weights(trainer, batch, state, tiny_dir).bool()
    valid = batch["completion_mask"].bool()
    chosen = weights.bool()
    assert not (chosen & ~valid).any()
    if control == "complement":
        assert not (chosen & union).any()
        assert torch.equal(chosen.sum(1), torch.minimum(union.sum(1), (valid & ~union).sum(1)))
    else:
        assert torch.equal(chosen.sum(1), union.sum(1))
    if control == "random":
        assert not torch.equal(chosen, union)


@pytest.mark.parametrize("control", ("random", "entropy_matched"))
def test_control_under_bf16_trains_as_many_tokens_as_the_union(tiny_dir, clip_rows, tmp_path, control):
    trainer = make_trainer(tiny_dir, clip_rows, tmp_path, gradient_checkpointing=True, bf16=True,
                           gradient_accumulation_steps=2)
    trainer.selection_options.control = control
    _batch(trainer)
    metrics = trainer._metrics["train"]
    assert metrics["ktr/control_update_ratio"] == pytest.approx(metrics["ktr/update_ratio"])
    trainer.train()  # two optimizer steps with the control's weights, checkpointed, in bf16
    assert trainer.state.global_step == 2



@pytest.mark.slow
@pytest.mark.parametrize("control", CONTROLS)
def test_controls_run_from_the_options_on_videor1_data(control, mixed_data, tiny_dir, tmp_path):
    """`--control X` with the 7B recipe (bf16, gradient checkpointing, beta 0.4 with the mask on the KL term as the
    official code has it, its selection), every step a video,
    an image and a text-only prompt; the rollout log holds each attributed response's union and the control's
    weights: same size (complement: disjoint, no larger), response tokens only."""
    from videoktr.analysis.rollouts import load_rollouts
    from videoktr.train.config import load_config
    from videoktr.train.run import run

    data, root = mixed_data
    out = tmp_path / "run"
    config = load_config("configs/video-ktr-7b.yaml", {
        "model": str(tiny_dir), "data": str(data), "data_root": str(root), "output_dir": str(out),
        "max_steps": 2, "prompts_per_step": 3, "num_generations": 4, "max_completion_length": 12,
        "save_steps": 1000, "save_final": False, "media_cache": "none", "max_pixels": 56 * 56,
        "log_rollouts_every": 1, "log_rollouts_max": 0, "control": control,
        # the official code's KL under the mask: every response is attributed (the tiny model's rewards are all 0)
        "mask_kl": True})
    assert config.model.dtype == "bfloat16" and config.model.gradient_checkpointing
    report = run(config)
    assert report["steps"] == 2
    records = [r for r in load_rollouts(out) if r["attributed"]]
    assert records and {r["settings"]["control"] for r in records} == {control}
    kinds = set()
    for r in records:
        kinds.add("video" if r["videos"] else "image" if r["images"] else "text")
        union = [bool(x) for x in r["selected"]["union"] or [False] * len(r["tokens"])]
        chosen = [w > 0 for w in r["weights"]]
        assert len(chosen) == len(union) == len(r["tokens"])
        if control == "complement":
            assert not any(c and u for c, u in zip(chosen, union))
            assert sum(chosen) == min(sum(union), len(union) - sum(union))
        else:
            assert sum(chosen) == sum(union)
    assert kinds == {"video", "image", "text"}


def test_control_options_are_checked():
    from videoktr.train.config import ConfigError, load_config

    assert load_config(overrides={"control": "random"}).ktr.control == "random"
    with pytest.raises(ConfigError, match="ktr.control"):
        load_config(overrides={"control": "random", "method": "grpo"})
    with pytest.raises(ConfigError, match="binary"):
        load_config(overrides={"control": "complement", "weighting": "softmax"})
    with pytest.raises(ConfigError, match="control"):
        load_config(overrides={"control": "sometimes"})
