"""Prompts: the reasoning prompt's layout and per-type suffixes, official formats per benchmark, and that the
answer formats the prompts ask for are read back by the extractor."""

from __future__ import annotations

from pathlib import Path

import pytest

from videoktr.eval.benchmarks import load_items
from videoktr.text.extract import extract
from videoktr.text.prompts import ANSWER_SUFFIX, REASONING_INSTRUCTION, build_prompt
from benchmark_files import SAMPLES as BENCHMARKS  # real question files, sampled (tests/eval/fixtures/benchmarks)

FIXTURES = Path(__file__).parents[1] / "eval" / "fixtures"


def test_reasoning_prompt_layout():
    item = load_items("video_holmes", questions=FIXTURES / "holmes_mini.json")[0]
    text = build_prompt(item)
    lines = text.split("\n")
    assert lines[0] == item.question
    assert lines[1] == "Options:"
    assert lines[2:8] == [f"{k}. {v}" for k, v in item.options.items()]
    assert lines[8] == REASONING_INSTRUCTION + ANSWER_SUFFIX["mc"]
    assert "<think>" in lines[8] and "</answer>" in lines[8] and "letter" in lines[8]


def test_reasoning_prompt_per_answer_type():
    yn = load_items("tempcompass", BENCHMARKS / "tempcompass", tasks=["yes_no"])[0]
    assert "Options:" not in build_prompt(yn) and build_prompt(yn).endswith(ANSWER_SUFFIX["yes_no"])
    cm = load_items("tempcompass", BENCHMARKS / "tempcompass", tasks=["caption_matching"])[0]
    first_label = next(iter(cm.options))
    assert f"\n{first_label}: {cm.options[first_label]}\n" in build_prompt(cm)
    numeric = next(i for i in load_items("videommmu", BENCHMARKS / "videommmu", tasks=["adaptation"])
                   if i.answer_type == "numeric")
    assert build_prompt(numeric).endswith(ANSWER_SUFFIX["numeric"])


def test_official_prompts_and_their_answers_are_read():
    mme = load_items("videomme", questions=BENCHMARKS / "videomme" / "output_test_template.json")[0]
    p = build_prompt(mme, "official")
    assert p.endswith("The best answer is:") and "(A, B, C or D)" in p and "<think>" not in p
    mmvu = load_items("mmvu", BENCHMARKS / "mmvu")[0]
    assert "the final answer is:" in build_prompt(mmvu, "official")
    assert extract(f"Step 1... Therefore, the final answer is: {mmvu.answer}", mmvu).value == mmvu.answer
    holmes = load_items("video_holmes", questions=FIXTURES / "holmes_mini.json")[0]
    assert "<answer>" in build_prompt(holmes, "official")
    yn = load_items("tempcompass", BENCHMARKS / "tempcompass", tasks=["yes_no"])[0]
    assert build_prompt(yn, "official").endswith("Answer yes or no directly:")
    chart = load_items("chartqa", FIXTURES / "chartqa")[0]
    assert build_prompt(chart, "official").endswith("Answer with a single word or number.")
    with pytest.raises(ValueError, match="unknown prompt style"):
        build_prompt(mme, "chatty")
