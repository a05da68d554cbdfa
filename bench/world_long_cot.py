"""Measure the long_cot world's design (docs/world-long-cot.md): reference lengths in tokens, token-role shares,
family shares, and a text-only baseline (the majority answer per question text, learned on training rows) against
uniform chance; the short world alongside for comparison. Labels of long references (character-indexed) are
checked against token-level enumeration on a few rows. No model is trained.

    .venv/bin/python bench/world_long_cot.py [--rows 200] [--baseline-train 3000] [--baseline-eval 2000]
        [--json out.json]

--baseline-eval scores the text-only baseline on more held-out rows than are labelled (per-kind accuracies on
200 rows rest on 15-45 rows each); it defaults to --rows.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter, defaultdict

import numpy as np

from videoktr import world as S
from videoktr.models.factory import DEFAULT_CORPUS, SIZES, train_tokenizer

ROLES = ("vision", "order", "vision_uncond", "order_uncond", "answer")


def text_only_baseline(config: S.WorldConfig, n_train: int, n_eval: int) -> dict:
    """Majority answer per question text (the prompt is all a text-only model sees), fitted on training rows,
    scored on held-out rows; per family, with the rows' mean uniform chance."""
    train = S.sample_rows(config, "train", n_train)
    seen = {(S.row_layout(r), r["problem"]) for r in train}
    evals = S.sample_rows(config, "eval", n_eval, start_id=n_train, exclude=seen)
    by_text: dict[str, Counter] = defaultdict(Counter)
    for r in train:
        by_text[r["problem"]][r["answer"]] += 1
    overall = Counter(r["answer"] for r in train).most_common(1)[0][0]
    out: dict = defaultdict(lambda: {"correct": 0, "n": 0, "chance": 0.0})
    for r in evals:
        guess = by_text[r["problem"]].most_common(1)[0][0] if by_text[r["problem"]] else overall
        for key in ("overall", f"family:{r['family']}", f"kind:{r['kind']}"):
            out[key]["correct"] += guess == r["answer"]
            out[key]["n"] += 1
            out[key]["chance"] += r["chance"]
    return {k: {"accuracy": v["correct"] / v["n"], "chance": v["chance"] / v["n"], "n": v["n"]}
            for k, v in sorted(out.items())}


def token_level_check(tok, config: S.WorldConfig, rows: list[dict]) -> int:
    """Rows whose character-indexed vision labels differ from token-level enumeration (should be 0)."""
    index = S.LabelIndex(tok, config)
    bad = 0
    for row in rows:
        lab = S.token_labels(row, tok, config, index=index)
        x = lab["input_ids"].tolist()
        ids = tok(index.texts(row["question"]), add_special_tokens=False)["input_ids"]
        if S.prefix_labels(x, ids) != lab["vision"].tolist():
            bad += 1
    return bad


def measure(style: str, n_rows: int, n_base: int, tok_vocab: int, n_base_eval: int | None = None) -> dict:
    config = S.world_config(style)
    tok = train_tokenizer(list(DEFAULT_CORPUS) + S.corpus(config), tok_vocab)
    rows = S.sample_rows(config, "eval", n_rows)
    t0 = time.perf_counter()
    labels = S.label_rows(rows, tok, config)
    label_s = time.perf_counter() - t0
    lengths = [len(lab["input_ids"]) for lab in labels]
    total = sum(lengths)
    shares = {k: sum(int(lab[k].sum()) for lab in labels) / total for k in ROLES}
    per_row = {k: float(np.mean([lab[k].float().mean().item() for lab in labels])) for k in ROLES}
    multi = sorted({w for w in S.vocabulary(config) if len(tok(" " + w, add_special_tokens=False)["input_ids"]) > 1})
    out = {
        "style": style,
        "config": config.to_dict(),
        "rows": n_rows,
        "tokens_per_response": {"min": min(lengths), "mean": float(np.mean(lengths)), "median": float(np.median(lengths)),
                                "max": max(lengths)},
        "role_share_of_tokens": shares,
        "role_share_mean_per_row": per_row,
        "family_share": dict(Counter(r["family"] for r in rows)),
        "kind_share": dict(Counter(r["kind"] for r in rows)),
        "text_only_baseline": text_only_baseline(config, n_base, n_base_eval or n_rows),
        "label_seconds": label_s,
        "words_not_single_tokens": multi,
    }
    if style != "short":
        out["char_vs_token_label_mismatches"] = token_level_check(tok, config, rows[:8])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--baseline-train", type=int, default=3000)
    ap.add_argument("--baseline-eval", type=int, default=0, help="held-out rows of the text-only baseline "
                    "(default: --rows)")
    ap.add_argument("--vocab", type=int, default=SIZES["small"].vocab_size)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    result = {s: measure(s, args.rows, args.baseline_train, args.vocab, args.baseline_eval)
              for s in ("long_cot", "short")}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
