"""Metrics of a model on the synthetic video world (for warm starts and run reports).

heldout_accuracy     greedy answers on held-out clips: accuracy overall, per question family and per kind, with
                     a 95% Wilson interval and counts.
attribution_quality  how well each attribution signal finds the ground-truth token roles on held-out REFERENCE
                     responses (teacher-forced through `videoktr.attribution.attribute`): ROC-AUC of the score
                     against the prefix-conditional label and the unconditional one, and the share of the
                     signal's top-r tokens per response (`core.top_ratio_mask`, the training selection) that
                     carry the label. Visual score vs vision-dependent, temporal score vs order-dependent,
                     entropy vs both; every visual and temporal perturbation strategy.
roc_auc              rank-based ROC-AUC with ties averaged.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Mapping, Sequence

import numpy as np
import torch

from .. import world as synthetic

# Which ground-truth labels each signal is compared with (first = the matching one).
SIGNAL_LABELS = {
    "visual": ("vision", "vision_uncond"),
    "temporal": ("order", "order_uncond"),
    "entropy": ("vision", "order", "vision_uncond", "order_uncond"),
}


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (n = 0 -> (0, 1))."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def roc_auc(scores, labels) -> float:
    """P(score of a random positive > score of a random negative), ties counting 1/2 (Mann-Whitney U from
    average ranks). NaN when either class is empty."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    avg_rank = starts + (counts + 1) / 2.0  # 1-based average rank of each distinct value
    ranks = avg_rank[inverse]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _stats(correct: int, n: int, chance: float, formatted: int) -> dict:
    lo, hi = wilson_interval(correct, n)
    return {"accuracy": correct / n if n else float("nan"), "correct": correct, "n": n, "ci95": [lo, hi],
            "chance": chance, "format": formatted / n if n else float("nan")}


def _batches(items: Sequence, batch_size: int) -> list[list]:
    """Consecutive batches of at most batch_size, none of size 1 unless there is a single item."""
    n = len(items)
    if n == 0:
        return []
    k = max(1, math.ceil(n / batch_size))
    bounds = np.linspace(0, n, k + 1).round().astype(int)
    return [list(items[a:b]) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


@torch.no_grad()
def generate_responses(model, processor, rows: Sequence[dict], world_dir, batch_size: int = 64,
                       max_new_tokens: int = 48, clips: dict | None = None, config=None, samples: int = 0,
                       temperature: float = 1.0, top_p: float = 1.0) -> list[str]:
    """Greedy responses (decoded with skip_special_tokens=True, as TRL does), vision tokens suppressed. With
    `samples` >= 1: that many sampled responses per row (temperature, top_p; torch's global RNG), row by row
    (rows[0]'s samples first); `batch_size` then counts rows."""
    from ..models.factory import suppressed_token_ids

    config = config or synthetic.load_world_config(world_dir)
    clips = synthetic.load_clips(world_dir, rows, config, clips)
    tok = processor.tokenizer
    suppress = suppressed_token_ids(tok)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    texts: list[str] = []
    try:
        for batch in _batches(list(rows), batch_size):
            enc = synthetic.encode_rows(processor, batch, clips, padding_side="left").to(device)
            sampling = (dict(do_sample=True, num_return_sequences=samples, temperature=temperature, top_p=top_p,
                             top_k=0) if samples else dict(do_sample=False))
            out = model.generate(**enc, max_new_tokens=max_new_tokens, suppress_tokens=suppress,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **sampling)
            texts += tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        model.train(was_training)
    return texts


def heldout_accuracy(model, processor, rows: Sequence[dict], world_dir, batch_size: int = 64,
                     max_new_tokens: int = 48, clips: dict | None = None, examples: int = 2) -> dict:
    """Greedy accuracy on `rows` (synthetic-world rows).

    Returns {"overall": S, "per_family": {family: S}, "per_kind": {kind: S}, "examples": [...]}, each S =
    {"accuracy", "correct", "n", "ci95": [low, high] (Wilson), "chance" (mean uniform-guess accuracy),
    "format" (share of responses in the <think>/<answer> format)}; `examples`: the first few responses per
    family (problem, response, solution); "per_item": 1/0 correctness per row, in order (for paired
    comparisons, see `paired_gain`); "per_item_response": each row's greedy response, in order (what a run's
    outputs became: bench/study.py's collapse diagnosis)."""
    rows = list(rows)
    responses = generate_responses(model, processor, rows, world_dir, batch_size, max_new_tokens, clips)
    correct = synthetic.accuracy_reward(responses, [r["solution"] for r in rows])
    formatted = synthetic.format_reward(responses)
    groups: dict[str, dict[str, list[int]]] = {"per_family": defaultdict(list), "per_kind": defaultdict(list)}
    for i, r in enumerate(rows):
        groups["per_family"][r["family"]].append(i)
        groups["per_kind"][r["kind"]].append(i)

    def summary(idx: list[int]) -> dict:
        return _stats(int(sum(correct[i] for i in idx)), len(idx),
                      float(np.mean([rows[i]["chance"] for i in idx])) if idx else float("nan"),
                      int(sum(formatted[i] for i in idx)))

    out = {"overall": summary(list(range(len(rows))))}
    for name, by in groups.items():
        out[name] = {k: summary(v) for k, v in sorted(by.items())}
    out["examples"] = [{"family": f, "problem": rows[i]["problem"], "response": responses[i],
                        "solution": rows[i]["solution"]}
                       for f, idx in sorted(groups["per_family"].items()) for i in idx[:examples]]
    out["per_item"] = [int(c) for c in correct]
    out["per_item_response"] = list(responses)
    return out


def paired_gain(before: Sequence[int], after: Sequence[int], z: float = 1.96) -> dict:
    """Accuracy change on the same items: gain = mean(after - before) with a normal-approximation interval of
    the paired difference (McNemar's variance), and the exact two-sided McNemar p-value (binomial on the
    discordant items). Paired, so much tighter than comparing two independent accuracy intervals."""
    if len(before) != len(after) or not before:
        raise ValueError("paired_gain needs two non-empty correctness lists of equal length")
    n = len(before)
    up = sum(1 for b, a in zip(before, after) if a and not b)  # wrong -> right
    down = sum(1 for b, a in zip(before, after) if b and not a)  # right -> wrong
    gain = (up - down) / n
    se = math.sqrt(max(up + down - (up - down) ** 2 / n, 0.0)) / n
    k, m = min(up, down), up + down
    p = min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2**m) if m else 1.0
    return {"gain": gain, "ci95": [gain - z * se, gain + z * se], "improved": up, "worsened": down, "n": n,
            "p_value": p}


