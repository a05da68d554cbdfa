"""The study of issues 12 and 19: Video-KTR against its baselines, its own variants and token controls on the
synthetic worlds, from one or several warm-started checkpoints per world, with equal steps and rollouts, several RL
seeds, paired tests against GRPO, the distribution of outcomes and the rate of collapse.

  .venv/bin/python bench/study.py --quick                  # CI: 2 arms x 2 seeds x 3 steps on a tiny world (minutes)
  .venv/bin/python bench/study.py                          # the full grid (hours; continues where it stopped)
  .venv/bin/python bench/study.py --arms grpo ktr --seeds 0 1 2 --steps 100   # a slice of it
  .venv/bin/python bench/study.py --worlds sampled_cot --warmstart-seeds 0 1 --arms grpo ktr ktr-random
  .venv/bin/python bench/study.py --list                   # the arms, their options and the cells, nothing run

Every (world, warm start, arm, RL seed) cell is one `videoktr train` run in its own directory,
OUT/<world>/<arm>/seed-<s>/ from warm start 0 and OUT/<world>/<arm>/ws<w>-seed-<s>/ from warm start w, started as a
fresh process with `--model <that warm start>`: the cells of a warm start start from the same weights, see the same
RL prompts and are scored on the same held-out clips; a replicate (warm start, RL seed) pairs the arms. A warm start
w is the world's supervised warm start run with run.seed w (its own base model and data order; cached). A cell
whose report.json exists is finished and skipped; a killed cell restarts from its own last checkpoint (the
trainer's resume), so a killed study continues where it stopped, replicate by replicate. Each finished cell's
measurements go to its cell.json; the study then writes OUT/summary.json (mean and std over replicates, paired
tests against grpo over clips and over replicates with the replicate count's power, outcomes and collapses, token
roles), OUT/study.md (the tables) and PNG plots in OUT/ (outcomes, ratio sweep, perturbation strategies, per
family). `--doc FILE` also writes the tables there. docs/benchmarks.md says what every number means.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------------------------
# The arms: name -> (config overrides on top of the study's shared settings, what it is)
# ---------------------------------------------------------------------------------------------------------------
ALL = ["visual", "temporal", "entropy"]
SUBSETS = {"E": ["entropy"], "V": ["visual"], "T": ["temporal"], "VT": ["visual", "temporal"],
           "ET": ["entropy", "temporal"], "VE": ["visual", "entropy"]}
BASE_LR = 1e-4  # rl.learning_rate's default
# KTR's mean update ratio on the default run (README: about 0.36): Eq. 2 keeps 1/|o_i| over all response tokens,
# so the masked loss is that much smaller than GRPO's at the same learning rate. AdamW's step is set by the learning
# rate, not by the loss's scale: the study measures how far each arm moves its weights (optimizer_path), and on
# sampled_cot every arm at one rate moved them the same distance (docs/study.md)
UPDATE_RATIO = 0.36

ARMS: dict[str, tuple[dict, str]] = {
    "grpo": ({"method": "grpo"}, "GRPO, every response token"),
    "ktr": ({"method": "ktr", "signals": ALL}, "Video-KTR, E+V+T, r = 0.2 (paper defaults)"),
    **{f"ktr-{k}": ({"method": "ktr", "signals": v}, f"Table 2: signals {k}") for k, v in SUBSETS.items()},
    "tgrpo": ({"method": "tgrpo"}, "Video-R1's T-GRPO temporal bonus"),
    "entropy": ({"method": "entropy"}, "top-r entropy tokens only"),
    "twgrpo": ({"method": "twgrpo"}, "TW-GRPO token weights"),
    # perception-aware baselines and DAPO's dynamic sampling (docs/guide.md, Methods), at the sources' defaults
    "vppo": ({"method": "vppo"}, "VPPO: advantage x visual dependency, gradient on the top 40% dependent tokens"),
    "papo": ({"method": "papo"}, "PAPO: GRPO + implicit perception loss + double entropy loss"),
    "grpo-ds": ({"method": "grpo", "dynamic_sampling": True}, "GRPO with DAPO's dynamic sampling"),
    "ktr-ds": ({"method": "ktr", "dynamic_sampling": True}, "Video-KTR with DAPO's dynamic sampling"),
    **{f"ktr-r{r}": ({"method": "ktr", "ratio": r}, f"Fig. 9: ratio {r}") for r in (0.1, 0.3, 0.4, 0.5)},
    **{f"ktr-visual-{s}": ({"method": "ktr", "visual_strategy": s}, f"Fig. 10: visual perturbation {s}")
       for s in ("zero_fraction", "replace")},
    **{f"ktr-temporal-{s}": ({"method": "ktr", "temporal_strategy": s}, f"Fig. 10: temporal perturbation {s}")
       for s in ("reverse", "segment", "derange")},
    **{f"ktr-dist-{d}": ({"method": "ktr", "distance": d}, f"RQ5: score distance {d}")
       for d in ("kl", "jsd", "l1", "l2", "cosine", "hellinger")},
    **{f"ktr-w-{w}": ({"method": "ktr", "weighting": w}, f"RQ4: soft weights {w}")
       for w in ("softmax", "sigmoid", "linear", "exponential")},
    # step-size control: Eq. 2's 1/|o_i| shrinks KTR's loss by its update ratio against GRPO at one lr
    "ktr-lr-matched": ({"method": "ktr", "learning_rate": round(BASE_LR / UPDATE_RATIO, 8)},
                       f"step control: ktr at lr / update ratio ({BASE_LR:g} / {UPDATE_RATIO})"),
    "ktr-selected": ({"method": "ktr", "loss_normalization": "selected"},
                     "step control: official normalisation over the selected tokens"),
    # which-token controls (ktr.control): as many tokens per response as the union, chosen otherwise
    "ktr-random": ({"method": "ktr", "control": "random"}, "token control: a random set the size of the union"),
    "ktr-complement": ({"method": "ktr", "control": "complement"},
                       "token control: the tokens the union leaves out, capped at its size"),
    "ktr-entropy-matched": ({"method": "ktr", "control": "entropy_matched"},
                            "token control: entropy only, at the union's update ratio (per response)"),
    **{f"{m}-lr{lr:g}": ({"method": m, "learning_rate": lr}, f"step control: {m} at lr {lr:g}")
       for m in ("grpo", "ktr") for lr in (3e-5, 3e-4)},
    # the step control at the rate where grpo's step is too large: grpo's step with the union's tokens
    "ktr-selected-lr0.0003": ({"method": "ktr", "loss_normalization": "selected", "learning_rate": 3e-4},
                              "step control: ktr-selected at lr 0.0003"),
    # the token control at that rate: the union's step with random tokens
    "ktr-random-lr0.0003": ({"method": "ktr", "control": "random", "learning_rate": 3e-4},
                            "token control: ktr-random at lr 0.0003"),
    # clipping controls: ktr-selected's gradient is ktr's over its update ratio (about 0.44 on sampled_cot, nearly
    # the same in every response), which AdamW cancels; what remains is max_grad_norm 1, which clips ktr-selected at
    # every step, grpo at some and ktr at fewer. Without clipping (the official script's 5 is never reached there)
    # the arms differ only in their tokens; ktr clipped at 0.44 is ktr-selected's clipping on ktr's loss
    **{f"{m}-noclip": ({"method": m, "max_grad_norm": 0.0}, f"clip control: {m} without gradient clipping")
       for m in ("grpo", "ktr")},
    **{f"{m}-noclip-lr0.0003": ({"method": m, "max_grad_norm": 0.0, "learning_rate": 3e-4},
                                f"clip control: {m} without gradient clipping at lr 0.0003") for m in ("grpo", "ktr")},
    "ktr-clip0.44": ({"method": "ktr", "max_grad_norm": 0.44},
                     "clip control: ktr clipped at its update ratio, as ktr-selected is in effect"),
}
# arms every world runs; the others (ratio, strategies, distances, weights) run on the main world only
CORE = ["grpo", "ktr", *[f"ktr-{k}" for k in SUBSETS], "tgrpo", "entropy", "twgrpo", "ktr-lr-matched",
        "ktr-selected", "grpo-lr3e-05", "grpo-lr0.0003", "ktr-lr3e-05", "ktr-lr0.0003", "ktr-selected-lr0.0003",
        "ktr-random", "ktr-random-lr0.0003", "grpo-noclip", "ktr-noclip", "ktr-clip0.44",
        "grpo-noclip-lr0.0003", "ktr-noclip-lr0.0003",
        "ktr-complement", "ktr-entropy-matched", "vppo", "papo", "grpo-ds", "ktr-ds"]
MAIN_WORLD = "short"
# paired contrasts between two arms (other than each against grpo), reported where both ran on shared replicates:
# (arm, reference, what the difference isolates)
CONTRASTS = [
    ("ktr", "ktr-random", "the union's tokens against a random set of the same size"),
    ("ktr", "ktr-complement", "the union's tokens against the ones it leaves out"),
    ("ktr-selected", "ktr", "normalisation over the selected tokens against Eq. 2's, same masks"),
    ("ktr-noclip", "grpo-noclip", "the union against every token, without clipping"),
    ("ktr-noclip", "ktr", "no clipping against max_grad_norm 1, ktr"),
    ("grpo-noclip", "grpo", "no clipping against max_grad_norm 1, grpo"),
    # the random set's gradient is small enough that max_grad_norm 1 clips it at about 5% of steps: against the
    # union without clipping, neither arm is clipped, so the tokens are compared without the clip's share in it
    ("ktr-noclip", "ktr-random", "the union without clipping against a random set (which the clip rarely reaches)"),
    ("ktr-clip0.44", "ktr", "ktr clipped at its update ratio (ktr-selected's clipping) against at 1"),
    ("ktr-clip0.44", "ktr-selected", "ktr clipped at its update ratio against ktr-selected"),
    ("ktr-lr0.0003", "ktr-random-lr0.0003", "at 3e-4: the union's tokens against a random set of the same size"),
    ("ktr-noclip-lr0.0003", "ktr-random-lr0.0003", "at 3e-4: the union without clipping against a random set"),
    ("ktr-selected-lr0.0003", "ktr-lr0.0003", "at 3e-4: normalisation over the selected tokens against Eq. 2's"),
    ("ktr-noclip-lr0.0003", "grpo-noclip-lr0.0003", "at 3e-4 without clipping: the union against every token"),
    ("grpo-noclip-lr0.0003", "grpo-lr0.0003", "at 3e-4: no clipping against max_grad_norm 1, grpo"),
    ("ktr-noclip-lr0.0003", "ktr-lr0.0003", "at 3e-4: no clipping against max_grad_norm 1, ktr"),
]

# world name -> overrides of the world (data.world_style when the config has it)
WORLDS = {"short": {}, "long_cot": {"world_style": "long_cot"}, "sampled_cot": {"world_style": "sampled_cot"}}

FULL = {"seeds": [0, 1, 2], "steps": 500, "log_rollouts_every": 10, "save_steps": 20, "overrides": {}}
QUICK = {"seeds": [0, 1], "steps": 3, "log_rollouts_every": 1, "save_steps": 2, "arms": ["grpo", "ktr"],
         "overrides": {"world_train": 240, "world_rl": 40, "world_eval": 60, "attribution_rows": 16,
                       "warmstart_max_steps": 50, "prompts_per_step": 4, "num_generations": 4,
                       "max_completion_length": 48}}

SIGNALS = ("visual", "temporal", "entropy", "union")
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def config_fields() -> set[str]:
    from videoktr.train.config import FLAG_OWNER

    return set(FLAG_OWNER)


def flag_args(overrides: dict) -> list[str]:
    """`videoktr train` flags of a dict of options (bools as --x / --no-x, lists as several values)."""
    out: list[str] = []
    for key, value in overrides.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            out += [flag, *map(str, value)]
        else:
            out += [flag, str(value)]
    return out


def grid(args) -> dict[str, list[str]]:
    """world -> its arms."""
    out = {}
    for world in args.worlds:
        names = args.arms or (QUICK["arms"] if args.quick else list(ARMS) if world == MAIN_WORLD else CORE)
        unknown = [a for a in names if a not in ARMS]
        if unknown:
            raise SystemExit(f"unknown arm(s) {unknown}; arms: {', '.join(ARMS)}")
        out[world] = ["grpo"] + [a for a in names if a != "grpo"]  # grpo: the reference of every paired test
    return out


# ---------------------------------------------------------------------------------------------------------------
# Running the cells
# ---------------------------------------------------------------------------------------------------------------
def shared_overrides(args, world: str) -> dict:
    base = dict(QUICK["overrides"] if args.quick else FULL["overrides"])
    base.update(WORLDS[world])
    base.update({"cache_dir": str(args.cache_dir or Path(args.out) / "cache"), "world_seed": args.world_seed})
    return base


def prepare_warm_start(args, world: str, warmstart_seed: int) -> str:
    """The world's clips and its warm-started model for one warm-start seed (run.seed of the supervised warm start:
    its base model's initialisation and its data order; cached under the cache dir), built in this process."""
    from videoktr.train.config import load_config
    from videoktr.world.run import prepare_world_and_model

    over = shared_overrides(args, world)
    over["seed"] = warmstart_seed
    over["output_dir"] = str(Path(args.out) / world / f".warmstart-{warmstart_seed}")
    _, model_dir = prepare_world_and_model(load_config(overrides=over))
    return str(model_dir)


