"""The rollout log: every N optimizer steps, a sample of that step's rollouts in a Parquet file of the run directory,
for `videoktr analyze` (figures of the paper's Sec. 4.2 and Appendix B) and `videoktr explain --run`.

What is written, one row per response (`SCHEMA`): the step, the process, the prompt group, the prompt (question
text, media paths, prompt token ids), the response (token ids, the text of each token, the whole text), its
reward(s) and advantage, and, where the method computed them, each signal's per-token score (null where the
signal is undefined), each signal's top-r selection and their union, the token weights the loss used, the
log-probabilities under the unperturbed and the perturbed inputs, and the temporal permutation of the clip.
Run-level settings (method, ratio, signals, ...) go into the file's metadata (key `videoktr`).

Cost. Nothing is kept or computed on other steps: the trainer asks `RolloutLog.due(step)` (an integer compare)
and only on a logged step keeps references to the attribution tensors it computed anyway (no extra forward).
On a logged step the chosen rows are copied to the CPU (a few transfers), their tokens decoded in one pass and the
file written; `bench/rollout_log_cost.py` measures it.

Several processes: each process writes its own rows (`step-000010-rank1.parquet`), so logging adds no collective
(nothing any other process must join, nothing that can hang a ZeRO-3/FSDP run) and no process holds the others'
rows; `analysis.rollouts.load_rollouts` reads every rank's file of a step.
"""

from __future__ import annotations

import codecs
import json
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

ROLLOUT_DIR = "rollouts"
META_KEY = b"videoktr"
SIGNALS = ("visual", "temporal", "entropy")
SCHEMA_VERSION = 1


@dataclass
class RolloutLogOptions:
    every: int = 10  # write the rollouts of every N-th optimizer step (0 = off)
    max_responses: int = 32  # per process and logged step, whole prompt groups (at least one); 0 = all


def rollout_file(run_dir: str | Path, step: int, rank: int) -> Path:
    return Path(run_dir) / ROLLOUT_DIR / f"step-{step:06d}-rank{rank}.parquet"


