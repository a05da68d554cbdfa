"""Training with LoRA adapters (model.lora_r > 0) under the recipe's settings, scaled down to the tiny model:
every method trains the adapters only, attribution scores the model with its adapters on, the reference policy
is the model with adapters off, checkpoints hold the adapter and resume from it, and final/ is a merged plain
model that loads like any checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from builders import clip_rows as make_clip_rows
from builders import loss_token_weights, make_trainer, reference_key_token_weights
from videor1_fixture import write_videor1_fixture

from videoktr.cli import main
from videoktr.models.lora import LoraOptions, base_model

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def clip_rows(tmp_path_factory):
    return make_clip_rows(tmp_path_factory.mktemp("clips"), 300)


def randomise_adapters(trainer, std=0.5, seed=3):
    """A trained-looking adapter: LoRA's B starts at zero, where the adapted model equals the base model."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def generation_batch(trainer):
    trainer.model.train()
    raw = next(iter(trainer.get_train_dataloader()))
    state = trainer._attr_generator.get_state()
    return trainer._generate_and_score_completions(raw), state


# every method with the vision tower frozen (LoRA's default), and each vision mode with ktr and grpo
CASES = [(m, "frozen") for m in ("ktr", "grpo", "entropy", "twgrpo", "tgrpo")] + [
    (m, v) for m in ("ktr", "grpo") for v in ("lora", "train")]


@pytest.mark.parametrize("method,vision", CASES)
def test_every_method_trains_the_adapters_only(tiny_dir, clip_rows, tmp_path, method, vision):
    trainer = make_trainer(tiny_dir, clip_rows, tmp_path, method=method, lora=LoraOptions(r=4, vision=vision),
                           gradient_checkpointing=True, beta=0.04, learning_rate=5e-2)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert any("lora_B" in n for n in changed)
    assert all("lora_" in n or "modules_to_save" in n for n in changed), sorted(changed)[:5]
    vision_changed = any("visual" in n for n in changed)
    assert vision_changed == (vision != "frozen")
    assert trainer.state.log_history[-2]["kl"] > 0  # the reference (adapters off) differs from the policy


@pytest.mark.parametrize("settings,agreement,dropout", [
    (dict(gradient_checkpointing=True), 1.0, 0.05),
    (dict(gradient_checkpointing=True, bf16=True), 0.8, 0.05),
    # no adapter dropout: the mask is chosen in the loss (ktr.select_in_loss) from the adapted policy forward
    (dict(gradient_checkpointing=True), 1.0, 0.0),
    (dict(gradient_checkpointing=True, bf16=True), 0.8, 0.0)],
    ids=["checkpointing", "checkpointing-bf16", "in-loss-checkpointing", "in-loss-checkpointing-bf16"])
def test_attribution_scores_the_model_with_its_adapters(tiny_dir, clip_rows, tmp_path, settings, agreement, dropout):
    """Key-token weights equal the reference path's on the merged weights (adapters on), and differ from the
    base model's (so the adapters were not bypassed). With live adapter dropout the rollout chooses the mask; with
    none the loss does, from the training forward with its adapters."""
    trainer = make_trainer(tiny_dir, clip_rows, tmp_path, lora=LoraOptions(r=4, vision="lora", dropout=dropout),
                           **settings)
    randomise_adapters(trainer)
    assert trainer.selects_in_loss() == (dropout == 0)
    batch, state = generation_batch(trainer)
    weights = loss_token_weights(trainer, batch)
    valid = batch["completion_mask"].bool()
    merged, near_tie = reference_key_token_weights(trainer, batch, state, tiny_dir, ties=1e-5)
    decided = valid & ~near_tie  # a random model's entropies tie to 1e-6: those swaps are float noise
    same = (weights == merged)[decided].float().mean().item()
    assert same >= agreement, f"{same:.3f} of response tokens agree with the merged model's reference"
    assert decided.sum() >= 0.8 * valid.sum()
    randomise_adapters(trainer, std=0.0)  # B = 0: the merged reference is the base model's
    base = reference_key_token_weights(trainer, batch, state, tiny_dir)
    assert not torch.equal(base[valid], weights[valid])


def test_reference_policy_is_the_model_without_adapters(tiny_dir, clip_rows, tmp_path):
    from videoktr.models.factory import load_model

    trainer = make_trainer(tiny_dir, clip_rows, tmp_path, lora=LoraOptions(r=4, vision="lora"), beta=0.1)
    randomise_adapters(trainer)
    batch, _ = generation_batch(trainer)
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    C = batch["completion_ids"].shape[1]
    plain = load_model(tiny_dir, dtype="float32").eval()
    trainer.model.eval()
    with torch.no_grad():
        media = trainer._encode_media(plain, batch["videos"])  # the base model's own vision tower
        logits = plain(input_ids=ids, attention_mask=mask, mm_token_type_ids=trainer.adapter.mm_token_type_ids(ids),
                       **media.forward_kwargs(trainer.adapter, ids.device)).logits[:, -C - 1 : -1]
        base_logps = torch.log_softmax(logits / trainer.temperature, -1).gather(-1, ids[:, -C:, None])[..., 0]
        policy_logps, _, _ = trainer._forward_logps(trainer.model, ids, mask, C, batch["videos"], False)
    valid = batch["completion_mask"].bool()
    ref = batch["ref_per_token_logps"]
    assert torch.allclose(ref[valid], base_logps[valid], atol=1e-5)
    assert not torch.allclose(ref[valid], policy_logps[valid], atol=1e-3)