def replicate(warmstart_seed: int, seed: int) -> str:
    """A replicate's name: its warm start and its RL seed. Paired tests pair cells of the same replicate."""
    return f"ws{warmstart_seed}-seed{seed}"


def cell_dir(args, world: str, arm: str, seed: int, warmstart_seed: int = 0) -> Path:
    """OUT/<world>/<arm>/seed-<s> from warm start 0 (the layout of studies with one warm start), else
    OUT/<world>/<arm>/ws<w>-seed-<s>."""
    name = f"seed-{seed}" if warmstart_seed == 0 else f"ws{warmstart_seed}-seed-{seed}"
    return Path(args.out) / world / arm / name


def cell_command(args, world: str, arm: str, seed: int, model_dir: str, warmstart_seed: int = 0) -> list[str]:
    over = shared_overrides(args, world)
    over.update({"model": model_dir, "seed": seed, "output_dir": str(cell_dir(args, world, arm, seed, warmstart_seed)),
                 "max_steps": args.steps, "log_rollouts_every": args.log_rollouts_every,
                 "save_steps": args.save_steps, "save_final": False})
    over.update(ARMS[arm][0])
    return [sys.executable, "-m", "videoktr.cli", "train", *flag_args(over)]


def run_cell(args, world: str, arm: str, seed: int, warmstart_seed: int, model_dir: str, slot: int) -> dict:
    d = cell_dir(args, world, arm, seed, warmstart_seed)
    name = f"{world}/{arm}/{d.name}"
    d.mkdir(parents=True, exist_ok=True)
    # beside the run directory: a fresh start moves everything inside it to superseded-*/
    log_path = d.parent / f"{d.name}.log"
    cmd = cell_command(args, world, arm, seed, model_dir, warmstart_seed)
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    if args.gpus:
        env["CUDA_VISIBLE_DEVICES"] = args.gpus[slot % len(args.gpus)]
    with open(Path(args.out) / "launched.jsonl", "a") as f:
        f.write(json.dumps({"world": world, "arm": arm, "seed": seed, "warmstart_seed": warmstart_seed,
                            "time": time.time()}) + "\n")
    print(f"  run  {name}", flush=True)
    start = time.perf_counter()
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, check=False).returncode
    seconds = time.perf_counter() - start
    if rc != 0 or not (d / "report.json").is_file():
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        print(f"  FAILED {name} (exit {rc}); last lines of {log_path}:\n    "
              + "\n    ".join(tail), flush=True)
        return {"ok": False}
    print(f"  done {name} in {seconds:.0f} s", flush=True)
    return {"ok": True}


# ---------------------------------------------------------------------------------------------------------------
# Measurements of one cell
# ---------------------------------------------------------------------------------------------------------------
def answer_token_mask(tokens: list[str]) -> list[bool] | None:
    """Which tokens overlap the text between <answer> and </answer> (the tokens' texts concatenate to the
    response); None when the response has no answer span."""
    text = "".join(tokens)
    m = _ANSWER.search(text)
    if not m:
        return None
    lo, hi = m.span(1)
    inner = text[lo:hi]
    lo += len(inner) - len(inner.lstrip())
    hi -= len(inner) - len(inner.rstrip())
    if hi <= lo:
        return None
    mask, pos = [], 0
    for t in tokens:
        end = pos + len(t)
        mask.append(bool(t) and pos < hi and end > lo)
        pos = end
    return mask


def logged_rollouts(run_dir: Path) -> list[dict] | None:
    """The run's rollout log (analysis.rollouts records), or None when it logged none."""
    from videoktr.analysis.rollouts import NoRollouts, load_rollouts

    try:
        return load_rollouts(run_dir)
    except NoRollouts:
        return None


def answer_span_rates(run_dir: Path, records: list[dict] | None = None) -> dict:
    """From the rollout log (`records`: already loaded, else read from run_dir): of the attributed responses with
    an answer span, the share in which each signal (and the union) selected at least one answer token, the mean
    share of answer tokens selected, and the share of answer tokens whose score is undefined (None) for that
    signal."""
    records = logged_rollouts(run_dir) if records is None else records
    if records is None:
        return {"responses": 0, "attributed": 0, "with_answer": 0, "signals": {}}
    attributed = [r for r in records if r["attributed"]]
    out: dict = {"responses": len(records), "attributed": len(attributed), "signals": {}}
    with_answer = 0
    counts = {s: {"any": 0, "share": 0.0, "undefined": 0.0, "n": 0} for s in SIGNALS}
    for r in attributed:
        mask = answer_token_mask(r["tokens"])
        if mask is None or not any(mask):
            continue
        with_answer += 1
        idx = [i for i, m in enumerate(mask) if m]
        for s in SIGNALS:
            sel = r["selected"].get(s)
            if sel is None:
                continue
            c = counts[s]
            picked = [bool(sel[i]) for i in idx if i < len(sel)]
            c["n"] += 1
            c["any"] += any(picked)
            c["share"] += sum(picked) / len(idx)
            score = r["scores"].get(s) if s != "union" else None
            if score is not None:
                c["undefined"] += sum(1 for i in idx if i >= len(score) or score[i] is None) / len(idx)
    out["with_answer"] = with_answer
    for s, c in counts.items():
        if c["n"]:
            out["signals"][s] = {"answer_selected": c["any"] / c["n"], "answer_tokens_selected": c["share"] / c["n"],
                                 "answer_undefined": c["undefined"] / c["n"] if s != "union" else None,
                                 "responses": c["n"]}
    return out



