"""The gradient decomposition of the paper's Appendix B.1, on logged rollouts (`analysis.rollouts`).

For the responses of one logged step, with the key-token mask m the step trained with (the union of the signals'
selections), the GRPO per-token term (Eq. 1, KL left out as in the paper)

    l_{i,t} = -min(r_{i,t} A_i, clip(r_{i,t}, 1 - eps_low, 1 + eps_high) A_i) / |o_i| / N,
    r_{i,t} = pi_theta(o_{i,t}) / pi_old(o_{i,t})

is split into L_key = sum m l and L_rest = sum (1 - m) l. pi_theta is the model analysed (the run's final model by
default, or a checkpoint), pi_old the policy that sampled the step (its log-probabilities as logged: the trainer's
old log-probs when TRL kept them, else the attribution's unperturbed log-probs of the same policy; at the sampling
policy itself r = 1). Gradients of L_key and L_rest with respect to the final layer's parameters (the last decoder
layer, and the LM head) give g_key, g_rest and g_full = g_key + g_rest: their norms and cosines (paper: 4.50 vs
about a third of it; cos(g_key, g_full) 0.862 vs cos(g_rest, g_full) 0.572). The loss variance compares the
per-response losses with the mask (Eq. 2's terms, sum_t m l_{i,t}) and without (Eq. 1's) across the step's
responses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

PARAMETER_GROUPS = ("last_decoder_layer", "lm_head")


def _groups(model) -> dict[str, list[torch.nn.Parameter]]:
    core = model.model
    layers = core.language_model.layers if hasattr(core, "language_model") else core.layers
    return {"last_decoder_layer": list(layers[-1].parameters()), "lm_head": [model.lm_head.weight]}


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return float("nan")
    return float(torch.clamp(torch.dot(a, b) / (na * nb), -1.0, 1.0))


def per_token_loss(logp: torch.Tensor, old: torch.Tensor, advantage: torch.Tensor, eps_low: float,
                   eps_high: float) -> torch.Tensor:
    """GRPO's clipped per-token term -min(r A, clip(r) A) [B, C] (A broadcast over tokens)."""
    ratio = torch.exp(logp - old)
    a = advantage[:, None]
    return -torch.minimum(ratio * a, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * a)


def loss_variances(losses: Sequence[Sequence[float]], masks: Sequence[Sequence[bool]]) -> tuple[float, float]:
    """(variance across responses of sum_t m_t l_t, of sum_t l_t): per-token losses already divided by |o_i|."""
    masked = [sum(l for l, m in zip(ls, ms) if m) for ls, ms in zip(losses, masks)]
    full = [sum(ls) for ls in losses]

    def var(xs):
        if len(xs) < 2:
            return float("nan")
        mu = sum(xs) / len(xs)
        return sum((x - mu) ** 2 for x in xs) / len(xs)

    return var(masked), var(full)