def schema():
    """The Parquet schema of a rollout file (one row per response)."""
    import pyarrow as pa

    floats, bools, ints = pa.list_(pa.float32()), pa.list_(pa.bool_()), pa.list_(pa.int64())
    columns = [
        ("step", pa.int64()), ("rank", pa.int64()), ("row", pa.int64()), ("prompt_group", pa.int64()),
        ("method", pa.string()), ("ratio", pa.float64()),
        ("question", pa.string()), ("prompt", pa.string()),  # prompt: the conversation as JSON
        ("videos", pa.list_(pa.string())), ("images", pa.list_(pa.string())), ("solution", pa.string()),
        ("prompt_ids", ints), ("prompt_length", pa.int64()),
        ("completion_ids", ints), ("tokens", pa.list_(pa.string())), ("response", pa.string()),
        ("reward", pa.float64()), ("rewards_per_func", pa.list_(pa.float64())), ("advantage", pa.float64()),
        ("attributed", pa.bool_()),  # whether this response was scored (zero-advantage responses may be skipped)
        *[(f"scores_{s}", floats) for s in SIGNALS],
        *[(f"selected_{s}", bools) for s in (*SIGNALS, "union")],
        ("weights", floats),
        ("logp_full", floats), ("logp_visual", floats), ("logp_temporal", floats), ("logp_old", floats),
        ("permutation", ints),
    ]
    return pa.schema(columns)


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: the printable character that stands for each byte -> the byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def token_strings(tokenizer, ids: list[int]) -> list[str]:
    """The text of each token of a response, such that their concatenation is the decoded response (special tokens
    kept). Byte-level BPE (the Qwen families): each token's bytes are fed to an incremental UTF-8 decoder, so a
    character split over several tokens belongs to the token that completes it (the earlier ones get ""). Other
    tokenizers: each token decoded on its own."""
    pieces = tokenizer.convert_ids_to_tokens(ids)
    added = {i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    decoder, table = codecs.getincrementaldecoder("utf-8")(errors="replace"), _byte_decoder()
    out = []
    for tid, piece in zip(ids, pieces):
        if piece is None:
            out.append("")
            continue
        if tid in added:
            out.append(decoder.decode(b"", final=True) + piece)
            continue
        try:
            data = bytes(table[c] for c in piece)
        except KeyError:  # not a byte-level token: the tokenizer's own decoding of it alone
            out.append(decoder.decode(b"", final=True) + tokenizer.decode([tid]))
            continue
        out.append(decoder.decode(data))
    if out:
        out[-1] += decoder.decode(b"", final=True)
    return out


def _text_of(prompt) -> str:
    """The text parts of a conversational prompt (or the prompt itself when it is a string)."""
    if isinstance(prompt, str):
        return prompt
    parts = []
    for message in prompt or []:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [p.get("text", "") for p in content if p.get("type") == "text"]
    return "\n".join(p for p in parts if p)


def _media(prompt, kind: str) -> list[str]:
    if isinstance(prompt, str):
        return []
    return [str(p[kind]) for m in prompt or [] if isinstance(m.get("content"), list)
            for p in m["content"] if p.get("type") == kind and p.get(kind) is not None]


def pick_rows(groups: list[int], max_responses: int) -> list[int]:
    """The logged rows: whole prompt groups in batch order, as many as fit in `max_responses` (at least the
    first group; 0 = every row)."""
    if max_responses <= 0:
        return list(range(len(groups)))
    order: list[int] = []
    for g in groups:
        if g not in order:
            order.append(g)
    chosen: set[int] = set()
    count = 0
    for g in order:
        size = groups.count(g)
        if chosen and count + size > max_responses:
            break
        chosen.add(g)
        count += size
    return [i for i, g in enumerate(groups) if g in chosen]


class RolloutLog:
    """Writes a sample of the rollouts of every `options.every`-th optimizer step (see the module docstring)."""

    def __init__(self, run_dir: str | Path, options: RolloutLogOptions, tokenizer, rank: int = 0,
                 settings: dict | None = None):
        if options.every < 0 or options.max_responses < 0:
            raise ValueError(f"rollout log options must be >= 0, got {options}")
        self.run_dir = Path(run_dir)
        self.options = options
        self.tokenizer = tokenizer
        self.rank = rank
        self.settings = dict(settings or {})
        self.last_step: int | None = None

    def due(self, step: int) -> bool:
        """Whether the rollouts that train optimizer step `step` (1-based) are logged: the first generation at or
        after each multiple of `every` (a run that generates every k steps still logs about every N steps)."""
        every = self.options.every
        if every <= 0 or step == self.last_step:
            return False
        if self.last_step is None:
            return step >= every
        return step // every > self.last_step // every

    def write(self, step: int, batch: dict, inputs: list[dict], capture: dict | None = None,
              rewards: torch.Tensor | None = None, reward_weights: torch.Tensor | None = None,
              method: str = "", ratio: float | None = None) -> tuple[Path, float]:
        """Write the chosen rows of one generated batch; returns (file, seconds spent).

        batch: the trainer's rollout dict (prompt_ids/mask, completion_ids/mask, advantages, prompt_group, and
        token_weights / old_per_token_logps when present). inputs: the batch's dataset rows (their `prompt`).
        capture: {"rows": attributed batch rows, "attribution": `Attribution` of those rows, "masks": per-signal
        selections} from the same step (None: the method attributes nothing). rewards [B, F]: this process's
        rewards per reward function; reward_weights [F]."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        start = time.perf_counter()
        self.last_step = step
        B = batch["completion_ids"].shape[0]
        groups = [int(g) for g in batch["prompt_group"].tolist()]
        rows = pick_rows(groups, self.options.max_responses)
        chosen = _chosen_rows(batch, rows, rewards, reward_weights)
        att = _chosen_attribution(capture, batch, rows)
        records = [self._record(step, k, b, groups[b], inputs, chosen, att, method, ratio) for k, b in enumerate(rows)]

        meta = {"schema_version": SCHEMA_VERSION, "step": step, "rank": self.rank, "rows_in_batch": B,
                "method": method, "ratio": ratio, **self.settings}
        table = pa.Table.from_pylist(records, schema=schema().with_metadata({META_KEY: json.dumps(meta)}))
        path = rollout_file(self.run_dir, step, self.rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        pq.write_table(table, partial)
        os.replace(partial, path)  # complete or absent
        return path, time.perf_counter() - start

    def _record(self, step: int, k: int, b: int, group: int, inputs: list[dict], chosen: dict, att: dict,
                method: str, ratio: float | None) -> dict:
        """The log row of batch row `b`, the k-th chosen row (`_chosen_rows`, `_chosen_attribution`)."""
        n = int(chosen["completion_mask"][k].sum())
        ids = chosen["completion_ids"][k, :n].tolist()
        tokens = token_strings(self.tokenizer, ids)
        prompt = inputs[b].get("prompt") if b < len(inputs) else None
        prompt_ids, prompt_mask = chosen["prompt_ids"], chosen["prompt_mask"]
        total, per_func, weights, old = chosen["total"], chosen["per_func"], chosen["weights"], chosen["old"]
        scores, valid, selected = att["scores"], att["valid"], att["selected"]
        logp_full, logp_pert = att["logp_full"], att["logp_pert"]
        j = att["position"].get(b)
        rec = {
            "step": step, "rank": self.rank, "row": b, "prompt_group": group, "method": method,
            "ratio": ratio,
            "question": _text_of(prompt), "prompt": json.dumps(prompt, default=str),
            "videos": _media(prompt, "video"), "images": _media(prompt, "image"),
            "solution": str(inputs[b]["solution"]) if b < len(inputs) and inputs[b].get("solution") is not None
            else None,
            "prompt_ids": prompt_ids[k][prompt_mask[k]].tolist(), "prompt_length": int(prompt_mask[k].sum()),
            "completion_ids": ids, "tokens": tokens, "response": "".join(tokens),
            "reward": None if total is None else _finite(float(total[k])),
            "rewards_per_func": None if per_func is None else [_finite(float(v)) for v in per_func[k]],
            "advantage": float(chosen["advantages"][k]),
            "attributed": j is not None,
            "weights": None if weights is None else weights[k, :n].float().tolist(),
            "logp_old": None if old is None else old[k, :n].float().tolist(),
            "permutation": att["perms"].get(b),
        }
        for s in SIGNALS:
            rec[f"scores_{s}"] = None
            rec[f"selected_{s}"] = None
            if j is not None and scores[s] is not None:
                v = valid[s][j, :n].bool().tolist()
                if any(v):
                    rec[f"scores_{s}"] = [x if ok else None for x, ok in zip(scores[s][j, :n].tolist(), v)]
                    if selected[s] is not None:
                        rec[f"selected_{s}"] = selected[s][j, :n].bool().tolist()
        chosen_masks = [selected[s][j, :n].bool() for s in SIGNALS if j is not None and selected[s] is not None]
        rec["selected_union"] = torch.stack(chosen_masks).any(0).tolist() if chosen_masks else None
        rec["logp_full"] = logp_full[j, :n].tolist() if j is not None and logp_full is not None else None
        for s in ("visual", "temporal"):
            rec[f"logp_{s}"] = None
            if j is not None and logp_pert[s] is not None and valid[s] is not None and valid[s][j, :n].any():
                rec[f"logp_{s}"] = logp_pert[s][j, :n].tolist()
        return rec


def _chosen_rows(batch: dict, rows: list[int], rewards: torch.Tensor | None,
                 reward_weights: torch.Tensor | None) -> dict:
    """The batch's tensors at the chosen `rows`, on the CPU (only those rows travel), with each row's weighted
    total reward (NaN where every reward function gave NaN)."""
    B = batch["completion_ids"].shape[0]
    take = torch.tensor(rows, dtype=torch.long)

    def cpu(t):  # only the chosen rows travel to the CPU
        return None if t is None else t.detach()[take.to(t.device)].cpu()

    out = {"completion_ids": cpu(batch["completion_ids"]), "completion_mask": cpu(batch["completion_mask"]).bool(),
           "prompt_ids": cpu(batch["prompt_ids"]), "prompt_mask": cpu(batch["prompt_mask"]).bool(),
           "advantages": cpu(batch["advantages"].reshape(B, -1)[:, 0]).float(),
           "weights": cpu(batch.get("token_weights")), "old": cpu(batch.get("old_per_token_logps"))}
    per_func = cpu(rewards)
    total = None
    if per_func is not None:
        w = reward_weights.detach().cpu() if reward_weights is not None else torch.ones(per_func.shape[1])
        total = (per_func.float() * w.float()).nansum(1)
        total[per_func.isnan().all(1)] = float("nan")
    return {**out, "per_func": per_func, "total": total}


def _chosen_attribution(capture: dict | None, batch: dict, rows: list[int]) -> dict:
    """The step's attribution at the chosen rows that it attributed, on the CPU: per-signal scores, where they are
    defined, selections, log-probs (full and perturbed), each row's temporal permutation, and `position` (batch
    row -> row of these tensors)."""
    B = batch["completion_ids"].shape[0]
    attributed: dict[int, int] = {}  # batch row -> row of the attribution tensors
    att, masks, perms = None, {}, {}
    if capture and capture.get("attribution") is not None:
        att = capture["attribution"]
        attributed = {b: j for j, b in enumerate(capture["rows"])}
        masks = capture.get("masks") or {}
        media = batch.get("videos") or [None] * B  # each row's RowVideo: the attribution's videos, in row order
        videos = [b for b in capture["rows"] if media[b] is not None and media[b].kind == "video"]
        perms = {b: p.tolist() for b, p in zip(videos, att.permutations)}
    sub = [attributed[b] for b in rows if b in attributed]
    pick = torch.tensor(sub, dtype=torch.long)
    position = {b: k for k, b in enumerate(b for b in rows if b in attributed)}  # batch row -> row of `sub`

    def att_cpu(t):
        return None if t is None or not sub else t.detach()[pick.to(t.device)].float().cpu()

    return {
        "position": position, "perms": perms,
        "scores": {s: att_cpu(att.scores.get(s)) if att is not None else None for s in SIGNALS},
        "valid": {s: att_cpu(att.valid.get(s)) if att is not None else None for s in SIGNALS},
        "selected": {s: att_cpu(masks.get(s)) for s in SIGNALS},
        "logp_full": att_cpu(att.logp) if att is not None else None,
        "logp_pert": {s: att_cpu(att.perturbed_logp.get(s)) if att is not None else None
                      for s in ("visual", "temporal")},
    }


def _finite(x: float) -> float | None:
    return x if x == x else None