def response_update_ratios(records: list[dict] | None) -> dict:
    """From the rollout log: how much the update ratio (the share of a response's tokens the loss trains) varies
    between responses. Eq. 2 divides a response's masked sum by all of its tokens and normalising over the selected
    ones divides it by them instead, so the two differ by each response's ratio: by a constant that AdamW cancels
    where the ratio is the same in every response, by a reweighting of responses where it is not. `std`: over the
    attributed responses; `positive`, `negative`: the mean ratio of the responses with advantage above and below
    0 (a ratio that differs by sign would tilt Eq. 2's update toward one side)."""
    ratios = {"all": [], "positive": [], "negative": []}
    for r in records or []:
        mask = trained_mask(r) if r["attributed"] else None
        if not mask:
            continue
        u = sum(bool(m) for m in mask) / len(mask)
        ratios["all"].append(u)
        if r["advantage"]:
            ratios["positive" if r["advantage"] > 0 else "negative"].append(u)
    if len(ratios["all"]) < 2:
        return {}
    mean = lambda v: sum(v) / len(v) if v else None  # noqa: E731
    return {"responses": len(ratios["all"]), "std": statistics.stdev(ratios["all"]),
            "positive": mean(ratios["positive"]), "negative": mean(ratios["negative"])}

CONFIDENT = 0.99  # a token the policy already samples with p > 0.99 carries almost no policy gradient


def trained_mask(record: dict) -> list | None:
    """The token mask the loss trained in one logged response: the union, or for a control arm (settings' control)
    its own weights."""
    if (record.get("settings") or {}).get("control", "none") != "none" and record.get("weights") is not None:
        return [w > 0 for w in record["weights"]]
    return record["selected"].get("union")


def mask_gradient_share(run_dir: Path, records: list[dict] | None = None) -> dict:
    """From the rollout log (`records`: already loaded, else read from run_dir): what the key-token mask leaves
    out, measured by each token's share of the policy gradient GRPO would give it. The gradient of A log p(token)
    with respect to the token's logits has norm between |A| (1 - p) and sqrt(2) |A| (1 - p), so sum |A| (1 - p)
    over a response's tokens is the proxy: `unselected_share` = the part of that sum on tokens the mask does not
    select (what masking removes from GRPO's update), and `unselected_confident` = the share of unselected tokens
    with p > 0.99. Over attributed responses (non-zero advantage) of methods with a selection; empty otherwise.
    The mask is the one the loss trained: the union, or for a control arm (settings' control) its weights."""
    records = logged_rollouts(run_dir) if records is None else records
    if records is None:
        return {}
    records = [r for r in records if r["attributed"]]
    chosen = rest = 0.0
    n_rest = confident = 0
    for r in records:
        union, logp = trained_mask(r), (r.get("logp") or {}).get("full")
        if union is None or logp is None:
            continue
        for picked, lp in zip(union, logp):
            if lp is None:
                continue
            p = math.exp(lp)
            g = abs(r["advantage"]) * (1.0 - p)
            if picked:
                chosen += g
            else:
                rest += g
                n_rest += 1
                confident += p > CONFIDENT
    if chosen + rest <= 0:
        return {}
    return {"unselected_share": rest / (chosen + rest), "unselected_confident": confident / max(n_rest, 1),
            "responses": len(records)}


COLLAPSE = 0.05  # a cell collapsed when its held-out accuracy fell this much (5 points) or more below its warm start's


def output_profile(responses: list[str], families: list[str]) -> dict:
    """What a model's greedy held-out responses look like: the share in the <answer> format, the mean length in
    words, the share of distinct responses, and per question family the share of its most common answer
    (averaged over families, weighted by their clips): 1.0 when a family gets one answer whatever the clip."""
    answers = []
    for r in responses:
        m = _ANSWER.search(r)
        answers.append(m.group(1).strip() if m else None)
    by_family: dict[str, list[str]] = {}
    for a, f in zip(answers, families):
        if a is not None:
            by_family.setdefault(f, []).append(a)
    top = sum(max(v.count(x) for x in set(v)) for v in by_family.values())
    answered = sum(len(v) for v in by_family.values())
    n = max(len(responses), 1)
    return {"format": answered / n, "mean_words": sum(len(r.split()) for r in responses) / n,
            "distinct_responses": len(set(responses)) / n,
            "top_answer_share": top / answered if answered else None}


def sampling_path(history: list[dict], window: float = 0.1) -> dict:
    """The training rollouts' side of a run, from its log history: sampled accuracy reward, policy entropy and
    response length in the first and the last `window` of the logged steps (what sampling at the training
    temperature saw, beside the greedy held-out accuracy)."""
    steps = [h for h in history if "reward" in h]
    k = max(1, int(len(steps) * window))

    def mean(key, rows):
        v = [h[key] for h in rows if h.get(key) is not None]
        return sum(v) / len(v) if v else None

    keys = {"accuracy": "rewards/accuracy_reward/mean", "entropy": "entropy", "length": "completions/mean_length"}
    return {name: {"start": mean(key, steps[:k]), "end": mean(key, steps[-k:])} for name, key in keys.items()}



def _model_weights(folder: Path) -> dict | None:
    path = folder / "model.safetensors"
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    return load_file(str(path))


def _start_model(run_dir: Path, config: dict) -> Path | None:
    """The folder of the model a run started from (config.json's model.model), spelt relative to the directory the
    study ran in: tried as given, then beside each folder above the run."""
    given = Path(((config.get("model") or {}).get("model")) or "")
    if not str(given) or given == Path("."):
        return None
    for base in (Path.cwd(), *run_dir.resolve().parents):
        if (base / given / "model.safetensors").is_file():
            return base / given
    return None


def _cv(values: list[float]) -> float | None:
    mean = statistics.fmean(values) if values else 0.0  # a step without gradient logs a norm of 0: kept
    return statistics.pstdev(values) / mean if len(values) > 1 and mean > 0 else None


def step_weights(history: list[dict], limit: float | None) -> dict:
    """How the gradient's size varies from step to step, before and after clipping. AdamW cancels a constant scale,
    so what clipping can change is the relative weight of steps: norm_cv is the coefficient of variation of the
    logged gradient norms over the run's steps, clipped_norm_cv that of min(norm, limit) (what the optimizer saw;
    equal to norm_cv without clipping); norm_signal_corr is the Pearson correlation of the norm with the share of
    the step's groups that carry a gradient (1 - frac_reward_zero_std): above 0, the larger steps are the ones
    with more groups to learn from, and clipping flattens them toward the rest."""
    rows = [h for h in history if h.get("grad_norm") is not None]
    norms = [float(h["grad_norm"]) for h in rows]
    seen = [min(n, limit) for n in norms] if limit else norms
    signal = [(n, 1.0 - float(h["frac_reward_zero_std"])) for n, h in zip(norms, rows)
              if h.get("frac_reward_zero_std") is not None]
    try:  # Pearson's r; undefined for fewer than 3 steps or a constant series
        corr = statistics.correlation(*zip(*signal)) if len(signal) >= 3 else None
    except statistics.StatisticsError:
        corr = None
    return {"norm_cv": _cv(norms), "clipped_norm_cv": _cv(seen), "norm_signal_corr": corr}


def optimizer_path(run_dir: Path, history: list[dict]) -> dict:
    """How far a run moved its weights, beside the gradients it saw. AdamW divides each step by a running root mean
    square of the gradient, so its step is set by the learning rate, not by the loss's scale: a masked loss that is
    a fraction of GRPO's (Eq. 2's 1/|o_i| over fewer tokens) does not by itself take a smaller step. weights_moved:
    the L2 distance of the last checkpoint's weights (its step = the run's last) from the model the run started
    from, and that distance over the start model's norm; grad_norm: the median of the logged gradient norms (before
    clipping); clipped: the share of steps whose norm exceeded rl.max_grad_norm. Clipping matters to AdamW only
    through how it weighs one step against another (a constant factor cancels), so the step weights are measured
    too (step_weights)."""
    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
    norms = [h["grad_norm"] for h in history if h.get("grad_norm") is not None]
    limit = (config.get("rl") or {}).get("max_grad_norm")
    out = {"grad_norm": statistics.median(norms) if norms else None,
           "clipped": sum(n > limit for n in norms) / len(norms) if norms and limit else None,
           **step_weights(history, limit),
           "weights_moved": None, "weights_moved_relative": None}
    steps = [h["step"] for h in history if "step" in h]
    last = run_dir / f"checkpoint-{max(steps)}" if steps else None
    start = _start_model(run_dir, config)
    end = _model_weights(last) if last is not None and start is not None else None
    if end is None:
        return out
    begin = _model_weights(start)
    shared = [k for k in end if k in begin and end[k].shape == begin[k].shape and end[k].is_floating_point()]
    moved = sum(((end[k].double() - begin[k].double()) ** 2).sum().item() for k in shared) ** 0.5
    norm = sum((begin[k].double() ** 2).sum().item() for k in shared) ** 0.5
    out.update(weights_moved=moved, weights_moved_relative=moved / norm if norm else None)
    return out

