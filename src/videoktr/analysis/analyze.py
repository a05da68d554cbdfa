"""`videoktr analyze RUN_DIR`: the paper's analysis figures from a run's rollout log and logs, each as
RUN_DIR/analysis/<name>.png + <name>.json, with an index.md that shows them all.

    pos            part-of-speech shares of selected vs unselected tokens per signal (Fig. 4, 6b; spaCy, optional)
    world_roles    the same with the synthetic world's token roles (colour, shape, number, order, function, punct)
    overlap        overlap of the three signals' selections: counts, Jaccard, UpSet-style plot (Fig. 5)
    frequencies    most frequent selected vs unselected tokens (Fig. 6; word clouds too when `wordcloud` is installed)
    positions      update probability by relative token position (Fig. 12)
    gradients      key- vs remaining-token gradient norms and cosines at the final layer, loss variance with and
                   without the mask (Appendix B.1), recomputed on the logged rollouts with the run's final model
    cost           training cost from the logged step times (Table 4, Appendix B.3)

A figure whose input is missing (no tagger installed, not a synthetic-world run, no final model) is still written,
saying why and what to install or pass, so that every name above is always present.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

from . import figures
from .pos import TaggerUnavailable, spacy_tagger, token_categories, world_tagger
from .rollouts import load_rollouts

FIGURES = ("pos", "world_roles", "overlap", "frequencies", "positions", "gradients", "cost")
TITLES = {
    "pos": "Part-of-speech shares of selected vs unselected tokens (Fig. 4, 6b)",
    "world_roles": "Synthetic-world token roles of selected vs unselected tokens",
    "overlap": "Overlap of the visual, temporal and entropy selections (Fig. 5)",
    "frequencies": "Most frequent selected vs unselected tokens (Fig. 6)",
    "positions": "Update probability by token position (Fig. 12)",
    "gradients": "Gradient decomposition: key vs remaining tokens (Appendix B.1)",
    "cost": "Training cost (Table 4, Appendix B.3)",
}


def _clean(obj):
    """JSON-safe: NaN and infinities become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _fmt(x, spec=".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def world_of(records: Sequence[dict]):
    """The synthetic world's config when the run trained on it (its clips lie in <world>/clips/ beside
    world.json), else None."""
    from ..world import load_world_config

    for r in records:
        for v in r.get("videos") or []:
            root = Path(v).parent.parent
            if (root / "world.json").is_file():
                return load_world_config(root)
    return None


def run_history(run_dir: Path) -> list[dict]:
    """The run's logged steps: log_history.json (written at the end), else train_log.jsonl (written as it goes)."""
    path = run_dir / "log_history.json"
    if path.is_file():
        return json.loads(path.read_text())
    path = run_dir / "train_log.jsonl"
    if path.is_file():
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return []


def run_method(run_dir: Path) -> str:
    path = run_dir / "config.json"
    try:
        return json.loads(path.read_text())["rl"]["method"]
    except (OSError, ValueError, KeyError):
        return ""


class _Writer:
    def __init__(self, out: Path):
        self.out = out
        self.entries: dict[str, dict] = {}

    def add(self, name: str, table: dict, summary: str, extra_png: Sequence[str] = ()) -> None:
        (self.out / f"{name}.json").write_text(json.dumps(_clean(table), indent=2))
        self.entries[name] = {"png": str(self.out / f"{name}.png"), "json": str(self.out / f"{name}.json"),
                              "summary": summary, "extra": list(extra_png)}

    def message(self, name: str, message: str, table: dict | None = None) -> None:
        figures.plot_message(self.out / f"{name}.png", TITLES[name], message)
        self.add(name, {"available": False, "message": message, **(table or {})}, message)


def analyze(run_dir: str | Path, out_dir: str | Path | None = None, step: int | None = None,
            gradients: bool = True, checkpoint: str | Path | None = None, compare: Sequence[str | Path] = (),
            cost_benchmark: str | Path | None = None, device: str | None = None, max_gradient_steps: int | None = 8,
            spacy_model: str = "en_core_web_sm", top: int = 20, rope_positions: str | None = None) -> dict:
    """Write every figure of FIGURES for a run (see the module docstring); returns {name: {"png", "json",
    "summary"}} plus "index". Raises analysis.rollouts.NoRollouts when the run has no rollout log.
    rope_positions: the 3D position scheme of the gradients' model (None: the one its directory records, else
    the run's model.rope_positions; models.positions)."""
    run_dir = Path(run_dir)
    records = load_rollouts(run_dir, step)
    out = Path(out_dir) if out_dir else run_dir / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    w = _Writer(out)
    attributed = [r for r in records if r.get("attributed") and r["selected"].get("union") is not None]
    steps = sorted({r["step"] for r in records})
    method = records[0]["method"]
    no_selection = ("no logged response carries a key-token selection: " + (
        "every logged response had a zero advantage (the trainer attributes only responses with a learning signal)"
        if method in ("ktr", "entropy") else f"method {method!r} selects no tokens (only ktr and entropy do)"))

    # part of speech, and the synthetic world's roles
    if not attributed:
        w.message("pos", no_selection)
        w.message("world_roles", no_selection)
    else:
        try:
            tagger = spacy_tagger(spacy_model)
        except TaggerUnavailable as exc:
            w.message("pos", str(exc), {"install": "pip install 'videoktr[pos]' && python -m spacy download "
                                                   f"{spacy_model}"})
        else:
            table = figures.category_shares(records, lambda toks: token_categories(toks, tagger))
            figures.plot_category_shares(table, out / "pos.png", TITLES["pos"])
            w.add("pos", table, _category_summary(table))
        world = world_of(records)
        if world is None:
            w.message("world_roles", "not a synthetic-world run: the world's token roles apply to runs on the "
                                     "built-in synthetic world only")
        else:
            tagger = world_tagger(world.colours, world.shapes)
            table = figures.category_shares(records, lambda toks: token_categories(toks, tagger))
            figures.plot_category_shares(table, out / "world_roles.png", TITLES["world_roles"])
            w.add("world_roles", table, _category_summary(table))

    # overlap of the signals
    if attributed:
        table = figures.signal_overlap(records)
        figures.plot_overlap(table, out / "overlap.png")
        jac = ", ".join(f"{k} {_fmt(v, '.2f')}" for k, v in table["jaccard"].items())
        w.add("overlap", table, f"union {table['union']} of {table['tokens']} tokens ({_fmt(table['update_ratio'], '.1%')}); "
                                f"Jaccard {jac or 'n/a (one signal)'}")
    else:
        w.message("overlap", no_selection)

    # token frequencies
    if attributed:
        table = figures.token_frequencies(records, "union", top)
        table["per_signal"] = {s: figures.token_frequencies(records, s, top) for s in figures.signals_of(records)}
        figures.plot_frequencies(table, out / "frequencies.png")
        extra = ["frequencies_wordcloud.png"] if figures.plot_word_clouds(table, out / "frequencies_wordcloud.png") \
            else []
        head = lambda side: ", ".join(f"{k!r}" for k, _, _ in table[side][:5])  # noqa: E731
        w.add("frequencies", table, f"selected: {head('selected')}; unselected: {head('unselected')}", extra)
    else:
        w.message("frequencies", no_selection)

    # positions
    table = figures.update_by_position(records)
    if table["responses"]:
        figures.plot_positions(table, out / "positions.png")
        w.add("positions", table, f"update probability {_fmt(table['probability'][0], '.2f')} in the first tenth, "
                                  f"{_fmt(table['probability'][-1], '.2f')} in the last ({table['total_tokens']} tokens)")
    else:
        w.message("positions", "no logged response has a token mask or token weights (method grpo or tgrpo, or "
                               "every response had zero advantage)")

    # gradient decomposition
    if not gradients:
        w.message("gradients", "skipped (--no-gradients)")
    elif not attributed:
        w.message("gradients", no_selection)
    else:
        try:
            table = _gradients(run_dir, records, checkpoint, device, max_gradient_steps, rope_positions)
        except FileNotFoundError as exc:
            w.message("gradients", str(exc))
        else:
            if table["steps"]:
                figures.plot_gradients(table, out / "gradients.png")
                m, g = table["mean"], table["parameters"][0]
                w.add("gradients", table, f"{g}: |g_key| {_fmt(m[g]['norm_key'])} vs |g_rest| {_fmt(m[g]['norm_rest'])}; "
                                          f"cos(key, full) {_fmt(m[g]['cos_key_full'])} vs cos(rest, full) "
                                          f"{_fmt(m[g]['cos_rest_full'])}; loss variance {_fmt(m['loss_variance_masked'], '.3g')} "
                                          f"with the mask vs {_fmt(m['loss_variance_unmasked'], '.3g')} without")
            else:
                w.message("gradients", "no logged step has both key and remaining tokens", table)

    # cost
    runs = [(str(run_dir), run_method(run_dir), run_history(run_dir))]
    runs += [(str(Path(c)), run_method(Path(c)), run_history(Path(c))) for c in compare]
    bench = json.loads(Path(cost_benchmark).read_text()) if cost_benchmark else None
    table = figures.cost_table(runs, bench)
    figures.plot_cost(table, out / "cost.png")
    first = table["rows"][0]
    w.add("cost", table, f"{_fmt(first['mean_step_seconds'])} s/step, attribution {_fmt(first['attribution_share'], '.1%')} "
                         f"of it; rollout log {_fmt(first['rollout_log_seconds_per_logged_step'], '.4f')} s per logged step")

    index = out / "index.md"
    index.write_text(_index(run_dir, steps, len(records), len(attributed), w.entries, table))
    result = dict(w.entries)
    result["index"] = str(index)
    return result


def _gradients(run_dir: Path, records, checkpoint, device, max_steps, rope_positions=None) -> dict:
    import torch

    from ..models.factory import load_model, load_processor
    from .gradients import analysed_model, gradient_decomposition

    model_dir = analysed_model(run_dir, checkpoint)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
    data = config.get("data") or {}
    proc_dir = model_dir if (model_dir / "preprocessor_config.json").is_file() or \
        (model_dir / "processor_config.json").is_file() else Path(records[0]["settings"].get("model") or model_dir)
    processor = load_processor(proc_dir, min_pixels=data.get("min_pixels"), max_pixels=data.get("max_pixels"))
    # the 3D position scheme the model trained with: the flag, else its directory's record, else the run's
    # model.rope_positions (a run from before the option trained with transformers'), else load_model's choice
    from ..models.positions import recorded_scheme

    scheme = rope_positions or recorded_scheme(model_dir)
    if scheme is None and config:
        scheme = (config.get("model") or {}).get("rope_positions", "transformers")
    model = load_model(model_dir, dtype="float32", rope_positions=scheme).to(device)
    table = gradient_decomposition(model, processor, records, device=device, max_steps=max_steps)
    table["model"] = str(model_dir)
    return table


def _category_summary(table: dict) -> str:
    parts = []
    for s, t in table.items():
        top_sel = next(iter(t["selected"].items()), None)
        top_un = next(iter(t["unselected"].items()), None)
        if top_sel and top_un:
            parts.append(f"{s}: {top_sel[0]} {top_sel[1]:.0%} selected / {top_un[0]} {top_un[1]:.0%} unselected")
    return "; ".join(parts) or "no tokens"


def _index(run_dir: Path, steps, n_records, n_attributed, entries: dict, cost: dict) -> str:
    lines = [f"# Analysis of {run_dir}", "",
             f"{n_records} logged responses from {len(steps)} logged steps ({steps[0]}..{steps[-1]}), "
             f"{n_attributed} of them with a key-token selection. Each figure's numbers are in the JSON beside it.", ""]
    for name in FIGURES:
        e = entries[name]
        lines += [f"## {TITLES[name]}", "", e["summary"], "", f"![{name}]({name}.png)", ""]
        lines += [f"![{name}]({x})" for x in e["extra"]]
        lines += [f"Data: [{name}.json]({name}.json)", ""]
        if name == "cost":
            lines += _cost_markdown(cost) + [""]
    return "\n".join(lines)


def _cost_markdown(cost: dict) -> list[str]:
    head = ["run", "method", "steps", "TT (h)", "SPS", "s/step", "attribution s/step", "attribution share",
            "rollout log s/logged step", "peak mem (GB)"]
    keys = ["run", "method", "steps", "train_hours", "samples_per_second", "mean_step_seconds",
            "attribution_seconds_per_step", "attribution_share", "rollout_log_seconds_per_logged_step",
            "peak_memory_gb"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in cost["rows"]:
        rows.append("| " + " | ".join(str(r[k]) if isinstance(r[k], (str, int)) else _fmt(r[k], ".4g")
                                      for k in keys) + " |")
    if cost["benchmark"]:
        names = sorted({k for r in cost["benchmark"] for k in r})
        rows += ["", "Cost benchmark:", "", "| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
        rows += ["| " + " | ".join(str(r.get(k, "")) for k in names) + " |" for r in cost["benchmark"]]
    return rows
