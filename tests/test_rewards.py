"""Rewards on real-looking responses: answer tags (none, several, whitespace), multiple choice exact/tolerant,
numbers, OCR (WER), free-form (ROUGE against hand-computed values), regression, format, the length bonus on the
true length, TW-GRPO's soft multiple-choice reward, and the registry a config names."""

from __future__ import annotations

import pickle

import pytest

from videoktr.rewards import (PROBLEM_TYPES, REWARDS, NamedReward, RewardSpec, accuracy_reward, answer_content,
                              build_rewards, canonical_problem_type, completion_text, format_reward, length_bonus,
                              length_bonus_values, parse_reward_specs, register_reward, rouge_l, rouge_n,
                              rouge_scores, score_answer, soft_choice_reward, soft_choice_score, source_answer,
                              word_error_rate)

THINK = ("<think>Let me think. The man walks in, looks around, hmm, then he picks up the phone from the table. "
         "Wait, let me check the options again: the phone is option B.</think>")


def respond(answer: str, think: str = THINK, sep: str = "\n") -> str:
    return f"{think}{sep}<answer>{answer}</answer>"


def acc(completion, solution, problem_type, options=None, **kw) -> float:
    return accuracy_reward([completion], solution=[solution], problem_type=[problem_type], options=[options],
                           **kw)[0]


MC_OPTIONS = ["A. a cup", "B. a phone", "C. a book", "D. nothing"]


# --------------------------------------------------------------------------------------------- plumbing


def test_completion_text_and_answer_content():
    assert completion_text("plain") == "plain"
    assert completion_text([{"role": "assistant", "content": "hi"}]) == "hi"
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "a"},
                                                              {"type": "text", "text": "b"}]}]) == "ab"
    assert completion_text(None) == "" and completion_text([]) == ""
    assert answer_content(respond("  B \n")) == "B"
    assert answer_content("<answer>A</answer> no wait <answer>C</answer>") == "C"  # the last complete tag
    assert answer_content("<ANSWER>d</Answer>") == "d"
    assert answer_content(THINK + "<answer>B") is None  # cut off: no complete tag
    assert answer_content("The answer is B.") is None and answer_content("") is None


def test_problem_type_names():
    assert [canonical_problem_type(t) for t in PROBLEM_TYPES] == list(PROBLEM_TYPES)
    assert canonical_problem_type("Multiple_Choice") == "multiple choice"
    assert canonical_problem_type(" ocr ") == "OCR" and canonical_problem_type("free form") == "free-form"
    assert canonical_problem_type("essay") is None and canonical_problem_type(None) is None


# --------------------------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("answer, exact, tolerant", [
    ("B", 1.0, 1.0),
    ("  B\n", 1.0, 1.0),
    ("B.", 0.0, 1.0),
    ("(B)", 0.0, 1.0),
    ("B) a phone", 0.0, 1.0),
    ("B. a phone", 0.0, 1.0),
    ("b", 0.0, 1.0),
    ("**B**", 0.0, 1.0),
    ("a phone", 0.0, 1.0),        # the option's own text
    ("The answer is B", 0.0, 1.0),
    ("A", 0.0, 0.0),
    ("A or B", 0.0, 0.0),         # hedging is never read as an answer
    ("", 0.0, 0.0),
])
def test_multiple_choice_exact_and_tolerant(answer, exact, tolerant):
    sol = "<answer>B</answer>"
    assert acc(respond(answer), sol, "multiple choice", MC_OPTIONS) == exact
    assert acc(respond(answer), sol, "multiple choice", MC_OPTIONS, mc_mode="tolerant") == tolerant


def test_multiple_choice_tags_and_conversational_completions():
    sol = "<answer>B</answer>"
    several = THINK + "\n<answer>A</answer>\nHmm, no. Looking again it is the phone.\n<answer>B</answer>"
    assert acc(several, sol, "multiple choice", MC_OPTIONS) == 1.0
    assert acc("<think>It is B.</think> B", sol, "multiple choice", MC_OPTIONS) == 0.0  # no tag: 0
    assert acc("<think>It is B.</think> B", sol, "multiple choice", MC_OPTIONS, mc_mode="tolerant") == 0.0
    assert acc(THINK + "\n<answer>B", sol, "multiple choice", MC_OPTIONS) == 0.0  # cut off before </answer>
    assert acc([{"role": "assistant", "content": respond("B")}], sol, "multiple choice", MC_OPTIONS) == 1.0
    assert acc(respond("B."), sol, "multiple choice", None, mc_mode="tolerant") == 1.0  # no options given
    with pytest.raises(ValueError, match="exact, tolerant or soft"):
        acc(respond("B"), sol, "multiple choice", MC_OPTIONS, mc_mode="fuzzy")


