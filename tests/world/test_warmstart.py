"""Supervised warm start on the synthetic world (tiny model, a handful of steps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from videoktr import world as S
from videoktr.world import warmstart as W

SMALL = S.WorldConfig(palette=S.PALETTE[:3], shapes=("circle", "square"), frames=6, max_events=3)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from videoktr.models.factory import create_model_dir

    root = tmp_path_factory.mktemp("warm")
    world = S.generate_world(root / "world", SMALL, n_train=40, n_eval=8)
    base = create_model_dir(root / "base", size="tiny", corpus=S.corpus(SMALL), seed=0)
    return root, world, base


def test_teacher_forcing_batch_puts_the_response_at_the_end(setup):
    from videoktr.models.factory import load_processor

    _, world, base = setup
    processor = load_processor(base)
    tok = processor.tokenizer
    rows = S.read_rows(world.train)[:3]
    clips = S.load_clips(world.root, rows, SMALL)
    responses = [r["response"] for r in rows]
    enc = S.encode_rows(processor, rows, clips, responses=responses, padding_side="right")
    lengths = [len(tok(r + tok.eos_token, add_special_tokens=False)["input_ids"]) for r in responses]
    open_id, close_id = tok.convert_tokens_to_ids("<answer>"), tok.convert_tokens_to_ids("</answer>")
    w = W.response_weights(enc["input_ids"], enc["attention_mask"], lengths, open_id, close_id, 5.0)
    for b, (resp, n) in enumerate(zip(responses, lengths)):
        end = int(enc["attention_mask"][b].sum())
        ids = enc["input_ids"][b, end - n : end].tolist()
        assert ids == tok(resp + tok.eos_token, add_special_tokens=False)["input_ids"]
        assert (w[b, : end - n] == 0).all() and (w[b, end:] == 0).all()
        inside = [ids.index(open_id) < t < ids.index(close_id) for t in range(n)]
        assert w[b, end - n : end].tolist() == [5.0 if i else 1.0 for i in inside]
    assert enc["second_per_grid_ts"].tolist() == pytest.approx([1.0] * 3)  # 2 frames per group at 2 fps


def test_split_validation_holds_out_the_last_rows_of_each_family():
    rows = [{"family": f, "i": i} for i, f in enumerate("aabbbab")]
    train, val = W.split_validation(rows, 2)
    assert [r["i"] for r in val] == [1, 4, 5, 6]  # family a: rows 0, 1, 5; family b: rows 2, 3, 4, 6
    assert [r["i"] for r in train] == [0, 2, 3]


def test_warm_start_trains_saves_and_is_cached(setup):
    from videoktr.models.factory import load_model, load_processor

    root, world, base = setup
    out = root / "ws"
    kwargs = dict(max_steps=8, batch_size=4, learning_rate=3e-3, eval_every=4, val_per_family=2,
                  max_new_tokens=8, warmup_steps=1, progress=False)
    assert W.warm_start(base, world.root, out, **kwargs) == out
    info = W.read_info(out)
    assert info["complete"] and info["steps"] <= 8 and info["seconds"] > 0
    assert info["loss_last"] < info["loss_first"]
    assert {"overall", "per_family", "per_kind"} <= set(info["accuracy_after"])
    assert [h["step"] for h in info["history"]][0] == 0 and info["val_rows"] > 0
    assert info["train_rows"] + info["val_rows"] == 40
    for name in ("config.json", "model.safetensors", "tokenizer.json", "warmstart.json"):
        assert (out / name).is_file()
    model = load_model(out, dtype="float32")
    assert load_processor(out).tokenizer.convert_tokens_to_ids("<answer>") is not None
    trained = dict(model.named_parameters())
    original = dict(load_model(base, dtype="float32").named_parameters())
    assert any(not torch.equal(trained[k], original[k]) for k in original)
    # same inputs: a cache hit (nothing rewritten); other settings: not a hit
    stamp = (out / "warmstart.json").stat().st_mtime_ns
    assert W.warm_start(base, world.root, out, **kwargs) == out
    assert (out / "warmstart.json").stat().st_mtime_ns == stamp
    key = W.cache_key(base, world.root, W.WarmStartSettings(max_steps=9))
    assert not W.is_complete(out, key) and W.is_complete(out)
    assert json.loads((out / "warmstart.json").read_text())["key"] != key
    settings = {k: v for k, v in kwargs.items() if k != "progress"}
    assert W.is_built(base, world.root, out, **settings)  # what the default run's console says before calling it
    assert not W.is_built(base, world.root, out, **{**settings, "max_steps": 9})


def test_the_warm_start_folder_is_named_by_every_option_that_changes_it(tmp_path, monkeypatch):
    """Issue 20 item 5: runs with 300 and 1,500 warm-start steps shared one `warmstart-<digest>` folder (the
    second retrained into the folder the first run's model card and identity point at). Every option that
    reaches warm_start() must change the folder; the default run's folder keeps its name."""
    from videoktr.world import run as world_run
    from videoktr.train.config import load_config

    calls = []

    def fake_warm_start(base, world, out, **kwargs):
        calls.append((str(base), str(world), kwargs))
        return out

    monkeypatch.setattr(W, "warm_start", fake_warm_start)
    small = {"model_size": "tiny", "world_train": 40, "world_eval": 4, "world_rl": 4,
             "cache_dir": str(tmp_path / "cache")}
    variants = [{}, {"warmstart_max_steps": 300}, {"warmstart_max_steps": 1499}, {"seed": 1},
                {"rope_positions": "transformers"}, {"world_seed": 1}, {"world_train": 41}]
    folders = []
    for overrides in variants:
        _, folder = world_run.prepare_world_and_model(load_config(overrides={**small, **overrides}))
        folders.append(folder)
    inputs = [json.dumps(c, sort_keys=True) for c in calls]
    assert len(set(inputs)) == len(variants)  # each variant changes what warm_start() gets
    assert len(set(folders)) == len(variants), [f.name for f in folders]  # ... and so the folder
    # the default settings keep the name the cache had before max_steps entered it
    base, _, _ = calls[0]
    world = tmp_path / "cache" / Path(calls[0][1]).name
    import hashlib

    train_digest = hashlib.sha256((world / "train.jsonl").read_bytes()).hexdigest()
    assert folders[0].name == f"warmstart-{world_run._digest([base, train_digest, 'qwen'])}"


def test_warm_start_defaults_are_the_settings_defaults():
    """is_built() reads warm_start()'s defaults from WarmStartSettings: the two must agree."""
    import inspect

    params = inspect.signature(W.warm_start).parameters
    for f in __import__("dataclasses").fields(W.WarmStartSettings):
        if f.name in params:
            assert params[f.name].default == f.default, f.name


def test_a_warm_start_records_the_position_scheme_it_trained_under(setup):
    """The warm-started directory records its 3D position scheme where load_model reads it (config.json), so a
    later load without a scheme computes the one it was trained under."""
    from videoktr.models.factory import load_model
    from videoktr.models.positions import recorded_scheme, scheme_of

    root, world, base = setup
    kwargs = dict(max_steps=2, batch_size=4, eval_every=2, val_per_family=2, max_new_tokens=4, warmup_steps=1,
                  progress=False)
    for scheme in ("transformers", "qwen"):
        out = W.warm_start(base, world.root, root / f"ws-{scheme}", rope_positions=scheme, **kwargs)
        assert recorded_scheme(out) == scheme and W.read_info(out)["settings"]["rope_positions"] == scheme
        assert scheme_of(load_model(out, dtype="float32")) == scheme


def test_a_warm_start_is_found_by_its_content_whatever_its_folder_is_called(tmp_path, monkeypatch):
    """Finding: the folder name digests the base model's path as spelled, so the cache reached as an absolute path
    (instead of the relative `.cache/videoktr`) missed its warm start and built another one. Now the run looks for a
    finished warm start with the same content key first, and existing folders keep their names."""
    from videoktr.train.config import load_config
    from videoktr.world import run as world_run

    built = []

    def fake_warm_start(base, world, out, **kwargs):  # a finished warm start, as warm_start() leaves it
        out = Path(out)
        if not W.is_built(base, world, out, **kwargs):
            out.mkdir(parents=True, exist_ok=True)
            for name in ("config.json", "model.safetensors"):
                (out / name).write_text("{}")
            (out / "warmstart.json").write_text(json.dumps(
                {"complete": True, "key": W.settings_key(base, world, **kwargs)}))
            built.append(out.name)
        return out

    monkeypatch.setattr(W, "warm_start", fake_warm_start)
    monkeypatch.chdir(tmp_path)
    small = {"model_size": "tiny", "world_train": 40, "world_eval": 4, "world_rl": 4}
    _, relative = world_run.prepare_world_and_model(load_config(overrides={**small, "cache_dir": "cache"}))
    _, absolute = world_run.prepare_world_and_model(
        load_config(overrides={**small, "cache_dir": str(tmp_path / "cache")}))
    assert absolute.resolve() == relative.resolve() and len(built) == 1
    # other settings are another warm start, found by no spelling
    _, other = world_run.prepare_world_and_model(
        load_config(overrides={**small, "cache_dir": str(tmp_path / "cache"), "warmstart_max_steps": 300}))
    assert other.resolve() != relative.resolve() and len(built) == 2
