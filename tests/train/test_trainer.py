"""The video-aware GRPO/KTR trainer on the tiny model: video in every pass, gradients, masking, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from builders import clip_rows as make_clip_rows
from builders import make_trainer, random_frames


pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def clip_rows(tmp_path_factory):
    return make_clip_rows(tmp_path_factory.mktemp("clips"), 100)


def generated_batch(trainer):
    trainer.model.train()
    batch = next(iter(trainer.get_train_dataloader()))
    return trainer._prepare_inputs(batch)


@pytest.mark.parametrize("method", ["grpo", "ktr", "entropy", "twgrpo", "tgrpo"])
def test_two_step_run(tiny_dir, clip_rows, tmp_path, method):
    trainer = make_trainer(tiny_dir, clip_rows, tmp_path, method=method)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(np.isfinite(h["loss"]) for h in logs)
    has_ktr = any(k.startswith("ktr/") for k in logs[0])
    assert has_ktr == (method in ("ktr", "entropy"))
    if method == "entropy":
        assert "ktr/ratio/entropy" in logs[0] and "ktr/ratio/visual" not in logs[0]
    if method == "ktr":
        for key in ("ktr/update_ratio", "ktr/ratio/visual", "ktr/ratio/temporal", "ktr/ratio/entropy",
                    "ktr/overlap/temporal&visual", "ktr/attribution_seconds"):
            assert key in logs[0]
        assert 0 < logs[0]["ktr/update_ratio"] < 1


def test_video_reaches_every_pass_and_logps_match_fresh_forward(tiny_dir, clip_rows, tmp_path):
    trainer = make_trainer(tiny_dir, clip_rows, tmp_path, beta=0.1)  # beta > 0: a reference pass too
    inputs = generated_batch(trainer)
    assert len(inputs["videos"]) == inputs["prompt_ids"].shape[0] and all(v is not None for v in inputs["videos"])
    model = trainer.model
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    C = inputs["completion_ids"].shape[1]
    with torch.no_grad():
        logps, _, _ = trainer._forward_logps(model, ids, mask, C, inputs["videos"], False)
    # reference: the model's own pixel path, one row at a time, no padding
    for b in range(ids.shape[0]):
        row = inputs["videos"][b]
        keep = mask[b].bool()
        rid = ids[b][keep][None]
        with torch.no_grad():
            logits = model.model(input_ids=rid, pixel_values_videos=row.pixels, video_grid_thw=row.grid,
                                 second_per_grid_ts=row.seconds_per_group,
                                 mm_token_type_ids=trainer.adapter.mm_token_type_ids(rid)).last_hidden_state
            logits = model.lm_head(logits)[0].double() / trainer.temperature
        n = int(inputs["completion_mask"][b].sum())
        P = rid.shape[1] - n
        ref = logits[P - 1 : P - 1 + n].log_softmax(-1).gather(-1, rid[0, P:, None]).squeeze(-1)
        assert torch.allclose(logps[b, :n].double(), ref, atol=1e-4)
    # the reference pass saw the video too: with identical weights it equals the policy log-probs
    assert torch.allclose(inputs["ref_per_token_logps"] * inputs["completion_mask"],
                          logps * inputs["completion_mask"], atol=1e-4)


def test_policy_loss_has_gradient_in_vision_tower(tiny_dir, clip_rows, tmp_path):
    trainer = make_trainer(tiny_dir, clip_rows, tmp_path)
    inputs = generated_batch(trainer)
    inputs["advantages"] = torch.linspace(-1, 1, inputs["advantages"].shape[0])
    trainer.model.zero_grad()
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    vision = [p.grad for p in trainer.model.model.visual.parameters() if p.grad is not None]
    assert vision and sum(g.abs().sum().item() for g in vision) > 0


def test_vision_tower_runs_once_per_unique_clip(tiny_dir, clip_rows, tmp_path):
    trainer = make_trainer(tiny_dir, clip_rows, tmp_path)
    inputs = generated_batch(trainer)
    calls = []
    hook = trainer.model.model.visual.register_forward_hook(
        lambda m, a, k, o: calls.append(k["grid_thw"].shape[0]), with_kwargs=True)
    try:
        trainer._compute_loss(trainer.model, inputs)
        trainer._rollout_weights(inputs)  # attribution's pass: one more run for all its perturbations
    finally:
        hook.remove()
    unique = len({v.key for v in inputs["videos"]})
    assert calls == [unique, unique] and unique < len(inputs["videos"])


def test_all_tokens_masked_gives_zero_policy_gradient(tiny_dir, clip_rows, tmp_path):
    trainer = make_trainer(tiny_dir, clip_rows, tmp_path)
    inputs = generated_batch(trainer)
    inputs["advantages"] = torch.linspace(-1, 1, inputs["advantages"].shape[0])
    inputs["token_weights"] = torch.zeros_like(inputs["completion_mask"], dtype=torch.float32)
    trainer.model.zero_grad()
    loss = trainer._compute_loss(trainer.model, inputs)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
    assert all((g == 0).all() for g in grads)


def test_key_token_mask_is_a_field_of_the_rollout(tiny_dir, clip_rows, tmp_path, monkeypatch):
    # the rollout path (where the mask is not chosen in the loss: tests/train/test_select_in_loss.py)
    trainer = make_trainer(tiny_dir, clip_rows, tmp_path, trainer_kwargs={"select_in_loss": False})
    inputs = generated_batch(trainer)
    first = inputs["token_weights"].clone()
    active = inputs["advantages"] != 0
    n = inputs["completion_mask"].sum(-1)
    assert ((first.sum(-1) >= 1) | (n == 0) | ~active).all()  # every attributed response keeps a token
    # the loss reads the rollout's mask (later iterations over the same rollouts reuse it), never recomputes it
    monkeypatch.setattr(trainer, "_rollout_weights", lambda batch: pytest.fail("mask recomputed in the loss"))
    trainer._compute_loss(trainer.model, inputs)
    assert torch.equal(first, inputs["token_weights"])


def test_resume_continues_from_last_checkpoint(tiny_dir, clip_rows, tmp_path):
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt("simulated kill")

    first = make_trainer(tiny_dir, clip_rows, tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    first.add_callback(Crash())
    with pytest.raises(KeyboardInterrupt):
        first.train()
    out = tmp_path / "out"
    assert (out / "checkpoint-2").is_dir() and not (out / "checkpoint-4").exists()
    second = make_trainer(tiny_dir, clip_rows, tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    steps_run = []

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps_run.append(state.global_step)

    class WeightsAtStart(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            steps_run.append({k: v.detach().clone() for k, v in model.state_dict().items()})

    second.add_callback(WeightsAtStart())
    second.add_callback(Record())
    second.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    start, steps_run = steps_run[0], steps_run[1:]
    assert steps_run == [3, 4]  # steps 1-2 are not repeated
    assert second.state.global_step == 4
    # the resumed run starts from step 2's weights, every one of them (transformers alone loads none of them:
    # the checkpoint stores Qwen-VL weights under other names), read here by transformers' own loader
    from transformers import AutoModelForImageTextToText

    saved = AutoModelForImageTextToText.from_pretrained(out / "checkpoint-2").state_dict()
    initial = AutoModelForImageTextToText.from_pretrained(tiny_dir).state_dict()
    assert saved.keys() == start.keys()
    assert all(torch.equal(start[k], saved[k]) for k in saved)
    assert not all(torch.equal(initial[k], saved[k]) for k in saved)  # two steps did change the weights


@pytest.mark.parametrize("variant", ["source", "video_ktr_code", "kl_to_mean"])
def test_twgrpo_weights_follow_their_definition(tiny_dir, clip_rows, tmp_path, variant):
    """The trainer's TW-GRPO weights equal the core definition applied to an independent forward (the model's
    own pixel path, eval mode) with the rollout's prompt groups."""
    from videoktr.core import group_position_divergence_source, group_position_kl, tw_grpo_source_weights
    from videoktr.core import tw_grpo_weights

    trainer = make_trainer(tiny_dir, clip_rows, tmp_path, method="twgrpo")
    trainer.twgrpo_variant = variant
    trainer.model.train()
    batch = trainer._generate_and_score_completions(next(iter(trainer.get_train_dataloader())))
    w, mask, groups = batch["token_weights"], batch["completion_mask"].bool(), batch["prompt_group"]
    model = trainer.model.eval()
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    with torch.no_grad():
        hidden = model.model(
            input_ids=ids, attention_mask=torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1),
            pixel_values_videos=torch.cat([r.pixels for r in batch["videos"]]),
            video_grid_thw=torch.cat([r.grid for r in batch["videos"]]),
            second_per_grid_ts=torch.cat([r.seconds_per_group for r in batch["videos"]]),
            mm_token_type_ids=trainer.adapter.mm_token_type_ids(ids)).last_hidden_state
        P, C = batch["prompt_ids"].shape[1], batch["completion_ids"].shape[1]
        h = hidden[:, P - 1 : P - 1 + C]
        if variant == "kl_to_mean":
            expected = tw_grpo_weights(group_position_kl(h, model.lm_head.weight, mask, groups), mask)
        else:
            d = group_position_divergence_source(h, model.lm_head.weight, mask, groups,
                                                 log_softmax=variant == "source")
            expected = tw_grpo_source_weights(d, mask, groups)
    assert torch.allclose(w, expected, atol=1e-4)
    assert (w[~mask] == 0).all() and (w[mask] >= 1.0).all() and (w[mask] <= 1.7 + 1e-6).all()
    if variant != "kl_to_mean":  # one weight per (group, position), shared by the group's valid rows
        for g in groups.unique():
            rows = (groups == g).nonzero().squeeze(-1)
            both = mask[rows[0]] & mask[rows[1]]
            assert torch.equal(w[rows[0]][both], w[rows[1]][both])


