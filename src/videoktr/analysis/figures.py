"""The tables behind `videoktr analyze`'s figures, computed from rollout-log records (`analysis.rollouts`), and their
plots (matplotlib, Agg). Each table function is pure (records in, JSON-ready dict out); each plot function draws one
table into a PNG.

category_shares   categories (POS tags or the synthetic world's roles) of selected vs unselected tokens per
                  signal (paper Fig. 4 and 6b)
signal_overlap    how the three signals' selections overlap: tokens per combination (an UpSet plot), pairwise
                  intersections and Jaccard indices, the union's share (paper Fig. 5)
token_frequencies the most frequent selected and unselected tokens (paper Fig. 6, as ranked bars)
update_by_position the share of tokens updated by relative position in the response (paper Fig. 12)
cost_table        training cost from a run's logged step times (paper Table 4, Appendix B.3)

Which tokens count: those of responses the method attributed (zero-advantage responses the trainer skipped carry no
selection); for a signal, the tokens where it is defined (a text-only prompt has no visual or temporal score).
"""

from __future__ import annotations

import math
from collections import Counter
from itertools import combinations
from pathlib import Path
from typing import Callable, Sequence

SIGNALS = ("visual", "temporal", "entropy")


def _attributed(records: Sequence[dict]) -> list[dict]:
    return [r for r in records if r.get("attributed") and r["selected"].get("union") is not None]


def signals_of(records: Sequence[dict]) -> list[str]:
    """The signals with a selection in any attributed record, in paper order."""
    present = {s for r in _attributed(records) for s in SIGNALS if r["selected"].get(s) is not None}
    return [s for s in SIGNALS if s in present]


def updated_mask(record: dict) -> list[bool] | None:
    """Which tokens of a response the loss updates: the union of the selections, else the tokens of positive
    weight (soft weightings, TW-GRPO), else None."""
    union = record["selected"].get("union")
    if union is not None:
        return list(union)
    if record.get("weights") is not None:
        return [w > 0 for w in record["weights"]]
    return None


def _defined(record: dict, signal: str) -> list[bool]:
    """Where a signal is defined on a response (the union: where any signal is)."""
    n = len(record["tokens"])
    if signal == "union":
        out = [False] * n
        for s in SIGNALS:
            for t, ok in enumerate(_defined(record, s)):
                out[t] = out[t] or ok
        return out
    scores = record["scores"].get(signal)
    if scores is None:
        return [False] * n
    return [v is not None for v in scores]


def _shares(counter: Counter) -> dict[str, float]:
    total = sum(counter.values())
    return {k: v / total for k, v in counter.most_common()} if total else {}


def category_shares(records: Sequence[dict], categorize: Callable[[list[str]], list[str]],
                    signals: Sequence[str] | None = None, exclude: Sequence[str] = ()) -> dict:
    """Shares of each category among the selected and the unselected tokens of each signal (and of the union).

    categorize(tokens) -> one category per token; categories in `exclude` are left out of the counts (e.g. the
    response format's tags, which say nothing about language). Returns {signal: {"selected": {category: share},
    "unselected": {...}, "n_selected", "n_unselected"}}: each side's shares sum to 1 (when it has tokens)."""
    signals = list(signals or signals_of(records)) + ["union"]
    counts = {s: (Counter(), Counter()) for s in signals}
    for r in _attributed(records):
        cats = categorize(r["tokens"])
        for s in signals:
            sel = r["selected"].get(s)
            if sel is None:
                continue
            for c, picked, ok in zip(cats, sel, _defined(r, s)):
                if ok and c not in exclude:
                    counts[s][0 if picked else 1][c] += 1
    return {s: {"selected": _shares(a), "unselected": _shares(b), "n_selected": sum(a.values()),
                "n_unselected": sum(b.values())} for s, (a, b) in counts.items()}


