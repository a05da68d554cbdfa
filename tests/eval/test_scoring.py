"""Scoring and reports: hand-computed accuracies on fixtures with tricky outputs, per-category summaries,
answer-type metrics, and the written files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from videoktr.eval.benchmarks import Item, load_items
from videoktr.eval.predictions import match_predictions, read_predictions
from videoktr.eval.report import markdown_overview, paper_number, write_report
from videoktr.eval.scoring import (MissingPredictionsError, judge, mean_relative_accuracy, numbers_equal,
                                   relaxed_match, score_items, summarize, text_match)

FIXTURES = Path(__file__).parent / "fixtures"


def _holmes():
    items = load_items("video_holmes", questions=FIXTURES / "holmes_mini.json")
    preds = read_predictions(FIXTURES / "holmes_mini_predictions.jsonl")
    outputs, unknown = match_predictions(preds, items, "video_holmes")
    assert unknown == 0
    return items, outputs


def test_hand_computed_accuracy_on_tricky_outputs():
    items, outputs = _holmes()
    records = score_items(items, outputs)
    # 1 tag A, 2 two tags (last B), 3 "C.", 4 lowercase d, 5 "E. text", 6 option text, 10 "The answer is (D)."
    # are right; 7 empty and 8 reasoning without an answer are unparsed; 9 is wrong.
    assert [r.correct for r in records] == [True] * 6 + [False] * 3 + [True]
    assert [r.extracted for r in records] == ["A", "B", "C", "D", "E", "F", None, None, "B", "D"]
    s = summarize(items, records)
    assert (s["total"], s["correct"], s["accuracy"], s["unparsed"]) == (10, 7, 70.0, 2)
    assert s["accuracy_parsed"] == 87.5
    qt = s["categories"]["question_type"]
    assert {k: v["accuracy"] for k, v in qt.items()} == {"CTI": 50.0, "MHR": 0.0, "SR": 100.0, "TA": 100.0,
                                                         "TCI": 100.0}
    assert qt["MHR"]["unparsed"] == 2
    assert s["methods"] == {"answer_tag": 6, "plain": 2, "unparsed": 2}


def test_missing_predictions_stop_unless_allowed():
    items, outputs = _holmes()
    del outputs[items[0].key]
    with pytest.raises(MissingPredictionsError, match="1 of 10 items have no prediction \\(clipAAA01/1\\)"):
        score_items(items, outputs)
    records = score_items(items, outputs, allow_missing=True)
    s = summarize(items, records)
    assert (s["correct"], s["missing"], s["unparsed"], s["accuracy"]) == (6, 1, 2, 60.0)


def test_video_r1_results_rescored():
    items = load_items("videor1", questions=FIXTURES / "eval_fixture.json")
    outputs, _ = match_predictions(read_predictions(FIXTURES / "videor1_results.json"), items, "videor1")
    records = score_items(items, outputs)
    # mc "B." -> B (Video-R1's exact match would say 0); 3.50 == 3.5; regression 12 vs 10 -> MRA 0.6;
    # "A red ball." matches "a red ball"; "stop" matches "STOP"; "I think it is the dog" -> option text B
    assert [r.score for r in records] == [1.0, 1.0, pytest.approx(0.6), 1.0, 1.0, 1.0]
    s = summarize(items, records)
    assert s["accuracy"] == pytest.approx(100 * 5.6 / 6, abs=1e-3)
    assert s["categories"]["problem_type"]["regression"]["accuracy"] == pytest.approx(60.0)


def test_answer_type_metrics():
    assert numbers_equal("2.828", "2.83") and numbers_equal("1,000", "1000") and numbers_equal("3.43", "24/7")
    assert not numbers_equal("10.4", "10") and not numbers_equal(None, "1") and not numbers_equal("x", "1")
    assert relaxed_match("46", "45") and not relaxed_match("48", "45") and relaxed_match("Yes", "yes")
    assert relaxed_match("0", "0") and not relaxed_match("0.1", "0") and relaxed_match("45%", "45")
    assert mean_relative_accuracy("10", "10") == 1.0 and mean_relative_accuracy("20", "10") == 0.0
    assert mean_relative_accuracy("12", "10") == pytest.approx(0.6)
    assert text_match("Dolly zoom", "Dolly Zoom") and text_match("It is a dolly zoom shot", "Dolly Zoom")
    assert not text_match("zoom", "Dolly Zoom") and not text_match(None, "x")
    assert text_match("A", "A") and not text_match("B", "A")  # VideoMMMU open rows answered by a letter
    mmmu = load_items("mmmu", FIXTURES)
    assert judge("1.50", mmmu[1]) == 1.0 and judge("1.499", mmmu[1]) == 1.0 and judge("1.6", mmmu[1]) == 0.0
    chart = load_items("chartqa", FIXTURES / "chartqa")
    assert [judge(v, it) for v, it in zip(["46", "yes", "0.9", "chad"], chart)] == [1.0, 1.0, 0.0, 1.0]
    yn = Item(id="y", benchmark="tempcompass", question="q", answer="yes", answer_type="yes_no")
    assert judge("yes", yn) == 1.0 and judge("no", yn) == 0.0 and judge(None, yn) == 0.0


def test_reports_written(tmp_path):
    items, outputs = _holmes()
    records = score_items(items, outputs)
    summary = summarize(items, records)
    paper = paper_number("video_holmes", "Video-KTR-7B", 64)
    assert paper == (42.7, "Video-KTR-7B, 64 frames, Table 1")
    write_report(tmp_path, records, summary, paper, title="Video-Holmes")
    scored = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert len(scored) == 10
    assert set(scored[0]) >= {"id", "output", "extracted", "correct"}
    assert scored[6] | {"output": ""} == scored[6] and scored[6]["extracted"] is None and scored[6]["correct"] is False
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["accuracy"] == 70.0 and saved["paper"] == {"accuracy": 42.7, "source": paper[1]}
    md = (tmp_path / "summary.md").read_text()
    assert "| overall | 70.00 | 7 | 10 | 2 |" in md
    assert "| paper (Video-KTR-7B, 64 frames, Table 1) | 42.70 |" in md
    assert "### by question_type" in md and "| MHR | 0.00 | 0 | 2 | 2 |" in md
    overview = markdown_overview([("Video-Holmes", summary, paper)])
    assert "| Video-Holmes | 70.00 | 10 | 2 | 42.70 |" in overview


def test_paper_numbers():
    assert paper_number("videomme", "Video-KTR-7B", 16) == (57.3, "Video-KTR-7B, 16 frames, Table 1")
    assert paper_number("mmvu", "Video-KTR-7B", 32)[0] == 65.9
    assert paper_number("tempcompass", "Video-KTR-3B", 64) == (68.0, "Video-KTR-3B, 64 frames, Table 5")
    assert paper_number("chartqa", "Video-KTR-7B") == (80.68, "Video-KTR, Table 3")
    assert paper_number("mmmu", "Qwen2.5-VL-7B-SFT")[0] == 42.89
    assert paper_number("videommmu", "GPT-4o", 16)[0] == 61.2  # frame-independent rows
    assert paper_number("videomme", "Video-KTR-7B", 8) is None
    assert paper_number("videor1") is None
