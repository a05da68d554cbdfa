"""The rollout log (train/rollout_log.py): what a logged step writes is what the step trained with, nothing is written
on other steps, and the reader (analysis/rollouts.py) returns it in the explanation page's record shape."""

from __future__ import annotations

import math

import pytest
import torch
from builders import clip_rows, length_reward, make_trainer

from videoktr.analysis.rollouts import NoRollouts, load_rollouts, rollout_steps
from videoktr.attribution import Attribution, SelectionOptions, select_key_tokens
from videoktr.train.rollout_log import RolloutLog, RolloutLogOptions, pick_rows, token_strings

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _train(tiny_dir, tmp_path, method, steps, every, max_responses):
    trainer = make_trainer(tiny_dir, clip_rows(tmp_path, 0, n=4), tmp_path, method=method, max_steps=steps)
    trainer.rollout_log = trainer._make_rollout_log(RolloutLogOptions(every=every, max_responses=max_responses))
    trainer.train()
    return trainer, tmp_path / "out"


def test_a_logged_step_records_what_the_step_trained_with(tiny_dir, tmp_path):
    trainer, run = _train(tiny_dir, tmp_path, "ktr", steps=2, every=1, max_responses=0)
    tok = trainer.processing_class.tokenizer
    assert rollout_steps(run) == [1, 2]
    records = load_rollouts(run)
    assert len(records) == 2 * 8 and {r["step"] for r in records} == {1, 2}
    attributed = [r for r in records if r["attributed"]]
    assert attributed, "the length reward gives non-zero advantages"
    for r in records:
        ids = r["token_ids"]
        assert "".join(r["tokens"]) == tok.decode(ids, skip_special_tokens=False) == r["response"]
        assert r["question"] == "Which colour appeared first?" and len(r["videos"]) == 1
        assert r["prompt_length"] == len(r["prompt_ids"]) and r["method"] == "ktr" and r["ratio"] == 0.2
        text = tok.decode(ids, skip_special_tokens=True)
        assert r["reward"] == length_reward([[{"content": text}]])[0] == r["rewards_per_func"][0]
        # zero-advantage responses are not attributed (exact here: response scope, beta 0)
        assert r["attributed"] == (r["advantage"] != 0)
        if not r["attributed"]:
            assert r["scores"]["visual"] is None and r["selected"]["union"] is None
            assert r["weights"] == [0.0] * len(ids)
            continue
        n = len(ids)
        # the weights the loss used are the union of the logged selections
        assert r["weights"] == [float(u) for u in r["selected"]["union"]]
        assert r["selected"]["union"] == [any(r["selected"][s][t] for s in ("visual", "temporal", "entropy"))
                                          for t in range(n)]
        # the logged scores reproduce the logged selections
        att = Attribution({s: torch.tensor([r["scores"][s]]) for s in ("visual", "temporal", "entropy")},
                          {s: torch.ones(1, n, dtype=torch.bool) for s in ("visual", "temporal", "entropy")},
                          torch.tensor([r["logp"]["full"]]), None, 0.0)
        _, masks, _ = select_key_tokens(att, SelectionOptions(ratio=0.2))
        for s in ("visual", "temporal", "entropy"):
            assert masks[s][0].tolist() == r["selected"][s]
            assert sum(r["selected"][s]) == math.ceil(0.2 * n)
        # a score is the log-probability shift under its perturbation
        for s in ("visual", "temporal"):
            shift = [abs(a - b) for a, b in zip(r["logp"]["full"], r["logp"][s])]
            assert shift == pytest.approx(r["scores"][s], abs=1e-5)
        assert sorted(r["permutation"]) == list(range(len(r["permutation"])))
        assert r["settings"]["signals"] == ["visual", "temporal", "entropy"] and r["settings"]["world_size"] == 1
    for (step, group) in {(r["step"], r["prompt_group"]) for r in records}:  # advantages are group-relative
        rows = [r for r in records if (r["step"], r["prompt_group"]) == (step, group)]
        mean = sum(r["reward"] for r in rows) / len(rows)
        assert all((r["advantage"] > 0) == (r["reward"] > mean + 1e-9) for r in rows)
    assert "rollout_log_seconds" in trainer.state.log_history[0]


