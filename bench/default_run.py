"""The default run's result over several seeds: the numbers the README and docs/default-run.md show.

  .venv/bin/python bench/default_run.py [--seeds 0 1 2] [--runs-dir runs] [--report-only] [-- EXTRA TRAIN FLAGS]

For each seed, `videoktr train --seed S --output-dir RUNS/default-seed-S` (the default run; a seed draws the
offline base model, its warm start and the RL run, so each seed is a fresh build of everything; a finished run
is not trained again, an interrupted one resumes). Then it writes bench/results/default_run.json and rewrites the
marked results block in README.md and docs/default-run.md from the runs' report.json files: the range over
seeds of held-out accuracy before and after RL and of the paired gain, each seed's numbers, per-family means,
the share of steps without gradient and the wall time. `--report-only` only rewrites the blocks.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- default-run-results: written by bench/default_run.py -->", "<!-- /default-run-results -->"
TARGETS = (ROOT / "README.md", ROOT / "docs" / "default-run.md")


def _range(values: list[float], scale: float = 1.0, fmt: str = ".3f", sign: str = "") -> str:
    lo, hi = min(values) * scale, max(values) * scale
    return f"{lo:{sign}{fmt}}" if lo == hi else f"{lo:{sign}{fmt}} to {hi:{sign}{fmt}}"


def summarize(reports: dict[int, dict]) -> dict:
    seeds = sorted(reports)
    per_seed = []
    for s in seeds:
        r = reports[s]
        g = r["accuracy_gain"]
        per_seed.append({"seed": s, "before": r["accuracy_before"]["overall"]["accuracy"],
                         "after": r["accuracy_after"]["overall"]["accuracy"], "gain": g["gain"],
                         "ci95": g["ci95"], "p_value": g["p_value"], "n": g["n"],
                         "share_steps_without_gradient": r["train"]["learning_signal"]["share_steps_without_gradient"],
                         "wall_seconds_total": r.get("wall_seconds_total", r.get("wall_seconds")),
                         "families": {f: (r["accuracy_before"]["per_family"][f]["accuracy"], v["accuracy"])
                                      for f, v in r["accuracy_after"]["per_family"].items()}})
    families = sorted(per_seed[0]["families"])
    return {"seeds": seeds, "per_seed": per_seed,
            "family_means": {f: [statistics.mean(p["families"][f][i] for p in per_seed) for i in (0, 1)]
                             for f in families}}


def block(summary: dict) -> str:
    ps = summary["per_seed"]
    n = ps[0]["n"]
    lines = [BEGIN, "",
             f"Held-out accuracy on {n:,} clips, "
             + (f"over {len(ps)} seeds (each seed a fresh base model, warm start and RL run)" if len(ps) > 1 else
                f"seed {ps[0]['seed']} (more seeds: `bench/default_run.py --seeds 0 1 2`)")
             + f": **{_range([p['before'] for p in ps])} after the warm start, {_range([p['after'] for p in ps])} "
             f"after RL**, a paired gain of {_range([p['gain'] for p in ps], 100, '.1f', '+')} points.", "",
             "| seed | warm start | after RL | paired gain [95% CI] | McNemar p | steps without gradient | wall time |",
             "|---|---|---|---|---|---|---|"]
    for p in ps:
        lo, hi = p["ci95"]
        lines.append(f"| {p['seed']} | {p['before']:.3f} | {p['after']:.3f} | {100 * p['gain']:+.1f} "
                     f"[{100 * lo:+.1f}, {100 * hi:+.1f}] | {p['p_value']:.3g} | "
                     f"{100 * p['share_steps_without_gradient']:.0f}% | {p['wall_seconds_total'] / 60:.0f} min |")
    fam = ", ".join(f"{f} {b:.3f} -> {a:.3f}" for f, (b, a) in summary["family_means"].items())
    lines += ["", f"Per family{' (mean over seeds)' if len(ps) > 1 else ''}: {fam}. Wall time: 2 CPU cores shared "
              f"with other jobs, warm start not included when it was cached.", "", END]
    return "\n".join(lines)


def rewrite(path: Path, text: str) -> None:
    content = path.read_text()
    if BEGIN not in content or END not in content:
        raise SystemExit(f"{path}: no results block ({BEGIN} ... {END})")
    head, rest = content.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(head + text + tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--report-only", action="store_true", help="rewrite the blocks from existing runs")
    args, extra = parser.parse_known_args()
    extra = [x for x in extra if x != "--"]
    reports = {}
    for seed in args.seeds:
        out = Path(args.runs_dir) / f"default-seed-{seed}"
        if not args.report_only:
            cmd = [sys.executable, "-m", "videoktr.cli", "train", "--seed", str(seed), "--output-dir", str(out), *extra]
            print("+ " + " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
        report = out / "report.json"
        if report.is_file():
            reports[seed] = json.loads(report.read_text())
        else:
            print(f"no {report}: seed {seed} left out", file=sys.stderr)
    if not reports:
        raise SystemExit("no finished run to report")
    summary = summarize(reports)
    results = ROOT / "bench" / "results" / "default_run.json"
    results.parent.mkdir(exist_ok=True)
    results.write_text(json.dumps(summary, indent=2))
    text = block(summary)
    for path in TARGETS:
        rewrite(path, text)
    print(text)
    print(f"wrote {results} and the blocks in {', '.join(str(p.relative_to(ROOT)) for p in TARGETS)}")


if __name__ == "__main__":
    main()
