"""Dynamic sampling (rl.dynamic_sampling), VPPO and PAPO in the trainer, on the tiny model: the merged batch of a
dynamically sampled step against a row-by-row reference; constant groups replaced (and the cap reported) with
gradient accumulation, gradient checkpointing and bf16; VPPO's token weights and advantage factors equal a
reference path's (fresh fp32 model, eval mode, no checkpointing, unshared forward); PAPO's perception term equals
the KL of the reference path's log-probs, and its gradient reaches the masked pass."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from builders import clip_rows as make_clip_rows
from builders import make_trainer, reference_vppo

from videoktr.core import group_advantages, papo_perception_kl
from videoktr.train.trainer import DynamicSamplingOptions, PerceptionOptions, merge_rollouts

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def clip_rows(tmp_path_factory):
    return make_clip_rows(tmp_path_factory.mktemp("clips"), 300)


def only_clip3_varies(completions, prompts=None, **kwargs):
    """Constant (1.0) on the prompts of clips 0-2; 0, 1, 0, 1, ... within a group on clip 3's prompts."""
    out = []
    for i, prompt in enumerate(prompts):
        paths = [part.get("video", "") for m in prompt for part in m["content"] if isinstance(part, dict)]
        out.append(float(i % 2) if any(str(p).endswith("clip3.mp4") for p in paths) else 1.0)
    return out


def _ds_trainer(tiny_dir, rows, tmp_path, max_batches=30, **config):
    return make_trainer(tiny_dir, rows, tmp_path, method="grpo", reward=only_clip3_varies,
                        trainer_kwargs={"dynamic_sampling": DynamicSamplingOptions(True, "reward", max_batches)},
                        **config)


def _video_key(row):
    return next(part["video"] for m in row["prompt"] for part in m["content"] if part.get("type") == "video")


def test_merge_rollouts_equals_row_by_row_reference():
    G, pad = 2, 9
    g = torch.Generator().manual_seed(0)

    def round_(B, P, C, tag):
        pm = torch.ones(B, P, dtype=torch.long)
        pm[:, 0] = 0  # left padding
        cm = torch.ones(B, C, dtype=torch.long)
        cm[:, -1] = 0
        return {"prompt_ids": torch.randint(20, (B, P), generator=g), "prompt_mask": pm,
                "completion_ids": torch.randint(20, (B, C), generator=g), "completion_mask": cm,
                "old_per_token_logps": torch.randn(B, C, generator=g), "advantages": torch.randn(B, generator=g),
                "importance_sampling_ratio": torch.rand(B, 1, generator=g), "num_items_in_batch": torch.tensor(5),
                "videos": [f"{tag}{i}" for i in range(B)]}

    rounds = [round_(4, 3, 5, "a"), round_(2, 6, 2, "b"), round_(4, 2, 7, "c")]
    picks = [(0, 1), (2, 0), (1, 0), (2, 1)]
    out = merge_rollouts(rounds, picks, G, pad)
    assert "num_items_in_batch" not in out
    assert out["prompt_ids"].shape == (8, 6) and out["completion_ids"].shape == (8, 7)
    r = 0
    for rnd, grp in picks:
        for i in range(grp * G, (grp + 1) * G):
            src = rounds[rnd]
            P, C = src["prompt_ids"].shape[1], src["completion_ids"].shape[1]
            assert out["prompt_ids"][r, 6 - P :].tolist() == src["prompt_ids"][i].tolist()
            assert out["prompt_ids"][r, : 6 - P].tolist() == [pad] * (6 - P)
            assert out["prompt_mask"][r].tolist() == [0] * (6 - P) + src["prompt_mask"][i].tolist()
            assert out["completion_ids"][r].tolist() == src["completion_ids"][i].tolist() + [pad] * (7 - C)
            assert out["completion_mask"][r].tolist() == src["completion_mask"][i].tolist() + [0] * (7 - C)
            assert out["old_per_token_logps"][r, :C].tolist() == src["old_per_token_logps"][i].tolist()
            assert out["advantages"][r] == src["advantages"][i]
            assert out["importance_sampling_ratio"][r, 0] == src["importance_sampling_ratio"][i, 0]
            assert out["videos"][r] == src["videos"][i]
            r += 1
    with pytest.raises(NotImplementedError, match="pixel_values"):
        merge_rollouts([{**rounds[0], "pixel_values": torch.zeros(4, 2, 2, 2)}], [(0, 0)], G, pad)


