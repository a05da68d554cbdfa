"""Rows and files: Video-R1 rows, world generation (clips + jsonl, cached), clip loading, processor inputs, the
tokenizer corpus."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data.video import Clip, read_video, write_video
from .config import GENERATOR_VERSION, Layout, WorldConfig
from .labels import vision_counterfactuals
from .long_cot import corpus_texts as long_cot_corpus
from .sampled_cot import corpus_texts as sampled_cot_corpus
from .questions import (
    chance_of,
    family_of,
    format_response,
    question_text,
    reference,
    reference_response,
    row_layout,
    sample_layout,
    sample_question,
)
from .render import render_clip


def make_row(problem_id: int, layout: Layout, question: dict, path: str, config: WorldConfig,
             response: str | None = None) -> dict:
    think, answer = reference(layout, question, config.style)
    kind = question["kind"]
    clean = format_response(think, answer)
    return {
        "problem_id": problem_id,
        "problem": question_text(question),
        "data_type": "video",
        "problem_type": "numerical" if family_of(kind) == "count" else "free-form",
        "options": [],
        "solution": f"<answer>{answer}</answer>",
        "path": path,
        "data_source": "synthetic",
        "process": f"<think>{think}</think>",
        "family": family_of(kind),
        "kind": kind,
        "question": dict(question),
        "layout": [list(e) if e else None for e in layout],
        "events": [{"group": g, "colour": e[0], "shape": e[1]} for g, e in enumerate(layout) if e],
        "answer": answer,
        "chance": chance_of(question, config),
        "response": response or clean,
        "noisy": response is not None and response != clean,
    }


def prompt_text(row: dict) -> str:
    """The text part of the row's prompt (the video comes first, placed by the chat template)."""
    return row["problem"]


def sample_rows(config: WorldConfig, split: str, n: int, start_id: int = 0, exclude: set | None = None) -> list[dict]:
    """`n` rows of a split (without writing clips). Rows whose (layout, question) is in `exclude` are re-drawn."""
    config.validate()
    rng = np.random.default_rng([config.seed, {"train": 0, "eval": 1}.get(split, 2)])
    fams = [f for f, _ in config.family_mix]
    weights = np.asarray([w for _, w in config.family_mix], dtype=float)
    weights /= weights.sum()
    rows = []
    exclude = exclude or set()
    while len(rows) < n:
        layout = sample_layout(rng, config)
        family = fams[int(rng.choice(len(fams), p=weights))]
        question = sample_question(rng, family, layout, config)
        key = (layout, question_text(question))
        if key in exclude:
            continue
        pid = start_id + len(rows)
        response = None
        if split == "train" and config.reference_noise and rng.random() < config.reference_noise:
            clean = reference_response(layout, question, config.style)
            others = sorted({reference_response(c, question, config.style)
                             for c in vision_counterfactuals(layout, question, config, rng)}
                            - {clean})
            if others:  # a text-family question has no other reference: it stays clean
                response = others[int(rng.integers(len(others)))]
        rows.append(make_row(pid, layout, question, f"clips/{split}_{pid:06d}.mp4", config, response))
    return rows


@dataclass
class WorldPaths:
    root: Path
    train: Path  # train.jsonl (the warm start's supervised rows)
    eval: Path  # eval.jsonl (held out from everything)
    config: WorldConfig
    reused: bool = False
    rl: Path | None = None  # rl.jsonl: prompts for RL, unseen by the warm start (when n_rl > 0)


