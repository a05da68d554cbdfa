"""The synthetic world's RL prompt filter (data.world_rl_filter): the difficulty rule shared with `videoktr filter`,
the kept prompts and the signal shares it reports, its cache, and sampled generation on the world's own prompts."""

from __future__ import annotations

import json

import pytest

from videoktr import world as S
from videoktr.filter import difficulty_decision
from videoktr.world import filter as world_filter


def test_difficulty_decision_is_the_paper_rule():
    assert difficulty_decision([1, 0, 0, 0, 0]) == (0.2, True)
    assert difficulty_decision([1, 1, 1, 1, 0]) == (0.8, True)
    assert difficulty_decision([0] * 8) == (0.0, False)
    assert difficulty_decision([1] * 8) == (1.0, False)
    assert difficulty_decision([1, 0], low=0.6, high=0.9) == (0.5, False)
    with pytest.raises(ValueError):
        difficulty_decision([])


def test_filter_keeps_prompts_in_range_reports_shares_and_caches(tmp_path, monkeypatch):
    rows = S.sample_rows(S.WorldConfig(), "rl", 6)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(b"weights")
    rl_path = tmp_path / "rl.jsonl"
    rl_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    calls = []

    def fake_generate(model, processor, batch, world_dir, batch_size, max_new_tokens, samples, temperature, top_p):
        calls.append((len(batch), samples, temperature, top_p, max_new_tokens))
        out = []
        for row in batch:  # row k answers right in k of its 5 samples: accuracies 0, 0.2, ..., 1
            k = rows.index(row)
            out += [row["solution"]] * k + ["<answer>wrong</answer>"] * (samples - k)
        return out

    import videoktr.world.metrics as world

    monkeypatch.setattr(world, "generate_responses", fake_generate)
    args = dict(model=None, processor=None, model_dir=model_dir, rows=rows, world_dir=tmp_path, rl_path=rl_path,
                cache_dir=tmp_path / "cache", samples=5, temperature=1.0, top_p=0.9, max_new_tokens=40,
                batch_size=4, progress=False)
    kept, summary = world_filter.filter_world_prompts(**args)
    assert [rows.index(r) for r in kept] == [1, 2, 3, 4]
    assert summary["too_hard"] == 1 and summary["too_easy"] == 1 and summary["kept"] == 4 and summary["rows"] == 6
    assert summary["signal_share_before"] == pytest.approx(4 / 6) and summary["signal_share_after"] == 1.0
    assert calls == [(4, 5, 1.0, 0.9, 40), (2, 5, 1.0, 0.9, 40)]
    again, summary2 = world_filter.filter_world_prompts(**args)  # cached: nothing sampled again
    assert again == kept and len(calls) == 2 and summary2["cache"] == summary["cache"]
    world_filter.filter_world_prompts(**{**args, "samples": 4})  # other settings: another pass
    assert len(calls) == 4


def test_sampled_generation_on_the_worlds_prompts(tiny, tmp_path):
    """generate_responses with samples: `samples` responses per row, row by row, from the world's own prompts."""
    import torch

    from videoktr.world.metrics import generate_responses

    model, processor = tiny
    paths = S.generate_world(tmp_path / "w", S.WorldConfig(), n_train=1, n_eval=1, n_rl=2)
    rows = S.read_rows(paths.rl)
    torch.manual_seed(0)
    texts = generate_responses(model, processor, rows, paths.root, batch_size=2, max_new_tokens=6, samples=3)
    assert len(texts) == 6 and len(set(texts)) > 1
    assert len(generate_responses(model, processor, rows, paths.root, max_new_tokens=6)) == 2


def test_world_rl_filter_option():
    from videoktr.train.config import load_config

    assert load_config(overrides={"world_rl_filter": True}).data.world_rl_filter
    assert not load_config().data.world_rl_filter  # off by default


def test_filter_rl_prompts_glue(monkeypatch, capsys):
    """world_run.filter_rl_prompts passes the run's sampling settings, prints the outcome, and refuses an empty
    result with a message naming the option."""
    from types import SimpleNamespace

    from videoktr.world import run as world_run
    from videoktr.train.config import load_config

    config = load_config(overrides={"world_rl_filter": True, "num_generations": 6, "temperature": 0.9,
                                    "max_completion_length": 40, "world_seed": 3})
    seen = {}

    def fake(model, processor, model_dir, rows, world_dir, rl_path, cache_dir, **kw):
        seen.update(kw)
        kept = rows[:1] if seen.get("keep", True) else []
        return kept, {"rows": len(rows), "kept": len(kept), "low": 0.2, "high": 0.8, "samples": kw["samples"],
                      "too_easy": 1, "too_hard": len(rows) - 1 - len(kept), "signal_share_before": 0.25,
                      "signal_share_after": 1.0}

    monkeypatch.setattr(world_filter, "filter_world_prompts", fake)
    world = SimpleNamespace(root="w", rl="w/rl.jsonl")
    kept, summary = world_run.filter_rl_prompts(config, object(), None, "m", world, [{"a": 1}, {"b": 2}, {"c": 3}])
    assert kept == [{"a": 1}] and summary["kept"] == 1
    assert seen == {"samples": 6, "temperature": 0.9, "top_p": 1.0, "max_new_tokens": 40, "seed": 3}
    assert "kept 1 of 3" in capsys.readouterr().out
    monkeypatch.setattr(world_filter, "filter_world_prompts",
                        lambda *a, **kw: ([], {**fake(*a, **kw)[1], "kept": 0}))
    with pytest.raises(ValueError, match="world_rl_filter kept no RL prompt"):
        world_run.filter_rl_prompts(config, object(), None, "m", world, [{"a": 1}])
