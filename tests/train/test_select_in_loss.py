"""ktr.select_in_loss: on the default path (TRL runs no old-policy pass: num_iterations 1, generation aligned with the
optimizer step), the rollout evaluates only the perturbed inputs, and the key-token mask is chosen in the loss from the
policy forward's own log-probs and entropies. Masks equal today's path (the unperturbed input evaluated again by
attribution) in fp32, with and without gradient checkpointing; under bf16 on at least 80% of the tokens; per
micro-batch in any row order; never where it is not exact."""

from __future__ import annotations

import pytest
import torch
from builders import clip_rows as make_clip_rows
from builders import loss_token_weights, make_trainer

import videoktr.train.trainer as trainer_module

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def clip_rows(tmp_path_factory):
    return make_clip_rows(tmp_path_factory.mktemp("clips"), 300)


def rollout_and_today(trainer):
    """One generation batch on the loss-time path, then the same batch's weights from today's rollout path (the
    unperturbed input evaluated again by attribution) with the same perturbation and control draws."""
    trainer.model.train()
    raw = next(iter(trainer.get_train_dataloader()))
    attr, control = trainer._attr_generator.get_state(), trainer._control_generator.get_state()
    batch = trainer._generate_and_score_completions(raw)
    after = trainer._control_generator.get_state()
    trainer._attr_generator.set_state(attr)
    trainer._control_generator.set_state(control)
    today = trainer._key_token_weights(batch)
    trainer._control_generator.set_state(after)
    return batch, today


@pytest.mark.parametrize("settings,agreement", [
    (dict(), 1.0),
    (dict(gradient_checkpointing=True, temperature=0.8), 1.0),
    # bf16: the policy forward (train mode, one unshared sequence per row, TRL's fused head) and attribution's pass
    # (eval mode, shared prompt prefixes) round differently; the tiny random model's scores sit below bf16's
    # rounding, so near-threshold tokens flip (as with reuse_rollout_logps and bf16 against the fp32 reference)
    (dict(gradient_checkpointing=True, bf16=True), 0.8),
])
def test_masks_equal_todays_path(tiny_dir, clip_rows, tmp_path, settings, agreement):
    trainer = make_trainer(tiny_dir, clip_rows, tmp_path, **settings)
    trainer.model.train()
    assert trainer.selects_in_loss() and not trainer.reuses_old_policy_pass()
    batch, today = rollout_and_today(trainer)
    assert "token_weights" not in batch and batch["ktr_attributed"].any()
    # zero-advantage rows are not attributed and weigh 0
    assert torch.equal(batch["ktr_attributed"], batch["advantages"].ne(0))
    logged = len(trainer._metrics["train"]["ktr/update_ratio"])  # today's path above logged its own
    weights = loss_token_weights(trainer, batch)
    mask = batch["completion_mask"].bool()
    same = (weights == today)[mask].float().mean().item()
    assert same >= agreement, f"{same:.3f} of response tokens agree"
    assert weights[~batch["ktr_attributed"]].eq(0).all()
    # the update-ratio statistics come from the loss now
    assert len(trainer._metrics["train"]["ktr/update_ratio"]) == logged + 1


def test_micro_batches_in_any_order_select_alike(tiny_dir, clip_rows, tmp_path):
    """TRL shuffles the rollout's rows and splits them into micro-batches: scope "response" selects each
    response's own top r%, so every split and order gives each row the same mask."""
    from trl.trainer.utils import split_tensor_dict

    trainer = make_trainer(tiny_dir, clip_rows, tmp_path)
    batch, _ = rollout_and_today(trainer)
    whole = loss_token_weights(trainer, batch)
    order = torch.tensor([5, 2, 7, 0, 3, 6, 1, 4])
    shuffled = {k: (v[order] if torch.is_tensor(v) and v.dim() > 0 else [v[i] for i in order] if isinstance(v, list)
                    else v) for k, v in batch.items()}
    parts = [loss_token_weights(trainer, part) for part in split_tensor_dict(shuffled, 2)]
    assert torch.equal(torch.cat(parts), whole[order])