def signal_overlap(records: Sequence[dict], signals: Sequence[str] | None = None) -> dict:
    """Overlap of the signals' selections over the tokens of attributed responses.

    Returns {"signals", "tokens" (all tokens counted), "selected" {signal: count}, "combinations": [{"signals":
    [...], "tokens": n}] (tokens selected by exactly that set of signals, every non-empty set),
    "intersections" {"a&b": n}, "jaccard" {"a&b": |A∩B| / |A∪B|}, "union" (tokens selected by any), "update_ratio"
    (union / tokens), "unique" {signal: tokens only it selects}}."""
    signals = list(signals or signals_of(records))
    exact: Counter = Counter()
    selected: Counter = Counter()
    total = 0
    for r in _attributed(records):
        n = len(r["tokens"])
        total += n
        masks = {s: list(r["selected"].get(s) or [False] * n) for s in signals}
        for t in range(n):
            combo = tuple(s for s in signals if masks[s][t])
            exact[combo] += 1
            for s in combo:
                selected[s] += 1
    pairs = {}
    jaccard = {}
    for a, b in combinations(signals, 2):
        both = sum(v for k, v in exact.items() if a in k and b in k)
        either = sum(v for k, v in exact.items() if a in k or b in k)
        pairs[f"{a}&{b}"] = both
        jaccard[f"{a}&{b}"] = both / either if either else float("nan")
    union = sum(v for k, v in exact.items() if k)
    combos = [{"signals": list(c), "tokens": exact.get(c, 0)}
              for k in range(1, len(signals) + 1) for c in combinations(signals, k)]
    return {"signals": signals, "tokens": total, "selected": {s: selected[s] for s in signals},
            "combinations": combos, "intersections": pairs, "jaccard": jaccard, "union": union,
            "update_ratio": union / total if total else float("nan"),
            "unique": {s: exact.get((s,), 0) for s in signals}}


def token_key(token: str) -> str:
    """How a token is shown and counted: its text without surrounding spaces; "␣" for whitespace, "∅" for a token
    that decodes to nothing on its own (a part of a character)."""
    stripped = token.strip()
    if stripped:  # control characters (a byte-level model's stray bytes) shown escaped: fonts have no glyph for them
        return stripped if stripped.isprintable() else stripped.encode("unicode_escape").decode("ascii")
    return "␣" if token else "∅"


def token_frequencies(records: Sequence[dict], signal: str = "union", top: int = 20) -> dict:
    """The `top` most frequent selected and unselected tokens of one signal (or the union).

    Returns {"signal", "selected": [[token, count, share], ...], "unselected": [...], "n_selected", "n_unselected"};
    shares are of all the side's tokens."""
    sides = (Counter(), Counter())
    for r in _attributed(records):
        sel = r["selected"].get(signal)
        if sel is None:
            continue
        for tok, picked, ok in zip(r["tokens"], sel, _defined(r, signal)):
            if ok:
                sides[0 if picked else 1][token_key(tok)] += 1
    out = {"signal": signal}
    for name, c in zip(("selected", "unselected"), sides):
        n = sum(c.values())
        out[name] = [[k, v, v / n] for k, v in c.most_common(top)]
        out[f"n_{name}"] = n
    return out