def test_dynamic_sampling_replaces_constant_groups(tiny_dir, clip_rows, tmp_path):
    """Each generation batch holds 2 of the 4 prompts (TRL samples an epoch without replacement), and only clip 3's
    prompt gets varying rewards: at least one group of every first batch is constant and must be replaced."""
    trainer = _ds_trainer(tiny_dir, clip_rows, tmp_path)
    trainer.model.train()
    raw = next(iter(trainer.get_train_dataloader()))
    batch = trainer._generate_and_score_completions(raw)
    G = trainer.num_generations
    assert batch["completion_ids"].shape[0] == len(raw) == 8 and len(batch["videos"]) == 8
    keys = [r.key for r in batch["videos"]]
    assert all(k.endswith("clip3.mp4") for k in keys), keys  # every kept group is an informative one
    rewards = trainer._local_rewards[:, 0]
    assert rewards.view(-1, G).std(1).gt(0).all()
    assert batch["advantages"].ne(0).all()
    m = trainer._metrics["train"]
    assert m["dynamic_sampling/resampled_groups"][-1] >= 1 and m["dynamic_sampling/unfilled_groups"][-1] == 0
    assert m["dynamic_sampling/generation_batches"][-1] >= 2
    assert m["dynamic_sampling/informative_share"][-1] <= 0.5
    assert batch["num_items_in_batch"] == batch["completion_mask"].sum()
    # the batch's rows (what the rollout log records) are the prompts of its groups, group by group
    rows = trainer._dynamically_sampled(trainer._sample_round(raw), raw)[1]
    assert len(rows) == 8 and all(_video_key(r).endswith("clip3.mp4") for r in rows)


def test_dynamic_sampling_cap_keeps_constant_groups_and_reports_them(tiny_dir, clip_rows, tmp_path):
    trainer = _ds_trainer(tiny_dir, clip_rows, tmp_path, max_batches=1)
    trainer.model.train()
    raw = next(iter(trainer.get_train_dataloader()))
    batch = trainer._generate_and_score_completions(raw)
    m = trainer._metrics["train"]
    assert m["dynamic_sampling/generation_batches"][-1] == 1 and m["dynamic_sampling/resampled_groups"][-1] == 0
    constant = sum(not _video_key(raw[g * 4]).endswith("clip3.mp4") for g in range(2))
    assert constant >= 1 and m["dynamic_sampling/unfilled_groups"][-1] == constant
    assert batch["completion_ids"].shape[0] == 8


def test_dynamic_sampling_under_accumulation_checkpointing_bf16(tiny_dir, clip_rows, tmp_path, monkeypatch):
    """Two micro-batches of one group each per optimizer step: the generation batch is sampled (and resampled)
    once for both, and every micro-batch trains informative groups only."""
    from videoktr.train import trainer as trainer_module

    trainer = _ds_trainer(tiny_dir, clip_rows, tmp_path, per_device_train_batch_size=4,
                          gradient_accumulation_steps=2, gradient_checkpointing=True, bf16=True)
    seen = []
    real = trainer_module.VideoGRPOTrainer._compute_loss

    def recording(self, model, inputs):
        seen.append((inputs["advantages"].ne(0).all().item(), [r.key for r in inputs["videos"]]))
        return real(self, model, inputs)

    monkeypatch.setattr(trainer_module.VideoGRPOTrainer, "_compute_loss", recording)
    trainer.train()
    assert trainer.state.global_step == 2 and len(seen) == 4
    assert all(ok for ok, _ in seen) and all(k.endswith("clip3.mp4") for _, keys in seen for k in keys)
    logged = [h for h in trainer.state.log_history if "dynamic_sampling/resampled_groups" in h]
    assert len(logged) == 2 and all(h["dynamic_sampling/resampled_groups"] >= 1 for h in logged)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h)


