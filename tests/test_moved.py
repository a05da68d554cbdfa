"""Modules that moved keep their old import paths for one release: importing one warns with a DeprecationWarning
naming the new path and gives the module that lives there now (videoktr._moved); the train entry point without
data still runs the world's default run, with a warning; the CLI picks a data run or the world's run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from videoktr._moved import MOVED

PROBE = r"""
import importlib, json, sys, warnings

out = {}
for old, new in json.loads(sys.argv[1]).items():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(f"import {old}", {})  # an import statement: the warning names its line
    module = sys.modules[old]
    named = [str(w.message) for w in caught if w.category is DeprecationWarning and f"{old} moved to {new}" in
             str(w.message)]
    out[old] = {"same": module is importlib.import_module(new), "warned": named,
                "where": [w.filename for w in caught if w.category is DeprecationWarning and old in str(w.message)]}
# the forms the docs used
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from videoktr.train import warmstart
    from videoktr.data.synthetic import world_config
out["from_forms"] = [warmstart.__name__, world_config("long_cot").style]
print(json.dumps(out))
"""


def test_every_old_path_warns_and_gives_the_new_module(tmp_path):
    """In a fresh interpreter (a module warns on its first import only): each old path imports, is the very module
    at the new path, and warns once naming both, attributed to the importing line."""
    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(MOVED)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    for old, new in MOVED.items():
        assert found[old]["same"], f"{old} is not {new}"
        assert len(found[old]["warned"]) == 1, (old, found[old])
        assert "removed in the next release" in found[old]["warned"][0]
        assert all(where == "<string>" for where in found[old]["where"]), found[old]["where"]  # the importer's line
    assert found["from_forms"] == ["videoktr.world.warmstart", "long_cot"]


def test_the_old_paths_lead_to_existing_modules_and_are_gone_from_the_tree():
    """Each new path exists; no file is left at an old path (it would shadow nothing and confuse readers)."""
    import importlib.util
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src"
    for old, new in MOVED.items():
        assert importlib.util.find_spec(new) is not None, new
        rel = Path(*old.split("."))
        assert not (src / rel).with_suffix(".py").exists() and not (src / rel / "__init__.py").exists(), old


def test_train_run_without_data_still_runs_the_world_with_a_warning(tmp_path, monkeypatch):
    """`videoktr.train.run.run(config)` with no data ran the synthetic world before; it still does, warning that
    `videoktr.world.run.run` is the call now (train/ does not import world/: the name is looked up at run time)."""
    from videoktr.train.config import load_config
    from videoktr.train.run import run
    from videoktr.world import run as world_run

    class Reached(Exception):
        pass

    def fake(config, clock):
        raise Reached(config.run.output_dir)

    monkeypatch.setattr(world_run, "run_synthetic", fake)
    config = load_config(None, {"output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache")})
    with pytest.warns(DeprecationWarning, match=r"call videoktr\.world\.run\.run\(config\)"), pytest.raises(Reached):
        run(config)


@pytest.mark.parametrize("data", ["", "rows.jsonl"])
def test_the_cli_picks_the_world_or_a_data_run(data, monkeypatch):
    import videoktr.train.run as train_run
    import videoktr.world.run as world_run
    from videoktr.cli import train
    from videoktr.train.config import load_config

    monkeypatch.setattr(train_run, "run", lambda config: "data run")
    monkeypatch.setattr(world_run, "run", lambda config: "world run")
    config = load_config(None, {"data": data}) if data else load_config(None)
    assert train(config) == ("data run" if data else "world run")


def test_the_world_run_refuses_data(tmp_path):
    from videoktr.train.config import load_config
    from videoktr.world.run import run

    config = load_config(None, {"output_dir": str(tmp_path / "out")})
    config.data.data = "rows.jsonl"
    with pytest.raises(ValueError, match=r"data\.data is 'rows\.jsonl'.*videoktr\.train\.run\.run"):
        run(config)
    assert not (tmp_path / "out").exists()