@pytest.mark.parametrize("answer, gt, score", [
    ("3", "3", 1.0),
    ("3.0", "3", 1.0),
    ("3", "3.0", 1.0),
    (" 3.00 ", "3", 1.0),
    ("3.004", "3", 1.0),          # equal at 2 decimals
    ("3.01", "3", 0.0),
    ("1,000", "1000", 1.0),
    ("45%", "45", 1.0),
    ("-2.5", "-2.50", 1.0),
    ("three", "3", 0.0),
    ("3 people", "3", 0.0),
    ("", "3", 0.0),
    ("nan", "3", 0.0),
])
def test_numerical(answer, gt, score):
    assert acc(respond(answer), f"<answer>{gt}</answer>", "numerical") == score


def test_numerical_strict_decimals_reproduces_video_r1():
    assert acc(respond("3.0"), "<answer>3</answer>", "numerical", strict_decimals=True) == 0.0
    assert acc(respond("1,000"), "<answer>1000</answer>", "numerical", strict_decimals=True) == 0.0
    assert acc(respond("3.00"), "<answer>3.0</answer>", "numerical", strict_decimals=True) == 1.0
    assert acc(respond("3"), "<answer>3</answer>", "numerical", strict_decimals=True) == 1.0


def test_word_error_rate_and_ocr():
    assert word_error_rate("the cat sat", "the cat sat down") == pytest.approx(1 / 3)  # one insertion
    assert word_error_rate("the cat sat", "the dog sat") == pytest.approx(1 / 3)  # one substitution
    assert word_error_rate("the cat sat", "cat sat") == pytest.approx(1 / 3)  # one deletion
    assert word_error_rate("", "") == 0.0
    sol = "<answer>OPEN 24 HOURS</answer>"
    assert acc(respond("OPEN 24 HOURS"), sol, "OCR") == 1.0
    assert acc(respond("  OPEN   24\nHOURS "), sol, "OCR") == 1.0  # whitespace only separates words
    assert acc(respond("OPEN 24"), sol, "OCR") == pytest.approx(2 / 3)
    assert acc(respond("open 24 hours"), sol, "OCR") == pytest.approx(1 / 3)  # case counts, as Video-R1
    assert acc(respond("the shop is open all day and all night"), sol, "OCR") == 0.0  # WER > 1: clipped
    assert acc(respond(""), sol, "OCR") == 0.0
    assert acc("OPEN 24 HOURS", sol, "OCR") == 0.0  # no tag


def test_rouge_hand_computed():
    ref, hyp = "The cat sat on the mat.", "the cat lay on the mat"
    # unigrams: the x2, cat, on, mat shared -> 5 of 6 and 6: F = 2*5/12
    assert rouge_n(ref, hyp, 1) == pytest.approx(5 / 6)
    # bigrams: "the cat", "on the", "the mat" shared -> 3 of 5 and 5
    assert rouge_n(ref, hyp, 2) == pytest.approx(3 / 5)
    # LCS "the cat on the mat" = 5
    assert rouge_l(ref, hyp) == pytest.approx(5 / 6)
    ref2, hyp2 = "a cloud passes in front of the sun", "The sun is hidden by a cloud."
    assert rouge_scores(ref2, hyp2) == pytest.approx({"rouge1": 8 / 15, "rouge2": 4 / 13, "rougeL": 4 / 15})
    assert rouge_n("a b a b", "a b", 2) == pytest.approx(2 * 1 / (1 + 3))  # clipped counts
    assert rouge_scores("", "anything") == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


