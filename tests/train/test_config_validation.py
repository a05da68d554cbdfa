"""One validation pass over the resolved options (YAML files, `base:` chains, flags) against the config
dataclasses' types and ranges, before any expensive work (issue 10, cases 3 and 4). Fast: nothing trains."""

from __future__ import annotations

import json
import math
import typing
from dataclasses import fields
from pathlib import Path

import pytest
from expensive_guard import (
    ReachedMediaCheck,
    forbid_expensive_work,
    reach_media_check,
    write_data,
    write_fake_checkpoint,
)

from videoktr.cli import main
from videoktr.train.config import NON_EMPTY, RANGES, SECTIONS, ConfigError, TrainConfig, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture
def no_expensive_work(monkeypatch):
    forbid_expensive_work(monkeypatch)


def _yaml(tmp_path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _train(tmp_path, *argv: str) -> int:
    return main(["train", "--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), *argv])


# --- case 3: YAML values are type-checked ---------------------------------------------------------------------

def test_yaml_1e5_is_a_float(tmp_path):
    """PyYAML (YAML 1.1) reads `1e-5` as the string '1e-5': it is converted, not passed to AdamW as a string."""
    import yaml

    path = _yaml(tmp_path, "rl:\n  learning_rate: 1e-5\n  temperature: 1\n")
    assert yaml.safe_load(path.read_text())["rl"]["learning_rate"] == "1e-5"
    config = load_config(path)
    assert config.rl.learning_rate == 1e-5 and type(config.rl.learning_rate) is float
    assert config.rl.temperature == 1.0 and type(config.rl.temperature) is float  # an int for a float is fine
    assert config.to_dict()["rl"]["learning_rate"] == 1e-5


def test_config_json_records_converted_values(tmp_path, monkeypatch, capsys):
    """The run gets past every check and writes config.json with the float, not the string YAML gave."""
    reach_media_check(monkeypatch)
    data, media = write_data(tmp_path / "data")
    model = write_fake_checkpoint(tmp_path / "model")
    path = _yaml(tmp_path, "rl:\n  learning_rate: 1e-5\n  max_steps: 3\n")
    with pytest.raises(ReachedMediaCheck):
        _train(tmp_path, "--config", str(path), "--data", str(data), "--data-root", str(media), "--model", str(model))
    recorded = json.loads((tmp_path / "out" / "config.json").read_text())
    assert recorded["rl"]["learning_rate"] == 1e-5 and isinstance(recorded["rl"]["learning_rate"], float)


@pytest.mark.parametrize("text,expected", [
    ("rl:\n  max_steps: five\n", "rl.max_steps must be an integer >= 1"),
    ('rl:\n  max_steps: "five"\n', "rl.max_steps must be an integer >= 1"),
    ("rl:\n  max_steps: 1.7\n", "got 1.7 (a float)"),
    ("rl:\n  max_steps: 5.0\n", "rl.max_steps must be an integer"),
    ("rl:\n  learning_rate: fast\n", "rl.learning_rate must be a number > 0, got 'fast' (a string)"),
    ("rl:\n  learning_rate: .nan\n", "rl.learning_rate must be a finite number > 0, got nan"),
    ("rl:\n  learning_rate: -1e-5\n", "rl.learning_rate must be a finite number > 0, got -1e-05"),
    ("rl:\n  beta: .inf\n", "rl.beta must be a finite number >= 0 (0 = no KL term), got inf"),
    ("rl:\n  temperature: 0\n", "rl.temperature must be a finite number > 0"),
    ("rl:\n  top_p: 1.5\n", "rl.top_p must be in (0, 1], got 1.5"),
    ("rl:\n  epsilon: -0.1\n", "rl.epsilon must be in [0, 1], got -0.1"),
    ("rl:\n  num_generations: 1\n", "rl.num_generations must be >= 2"),
    ("rl:\n  use_vllm: 'yes'\n", "rl.use_vllm must be true or false, got 'yes' (a string)"),
    ("rl:\n  use_vllm: 1\n", "rl.use_vllm must be true or false, got 1 (an integer)"),
    ("rl:\n  reward_weights: 1.0\n", "rl.reward_weights must be a list of numbers, got 1.0 (a float)"),
    ("rl:\n  reward_weights: [1.0, heavy]\n", "rl.reward_weights[1] must be a number >= 0, got 'heavy'"),
    ("rl:\n  reward_weights: [1.0, -1.0]\n", "rl.reward_weights[1] must be a finite number >= 0, got -1.0"),
    ("rl:\n  method: 3\n", "rl.method must be a string, got 3 (an integer)"),
    ("rl:\n  method: ppo\n", "rl.method must be one of"),
    ("ktr:\n  signals: visual\n", "ktr.signals must be a list of strings, got 'visual' (a string)"),
    ("ktr:\n  signals: [visual, 2]\n", "ktr.signals[1] must be a string, got 2 (an integer)"),
    ("ktr:\n  ratio: 0\n", "ktr.ratio must be in (0, 1], got 0.0"),
    ("ktr:\n  signed: true\n  distance: kl\n", "ktr.signed: a signed score applies only to ktr.distance 'logprob'"),
    ("data:\n  fps: 0\n", "data.fps must be a finite number > 0, got 0.0"),
    ("data:\n  min_frames: 8\n  max_frames: 4\n", "data.min_frames (8) must be <= data.max_frames (4)"),
    ("data:\n  max_frames: 7\n", "data.max_frames must be even"),
    ("data:\n  min_pixels: 5000\n  max_pixels: 4000\n", "data.min_pixels (5000) must be <= data.max_pixels (4000)"),
    ("model:\n  model:\n", "model.model must be a string, got nothing (null: an empty value in YAML)"),
    ("run:\n  save_steps: 0\n", "run.save_steps must be >= 1, got 0"),
    ("run:\n  seed: -1\n", "run.seed must be in [0, 4294967295]"),
    ("run:\n  save_total_limit: -1\n", "run.save_total_limit must be >= 0 (0 = keep every checkpoint), got -1"),
])
def test_bad_yaml_value_is_named_before_any_work(tmp_path, capsys, no_expensive_work, text, expected):
    path = _yaml(tmp_path, text)
    assert _train(tmp_path, "--config", str(path)) == 2
    err = capsys.readouterr().err
    assert f"error: {path}: " in err and expected in err, err  # the file, section.key, expected type, value given
    assert "Traceback" not in err


def test_error_names_the_file_of_a_base_chain(tmp_path, capsys, no_expensive_work):
    """The value comes from the `base:` file: that file is named, not the one given on the command line."""
    base = _yaml(tmp_path, "rl:\n  max_steps: 1.7\n", "base.yaml")
    child = _yaml(tmp_path, "base: base.yaml\nrl:\n  method: grpo\n", "child.yaml")
    assert _train(tmp_path, "--config", str(child)) == 2
    err = capsys.readouterr().err
    assert f"{base}: rl.max_steps must be an integer" in err and "got 1.7" in err
    # the child overriding the base's value fixes it; a flag overriding a file's value is named as the flag
    fixed = _yaml(tmp_path, "base: base.yaml\nrl:\n  max_steps: 2\n", "fixed.yaml")
    assert load_config(fixed).rl.max_steps == 2
    with pytest.raises(ConfigError, match="^--learning-rate: rl.learning_rate must be"):
        load_config(fixed, {"learning_rate": 0.0})


def test_values_set_in_code_are_checked_and_converted():
    config = TrainConfig()
    config.rl.learning_rate = "2e-6"
    config.validate()
    assert config.rl.learning_rate == 2e-6 and type(config.rl.learning_rate) is float
    config.rl.max_steps = "5"  # never a string for an int: a YAML user who quotes a number meant something else
    with pytest.raises(ConfigError, match=r"^rl.max_steps must be an integer >= 1 .*got '5' \(a string\)"):
        config.validate()


def test_every_numeric_option_has_a_range_and_the_defaults_pass():
    TrainConfig().validate()
    numeric = set()
    for name, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            kind = hints[f.name]
            item = typing.get_args(kind)[0] if typing.get_origin(kind) is list else kind
            if item in (int, float):
                numeric.add(f"{name}.{f.name}")
    assert numeric == set(RANGES), (numeric ^ set(RANGES))
    for key, allowed in RANGES.items():
        for value in (math.nan, math.inf, -math.inf):
            assert value not in allowed, key
    assert all(k.split(".")[0] in SECTIONS for k in NON_EMPTY)
    with pytest.raises(ConfigError, match="run.output_dir must not be empty"):
        load_config(None, {"output_dir": " "})


def test_recipes_still_load_with_floats():
    for path in sorted(CONFIGS.glob("*.yaml")):
        config = load_config(path)
        assert type(config.rl.learning_rate) is float and all(type(w) is float for w in config.rl.reward_weights)


# --- case 4: --max-steps 0 and -1 are refused -------------------------------------------------------------------

@pytest.mark.parametrize("steps", ["0", "-1"])
def test_max_steps_below_one_is_refused(tmp_path, capsys, no_expensive_work, steps):
    """0 trained one step and exited 0; -1 trained TRL's default 3 epochs."""
    assert _train(tmp_path, "--max-steps", steps) == 2
    err = capsys.readouterr().err
    assert "error: --max-steps: rl.max_steps must be >= 1" in err and err.rstrip().endswith(f"got {steps}")
    assert not (tmp_path / "out").exists()


def test_max_steps_below_one_in_yaml_is_refused(tmp_path, capsys, no_expensive_work):
    path = _yaml(tmp_path, "rl:\n  max_steps: 0\n")
    assert _train(tmp_path, "--config", str(path)) == 2
    assert f"{path}: rl.max_steps must be >= 1" in capsys.readouterr().err


def test_a_misspelled_option_or_section_suggests_the_closest_name(tmp_path, capsys, no_expensive_work):
    """Issue 20 item 12: a misspelled key listed all 32 valid keys of its section but suggested none."""
    path = _yaml(tmp_path, "rl:\n  learnig_rate: 1.0e-5\n")
    assert _train(tmp_path, "--config", str(path)) == 2
    err = capsys.readouterr().err
    assert "unknown option(s) ['learnig_rate'] in section 'rl'; did you mean learning_rate?" in err
    path = _yaml(tmp_path, "rl:\n  learnig_rate: 1.0e-5\n  max_step: 3\n")
    with pytest.raises(ConfigError, match=r"did you mean learnig_rate -> learning_rate, max_step -> max_steps\?"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"\['ratio'\] in section 'rl' \(ratio belongs in section 'ktr'\)"):
        load_config(_yaml(tmp_path, "rl:\n  ratio: 0.3\n"))
    with pytest.raises(ConfigError, match=r"unknown section\(s\) \['modle'\]; did you mean model\?"):
        load_config(_yaml(tmp_path, "modle:\n  dtype: float32\n"))
    with pytest.raises(ConfigError, match=r"unknown option 'max_step'; did you mean max_steps\?"):
        load_config(overrides={"max_step": 3})
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['zzz'\] in section 'rl'; known"):
        load_config(_yaml(tmp_path, "rl:\n  zzz: 1\n"))  # nothing close: no suggestion
