"""Reports: `scored.jsonl`, `summary.json` and a Markdown `summary.md` per benchmark, an overview table across
benchmarks, and the paper's numbers for side-by-side comparison.

Paper numbers (Video-KTR paper; accuracies in percent):
- Table 1: video benchmarks, 7B models, by number of input frames. Columns: Video-Holmes, VideoMMMU ("VideoMMU"
  in the paper), MMVU (multiple-choice subset), TempCompass, VideoMME.
- Table 3: image benchmarks (MMMU val, AI2D, MMStar, ChartQA).
- Table 5: the same video columns for Qwen2.5-VL-3B models.
"""

from __future__ import annotations

import json
from pathlib import Path

from .scoring import Record

TABLE1_COLUMNS = ("video_holmes", "videommmu", "mmvu", "tempcompass", "videomme")
TABLE3_COLUMNS = ("mmmu", "ai2d", "mmstar", "chartqa")

# (model, frames or None) -> numbers in the order of the table's columns; None where the paper has "-".
PAPER_TABLE1: dict[tuple[str, int | None], tuple[float | None, ...]] = {
    ("GPT-4o", None): (42.0, 61.2, 75.4, 73.8, 71.9),
    ("Gemini-1.5-Pro", None): (41.3, 53.4, 71.2, 67.1, 75.0),
    ("Qwen2.5-VL-7B", None): (27.8, 47.4, 59.2, 67.9, 65.1),
    ("Video-R1-7B", 32): (36.5, 52.3, 63.8, 73.2, 59.3),
    ("TW-GRPO-7B", 16): (32.9, 51.3, 65.8, 73.3, 55.1),
    ("Qwen2.5-VL-7B-SFT", 16): (31.7, 47.4, 61.3, 69.2, 52.8),
    ("Qwen2.5-VL-7B-SFT", 32): (33.9, 49.4, 63.5, 69.9, 55.4),
    ("Qwen2.5-VL-7B-SFT", 64): (33.7, 49.4, 61.6, 70.0, 58.8),
    ("Video-KTR-7B", 16): (40.7, 51.3, 65.7, 73.3, 57.3),
    ("Video-KTR-7B", 32): (41.6, 52.6, 65.9, 73.4, 60.3),
    ("Video-KTR-7B", 64): (42.7, 53.1, 66.6, 73.5, 62.5),
    # Table 5 (Qwen2.5-VL-3B backbone)
    ("GRPO-3B", 16): (32.0, 44.0, 58.4, 65.2, 51.8),
    ("GRPO-3B", 32): (33.1, 44.7, 59.5, 66.7, 54.1),
    ("GRPO-3B", 64): (34.1, 45.0, 60.3, 66.8, 56.0),
    ("Video-KTR-3B", 16): (33.2, 45.1, 60.0, 67.2, 53.0),
    ("Video-KTR-3B", 32): (36.2, 45.3, 61.0, 67.9, 56.2),
    ("Video-KTR-3B", 64): (36.3, 46.8, 61.3, 68.0, 57.5),
}
PAPER_TABLE3: dict[str, tuple[float, ...]] = {
    "Qwen2.5-VL-SFT": (42.89, 75.68, 53.07, 69.92),
    "Vanilla GRPO": (44.33, 76.30, 53.60, 73.08),
    "T-GRPO": (44.67, 77.51, 54.32, 77.04),
    "KTR-Visual Tokens Only": (46.44, 79.27, 57.38, 77.08),
    "Video-KTR": (47.33, 80.34, 57.77, 80.68),
}


def paper_number(benchmark: str, model: str = "Video-KTR-7B", frames: int | None = None) -> tuple[float, str] | None:
    """(number, source) of the paper for `benchmark`, or None. Video benchmarks use Table 1 (or Table 5 for
    3B models) at `frames`; image benchmarks use Table 3 (model names there: see PAPER_TABLE3)."""
    if benchmark in TABLE1_COLUMNS:
        row = PAPER_TABLE1.get((model, frames)) or PAPER_TABLE1.get((model, None))
        if row is None:
            return None
        value = row[TABLE1_COLUMNS.index(benchmark)]
        table = "Table 5" if model.endswith("-3B") else "Table 1"
        return (value, f"{model}, {frames} frames, {table}") if value is not None else None
    if benchmark in TABLE3_COLUMNS:
        name = {"Video-KTR-7B": "Video-KTR", "Qwen2.5-VL-7B-SFT": "Qwen2.5-VL-SFT"}.get(model, model)
        row3 = PAPER_TABLE3.get(name)
        return (row3[TABLE3_COLUMNS.index(benchmark)], f"{name}, Table 3") if row3 else None
    return None