def lora_train(fx, tiny_dir, out, *extra):
    return main(["train", "--data", str(fx.data_file), "--data-root", str(fx.root), "--model", str(tiny_dir),
                 "--prompts-per-step", "2", "--num-generations", "4", "--max-completion-length", "8",
                 "--output-dir", str(out), "--save-steps", "1", "--lora-r", "4", "--vision-tower", "lora",
                 "--learning-rate", "0.05", "--gradient-checkpointing", "--rope-positions", "transformers", *extra])


def adapter_state(path):
    from safetensors.torch import load_file

    return load_file(path / "adapter_model.safetensors")


@pytest.mark.slow
def test_checkpoints_resume_and_final_is_a_merged_model(tiny_dir, tmp_path, capsys, monkeypatch):
    from builders import length_reward
    from peft import PeftModel

    from videoktr.models.factory import load_model

    # the random tiny model never answers right: a reward that varies within a group gives every step a gradient
    monkeypatch.setattr("videoktr.rewards.build_rewards", lambda spec: ([length_reward, length_reward], [1.0, 0.5]))

    fx = write_videor1_fixture(tmp_path / "data")
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert lora_train(fx, tiny_dir, whole, "--max-steps", "2") == 0
    ckpt = whole / "checkpoint-1"
    assert (ckpt / "adapter_model.safetensors").is_file() and not (ckpt / "model.safetensors").exists()
    assert (ckpt / "videoktr_complete.json").is_file()
    # every directory records the 3D position scheme the run trained under (adapters: videoktr_positions.json)
    from videoktr.models.positions import ADAPTER_RECORD, recorded_scheme, scheme_of

    assert (ckpt / ADAPTER_RECORD).is_file() and recorded_scheme(ckpt) == "transformers"
    assert recorded_scheme(whole / "final" / "adapter") == recorded_scheme(whole / "final") == "transformers"
    # a run interrupted after step 1 and resumed ends with the same adapter as the uninterrupted run
    assert lora_train(fx, tiny_dir, split, "--max-steps", "1") == 0
    assert lora_train(fx, tiny_dir, split, "--max-steps", "2") == 0
    assert "resuming from" in capsys.readouterr().out
    a, b = adapter_state(whole / "checkpoint-2"), adapter_state(split / "checkpoint-2")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert any(not torch.equal(a[k], adapter_state(ckpt)[k]) for k in a)  # step 2 moved the adapter
    # final/: the merged plain model (what eval loads) and the adapter beside it
    final = whole / "final"
    assert (final / "adapter" / "adapter_config.json").is_file() and not (final / "adapter_config.json").exists()
    merged = load_model(final, dtype="float32").eval()
    assert scheme_of(merged) == "transformers"
    adapted = PeftModel.from_pretrained(load_model(tiny_dir, dtype="float32"), str(final / "adapter")).eval()
    ids = torch.tensor([[1, 5, 9, 14, 3, 7]])
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, adapted(input_ids=ids).logits, atol=1e-5)
    assert "LoRA" in (final / "README.md").read_text()
    report = json.loads((whole / "report.json").read_text())
    assert report["train"]["final_model"] == str(final)
    # a checkpoint merges from the command line
    assert main(["merge-lora", "--adapter", str(ckpt), "--output", str(tmp_path / "m1")]) == 0
    assert recorded_scheme(tmp_path / "m1") == "transformers"  # the adapter's scheme, not the base's default
    assert scheme_of(load_model(tmp_path / "m1", dtype="float32")) == "transformers"
    assert main(["merge-lora", "--adapter", str(ckpt), "--output", str(tmp_path / "m2"), "--rope-positions",
                 "qwen"]) == 0
    assert recorded_scheme(tmp_path / "m2") == "qwen"


def test_lora_options_are_checked_before_any_work(tmp_path, capsys):
    assert main(["train", "--vision-tower", "lora", "--output-dir", str(tmp_path / "o")]) == 2
    assert "lora_r > 0" in capsys.readouterr().err
    assert main(["train", "--lora-r", "4", "--lora-target-modules", "q_proj", "lm_head",
                 "--output-dir", str(tmp_path / "o")]) == 2
    assert "lm_head" in capsys.readouterr().err
    assert main(["train", "--lora-dropout", "1.5", "--output-dir", str(tmp_path / "o")]) == 2
    assert "lora_dropout" in capsys.readouterr().err
    assert main(["merge-lora", "--adapter", str(tmp_path), "--output", str(tmp_path / "x")]) == 2
    assert "not an adapter directory" in capsys.readouterr().err