def default_strategies() -> dict:
    """One AttributionOptions per (visual, temporal) pair, covering every strategy of each kind."""
    from ..attribution import AttributionOptions
    from ..models.perturb import TEMPORAL_STRATEGIES, VISUAL_STRATEGIES

    n = max(len(VISUAL_STRATEGIES), len(TEMPORAL_STRATEGIES))
    pairs = [(VISUAL_STRATEGIES[i % len(VISUAL_STRATEGIES)], TEMPORAL_STRATEGIES[i % len(TEMPORAL_STRATEGIES)])
             for i in range(n)]
    return {f"{v}+{t}": AttributionOptions(visual_strategy=v, temporal_strategy=t) for v, t in pairs}


def _strategy_of(signal: str, options) -> str:
    return options.visual_strategy if signal == "visual" else options.temporal_strategy


@torch.no_grad()
def attribution_quality(model, processor, rows: Sequence[dict], world_dir, options_by_strategy: Mapping | None = None,
                        ratio: float = 0.2, seed: int = 0, batch_size: int = 32, clips: dict | None = None) -> dict:
    """Score the rows' reference responses with every options set and compare with the ground-truth labels.

    options_by_strategy: {name: AttributionOptions} (default `default_strategies()`: zero+shuffle,
    zero_fraction+derange, replace+reverse, zero+segment); each signal's results are keyed by its own strategy name
    (visual_strategy for "visual", temporal_strategy for "temporal"; a later options set with the same
    strategy name overwrites an earlier one). Every options set uses a generator seeded with `seed`.

    Returns {
      "auc":       {"visual": {strategy: {"vision": a, "vision_uncond": a}},
                    "temporal": {strategy: {"order": a, "order_uncond": a}},
                    "entropy": {"vision": a, "order": a, "vision_uncond": a, "order_uncond": a}},
      "precision": same layout: share of the signal's top-ratio tokens per response carrying the label,
      "precision_max": {signal: {label: the precision of an oracle selection (per response, labelled tokens
                       first: min(selected, labelled) / selected); a rare label caps precision far below 1}},
      "mean_score": same layout with {"label": mean score on labelled tokens, "other": on the rest},
      "label_share": {label: share of all response tokens}, "n_responses", "n_tokens", "ratio", "seed",
      "seconds"}.
    """
    from ..attribution import attribute
    from ..core import top_ratio_mask

    start = time.perf_counter()
    options_by_strategy = dict(options_by_strategy or default_strategies())
    config = synthetic.load_world_config(world_dir)
    rows = list(rows)
    clips = synthetic.load_clips(world_dir, rows, config, clips)
    tok = processor.tokenizer
    labels = synthetic.label_rows(rows, tok, config)
    label_names = ("vision", "order", "vision_uncond", "order_uncond")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device

    # per (signal, strategy): flattened scores, label vectors, and top-r selections over valid tokens
    flat: dict[tuple[str, str], dict[str, list]] = defaultdict(lambda: defaultdict(list))
    all_labels: dict[str, list] = defaultdict(list)
    try:
        for b_idx, batch in enumerate(_batches(list(range(len(rows))), batch_size)):
            batch_rows = [rows[i] for i in batch]
            enc = synthetic.encode_rows(processor, batch_rows, clips, padding_side="left").to(device)
            ids = [labels[i]["input_ids"] for i in batch]
            width = max(len(x) for x in ids)
            completion = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
            cmask = torch.zeros((len(batch), width), dtype=torch.long)
            lab = {name: torch.zeros((len(batch), width), dtype=torch.bool) for name in label_names}
            for j, i in enumerate(batch):
                n = len(ids[j])
                completion[j, :n] = ids[j]
                cmask[j, :n] = 1
                for name in label_names:
                    lab[name][j, :n] = labels[i][name]
            for name in label_names:
                all_labels[name].append(lab[name][cmask.bool()])
            completion, cmask = completion.to(device), cmask.to(device)
            # the unperturbed log-probs/entropies depend only on the batch and the temperature: computed by the
            # first options set of each temperature, passed to the others so that they skip those rows
            unperturbed: dict[float, dict] = {}
            for opt_i, (key, options) in enumerate(options_by_strategy.items()):
                gen = torch.Generator().manual_seed(seed * 1000003 + b_idx)
                att = attribute(model, enc["input_ids"], enc["attention_mask"], completion, cmask,
                                pixel_values_videos=enc["pixel_values_videos"], video_grid_thw=enc["video_grid_thw"],
                                second_per_grid_ts=enc.get("second_per_grid_ts"), options=options, generator=gen,
                                **unperturbed.get(options.temperature, {}))
                unperturbed.setdefault(options.temperature, {"logp": att.logp, "entropy": att.entropy})
                for signal, score in att.scores.items():
                    if signal == "entropy" and opt_i > 0:
                        continue  # identical for every options set
                    strategy = "none" if signal == "entropy" else _strategy_of(signal, options)
                    valid = att.valid[signal].cpu()
                    score = score.float().cpu()
                    selected = top_ratio_mask(score, valid, ratio)
                    slot = flat[(signal, strategy)]
                    slot["score"].append(score[valid])
                    slot["selected"].append(selected[valid])
                    slot["n_selected"].append(selected.sum(1))
                    for name in label_names:
                        slot[name].append(lab[name][valid])
                        slot["n_" + name].append((lab[name] & valid).sum(1))
    finally:
        model.train(was_training)

    auc: dict = defaultdict(dict)
    precision: dict = defaultdict(dict)
    mean_score: dict = defaultdict(dict)
    precision_max: dict = {}
    for (signal, strategy), slot in flat.items():
        score = torch.cat(slot["score"]).numpy()
        selected = torch.cat(slot["selected"]).numpy()
        a, p, m, best = {}, {}, {}, {}
        n_selected = torch.cat(slot["n_selected"])
        for name in SIGNAL_LABELS[signal]:
            y = torch.cat(slot[name]).numpy()
            a[name] = roc_auc(score, y)
            p[name] = float(y[selected].mean()) if selected.any() else float("nan")
            # an oracle selecting labelled tokens first: per response min(selected, labelled) of its selection
            reachable = torch.minimum(n_selected, torch.cat(slot["n_" + name])).sum()
            best[name] = float(reachable / n_selected.sum()) if n_selected.sum() > 0 else float("nan")
            m[name] = {"label": float(score[y].mean()) if y.any() else float("nan"),
                       "other": float(score[~y].mean()) if (~y).any() else float("nan")}
        if signal == "entropy":
            auc[signal], precision[signal], mean_score[signal] = a, p, m
        else:
            auc[signal][strategy], precision[signal][strategy], mean_score[signal][strategy] = a, p, m
        precision_max[signal] = best
    n_tokens = int(sum(len(x["input_ids"]) for x in labels))
    return {
        "auc": dict(auc),
        "precision": dict(precision),
        "precision_max": precision_max,
        "mean_score": dict(mean_score),
        "label_share": {name: float(torch.cat(all_labels[name]).float().mean()) if n_tokens else float("nan")
                        for name in label_names},
        "n_responses": len(rows),
        "n_tokens": n_tokens,
        "ratio": ratio,
        "seed": seed,
        "strategies": {k: {"visual": o.visual_strategy, "temporal": o.temporal_strategy}
                       for k, o in options_by_strategy.items()},
        "seconds": time.perf_counter() - start,
    }