def _reference_attribution(trainer, batch, tiny_dir, distance):
    """attribute() with the visual signal on a fresh fp32 copy of the trainer's weights, eval mode, unshared
    forward, the vision tower run on every row's pixels."""
    from videoktr.attribution import attribute
    from videoktr.models.factory import load_model

    model = load_model(tiny_dir, dtype="float32").eval()
    trained = trainer.accelerator.unwrap_model(trainer.model).state_dict()
    model.load_state_dict({k: v.float() for k, v in trained.items()})
    videos = batch["videos"]
    options = dataclasses.replace(trainer.attribution_options, signals=("visual",), distance=distance,
                                  share_prefix=False, signed=False)
    with torch.no_grad():
        return attribute(model, batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"],
                         batch["completion_mask"], pixel_values_videos=torch.cat([r.pixels for r in videos]),
                         video_grid_thw=torch.cat([r.grid for r in videos]),
                         second_per_grid_ts=torch.cat([r.seconds_per_group for r in videos]),
                         video_keys=[r.key for r in videos], options=options, keep_perturbed_logp=True)


@pytest.mark.parametrize("dependency", ["kl", "k3"])
def test_vppo_weights_and_advantages_equal_the_reference_path(dependency, tiny_dir, clip_rows, tmp_path):
    perception = PerceptionOptions(vppo_dependency=dependency)
    trainer = make_trainer(tiny_dir, clip_rows, tmp_path, method="vppo", gradient_checkpointing=True,
                           trainer_kwargs={"perception": perception})
    trainer.model.train()
    raw = next(iter(trainer.get_train_dataloader()))
    batch = trainer._generate_and_score_completions(raw)
    weights, scaling, att = reference_vppo(trainer, batch, tiny_dir)
    valid = att.valid["visual"]
    assert torch.equal(valid, batch["completion_mask"].bool())  # every row has a video
    assert torch.equal(batch["token_weights"], weights)
    ratio = batch["token_weights"].sum(1) / valid.sum(1)
    assert ((ratio >= 0.4) & (ratio < 0.4 + 1 / valid.sum(1).float() + 1e-6)).all()
    assert scaling.min().item() == pytest.approx(0.9) and scaling.mean().item() == pytest.approx(1.0, rel=1e-5)
    w = trainer.reward_weights
    plain = group_advantages((trainer._local_rewards * w).nansum(1), trainer.num_generations)
    # the scores of the shared-prefix pass and of the reference's unshared one differ in the last digits
    torch.testing.assert_close(batch["advantages"], plain * scaling, rtol=1e-3, atol=1e-5)
    m = trainer._metrics["train"]
    assert m["vppo/update_ratio"][-1] == pytest.approx(batch["token_weights"].sum().item() / valid.sum().item())


def test_vppo_trains_under_checkpointing_bf16_and_accumulation(tiny_dir, clip_rows, tmp_path):
    trainer = make_trainer(tiny_dir, clip_rows, tmp_path, method="vppo", gradient_checkpointing=True, bf16=True,
                           per_device_train_batch_size=4, gradient_accumulation_steps=2)
    trainer.train()
    history = [h for h in trainer.state.log_history if "loss" in h]
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    assert all(0 < h["vppo/update_ratio"] < 1 and h["vppo/entropy_penalty_term"] > 0 for h in history)


