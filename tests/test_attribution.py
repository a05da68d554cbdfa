"""Attribution on the tiny model: one batched no-grad pass, checked against unbatched plain forwards."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from builders import encode_prompts, make_completions, random_frames

import videoktr.attribution as attribution_module
from videoktr.attribution import AttributionOptions, SelectionOptions, attribute, select_key_tokens

FRAMES_A = random_frames(11)
FRAMES_B = random_frames(12)
ROWS = [
    ("Which colour appeared first?", FRAMES_A),
    ("Which colour appeared first?", FRAMES_A),  # same clip: encoded once
    ("How many shapes appeared?", FRAMES_B),
    ("What is two plus two?", None),  # no video: no visual/temporal score
]
RESPONSES = [
    "<think>red then blue</think><answer>red</answer>",
    "<think>blue first</think><answer>blue</answer>",
    "<think>three</think><answer>3</answer>",
    "<answer>4</answer>",
]


@pytest.fixture(scope="module")
def batch(tiny):
    _, processor = tiny
    prompts = encode_prompts(processor, ROWS)
    completion_ids, completion_mask = make_completions(processor, RESPONSES)
    return dict(
        prompt_ids=prompts["input_ids"], prompt_mask=prompts["attention_mask"],
        completion_ids=completion_ids, completion_mask=completion_mask,
        pixel_values_videos=prompts["pixel_values_videos"], video_grid_thw=prompts["video_grid_thw"],
        second_per_grid_ts=prompts["second_per_grid_ts"],
    )


def _reference_logp(model, processor, row, completion, frames_override=None, zero_video=False):
    """Plain single-row forward (no padding, standard pixel path) -> float64 log p of the completion tokens."""
    question, frames = ROWS[row]
    if frames_override is not None:
        frames = frames_override
    single = encode_prompts(processor, [(question, frames)])
    comp = completion[completion != processor.tokenizer.pad_token_id]
    ids = torch.cat([single["input_ids"][0], comp])[None]
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids),
                  mm_token_type_ids=torch.cat([single["mm_token_type_ids"][0], torch.zeros_like(comp)])[None].int())
    if frames is not None:
        kwargs.update(video_grid_thw=single["video_grid_thw"], second_per_grid_ts=single["second_per_grid_ts"])
        if zero_video:
            feats = model.model.get_video_features(single["pixel_values_videos"], single["video_grid_thw"]).pooler_output
            from transformers.modeling_outputs import BaseModelOutputWithPooling

            kwargs["mm_encoder_outputs"] = {"video": BaseModelOutputWithPooling(
                pooler_output=tuple(torch.zeros_like(f) for f in feats))}
        else:
            kwargs["pixel_values_videos"] = single["pixel_values_videos"]
    with torch.no_grad():
        logits = model(**kwargs).logits[0].double()
    P = single["input_ids"].shape[1]
    logp = logits[P - 1 : P - 1 + len(comp)].log_softmax(-1)
    return logp.gather(-1, comp[:, None]).squeeze(-1), logp


def test_unperturbed_logp_and_entropy_match_plain_forward(tiny, batch):
    model, processor = tiny
    result = attribute(model, **batch)
    for b in range(len(ROWS)):
        n = int(batch["completion_mask"][b].sum())
        ref, full = _reference_logp(model, processor, b, batch["completion_ids"][b])
        assert torch.allclose(result.logp[b, :n].double(), ref, atol=1e-4)
        ent = -(full.exp() * full).sum(-1)
        assert torch.allclose(result.entropy[b, :n].double(), ent, atol=1e-4)


def test_visual_score_matches_zeroed_features_reference(tiny, batch):
    model, processor = tiny
    result = attribute(model, **batch, options=AttributionOptions(signals=("visual",)))
    for b in range(3):
        n = int(batch["completion_mask"][b].sum())
        full, _ = _reference_logp(model, processor, b, batch["completion_ids"][b])
        zero, _ = _reference_logp(model, processor, b, batch["completion_ids"][b], zero_video=True)
        assert torch.allclose(result.scores["visual"][b, :n].double(), (full - zero).abs(), atol=1e-4)
    assert result.scores["visual"][b].abs().sum() > 0


def test_temporal_score_equals_reencoding_shuffled_frames(tiny, batch):
    model, processor = tiny
    result = attribute(model, **batch, options=AttributionOptions(signals=("temporal",)),
                       generator=torch.Generator().manual_seed(3))
    assert len(result.permutations) == 3
    assert torch.equal(result.permutations[0], result.permutations[1])  # copies of one clip share a draw
    for b in range(3):
        perm = result.permutations[b].tolist()
        assert perm != list(range(len(perm)))
        frames = ROWS[b][1]
        order = np.concatenate([[2 * g, 2 * g + 1] for g in perm])
        n = int(batch["completion_mask"][b].sum())
        full, _ = _reference_logp(model, processor, b, batch["completion_ids"][b])
        shuf, _ = _reference_logp(model, processor, b, batch["completion_ids"][b], frames_override=frames[order])
        assert torch.allclose(result.scores["temporal"][b, :n].double(), (full - shuf).abs(), atol=1e-4)


@pytest.mark.parametrize("distance", ["logprob", "jsd"])
def test_temporal_samples_average_independent_draws(tiny, batch, distance):
    """temporal_samples=K: the temporal score is the mean of K single-draw scores, the draws taken in sequence
    from the same generator (so K single-draw calls on one generator are the reference)."""
    model, _ = tiny
    K = 3
    options = AttributionOptions(signals=("visual", "temporal"), temporal_samples=K, distance=distance)
    result = attribute(model, **batch, options=options, generator=torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    single = [attribute(model, **batch, options=AttributionOptions(signals=("temporal",), distance=distance),
                        generator=gen) for _ in range(K)]
    expect = torch.stack([r.scores["temporal"] for r in single]).mean(0)
    assert torch.allclose(result.scores["temporal"], expect, atol=1e-5)
    assert [[p.tolist() for p in d] for d in result.permutation_draws] == [
        [p.tolist() for p in r.permutations] for r in single]
    assert result.permutations == result.permutation_draws[0]
    # the visual score is untouched by the extra temporal draws
    alone = attribute(model, **batch, options=AttributionOptions(signals=("visual",), distance=distance),
                      generator=torch.Generator().manual_seed(7))
    assert torch.allclose(result.scores["visual"], alone.scores["visual"], atol=1e-5)
    if distance == "logprob":
        mean_pert = torch.stack([r.perturbed_logp["temporal"] for r in single]).mean(0)
        assert torch.allclose(result.perturbed_logp["temporal"], mean_pert, atol=1e-5)
    else:
        assert not result.perturbed_logp  # a distance score: the log-probs cost an extra LM-head pass, asked for


def test_perturbed_logp_kept_on_request_with_a_distribution_distance(tiny, batch):
    """keep_perturbed_logp with a full-distribution distance gives the perturbed log-probs the "logprob" score
    computes, for the same draws (what `videoktr explain` and the rollout log show next to a distance score)."""
    model, _ = tiny
    got = {d: attribute(model, **batch, options=AttributionOptions(distance=d, temporal_samples=2),
                        generator=torch.Generator().manual_seed(3), keep_perturbed_logp=True)
           for d in ("logprob", "kl")}
    assert set(got["kl"].perturbed_logp) == {"visual", "temporal"}
    for kind in ("visual", "temporal"):
        assert torch.allclose(got["kl"].perturbed_logp[kind], got["logprob"].perturbed_logp[kind], atol=1e-6)
    assert not torch.allclose(got["kl"].scores["visual"], got["logprob"].scores["visual"])


def test_identity_permutation_gives_zero_temporal_scores(tiny, batch, monkeypatch):
    model, _ = tiny
    monkeypatch.setattr(attribution_module, "temporal_permutation", lambda n, *a, **k: torch.arange(n))
    result = attribute(model, **batch, options=AttributionOptions(signals=("temporal",)))
    assert result.scores["temporal"].abs().max().item() < 1e-5


def test_row_without_video_is_excluded_not_zero_scored(tiny, batch):
    model, _ = tiny
    result = attribute(model, **batch)
    mask = batch["completion_mask"].bool()
    for s in ("visual", "temporal"):
        assert not result.valid[s][3].any()
        assert torch.equal(result.valid[s][:3], mask[:3])
    assert torch.equal(result.valid["entropy"], mask)
    weights, masks, stats = select_key_tokens(result)
    assert not masks["visual"][3].any() and masks["entropy"][3].any()  # row 3 still gets entropy tokens


@pytest.mark.parametrize("scheme", ["transformers", "qwen"])
def test_shared_prefix_equals_full_forward_for_a_long_clip(tiny_dir, tiny, scheme):
    """A clip whose temporal positions outgrow its grid (many 2-frame groups, small frames): transformers 5.23's
    stored rope_deltas then place the text after the video elsewhere than a full forward's position ids do, and the
    shared-prefix path once followed the deltas (found at 32 frames of 448x224: log-probs off by 7e-3). The
    completion must sit where a full forward puts it, under transformers' scheme (where the bug showed) and Qwen's
    (models.positions, the default)."""
    from videoktr.models.factory import load_model

    processor = tiny[1]
    model = load_model(tiny_dir, dtype="float32", rope_positions=scheme).eval()
    frames = np.random.default_rng(5).integers(0, 255, size=(24, 56, 56, 3), dtype=np.uint8)
    prompts = encode_prompts(processor, [("Which colour appeared first?", frames)] * 2)
    cids, cmask = make_completions(processor, RESPONSES[:2])
    batch = dict(prompt_ids=prompts["input_ids"], prompt_mask=prompts["attention_mask"], completion_ids=cids,
                 completion_mask=cmask, pixel_values_videos=prompts["pixel_values_videos"],
                 video_grid_thw=prompts["video_grid_thw"], second_per_grid_ts=prompts["second_per_grid_ts"])
    # the case that triggers it: the video's highest position is beyond where a full forward continues the text
    from videoktr.models.adapters import adapter_for

    ids = prompts["input_ids"][:1]
    pos = model.model.compute_3d_position_ids(
        input_ids=ids, inputs_embeds=None, attention_mask=prompts["attention_mask"][:1], past_key_values=None,
        image_grid_thw=None, video_grid_thw=prompts["video_grid_thw"][:1],
        second_per_grid_ts=prompts["second_per_grid_ts"][:1], mm_token_type_ids=adapter_for(model).mm_token_type_ids(ids))
    video = ids[0] == model.config.video_token_id
    after = int(video.nonzero().max()) + 1
    if scheme == "transformers":
        assert int(pos[0, 0, after]) <= int(pos[:, 0, video].max())
    else:
        assert int(pos[0, 0, after]) == int(pos[:, 0, video].max()) + 1
    model.model.rope_deltas = None
    results = [attribute(model, **batch, options=AttributionOptions(share_prefix=share),
                         generator=torch.Generator().manual_seed(1)) for share in (True, False)]
    valid = cmask.bool()
    assert torch.allclose(results[0].logp[valid], results[1].logp[valid], atol=1e-5)
    for signal in ("visual", "temporal", "entropy"):
        assert torch.allclose(results[0].scores[signal][valid], results[1].scores[signal][valid], atol=1e-4), signal


def test_batch_without_any_video(tiny):
    model, processor = tiny
    prompts = encode_prompts(processor, [ROWS[3]])
    cids, cmask = make_completions(processor, RESPONSES[3:])
    result = attribute(model, prompts["input_ids"], prompts["attention_mask"], cids, cmask)
    assert not result.valid["visual"].any() and not result.valid["temporal"].any()
    weights, _, _ = select_key_tokens(result)
    assert weights.sum() == math.ceil(0.2 * int(cmask.sum()))


def test_vision_tower_runs_once_per_unique_video_and_one_decoder_pass(tiny, batch):
    model, _ = tiny
    calls = {"visual": [], "decoder": 0}
    h1 = model.model.visual.register_forward_hook(lambda m, a, k, o: calls["visual"].append(k["grid_thw"].shape[0]),
                                                  with_kwargs=True)
    h2 = model.model.language_model.register_forward_hook(lambda *a: calls.__setitem__("decoder", calls["decoder"] + 1))
    try:
        attribute(model, **batch, options=AttributionOptions(share_prefix=False))
        assert calls["visual"] == [2]  # one call, two unique clips for three video rows
        assert calls["decoder"] == 1  # unperturbed + visual + temporal rows in one forward
        calls["visual"].clear()
        calls["decoder"] = 0
        attribute(model, **batch)  # shared prompt prefixes: one prefix pass, one completion pass
        assert calls["visual"] == [2] and calls["decoder"] == 2
    finally:
        h1.remove()
        h2.remove()


@pytest.mark.parametrize("signals", [("visual", "temporal", "entropy"), ("temporal",)])
def test_shared_prefix_equals_full_forward(tiny, batch, signals):
    model, _ = tiny
    shared = attribute(model, **batch, options=AttributionOptions(signals=signals),
                       generator=torch.Generator().manual_seed(4))
    full = attribute(model, **batch, options=AttributionOptions(signals=signals, share_prefix=False),
                     generator=torch.Generator().manual_seed(4))
    valid = batch["completion_mask"].bool()  # padding positions are never selected, their values may differ
    for s in signals:
        assert torch.allclose(shared.scores[s][valid], full.scores[s][valid], atol=1e-5)


def test_precomputed_logp_skips_unperturbed_rows(tiny, batch):
    model, _ = tiny
    base = attribute(model, **batch)
    again = attribute(model, **batch, logp=base.logp, entropy=base.entropy,
                      generator=torch.Generator().manual_seed(0))
    ref = attribute(model, **batch, generator=torch.Generator().manual_seed(0))
    for s in ("visual", "temporal", "entropy"):
        assert torch.allclose(again.scores[s], ref.scores[s], atol=1e-5)


@pytest.mark.parametrize("signed", [False, True])
def test_perturbed_only_then_scores_from_logps_equals_attribute(tiny, batch, signed):
    """ktr.select_in_loss's two halves: the perturbed inputs alone at the rollout, the scores later against an
    unperturbed side computed elsewhere; bit for bit what one `attribute` call computes, at every valid position
    (row 3 has no video: no visual or temporal score)."""
    from videoktr.attribution import scores_from_logps

    model, _ = tiny
    options = AttributionOptions(signed=signed)
    full = attribute(model, **batch, options=options, generator=torch.Generator().manual_seed(5))
    part = attribute(model, **batch, options=options, generator=torch.Generator().manual_seed(5),
                     perturbed_only=True, keep_perturbed_logp=True)
    assert part.scores == {} and part.logp is None and set(part.perturbed_logp) == {"visual", "temporal"}
    for kind in ("visual", "temporal"):
        assert torch.equal(part.valid[kind], full.valid[kind])
    rebuilt = scores_from_logps(full.logp, full.entropy, part.perturbed_logp, part.valid, batch["completion_mask"],
                                options)
    for s in ("visual", "temporal", "entropy"):
        valid = full.valid[s]
        assert torch.equal(rebuilt.valid[s], valid), s
        assert torch.equal(rebuilt.scores[s][valid], full.scores[s][valid]), s
    assert torch.equal(select_key_tokens(rebuilt)[0], select_key_tokens(full)[0])
    with pytest.raises(ValueError, match="perturbed_only"):
        attribute(model, **batch, options=AttributionOptions(distance="kl"), perturbed_only=True)
    with pytest.raises(ValueError, match="perturbed_only"):
        attribute(model, **batch, options=AttributionOptions(temporal_samples=2), perturbed_only=True)


def test_signed_and_distance_variants(tiny, batch):
    model, processor = tiny
    signed = attribute(model, **batch, options=AttributionOptions(signals=("visual",), signed=True))
    plain = attribute(model, **batch, options=AttributionOptions(signals=("visual",)))
    assert torch.allclose(signed.scores["visual"].abs(), plain.scores["visual"], atol=1e-6)
    assert (signed.scores["visual"] < 0).any() or (signed.scores["visual"] > 0).any()
    kl = attribute(model, **batch, options=AttributionOptions(signals=("visual",), distance="kl"))
    b, n = 2, int(batch["completion_mask"][2].sum())
    _, full = _reference_logp(model, processor, b, batch["completion_ids"][b])
    _, zero = _reference_logp(model, processor, b, batch["completion_ids"][b], zero_video=True)
    ref = (full.exp() * (full - zero)).sum(-1)
    assert torch.allclose(kl.scores["visual"][b, :n].double(), ref, atol=1e-4)


def test_replace_strategy_uses_another_clip_or_donor(tiny, batch):
    model, processor = tiny
    opts = AttributionOptions(signals=("visual",), visual_strategy="replace")
    result = attribute(model, **batch, options=opts, generator=torch.Generator().manual_seed(0))
    assert (result.scores["visual"][:3] > 0).any()
    one = encode_prompts(processor, [ROWS[0]])
    cids, cmask = make_completions(processor, RESPONSES[:1])
    args = (model, one["input_ids"], one["attention_mask"], cids, cmask, one["pixel_values_videos"],
            one["video_grid_thw"], one["second_per_grid_ts"])
    with pytest.raises(ValueError, match="replace"):
        attribute(*args, options=opts)
    donor = torch.randn(16, model.config.text_config.hidden_size)
    assert attribute(*args, options=opts, donors=[donor]).scores["visual"].sum() > 0


def test_selection_counts_union_and_stats(tiny, batch):
    model, _ = tiny
    result = attribute(model, **batch)
    weights, masks, stats = select_key_tokens(result, SelectionOptions(ratio=0.2))
    n = batch["completion_mask"].sum(-1).tolist()
    for b in range(4):
        k = math.ceil(0.2 * n[b] - 1e-9)
        assert int(masks["entropy"][b].sum()) == k
        if b < 3:
            assert int(masks["visual"][b].sum()) == k and int(masks["temporal"][b].sum()) == k
    union = masks["visual"] | masks["temporal"] | masks["entropy"]
    assert torch.equal(weights.bool(), union)
    assert stats["update_ratio"] == pytest.approx(union.sum().item() / sum(n))
    soft, _, _ = select_key_tokens(result, SelectionOptions(weighting="sigmoid"))
    assert soft.min() >= 0 and soft.max() <= 1 and (soft[batch["completion_mask"] == 0] == 0).all()
    groups = torch.tensor([0, 0, 1, 2])
    gw, gm, _ = select_key_tokens(result, SelectionOptions(scope="group"), group_ids=groups)
    assert int(gm["entropy"][:2].sum()) == math.ceil(0.2 * (n[0] + n[1]) - 1e-9)


@pytest.mark.parametrize("kwargs, match", [
    (dict(signals=("visual", "audio")), "signals"),
    (dict(signals=()), "signals"),
    (dict(visual_strategy="blur"), "visual_strategy"),
    (dict(temporal_strategy="sideways"), "temporal_strategy"),
    (dict(distance="emd"), "distance"),
    (dict(distance="kl", signed=True), "signed"),
    (dict(temporal_samples=0), "temporal_samples"),
])
def test_bad_options_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AttributionOptions(**kwargs).validate()


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5])
def test_ratio_outside_range(ratio):
    with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\]"):
        SelectionOptions(ratio=ratio).validate()


def test_shared_prefix_equals_full_forward_for_qwen2_vl(tmp_path):
    from videoktr.attribution import PREFIX_SHARING_FAMILIES
    from videoktr.models.factory import create_model_dir, load_model, load_processor

    assert "qwen2_vl" in PREFIX_SHARING_FAMILIES
    path = create_model_dir(tmp_path / "q2", size="tiny", family="qwen2_vl")
    model, processor = load_model(path, dtype="float32").eval(), load_processor(path)
    prompts = encode_prompts(processor, ROWS[:3] + ROWS[:1])
    cids, cmask = make_completions(processor, RESPONSES[:4])
    args = dict(prompt_ids=prompts["input_ids"], prompt_mask=prompts["attention_mask"], completion_ids=cids,
                completion_mask=cmask, pixel_values_videos=prompts["pixel_values_videos"],
                video_grid_thw=prompts["video_grid_thw"])
    shared = attribute(model, **args, generator=torch.Generator().manual_seed(1))
    full = attribute(model, **args, options=AttributionOptions(share_prefix=False), generator=torch.Generator().manual_seed(1))
    valid = cmask.bool()
    for s in ("visual", "temporal"):
        assert torch.allclose(shared.scores[s][valid], full.scores[s][valid], atol=1e-5)


def _encode_image_rows(processor, rows):
    """rows: list of (question, image array or None) -> processor outputs (left-padded chat prompts)."""
    from PIL import Image

    texts, images = [], []
    for question, image in rows:
        content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": question}]
        texts.append(processor.apply_chat_template([{"role": "user", "content": content}],
                                                   add_generation_prompt=True, tokenize=False))
        if image is not None:
            images.append(Image.fromarray(image))
    return processor(text=texts, images=images or None, return_tensors="pt", padding=True, padding_side="left")


def test_image_rows_get_a_visual_score_from_zeroed_image_features(tiny):
    """An image row's visual score is |log p(full) - log p(image features zeroed)|, checked row by row against
    plain single-row forwards; image rows have no temporal score; identical images share one prefix."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    model, processor = tiny
    img_a, img_b = random_frames(21, n=1)[0], random_frames(22, n=1)[0]
    rows = [("What colour is it?", img_a), ("What colour is it?", img_a), ("Is it bright?", img_b),
            ("What is two plus two?", None)]
    enc = _encode_image_rows(processor, rows)
    cids, cmask = make_completions(processor, RESPONSES)
    with torch.no_grad():
        feats = list(model.model.get_image_features(enc["pixel_values"], enc["image_grid_thw"]).pooler_output)
    result = attribute(model, enc["input_ids"], enc["attention_mask"], cids, cmask, image_features=feats,
                       image_grid_thw=enc["image_grid_thw"], image_keys=["a", "a", "b"])
    assert not result.valid["temporal"].any()
    assert torch.equal(result.valid["visual"][:3], cmask.bool()[:3]) and not result.valid["visual"][3].any()
    for b, (question, image) in enumerate(rows[:3]):
        single = _encode_image_rows(processor, [(question, image)])
        comp = cids[b][cmask[b].bool()]
        ids = torch.cat([single["input_ids"][0], comp])[None]
        base = dict(input_ids=ids, attention_mask=torch.ones_like(ids), image_grid_thw=single["image_grid_thw"],
                    mm_token_type_ids=torch.cat([single["mm_token_type_ids"][0], torch.zeros_like(comp)])[None].int())
        with torch.no_grad():
            own = model.model.get_image_features(single["pixel_values"], single["image_grid_thw"]).pooler_output
            zero = {"image": BaseModelOutputWithPooling(pooler_output=tuple(torch.zeros_like(f) for f in own))}
            full = model(**base, pixel_values=single["pixel_values"]).logits[0].double()
            pert = model(**base, mm_encoder_outputs=zero).logits[0].double()
        P, n = single["input_ids"].shape[1], len(comp)
        lp = [x[P - 1 : P - 1 + n].log_softmax(-1).gather(-1, comp[:, None]).squeeze(-1) for x in (full, pert)]
        torch.testing.assert_close(result.logp[b, :n].double(), lp[0], atol=1e-4, rtol=0)
        torch.testing.assert_close(result.scores["visual"][b, :n].double(), (lp[0] - lp[1]).abs(), atol=1e-4, rtol=0)
    assert result.scores["visual"][:3].sum() > 0
    with pytest.raises(ValueError, match="image_features"):
        attribute(model, enc["input_ids"], enc["attention_mask"], cids, cmask)


