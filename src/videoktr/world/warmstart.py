"""Supervised warm-up on the synthetic world: the analogue of the paper's SFT checkpoint.

Plain teacher-forced cross-entropy on the rows' reference responses (`row["response"]` + end-of-turn), loss
on response tokens only, answer tokens (inside <answer>...</answer>) weighted `answer_weight` times. Every
`eval_every` steps the model answers a fixed held-out validation subset greedily (`val_per_family` training
rows per family, never trained on). Training stops, so that RL keeps room to improve, when either
- every family is at least `target[0]` of the way from chance to perfect, (acc - chance) / (1 - chance) >=
  target[0] (chance: the family's mean uniform-guess accuracy), at `patience` evaluations in a row (one
  lucky evaluation of a small subset does not stop it), or
- the overall accuracy reaches `target[1]` (ceiling guard).
The window between the two is short (a probe: about 200 steps), hence the frequent evaluation.

The result is cached: `output_dir/warmstart.json` records a key over the warm-start settings, the base
model's files and the world; a second call with the same inputs returns without training.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..train.threads import one_thread

MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")


@dataclass
class WarmStartSettings:
    max_steps: int = 1500  # upper bound on optimizer steps
    batch_size: int = 32  # rows per step
    learning_rate: float = 2e-3  # AdamW, constant after a short linear warm-up
    warmup_steps: int = 20
    answer_weight: float = 5.0  # loss weight of tokens inside <answer>...</answer>
    eval_every: int = 25  # steps between held-out evaluations
    val_per_family: int = 40  # validation rows per family (held out from train.jsonl)
    target: tuple[float, float] = (0.25, 0.85)  # (low: share of the way from chance to perfect that every
    # family must reach, high: overall accuracy that stops training at once)
    patience: int = 2  # consecutive evaluations meeting `low` before stopping
    min_steps: int = 0  # no stop before this many steps
    rope_positions: str = "qwen"  # 3D position scheme the model trains with (models.positions)
    max_new_tokens: int = 40  # greedy evaluation length
    max_grad_norm: float = 1.0
    seed: int = 0


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(base_model_dir: str | Path, world_dir: str | Path, settings: WarmStartSettings) -> str:
    base = Path(base_model_dir)
    named = asdict(settings)
    if named["rope_positions"] == "transformers":  # the scheme warm starts had before it was an option: same key
        del named["rope_positions"]
    parts = {"settings": named,
             "model": {name: _file_digest(base / name) for name in MODEL_FILES if (base / name).is_file()},
             # the warm start reads only train.jsonl and its clips (rendered from the rows and the world config)
             "world_train": _file_digest(Path(world_dir) / "train.jsonl"),
             "world_config": json.loads((Path(world_dir) / "world.json").read_text()).get("config")}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def settings_key(base_model_dir: str | Path, world_dir: str | Path, **kwargs) -> str:
    """The content key of a warm start from warm_start's keyword settings (WarmStartSettings fields, whose defaults
    are warm_start's)."""
    settings = WarmStartSettings(**kwargs)
    settings.target = tuple(settings.target)
    return cache_key(base_model_dir, world_dir, settings)


def is_built(base_model_dir: str | Path, world_dir: str | Path, output_dir: str | Path, **kwargs) -> bool:
    """Whether `warm_start(base_model_dir, world_dir, output_dir, **kwargs)` would return at once (cached);
    `kwargs` are warm_start's settings (WarmStartSettings fields, whose defaults are warm_start's)."""
    return is_complete(output_dir, settings_key(base_model_dir, world_dir, **kwargs))


def find_built(base_model_dir: str | Path, world_dir: str | Path, cache_dir: str | Path, **kwargs) -> Path | None:
    """A finished warm start for these inputs among `cache_dir`'s warmstart-* folders, found by its content key
    (`cache_key`: the settings, the base model's files and the world), whatever its folder is called. The folder
    name digests the base model's path as spelled (world.run.warmstart_digest), so the same cache reached by another
    spelling (an absolute path, a moved checkout) finds its warm start here instead of building it again."""
    key = settings_key(base_model_dir, world_dir, **kwargs)
    return next((d for d in sorted(Path(cache_dir).glob("warmstart-*")) if is_complete(d, key)), None)