def update_by_position(records: Sequence[dict], bins: int = 10, absolute: int = 64,
                       min_count: int | None = None) -> dict:
    """Share of tokens updated by position in the response (paper Fig. 12).

    Relative position of token t of an n-token response: t / n, in `bins` equal bins of [0, 1) (bin floor(bins*t/n));
    absolute: the first `absolute` token indices. Updated: `updated_mask` (the union of the selections). Per signal
    too. Returns {"bins", "edges", "tokens" [per bin], "updated" [per bin], "probability" [per bin],
    "per_signal" {signal: probability per bin}, "absolute": {"tokens", "updated", "probability", "shown"},
    "shown", "min_count", "responses", "total_tokens"}; the bins' tokens add up to every token of the attributed
    responses. "shown": the bins (and absolute indices) with at least `min_count` tokens, the ones the figure
    draws (an index that one response reaches is 0 or 1; default: a tenth of the responses, between 1 and 20)."""
    tokens, updated = [0] * bins, [0] * bins
    per_signal = {s: [0] * bins for s in signals_of(records)}
    abs_tokens, abs_updated = [0] * absolute, [0] * absolute
    responses = 0
    for r in records:
        mask = updated_mask(r) if r.get("attributed") else None
        if mask is None:
            continue
        responses += 1
        n = len(mask)
        for t, up in enumerate(mask):
            b = min(bins - 1, (bins * t) // n)
            tokens[b] += 1
            updated[b] += bool(up)
            for s, counts in per_signal.items():
                sel = r["selected"].get(s)
                counts[b] += bool(sel is not None and sel[t])
            if t < absolute:
                abs_tokens[t] += 1
                abs_updated[t] += bool(up)

    def ratio(a, b):
        return [x / y if y else float("nan") for x, y in zip(a, b)]

    if min_count is None:
        min_count = max(1, min(20, responses // 10))

    def shown(counts):
        return [i for i, n in enumerate(counts) if n >= min_count]

    return {"bins": bins, "edges": [i / bins for i in range(bins + 1)], "tokens": tokens, "updated": updated,
            "probability": ratio(updated, tokens), "per_signal": {s: ratio(c, tokens) for s, c in per_signal.items()},
            "shown": shown(tokens), "min_count": min_count,
            "absolute": {"tokens": abs_tokens, "updated": abs_updated, "probability": ratio(abs_updated, abs_tokens),
                         "shown": shown(abs_tokens)},
            "responses": responses, "total_tokens": sum(tokens)}


def _mean(values) -> float | None:
    values = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(values) / len(values) if values else None


def cost_row(history: Sequence[dict], name: str = "", method: str = "") -> dict:
    """One run's training cost from its log history (log_history.json): wall time of training (TT, hours),
    samples per second (SPS), mean step time, the attribution's seconds per step and share of the step, the rollout
    log's seconds per logged step, and peak GPU memory when logged. None where the run did not log it."""
    steps = [h for h in history if "step_time" in h or "loss" in h]
    final = next((h for h in reversed(history) if "train_runtime" in h), {})
    step_time = _mean(h.get("step_time") for h in steps)
    attribution = _mean(h.get("ktr/attribution_seconds") for h in steps)
    rollout = _mean(h.get("rollout_log_seconds") for h in steps)
    logged = [h["rollout_log_seconds"] for h in steps if h.get("rollout_log_seconds") is not None]
    memory = [h.get("peak_memory_gb") for h in steps if h.get("peak_memory_gb") is not None]
    runtime = final.get("train_runtime")
    return {"run": name, "method": method, "steps": max((h.get("step", 0) for h in history), default=0),
            "train_hours": runtime / 3600 if runtime is not None else None,
            "train_seconds": runtime, "samples_per_second": final.get("train_samples_per_second"),
            "mean_step_seconds": step_time, "attribution_seconds_per_step": attribution,
            "attribution_share": attribution / step_time if attribution is not None and step_time else None,
            "rollout_log_seconds_per_logged_step": rollout,
            "rollout_log_share": rollout / step_time if rollout is not None and step_time else None,
            # the log's time spread over every step (it is spent on logged steps only, inside their step time)
            "rollout_log_seconds_per_step": sum(logged) / len(steps) if logged and steps else None,
            "peak_memory_gb": max(memory) if memory else None}


def cost_table(runs: Sequence[tuple[str, str, Sequence[dict]]], benchmark: dict | list | None = None) -> dict:
    """Rows of `cost_row` for each (name, method, history), plus the rows of a cost benchmark's results when given
    (a list of row dicts, or {"rows": [...]})."""
    rows = [cost_row(h, name, method) for name, method, h in runs]
    bench = benchmark.get("rows") if isinstance(benchmark, dict) else benchmark
    return {"rows": rows, "benchmark": list(bench or [])}


# ---------------------------------------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)


def plot_category_shares(table: dict, path, title: str, top: int = 12) -> None:
    """One panel per signal (and the union): each category's share among the selected and the unselected tokens."""
    plt = _plt()
    signals = list(table)
    cats: Counter = Counter()
    for s in signals:
        for side in ("selected", "unselected"):
            for c, v in table[s][side].items():
                cats[c] += v
    order = [c for c, _ in cats.most_common(top)][::-1]
    fig, axes = plt.subplots(1, len(signals), figsize=(3.2 * len(signals) + 1, 0.32 * len(order) + 1.8),
                             sharey=True, squeeze=False)
    ys = range(len(order))
    for ax, s in zip(axes[0], signals):
        for offset, side, colour in ((0.2, "selected", "#c44e52"), (-0.2, "unselected", "#8c8c8c")):
            ax.barh([y + offset for y in ys], [table[s][side].get(c, 0.0) for c in order], 0.4, color=colour,
                    label=f"{side} (n={table[s]['n_' + side]})")
        ax.set_title(s)
        ax.set_xlabel("share of tokens")
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0][0].set_yticks(list(ys), order)
    fig.suptitle(title)
    _save(fig, path)


def plot_message(path, title: str, message: str) -> None:
    """A figure that says why it has no data (e.g. no tagger installed), so that no figure is silently missing."""
    import textwrap

    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, "\n".join(textwrap.wrap(message, 90)), ha="center", va="center", fontsize=9,
            transform=ax.transAxes)
    _save(fig, path)


def plot_overlap(table: dict, path) -> None:
    """UpSet-style plot: tokens per exact combination of signals (bars) over a dot matrix, plus set sizes."""
    plt = _plt()
    signals = table["signals"]
    combos = [c for c in table["combinations"]]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, 1.1 * len(combos) + 2), 5.5), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1.4]})
    xs = list(range(len(combos)))
    bars = top.bar(xs, [c["tokens"] for c in combos], color="#4c72b0")
    for x, b, c in zip(xs, bars, combos):
        top.text(x, b.get_height(), str(c["tokens"]), ha="center", va="bottom", fontsize=8)
    jac = ", ".join(f"J({k})={v:.2f}" for k, v in table["jaccard"].items())
    top.set_title(f"selected tokens by combination of signals: union {table['union']} of {table['tokens']} tokens "
                  f"({table['update_ratio']:.1%})\n{jac}", fontsize=9)
    top.set_ylabel("tokens selected by exactly these")
    top.grid(axis="y", alpha=0.3)
    for x, c in enumerate(combos):
        ys = [signals.index(s) for s in c["signals"]]
        bottom.scatter([x] * len(signals), range(len(signals)), color="#dddddd", s=50)
        bottom.scatter([x] * len(ys), ys, color="black", s=50)
        if len(ys) > 1:
            bottom.plot([x, x], [min(ys), max(ys)], color="black")
    bottom.set_yticks(range(len(signals)), [f"{s} ({table['selected'][s]})" for s in signals])
    bottom.set_xticks([])
    bottom.set_ylim(-0.5, len(signals) - 0.5)
    _save(fig, path)