class _Inputs:
    """Model inputs for logged responses: the prompt re-encoded from its conversation and media as the trainer
    encodes it (checked against the logged prompt ids), the logged response appended."""

    def __init__(self, processor, adapter, video: dict):
        from ..data.video import read_video

        self.processor, self.adapter = processor, adapter
        o = {"fps": 2.0, "min_frames": 4, "max_frames": 16, "backend": "pyav", **(video or {})}
        self._clips: dict[str, object] = {}

        def load(path: str):
            if path not in self._clips:
                self._clips[path] = read_video(path, target_fps=o["fps"], min_frames=o["min_frames"],
                                               max_frames=o["max_frames"], backend=o["backend"])
            return self._clips[path]

        self.load = load

    def batch(self, records: Sequence[dict], device) -> dict:
        """One forward's inputs for records that share one prompt (ids and media)."""
        from ..train.trainer import _grid_kwargs, encode_prompts

        first = records[0]
        prompt_ids = list(first["prompt_ids"])
        kwargs: dict = {}
        encoded = encode_prompts(self.processor, self.adapter, [first["prompt"]], self.load) \
            if first["videos"] or first["images"] else None
        if encoded is not None:
            if list(encoded.prompt_ids[0]) != prompt_ids:
                raise ValueError(f"step {first['step']}, row {first['row']}: the prompt re-encoded from "
                                 f"{first['videos'] or first['images']} differs from the logged prompt ids (the media "
                                 "file or the processor changed since training)")
            row = encoded.rows[0]
            n = len(records)
            if row.kind == "video":
                kwargs = {"pixel_values_videos": torch.cat([row.pixels] * n).to(device),
                          **_grid_kwargs([row] * n, device)}
            else:
                kwargs = {"pixel_values": torch.cat([row.pixels] * n).to(device),
                          "image_grid_thw": torch.cat([row.grid] * n).to(device)}
        P = len(prompt_ids)
        C = max(len(r["token_ids"]) for r in records)
        pad = self.processor.tokenizer.pad_token_id or 0
        ids = torch.full((len(records), P + C), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, r in enumerate(records):
            n = len(r["token_ids"])
            ids[b, :P] = torch.tensor(prompt_ids)
            ids[b, P : P + n] = torch.tensor(r["token_ids"])
            mask[b, : P + n] = 1
        ids, mask = ids.to(device), mask.to(device)
        return {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": self.adapter.mm_token_type_ids(ids),
                **kwargs, "P": P, "C": C}


def gradient_decomposition(model, processor, records: Sequence[dict], device=None,
                           max_steps: int | None = None) -> dict:
    """Per logged step (at most `max_steps`, evenly spread): norms and cosines of g_key, g_rest, g_full for each
    parameter group, and the loss variance with and without the mask (see the module docstring).

    Returns {"parameters": [...], "model_steps": ..., "steps": [{"step", "responses", "key_tokens", "rest_tokens",
    "loss_variance_masked", "loss_variance_unmasked", <group>: {"norm_key", "norm_rest", "norm_full",
    "cos_key_full", "cos_rest_full", "cos_key_rest"}}], "mean": {...}}. Steps without attributed responses (or
    without any key or any remaining token) are listed in "skipped"."""
    from ..models.adapters import adapter_for

    device = torch.device(device or next(model.parameters()).device)
    adapter = adapter_for(model)
    groups = _groups(model)
    wanted = {id(p) for ps in groups.values() for p in ps}
    for p in model.parameters():
        p.requires_grad_(id(p) in wanted)
    model.eval()  # no dropout: the same function the attribution and the loss see
    by_step: dict[int, list[dict]] = {}
    for r in records:
        mask = r["selected"].get("union")
        if r.get("attributed") and mask is not None and len(r["token_ids"]):
            by_step.setdefault(r["step"], []).append(r)
    steps = sorted(by_step)
    if max_steps and len(steps) > max_steps:
        steps = [steps[round(i * (len(steps) - 1) / (max_steps - 1))] for i in range(max_steps)] \
            if max_steps > 1 else steps[-1:]
    out_steps, skipped = [], []
    for step in steps:
        recs = by_step[step]
        settings = recs[0]["settings"]
        inputs = _Inputs(processor, adapter, settings.get("video") or {})
        temperature = float(settings.get("temperature") or 1.0)
        eps_low = float(settings.get("epsilon_low", 0.2))
        eps_high = float(settings.get("epsilon_high", eps_low))
        n_total = len(recs)
        key_tokens = sum(sum(r["selected"]["union"]) for r in recs)
        rest_tokens = sum(len(r["token_ids"]) for r in recs) - key_tokens
        if key_tokens == 0 or rest_tokens == 0:
            skipped.append({"step": step, "reason": "no key token" if key_tokens == 0 else "no remaining token"})
            continue
        grads = {g: {"key": None, "rest": None} for g in groups}
        per_response_losses, per_response_masks = [], []
        prompts: dict[tuple, list[dict]] = {}
        for r in recs:
            prompts.setdefault((r["rank"], tuple(r["prompt_ids"]), tuple(r["videos"]), tuple(r["images"])),
                               []).append(r)
        for batch_records in prompts.values():
            batch = inputs.batch(batch_records, device)
            P, C = batch.pop("P"), batch.pop("C")
            logits = model(**batch, use_cache=False).logits[:, P - 1 : P - 1 + C].float() / temperature
            targets = batch["input_ids"][:, P : P + C]
            logp = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)  # [b, C]
            valid = batch["attention_mask"][:, P : P + C].bool()
            old = torch.zeros_like(logp)
            key = torch.zeros_like(logp, dtype=torch.bool)
            for b, r in enumerate(batch_records):
                n = len(r["token_ids"])
                reference = r["logp"].get("old") or r["logp"].get("full")
                old[b, :n] = torch.tensor(reference, dtype=torch.float32) if reference is not None \
                    else logp[b, :n].detach()
                key[b, :n] = torch.tensor(r["selected"]["union"], dtype=torch.bool)
            advantages = torch.tensor([float(r["advantage"]) for r in batch_records], device=device)
            lengths = valid.sum(1, keepdim=True).clamp(min=1)
            loss = per_token_loss(logp, old.to(device), advantages, eps_low, eps_high) * valid / lengths / n_total
            key = key.to(device)
            for b in range(len(batch_records)):
                n = int(valid[b].sum())
                per_response_losses.append((loss[b, :n] * n_total).tolist())
                per_response_masks.append(key[b, :n].tolist())
            parts = {"key": (loss * key).sum(), "rest": (loss * (~key & valid)).sum()}
            params = [p for ps in groups.values() for p in ps]
            for name, value in parts.items():
                got = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
                start = 0
                for g, ps in groups.items():
                    flat = torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1).float()
                                      for x, p in zip(got[start : start + len(ps)], ps)]).detach()
                    start += len(ps)
                    grads[g][name] = flat if grads[g][name] is None else grads[g][name] + flat
        var_masked, var_full = loss_variances(per_response_losses, per_response_masks)
        entry = {"step": step, "responses": n_total, "key_tokens": key_tokens, "rest_tokens": rest_tokens,
                 "loss_variance_masked": var_masked, "loss_variance_unmasked": var_full}
        for g, parts in grads.items():
            k, r_ = parts["key"], parts["rest"]
            full = k + r_
            entry[g] = {"norm_key": float(k.norm()), "norm_rest": float(r_.norm()), "norm_full": float(full.norm()),
                        "cos_key_full": _cosine(k, full), "cos_rest_full": _cosine(r_, full),
                        "cos_key_rest": _cosine(k, r_)}
        out_steps.append(entry)
    for p in model.parameters():
        p.requires_grad_(True)

    def mean(values):
        values = [v for v in values if v == v]
        return sum(values) / len(values) if values else float("nan")

    means = {k: mean([s[k] for s in out_steps]) for k in ("loss_variance_masked", "loss_variance_unmasked")}
    for g in groups:
        means[g] = {k: mean([s[g][k] for s in out_steps]) for k in
                    ("norm_key", "norm_rest", "norm_full", "cos_key_full", "cos_rest_full", "cos_key_rest")}
    return {"parameters": list(groups), "steps": out_steps, "skipped": skipped, "mean": means}


def analysed_model(run_dir: str | Path, checkpoint: str | Path | None = None) -> Path:
    """The model directory to decompose gradients at: `checkpoint` when given, else the run's final/ model, else its
    newest checkpoint-N."""
    run_dir = Path(run_dir)
    if checkpoint is not None:
        path = Path(checkpoint)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not a model directory (no config.json)")
        return path
    final = run_dir / "final"
    if (final / "config.json").is_file():
        return final
    checkpoints = sorted((p for p in run_dir.glob("checkpoint-*") if (p / "config.json").is_file()),
                         key=lambda p: int(p.name.rsplit("-", 1)[-1]) if p.name.rsplit("-", 1)[-1].isdigit() else -1)
    if checkpoints:
        return checkpoints[-1]
    raise FileNotFoundError(f"{run_dir} has no final/ model and no checkpoint to compute gradients with "
                            "(run.save_final, or pass --checkpoint)")