def test_free_form():
    sol = "<answer>a cloud passes in front of the sun</answer>"
    assert acc(respond("The sun is hidden by a cloud."), sol, "free-form") == pytest.approx(24 / 65)
    assert acc(respond("A cloud passes in front of the sun!"), sol, "free-form") == pytest.approx(1.0)
    assert acc(respond("the cat lay on the mat"), "<answer>The cat sat on the mat.</answer>",
               "free-form") == pytest.approx(34 / 45)
    assert acc(respond("dog"), "<answer>dog</answer>", "free-form") == pytest.approx(2 / 3)  # no bigram
    assert acc(respond(""), sol, "free-form") == 0.0 and acc("", sol, "free-form") == 0.0


@pytest.mark.parametrize("answer, gt, score", [
    ("12.5", "12.5", 1.0),
    ("10", "12.5", 0.8),
    ("15", "12.5", 0.8),
    ("30", "12.5", 0.0),          # relative error above 1: clipped
    ("-12.5", "12.5", 0.0),
    ("2", "2.0", 1.0),
    ("0", "0", 1.0),              # Video-R1's smoothing gives 0 here; we score the exact answer 1
    ("0.1", "0", 0.0),
    ("about twelve", "12.5", 0.0),
])
def test_regression(answer, gt, score):
    assert acc(respond(answer), f"<answer>{gt}</answer>", "regression") == pytest.approx(score)


def test_accuracy_dispatches_a_mixed_batch():
    completions = [respond("B"), respond("3.0"), respond("OPEN 24"), respond("the cat lay on the mat"),
                   respond("10"), "I think it is B", ""]
    solutions = ["<answer>B</answer>", "<answer>3</answer>", "<answer>OPEN 24 HOURS</answer>",
                 "<answer>The cat sat on the mat.</answer>", "<answer>12.5</answer>", "<answer>B</answer>",
                 "<answer>3</answer>"]
    types = ["multiple choice", "numerical", "OCR", "free-form", "regression", "multiple choice", "numerical"]
    options = [MC_OPTIONS, [], [], [], [], MC_OPTIONS, None]
    out = accuracy_reward(completions, solution=solutions, problem_type=types, options=options,
                          prompts=["p"] * 7, completion_ids=[[1]] * 7, trainer_state=None)
    assert out == pytest.approx([1.0, 1.0, 2 / 3, 34 / 45, 0.8, 0.0, 0.0])
    with pytest.raises(ValueError, match="unknown problem_type 'essay'; known: multiple choice"):
        accuracy_reward([respond("x")], solution=["<answer>x</answer>"], problem_type=["essay"])
    with pytest.raises(ValueError, match="'solution' has 1 values for 2 completions"):
        accuracy_reward(["a", "b"], solution=["<answer>x</answer>"], problem_type=["OCR", "OCR"])
    assert score_answer("B", "B", "multiple choice") == 1.0  # a solution without tags is read whole


# --------------------------------------------------------------------------------------------- format


@pytest.mark.parametrize("text, score", [
    (respond("B"), 1.0),
    (respond("B", sep=""), 1.0),
    ("\n" + respond("B") + "\n", 1.0),                      # surrounding whitespace is ignored
    ("<think>line one\nline two\n</think>\n\n<answer>\nB\n</answer>", 1.0),
    (THINK + "\n<answer>A</answer> hmm <answer>B</answer>", 1.0),   # Video-R1's pattern allows this
    ("<answer>B</answer>", 0.0),                            # no reasoning
    (THINK, 0.0),                                           # no answer
    (respond("B") + " I hope this helps!", 0.0),            # text after the answer
    ("Sure! " + respond("B"), 0.0),                         # text before the reasoning
    ("<answer>B</answer>" + THINK, 0.0),                    # wrong order
    (THINK + "\n<answer>B", 0.0),                           # cut off
    ("", 0.0),
])
def test_format_reward(text, score):
    assert format_reward([text]) == [score]
    assert format_reward([[{"role": "assistant", "content": text}]]) == [score]


# --------------------------------------------------------------------------------------------- length bonus