def read_rows(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def load_world_config(world_dir: str | Path) -> WorldConfig:
    meta = json.loads((Path(world_dir) / "world.json").read_text())
    return WorldConfig.from_dict(meta["config"])


def _world_key(config: WorldConfig, n_train: int, n_eval: int, n_rl: int = 0) -> str:
    counts = [n_train, n_eval] + ([n_rl] if n_rl else [])
    return hashlib.sha256(json.dumps([config.digest(), *counts]).encode()).hexdigest()[:16]


def generate_world(out_dir: str | Path, config: WorldConfig | None = None, n_train: int = 600,
                   n_eval: int = 300, n_rl: int = 0) -> WorldPaths:
    """Write clips/*.mp4, train.jsonl, eval.jsonl (and rl.jsonl when n_rl > 0) and world.json (config +
    counts + key) under `out_dir`.

    Cached: when world.json names the same key (config hash, generator version, counts) and every file
    exists, nothing is rewritten. Eval rows never repeat a training (clip, question) pair; RL rows repeat
    neither a training nor an eval pair (RL prompts are new to the warm-started model, as in the paper, where
    RL data is separate from the SFT data)."""
    config = config or WorldConfig()
    config.validate()
    out = Path(out_dir)
    key = _world_key(config, n_train, n_eval, n_rl)
    paths = WorldPaths(out, out / "train.jsonl", out / "eval.jsonl", config, rl=out / "rl.jsonl" if n_rl else None)
    meta_path = out / "world.json"
    splits = [p for p in (paths.train, paths.eval, paths.rl) if p is not None]
    if meta_path.is_file() and all(p.is_file() for p in splits):
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key and meta.get("complete"):
            rows = [r for p in splits for r in read_rows(p)]
            if all((out / r["path"]).is_file() for r in rows):
                paths.reused = True
                return paths
    out.mkdir(parents=True, exist_ok=True)
    if meta_path.exists():
        meta_path.unlink()  # incomplete until rewritten below
    train = sample_rows(config, "train", n_train)
    seen = {(row_layout(r), r["problem"]) for r in train}
    evals = sample_rows(config, "eval", n_eval, start_id=n_train, exclude=seen)
    seen |= {(row_layout(r), r["problem"]) for r in evals}
    rl = sample_rows(config, "rl", n_rl, start_id=n_train + n_eval, exclude=seen) if n_rl else []
    noise_rng = np.random.default_rng([config.seed, 99])
    for row in train + evals + rl:
        write_video(out / row["path"], render_clip(row_layout(row), config, noise_rng), config.fps)
    for path, rows in ((paths.train, train), (paths.eval, evals), (paths.rl, rl)):
        if path is not None:
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    meta_path.write_text(json.dumps({"key": key, "config": config.to_dict(), "n_train": n_train,
                                     "n_eval": n_eval, "n_rl": n_rl, "generator_version": GENERATOR_VERSION,
                                     "complete": True}, indent=2))
    return paths


def load_clip(world_dir: str | Path, row: dict, config: WorldConfig | None = None) -> Clip:
    """Decode a row's clip with the shared loader (every frame kept: 2 fps, `frames` frames)."""
    config = config or WorldConfig()
    return read_video(Path(world_dir) / row["path"], target_fps=config.fps, min_frames=4,
                      max_frames=max(16, config.frames))


def load_clips(world_dir: str | Path, rows: Sequence[dict], config: WorldConfig | None = None,
               cache: dict | None = None) -> dict[str, Clip]:
    """Decode the clips of `rows` once: {row path: Clip} (reuses and fills `cache` when given)."""
    cache = {} if cache is None else cache
    for row in rows:
        if row["path"] not in cache:
            cache[row["path"]] = load_clip(world_dir, row, config)
    return cache


def chat_prompt(processor, row: dict) -> str:
    """The chat-template text of the row's prompt: one user turn with the video, then the question."""
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt_text(row)}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode_rows(processor, rows: Sequence[dict], clips: dict[str, Clip], responses: Sequence[str] | None = None,
                padding_side: str = "left"):
    """Processor inputs for `rows` (input_ids, attention_mask, mm_token_type_ids, pixel_values_videos,
    video_grid_thw, second_per_grid_ts), with each clip's fps metadata (`do_sample_frames=False`, so temporal
    positions follow the clip's real 2 fps). With `responses`, each text is prompt + response + end-of-turn
    (for teacher forcing; use padding_side="right")."""
    texts = [chat_prompt(processor, r) for r in rows]
    if responses is not None:
        eos = processor.tokenizer.eos_token
        texts = [t + resp + eos for t, resp in zip(texts, responses)]
    videos = [clips[r["path"]] for r in rows]
    return processor(text=texts, videos=[c.frames for c in videos], video_metadata=[c.metadata() for c in videos],
                     do_sample_frames=False, padding=True, padding_side=padding_side, return_tensors="pt")


def vocabulary(config: WorldConfig | None = None) -> list[str]:
    """Every word of the world's questions and responses."""
    config = config or WorldConfig()
    texts = corpus(config, repeats=1)
    return sorted({w for t in texts for w in re.findall(r"[A-Za-z]+|\d+", t)})


def corpus(config: WorldConfig | None = None, repeats: int = 20) -> list[str]:
    """Texts for training the tokenizer: every question and reference template with every colour, shape and
    count, repeated so that the world's words win the BPE merges (each becomes one token)."""
    config = config or WorldConfig()
    texts: list[str] = []
    colours, shapes = config.colours, config.shapes
    counts = [str(n) for n in range(config.min_events, config.max_events + 1)]
    for c in colours:
        texts += [question_text({"kind": "after", "colour": c}), question_text({"kind": "appeared", "colour": c}),
                  question_text({"kind": "shape_of", "colour": c}),
                  question_text({"kind": "named", "colour": c}), format_response(f"the question names {c}.", c)]
        for s in shapes:
            texts += [format_response(f"first {c} {s}, then {c} {s}.", c),
                      format_response(f"by colour: {c} {s}, {c} {s}.", "yes"),
                      format_response(f"by colour: {c} {s}.", "no")]
    for s in shapes:
        texts += [question_text({"kind": "colour_of", "shape": s}), question_text({"kind": "count_shape", "shape": s})]
        texts += [format_response(f"counting the {s}s.", str(n)) for n in range(config.max_events + 1)]
    texts += [question_text({"kind": k}) for k in ("first", "last", "count")]
    texts += [format_response("counting the shapes.", n) for n in counts]
    if config.style == "long_cot":
        texts += long_cot_corpus(colours, shapes, config.max_events)
    if config.style == "sampled_cot":
        texts += sampled_cot_corpus(colours, shapes, config.max_events)
    return texts * repeats
