"""RL prompts that carry a signal (paper Sec. 4.1) for the synthetic world: before RL, the starting model samples
G responses to each RL prompt (the run's rl.num_generations, rl.temperature, rl.top_p and completion budget, the
world's own prompts and clips), and only prompts whose accuracy lies in [0.2, 0.8] are kept: the rule of
`videoktr filter` (`filter.difficulty_decision`). A prompt whose G responses are all right or all wrong gives a
group with no accuracy signal, so nothing to learn from (format rewards aside).

The per-prompt accuracies are cached under run.cache_dir by (starting model, RL prompts, sampling settings), so
every cell of a study that starts from the same warm start reuses one pass.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..filter import FilterOptions, difficulty_decision


def _file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def filter_key(model_dir: str | Path, rl_path: str | Path, settings: dict) -> str:
    """Cache key of one filter pass: the model's weights, the RL prompts and the sampling settings."""
    model = Path(model_dir)
    weights = sorted(model.glob("*.safetensors"))
    parts = {"model": [_file_digest(p) for p in weights], "rl": _file_digest(rl_path), "settings": settings}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def signal_share(accuracies: list[float]) -> float:
    """Share of prompts whose G responses are neither all right nor all wrong (their group has an accuracy signal)."""
    return sum(0.0 < a < 1.0 for a in accuracies) / max(1, len(accuracies))


def filter_world_prompts(model, processor, model_dir, rows: list[dict], world_dir, rl_path, cache_dir,
                         samples: int, temperature: float, top_p: float, max_new_tokens: int, seed: int = 0,
                         options: FilterOptions | None = None, batch_size: int = 8,
                         progress: bool = True) -> tuple[list[dict], dict]:
    """(kept rows, summary). `rows` are the world's RL rows (rl_path's); summary: rows, kept, too_easy, too_hard,
    the share of prompts with an accuracy signal before and after, the accuracy histogram, the cache file."""
    import torch

    from .metrics import generate_responses
    from .. import world as synthetic

    options = options or FilterOptions()
    options.validate()
    settings = {"samples": samples, "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens,
                "seed": seed, "low": options.low, "high": options.high}
    key = filter_key(model_dir, rl_path, settings)
    cache = Path(cache_dir) / f"rl-filter-{key}.json"
    if cache.is_file():
        accuracies = json.loads(cache.read_text())["accuracies"]
    else:
        torch.manual_seed(seed)
        accuracies = []
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            texts = generate_responses(model, processor, batch, world_dir, batch_size=len(batch),
                                       max_new_tokens=max_new_tokens, samples=samples, temperature=temperature,
                                       top_p=top_p)
            for j, row in enumerate(batch):
                mine = texts[j * samples : (j + 1) * samples]
                accuracies.append(difficulty_decision(
                    synthetic.accuracy_reward(mine, [row["solution"]] * samples), options.low, options.high)[0])
            if progress:
                print(f"  difficulty filter: {len(accuracies)}/{len(rows)} prompts", flush=True)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "settings": settings, "accuracies": accuracies}))
        tmp.replace(cache)
    if len(accuracies) != len(rows):
        raise ValueError(f"{cache}: holds {len(accuracies)} accuracies for {len(rows)} RL prompts; delete it")
    kept_flags = [difficulty_decision([a], options.low, options.high)[1] for a in accuracies]
    kept = [r for r, k in zip(rows, kept_flags) if k]
    summary = {"rows": len(rows), "kept": len(kept), "low": options.low, "high": options.high, "samples": samples,
               "too_easy": sum(a > options.high for a in accuracies), "too_hard": sum(a < options.low for a in accuracies),
               "signal_share_before": signal_share(accuracies),
               "signal_share_after": signal_share([a for a, k in zip(accuracies, kept_flags) if k]),
               "mean_accuracy_before": sum(accuracies) / max(1, len(accuracies)),
               "cache": str(cache)}
    return kept, summary
