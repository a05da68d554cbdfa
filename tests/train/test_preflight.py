"""Cheap checks come before expensive work (issue 10, case 6): `train.preflight.preflight`, called first in
`run()`, refuses a bad scheduler, the wrong number of reward weights, a temperature of 0, a model path that is
not a supported checkpoint, an output directory that is a file and missing data before the synthetic world,
the start-up media check or the model load. Fast: nothing trains and no weights are read."""

from __future__ import annotations

import pytest
from expensive_guard import (
    ReachedMediaCheck,
    forbid_expensive_work,
    reach_media_check,
    write_data,
    write_fake_checkpoint,
)

from videoktr.cli import main
from videoktr.train.config import ConfigError, load_config


@pytest.fixture
def no_expensive_work(monkeypatch):
    forbid_expensive_work(monkeypatch)


@pytest.fixture
def data(tmp_path):
    return write_data(tmp_path / "data")


def _train(tmp_path, *argv: str) -> int:
    return main(["train", "--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), *argv])


def _data_run(tmp_path, data, model, *argv: str) -> int:
    rows, media = data
    return _train(tmp_path, "--data", str(rows), "--data-root", str(media), "--model", str(model), *argv)


@pytest.mark.parametrize("argv,expected", [
    (["--lr-scheduler-type", "cosinus"], ("--lr-scheduler-type: rl.lr_scheduler_type must be one of ['linear', "
                                          "'cosine', ")),
    (["--lr-scheduler-type", "warmup_stable_decay"], ("rl.lr_scheduler_type 'warmup_stable_decay' cannot be used: "
                                                      "it needs options videoktr does not pass")),
    (["--lr-scheduler-type", "reduce_lr_on_plateau"], "it needs an evaluation strategy"),
    (["--reward-weights", "1.0"], ("--reward-weights: rl.reward_weights must have 2 values, one per reward "
                                   "(accuracy, format")),
    (["--reward-weights", "1.0", "0.5", "1.0"], "got 3: [1.0, 0.5, 1.0]"),
    (["--temperature", "0"], "--temperature: rl.temperature must be a finite number > 0"),
])
def test_bad_option_on_the_synthetic_world(tmp_path, capsys, no_expensive_work, argv, expected):
    assert _train(tmp_path, *argv) == 2
    err = capsys.readouterr().err
    assert expected in err, err


@pytest.mark.parametrize("argv,expected", [
    (["--lr-scheduler-type", "cosinus"], "rl.lr_scheduler_type must be one of"),
    (["--reward-weights", "1.0", "1.0", "1.0"], "rl.reward_weights must have 2 values"),
    (["--temperature", "0"], "rl.temperature must be a finite number > 0"),
])
def test_bad_option_on_data_before_the_media_check(tmp_path, capsys, no_expensive_work, data, argv, expected):
    model = write_fake_checkpoint(tmp_path / "model")
    assert _data_run(tmp_path, data, model, *argv) == 2
    assert expected in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["missing", "no_config", "llama", "no_weights", "file", "bad_json"])
def test_model_that_is_not_a_supported_checkpoint(tmp_path, capsys, no_expensive_work, data, kind):
    model = tmp_path / "model"
    expected = {
        "missing": f"--model: model.model {str(model)!r}: model directory does not exist",
        "no_config": f"--model: model.model {str(model)!r} is not a model checkpoint: it has no config.json",
        "llama": f"--model: model.model {str(model)!r} holds an unsupported architecture (config.json model_type "
                 f"'llama'); videoktr trains qwen2_5_vl (Qwen2.5-VL), qwen2_vl (Qwen2-VL), qwen3_vl (Qwen3-VL)",
        "no_weights": f"--model: model.model {str(model)!r} has a config.json but no weights",
        "file": f"--model: model.model {str(model)!r}: model directory is a file, not a directory",
        "bad_json": "config.json cannot be read as JSON",
    }[kind]
    if kind == "no_config":
        model.mkdir()
    elif kind == "llama":
        write_fake_checkpoint(model, model_type="llama")
    elif kind == "no_weights":
        write_fake_checkpoint(model, weights=False)
    elif kind == "file":
        model.write_text("x")
    elif kind == "bad_json":
        write_fake_checkpoint(model)
        (model / "config.json").write_text("{model_type: qwen2_5_vl")
    assert _data_run(tmp_path, data, model) == 2
    assert expected in capsys.readouterr().err
    # the same on the synthetic world with --model: refused before the world is generated
    assert _train(tmp_path, "--model", str(model)) == 2
    assert expected in capsys.readouterr().err


def test_missing_data_file_and_media_root(tmp_path, capsys, no_expensive_work, data):
    rows, media = data
    model = write_fake_checkpoint(tmp_path / "model")
    missing = tmp_path / "nope.jsonl"
    assert _train(tmp_path, "--data", str(missing), "--data-root", str(media), "--model", str(model)) == 2
    assert f"--data: data.data {str(missing)!r}: training data file not found" in capsys.readouterr().err
    assert _train(tmp_path, "--data", str(rows), "--data-root", str(tmp_path / "nomedia"), "--model", str(model)) == 2
    assert f"data.data_root {str(tmp_path / 'nomedia')!r}: media directory not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["output_dir", "under_a_file", "cache_dir"])
def test_output_directory_that_is_a_file(tmp_path, capsys, no_expensive_work, where):
    blocker = tmp_path / "taken"
    blocker.write_text("not a directory")
    if where == "cache_dir":
        argv = ["--output-dir", str(tmp_path / "out"), "--cache-dir", str(blocker)]
        expected = f"--cache-dir: run.cache_dir {str(blocker)!r} is a file, not a directory"
    elif where == "output_dir":
        argv = ["--output-dir", str(blocker)]
        expected = f"--output-dir: run.output_dir {str(blocker)!r} is a file, not a directory"
    else:
        argv = ["--output-dir", str(blocker / "run")]
        expected = f"run.output_dir {str(blocker / 'run')!r} cannot be created: {str(blocker)!r} is a file"
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_run_itself_runs_the_preflight(tmp_path, no_expensive_work):
    """Callers of `run()` other than the CLI get the same checks (the world's default run goes through
    `videoktr.train.run.run`)."""
    from videoktr.world.run import run

    config = load_config(None, {"output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache")})
    config.rl.lr_scheduler_type = "cosinus"
    with pytest.raises(ConfigError, match="rl.lr_scheduler_type must be one of"):
        run(config)
    config.rl.lr_scheduler_type = "cosine"
    config.rl.temperature = 0
    with pytest.raises(ConfigError, match="rl.temperature must be a finite number > 0"):
        run(config)


