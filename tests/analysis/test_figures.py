"""The tables behind `videoktr analyze` against hand-computed references (analysis/figures.py, analysis/pos.py)."""

from __future__ import annotations

import math

import pytest

from videoktr.analysis import figures
from videoktr.analysis.pos import TaggerUnavailable, spacy_tagger, token_categories, world_tagger

COLOURS, SHAPES = ("red", "green", "blue"), ("circle", "square")


def record(tokens, visual, temporal, entropy, step=1, attributed=True, visual_defined=True):
    """A rollout record as analysis.rollouts returns it, with the union of the three selections."""
    n = len(tokens)
    union = [a or b or c for a, b, c in zip(visual, temporal, entropy)]
    return {"step": step, "tokens": list(tokens), "attributed": attributed,
            "scores": {"visual": [1.0] * n if visual_defined else None, "temporal": [1.0] * n if visual_defined
                       else None, "entropy": [1.0] * n},
            "selected": {"visual": list(visual) if visual_defined else None,
                         "temporal": list(temporal) if visual_defined else None,
                         "entropy": list(entropy), "union": union},
            "weights": [float(u) for u in union]}


T, F = True, False


def test_world_roles_of_tokens_follow_words_not_tokens():
    tag = world_tagger(COLOURS, SHAPES)
    tokens = ["<think>", "first", " red", " ci", "rcle", ",", " then", " 3", " squares", " by", " ", "</think>"]
    assert token_categories(tokens, tag) == ["FORMAT", "order", "colour", "shape", "shape", "punct", "order",
                                             "number", "shape", "function", "SPACE", "FORMAT"]
    # a character split over tokens: the earlier parts decode to nothing
    assert token_categories(["", "é", " two"], tag) == ["SPACE", "function", "number"]


def test_category_shares_count_selected_and_unselected_tokens_per_signal():
    tag = world_tagger(COLOURS, SHAPES)
    r = record(["first", " red", " circle", ",", " then", " blue"],
               visual=[F, T, T, F, F, T], temporal=[T, F, F, F, T, F], entropy=[F, F, F, T, F, F])
    table = figures.category_shares([r], lambda toks: token_categories(toks, tag))
    assert table["visual"]["selected"] == {"colour": 2 / 3, "shape": 1 / 3}
    assert table["visual"]["unselected"] == {"order": 2 / 3, "punct": 1 / 3}
    assert table["temporal"]["selected"] == {"order": 1.0}
    assert table["union"]["n_selected"] == 6 and table["union"]["n_unselected"] == 0
    for t in table.values():
        for side in ("selected", "unselected"):
            if t[f"n_{side}"]:
                assert math.isclose(sum(t[side].values()), 1.0)


def test_category_shares_leave_out_undefined_signals_and_unattributed_responses():
    tag = world_tagger(COLOURS, SHAPES)
    text_only = record(["red", " circle"], [F, F], [F, F], [T, F], visual_defined=False)
    skipped = record(["blue"], [T], [T], [T], attributed=False)
    table = figures.category_shares([text_only, skipped], lambda toks: token_categories(toks, tag),
                                    signals=["visual", "entropy"])
    assert table["visual"]["n_selected"] == table["visual"]["n_unselected"] == 0
    assert table["entropy"]["selected"] == {"colour": 1.0} and table["entropy"]["unselected"] == {"shape": 1.0}


def test_signal_overlap_counts_every_combination_and_jaccard():
    r1 = record("abcdef", visual=[T, T, F, F, F, F], temporal=[T, F, T, F, F, F], entropy=[T, F, F, T, F, F])
    r2 = record("ghij", visual=[T, F, F, F], temporal=[T, F, F, F], entropy=[F, F, F, F])
    table = figures.signal_overlap([r1, r2])
    combos = {tuple(c["signals"]): c["tokens"] for c in table["combinations"]}
    assert combos == {("visual",): 1, ("temporal",): 1, ("entropy",): 1, ("visual", "temporal"): 1,
                      ("visual", "entropy"): 0, ("temporal", "entropy"): 0, ("visual", "temporal", "entropy"): 1}
    assert table["tokens"] == 10 and table["union"] == 5 == sum(combos.values())
    assert table["selected"] == {"visual": 3, "temporal": 3, "entropy": 2}
    assert table["intersections"]["visual&temporal"] == 2
    assert table["jaccard"]["visual&temporal"] == pytest.approx(2 / 4)
    assert table["jaccard"]["visual&entropy"] == pytest.approx(1 / 4)
    assert table["update_ratio"] == pytest.approx(0.5)
    assert table["unique"] == {"visual": 1, "temporal": 1, "entropy": 1}