def test_papo_perception_term_equals_reference_and_reaches_the_masked_pass(tiny_dir, clip_rows, tmp_path):
    """With only the perception term on (gamma 1, entropy terms 0), PAPO's loss is GRPO's minus the KL of the
    reference path's real and zero-masked log-probs; its gradient differs from GRPO's, also in the parameters that
    only the masked half's gradient would move if the real half's were removed."""
    perception = PerceptionOptions(papo_coef=1.0, papo_entropy_coef=0.0, papo_masked_entropy_coef=0.0)
    trainer = make_trainer(tiny_dir, clip_rows, tmp_path, method="papo", gradient_checkpointing=True,
                           trainer_kwargs={"perception": perception})
    trainer.model.train()
    raw = next(iter(trainer.get_train_dataloader()))
    batch = trainer._generate_and_score_completions(raw)
    inputs = {k: v for k, v in batch.items() if k != "old_per_token_logps"}  # ratio 1: the policy's own
    model = trainer.model
    loss = trainer._compute_loss(model, inputs)
    kl_logged = trainer._metrics["train"]["papo/perception_kl"][-1]
    att = _reference_attribution(trainer, batch, tiny_dir, "logprob")
    reference = papo_perception_kl(att.logp, att.perturbed_logp["visual"], att.valid["visual"]).item()
    assert kl_logged == pytest.approx(reference, rel=1e-4, abs=1e-6) and reference > 0
    trainer.method = "grpo"
    grpo_loss = trainer._compute_loss(model, inputs)
    assert (loss - grpo_loss).item() == pytest.approx(-reference, rel=1e-4, abs=1e-6)
    # gradient through the masked half: the loss of the masked log-probs alone moves the weights
    trainer.method = "papo"
    rows = inputs["videos"]
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    model.zero_grad()
    _, _, masked = trainer._papo_forward(model, ids, mask, inputs["completion_ids"].shape[1], rows)
    masked[inputs["completion_mask"].bool()].sum().backward()
    grads = [p.grad for n, p in model.named_parameters() if "visual" not in n and p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_papo_trains_under_checkpointing_bf16_and_accumulation(tiny_dir, clip_rows, tmp_path):
    trainer = make_trainer(tiny_dir, clip_rows, tmp_path, method="papo", gradient_checkpointing=True, bf16=True,
                           per_device_train_batch_size=4, gradient_accumulation_steps=2)
    trainer.train()
    history = [h for h in trainer.state.log_history if "loss" in h]
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    assert all(h["papo/perception_kl"] >= 0 and h["papo/masked_entropy"] > 0 for h in history)



@pytest.mark.slow
@pytest.mark.parametrize("method", ["vppo", "papo"])
def test_methods_with_dynamic_sampling_run_from_the_cli_on_videor1_data(method, mixed_data, tiny_dir, tmp_path):
    """`videoktr train --config configs/<method>-7b.yaml --dynamic-sampling ...` on Video-R1-format rows, every
    step a video, an image and a text prompt, under the recipe's bf16 and gradient checkpointing; the tiny model
    scores 0 on every row, so every group is constant: each step runs the cap's 2 generation batches and reports its
    3 groups unfilled; the rollout log records the steps (VPPO: its token filter as the "visual" selection)."""
    import json

    from videoktr.analysis.rollouts import load_rollouts
    from videoktr.cli import main

    data, root = mixed_data
    out = tmp_path / "run"
    code = main(["train", "--config", f"configs/{method}-7b.yaml", "--model", str(tiny_dir), "--data", str(data),
                 "--data-root", str(root), "--output-dir", str(out), "--max-steps", "2", "--prompts-per-step", "3",
                 "--num-generations", "4", "--max-completion-length", "12", "--save-steps", "1000",
                 "--no-save-final", "--media-cache", "none", "--max-pixels", str(56 * 56), "--log-rollouts-every",
                 "1", "--log-rollouts-max", "0", "--dynamic-sampling", "--dynamic-sampling-max-batches", "2"])
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["rl"]["method"] == method and config["rl"]["dynamic_sampling"]
    history = json.loads((out / "log_history.json").read_text())
    logged = [h for h in history if "dynamic_sampling/generation_batches" in h]
    assert len(logged) == 2
    for h in logged:
        assert h["dynamic_sampling/generation_batches"] == 2 and h["dynamic_sampling/sampled_groups"] == 3
        assert h["dynamic_sampling/unfilled_groups"] + h["dynamic_sampling/resampled_groups"] == 3 * (
            1 - h["dynamic_sampling/informative_share"])
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history if "loss" in h)
    key = "vppo/update_ratio" if method == "vppo" else "papo/perception_kl"
    assert any(key in h for h in history)
    records = load_rollouts(out)
    assert {r["step"] for r in records} == {1, 2}
    kinds = {"video" if r["videos"] else "image" if r["images"] else "text" for r in records}
    assert kinds <= {"video", "image", "text"} and records


def test_options_from_flags():
    from videoktr.train.card import card_info
    from videoktr.train.config import ConfigError, load_config

    config = load_config(overrides={"method": "vppo", "dynamic_sampling": True, "dynamic_sampling_metric": "accuracy",
                                    "vppo_dependency": "k3"})
    assert config.rl.method == "vppo" and config.rl.dynamic_sampling_metric == "accuracy"
    info = card_info(config, "")
    assert info["options"]["rl"]["vppo_dependency"] == "k3" and info["options"]["rl"]["dynamic_sampling"]
    assert "vppo_ratio" not in card_info(load_config(overrides={"method": "papo"}), "")["options"]["rl"]
    for bad in ({"vppo_ratio": 0.0}, {"dynamic_sampling_max_batches": 0}, {"papo_kl_clip": -1.0},
                {"vppo_dependency": "l2"}, {"method": "dapo"}):
        with pytest.raises(ConfigError):
            load_config(overrides=bad)