def test_tgrpo_bonus_follows_the_rule(tiny_dir, clip_rows, tmp_path, monkeypatch):
    """Ordered accuracy 1.0 vs shuffled 0.0: correct ordered responses get +alpha; reversed: none do."""
    from videoktr.train.trainer import TemporalGRPOOptions

    trainer = make_trainer(tiny_dir, clip_rows, tmp_path, method="tgrpo")
    trainer.tgrpo_options = TemporalGRPOOptions(alpha=0.3, mu=0.8, reward_index=0)
    trainer.model.train()
    batch = next(iter(trainer.get_train_dataloader()))
    prompts = [x["prompt"] for x in batch]
    trainer._tokenize_prompts(prompts)  # records the rows' videos, as generation does
    accuracy = torch.tensor([1.0, 1.0, 0.0, 1.0] * 2)
    calls = []

    def shuffled_reward(completions, **kw):
        calls.append(len(completions))
        return [0.0] * len(completions)

    trainer.reward_funcs = [shuffled_reward]
    bonus = trainer._temporal_bonus(batch, prompts, accuracy)
    assert calls == [4]  # 2 groups x G/2 shuffled responses
    assert torch.allclose(bonus, 0.3 * (accuracy > 0.1).float())
    trainer.reward_funcs = [lambda completions, **kw: [1.0] * len(completions)]
    low = torch.tensor([0.0, 0.0, 0.0, 1.0] * 2)  # p = 0.25 < 0.8 * 1.0
    assert (trainer._temporal_bonus(batch, prompts, low) == 0).all()


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_ktr_trains_other_families(family, clip_rows, tmp_path_factory):
    from videoktr.models.factory import create_model_dir

    model_dir = create_model_dir(tmp_path_factory.mktemp(family), size="tiny", family=family)
    tmp = tmp_path_factory.mktemp(f"run-{family}")
    trainer = make_trainer(model_dir, clip_rows, tmp, method="ktr", max_steps=1)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 1 and np.isfinite(logs[0]["loss"]) and 0 < logs[0]["ktr/update_ratio"] <= 1