def test_length_bonus_on_true_length():
    sol, pt, opts = "<answer>B</answer>", "multiple choice", MC_OPTIONS
    completions = [respond("B"), respond("B"), respond("B"), respond("B"), respond("A"), respond("B")]
    lengths = [319, 320, 512, 513, 400, 400]
    out = length_bonus(completions, solution=[sol] * 6, problem_type=[pt] * 6, options=[opts] * 6,
                       completion_ids=[[7] * n for n in lengths])
    assert out == pytest.approx([0.0, 0.2, 0.2, 0.0, 0.0, 0.2])
    # configurable range and bonus; partial accuracy above the threshold counts as correct
    ocr = length_bonus([respond("OPEN 24"), respond("CLOSED")], solution=["<answer>OPEN 24 HOURS</answer>"] * 2,
                       problem_type=["OCR"] * 2, completion_ids=[[1] * 50, [1] * 50], min_tokens=10,
                       max_tokens=100, bonus=0.5)
    assert ocr == [0.5, 0.0]
    with pytest.raises(ValueError, match="needs `completion_ids`"):
        length_bonus([respond("B")], solution=[sol], problem_type=[pt])


def test_length_bonus_group_rule():
    # two groups of 3: the first has one correct response (no bonus with min_correct=2), the second two
    acc_values = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    lengths = [400] * 6
    assert length_bonus_values(acc_values, lengths) == pytest.approx([0.2, 0, 0, 0.2, 0.2, 0])
    assert length_bonus_values(acc_values, lengths, group_size=3) == pytest.approx([0, 0, 0, 0.2, 0.2, 0])
    with pytest.raises(ValueError, match="groups of 4"):
        length_bonus_values(acc_values, lengths, group_size=4)
    with pytest.raises(ValueError, match="min_tokens"):
        length_bonus_values(acc_values, lengths, min_tokens=600)


# --------------------------------------------------------------------------------------------- TW-GRPO soft reward


@pytest.mark.parametrize("answer, gt, score", [
    ("A,B,C", "A,B,C", 1.0),
    ("C, A ,B", "A,B,C", 1.0),  # order and spaces do not matter
    ("A,C", "A,B,C", 2 / 3),  # a correct subset: partial credit
    ("B", "A,B,C", 1 / 3),
    ("A, A", "A,B", 0.5),  # a set: repeats count once
    ("A,D", "A,B,C", 0.0),  # any wrong option: nothing
    ("A,B,C,D", "A,B,C", 0.0),
    ("B", "B", 1.0),
    ("C", "B", 0.0),
    ("b", "B", 0.0),  # case kept
    ("B.", "B", 0.0),  # no tolerance for punctuation
    ("A;B", "A,B", 0.0),  # only commas separate options
    ("A,", "A,B", 0.0),  # the empty part after the comma is not an option of the truth
])
def test_soft_choice_score(answer, gt, score):
    assert soft_choice_score(answer, gt) == pytest.approx(score)
    assert acc(respond(answer), f"<answer>{gt}</answer>", "multiple choice", mc_mode="soft") == pytest.approx(score)


def test_soft_choice_reward_rows_and_extraction():
    sols = ["<answer>A,B,C</answer>", "<answer>B,D</answer>", "<answer>3</answer>", "<answer>A,B</answer>"]
    completions = [respond("A, C"), [{"role": "assistant", "content": respond("D")}], respond("3.0"), "B"]
    # problem_type missing (TW-GRPO's data): every row multiple choice; "3.0" is not the option "3"
    got = soft_choice_reward(completions, solution=sols)
    assert got == pytest.approx([2 / 3, 0.5, 0.0, 0.0])  # no answer tag: 0 with our reading
    got = soft_choice_reward(completions, solution=sols, source_extraction=True)
    assert got == pytest.approx([2 / 3, 0.5, 0.0, 0.5])  # TW-GRPO reads the whole response without a tag
    types = ["multiple choice", "multiple choice", "numerical", "Multiple Choice"]
    got = soft_choice_reward(completions, solution=sols, problem_type=types, prompts=["p"] * 4)
    assert got == pytest.approx([2 / 3, 0.5, 1.0, 0.0])  # numerical rows scored by their type
    two = "<think>x</think><answer>A</answer> wait <answer>A,B</answer>"
    assert soft_choice_reward([two], solution=["<answer>A,B</answer>"]) == [1.0]  # our reading: the last tag
    assert soft_choice_reward([two], solution=["<answer>A,B</answer>"], source_extraction=True) == [0.5]  # first
    assert source_answer("<ANSWER>B</ANSWER>") == "<ANSWER>B</ANSWER>"  # TW-GRPO's tags are case-sensitive
    assert source_answer(" <answer> A,B\n</answer> ") == "A,B"


