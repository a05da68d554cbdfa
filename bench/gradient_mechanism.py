"""The gradient-noise mechanism, measured directly (issue 18 item 4; the paper's Appendix B.1 in spirit).

Hypothesis: on a world whose filler is sampled, GRPO's per-batch gradient is dominated by noise from low-information
tokens, and restricting the update to key tokens brings each batch's gradient closer to the EXPECTED gradient.

Input: a run whose rollout log holds every response of many steps sampled from ONE fixed policy (the design check's
run: `bench/world_design_check.py`, ktr at learning rate 1e-12, so each logged step is an independent rollout batch of
the warm start), and that policy's model directory. For every logged batch b and every method m it computes the
gradient g_{m,b} of the method's loss (Eq. 2 at ratio 1: -(1/N) sum_i A_i / |o_i| sum_t w_t log p_t, over the batch's
responses with a non-zero advantage) with respect to the final layer (last decoder layer and LM head), where w is

    grpo: every token;  ktr: the logged union (E+V+T, r = 0.2);  E, V, T: each signal's logged top-r selection;
    random: per response a uniformly random set the size of its union (seeded);  complement: the tokens the union
    leaves out, capped at its size;  entropy: per response its |union| highest-entropy tokens (ratio matched).

The expected GRPO gradient is estimated from the pool of all batches (leave-one-out: without batch b when comparing
g_{m,b}). Per method: the mean cosine of g_{m,b} to it, the relative per-batch variance
E_b ||g_{m,b} - mean_b g_{m,b}||^2 / ||mean_b g_{m,b}||^2, and the share of GRPO's per-batch gradient norm that the
method's tokens carry (||g_grpo restricted to w|| / (||restricted to w|| + ||restricted to the rest||)).

    .venv/bin/python bench/gradient_mechanism.py --run runs/design-check/run --model <warm start> [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

METHODS = ("grpo", "ktr", "E", "V", "T", "random", "complement", "entropy")


def method_masks(r: dict, generator: torch.Generator) -> dict[str, torch.Tensor] | None:
    """Per-token bool masks [n] of every method for one attributed logged response (None: not usable)."""
    from videoktr.core import complement_mask, random_count_mask, top_count_mask

    n = len(r["token_ids"])
    union = r["selected"].get("union")
    if not r.get("attributed") or union is None or n == 0:
        return None
    u = torch.tensor(union, dtype=torch.bool)[None]
    valid = torch.ones(1, n, dtype=torch.bool)
    out = {"grpo": valid[0], "ktr": u[0]}
    for name, signal in (("E", "entropy"), ("V", "visual"), ("T", "temporal")):
        sel = r["selected"].get(signal)
        out[name] = torch.tensor(sel, dtype=torch.bool) if sel is not None else torch.zeros(n, dtype=torch.bool)
    out["random"] = random_count_mask(u.sum(1), valid, generator)[0]
    out["complement"] = complement_mask(u, valid, generator)[0]
    ent = r["scores"].get("entropy")
    if ent is None:
        return None
    scores = torch.tensor([float("nan") if x is None else x for x in ent])[None]
    out["entropy"] = top_count_mask(scores, valid, u.sum(1))[0]
    return out


def batch_gradients(model, inputs, records: list[dict], groups: dict, seed: int, device) -> dict[str, torch.Tensor]:
    """method -> flattened gradient of its loss over one batch (and 'grpo@m' / 'grpo@rest-m': GRPO restricted)."""

    generator = torch.Generator().manual_seed(seed)
    usable = [(r, m) for r in records for m in [method_masks(r, generator)] if m is not None]
    N = len(usable)
    params = [p for ps in groups.values() for p in ps]
    total: dict[str, torch.Tensor] = {}
    prompts: dict[tuple, list] = {}
    for r, m in usable:
        prompts.setdefault((r["rank"], tuple(r["prompt_ids"]), tuple(r["videos"]), tuple(r["images"])), []).append((r, m))
    for items in prompts.values():
        recs = [r for r, _ in items]
        batch = inputs.batch(recs, device)
        P, C = batch.pop("P"), batch.pop("C")
        temperature = float(recs[0]["settings"].get("temperature") or 1.0)
        logits = model(**batch, use_cache=False).logits[:, P - 1 : P - 1 + C].float() / temperature
        targets = batch["input_ids"][:, P : P + C]
        logp = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)  # [b, C]
        valid = batch["attention_mask"][:, P : P + C].bool()
        adv = torch.tensor([float(r["advantage"]) for r in recs], device=device)
        per_token = -(adv[:, None] * logp) * valid / valid.sum(1, keepdim=True).clamp(min=1) / N  # [b, C]
        losses = {}
        for name in METHODS:
            w = torch.zeros_like(valid)
            for b, (_, m) in enumerate(items):
                w[b, : len(m[name])] = m[name].to(device)
            losses[name] = (per_token * w).sum()
            if name != "grpo":
                losses[f"grpo@rest-{name}"] = (per_token * (valid & ~w)).sum()
        for name, value in losses.items():
            got = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
            flat = torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1).float()
                              for x, p in zip(got, params)]).detach()
            total[name] = flat if name not in total else total[name] + flat
    return total


def summarise(per_batch: list[dict[str, torch.Tensor]]) -> dict:
    """Per method: mean cosine to the leave-one-out mean GRPO gradient, relative per-batch variance, norm share."""
    grpo = torch.stack([g["grpo"] for g in per_batch])  # [K, D]
    K = grpo.shape[0]
    out = {}
    for name in METHODS:
        G = torch.stack([g[name] for g in per_batch])
        cos = []
        for b in range(K):
            expected = (grpo.sum(0) - grpo[b]) / max(1, K - 1)
            cos.append(float(torch.nn.functional.cosine_similarity(G[b], expected, dim=0)))
        mean = G.mean(0)
        variance = float(((G - mean) ** 2).sum(1).mean() / mean.pow(2).sum().clamp(min=1e-30))
        entry = {"mean_cosine_to_expected": sum(cos) / K, "cosines": cos, "relative_variance": variance,
                 "norm": float(G.norm(dim=1).mean())}
        if name != "grpo":
            own = G.norm(dim=1)
            rest = torch.stack([g[f"grpo@rest-{name}"] for g in per_batch]).norm(dim=1)
            entry["grpo_norm_share_on_its_tokens"] = float((own / (own + rest).clamp(min=1e-30)).mean())
        out[name] = entry
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, nargs="+",
                   help="run directories whose rollout logs hold every response of each step (one policy)")
    p.add_argument("--model", required=True, help="the policy that sampled them")
    p.add_argument("--seed", type=int, default=0, help="seed of the random and complement draws")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    from videoktr.analysis.gradients import _groups, _Inputs
    from videoktr.analysis.rollouts import load_rollouts
    from videoktr.models.adapters import adapter_for
    from videoktr.models.factory import load_model, load_processor

    model = load_model(args.model, dtype="float32").eval()
    processor = load_processor(args.model)
    groups = _groups(model)
    wanted = {id(q) for ps in groups.values() for q in ps}
    for q in model.parameters():
        q.requires_grad_(id(q) in wanted)
    by_step: dict[tuple, list[dict]] = {}
    records = []
    for i, run_dir in enumerate(args.run):
        mine = load_rollouts(run_dir)
        records += mine
        for r in mine:
            by_step.setdefault((i, r["step"]), []).append(r)
    inputs = _Inputs(processor, adapter_for(model), records[0]["settings"].get("video") or {})
    per_batch = []
    for k, step in enumerate(sorted(by_step)):
        g = batch_gradients(model, inputs, by_step[step], groups, args.seed + k, torch.device("cpu"))
        if g:
            per_batch.append(g)
        print(f"  batch {k + 1}/{len(by_step)} (step {step})", flush=True)
    result = {"run": args.run, "model": args.model, "batches": len(per_batch), "parameters": list(groups),
              "methods": summarise(per_batch)}
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
