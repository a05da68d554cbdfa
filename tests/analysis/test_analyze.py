"""`videoktr analyze` on a short run of the tiny model on the synthetic world: every figure is written, each with sane
content; a run directory without a rollout log is a clear error (exit 2)."""

from __future__ import annotations

import json
import math

import pytest

from videoktr.analysis.analyze import FIGURES
from videoktr.analysis.pos import WORLD_ROLES
from videoktr.analysis.rollouts import load_rollouts
from videoktr.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning")]


@pytest.fixture(scope="module")
def run(tiny_dir, tmp_path_factory):
    """Three Video-KTR steps on a small synthetic world, rollouts logged at every step. The random tiny model never
    answers right, so the accuracy reward is replaced by one that varies with the response's length (non-zero
    advantages, so that the trainer attributes and selects)."""
    import videoktr.world as synthetic

    def accuracy_reward(completions, solution=None, **kwargs):
        from videoktr.rewards import completion_text

        return [float(len(completion_text(c)) % 2) for c in completions]

    tmp = tmp_path_factory.mktemp("analyze")
    out = tmp / "run"
    mp = pytest.MonkeyPatch()
    mp.setattr(synthetic, "accuracy_reward", accuracy_reward)
    try:
        code = main(["train", "--model", str(tiny_dir), "--world-train", "2", "--world-rl", "6", "--world-eval", "2",
                     "--no-eval-attribution", "--max-steps", "3", "--prompts-per-step", "2", "--num-generations", "4",
                     "--max-completion-length", "16", "--log-rollouts-every", "1", "--save-steps", "100",
                     "--cache-dir", str(tmp / "cache"), "--output-dir", str(out)])
    finally:
        mp.undo()
    assert code == 0
    return out


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _sums_to_one(shares: dict) -> bool:
    return math.isclose(sum(shares.values()), 1.0, rel_tol=1e-9)


def test_analyze_writes_every_figure_with_sane_content(run, capsys):
    assert main(["analyze", str(run)]) == 0
    printed = capsys.readouterr().out
    out = run / "analysis"
    for name in FIGURES:
        w, h = _png_size(out / f"{name}.png")
        assert w > 300 and h > 150, name
        assert name in printed
    tables = {name: json.loads((out / f"{name}.json").read_text()) for name in FIGURES}
    index = (out / "index.md").read_text()
    assert all(f"({name}.png)" in index for name in FIGURES) and "| ktr |" in index

    records = load_rollouts(run)
    attributed = [r for r in records if r["attributed"]]
    assert attributed and {r["step"] for r in records} == {1, 2, 3}
    n_tokens = sum(len(r["tokens"]) for r in attributed)

    pos = tables["pos"]
    if pos.get("available") is False:  # no tagger installed: the figure says what to install
        assert "pip install 'videoktr[pos]'" in pos["message"] and "en_core_web_sm" in pos["message"]
    else:
        assert all(_sums_to_one(t[side]) for t in pos.values() for side in ("selected", "unselected")
                   if t[f"n_{side}"])

    roles = tables["world_roles"]
    assert set(roles) == {"visual", "temporal", "entropy", "union"}
    for signal, t in roles.items():
        assert t["n_selected"] + t["n_unselected"] == n_tokens, signal  # every token of a video prompt counted
        for side in ("selected", "unselected"):
            assert _sums_to_one(t[side]), (signal, side)
            assert set(t[side]) <= set(WORLD_ROLES) | {"FORMAT", "SPACE"}

    overlap = tables["overlap"]
    assert overlap["tokens"] == n_tokens
    assert sum(c["tokens"] for c in overlap["combinations"]) == overlap["union"] <= n_tokens
    assert overlap["union"] == sum(sum(r["selected"]["union"]) for r in attributed)
    assert all(0 <= j <= 1 for j in overlap["jaccard"].values())

    freq = tables["frequencies"]
    assert freq["n_selected"] + freq["n_unselected"] == n_tokens
    assert sum(c for _, c, _ in freq["selected"]) <= freq["n_selected"] and freq["selected"][0][1] >= 1

    positions = tables["positions"]
    assert positions["total_tokens"] == sum(positions["tokens"]) == n_tokens  # the histogram covers every token
    assert sum(positions["updated"]) == overlap["union"]
    assert all(p is None or 0 <= p <= 1 for p in positions["probability"])

    grads = tables["gradients"]
    assert grads["steps"] and grads["model"].endswith("final")
    for step in grads["steps"]:
        for group in ("last_decoder_layer", "lm_head"):
            g = step[group]
            assert all(-1 <= g[k] <= 1 for k in ("cos_key_full", "cos_rest_full", "cos_key_rest"))
            assert g["norm_key"] > 0 and g["norm_rest"] > 0 and g["norm_full"] > 0
        assert step["loss_variance_masked"] >= 0 and step["loss_variance_unmasked"] >= 0

    cost = tables["cost"]["rows"][0]
    assert cost["method"] == "ktr" and cost["steps"] == 3 and cost["mean_step_seconds"] > 0
    assert cost["attribution_seconds_per_step"] > 0 and cost["rollout_log_seconds_per_logged_step"] > 0