ROLES = ("content", "filler", "answer", "format", "other")


@functools.lru_cache(maxsize=None)
def world_vocabulary() -> tuple[frozenset, frozenset]:
    """(content words, filler words) of the synthetic worlds: content = colours, shapes (and plurals) and number
    words, what a clip or a question decides; filler = every word that is one alternative of a sampled_cot slot
    ({a|b|c} in its templates: drawn independently of the clip), content words excepted."""
    from videoktr.world import PALETTE, SHAPES
    from videoktr.world import sampled_cot as templates

    numbers = "zero one two three four five six seven eight nine ten eleven twelve".split()
    content = {c for c, _ in PALETTE} | set(SHAPES) | {s + "s" for s in SHAPES} | set(numbers)
    constants = [v for k, v in vars(templates).items() if k.isupper() or k.startswith("_") and k[1:].isupper()]
    texts = [v for v in constants if isinstance(v, str)]
    texts += [x for v in constants if isinstance(v, dict) for x in v.values() if isinstance(x, str)]
    filler: set[str] = set()
    inner = re.compile(r"\{([^{}]*)\}")
    for text in texts:
        while True:  # innermost {...} groups first, each replaced by a placeholder
            m = inner.search(text)
            if not m:
                break
            if "|" in m.group(1):
                filler |= {w.lower() for w in re.findall(r"[A-Za-z]+", m.group(1))}
            text = text[: m.start()] + " _ " + text[m.end():]
    return frozenset(content), frozenset(filler - content)


def token_roles(tokens: list[str], sampled_filler: bool = True) -> list[str]:
    """Each response token's role (ROLES) from the word it belongs to: inside <answer>...</answer> "answer", the
    tags "format", a colour/shape/number word "content", a sampled_cot slot word "filler" (with `sampled_filler`:
    on the other worlds those words are fixed text, "other"), else "other"."""
    content, filler = world_vocabulary()
    filler = filler if sampled_filler else frozenset()
    text = "".join(tokens)
    answer = answer_token_mask(tokens) or [False] * len(tokens)
    words = [(m.start(), m.end(), m.group(0).lower()) for m in re.finditer(r"<[^<>]*>|[A-Za-z]+", text)]
    roles, pos, w = [], 0, 0
    for i, t in enumerate(tokens):
        lo, hi = pos, pos + len(t)
        pos = hi
        while w < len(words) and words[w][1] <= lo:
            w += 1
        word = words[w][2] if w < len(words) and words[w][0] < hi and t.strip() else ""
        if answer[i]:
            roles.append("answer")
        elif word.startswith("<"):
            roles.append("format")
        elif word in content:
            roles.append("content")
        elif word in filler:
            roles.append("filler")
        else:
            roles.append("other")
    return roles


def role_selection(records: list[dict] | None, sampled_filler: bool = True) -> dict:
    """Per token role, over the attributed responses of a run's rollout log: the share of response tokens in that
    role, how often each signal's top-r (and the union, or a control's mask) selects a token of that role, and the
    role's part of the GRPO gradient proxy sum |A| (1 - p) that the mask leaves out (mask_gradient_share)."""
    if not records:
        return {}
    count = {r: 0 for r in ROLES}
    picked: dict[str, dict[str, int]] = {}
    left_out = {r: 0.0 for r in ROLES}
    for rec in records:
        if not rec["attributed"]:
            continue
        roles = token_roles(rec["tokens"], sampled_filler)
        selected = {**rec["selected"], "union": trained_mask(rec)}
        for i, role in enumerate(roles):
            count[role] += 1
            for signal, sel in selected.items():
                if sel is not None and i < len(sel):
                    picked.setdefault(signal, {r: 0 for r in ROLES})[role] += bool(sel[i])
        union, logp = selected.get("union"), (rec.get("logp") or {}).get("full")
        if union is not None and logp is not None:
            for i, (chosen, lp) in enumerate(zip(union, logp)):
                if lp is not None and not chosen and i < len(roles):
                    left_out[roles[i]] += abs(rec["advantage"]) * (1.0 - math.exp(lp))
    total = sum(count.values())
    if not total or not picked:
        return {}
    gone = sum(left_out.values())
    return {"token_share": {r: count[r] / total for r in ROLES},
            "selected_rate": {s: {r: (v[r] / count[r] if count[r] else None) for r in ROLES} for s, v in picked.items()},
            "left_out_gradient_share": {r: (left_out[r] / gone if gone else None) for r in ROLES}}


def _attribution(report: dict, key: str) -> dict:
    """report.json's attribution table `key` (auc, precision); reports written before 2026-12-06 kept a copy of
    both at the top level (attribution_auc, attribution_precision)."""
    return (report.get("attribution") or {}).get(key) or report.get(f"attribution_{key}") or {}


def flatten(tree, prefix="") -> dict[str, float]:
    """{"visual": {"zero": {"vision": a}}} -> {"visual/zero/vision": a} (numbers only)."""
    out = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}/{k}" if prefix else str(k)))
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        out[prefix] = float(tree)
    return out


CELL_VERSION = 5  # bump when measure_cell measures something new or otherwise: cached cell.json files are redone


def measure_cell(d: Path, world: str = "sampled_cot") -> dict:
    """The cell's numbers (cached in cell.json next to report.json)."""
    cached = d / "cell.json"
    report_path = d / "report.json"
    if cached.is_file() and cached.stat().st_mtime >= report_path.stat().st_mtime:
        cell = json.loads(cached.read_text())
        if cell.get("version") == CELL_VERSION:  # else written by an earlier version of this script: measure again
            return cell
    report = json.loads(report_path.read_text())
    items = json.loads((d / "heldout_items.json").read_text())
    train = report.get("train") or {}
    signal = train.get("learning_signal") or {}
    rollouts = logged_rollouts(d)  # read once for both measurements below
    history = json.loads((d / "log_history.json").read_text()) if (d / "log_history.json").is_file() else []
    outputs = None
    if "responses_after" in items:  # runs before 2026-12-06 kept correctness only
        outputs = {k: output_profile(items[f"responses_{k}"], items["families"]) for k in ("before", "after")}
        # the responses themselves stay in heldout_items.json: cell.json keeps the numbers
        items = {k: v for k, v in items.items() if not k.startswith("responses_")}

    def acc(block):
        return {"overall": block["overall"]["accuracy"],
                "per_family": {k: v["accuracy"] for k, v in block["per_family"].items()}}

    cell = {
        "version": CELL_VERSION,
        "method": report["method"], "steps": report["steps"],
        "accuracy_before": acc(report["accuracy_before"]), "accuracy_after": acc(report["accuracy_after"]),
        "gain": report["accuracy_gain"],
        "items": items,
        "attribution_auc": flatten(_attribution(report, "auc")),
        "attribution_precision": flatten(_attribution(report, "precision")),
        "update_ratio": train.get("mean_update_ratio"),
        "share_steps_without_gradient": signal.get("share_steps_without_gradient"),
        "mean_share_groups_without_gradient": signal.get("mean_share_groups_without_gradient"),
        "reward_start": train.get("reward_start"), "reward_end": train.get("reward_end"),
        "mean_step_seconds": train.get("mean_step_seconds"),
        "wall_seconds": report.get("wall_seconds_total", report.get("wall_seconds")),
        "answer_span": answer_span_rates(d, rollouts),
        "mask_gradient": mask_gradient_share(d, rollouts),
        "response_update_ratios": response_update_ratios(rollouts),
        "roles": role_selection(rollouts, sampled_filler=world == "sampled_cot"),
        "collapsed": report["accuracy_gain"]["gain"] <= -COLLAPSE,
        "outputs": outputs,
        "sampling": sampling_path(history),
        "optimizer": optimizer_path(d, history),
    }
    tmp = cached.with_suffix(".tmp")
    tmp.write_text(json.dumps(cell, indent=1))
    os.replace(tmp, cached)
    return cell