def test_a_real_checkpoint_passes(tmp_path, monkeypatch, tiny_dir, data):
    """A model directory written by `videoktr init-model` and the paper's schedule pass every check: the run
    gets as far as the media check."""
    reach_media_check(monkeypatch)
    with pytest.raises(ReachedMediaCheck):
        _data_run(tmp_path, data, tiny_dir, "--lr-scheduler-type", "cosine", "--warmup-steps", "2")


@pytest.mark.parametrize("text,what", [("", "it is empty"), ("\n  \n", "it is empty"), ("[]\n", "an empty JSON list")])
def test_an_empty_data_file_is_named_before_any_work(tmp_path, capsys, no_expensive_work, data, text, what):
    """Issue 20 item 12: an empty data file ended in "no trainable rows left (see .../skipped.jsonl)", an empty
    file, after the run directory was set up."""
    rows, media = data
    rows.write_text(text)
    model = write_fake_checkpoint(tmp_path / "model")
    assert _data_run(tmp_path, (rows, media), model) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: --data: data.data {str(rows)!r}: the training data file holds no rows ({what})"
    assert not (tmp_path / "out").exists()


def test_vllm_rollouts_with_transformers_positions_are_refused(tmp_path, capsys, no_expensive_work):
    """vLLM computes Qwen's 3D positions: rollouts sampled there and trained under transformers' scheme would
    disagree on every long clip (issue 22). Refused at start, exit 2, naming the option, nothing loaded."""
    assert _train(tmp_path, "--use-vllm", "--rope-positions", "transformers") == 2
    err = capsys.readouterr().err
    assert "--rope-positions: model.rope_positions 'transformers' cannot be used with vLLM rollouts" in err, err
    assert "Traceback" not in err
    yaml = tmp_path / "x.yaml"
    yaml.write_text("model:\n  rope_positions: transformers\nrl:\n  use_vllm: true\n")
    assert _train(tmp_path, "--config", str(yaml)) == 2
    assert f"{yaml}: model.rope_positions 'transformers' cannot be used with vLLM" in capsys.readouterr().err
    config = load_config(overrides={"use_vllm": True})
    config.validate()  # Qwen's scheme with vLLM is fine
