"""The result of a run in a few lines: printed at its end and written into the model card of its `final/`.

`result_rows(report)` picks what a reader looks for first, from report.json's layout: held-out accuracy before
and after with its interval (the synthetic world), the paired gain with its interval and McNemar p, accuracy per
question family, the attribution AUCs of the strategies the run used, the rewards at the start and the end, the
learning signal and the wall time. `console_table` and `markdown_table` lay the same rows out.
"""

from __future__ import annotations

import json
from pathlib import Path

CARD_RESULTS_HEADING = "## Results"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _acc(s: dict | None) -> str:
    if not s:
        return "-"
    lo, hi = s.get("ci95") or (None, None)
    interval = f" [{100 * lo:.1f}, {100 * hi:.1f}]" if lo is not None else ""
    return f"{s['accuracy']:.3f}{interval} (n={s['n']})"


def _num(x, fmt=".3f") -> str:
    return "-" if x is None else format(x, fmt)


def _duration(seconds) -> str:
    if seconds is None:
        return "-"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def result_rows(report: dict) -> list[tuple[str, str]]:
    """(label, value) rows of the run's result, in reading order."""
    rows: list[tuple[str, str]] = [("method", str(report.get("method"))), ("steps", str(report.get("steps", "-")))]
    before, after = report.get("accuracy_before"), report.get("accuracy_after")
    if before and after:
        rows.append(("held-out accuracy before", _acc(before["overall"])))
        rows.append(("held-out accuracy after", _acc(after["overall"])))
        gain = report.get("accuracy_gain") or {}
        if gain:
            lo, hi = gain["ci95"]
            rows.append(("paired gain", f"{100 * gain['gain']:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}], "
                                        f"McNemar p = {gain['p_value']:.3g} ({gain['improved']} clips right "
                                        f"after, {gain['worsened']} wrong after)"))
        for family, s in (after.get("per_family") or {}).items():
            b = (before.get("per_family") or {}).get(family)
            rows.append((f"  {family}", f"{_num(b and b['accuracy'])} -> {s['accuracy']:.3f} (n={s['n']}, "
                                        f"chance {s['chance']:.2f})"))
    attribution = report.get("attribution") or {}
    auc = attribution.get("auc") or {}
    used = report.get("attribution_strategies") or {}
    for signal, label in (("visual", "vision"), ("temporal", "order")):
        by_strategy = auc.get(signal) or {}
        if not by_strategy:
            continue
        name = used.get(signal) if used.get(signal) in by_strategy else next(iter(by_strategy))
        others = ", ".join(f"{k} {v[label]:.3f}" for k, v in by_strategy.items() if k != name)
        rows.append((f"attribution AUC, {signal}", f"{by_strategy[name][label]:.3f} ({name}; {others})"))
    if auc.get("entropy"):
        rows.append(("attribution AUC, entropy", f"vision {auc['entropy']['vision']:.3f}, "
                                                 f"order {auc['entropy']['order']:.3f}"))
    train = report.get("train") or {}
    if train:
        rows.append(("reward, start -> end", f"{_num(train.get('reward_start'))} -> {_num(train.get('reward_end'))}"))
        signal = train.get("learning_signal") or {}
        if signal.get("share_steps_without_gradient") is not None:
            rows.append(("steps without gradient", f"{_pct(signal['share_steps_without_gradient'])} "
                                                   f"(prompt groups with equal rewards: "
                                                   f"{_pct(signal.get('mean_share_groups_without_gradient'))})"))
        if train.get("mean_update_ratio") is not None:
            rows.append(("tokens updated (mask)", _pct(train["mean_update_ratio"])))
    if report.get("skipped_samples"):
        rows.append(("rows skipped", f"{report['skipped_samples']} (skipped.jsonl)"))
    rows.append(("wall time", _duration(report.get("wall_seconds_total", report.get("wall_seconds")))))
    return rows


def console_table(report: dict) -> str:
    rows = result_rows(report)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def markdown_table(report: dict) -> str:
    body = "\n".join(f"| {k.strip()} | {v} |" for k, v in result_rows(report))
    return f"| | |\n|---|---|\n{body}"


def add_results_to_card(model_dir: Path, report: dict) -> bool:
    """Append (or replace) the results section of the model card in `model_dir` (a run's final/)."""
    card = Path(model_dir) / "README.md"
    if not card.is_file():
        return False
    text = card.read_text()
    if CARD_RESULTS_HEADING in text:
        text = text[: text.index(CARD_RESULTS_HEADING)].rstrip() + "\n"
    section = (f"\n{CARD_RESULTS_HEADING}\n\nFrom the run's report.json (held-out accuracy: greedy answers on the "
               f"world's held-out clips, 95% Wilson intervals; the gain is paired over the same clips).\n\n"
               f"{markdown_table(report)}\n\n<details><summary>report.json (abridged)</summary>\n\n```json\n"
               f"{json.dumps(_abridged(report), indent=1)}\n```\n</details>\n")
    card.write_text(text.rstrip() + "\n" + section)
    return True


def _abridged(report: dict) -> dict:
    keep = ("method", "steps", "accuracy_gain", "wall_seconds_total")
    out = {k: report[k] for k in keep if k in report}
    for k in ("accuracy_before", "accuracy_after"):
        if report.get(k):
            out[k] = {"overall": report[k]["overall"]}
    return out
