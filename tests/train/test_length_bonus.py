"""rl.length_bonus: Video-R1's length bonus from a config (validated, built into a data run's rewards, refused
on the synthetic world). Fast: nothing trains."""

from __future__ import annotations

import pytest

from videoktr.rewards import build_rewards, length_bonus
from videoktr.train.config import load_config

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers: gradient_checkpointing


@pytest.mark.parametrize("overrides,message", [
    ({"length_bonus": -0.1}, r"rl.length_bonus must be a finite number >= 0 \(0 = off\), got -0.1"),
    ({"length_bonus": float("nan")}, r"rl.length_bonus must be a finite number >= 0"),
    ({"length_bonus": float("inf")}, r"rl.length_bonus must be a finite number >= 0"),
    ({"length_bonus_min_tokens": -1}, r"rl.length_bonus_min_tokens must be >= 0, got -1"),
    ({"length_bonus_min_tokens": 600}, r"rl.length_bonus_min_tokens \(600\) must be <= "
                                       r"rl.length_bonus_max_tokens \(512\)"),
    ({"length_bonus_min_tokens": 100, "length_bonus_max_tokens": 99},
     r"rl.length_bonus_min_tokens \(100\) must be <= rl.length_bonus_max_tokens \(99\)"),
])
def test_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, overrides)


def test_defaults_off_and_flags():
    from videoktr.cli import build_parser

    config = load_config()
    assert (config.rl.length_bonus, config.rl.length_bonus_min_tokens, config.rl.length_bonus_max_tokens) == \
        (0.0, 320, 512)
    load_config(None, {"length_bonus_min_tokens": 400, "length_bonus_max_tokens": 400})  # a one-length window
    args = build_parser().parse_args(["train", "--length-bonus", "0.2", "--length-bonus-min-tokens", "300"])
    assert (args.length_bonus, args.length_bonus_min_tokens) == (0.2, 300)


def test_data_run_rewards(tmp_path):
    from videoktr.train.build import grpo_args
    from videoktr.train.run import dataset_rewards

    off = load_config(None, {"output_dir": str(tmp_path)})
    funcs, weights = build_rewards(dataset_rewards(off))
    assert [f.__name__ for f in funcs] == ["accuracy", "format"] and weights == [1.0, 0.5]
    assert grpo_args(off, []).reward_weights == weights

    on = load_config(None, {"output_dir": str(tmp_path), "length_bonus": 0.2, "length_bonus_min_tokens": 3,
                            "length_bonus_max_tokens": 5, "num_generations": 4})
    funcs, weights = build_rewards(dataset_rewards(on))
    assert [f.__name__ for f in funcs] == ["accuracy", "format", "length_bonus"] and weights == [1.0, 0.5, 1.0]
    bonus = funcs[2]
    assert bonus.func is length_bonus
    assert bonus.options == {"bonus": 0.2, "min_tokens": 3, "max_tokens": 5, "group_size": 4}
    assert grpo_args(on, []).reward_weights == weights  # TRL needs one weight per reward function

    # as TRL calls it: one group of 4 responses, 2 correct (Video-R1 rewards length only when > 1 is correct)
    right, wrong = "<think>x</think><answer>B</answer>", "<think>x</think><answer>C</answer>"
    completions = [[{"role": "assistant", "content": c}] for c in (right, right, right, wrong)]
    values = bonus(completions, solution=["<answer>B</answer>"] * 4, problem_type=["multiple choice"] * 4,
                   completion_ids=[[0] * 4, [0] * 6, [0] * 3, [0] * 4])
    assert values == [0.2, 0.0, 0.2, 0.0]  # lengths 4, 6 (too long), 3; the wrong answer earns nothing
    lonely = bonus(completions[2:] + [completions[3]] * 2, solution=["<answer>B</answer>"] * 4,
                   problem_type=["multiple choice"] * 4, completion_ids=[[0] * 4] * 4)
    assert lonely == [0.0] * 4  # one correct response in its group: no bonus


def test_synthetic_world_refuses_length_bonus(tmp_path):
    from videoktr.world.run import run_synthetic

    config = load_config(None, {"output_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache"),
                                "length_bonus": 0.2})
    with pytest.raises(ValueError, match=r"rl.length_bonus=0.2 applies to runs on Video-R1 data"):
        run_synthetic(config)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()  # refused before any work
