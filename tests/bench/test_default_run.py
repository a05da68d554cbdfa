"""bench/default_run.py: the results block over seeds, and rewriting it between its markers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("default_run", ROOT / "bench" / "default_run.py")
default_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(default_run)


def _report(before, after, gain, p):
    fam = {"order": {"accuracy": after - 0.01}, "count": {"accuracy": after + 0.01}}
    return {"accuracy_before": {"overall": {"accuracy": before}, "per_family": {"order": {"accuracy": before},
                                                                              "count": {"accuracy": before}}},
            "accuracy_after": {"overall": {"accuracy": after}, "per_family": fam},
            "accuracy_gain": {"gain": gain, "ci95": [gain - 0.02, gain + 0.02], "p_value": p, "n": 1000},
            "train": {"learning_signal": {"share_steps_without_gradient": 0.5}}, "wall_seconds_total": 600.0}


def test_block_states_ranges_and_each_seed():
    summary = default_run.summarize({0: _report(0.669, 0.709, 0.04, 0.004), 1: _report(0.653, 0.706, 0.053, 1e-4)})
    text = default_run.block(summary)
    assert text.startswith(default_run.BEGIN) and text.endswith(default_run.END)
    assert "**0.653 to 0.669 after the warm start, 0.706 to 0.709 after RL**" in text
    assert "a paired gain of +4.0 to +5.3 points" in text
    assert "| 0 | 0.669 | 0.709 | +4.0 [+2.0, +6.0] | 0.004 | 50% | 10 min |" in text
    assert summary["family_means"]["order"] == pytest.approx([0.661, 0.6975])


def test_rewrite_replaces_only_the_block(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(f"before\n{default_run.BEGIN}\nold\n{default_run.END}\nafter\n")
    default_run.rewrite(page, f"{default_run.BEGIN}\nnew\n{default_run.END}")
    assert page.read_text() == f"before\n{default_run.BEGIN}\nnew\n{default_run.END}\nafter\n"
    page.write_text("no block")
    with pytest.raises(SystemExit, match="no results block"):
        default_run.rewrite(page, "x")


def test_the_pages_it_writes_have_the_block():
    for path in default_run.TARGETS:
        text = path.read_text()
        assert default_run.BEGIN in text and default_run.END in text, path
