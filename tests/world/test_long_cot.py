"""The long_cot world style: lengths, token-role shares, determinism, labels aligned with tokens and exact
against token-level enumeration, a text-only baseline near chance, and the short world left as it was."""

from __future__ import annotations

import re
from collections import Counter, defaultdict

import pytest

from videoktr import world as S

LONG = S.long_cot_config()
# small enough to enumerate every layout (3 colours, 2 shapes, 3 temporal groups)
SMALL_LONG = S.long_cot_config(palette=S.PALETTE[:3], shapes=("circle", "square"), frames=6, max_events=3)


@pytest.fixture(scope="module")
def tokenizer():
    from videoktr.models.factory import DEFAULT_CORPUS, SIZES, train_tokenizer

    return train_tokenizer(list(DEFAULT_CORPUS) + S.corpus(LONG), SIZES["small"].vocab_size)


@pytest.fixture(scope="module")
def rows():
    return S.sample_rows(LONG, "eval", 16)


# Labelling cost is building each question's index (every event sequence's long reference, ~1 s): the labelled
# rows are 3 rows of each of 3 questions, one per family (after, shape_of, count_shape), from the held-out split.
LABELLED_KINDS = ("after", "shape_of", "count_shape")


@pytest.fixture(scope="module")
def labelled_rows():
    pool = S.sample_rows(LONG, "eval", 300)
    keys = Counter((r["kind"], S.question_key(r["question"])) for r in pool)
    out = []
    for kind in LABELLED_KINDS:
        key = next(q for (k, q), _ in keys.most_common() if k == kind)
        out += [r for r in pool if S.question_key(r["question"]) == key][:3]
    assert len(out) == 9
    return out


@pytest.fixture(scope="module")
def labels(labelled_rows, tokenizer):
    return S.label_rows(labelled_rows, tokenizer, LONG)


def test_preset_and_short_world_unchanged():
    assert LONG.style == "long_cot" and S.world_config("long_cot") == LONG
    assert S.world_config("short") == S.WorldConfig()
    assert "text" not in dict(LONG.family_mix) and "named" not in LONG.kinds and "appeared" not in LONG.kinds
    assert "style" not in S.WorldConfig().to_dict()  # the default world keeps its digest and directories
    assert S.WorldConfig().digest() == "1edcefa428c91659"
    assert S.WorldConfig.from_dict(LONG.to_dict()) == LONG and LONG.digest() != S.WorldConfig().digest()
    assert LONG.completion_tokens >= 250 and S.WorldConfig().completion_tokens == 48
    with pytest.raises(ValueError):
        S.WorldConfig(style="novel").validate()
    short = S.sample_rows(S.WorldConfig(), "eval", 5)
    assert all("phrasing" not in r["question"] for r in short)


def test_lengths_and_schema(rows, tokenizer):
    lengths = [len(ids) + 1 for ids in tokenizer([r["response"] for r in rows], add_special_tokens=False)["input_ids"]]
    assert 100 <= min(lengths) and max(lengths) <= 250
    for r in rows:
        assert r["response"] == r["process"] + r["solution"] and r["family"] != "text"
        assert 0 <= r["question"]["phrasing"] < S.PHRASINGS
        assert r["problem"] == S.question_text(r["question"])  # the phrasing is not in the prompt
        assert r["response"].endswith(f"<answer>{r['answer']}</answer>")
        assert S.accuracy_reward([r["response"]], [r["solution"]]) == [1.0]
        assert S.format_reward([r["response"]]) == [1.0]


def test_every_word_of_the_long_references_is_one_token(rows, tokenizer):
    pre = tokenizer.backend_tokenizer.pre_tokenizer
    for r in rows:
        for piece in re.split(r"<think>|</think>|<answer>|</answer>", r["response"]):
            for word, _ in pre.pre_tokenize_str(piece):
                assert len(tokenizer.backend_tokenizer.model.tokenize(word)) == 1, word


def test_deterministic_per_seed():
    a, b = S.sample_rows(LONG, "train", 30), S.sample_rows(LONG, "train", 30)
    assert a == b
    assert a != S.sample_rows(S.long_cot_config(seed=1), "train", 30)
    r = a[0]
    assert S.reference_response(S.row_layout(r), r["question"], "long_cot") == r["response"]


def test_role_shares_match_the_design(labels):
    total = sum(len(lab["input_ids"]) for lab in labels)
    share = {k: sum(int(lab[k].sum()) for lab in labels) / total for k in ("vision", "order", "vision_uncond")}
    assert 0.02 < share["vision"] < 0.15  # the video enters a few tokens of a long response
    assert 0 < share["order"] < share["vision"]
    assert share["vision_uncond"] < 0.35  # restatements included (measured 0.27, docs/world-long-cot.md)
    for lab in labels:
        assert not (lab["order"] & ~lab["vision"]).any()