def test_only_perturbed_inputs_run_at_the_rollout(tiny_dir, clip_rows, tmp_path, monkeypatch):
    calls = []
    real = trainer_module.attribute

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "attribute", spy)
    trainer = make_trainer(tiny_dir, clip_rows, tmp_path)
    trainer.model.train()
    batch = trainer._generate_and_score_completions(next(iter(trainer.get_train_dataloader())))
    assert len(calls) == 1 and calls[0]["perturbed_only"] and calls[0]["logp"] is None
    rows = batch["ktr_attributed"]
    for kind in ("visual", "temporal"):
        valid = batch[f"ktr_valid_{kind}"]
        assert valid[rows].any() and not valid[~rows].any()
        assert batch[f"ktr_perturbed_{kind}"][valid].lt(0).all()  # log-probs of the sampled tokens
    # method "entropy": nothing to perturb, no attribution pass at all
    calls.clear()
    entropy = make_trainer(tiny_dir, clip_rows, tmp_path, method="entropy")
    entropy.model.train()
    batch = entropy._generate_and_score_completions(next(iter(entropy.get_train_dataloader())))
    assert not calls and "ktr_perturbed_visual" not in batch
    weights = loss_token_weights(entropy, batch)
    assert weights[batch["ktr_attributed"]].sum() > 0


@pytest.mark.parametrize("control", ["random", "entropy_matched"])
def test_controls_choose_in_the_loss(tiny_dir, clip_rows, tmp_path, control):
    """A control trains as many tokens per response as the union it replaces, chosen in the loss."""
    from videoktr.attribution import SelectionOptions

    trainer = make_trainer(tiny_dir, clip_rows, tmp_path,
                           trainer_kwargs={"selection": SelectionOptions(control=control)})
    batch, today = rollout_and_today(trainer)
    weights = loss_token_weights(trainer, batch)
    assert torch.equal(weights.sum(1), today.sum(1))  # per response: the union's size (fp32: the same union)
    if control == "entropy_matched":
        assert torch.equal(weights, today)


def test_only_where_exact(tiny_dir, clip_rows, tmp_path):
    from videoktr.attribution import AttributionOptions, SelectionOptions
    from videoktr.models.lora import LoraOptions

    def selects(**kwargs):
        trainer = make_trainer(tiny_dir, clip_rows, tmp_path, **kwargs)
        trainer.model.train()
        return trainer.selects_in_loss()

    assert selects()
    assert not selects(num_iterations=2)  # the weights move between sampling and the second pass: reuse instead
    assert not selects(lora=LoraOptions(r=4, dropout=0.05))  # a dropped-out log-prob is not the policy's
    assert selects(lora=LoraOptions(r=4, dropout=0.0))
    assert not selects(trainer_kwargs={"select_in_loss": False})
    assert not selects(method="grpo") and not selects(method="twgrpo")
    assert not selects(trainer_kwargs={"attribution": AttributionOptions(distance="kl")})
    assert not selects(trainer_kwargs={"attribution": AttributionOptions(temporal_samples=2)})
    assert not selects(trainer_kwargs={"selection": SelectionOptions(scope="group")})
    evaluating = make_trainer(tiny_dir, clip_rows, tmp_path)
    evaluating.model.eval()
    assert not evaluating.selects_in_loss()


def test_a_logged_step_keeps_the_rollout_path(tiny_dir, clip_rows, tmp_path):
    """The rollout log records the mask at the rollout: its steps evaluate the unperturbed input there."""
    from videoktr.train.rollout_log import RolloutLogOptions

    trainer = make_trainer(tiny_dir, clip_rows, tmp_path,
                           trainer_kwargs={"rollout_log": RolloutLogOptions(every=1)})
    trainer.model.train()
    batch = trainer._generate_and_score_completions(next(iter(trainer.get_train_dataloader())))
    assert "token_weights" in batch and "ktr_attributed" not in batch


def test_trains_under_the_recipe_settings(tiny_dir, clip_rows, tmp_path):
    """Two optimizer steps with gradient accumulation, bf16 and gradient checkpointing on the loss-time path."""
    trainer = make_trainer(tiny_dir, clip_rows, tmp_path, gradient_accumulation_steps=2, bf16=True,
                           gradient_checkpointing=True, logging_steps=1)
    trainer.model.train()
    assert trainer.selects_in_loss()  # these settings take the loss-time path
    chosen = []
    real = trainer._loss_time_weights
    trainer._loss_time_weights = lambda *args: chosen.append(1) or real(*args)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    logs = [h for h in trainer.state.log_history if "ktr/update_ratio" in h]
    assert logs and all(0 < h["ktr/update_ratio"] <= 1 for h in logs)
    assert len(chosen) == 4  # 2 optimizer steps x 2 micro-batches, each chose its mask in the loss
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters() if n in before)
