"""The sampled_cot world style: filler drawn independently per slot, token roles exact against a direct
computation of every token's distribution given its prefix and the clip, lengths, a text-only baseline near chance,
and the other worlds left as they were."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from fractions import Fraction

import pytest

from videoktr import world as S
from videoktr.world import sampled_cot as SC
from videoktr.world.questions import events_of, reference

SAMPLED = S.sampled_cot_config()
# small enough to enumerate every event sequence (3 colours, 2 shapes, 3 temporal groups: 72 sequences)
SMALL = S.sampled_cot_config(palette=S.PALETTE[:3], shapes=("circle", "square"), frames=6, max_events=3)
EOS = "<eos>"


@pytest.fixture(scope="module")
def tokenizer():
    from videoktr.models.factory import DEFAULT_CORPUS, SIZES, train_tokenizer

    return train_tokenizer(list(DEFAULT_CORPUS) + S.corpus(SAMPLED), SIZES["small"].vocab_size)


@pytest.fixture(scope="module")
def rows():
    return S.sample_rows(SAMPLED, "eval", 40)


# ---------------------------------------------------------------------------------------------------------------
# The slow reference: each token's exact distribution given its prefix and the clip, by walking the grammar with
# every choice uniform and independent (no filler seed, no fixed choices, no branch clips)
# ---------------------------------------------------------------------------------------------------------------
def next_word_joint(parts, prefix: list[str]) -> dict[str, Fraction]:
    """{next word: P(prefix, next word)} of the response process `parts` (SC.grammar), EOS for the end."""
    out: dict[str, Fraction] = defaultdict(Fraction)

    def walk(stack: tuple, k: int, prob: Fraction) -> None:
        while stack:
            items, i, env = stack[-1]
            if i >= len(items):
                stack = stack[:-1]
                continue
            item = items[i]
            stack = stack[:-1] + ((items, i + 1, env),)
            if isinstance(item, SC.Choice):
                n = len(item.alternatives)
                for alt in item.alternatives:
                    walk(stack + ((alt, 0, env),), k, prob / n)
                return
            word = str(env[item[1:]]) if item.startswith("$") else item
            if k == len(prefix):
                out[word] += prob
                return
            if word != prefix[k]:
                return
            k += 1
        if k == len(prefix):
            out[EOS] += prob

    walk(tuple((items, 0, env) for items, env in reversed(parts)), 0, Fraction(1))
    return dict(out)


def conditional(joint: dict[str, Fraction]) -> tuple | None:
    total = sum(joint.values())
    return None if total == 0 else tuple(sorted((w, p / total) for w, p in joint.items()))


def slow_labels(row: dict, config) -> dict[str, list[bool]]:
    """vision[t]: clips (event sequences) for which the question is well-posed and the prefix possible give
    more than one distribution of word t; order[t]: the same over the row's group permutations; sampled[t]: the
    row's own clip gives word t a distribution that is not a point mass."""
    layout, question = S.row_layout(row), row["question"]
    x = SC.words(SC.grammar(events_of(layout), question, row["answer"]),
                 lambda ch: SC.choice_index(question["filler"], ch.slot, len(ch.alternatives)))
    own = tuple(events_of(layout))
    clips = [q for q in S.all_sequences(config) if S.well_posed(q, question)]
    perms = {tuple(events_of(c)) for c in S.order_counterfactuals(layout, question)} | {own}
    grammars = {q: SC.grammar(list(q), question, reference(q, question)[1]) for q in clips}
    out = {"vision": [], "order": [], "sampled": []}
    for t in range(len(x)):
        dists = {q: conditional(next_word_joint(grammars[q], x[:t])) for q in clips}
        dists = {q: d for q, d in dists.items() if d is not None}
        out["vision"].append(len(set(dists.values())) > 1)
        out["order"].append(len({dists[q] for q in perms if q in dists}) > 1)
        out["sampled"].append(len(dists[own]) > 1)
    return out


def test_slow_reference_on_a_hand_example():
    """The walker itself: after "Then we see one red square" of a 2-event narration the clip may end or go on
    (the next word depends on the clip); the first word of the response is a uniform draw of 4."""
    q = {"kind": "first", "filler": 0}
    parts = SC.grammar([("red", "circle"), ("blue", "square")], q, "red")
    first = conditional(next_word_joint(parts, ["<think>"]))
    assert [w for w, _ in first] == sorted(["Okay", "Alright", "Well", "Right"])
    assert {p for _, p in first} == {Fraction(1, 4)}
    x = SC.words(parts, lambda ch: 0)
    end = x.index("Finally")
    assert dict(conditional(next_word_joint(parts, x[:end]))) == {w: Fraction(1, 3) for w in
                                                                 ("Finally", "Eventually", "Ultimately")}
    three = SC.grammar([("red", "circle"), ("blue", "square"), ("green", "circle")], q, "red")
    assert dict(conditional(next_word_joint(three, x[:end]))) == {w: Fraction(1, 4) for w in
                                                                 ("Then", "Next", "Later", "Afterwards")}


def _kinds_rows(config, per_kind: int, n: int = 400):
    pool = S.sample_rows(config, "eval", n)
    out = []
    for kind in SC.KINDS:
        out += [r for r in pool if r["kind"] == kind][:per_kind]
    return out