def test_train_mode_with_gradient_checkpointing_scores_like_eval_mode(tiny_dir, batch):
    """Finding: in train mode transformers' checkpointed decoder layers drop the KV cache, so the shared prompt
    prefix vanished from the completion pass and the scores were meaningless. attribute() now scores in eval
    mode whatever mode it is handed the model in, and gives the model back in that mode."""
    from videoktr.models.factory import load_model

    model = load_model(tiny_dir, dtype="float32")
    model.gradient_checkpointing_enable()
    model.train()
    shared = attribute(model, **batch, generator=torch.Generator().manual_seed(4))
    assert model.training and model.is_gradient_checkpointing
    model.gradient_checkpointing_disable()
    model.eval()
    reference = attribute(model, **batch, options=AttributionOptions(share_prefix=False),
                          generator=torch.Generator().manual_seed(4))
    valid = batch["completion_mask"].bool()
    for s in ("visual", "temporal", "entropy"):
        assert torch.allclose(shared.scores[s][valid], reference.scores[s][valid], atol=1e-5), s
    assert not torch.allclose(shared.scores["visual"][valid], shared.scores["temporal"][valid])


def test_replace_never_swaps_a_clip_for_itself(tiny, batch):
    """Finding: the trainer's donor bank held the batch's own clip, so "replace" often put a clip in its own
    place (visual score identically 0). Donors are keyed by clip and a clip's own key is never used for it."""
    from videoktr.attribution import perturbed_features

    feats = [torch.randn(4, 3)]
    opts = AttributionOptions(visual_strategy="replace")
    with pytest.raises(ValueError, match="another clip"):
        perturbed_features(feats, [2], "visual", opts, torch.Generator().manual_seed(0),
                           donors=[("a.mp4", feats[0].clone())], keys=["a.mp4"])
    other = torch.randn(4, 3)
    for seed in range(20):  # whatever the draw, the only admissible donor is the other clip
        out, _ = perturbed_features(feats, [2], "visual", opts, torch.Generator().manual_seed(seed),
                                    donors=[("a.mp4", feats[0].clone()), ("b.mp4", other)], keys=["a.mp4"])
        assert torch.equal(out[0], other)