def test_grpo_logs_what_exists_and_keeps_whole_groups(tiny_dir, tmp_path):
    _, run = _train(tiny_dir, tmp_path, "grpo", steps=1, every=1, max_responses=5)
    records = load_rollouts(run, step=1)
    assert len(records) == 4 and len({r["prompt_group"] for r in records}) == 1  # one whole group of G = 4
    for r in records:
        assert not r["attributed"] and r["weights"] is None and r["ratio"] is None
        assert all(v is None for v in r["scores"].values()) and all(v is None for v in r["selected"].values())
        assert r["reward"] is not None and isinstance(r["advantage"], float)
    with pytest.raises(NoRollouts, match="step 7 was not logged; logged steps: 1"):
        load_rollouts(run, step=7)


def test_nothing_is_written_when_off(tiny_dir, tmp_path):
    trainer = make_trainer(tiny_dir, clip_rows(tmp_path, 0, n=4), tmp_path, method="ktr", max_steps=1)
    assert trainer.rollout_log is None  # the default of a trainer built without rollout_log
    trainer.train()
    assert not (tmp_path / "out" / "rollouts").exists()
    with pytest.raises(NoRollouts, match="log_rollouts_every"):
        load_rollouts(tmp_path / "out")


def test_due_steps_follow_every_n_whatever_the_generation_interval(tmp_path):
    log = RolloutLog(tmp_path, RolloutLogOptions(every=10), tokenizer=None)
    logged = []
    for step in range(1, 40, 3):  # a run that generates every 3 steps (num_iterations 3)
        if log.due(step):
            logged.append(step)
            log.last_step = step
    assert logged == [10, 22, 31]
    off = RolloutLog(tmp_path, RolloutLogOptions(every=0), tokenizer=None)
    assert not any(off.due(s) for s in range(1, 50))


def test_pick_rows_takes_whole_prompt_groups():
    groups = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert pick_rows(groups, 0) == list(range(9))
    assert pick_rows(groups, 7) == [0, 1, 2, 3, 4, 5]
    assert pick_rows(groups, 2) == [0, 1, 2]  # at least one group


def test_token_strings_concatenate_to_the_text(tiny):
    _, processor = tiny
    tok = processor.tokenizer
    text = "<think>first red 中文 é</think><answer>3</answer><|im_end|>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = token_strings(tok, ids)
    assert "".join(pieces) == tok.decode(ids, skip_special_tokens=False) == text
    assert pieces[0] == "<think>" and pieces[-1] == "<|im_end|>"
    # a character split over byte tokens belongs to the token that completes it
    assert "中" in pieces and "" in pieces


def test_a_distance_score_still_logs_the_perturbed_logprobs(tiny_dir, tmp_path):
    """With a full-distribution distance (RQ5) the score is not a log-prob shift, but the log keeps the perturbed
    log-probs next to it (the trainer asks attribution for them on logged steps only)."""
    trainer = make_trainer(tiny_dir, clip_rows(tmp_path, 0, n=4), tmp_path, method="ktr", max_steps=1)
    trainer.attribution_options.distance = "jsd"
    trainer.rollout_log = trainer._make_rollout_log(RolloutLogOptions(every=1, max_responses=0))
    trainer.train()
    attributed = [r for r in load_rollouts(tmp_path / "out") if r["attributed"]]
    assert attributed
    for r in attributed:
        for s in ("visual", "temporal"):
            assert r["logp"][s] is not None and len(r["logp"][s]) == len(r["token_ids"])
            shift = [abs(a - b) for a, b in zip(r["logp"]["full"], r["logp"][s])]
            assert shift != pytest.approx(r["scores"][s], abs=1e-6)  # the score is the JSD, not the shift