def write_jsonl(path: Path, rows) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.2f}"
    return str(x)


def _row(name: str, b: dict) -> str:
    return f"| {name} | {_fmt(b['accuracy'])} | {_fmt(b['correct'])} | {b['total']} | {b['unparsed']} |"


def markdown_summary(summary: dict, paper: tuple[float, str] | None = None, title: str = "") -> str:
    lines = [f"## {title or summary['benchmark']}", ""]
    head = ["|  | accuracy (%) | correct | total | unparsed |", "|---|---:|---:|---:|---:|"]
    lines += head + [_row("overall", summary)]
    if paper is not None:
        lines.append(f"| paper ({paper[1]}) | {paper[0]:.2f} |  |  |  |")
    notes = []
    if summary.get("missing"):
        notes.append(f"{summary['missing']} items had no prediction and count as wrong.")
    if summary.get("failed"):
        notes.append(f"{summary['failed']} items failed (media unreadable or of the wrong type; listed in "
                     f"failed.jsonl) and count as wrong.")
    if summary.get("unparsed"):
        notes.append(f"{summary['unparsed']} answers could not be read and count as wrong; accuracy over the "
                     f"readable ones: {summary['accuracy_parsed']:.2f}%.")
    if summary.get("settings"):
        s = summary["settings"]
        notes.append("Settings: " + ", ".join(f"{k}={v}" for k, v in s.items()) + ".")
    if notes:
        lines += [""] + notes
    failures = summary.get("failures") or []
    if failures:
        lines += ["", "### failed items", "", "| item | file | reason |", "|---|---|---|"]
        for f in failures[:20]:
            item = f"{f['task']}/{f['id']}" if f.get("task") else f["id"]
            reason = str(f["reason"]).replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {item} | {f.get('file') or ''} | {reason} |")
        if len(failures) > 20:
            lines.append(f"\n... and {len(failures) - 20} more (failed.jsonl, summary.json)")
    for field, values in summary.get("categories", {}).items():
        if len(values) < 2 and field != "question_type":
            continue
        lines += ["", f"### by {field}", "", f"| {field} | accuracy (%) | correct | total | unparsed |",
                  "|---|---:|---:|---:|---:|"]
        lines += [_row(v, b) for v, b in values.items()]
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, records: list[Record], summary: dict,
                 paper: tuple[float, str] | None = None, title: str = "") -> None:
    """Write scored.jsonl, summary.json and summary.md into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "scored.jsonl", (r.to_json() for r in records))
    if paper is not None:
        summary = {**summary, "paper": {"accuracy": paper[0], "source": paper[1]}}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    (out_dir / "summary.md").write_text(markdown_summary(summary, paper, title))


def markdown_overview(rows: list[tuple[str, dict, tuple[float, str] | None]]) -> str:
    """One line per benchmark: (title, summary, paper number or None)."""
    with_paper = any(p is not None for _, _, p in rows)
    head = "| benchmark | accuracy (%) | total | unparsed |" + (" paper | paper source |" if with_paper else "")
    sep = "|---|---:|---:|---:|" + ("---:|---|" if with_paper else "")
    lines = ["# Evaluation summary", "", head, sep]
    notes = []
    for title, s, p in rows:
        line = f"| {title} | {s['accuracy']:.2f} | {s['total']} | {s['unparsed']} |"
        if with_paper:
            line += f" {p[0]:.2f} | {p[1]} |" if p else "  |  |"
        lines.append(line)
        if s.get("failed"):
            notes.append(f"{title}: {s['failed']} items failed (media unreadable or of the wrong type) and count "
                         f"as wrong; see its summary.md.")
    if notes:
        lines += [""] + notes
    return "\n".join(lines) + "\n"