def test_token_frequencies_rank_tokens_by_count():
    r = record(["the", " red", " the", " red", " red", " ", ""], visual=[F, T, F, T, T, F, F],
               temporal=[F] * 7, entropy=[F] * 7)
    table = figures.token_frequencies([r], "union", top=5)
    assert table["selected"] == [["red", 3, 1.0]]
    assert table["unselected"][0] == ["the", 2, 0.5]
    assert {k for k, _, _ in table["unselected"]} == {"the", "␣", "∅"}
    assert figures.token_key("\x11") == "\\x11"  # no font has a glyph for a control byte


def test_update_by_position_covers_every_token():
    r1 = record(list("abcdefghij"), visual=[T] + [F] * 9, temporal=[F] * 10, entropy=[F] * 9 + [T])
    r2 = record(list("abc"), visual=[T, F, F], temporal=[F, F, F], entropy=[F, F, F])
    r3 = record(list("xyz"), visual=[T, T, T], temporal=[T] * 3, entropy=[T] * 3, attributed=False)
    table = figures.update_by_position([r1, r2, r3], bins=10, absolute=4)
    assert table["total_tokens"] == 13 and sum(table["tokens"]) == 13 and table["responses"] == 2
    # r2's tokens fall into bins 0, 3 and 6
    assert table["tokens"] == [2, 1, 1, 2, 1, 1, 2, 1, 1, 1]
    assert table["updated"] == [2, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    assert table["probability"][0] == 1.0 and table["probability"][9] == 1.0 and table["probability"][3] == 0.0
    assert table["per_signal"]["visual"][0] == 1.0 and table["per_signal"]["entropy"][0] == 0.0
    assert table["absolute"] == {"tokens": [2, 2, 2, 1], "updated": [2, 0, 0, 0], "probability": [1.0, 0, 0, 0],
                                 "shown": [0, 1, 2, 3]}


def test_soft_weights_count_as_updates_when_there_is_no_selection():
    r = {"tokens": ["a", "b"], "attributed": True, "selected": {"union": None}, "weights": [0.0, 0.3],
         "scores": {}}
    assert figures.updated_mask(r) == [False, True]


def test_cost_row_from_a_log_history():
    history = [{"step": 1, "step_time": 2.0, "ktr/attribution_seconds": 0.5, "loss": 0.0},
               {"step": 2, "step_time": 4.0, "ktr/attribution_seconds": 0.5, "rollout_log_seconds": 0.1, "loss": 0.0},
               {"step": 2, "train_runtime": 7200.0, "train_samples_per_second": 1.5}]
    row = figures.cost_row(history, "run", "ktr")
    assert row["train_hours"] == 2.0 and row["samples_per_second"] == 1.5 and row["steps"] == 2
    assert row["mean_step_seconds"] == 3.0 and row["attribution_share"] == pytest.approx(0.5 / 3)
    assert row["rollout_log_seconds_per_logged_step"] == 0.1 and row["peak_memory_gb"] is None
    assert row["rollout_log_seconds_per_step"] == pytest.approx(0.05)  # one logged step of two
    table = figures.cost_table([("a", "ktr", history)], {"rows": [{"method": "grpo", "TT": 4.7}]})
    assert table["benchmark"] == [{"method": "grpo", "TT": 4.7}]


def test_missing_tagger_names_the_install_command():
    try:
        import spacy  # noqa: F401
    except ImportError:
        with pytest.raises(TaggerUnavailable, match=r"pip install 'videoktr\[pos\]'.*spacy download en_core_web_sm"):
            spacy_tagger()
    else:
        with pytest.raises(TaggerUnavailable, match="spacy download"):
            spacy_tagger("no_such_pipeline_xyz")


def test_spacy_tags_map_onto_tokens():
    try:
        tag = spacy_tagger()
    except TaggerUnavailable:
        pytest.skip("spaCy's English pipeline is not installed (pip install 'videoktr[pos]')")
    cats = token_categories(["The", " person", " open", "ed", " the", " door", "."], tag)
    assert cats[0] == "DET" and cats[1] == "NOUN" and cats[2] == cats[3] == "VERB" and cats[-1] == "PUNCT"


def _drawn_figures(monkeypatch) -> list:
    """Every matplotlib figure saved from here on (savefig still writes the file)."""
    from matplotlib.figure import Figure

    saved, original = [], Figure.savefig

    def savefig(self, *args, **kwargs):
        saved.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


def test_positions_figure_leaves_out_indices_few_responses_reach_and_shows_counts(tmp_path, monkeypatch):
    """Issue 20 item 10: positions.png spiked to 1.0 at the token indices that one (long) response reaches."""
    short = [record(list("abc"), visual=[F, F, F], temporal=[F] * 3, entropy=[T, F, F]) for _ in range(4)]
    long = record(list("abcdefgh"), visual=[T] * 8, temporal=[F] * 8, entropy=[F] * 8)
    table = figures.update_by_position(short + [long], bins=4, absolute=8, min_count=2)
    assert table["absolute"]["tokens"] == [5, 5, 5, 1, 1, 1, 1, 1]
    assert table["absolute"]["shown"] == [0, 1, 2] and table["min_count"] == 2
    assert table["absolute"]["probability"][5] == 1.0  # the spike, kept in the table but not drawn
    figs = _drawn_figures(monkeypatch)
    figures.plot_positions(table, tmp_path / "positions.png")
    [fig] = figs
    absolute = next(ax for ax in fig.axes if ax.get_xlabel() == "token index in the response")
    [line] = absolute.lines
    assert [int(x) for x in line.get_xdata()] == [0, 1, 2]
    assert list(line.get_ydata()) == pytest.approx([1.0, 0.2, 0.2])  # (index 0: every response updates it)
    assert "5 indices reached by fewer than 2 responses left out" in absolute.get_title()
    counts = next(ax for ax in fig.axes if ax.get_ylabel() == "responses reaching the index")
    assert [p.get_height() for p in counts.patches] == [5, 5, 5]
    relative = next(ax for ax in fig.axes if ax.get_xlabel() == "relative position in the response")
    assert [t.get_text() for t in relative.texts] == [f"n={n}" for n in table["tokens"]]
    # the default minimum: a tenth of the responses, at least 1 and at most 20
    assert figures.update_by_position(short + [long])["min_count"] == 1
    assert figures.update_by_position((short + [long]) * 100)["min_count"] == 20


def test_gradient_figure_ticks_are_the_logged_steps(tmp_path, monkeypatch):
    """Issue 20 item 10: gradients.png's x ticks (0, 20, 40, ...) did not match the logged steps (10, 70, 130)."""
    def step(n):
        return {"step": n, "lm": {f"norm_{k}": 1.0 for k in ("key", "rest", "full")}
                | {f"cos_{k}": 0.5 for k in ("key_full", "rest_full", "key_rest")},
                "loss_variance_masked": 0.1, "loss_variance_unmasked": 0.2}

    figs = _drawn_figures(monkeypatch)
    figures.plot_gradients({"steps": [step(n) for n in (10, 70, 130)], "parameters": ["lm"]}, tmp_path / "g.png")
    for ax in figs[0].axes:
        assert list(ax.get_xticks()) == [10, 70, 130]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["10", "70", "130"]
    assert figures.step_ticks(list(range(10, 300, 10)), most=5) == [10, 80, 150, 220, 290]
