"""The synthetic video world: clips, questions, rows, token labels by construction, tokenizer corpus, rewards."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest
import torch

from videoktr import world as S
from videoktr.data.video import read_video

# A world small enough to enumerate: 3 colours, 2 shapes, 3 temporal groups, 2-3 events.
SMALL = S.WorldConfig(palette=S.PALETTE[:3], shapes=("circle", "square"), frames=6, max_events=3)


@pytest.fixture(scope="module")
def tokenizer():
    from videoktr.models.factory import DEFAULT_CORPUS, train_tokenizer

    return train_tokenizer(list(DEFAULT_CORPUS) + S.corpus(S.WorldConfig()), 1024)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return S.generate_world(tmp_path_factory.mktemp("world"), S.WorldConfig(), n_train=24, n_eval=12)


def tokens(tokenizer, ids) -> list[str]:
    return [tokenizer.decode([i]).strip() for i in ids]


def order_row(layout, kind="first", **params):
    question = {"kind": kind, **params}
    return S.make_row(7, tuple(layout), question, "clips/x.mp4", S.WorldConfig())


# ------------------------------------------------------------------------------------------- config, clips, files


def test_config_validates_and_round_trips():
    cfg = S.WorldConfig()
    cfg.validate()
    assert cfg.groups == 4
    assert S.WorldConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert S.WorldConfig(seed=1).digest() != cfg.digest()
    for bad in (dict(frames=7), dict(max_events=5), dict(min_events=1), dict(shapes=("hexagon",)),
                dict(family_mix=(("nope", 1.0),)), dict(kinds=("first",)), dict(reference_noise=1.0)):
        with pytest.raises(ValueError):
            S.WorldConfig(**bad).validate()


def test_clips_decode_with_events_in_their_temporal_groups(world):
    cfg = world.config
    rows = S.read_rows(world.train) + S.read_rows(world.eval)
    assert len(rows) == 36
    for row in rows:
        clip = read_video(world.root / row["path"])  # the shared loader, default settings
        assert clip.frames.shape == (8, 56, 56, 3) and clip.fps == pytest.approx(2.0)
        assert S.decode_layout(clip.frames, cfg) == S.row_layout(row)
        for e in row["events"]:  # each event fills exactly frames 2g and 2g+1
            assert S.row_layout(row)[e["group"]] == (e["colour"], e["shape"])
        lit = [np.abs(clip.frames[f].astype(int) - 24).max() > 40 for f in range(8)]
        assert lit == [S.row_layout(row)[f // 2] is not None for f in range(8)]


def test_rows_follow_the_video_r1_schema(world):
    from videoktr.data.videor1 import validate_row

    rows = S.read_rows(world.train)
    layout = (("red", "circle"), None, ("blue", "circle"), ("green", "square"))
    counts = [order_row(layout, "count"), order_row(layout, "count_shape", shape="circle")]
    assert [r["problem_type"] for r in counts] == ["numerical", "numerical"]  # the whole count family
    for row in rows:
        validate_row(row, "synthetic")
        assert row["data_type"] == "video" and row["options"] == [] and row["data_source"] == "synthetic"
        assert row["problem_type"] == ("numerical" if row["family"] == "count" else "free-form")
        assert row["solution"] == f"<answer>{row['answer']}</answer>"
        assert re.fullmatch(r"<think>.+</think>", row["process"])
        assert row["response"] == row["process"] + row["solution"]
        assert not row["path"].startswith("/") and (world.root / row["path"]).is_file()
        assert 0 < row["chance"] <= 0.5
    assert {r["family"] for r in rows} <= set(S.FAMILIES)
    ids = [r["problem_id"] for r in rows + S.read_rows(world.eval)]
    assert len(set(ids)) == len(ids)


def test_generate_world_is_cached_by_config(world, tmp_path):
    stamp = world.train.stat().st_mtime_ns
    again = S.generate_world(world.root, world.config, n_train=24, n_eval=12)
    assert again.reused and world.train.stat().st_mtime_ns == stamp
    other = S.generate_world(world.root, S.WorldConfig(seed=5), n_train=24, n_eval=12)
    assert not other.reused
    assert S.load_world_config(world.root) == S.WorldConfig(seed=5)


def test_eval_rows_never_repeat_a_training_pair():
    cfg = S.WorldConfig(palette=S.PALETTE[:3], shapes=("circle",), frames=6, max_events=3)
    train = S.sample_rows(cfg, "train", 60)
    seen = {(S.row_layout(r), r["problem"]) for r in train}
    evals = S.sample_rows(cfg, "eval", 20, start_id=60, exclude=seen)
    assert not seen & {(S.row_layout(r), r["problem"]) for r in evals}


def test_reference_noise_only_touches_training_references():
    cfg = S.WorldConfig(reference_noise=0.5)
    train = S.sample_rows(cfg, "train", 80)
    noisy = [r for r in train if r["noisy"]]
    assert 20 < len(noisy) < 60
    for r in noisy:
        assert r["response"] != r["process"] + r["solution"]
        assert r["solution"] == f"<answer>{S.reference(S.row_layout(r), r['question'])[1]}</answer>"
    assert not any(r["noisy"] for r in S.sample_rows(cfg, "eval", 40))


# ------------------------------------------------------------------------------------------- temporal structure


def test_group_permutation_changes_order_answers_not_presence_answers():
    cfg = S.WorldConfig()
    layout = (("red", "circle"), None, ("blue", "square"), ("green", "triangle"))
    frames = S.render_clip(layout, cfg)
    answers = {"first": set(), "last": set()}
    for perm in itertools.permutations(range(4)):
        permuted = tuple(layout[i] for i in perm)
        # permuting the layout's groups = permuting the rendered frame pairs
        pairs = frames.reshape(4, 2, 56, 56, 3)[list(perm)].reshape(8, 56, 56, 3)
        np.testing.assert_array_equal(S.render_clip(permuted, cfg), pairs)
        for kind in answers:
            answers[kind].add(S.reference(permuted, {"kind": kind})[1])
        for q in ({"kind": "shape_of", "colour": "blue"}, {"kind": "colour_of", "shape": "square"},
                  {"kind": "count"}, {"kind": "count_shape", "shape": "circle"},
                  {"kind": "appeared", "colour": "white"}):
            assert S.reference(permuted, q) == S.reference(layout, q)
    assert answers["first"] == answers["last"] == {"red", "blue", "green"}


def test_order_counterfactuals_are_group_permutations():
    layout = (("red", "circle"), None, ("blue", "square"), ("green", "triangle"))
    cfs = S.order_counterfactuals(layout, {"kind": "first"})
    assert len(cfs) == 23 and layout not in cfs  # 4!/1 arrangements minus itself (events distinct, one blank)
    assert all(sorted(map(repr, c)) == sorted(map(repr, layout)) for c in cfs)
    after = S.order_counterfactuals(layout, {"kind": "after", "colour": "green"})
    assert all(S.events_of(c)[-1][0] != "green" for c in after)  # only well-posed arrangements


# ------------------------------------------------------------------------------------------- token labels


def test_labels_of_an_order_narration(tokenizer):
    row = order_row([("red", "circle"), ("blue", "square"), None, ("green", "triangle")])
    lab = S.token_labels(row, tokenizer)
    toks = tokens(tokenizer, lab["input_ids"].tolist())
    assert toks == ["<think>", "first", "red", "circle", ",", "then", "blue", "square", ",", "then", "green",
                    "triangle", ".", "</think>", "<answer>", "red", "</answer>", "<|im_end|>"]
    v, o = lab["vision"].tolist(), lab["order"].tolist()
    want_v = [0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    want_o = [0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    assert v == [bool(x) for x in want_v]
    assert o == [bool(x) for x in want_o]
    # the first colour named is both; its shape follows from the colour (vision only); the answer colour is
    # copied from the reasoning: dependent on the video unconditionally, not given its prefix
    assert lab["vision_uncond"][15] and lab["order_uncond"][15] and not lab["vision"][15]
    assert lab["answer"].tolist() == [t == 15 for t in range(18)]
    template = [0, 1, 13, 14, 16, 17]
    for t in template:
        assert not (v[t] or o[t] or lab["vision_uncond"][t] or lab["order_uncond"][t])


def test_labels_of_other_families(tokenizer):
    layout = (("red", "circle"), None, ("blue", "square"), None)
    presence = S.token_labels(order_row(layout, "colour_of", shape="square"), tokenizer)
    toks = tokens(tokenizer, presence["input_ids"].tolist())
    assert toks[:9] == ["<think>", "by", "colour", ":", "blue", "square", ",", "red", "circle"]
    assert not presence["order"].any() and not presence["order_uncond"].any()  # order-independent family
    assert presence["vision"][4] and not presence["vision"][toks.index("<answer>") + 1]
    count = S.token_labels(order_row(layout, "count"), tokenizer)
    toks = tokens(tokenizer, count["input_ids"].tolist())
    ans = toks.index("<answer>") + 1
    assert toks[ans] == "2" and count["vision"].tolist() == [t == ans for t in range(len(toks))]
    assert not count["order"].any()
    text = S.token_labels(order_row(layout, "named", colour="purple"), tokenizer)
    assert not any(text[k].any() for k in ("vision", "order", "vision_uncond", "order_uncond"))


def _brute_prefix(x, others):
    out = [False] * len(x)
    for y in others:
        for t in range(len(x)):
            if list(y[:t]) == list(x[:t]) and (t >= len(y) or y[t] != x[t]):
                out[t] = True
    return out


def test_labels_equal_brute_force_enumeration_on_a_small_world(tokenizer):
    rows = S.sample_rows(SMALL, "eval", 30)
    index = S.LabelIndex(tokenizer, SMALL)
    layouts = list(S.all_layouts(SMALL))
    assert len(layouts) == 3 * 6 * 4 + 1 * 6 * 8  # C(3,k) placements * P(3,k) colours * 2^k shapes
    for row in rows:
        lab = S.token_labels(row, tokenizer, SMALL, index=index)
        x = lab["input_ids"].tolist()
        q, layout = row["question"], S.row_layout(row)

        def ids(ls):
            texts = [S.reference_response(c, q) + tokenizer.eos_token for c in ls if S.well_posed(c, q)]
            return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

        perms = {tuple(layout[i] for i in p) for p in itertools.permutations(range(len(layout)))}
        assert lab["vision"].tolist() == _brute_prefix(x, ids(layouts))
        assert lab["order"].tolist() == _brute_prefix(x, ids(perms))
        full = S.token_labels(row, tokenizer, SMALL, index=index, exhaustive=True)
        assert not (lab["vision_uncond"] & ~full["vision_uncond"]).any()  # sampled counterfactuals are a subset
        assert torch.equal(lab["order_uncond"], full["order_uncond"])


def test_label_rows_shares_one_index(tokenizer):
    rows = S.sample_rows(SMALL, "eval", 6)
    labels = S.label_rows(rows, tokenizer, SMALL)
    assert len(labels) == 6
    assert S.label_index(tokenizer, SMALL) is S.label_index(tokenizer, SMALL)
    for lab in labels:
        assert {k: v.dtype for k, v in lab.items()} == {"input_ids": torch.long, "vision": torch.bool,
                                                          "order": torch.bool, "vision_uncond": torch.bool,
                                                          "order_uncond": torch.bool, "answer": torch.bool}
        assert not (lab["order"] & ~lab["vision"]).any()  # an order counterfactual is a content counterfactual


# ------------------------------------------------------------------------------------------- tokenizer corpus


@pytest.mark.parametrize("vocab", [512, 1024])  # the tiny and small models' vocabulary budgets
def test_every_world_word_is_one_token(vocab):
    from videoktr.models.factory import DEFAULT_CORPUS, train_tokenizer

    tok = train_tokenizer(list(DEFAULT_CORPUS) + S.corpus(S.WorldConfig()), vocab)
    for text in set(S.corpus(S.WorldConfig(), repeats=1)):
        for piece in re.split(r"<think>|</think>|<answer>|</answer>", text):
            for word, _ in tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str(piece):
                assert len(tok.backend_tokenizer.model.tokenize(word)) == 1, word
    assert {"red", "triangle", "first", "counting"} <= set(S.vocabulary())


# ------------------------------------------------------------------------------------------- rewards


def test_accuracy_reward():
    sol = ["<answer>red</answer>"] * 7 + ["<answer>3</answer>"] * 4
    completions = [
        "<think>first red circle.</think><answer>red</answer>",
        "<think>x</think><answer> Red. </answer>",
        "<answer>blue</answer> then <answer>red</answer>",  # the last answer counts
        "<think>first red circle.</think>",  # no answer
        "<answer>blue</answer>",
        "<answer></answer>",
        [{"role": "assistant", "content": "<think>a</think><answer>red</answer>"}],  # conversational
        "<think>counting the shapes.</think><answer>3</answer>",
        "<answer>3.0</answer>",
        "<answer>three</answer>",
        "<answer>4</answer>",
    ]
    assert S.accuracy_reward(completions, sol, problem_type=["free-form"] * 11) == \
        [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_format_reward():
    completions = [
        "<think>first red circle.</think><answer>red</answer>",
        "  <think>a\nb</think>\n<answer>red</answer>\n",
        "<answer>red</answer>",
        "<think>a</think><answer>red</answer> and more",
        "<think>a</think>",
        [{"role": "assistant", "content": "<think>a</think> <answer>b</answer>"}],
    ]
    assert S.format_reward(completions) == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]


def test_reference_responses_earn_full_reward(world):
    rows = S.read_rows(world.eval)
    responses = [r["process"] + r["solution"] for r in rows]
    assert S.accuracy_reward(responses, [r["solution"] for r in rows]) == [1.0] * len(rows)
    assert S.format_reward(responses) == [1.0] * len(rows)
