"""The end-of-run result table (train/summary.py): what it shows from a report, and the model card's section."""

from __future__ import annotations

from videoktr.train.summary import add_results_to_card, console_table, markdown_table, result_rows


def _stats(acc, n, chance=0.25):
    return {"accuracy": acc, "correct": round(acc * n), "n": n, "ci95": [acc - 0.03, acc + 0.03], "chance": chance}


REPORT = {
    "method": "ktr", "steps": 500,
    "accuracy_before": {"overall": _stats(0.669, 1000), "per_family": {"order": _stats(0.78, 250),
                                                                         "count": _stats(0.6, 250, 0.2)}},
    "accuracy_after": {"overall": _stats(0.709, 1000), "per_family": {"order": _stats(0.82, 250),
                                                                        "count": _stats(0.63, 250, 0.2)}},
    "accuracy_gain": {"gain": 0.04, "ci95": [0.013, 0.067], "improved": 90, "worsened": 50, "n": 1000,
                      "p_value": 0.004},
    "attribution": {"auc": {"visual": {"zero": {"vision": 0.93}, "replace": {"vision": 0.898}},
                            "temporal": {"derange": {"order": 0.941}, "shuffle": {"order": 0.878}},
                            "entropy": {"vision": 0.78, "order": 0.75}}},
    "attribution_strategies": {"visual": "zero", "temporal": "shuffle"},
    "train": {"reward_start": 1.2, "reward_end": 1.5, "mean_update_ratio": 0.35,
              "learning_signal": {"share_steps_without_gradient": 0.1, "mean_share_groups_without_gradient": 0.4}},
    "wall_seconds_total": 1195.2,
}


def test_rows_of_a_world_run():
    rows = dict((k.strip(), v) for k, v in result_rows(REPORT))
    assert rows["held-out accuracy before"] == "0.669 [63.9, 69.9] (n=1000)"
    assert rows["held-out accuracy after"].startswith("0.709")
    assert rows["paired gain"].startswith("+4.0 points [+1.3, +6.7], McNemar p = 0.004")
    assert rows["order"] == "0.780 -> 0.820 (n=250, chance 0.25)"
    assert rows["attribution AUC, visual"] == "0.930 (zero; replace 0.898)"  # the run's strategy first
    assert rows["attribution AUC, temporal"] == "0.878 (shuffle; derange 0.941)"
    assert rows["steps without gradient"] == "10.0% (prompt groups with equal rewards: 40.0%)"
    assert rows["tokens updated (mask)"] == "35.0%" and rows["wall time"] == "19m 55s"
    table = console_table(REPORT)
    assert table.splitlines()[0].startswith("method") and "held-out accuracy after" in table


def test_rows_of_a_data_run_have_no_heldout():
    report = {"method": "grpo", "steps": 3, "skipped_samples": 2, "train": {"reward_start": 0.1, "reward_end": None},
              "wall_seconds": 7200.0}
    rows = dict(result_rows(report))
    assert "held-out accuracy before" not in rows and rows["rows skipped"] == "2 (skipped.jsonl)"
    assert rows["reward, start -> end"] == "0.100 -> -" and rows["wall time"] == "2h 00m 00s"


def test_card_section_is_added_once(tmp_path):
    assert not add_results_to_card(tmp_path, REPORT)  # no card: nothing written
    (tmp_path / "README.md").write_text("# Trained with videoktr\n\ntext\n")
    assert add_results_to_card(tmp_path, REPORT)
    assert add_results_to_card(tmp_path, {**REPORT, "steps": 600})  # a resumed run replaces the section
    card = (tmp_path / "README.md").read_text()
    assert card.startswith("# Trained with videoktr\n\ntext\n") and card.count("## Results") == 1
    assert "| steps | 600 |" in card and markdown_table(REPORT).splitlines()[1] == "|---|---|"


def test_steps_without_gradient_warn_on_data_and_are_explained_on_the_world():
    """Issue 20: the default run ended with "warning: 269 of 500 logged steps had no learning signal ... Likely: the
    data is too hard or too easy". On the world that is its difficulty mix: a note that says so; on data the
    warning keeps its meaning."""
    from videoktr.train.config import load_config
    from videoktr.train.report import NO_SIGNAL_HINT, no_signal_message

    world = no_signal_message(load_config(), 269, "500 logged steps")
    assert world.startswith("note: 269 of 500 logged steps had no gradient") and "synthetic world" in world
    assert "Likely" not in world and "warning" not in world
    data = no_signal_message(load_config(overrides={"data": "rows.json", "model": "m"}), 12, "the last 20 logged steps")
    assert data == f"warning: 12 of the last 20 logged steps had no learning signal: {NO_SIGNAL_HINT}"