def is_complete(output_dir: str | Path, key: str | None = None) -> bool:
    """Whether `output_dir` holds a finished warm start (for `key`, when given)."""
    out = Path(output_dir)
    meta = out / "warmstart.json"
    if not meta.is_file() or not all((out / f).is_file() for f in ("config.json", "model.safetensors")):
        return False
    info = json.loads(meta.read_text())
    return bool(info.get("complete")) and (key is None or info.get("key") == key)


def split_validation(rows: list[dict], per_family: int) -> tuple[list[dict], list[dict]]:
    """(train, validation): the LAST `per_family` rows of each family are validation rows."""
    by_family: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_family.setdefault(r["family"], []).append(i)
    val = {i for idx in by_family.values() for i in idx[-per_family:]} if per_family > 0 else set()
    return [r for i, r in enumerate(rows) if i not in val], [r for i, r in enumerate(rows) if i in val]


def response_weights(input_ids, attention_mask, response_lengths: list[int], answer_open: int, answer_close: int,
                     answer_weight: float):
    """Right-padded ids [B, L] -> per-position loss weights [B, L] for predicting token t (0 on prompt and
    padding, 1 on response tokens, `answer_weight` strictly inside <answer>...</answer>)."""
    import torch

    w = torch.zeros(input_ids.shape, dtype=torch.float32)
    lengths = attention_mask.sum(1).tolist()
    for b, (end, n) in enumerate(zip(lengths, response_lengths)):
        w[b, end - n : end] = 1.0
        inside = False
        for t in range(end - n, end):
            tid = int(input_ids[b, t])
            if tid == answer_close:
                inside = False
            if inside:
                w[b, t] = answer_weight
            if tid == answer_open:
                inside = True
    return w


def _short(acc: dict) -> dict:
    return {"overall": round(acc["overall"]["accuracy"], 3),
            **{f: round(s["accuracy"], 3) for f, s in acc["per_family"].items()},
            "per_kind": {k: round(s["accuracy"], 3) for k, s in acc["per_kind"].items()}}


def above_chance(accuracy: dict) -> dict[str, float]:
    """Per family: (accuracy - chance) / (1 - chance), from a `heldout_accuracy` result."""
    return {f: (s["accuracy"] - s["chance"]) / max(1e-9, 1 - s["chance"]) for f, s in accuracy["per_family"].items()}