@pytest.fixture(scope="module")
def world_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("world-cache")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["vppo", "papo"])
def test_methods_with_dynamic_sampling_run_on_the_default_world(method, world_cache, tmp_path):
    """`videoktr train --method vppo|papo --dynamic-sampling` on the synthetic world (the default run, tiny)."""
    import json

    from videoktr.cli import main

    out = tmp_path / "run"
    code = main(["train", "--model-size", "tiny", "--world-train", "200", "--world-eval", "12", "--world-rl", "8",
                 "--warmstart-max-steps", "4", "--prompts-per-step", "2", "--num-generations", "2",
                 "--max-completion-length", "16", "--attribution-rows", "4", "--save-steps", "1",
                 "--output-dir", str(out), "--cache-dir", str(world_cache), "--max-steps", "1", "--method", method,
                 "--dynamic-sampling", "--dynamic-sampling-max-batches", "2", "--no-save-final"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 1 and report["method"] == method
    history = json.loads((out / "log_history.json").read_text())
    logged = [h for h in history if "dynamic_sampling/generation_batches" in h]
    assert len(logged) == 1 and 1 <= logged[0]["dynamic_sampling/generation_batches"] <= 2
    assert any(("vppo/update_ratio" if method == "vppo" else "papo/perception_kl") in h for h in history)


def test_training_summary_reports_vppo_papo_and_dynamic_sampling():
    from videoktr.train.report import training_summary

    history = [{"reward": 1.0, "vppo/update_ratio": 0.4, "papo/perception_kl": 0.1,
                "dynamic_sampling/resampled_groups": 2.0, "dynamic_sampling/unfilled_groups": 0.0,
                "dynamic_sampling/informative_share": 0.5, "dynamic_sampling/sampled_groups": 3.0,
                "dynamic_sampling/generation_batches": 2.0},
               {"reward": 2.0, "vppo/update_ratio": 0.6, "papo/perception_kl": 0.3,
                "dynamic_sampling/resampled_groups": 0.0, "dynamic_sampling/unfilled_groups": 1.0,
                "dynamic_sampling/informative_share": 0.0, "dynamic_sampling/sampled_groups": 3.0,
                "dynamic_sampling/generation_batches": 3.0}]
    vppo = training_summary(history, "vppo")
    assert vppo["mean_update_ratio"] == pytest.approx(0.5) and "mean_perception_kl" not in vppo
    assert vppo["dynamic_sampling"] == {"informative_share": 0.25, "resampled_groups": 1.0, "sampled_groups": 3.0,
                                        "generation_batches": 2.5, "unfilled_groups": 0.5}
    papo = training_summary(history, "papo")
    assert papo["mean_perception_kl"] == pytest.approx(0.2) and "mean_update_ratio" not in papo
    assert "dynamic_sampling" not in training_summary([{"reward": 1.0}], "grpo")


def test_key_token_mask_of_a_dynamically_sampled_batch_equals_the_reference_path(tiny_dir, clip_rows, tmp_path):
    """Video-KTR with dynamic sampling: the mask is computed once over the merged batch (groups from several
    generation rounds), and equals the reference path's on it."""
    from builders import loss_token_weights, reference_key_token_weights

    trainer = make_trainer(tiny_dir, clip_rows, tmp_path, method="ktr", reward=only_clip3_varies,
                           gradient_checkpointing=True,
                           trainer_kwargs={"dynamic_sampling": DynamicSamplingOptions(True, "reward", 30)})
    trainer.model.train()
    raw = next(iter(trainer.get_train_dataloader()))
    state = trainer._attr_generator.get_state()
    batch = trainer._generate_and_score_completions(raw)
    assert trainer._metrics["train"]["dynamic_sampling/resampled_groups"][-1] >= 1
    assert all(r.key.endswith("clip3.mp4") for r in batch["videos"])
    reference = reference_key_token_weights(trainer, batch, state, tiny_dir)
    weights = loss_token_weights(trainer, batch)
    assert torch.equal(weights, reference) and weights.sum() > 0
