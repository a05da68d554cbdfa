"""ktr.reuse_rollout_logps: where TRL has computed the old-policy log-probs of the responses (num_iterations > 1
here; vLLM importance sampling on a GPU), the key-token scores take their unperturbed side from that pass (with its
entropies) and evaluate only the perturbed inputs. Masks equal today's path (fp32; bf16 with near ties forgiven),
under the recipe settings; never with live dropout or where TRL skips that pass."""

from __future__ import annotations

import pytest
import torch
from builders import clip_rows as make_clip_rows
from builders import make_trainer

import videoktr.train.trainer as trainer_module

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def clip_rows(tmp_path_factory):
    return make_clip_rows(tmp_path_factory.mktemp("clips"), 300)


def both_paths(trainer, monkeypatch):
    """One generation batch with the reuse (its weights, and what attribute() was given), then the same batch's
    weights from today's path (the unperturbed input evaluated again) with the same perturbation draws."""
    calls = []
    real = trainer_module.attribute

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append({"logp": kwargs.get("logp"), "entropy": kwargs.get("entropy"), "out": out})
        return out

    monkeypatch.setattr(trainer_module, "attribute", spy)
    trainer.model.train()
    raw = next(iter(trainer.get_train_dataloader()))
    state = trainer._attr_generator.get_state()
    batch = trainer._generate_and_score_completions(raw)
    assert "old_entropies" not in batch  # consumed by the weights, not carried into the loss
    trainer._attr_generator.set_state(state)
    again = trainer._key_token_weights(batch)
    return batch, again, calls


@pytest.mark.parametrize("settings,agreement", [
    (dict(), 1.0),
    (dict(gradient_checkpointing=True, temperature=0.8), 1.0),
    # bf16: the old-policy pass and attribution's pass round differently (another batch composition and LM-head
    # kernel); the tiny random model's scores (about 1e-3 nats) sit below bf16's rounding, so near-threshold
    # tokens flip (tests/train/test_recipe_settings.py says the same of bf16 against the fp32 reference)
    (dict(gradient_checkpointing=True, bf16=True), 0.8),
])
def test_masks_equal_todays_path(tiny_dir, clip_rows, tmp_path, monkeypatch, settings, agreement):
    trainer = make_trainer(tiny_dir, clip_rows, tmp_path, num_iterations=2, **settings)
    trainer.model.train()
    assert trainer.reuses_old_policy_pass()
    batch, again, calls = both_paths(trainer, monkeypatch)
    assert trainer._metrics["train"]["ktr/reused_old_logps"] == [1.0]
    reused, fresh = calls[0], calls[1]
    assert reused["logp"] is not None and fresh["logp"] is None
    pick = batch["advantages"].ne(0).nonzero().squeeze(-1)
    # the unperturbed side handed to attribute() is TRL's old-policy log-probs, and its entropies are the policy's
    assert torch.equal(reused["logp"], batch["old_per_token_logps"][pick])
    valid = batch["completion_mask"][pick].bool()
    tol = 1e-4 if not settings.get("bf16") else 0.1
    assert (reused["entropy"] - fresh["out"].entropy).abs()[valid].max() <= tol
    assert (reused["logp"] - fresh["out"].logp).abs()[valid].max() <= tol
    mask = batch["completion_mask"].bool()
    same = (batch["token_weights"] == again)[mask].float().mean().item()
    assert same >= agreement, f"{same:.3f} of response tokens agree"


def test_only_where_exact(tiny_dir, clip_rows, tmp_path):
    from videoktr.models.lora import LoraOptions

    # TRL skips the old-policy pass (generation aligned with the optimizer step): nothing to reuse
    aligned = make_trainer(tiny_dir, clip_rows, tmp_path)
    aligned.model.train()
    assert not aligned.reuses_old_policy_pass()
    # live dropout (LoRA's default 0.05) in TRL's train-mode pass: its log-probs are not the policy's
    lora = make_trainer(tiny_dir, clip_rows, tmp_path, num_iterations=2, lora=LoraOptions(r=4, dropout=0.05))
    lora.model.train()
    assert trainer_module.live_dropout(lora.model) and not lora.reuses_old_policy_pass()
    lora.model.eval()
    assert not trainer_module.live_dropout(lora.model)
    plain = make_trainer(tiny_dir, clip_rows, tmp_path, num_iterations=2, lora=LoraOptions(r=4, dropout=0.0))
    plain.model.train()
    assert not trainer_module.live_dropout(plain.model) and plain.reuses_old_policy_pass()
    off = make_trainer(tiny_dir, clip_rows, tmp_path, num_iterations=2, trainer_kwargs={"reuse_rollout_logps": False})
    off.model.train()
    assert not off.reuses_old_policy_pass()
    grpo = make_trainer(tiny_dir, clip_rows, tmp_path, method="grpo", num_iterations=2)
    grpo.model.train()
    assert not grpo.reuses_old_policy_pass()
    kl = make_trainer(tiny_dir, clip_rows, tmp_path, num_iterations=2)
    kl.attribution_options.distance = "kl"  # needs the unperturbed hidden states, not only log-probs
    kl.model.train()
    assert not kl.reuses_old_policy_pass()


def test_reference_pass_is_not_taken_for_the_old_one(tiny_dir, clip_rows, tmp_path, monkeypatch):
    """With a KL term TRL also runs the reference model's pass while the rollout is scored; the entropies kept are
    the ones of the pass whose log-probs are the rollout's old_per_token_logps."""
    trainer = make_trainer(tiny_dir, clip_rows, tmp_path, num_iterations=2, beta=0.1)
    # the reference drifts from the policy so that the two passes differ
    with torch.no_grad():
        for p in trainer.ref_model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    batch, again, calls = both_paths(trainer, monkeypatch)
    assert not torch.equal(batch["old_per_token_logps"], batch["ref_per_token_logps"])
    pick = batch["advantages"].ne(0).nonzero().squeeze(-1)
    valid = batch["completion_mask"][pick].bool()
    assert (calls[0]["entropy"] - calls[1]["out"].entropy).abs()[valid].max() <= 1e-4