# ---------------------------------------------------------------------------------------------------------------
# Aggregation over seeds, paired tests against grpo
# ---------------------------------------------------------------------------------------------------------------
def mean_std(values) -> dict | None:
    v = [float(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return None
    m = sum(v) / len(v)
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return {"mean": m, "std": sd, "n": len(v)}


def student_t_sf2(t: float, df: int) -> float:
    """Two-sided p-value of Student's t with integer `df` degrees of freedom: 2 (1 - F(|t|)), from the closed
    forms of the t CDF for integer df (Abramowitz and Stegun 26.7.3 and 26.7.4), with theta = atan(|t| / sqrt(df))."""
    if df < 1:
        raise ValueError("df must be >= 1")
    theta = math.atan(abs(t) / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2:  # odd: F = 1/2 + (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...)) / pi
        total, term = 0.0, 1.0
        for k in range(1, (df - 1) // 2 + 1):
            total += term
            term *= c2 * (2 * k) / (2 * k + 1)
        cdf = 0.5 + (theta + (s * math.cos(theta) * total if df > 1 else 0.0)) / math.pi
    else:  # even: F = 1/2 + sin/2 (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
        total, term = 0.0, 1.0
        for k in range(1, df // 2 + 1):
            total += term
            term *= c2 * (2 * k - 1) / (2 * k)
        cdf = 0.5 + 0.5 * s * total
    return max(0.0, min(1.0, 2.0 * (1.0 - cdf)))


def student_t_quantile(p_two_sided: float, df: int) -> float:
    """The t > 0 with two-sided p-value `p_two_sided` at `df` degrees of freedom (bisection on student_t_sf2)."""
    lo, hi = 0.0, 1.0
    while student_t_sf2(hi, df) > p_two_sided:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if student_t_sf2(mid, df) > p_two_sided else (lo, mid)
    return (lo + hi) / 2


DETECT = 0.02  # the difference the study must be able to detect (2 points of held-out accuracy)
ALPHA, POWER = 0.05, 0.8


def detectable_difference(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """The smallest true mean difference a paired t-test over n replicates detects at two-sided level `alpha` with
    probability `power`, given the per-replicate differences' standard deviation sd: (t_{1-a/2} + t_{power}) sd /
    sqrt(n), df = n - 1 (the usual approximation that ignores the non-central t's skew)."""
    if n < 2:
        return None
    df = n - 1
    return (student_t_quantile(alpha, df) + student_t_quantile(2 * (1 - power), df)) * sd / math.sqrt(n)


def replicates_needed(sd: float, delta: float = DETECT, alpha: float = ALPHA, power: float = POWER,
                      most: int = 1000) -> int | None:
    """The fewest replicates (warm start x RL seed pairs) at which detectable_difference(sd, n) <= delta; None when
    more than `most` would be needed."""
    for n in range(2, most + 1):
        if detectable_difference(sd, n, alpha, power) <= delta:
            return n
    return None


def paired_seed_test(reference: dict[str, dict], cells: dict[str, dict]) -> dict | None:
    """The arm against grpo over replicates (warm start x RL seed): per replicate, its held-out accuracy after RL
    minus grpo's (same warm start, same seed, same clips), and a paired t-test of those differences (n =
    replicates, df = n - 1). Unlike the McNemar test over clips, which counts every clip as an independent pair,
    this one sees the run-to-run variance of RL itself. `power`: the difference it detects at n (ALPHA, POWER)
    and the replicates a 2-point difference needs, from the measured spread of the differences."""
    diffs = [cells[s]["accuracy_after"]["overall"] - reference[s]["accuracy_after"]["overall"]
             for s in sorted(cells) if s in reference]
    if len(diffs) < 2:
        return None
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    keys = [k for k in sorted(cells) if k in reference]
    power = {"detectable_at_n": detectable_difference(sd, n), "replicates_for_2_points": replicates_needed(sd)}
    if sd == 0:
        # identical differences: no spread to test against (p undefined unless there is no difference at all)
        return {"mean_diff": mean, "sd": 0.0, "t": None, "df": n - 1, "p_value": 1.0 if mean == 0 else None,
                "n": n, "diffs": diffs, "replicates": keys, "power": power}
    t = mean / (sd / math.sqrt(n))
    return {"mean_diff": mean, "sd": sd, "t": t, "df": n - 1, "p_value": student_t_sf2(t, n - 1), "n": n,
            "diffs": diffs, "replicates": keys, "power": power}


def variance_parts(cells: dict[str, dict]) -> dict:
    """How an arm's held-out accuracy after RL spreads: per warm start (mean ± std over its RL seeds), the std of
    the warm starts' means (between warm starts) and the pooled std over RL seeds within a warm start."""
    by_ws: dict[int, list[float]] = {}
    for c in cells.values():
        by_ws.setdefault(c.get("warmstart_seed", 0), []).append(c["accuracy_after"]["overall"])
    per = {str(w): mean_std(v) for w, v in sorted(by_ws.items())}
    means = [sum(v) / len(v) for v in by_ws.values()]
    within = [(len(v) - 1, mean_std(v)["std"]) for v in by_ws.values() if len(v) > 1]
    dof = sum(d for d, _ in within)
    return {"per_warm_start": per,
            "between_warm_starts": mean_std(means)["std"] if len(means) > 1 else None,
            "within_warm_start": math.sqrt(sum(d * sd * sd for d, sd in within) / dof) if dof else None}


def collapse_summary(cells: dict[str, dict]) -> dict:
    """The arm's collapses: cells whose held-out accuracy fell COLLAPSE or more below their warm start's."""
    hit = sorted(k for k, c in cells.items() if c["gain"]["gain"] <= -COLLAPSE)
    return {"threshold": COLLAPSE, "count": len(hit), "n": len(cells), "rate": len(hit) / len(cells) if cells else None,
            "replicates": hit}


def paired_vs(reference: dict[str, dict], cells: dict[str, dict], family: str | None = None) -> dict | None:
    """Paired test of an arm's held-out correctness after RL against grpo's, same replicate (warm start and seed),
    same clips: one test per replicate, and one pooled over replicates (the lists concatenated: n = replicates x
    clips)."""
    from videoktr.world.metrics import paired_gain

    per_seed, pooled_ref, pooled_arm = {}, [], []
    for seed, cell in sorted(cells.items()):
        ref = reference.get(seed)
        if ref is None:
            continue
        fam = cell["items"]["families"]
        keep = [i for i, f in enumerate(fam) if family is None or f == family]
        a = [ref["items"]["after"][i] for i in keep]
        b = [cell["items"]["after"][i] for i in keep]
        if not keep:
            continue
        per_seed[seed] = paired_gain(a, b)
        pooled_ref += a
        pooled_arm += b
    if not pooled_ref:
        return None
    return {"pooled": paired_gain(pooled_ref, pooled_arm), "per_seed": per_seed}


def aggregate(cells: dict[str, dict[str, dict[int, dict]]], grid_: dict[str, list[str]]) -> dict:
    summary: dict = {"worlds": {}}
    for world, arms in cells.items():
        ref = arms.get("grpo", {})
        w: dict = {}
        for arm, by_seed in arms.items():
            cs = list(by_seed.values())
            if not cs:
                continue
            families = sorted(cs[0]["accuracy_after"]["per_family"])
            entry = {
                "description": ARMS[arm][1], "options": ARMS[arm][0], "replicates": sorted(by_seed),
                "seeds": sorted({c.get("seed", 0) for c in cs}),
                "warmstart_seeds": sorted({c.get("warmstart_seed", 0) for c in cs}),
                "steps": sorted({c["steps"] for c in cs}),
                "accuracy_before": mean_std(c["accuracy_before"]["overall"] for c in cs),
                "accuracy_after": mean_std(c["accuracy_after"]["overall"] for c in cs),
                "accuracy_after_per_family": {f: mean_std(c["accuracy_after"]["per_family"].get(f) for c in cs)
                                              for f in families},
                "gain_over_warm_start": mean_std(c["gain"]["gain"] for c in cs),
                "gain_over_warm_start_p": {s: c["gain"]["p_value"] for s, c in sorted(by_seed.items())},
                "outcomes": [{"replicate": k, "warmstart_seed": c.get("warmstart_seed", 0), "seed": c.get("seed"),
                              "before": c["accuracy_before"]["overall"], "after": c["accuracy_after"]["overall"],
                              "gain": c["gain"]["gain"], "outputs": c.get("outputs"), "sampling": c.get("sampling")}
                             for k, c in sorted(by_seed.items())],
                "collapse": collapse_summary(by_seed),
                "variance": variance_parts(by_seed),
                "vs_grpo": None if arm == "grpo" else paired_vs(ref, by_seed),
                "vs_grpo_seeds": None if arm == "grpo" else paired_seed_test(ref, by_seed),
                "vs_grpo_per_family": None if arm == "grpo" else {f: paired_vs(ref, by_seed, f) for f in families},
                "attribution_auc": {k: mean_std(c["attribution_auc"].get(k) for c in cs)
                                    for k in sorted(cs[0]["attribution_auc"])},
                "attribution_precision": {k: mean_std(c["attribution_precision"].get(k) for c in cs)
                                          for k in sorted(cs[0]["attribution_precision"])},
                "update_ratio": mean_std(c["update_ratio"] for c in cs),
                "share_steps_without_gradient": mean_std(c["share_steps_without_gradient"] for c in cs),
                "mean_share_groups_without_gradient": mean_std(c["mean_share_groups_without_gradient"] for c in cs),
                "reward_end": mean_std(c["reward_end"] for c in cs),
                "mean_step_seconds": mean_std(c["mean_step_seconds"] for c in cs),
                "wall_seconds_per_cell": mean_std(c["wall_seconds"] for c in cs),
                "answer_span": {s: {k: mean_std(c["answer_span"]["signals"].get(s, {}).get(k) for c in cs)
                                    for k in ("answer_selected", "answer_tokens_selected", "answer_undefined")}
                                for s in SIGNALS
                                if any(s in c["answer_span"]["signals"] for c in cs)},
                "answer_span_responses": sum(c["answer_span"]["with_answer"] for c in cs),
                "mask_gradient": {k: mean_std((c.get("mask_gradient") or {}).get(k) for c in cs)
                                  for k in ("unselected_share", "unselected_confident")},
                "roles": role_means([c.get("roles") or {} for c in cs]),
                "response_update_ratios": {k: mean_std((c.get("response_update_ratios") or {}).get(k) for c in cs)
                                           for k in ("std", "positive", "negative")},
                "optimizer": {k: mean_std((c.get("optimizer") or {}).get(k) for c in cs)
                              for k in ("weights_moved", "weights_moved_relative", "grad_norm", "clipped",
                                        "norm_cv", "clipped_norm_cv", "norm_signal_corr")},
            }
            w[arm] = entry
        contrasts = []
        for a, b, what in CONTRASTS:
            test = paired_seed_test(arms[b], arms[a]) if arms.get(a) and arms.get(b) else None
            if test is not None:
                contrasts.append({"arm": a, "reference": b, "what": what, "test": test})
        summary["worlds"][world] = {"arms": w, "missing": [f"{a}" for a in grid_.get(world, []) if a not in w],
                                    "power": world_power(w), "contrasts": contrasts}
    return summary


def role_means(per_cell: list[dict]) -> dict:
    """role_selection's numbers, mean ± std over the cells that have them ({} when none has)."""
    cells = [r for r in per_cell if r]
    if not cells:
        return {}
    signals = sorted({s for r in cells for s in r["selected_rate"]})
    return {"token_share": {k: mean_std(r["token_share"][k] for r in cells) for k in ROLES},
            "selected_rate": {s: {k: mean_std((r["selected_rate"].get(s) or {}).get(k) for r in cells) for k in ROLES}
                              for s in signals},
            "left_out_gradient_share": {k: mean_std(r["left_out_gradient_share"][k] for r in cells) for k in ROLES}}


def world_power(arms: dict) -> dict:
    """The seed count's power on one world: grpo's spread over replicates, the pooled std of the per-replicate
    differences to grpo over every arm (df-weighted), the difference the current replicates detect with it, and the
    replicates a 2-point difference needs (ALPHA two-sided, POWER). grpo's spread is the one within a warm start:
    warm starts of one world can differ by many points, which the paired differences cancel. Arms at another
    learning rate than grpo's are left out of the pooled std: their differences to grpo include the rate's own
    effect (at 3e-4 a collapse in some replicates and not in others), which is not the spread of a method
    comparison."""
    tests = [e["vs_grpo_seeds"] for e in arms.values()
             if e.get("vs_grpo_seeds") and "learning_rate" not in (e.get("options") or {})]
    dof = sum(t["n"] - 1 for t in tests)
    sd = math.sqrt(sum((t["n"] - 1) * t["sd"] ** 2 for t in tests) / dof) if dof else None
    n = max((t["n"] for t in tests), default=0)
    grpo = arms.get("grpo")
    return {"grpo_within_warm_start_std": grpo["variance"]["within_warm_start"] if grpo else None,
            "pooled_sd_of_differences": sd, "replicates": n,
            "detectable_at_n": detectable_difference(sd, n) if sd is not None else None,
            "replicates_for_2_points": replicates_needed(sd) if sd is not None else None,
            "alpha": ALPHA, "power": POWER, "delta": DETECT}


# ---------------------------------------------------------------------------------------------------------------
# Tables and plots
# ---------------------------------------------------------------------------------------------------------------
def _ms(x, scale=1.0, digits=3) -> str:
    if not x:
        return "-"
    if x["n"] > 1:
        return f"{x['mean'] * scale:.{digits}f} ± {x['std'] * scale:.{digits}f}"
    return f"{x['mean'] * scale:.{digits}f}"


def _vs(v) -> str:
    if not v:
        return "-"
    p = v["pooled"]
    return f"{p['gain'] * 100:+.1f} [{p['ci95'][0] * 100:+.1f}, {p['ci95'][1] * 100:+.1f}], p={p['p_value']:.2g}"


def _vs_seeds(v) -> str:
    if not v:
        return "-"
    p = "undefined (identical differences)" if v["p_value"] is None else f"{v['p_value']:.2g}"
    return f"{v['mean_diff'] * 100:+.1f} (seeds {', '.join(f'{d * 100:+.1f}' for d in v['diffs'])}), p={p}"


def markdown(summary: dict) -> str:
    meta = summary["meta"]
    lines = [f"# Study results ({meta['mode']})", "",
             f"Written by `bench/study.py` from `{meta['out']}/summary.json` ({meta['written']}). "
             f"{meta['note']} RL seeds {meta['seeds']} from each of the warm starts {meta.get('warmstart_seeds', [0])} "
             "(a replicate = a warm start and an RL seed; paired tests pair arms within a replicate). "
             "docs/benchmarks.md says what every column means.", ""]
    for world, w in summary["worlds"].items():
        arms = w["arms"]
        if not arms:
            continue
        steps = sorted({n for e in arms.values() for n in e["steps"]})
        lines += [f"## World `{world}`", "", f"RL steps per cell: {', '.join(map(str, steps))}.", "",
                  "Held-out accuracy after RL (mean ± std over replicates). Δ vs grpo over clips: paired over the "
                  "same clips and replicates, pooled over replicates, in points, with its 95% interval and the exact McNemar "
                  "p-value; it counts every clip as an independent pair, so it ignores how much RL itself varies "
                  "from run to run. Δ vs grpo over replicates: the mean of the per-replicate accuracy differences (same "
                  "warm start and seed, same clips) with the paired t-test's p over replicates (df = n - 1), the test to read "
                  "before calling a difference a property of the method.", "",
                  "| arm | what | replicates | before | after | Δ vs warm start | Δ vs grpo over clips | "
                  "Δ vs grpo over replicates | update ratio | steps without gradient | answer span selected (union) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for arm, e in arms.items():
            union = (e["answer_span"].get("union") or {}).get("answer_selected")
            lines.append(f"| {arm} | {e['description']} | {len(e['replicates'])} | {_ms(e['accuracy_before'])} | "
                         f"{_ms(e['accuracy_after'])} | {_ms(e['gain_over_warm_start'], 100, 1)} | {_vs(e['vs_grpo'])} | "
                         f"{_vs_seeds(e.get('vs_grpo_seeds'))} | "
                         f"{_ms(e['update_ratio'], digits=2)} | {_ms(e['share_steps_without_gradient'], digits=2)} | "
                         f"{_ms(union, digits=2)} |")
        lines += outcome_lines(arms, w.get("power"))
        lines += optimizer_lines(arms)
        if w.get("contrasts"):
            lines += ["", "Paired contrasts between arms over their shared replicates (arm minus reference, points; the "
                      "paired t-test over replicates, df = n - 1):", "",
                      "| arm | reference | what it isolates | Δ over replicates |", "|---|---|---|---|"]
            for c in w["contrasts"]:
                lines.append(f"| {c['arm']} | {c['reference']} | {c['what']} | {_vs_seeds(c['test'])} |")
        families = sorted({f for e in arms.values() for f in e["accuracy_after_per_family"]})
        lines += ["", "Per question family: accuracy after RL (mean ± std), and the pooled paired Δ vs grpo "
                  "(points, p).", "", "| arm | " + " | ".join(families) + " |", "|---" * (len(families) + 1) + "|"]
        for arm, e in arms.items():
            row = []
            for f in families:
                v = (e["vs_grpo_per_family"] or {}).get(f)
                extra = f" ({v['pooled']['gain'] * 100:+.1f}, p={v['pooled']['p_value']:.2g})" if v else ""
                row.append(_ms(e["accuracy_after_per_family"].get(f)) + extra)
            lines.append(f"| {arm} | " + " | ".join(row) + " |")
        lines += ["", "How often the answer span gets a selected token (share of attributed responses with an answer "
                  "span; mean ± std over replicates), and the share of answer tokens whose score is undefined:", "",
                  "| arm | visual | temporal | entropy | union | visual undefined | temporal undefined |",
                  "|---|---|---|---|---|---|---|"]
        for arm, e in arms.items():
            if not e["answer_span"]:
                continue
            a = e["answer_span"]
            cols = [_ms((a.get(s) or {}).get("answer_selected"), digits=2) for s in SIGNALS]
            cols += [_ms((a.get(s) or {}).get("answer_undefined"), digits=2) for s in ("visual", "temporal")]
            lines.append(f"| {arm} | " + " | ".join(cols) + " |")
        masked = [(arm, e["mask_gradient"]) for arm, e in arms.items()
                  if (e.get("mask_gradient") or {}).get("unselected_share")]
        if masked:
            lines += ["", "What the mask leaves out: of GRPO's policy-gradient proxy sum |A| (1 - p) over the logged "
                      "attributed responses, the share on tokens the mask does not select, and the share of those "
                      f"tokens the policy samples with p > {CONFIDENT} (mean ± std over replicates). Near 0 and 1: the "
                      "mask removes tokens that carry almost no gradient, and the method is GRPO in effect.", "",
                      "| arm | gradient share outside the mask | unselected tokens with p > 0.99 |", "|---|---|---|"]
            for arm, m in masked:
                lines.append(f"| {arm} | {_ms(m['unselected_share'])} | {_ms(m['unselected_confident'], digits=2)} |")
        with_roles = [(arm, e["roles"]) for arm, e in arms.items() if e.get("roles")]
        if with_roles:
            lines += ["", "Token roles in the attributed responses of the rollout log (content: a colour, shape or number "
                      "word; filler: a word of a sampled slot, drawn independently of the clip; answer: inside "
                      "<answer>; format: the tags; other: fixed words and punctuation): each role's share of the "
                      "response tokens, how often the union (a control's own mask for a control arm) and each signal "
                      "select a token of that role, and the role's share of the gradient proxy the mask leaves out "
                      "(mean over replicates).", "",
                      "| arm | role | share of tokens | union selects | visual | temporal | entropy | "
                      "left-out gradient |", "|---|---|---|---|---|---|---|---|"]
            for arm, r in with_roles:
                for role in ROLES:
                    rate = lambda s: _ms((r["selected_rate"].get(s) or {}).get(role), digits=2)  # noqa: E731
                    lines.append(f"| {arm} | {role} | {_ms(r['token_share'][role], digits=2)} | {rate('union')} | "
                                 f"{rate('visual')} | {rate('temporal')} | {rate('entropy')} | "
                                 f"{_ms(r['left_out_gradient_share'][role], digits=2)} |")
        # attribution quality on the warm start (the same model in every cell: the spread is the perturbations'
        # randomness over run seeds)
        ref = arms.get("ktr") or next(iter(arms.values()))
        keys = sorted(k for k in ref["attribution_auc"]
                      if k.split("/")[-1] in ("vision", "order") and not k.endswith("_uncond"))
        if keys:
            lines += ["", "Attribution on the warm-started model against the ground-truth roles (prefix-conditional "
                      "labels), over every cell of this world: ROC-AUC and precision of the top-r tokens "
                      "(r = the cell's ktr.ratio), mean ± std over cells.", "",
                      "| signal / strategy / label | AUC | precision |", "|---|---|---|"]
            for k in keys:
                auc = mean_std(x for e in arms.values() for x in _values(e, "attribution_auc", k))
                prec = mean_std(x for e in arms.values() for x in _values(e, "attribution_precision", k))
                lines.append(f"| {k} | {_ms(auc)} | {_ms(prec)} |")
        plots = [p for p in summary.get("plots", {}).get(world, [])]
        if plots:
            lines += ["", "Plots: " + ", ".join(f"`{p}`" for p in plots)]
        if w["missing"]:
            lines += ["", f"Not run yet: {', '.join(w['missing'])}"]
        lines.append("")
    return "\n".join(lines) + "\n"


def _arrow(x: dict | None, key: str, digits: int = 2) -> str:
    a, b = (x or {}).get("start" if key == "sampling" else "before"), (x or {}).get("end" if key == "sampling" else "after")
    return "-" if a is None or b is None else f"{a:.{digits}f} → {b:.{digits}f}"


def outcome_lines(arms: dict, power: dict | None) -> list[str]:
    """The distribution of outcomes, the collapse rate, the variance parts, the power of the replicate count, and
    what the collapsed cells' outputs became (Markdown lines)."""
    lines = ["", f"Outcomes: each replicate's change of held-out accuracy from its warm start (points; `!` marks a "
             f"collapse, a drop of {COLLAPSE * 100:.0f} points or more), the collapse rate, and the spread of the "
             "accuracy after RL between warm starts (std of their means) and within one (pooled std over RL seeds).",
             "", "| arm | Δ per replicate | collapses | std between warm starts | std within a warm start |",
             "|---|---|---|---|---|"]
    for arm, e in arms.items():
        deltas = ", ".join(f"{o['replicate']} {o['gain'] * 100:+.1f}{'!' if o['gain'] <= -COLLAPSE else ''}"
                           for o in e["outcomes"])
        c, v = e["collapse"], e["variance"]
        fmt = lambda x: "-" if x is None else f"{x * 100:.1f}"  # noqa: E731
        lines.append(f"| {arm} | {deltas} | {c['count']}/{c['n']} | {fmt(v['between_warm_starts'])} | "
                     f"{fmt(v['within_warm_start'])} |")
    if power and power.get("pooled_sd_of_differences") is not None:
        need = power["replicates_for_2_points"]
        lines += ["", f"Power: the per-replicate differences to grpo have a pooled std of "
                  f"{power['pooled_sd_of_differences'] * 100:.2f} points (grpo's own std over RL seeds within a warm "
                  f"start {(power['grpo_within_warm_start_std'] or 0) * 100:.2f}); with {power['replicates']} replicates the paired "
                  f"t-test detects a true difference of {power['detectable_at_n'] * 100:.1f} points (two-sided "
                  f"p < {power['alpha']}, power {power['power']}); a {power['delta'] * 100:.0f}-point difference needs "
                  f"{need if need else 'more than 1000'} replicates."]
    collapsed = [(arm, o) for arm, e in arms.items() for o in e["outcomes"] if o["gain"] <= -COLLAPSE]
    if collapsed:
        lines += ["", "What a collapse is: the collapsed cells' greedy held-out outputs before → after RL (share in "
                  "the answer format, share of a family's most common answer, mean words, share of distinct "
                  "responses) beside what the training rollouts sampled (accuracy reward, policy entropy, over the "
                  "first and last 10% of logged steps).", "",
                  "| arm | replicate | accuracy | format | top answer share | words | distinct | sampled accuracy | "
                  "entropy |", "|---|---|---|---|---|---|---|---|---|"]
        for arm, o in collapsed:
            out, smp = o.get("outputs") or {}, o.get("sampling") or {}
            per = lambda k: {"before": (out.get("before") or {}).get(k), "after": (out.get("after") or {}).get(k)}  # noqa: E731
            lines.append(f"| {arm} | {o['replicate']} | {o['before']:.3f} → {o['after']:.3f} | "
                         f"{_arrow(per('format'), 'outputs')} | {_arrow(per('top_answer_share'), 'outputs')} | "
                         f"{_arrow(per('mean_words'), 'outputs', 1)} | {_arrow(per('distinct_responses'), 'outputs')} | "
                         f"{_arrow(smp.get('accuracy'), 'sampling')} | {_arrow(smp.get('entropy'), 'sampling')} |")
    return lines


def optimizer_lines(arms: dict) -> list[str]:
    """How far each arm moved its weights beside its gradient norms (Markdown lines; none where no cell has them)."""
    rows = [(arm, e["optimizer"]) for arm, e in arms.items() if ((e.get("optimizer") or {}).get("weights_moved"))]
    if not rows:
        return []
    lines = ["", "The step each arm took: the L2 distance its weights moved from the warm start over the run (and "
             "over the warm start's norm), the median gradient norm before clipping, and the share of steps clipped "
             "(mean ± std over replicates). AdamW sets the step by the learning rate, not by the loss's scale: a "
             "loss a fraction of GRPO's moves the weights as far. "
             "Update ratio per response: the std of the share of a response's tokens the loss trains, between "
             "the logged attributed responses of a run, and its mean over the responses with positive and with "
             "negative advantage (mean over replicates): where it is nearly the same in every response, Eq. 2's "
             "normalisation and the selected tokens' differ by a constant that AdamW cancels.", "",
             "| arm | weights moved | relative to the warm start | gradient norm (median) | steps clipped | "
             "update ratio per response: std | advantage > 0 | advantage < 0 |",
             "|---|---|---|---|---|---|---|---|"]
    for arm, o in rows:
        u = arms[arm].get("response_update_ratios") or {}
        cols = [_ms(u.get(k), digits=3) for k in ("std", "positive", "negative")]
        lines.append(f"| {arm} | {_ms(o['weights_moved'])} | {_ms(o['weights_moved_relative'], digits=4)} | "
                     f"{_ms(o['grad_norm'], digits=2)} | {_ms(o['clipped'], digits=2)} | " + " | ".join(cols) + " |")
    weighed = [(arm, o) for arm, o in rows if o.get("norm_cv")]
    if weighed:
        lines += ["", "How clipping weighs one step against another (AdamW cancels a constant scale, so this is all "
                  "clipping can change): the coefficient of variation of the gradient norm over a run's steps "
                  "before clipping and after it (what the optimizer saw), and the correlation of the norm with the "
                  "share of the step's groups that carry a gradient (mean ± std over replicates).", "",
                  "| arm | norm's variation over steps | after clipping | correlation with groups that learn |",
                  "|---|---|---|---|"]
        lines += [f"| {arm} | {_ms(o['norm_cv'], digits=2)} | {_ms(o.get('clipped_norm_cv'), digits=2)} | "
                  f"{_ms(o.get('norm_signal_corr'), digits=2)} |" for arm, o in weighed]
    return lines


def _values(entry, key, k):
    x = entry[key].get(k)
    return [x["mean"]] if x else []


def plots(summary: dict, out: Path) -> dict[str, list[str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: dict[str, list[str]] = {}
    for world, w in summary["worlds"].items():
        arms = w["arms"]
        files = []

        def bar(names, title, path, arms=arms, files=files):
            names = [n for n in names if n in arms]
            if not names:
                return
            fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(names) + 1), 3.2))
            means = [arms[n]["accuracy_after"]["mean"] for n in names]
            stds = [arms[n]["accuracy_after"]["std"] for n in names]
            ax.bar(range(len(names)), means, yerr=stds, capsize=3, color="tab:blue")
            if "grpo" in arms:
                ax.axhline(arms["grpo"]["accuracy_after"]["mean"], color="grey", ls="--", label="grpo")
                ax.legend()
            ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
            ax.set_ylabel("held-out accuracy after RL")
            ax.set_title(title)
            fig.tight_layout()
            fig.savefig(out / path, dpi=110)
            plt.close(fig)
            files.append(path)

        ratio = [(0.2, "ktr")] + [(r, f"ktr-r{r}") for r in (0.1, 0.3, 0.4, 0.5)]
        ratio = sorted((r, n) for r, n in ratio if n in arms)
        if len(ratio) > 1:
            fig, ax = plt.subplots(figsize=(4.5, 3.2))
            ax.errorbar([r for r, _ in ratio], [arms[n]["accuracy_after"]["mean"] for _, n in ratio],
                        yerr=[arms[n]["accuracy_after"]["std"] for _, n in ratio], marker="o", capsize=3,
                        label="ktr")
            if "grpo" in arms:
                ax.axhline(arms["grpo"]["accuracy_after"]["mean"], color="grey", ls="--", label="grpo")
            ax.set_xlabel("ktr.ratio")
            ax.set_ylabel("held-out accuracy after RL")
            ax.set_title(f"ratio sweep (Fig. 9), world {world}")
            ax.legend()
            fig.tight_layout()
            fig.savefig(out / f"{world}-ratio.png", dpi=110)
            plt.close(fig)
            files.append(f"{world}-ratio.png")
        bar(["ktr", "ktr-visual-zero_fraction", "ktr-visual-replace", "ktr-temporal-reverse",
             "ktr-temporal-segment", "ktr-temporal-derange"],
            f"perturbation strategies (Fig. 10), {world}", f"{world}-strategies.png")
        bar(["ktr", *[f"ktr-{k}" for k in SUBSETS], "entropy", "tgrpo", "twgrpo", "vppo", "papo", "grpo-ds",
             "ktr-ds"], f"signals and baselines (Table 2), {world}", f"{world}-methods.png")
        main = [a for a in ("grpo", "ktr", "entropy", "tgrpo", "twgrpo", "vppo", "papo", "grpo-ds") if a in arms]
        families = sorted(arms[main[0]]["accuracy_after_per_family"]) if main else []
        if families:
            fig, ax = plt.subplots(figsize=(1.2 * len(families) * max(1, len(main)) / 2 + 2, 3.2))
            width = 0.8 / len(main)
            for j, a in enumerate(main):
                fam = arms[a]["accuracy_after_per_family"]
                ax.bar([i + j * width for i in range(len(families))], [fam[f]["mean"] if fam[f] else 0 for f in families],
                       width, yerr=[fam[f]["std"] if fam[f] else 0 for f in families], capsize=2, label=a)
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(families))], families)
            ax.set_ylabel("held-out accuracy after RL")
            ax.set_title(f"per question family, {world}")
            ax.legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(out / f"{world}-families.png", dpi=110)
            plt.close(fig)
            files.append(f"{world}-families.png")
        if any(len(e.get("outcomes") or []) > 1 for e in arms.values()):
            names = list(arms)
            fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(names) + 1.5), 3.4))
            warm = sorted({o["warmstart_seed"] for e in arms.values() for o in e["outcomes"]})
            for j, name in enumerate(names):
                for o in arms[name]["outcomes"]:
                    k = warm.index(o["warmstart_seed"])
                    ax.scatter(j + (k - (len(warm) - 1) / 2) * 0.15, o["gain"] * 100, s=18,
                               color=plt.cm.tab10(k), label=f"warm start {o['warmstart_seed']}")
            ax.axhline(-COLLAPSE * 100, color="tab:red", ls=":", lw=1, label="collapse")
            ax.axhline(0, color="grey", lw=0.8)
            handles, labels = ax.get_legend_handles_labels()
            unique = dict(zip(labels, handles))
            ax.legend(unique.values(), unique.keys(), fontsize=7)
            ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
            ax.set_ylabel("Δ held-out accuracy vs warm start (points)")
            ax.set_title(f"outcome per replicate, {world}")
            fig.tight_layout()
            fig.savefig(out / f"{world}-outcomes.png", dpi=110)
            plt.close(fig)
            files.append(f"{world}-outcomes.png")
        written[world] = files
    return written