def test_labels_align_with_tokens(labelled_rows, labels, tokenizer):
    assert {r["kind"] for r in labelled_rows} == set(LABELLED_KINDS)
    for r, lab in zip(labelled_rows, labels):
        ids = lab["input_ids"].tolist()
        assert ids == tokenizer(r["response"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        words = [tokenizer.decode([i]).strip() for i in ids]
        colours_shapes = set(LONG.colours) | set(LONG.shapes)
        vision_words = {w for w, v in zip(words, lab["vision"].tolist()) if v}
        # what the video decides first: colours, shapes, or the word where the narration ends / goes on
        assert vision_words <= colours_shapes | {"Nothing", "No", "Once", "Beyond", "After", "Next", "Later",
                                                 "Following"} | {str(n) for n in range(5)}
        answer = [w for w, a in zip(words, lab["answer"].tolist()) if a]
        assert answer == [r["answer"]]
        first_event = next(i for i, w in enumerate(words) if w in colours_shapes and lab["vision"][i])
        assert not lab["vision"][:first_event].any()  # opener, restatement and hedge carry no video


def test_text_labels_equal_token_enumeration_on_a_small_world(tokenizer):
    rows = S.sample_rows(SMALL_LONG, "eval", 12)
    index = S.LabelIndex(tokenizer, SMALL_LONG)
    for row in rows:
        lab = S.token_labels(row, tokenizer, SMALL_LONG, index=index)
        x = lab["input_ids"].tolist()
        q = row["question"]
        texts = [S.reference_response(c, q, "long_cot") + tokenizer.eos_token
                 for c in S.all_layouts(SMALL_LONG) if S.well_posed(c, q)]
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        assert lab["vision"].tolist() == S.prefix_labels(x, ids)


def test_text_only_baseline_is_near_chance():
    """The majority answer per question text (all a text-only model sees), fitted on training rows."""
    train = S.sample_rows(LONG, "train", 1500)
    held = S.sample_rows(LONG, "eval", 400, start_id=1500)
    by_text: dict[str, Counter] = defaultdict(Counter)
    for r in train:
        by_text[r["problem"]][r["answer"]] += 1
    correct = [by_text[r["problem"]].most_common(1)[0][0] == r["answer"] for r in held if by_text[r["problem"]]]
    chance = sum(r["chance"] for r in held) / len(held)
    assert len(correct) > 350
    assert sum(correct) / len(correct) < chance + 0.12


def test_count_shape_text_only_baseline_is_near_chance():
    """count_shape's asked shape is drawn so that its answer is spread over the counts the clip allows: the
    majority count per question text ("How many circles appeared?") is right little more often than chance."""
    train = [r for r in S.sample_rows(LONG, "train", 2000) if r["kind"] == "count_shape"]
    held = [r for r in S.sample_rows(LONG, "eval", 2400, start_id=2000) if r["kind"] == "count_shape"]
    assert len(train) > 200 and len(held) > 250
    by_text: dict[str, Counter] = defaultdict(Counter)
    for r in train:
        by_text[r["problem"]][r["answer"]] += 1
    accuracy = sum(by_text[r["problem"]].most_common(1)[0][0] == r["answer"] for r in held) / len(held)
    chance = held[0]["chance"]
    assert chance == pytest.approx(1 / (LONG.max_events + 1))
    assert accuracy < chance + 0.15  # was 0.577 against 0.2 with a uniformly drawn shape
    answers = Counter(r["answer"] for r in train + held)
    assert max(answers.values()) / sum(answers.values()) < 0.35
    assert answers["3"] > 0 and answers["4"] > 0  # rare counts are asked whenever a clip has them
    for r in held:
        assert r["answer"] == str(sum(e["shape"] == r["question"]["shape"] for e in r["events"]))


def test_count_shape_draw_weights():
    """The fitted weights: a count that few clips have (3 or 4 of one shape) is asked whenever the clip has it;
    0, 1 and 2 share the rest equally (exact answer shares over sample_layout's clips)."""
    from videoktr.world.questions import count_shape_log_weights

    w = count_shape_log_weights(len(LONG.shapes), LONG.min_events, LONG.max_events)
    assert len(w) == LONG.max_events + 1 and max(w) == w[4] == 0.0
    assert w[4] > w[3] > max(w[:3]) + 50  # 3 and 4 win whenever present
    assert max(w[:3]) - min(w[:3]) < 1.0  # 0, 1 and 2 comparable
    # the short world's draw is untouched (uniform shape): its rows do not change
    short = [r for r in S.sample_rows(S.WorldConfig(), "train", 400) if r["kind"] == "count_shape"]
    assert Counter(r["answer"] for r in short).most_common(1)[0][0] in ("0", "1")