def test_one_step_and_no_gradients(run, tmp_path):
    assert main(["analyze", str(run), "--step", "2", "--no-gradients", "--output-dir", str(tmp_path / "a")]) == 0
    grads = json.loads((tmp_path / "a" / "gradients.json").read_text())
    assert grads["available"] is False and "--no-gradients" in grads["message"]
    positions = json.loads((tmp_path / "a" / "positions.json").read_text())
    step2 = [r for r in load_rollouts(run, step=2) if r["attributed"]]
    assert positions["total_tokens"] == sum(len(r["tokens"]) for r in step2)


def test_a_run_without_rollouts_is_a_clear_error(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "missing")]) == 2
    assert str(tmp_path / "missing") in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["analyze", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "empty") in err and "--log-rollouts-every" in err


@pytest.mark.parametrize("record,run_key,flag,expected", [
    ("qwen", "transformers", None, "qwen"),  # the model directory's record wins over the run's config
    (None, "transformers", None, "transformers"),  # no record: the run's model.rope_positions
    (None, None, None, "transformers"),  # neither: a run from before the option trained with transformers'
    ("transformers", "qwen", "qwen", "qwen"),  # --rope-positions overrides both
])
def test_gradients_load_the_model_with_the_scheme_it_was_trained_with(run, tmp_path, monkeypatch, record, run_key,
                                                                      flag, expected):
    """The gradient figure re-runs the trained model with the 3D positions it trained with: the record in its
    directory's config.json (written by the run), else the run's config.json model.rope_positions, else
    transformers' (a run from before the option); --rope-positions overrides."""
    import shutil

    import videoktr.models.factory as factory
    from videoktr.models.positions import RECORD_KEY, recorded_scheme

    assert recorded_scheme(run / "final") == "qwen"  # what the run wrote
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("analysis"))
    config = json.loads((copy / "config.json").read_text())
    assert config["model"]["rope_positions"] == "qwen"  # what the run recorded
    if run_key is None:
        del config["model"]["rope_positions"]
    else:
        config["model"]["rope_positions"] = run_key
    (copy / "config.json").write_text(json.dumps(config))
    model_config = json.loads((copy / "final" / "config.json").read_text())
    if record is None:
        del model_config[RECORD_KEY]
    else:
        model_config[RECORD_KEY] = record
    (copy / "final" / "config.json").write_text(json.dumps(model_config))
    seen, real = [], factory.load_model
    monkeypatch.setattr(factory, "load_model", lambda *a, **k: seen.append(k.get("rope_positions")) or real(*a, **k))
    flags = ["--rope-positions", flag] if flag else []
    assert main(["analyze", str(copy), "--step", "3", "--output-dir", str(tmp_path / "a"), *flags]) == 0
    assert seen == [expected]
