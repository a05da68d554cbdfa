"""User errors are one line on stderr and exit code 2, not a traceback with exit code 1 (issue 10, case 5): a YAML
syntax error names the file, line and column; an output directory that is a file names the path, in `train` and
in `eval`. Bugs keep their traceback. Fast: nothing trains."""

from __future__ import annotations

from pathlib import Path

import pytest
from expensive_guard import forbid_expensive_work

from videoktr import cli
from videoktr.cli import main

FIXTURES = Path(__file__).parent / "eval" / "fixtures"


@pytest.fixture
def no_expensive_work(monkeypatch):
    forbid_expensive_work(monkeypatch)


@pytest.mark.parametrize("text,line,column,problem", [
    ("rl:\n  max_steps: 5\n\tlearning_rate: 1e-5\n", 3, 1, "found character '\\t' that cannot start any token"),
    ("rl:\n  reward_weights: [1.0, 0.5\nrun:\n  seed: 1\n", 3, 4, "expected ',' or ']'"),
    ("rl:\n  method: grpo\n max_steps: 3\n", 3, 2, "expected <block end>, but found '<block mapping start>'"),
])
def test_yaml_syntax_error_names_file_line_and_column(tmp_path, capsys, no_expensive_work, text, line, column,
                                                      problem):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    assert main(["train", "--config", str(path), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: invalid YAML at line {line}, column {column}: {problem}"), err
    assert "<unicode string>" not in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_yaml_syntax_error_in_a_base_file_names_that_file(tmp_path, capsys, no_expensive_work):
    base = tmp_path / "base.yaml"
    base.write_text("rl: [\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\n")
    assert main(["train", "--config", str(child), "--output-dir", str(tmp_path / "out")]) == 2
    assert f"error: {base}: invalid YAML at line 2, column 1" in capsys.readouterr().err


def test_train_output_dir_that_is_a_file(tmp_path, capsys, no_expensive_work):
    taken = tmp_path / "taken"
    taken.write_text("x")
    assert main(["train", "--output-dir", str(taken), "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert f"run.output_dir {str(taken)!r} is a file, not a directory" in err and "Traceback" not in err
    assert taken.read_text() == "x"


@pytest.mark.parametrize("exc", [FileExistsError(17, "File exists", "runs/x"),
                                 NotADirectoryError(20, "Not a directory", "runs/x/checkpoint-2")])
def test_train_maps_a_file_in_the_way_to_exit_2(monkeypatch, capsys, exc):
    """If a path error still comes from deeper down (a file created during the run), it is exit 2 naming it."""
    def train(config):
        raise exc

    monkeypatch.setattr(cli, "train", train)
    assert main(["train"]) == 2
    err = capsys.readouterr().err
    assert f"error: {exc.filename!r}: {exc.strerror}" in err


def test_train_keeps_tracebacks_for_bugs(monkeypatch):
    def train(config):
        raise KeyError("a bug in videoktr")

    monkeypatch.setattr(cli, "train", train)
    with pytest.raises(KeyError, match="a bug in videoktr"):
        main(["train"])


def test_user_error_message_of_other_errors():
    assert cli.user_error_message(ValueError("bad option")) == "bad option"


@pytest.mark.parametrize("nested", [False, True])
def test_eval_output_dir_that_is_a_file(tmp_path, capsys, nested):
    taken = tmp_path / "taken"
    taken.write_text("x")
    out = taken / "sub" if nested else taken
    code = main(["eval", "--benchmark", "video_holmes", "--questions", str(FIXTURES / "holmes_mini.json"),
                 "--predictions", str(FIXTURES / "holmes_mini_predictions.jsonl"), "--output-dir", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    expected = (f"--output-dir {str(out)!r} cannot be created: {str(taken)!r} is a file" if nested
                else f"--output-dir {str(out)!r} is a file, not a directory")
    assert expected in err and "Traceback" not in err


def test_version(capsys):
    """Issue 20 item 12: `videoktr --version` did not exist."""
    import tomllib

    import videoktr

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert capsys.readouterr().out.strip() == f"videoktr {videoktr.__version__}" == f"videoktr {project['version']}"


def test_a_negative_number_after_a_flag_is_its_value(tmp_path, capsys, no_expensive_work):
    """Issue 20 item 12: `--learning-rate -1e-5` (with a space) printed a 70-line usage dump ending in "expected
    one argument"; argparse takes -1e-5 for an option. It is the flag's value, and the range check answers."""
    assert main(["train", "--learning-rate", "-1e-5", "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: --learning-rate: rl.learning_rate must be a finite number > 0, got -1e-05"
    assert cli.attach_negative_values(["train", "--beta", "-inf", "--max-steps", "-5", "--reward-weights", "1",
                                       "-2e-1"]) == ["train", "--beta=-inf", "--max-steps", "-5",
                                                     "--reward-weights", "1", "-2e-1"]


def test_a_train_usage_error_is_short(capsys):
    """Any other argparse error of `train` printed the usage of every option (70 lines) before it."""
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--max-steps", "x"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[-1] == "videoktr train: error: argument --max-steps: invalid int value: 'x'"