# ---------------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the CI grid: grpo and ktr, 2 seeds, 3 steps, tiny world")
    p.add_argument("--out", default=None, help="study directory (default runs/study, runs/study-quick with --quick)")
    p.add_argument("--worlds", nargs="+", default=["short"], choices=list(WORLDS),
                   help="worlds (long_cot needs data.world_style in the config)")
    p.add_argument("--arms", nargs="+", default=None, help="arms to run (default: the mode's grid; grpo is always run)")
    p.add_argument("--seeds", nargs="+", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="RL steps per cell (equal for all)")
    p.add_argument("--world-seed", type=int, default=0)
    p.add_argument("--warmstart-seeds", "--warmstart-seed", nargs="+", type=int, default=[0],
                   help="run.seed of each warm start of a world (each gets every arm x seed; replicates pair by "
                        "warm start and seed)")
    p.add_argument("--cache-dir", default=None, help="world and warm-start cache (default OUT/cache; "
                                                     ".cache/videoktr reuses the default run's warm start)")
    p.add_argument("--jobs", type=int, default=1, help="cells run at once")
    p.add_argument("--threads", type=int, default=0, help="OMP/MKL threads per cell (0 = torch's default)")
    p.add_argument("--gpus", nargs="+", default=None, help="CUDA device ids handed out to concurrent cells")
    p.add_argument("--doc", default=None, help="also write the tables to this Markdown file")
    p.add_argument("--note", default="", help="a sentence for the top of the tables (what this run is)")
    p.add_argument("--list", action="store_true", help="print the grid and exit")
    p.add_argument("--aggregate-only", action="store_true", help="run no cell; summarise the finished ones")
    args = p.parse_args(argv)
    mode = QUICK if args.quick else FULL
    args.out = args.out or ("runs/study-quick" if args.quick else "runs/study")
    args.seeds = args.seeds if args.seeds is not None else mode["seeds"]
    args.steps = args.steps or mode["steps"]
    args.log_rollouts_every, args.save_steps = mode["log_rollouts_every"], mode["save_steps"]
    args.log_rollouts_every = min(args.log_rollouts_every, args.steps)
    fields_ = config_fields()
    worlds = []
    for world in args.worlds:
        missing = [k for k in WORLDS[world] if k not in fields_]
        if missing:
            print(f"skipping world {world!r}: this videoktr has no option {', '.join(missing)} "
                  "(data.world_style comes with the long chain-of-thought world)")
            continue
        worlds.append(world)
    args.worlds = worlds
    plan = grid(args)
    if args.list:
        for world, arms in plan.items():
            n = len(args.seeds) * len(args.warmstart_seeds)
            print(f"world {world}: {len(arms)} arms x {len(args.seeds)} seeds x {len(args.warmstart_seeds)} warm "
                  f"starts = {len(arms) * n} cells")
            for a in arms:
                print(f"  {a:24s} {ARMS[a][1]:60s} {flag_args(ARMS[a][0])}")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    if not args.aggregate_only:
        for world, arms in plan.items():
            for ws in args.warmstart_seeds:
                # replicate by replicate (every arm of a seed before the next seed), so that the paired comparisons
                # of an interrupted study are complete for the replicates it finished
                todo = [(a, s) for s in args.seeds for a in arms
                        if not (cell_dir(args, world, a, s, ws) / "report.json").is_file()]
                print(f"world {world}, warm start {ws}: {len(arms) * len(args.seeds) - len(todo)} cells finished, "
                      f"{len(todo)} to run")
                if not todo:
                    continue
                print(f"  warm start {ws} of world {world} (cached after the first time)", flush=True)
                model_dir = prepare_warm_start(args, world, ws)
                with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
                    results = list(pool.map(
                        lambda x, world=world, ws=ws, model_dir=model_dir:
                            (x, run_cell(args, world, x[1][0], x[1][1], ws, model_dir, x[0])),
                        enumerate(todo)))
                failed += [str(cell_dir(args, world, a, s, ws).relative_to(args.out))
                           for (_, (a, s)), r in results if not r["ok"]]
    cells: dict = {}
    for world, arms in plan.items():
        cells[world] = {}
        for a in arms:
            by_rep = {}
            for ws in args.warmstart_seeds:
                for s in args.seeds:
                    d = cell_dir(args, world, a, s, ws)
                    if (d / "report.json").is_file():
                        by_rep[replicate(ws, s)] = {**measure_cell(d, world), "seed": s, "warmstart_seed": ws}
            if by_rep:
                cells[world][a] = by_rep
    summary = aggregate(cells, plan)
    summary["meta"] = {"mode": "quick" if args.quick else "full", "out": str(out), "seeds": args.seeds,
                       "warmstart_seeds": args.warmstart_seeds,
                       "steps": args.steps, "worlds": list(plan), "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                       "note": args.note, "failed": failed,
                       "paired_tests": "arm vs grpo after RL, same replicate (warm start and RL seed) and held-out "
                                       "clips; 'pooled' concatenates the replicates' per-clip lists (n = replicates "
                                       "x clips), 'per_seed' tests each replicate alone"}
    summary["plots"] = plots(summary, out)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    text = markdown(summary)
    (out / "study.md").write_text(text)
    if args.doc:
        Path(args.doc).write_text(text)
    print(f"summary: {out / 'summary.json'}\ntables:  {out / 'study.md'}" + (f" and {args.doc}" if args.doc else ""))
    if failed:
        print(f"{len(failed)} cell(s) failed: {', '.join(failed)} (run again to retry them)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