@pytest.mark.parametrize("method", ["ktr", "twgrpo"])
def test_image_and_video_rows_in_one_batch(tiny_dir, clip_rows, tmp_path, method):
    from PIL import Image

    image = tmp_path / "img.png"
    Image.fromarray(random_frames(5, n=1)[0]).save(image)
    rows = [clip_rows[0], {"prompt": [{"role": "user", "content": [
        {"type": "image", "image": str(image)}, {"type": "text", "text": "What colour is the square?"}]}],
        "solution": "red"}]
    trainer = make_trainer(tiny_dir, rows, tmp_path, method=method)
    inputs = generated_batch(trainer)
    assert sorted({v.kind for v in inputs["videos"]}) == ["image", "video"]
    inputs["advantages"] = torch.linspace(-1, 1, inputs["advantages"].shape[0])
    trainer.model.zero_grad()
    loss = trainer._compute_loss(trainer.model, inputs)
    assert torch.isfinite(loss)
    loss.backward()
    assert sum(p.grad.abs().sum().item() for p in trainer.model.model.visual.parameters() if p.grad is not None) > 0
    if method == "ktr":  # image rows: a visual score (image features zeroed), no temporal score
        image_rows = [i for i, v in enumerate(inputs["videos"]) if v.kind == "image"]
        weights = trainer._rollout_weights(inputs)
        assert all(weights[i].sum() >= 1 for i in image_rows)
        trainer.attribution_options.signals = ("visual",)  # paper B.2's visual-tokens-only variant
        weights = trainer._rollout_weights(inputs)
        for i in range(len(inputs["videos"])):  # every row, image or video, gets its top-r visual tokens
            n = int(inputs["completion_mask"][i].sum())
            assert weights[i].sum() == max(1, -(-n * 2 // 10))


def test_zero_advantage_responses_are_not_attributed(tiny_dir, clip_rows, tmp_path):
    trainer = make_trainer(tiny_dir, clip_rows, tmp_path)
    inputs = generated_batch(trainer)
    adv = torch.ones(inputs["advantages"].shape[0])
    adv[::2] = 0.0  # half the responses carry no policy gradient
    inputs["advantages"] = adv
    calls = []
    hook = trainer.model.model.language_model.register_forward_hook(
        lambda m, a, k, o: calls.append(k["inputs_embeds"].shape[0]), with_kwargs=True)
    try:
        w = trainer._rollout_weights(inputs)
    finally:
        hook.remove()
    assert (w[::2] == 0).all() and (w[1::2].sum(-1) >= 1).all()
    n = adv.numel()
    # one prompt pass per (prompt, input) = 2 prompts x (unperturbed, visual, temporal), then the completions of
    # the active half under all three
    assert calls == [6, 3 * (n // 2)]


def test_vllm_importance_sampling_ratio_reaches_the_loss(tiny_dir, clip_rows, tmp_path):
    """Finding: the loss override dropped TRL's vLLM importance-sampling correction. A ratio in the rollout now
    scales the policy term exactly as core.masked_clipped_loss(importance_weights=...) defines."""
    trainer = make_trainer(tiny_dir, clip_rows, tmp_path)
    inputs = generated_batch(trainer)
    inputs["advantages"] = torch.linspace(-1, 1, inputs["advantages"].shape[0])
    plain = trainer._compute_loss(trainer.model, inputs).item()
    inputs["importance_sampling_ratio"] = torch.full((inputs["advantages"].shape[0], 1), 0.5)
    assert trainer._compute_loss(trainer.model, inputs).item() == pytest.approx(0.5 * plain, rel=1e-5)


def test_unsupported_trl_options_are_refused_at_start(tiny_dir, clip_rows, tmp_path):
    with pytest.raises(ValueError, match="top_entropy_quantile=0.2"):
        make_trainer(tiny_dir, clip_rows, tmp_path, top_entropy_quantile=0.2)


def test_text_rows_among_media_rows_are_refused_under_sharding():
    from datasets import Dataset

    from videoktr.train.trainer import refuse_text_rows_when_sharded

    video = {"prompt": [{"role": "user", "content": [{"type": "video", "video": "a.mp4"},
                                                     {"type": "text", "text": "q"}]}]}
    text = {"prompt": [{"role": "user", "content": [{"type": "text", "text": "q"}]}]}
    refuse_text_rows_when_sharded(Dataset.from_list([video, video]), "FSDP")  # all media: fine
    refuse_text_rows_when_sharded(Dataset.from_list([text, text]), "FSDP")  # all text: the tower never runs
    with pytest.raises(ValueError, match="training row 1 has no video or image.*FSDP.*DDP"):
        refuse_text_rows_when_sharded(Dataset.from_list([video, text]), "FSDP")