def plot_frequencies(table: dict, path) -> None:
    """Ranked bars of the most frequent selected and unselected tokens, side by side (Fig. 6 as bars)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, max(3.5, 0.28 * max(len(table["selected"]),
                                                                   len(table["unselected"])) + 1.5)))
    for ax, side, colour in zip(axes, ("selected", "unselected"), ("#c44e52", "#8c8c8c")):
        rows = table[side][::-1]
        ax.barh(range(len(rows)), [r[2] for r in rows], color=colour)
        ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
        ax.set_xlabel("share of the side's tokens")
        ax.set_title(f"{side} tokens ({table['signal']}, n={table['n_' + side]})")
        ax.grid(axis="x", alpha=0.3)
    _save(fig, path)


def plot_word_clouds(table: dict, path) -> bool:
    """Word clouds of selected and unselected tokens when the optional `wordcloud` package is installed; False
    (nothing written) otherwise."""
    try:
        from wordcloud import WordCloud
    except ImportError:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, side in zip(axes, ("selected", "unselected")):
        freqs = {k: c for k, c, _ in table[side]}
        ax.axis("off")
        ax.set_title(f"{side} tokens ({table['signal']})")
        if freqs:
            cloud = WordCloud(width=600, height=400, background_color="white", random_state=0)
            ax.imshow(cloud.generate_from_frequencies(freqs), interpolation="bilinear")
    _save(fig, path)
    return True


def plot_positions(table: dict, path) -> None:
    """Update probability by relative position (bars, per-signal lines) and by absolute token index, each point
    with enough tokens behind it (table["shown"]: bins under table["min_count"] tokens are left out), and the
    number of tokens behind each point (bar labels; the absolute panel's grey bars on a second axis)."""
    plt = _plt()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    keep = table.get("shown", range(table["bins"]))
    centres = [(a + b) / 2 for a, b in zip(table["edges"][:-1], table["edges"][1:])]
    xs = [centres[i] for i in keep]
    bars = ax.bar(xs, [table["probability"][i] for i in keep], width=1 / table["bins"] * 0.9, color="#4c72b0",
                  alpha=0.7, label="updated (union)")
    ax.bar_label(bars, labels=[f"n={table['tokens'][i]}" for i in keep], fontsize=7, color="#555555")
    for s, p in table["per_signal"].items():
        ax.plot(xs, [p[i] for i in keep], marker="o", label=s)
    ax.set_xlabel("relative position in the response")
    ax.set_ylabel("update probability")
    ax.set_title(f"{table['total_tokens']} tokens of {table['responses']} responses")
    ax.set_ylim(0, 1.1)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    a = table["absolute"]
    idx = a.get("shown", [i for i, n in enumerate(a["tokens"]) if n])
    counts = ax2.twinx()
    counts.bar(idx, [a["tokens"][i] for i in idx], width=0.8, color="#cccccc", zorder=0)
    counts.set_ylabel("responses reaching the index", color="#777777")
    ax2.set_zorder(counts.get_zorder() + 1)
    ax2.patch.set_visible(False)
    ax2.plot(idx, [a["probability"][i] for i in idx], marker=".", color="#4c72b0")
    ax2.set_xlabel("token index in the response")
    ax2.set_ylabel("update probability")
    ax2.set_ylim(0, 1.02)
    ax2.grid(alpha=0.3)
    hidden = sum(1 for n in a["tokens"] if 0 < n < table.get("min_count", 1))
    ax2.set_title("by absolute position" + (f" ({hidden} indices reached by fewer than {table['min_count']} "
                                            "responses left out)" if hidden else ""), fontsize=10)
    _save(fig, path)


def step_ticks(steps: Sequence[int], most: int = 12) -> list[int]:
    """The x ticks of a per-logged-step figure: the logged steps themselves, or (more than `most`) an even
    selection of them that keeps the first and the last."""
    steps = list(steps)
    if len(steps) <= most:
        return steps
    picks = sorted({round(i * (len(steps) - 1) / (most - 1)) for i in range(most)})
    return [steps[i] for i in picks]


def plot_gradients(table: dict, path) -> None:
    """Per logged step: gradient norms of key vs remaining tokens, their cosine with the full gradient, and the loss
    variance across responses with and without the mask (Appendix B.1 / Fig. 11)."""
    plt = _plt()
    steps = table["steps"]
    xs = [s["step"] for s in steps]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    group = table["parameters"][0]
    for key, label in (("key", "key tokens"), ("rest", "remaining tokens"), ("full", "all tokens")):
        axes[0].plot(xs, [s[group][f"norm_{key}"] for s in steps], marker="o", label=label)
    axes[0].set_title(f"gradient norm ({group})")
    for key, label in (("key_full", "cos(key, full)"), ("rest_full", "cos(rest, full)"),
                       ("key_rest", "cos(key, rest)")):
        axes[1].plot(xs, [s[group][f"cos_{key}"] for s in steps], marker="o", label=label)
    axes[1].set_ylim(-1.05, 1.05)
    axes[1].set_title(f"gradient alignment ({group})")
    axes[2].plot(xs, [s["loss_variance_masked"] for s in steps], marker="o", label="with mask (Eq. 2)")
    axes[2].plot(xs, [s["loss_variance_unmasked"] for s in steps], marker="o", label="without mask (Eq. 1)")
    axes[2].set_title("loss variance across responses")
    ticks = step_ticks(xs)
    for ax in axes:
        ax.set_xlabel("logged step")
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)


def plot_cost(table: dict, path) -> None:
    """The cost table as a figure: mean step time split into attribution, rollout logging and the rest."""
    plt = _plt()
    rows = table["rows"]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows) + 3), 4))
    names = [f"{Path(r['run']).name or r['run']}\n{r['method']}" for r in rows]
    attr = [r["attribution_seconds_per_step"] or 0.0 for r in rows]
    log = [r["rollout_log_seconds_per_step"] or 0.0 for r in rows]  # spread over every step
    rest = [max(0.0, (r["mean_step_seconds"] or 0.0) - a - b) for r, a, b in zip(rows, attr, log)]
    ax.bar(names, rest, label="rest of the step", color="#8c8c8c")
    ax.bar(names, attr, bottom=rest, label="attribution", color="#c44e52")
    ax.bar(names, log, bottom=[a + b for a, b in zip(rest, attr)], label="rollout log (spread over every step)",
           color="#55a868")
    ax.set_ylabel("seconds per step")
    ax.set_title("training cost per step")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