def test_labels_equal_the_slow_reference_on_a_small_world(tokenizer):
    """token_labels (the filler fixed to the row's choices, exact branch clips, one-choice variants) against the
    definition computed directly, on a row of every kind: vision, order and sampled agree on every token."""
    rows = _kinds_rows(SMALL, 1)
    assert {r["kind"] for r in rows} == set(SC.KINDS)
    for row in rows:
        lab = S.token_labels(row, tokenizer, SMALL)
        slow = slow_labels(row, SMALL)
        ids = lab["input_ids"].tolist()
        assert len(ids) == len(slow["vision"]) + 1  # one token per word, then end-of-turn
        for key in ("vision", "order", "sampled"):
            assert lab[key].tolist() == slow[key] + [False], (row["kind"], key)
        assert lab["vision"].any() and lab["sampled"].sum() > 0.5 * len(ids)


# ---------------------------------------------------------------------------------------------------------------
# The world's design
# ---------------------------------------------------------------------------------------------------------------
def test_preset_and_other_worlds_unchanged():
    assert SAMPLED.style == "sampled_cot" and S.world_config("sampled_cot") == SAMPLED
    assert S.WorldConfig().digest() == "1edcefa428c91659"  # the default world keeps its cache key
    assert S.long_cot_config().digest() != SAMPLED.digest() != S.WorldConfig().digest()
    assert S.WorldConfig.from_dict(SAMPLED.to_dict()) == SAMPLED
    assert SAMPLED.family_mix == S.LONG_COT_FAMILY_MIX and SAMPLED.kinds == S.LONG_COT_KINDS
    assert SAMPLED.completion_tokens == S.SAMPLED_COT_COMPLETION_TOKENS
    assert all("filler" not in r["question"] for r in S.sample_rows(S.long_cot_config(), "eval", 5))


def test_lengths_schema_and_hidden_filler(rows, tokenizer):
    lengths = [len(ids) + 1 for ids in tokenizer([r["response"] for r in rows], add_special_tokens=False)["input_ids"]]
    assert 70 <= min(lengths) and max(lengths) <= SAMPLED.completion_tokens - 32
    for r in rows:
        assert r["response"] == r["process"] + r["solution"] and r["family"] != "text"
        assert r["problem"] == S.question_text(r["question"])  # the filler seed is not in the prompt
        assert S.accuracy_reward([r["response"]], [r["solution"]]) == [1.0]
        assert S.format_reward([r["response"]]) == [1.0]
    assert len({r["question"]["filler"] for r in rows}) == len(rows)


def test_every_word_is_one_token(rows, tokenizer):
    pre = tokenizer.backend_tokenizer.pre_tokenizer
    for r in rows:
        for piece in re.split(r"<think>|</think>|<answer>|</answer>", r["response"]):
            for word, _ in pre.pre_tokenize_str(piece):
                assert len(tokenizer.backend_tokenizer.model.tokenize(word)) == 1, word


def test_filler_is_drawn_per_slot_and_never_from_the_clip():
    """Same seed, other clip: every choice the two references share is taken the same way (the clip never moves
    the filler); over many rows each slot's alternatives are drawn about uniformly and independently of the
    previous slot's (the first sentence no longer tells the rest, as long_cot's hidden phrasing did)."""
    q = {"kind": "count", "filler": 12345}
    a = SC.sampled_response([("red", "circle"), ("blue", "square")], q, "2")
    b = SC.sampled_response([("green", "square"), ("white", "circle"), ("red", "circle")], q, "3")
    sa, sb = re.split(r"(?<=\.) ", a), re.split(r"(?<=\.) ", b)
    assert sa[:3] == sb[:3]  # opener, restatement, hedge: word for word
    assert sa[-2] == sb[-2]  # the check
    assert sa[3].split()[:4] == sb[3].split()[:4]  # the first event's filler ("First I see a")
    assert SC.sampled_response([("red", "circle"), ("blue", "square")], {**q, "filler": 1}, "2") != a
    rows = S.sample_rows(SAMPLED, "train", 1200)
    firsts = Counter(r["response"].split()[0] for r in rows)  # "<think>Okay", ...
    assert len(firsts) == 4 and min(firsts.values()) > 240
    joint = Counter((r["response"].split()[0], r["response"].split()[2]) for r in rows)  # opener x verb
    assert len(joint) == 12 and min(joint.values()) > 60


def test_role_shares_match_the_design(tokenizer):
    labs = S.label_rows(_kinds_rows(SAMPLED, 3), tokenizer, SAMPLED)
    total = sum(len(lab["input_ids"]) for lab in labs)
    share = {k: sum(int(lab[k].sum()) for lab in labs) / total for k in ("vision", "order", "sampled")}
    assert 0.03 < share["vision"] < 0.15 and 0 < share["order"] < share["vision"]
    assert share["sampled"] > 0.6  # most tokens are filler drawn with real entropy
    for lab in labs:
        assert not (lab["order"] & ~lab["vision"]).any()


def test_text_only_baseline_is_near_chance():
    train = S.sample_rows(SAMPLED, "train", 1500)
    held = S.sample_rows(SAMPLED, "eval", 400, start_id=1500)
    by_text: dict[str, Counter] = defaultdict(Counter)
    for r in train:
        by_text[r["problem"]][r["answer"]] += 1
    correct = [by_text[r["problem"]].most_common(1)[0][0] == r["answer"] for r in held if by_text[r["problem"]]]
    chance = sum(r["chance"] for r in held) / len(held)
    assert len(correct) > 350
    assert sum(correct) / len(correct) < chance + 0.12