# --------------------------------------------------------------------------------------------- registry


def test_build_rewards_from_config():
    from trl.trainer.utils import get_callable_name

    funcs, weights = build_rewards({"accuracy": 1.0, "format": 1.0})
    assert [get_callable_name(f) for f in funcs] == ["accuracy", "format"] and weights == [1.0, 1.0]
    kwargs = dict(prompts=["p", "p"], completion_ids=[[1, 2], [3]], solution=["<answer>B</answer>"] * 2,
                  problem_type=["multiple choice"] * 2, options=[MC_OPTIONS] * 2, trainer_state=None,
                  log_metric=None, log_extra=None)
    completions = [[{"role": "assistant", "content": respond("B")}],
                   [{"role": "assistant", "content": "B."}]]
    assert funcs[0](completions=completions, **kwargs) == [1.0, 0.0]
    assert funcs[1](completions=completions, **kwargs) == [1.0, 0.0]
    funcs, weights = build_rewards({"accuracy": {"weight": 2.0, "mc_mode": "tolerant"},
                                    "length_bonus": {"min_tokens": 1, "max_tokens": 2}})
    completions[1] = [{"role": "assistant", "content": respond("B.")}]
    assert weights == [2.0, 1.0] and funcs[0](completions=completions, **kwargs) == [1.0, 1.0]
    assert funcs[1](completions=completions, **kwargs) == pytest.approx([0.2, 0.0])
    assert pickle.loads(pickle.dumps(funcs[0]))(completions=completions, **kwargs) == [1.0, 1.0]
    listed = parse_reward_specs(["format", {"name": "accuracy", "weight": 0.5}, RewardSpec("length_bonus", 1)])
    assert [(s.name, s.weight) for s in listed] == [("format", 1.0), ("accuracy", 0.5), ("length_bonus", 1)]


@pytest.mark.parametrize("config, message", [
    ({"acuracy": 1.0}, "unknown reward 'acuracy'; known rewards: accuracy, format, length_bonus"),
    ({"accuracy": {"mode": "tolerant"}}, "unknown option(s) 'mode'; allowed: mc_mode, strict_decimals"),
    ({"format": {"weight": 1.0, "strict": True}}, "allowed: none"),
    ({"accuracy": "heavy"}, "weight must be a finite number"),
    ({"accuracy": float("nan")}, "weight must be a finite number"),
    ({}, "no reward given"),
    (["accuracy", "accuracy"], "named more than once: accuracy"),
    ("accuracy", "mapping name -> weight or a list"),
    ([3], "cannot read reward 3"),
])
def test_bad_reward_configs(config, message):
    with pytest.raises(ValueError) as err:
        build_rewards(config)
    assert message in str(err.value)


def test_soft_choice_is_registered():
    (f,), weights = build_rewards({"soft_choice": {"weight": 2.0, "source_extraction": True}})
    assert weights == [2.0] and f(completions=["A"], solution=["<answer>A,B</answer>"]) == [0.5]
    with pytest.raises(ValueError, match="allowed: source_extraction, strict_decimals"):
        build_rewards({"soft_choice": {"mc_mode": "soft"}})
    (f,), _ = build_rewards({"accuracy": {"mc_mode": "soft"}})
    assert f(completions=[respond("A")], solution=["<answer>A,B</answer>"], problem_type=["multiple choice"]) \
        == [0.5]
    with pytest.raises(ValueError, match="exact, tolerant or soft"):
        acc(respond("A"), "A", "multiple choice", mc_mode="fuzzy")


def test_register_reward():
    def brevity(completions, max_chars=100, **kwargs):
        return [float(len(completion_text(c)) <= max_chars) for c in completions]

    register_reward("brevity_test", brevity, options=("max_chars",))
    try:
        (f,), _ = build_rewards({"brevity_test": {"max_chars": 3}})
        assert isinstance(f, NamedReward) and f(completions=["abc", "abcd"]) == [1.0, 0.0]
        with pytest.raises(ValueError, match="already registered"):
            register_reward("brevity_test", brevity)
    finally:
        REWARDS.pop("brevity_test", None)