@one_thread  # a cached model shared by runs of every thread count: computed with one (train/threads.py)
def warm_start(base_model_dir: str | Path, world_dir: str | Path, output_dir: str | Path, max_steps: int = 1500,
               batch_size: int = 32, learning_rate: float = 2e-3, answer_weight: float = 5.0, eval_every: int = 25,
               val_per_family: int = 40, target: tuple[float, float] = (0.25, 0.85), patience: int = 2,
               min_steps: int = 0, seed: int = 0, max_new_tokens: int = 40, warmup_steps: int = 20,
               progress: bool = True, rope_positions: str = "qwen") -> Path:
    """Warm-start the model in `base_model_dir` on the world in `world_dir`; save model + processor and
    `warmstart.json` (key, steps, seconds, stop reason, validation accuracies before/after and history) to
    `output_dir` and return it. Returns at once when `output_dir` already holds this warm start."""
    import torch
    from tqdm.auto import tqdm

    from .metrics import heldout_accuracy
    from .. import world as synthetic
    from ..models.factory import load_model, load_processor

    settings = WarmStartSettings(max_steps=max_steps, batch_size=batch_size, learning_rate=learning_rate,
                                 warmup_steps=warmup_steps, answer_weight=answer_weight, eval_every=eval_every,
                                 val_per_family=val_per_family, target=tuple(target), patience=patience,
                                 min_steps=min_steps, max_new_tokens=max_new_tokens, seed=seed,
                                 rope_positions=rope_positions)
    out = Path(output_dir)
    key = cache_key(base_model_dir, world_dir, settings)
    if is_complete(out, key):
        return out
    start = time.perf_counter()
    torch.manual_seed(seed)
    config = synthetic.load_world_config(world_dir)
    model = load_model(base_model_dir, dtype="float32", rope_positions=settings.rope_positions)
    processor = load_processor(base_model_dir)
    tok = processor.tokenizer
    open_id, close_id = tok.convert_tokens_to_ids("<answer>"), tok.convert_tokens_to_ids("</answer>")
    rows = synthetic.read_rows(Path(world_dir) / "train.jsonl")
    train_rows, val_rows = split_validation(rows, val_per_family)
    if not train_rows:
        raise ValueError(f"{world_dir}: no training rows left after holding out {val_per_family} per family")
    clips = synthetic.load_clips(world_dir, rows, config)
    low, high = target

    def evaluate() -> dict:
        return heldout_accuracy(model, processor, val_rows, world_dir, batch_size=64,
                                max_new_tokens=max_new_tokens, clips=clips)

    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, warmup_steps)))
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train_rows), generator=gen).tolist()
    cursor = 0
    history: list[dict] = []
    before = evaluate() if val_rows else None
    history.append({"step": 0, "accuracy": _short(before)} if before else {"step": 0})
    last_acc, stop_reason, step, losses, streak = before, "max_steps", 0, [], 0
    model.train()
    bar = tqdm(total=max_steps, desc="warm start", disable=not progress, dynamic_ncols=True)
    while step < max_steps:
        if cursor + batch_size > len(order):
            order = torch.randperm(len(train_rows), generator=gen).tolist()
            cursor = 0
        batch = [train_rows[i] for i in order[cursor : cursor + batch_size]]
        cursor += batch_size
        responses = [r["response"] for r in batch]
        enc = synthetic.encode_rows(processor, batch, clips, responses=responses, padding_side="right")
        resp_len = [len(x) for x in tok([r + tok.eos_token for r in responses], add_special_tokens=False)["input_ids"]]
        weights = response_weights(enc["input_ids"], enc["attention_mask"], resp_len, open_id, close_id, answer_weight)
        logits = model(**enc).logits[:, :-1].float()
        target_ids = enc["input_ids"][:, 1:]
        w = weights[:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target_ids.reshape(-1),
                                                reduction="none").view_as(w)
        loss = (nll * w).sum() / w.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        optimizer.step()
        schedule.step()
        step += 1
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if val_rows and (step % eval_every == 0 or step == max_steps):
            last_acc = evaluate()
            short = _short(last_acc)
            history.append({"step": step, "loss": sum(losses[-eval_every:]) / len(losses[-eval_every:]),
                            "accuracy": short})
            bar.set_postfix(loss=f"{losses[-1]:.3f}", acc=short["overall"])
            progress_share = above_chance(last_acc)
            history[-1]["above_chance"] = {f: round(v, 3) for f, v in progress_share.items()}
            streak = streak + 1 if progress_share and min(progress_share.values()) >= low else 0
            if step >= min_steps:
                if streak >= max(1, patience):
                    stop_reason = "target"
                    break
                if last_acc["overall"]["accuracy"] >= high:
                    stop_reason = "ceiling"
                    break
    bar.close()
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    if (out / "warmstart.json").exists():
        (out / "warmstart.json").unlink()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    info = {
        "key": key,
        "complete": True,
        "base_model": str(base_model_dir),
        "world": str(world_dir),
        "settings": asdict(settings),
        "steps": step,
        "seconds": time.perf_counter() - start,
        "stop_reason": stop_reason,
        "train_rows": len(train_rows),
        "val_rows": len(val_rows),
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "accuracy_before": before,
        "accuracy_after": last_acc,
        "history": history,
    }
    (out / "warmstart.json").write_text(json.dumps(info, indent=2, default=float))
    return out


def read_info(output_dir: str | Path) -> dict:
    """The warmstart.json of a finished warm start."""
    return json.loads((Path(output_dir) / "warmstart.json").read_text())
