"""Batch builders shared by tests (importable as `builders`: tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import numpy as np
import torch


def random_frames(seed: int, n: int = 8, size: int = 56) -> np.ndarray:
    """[n, size, size, 3] uint8 frames: each frame a random flat colour plus noise (distinct per frame)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(n, 1, 1, 3))
    noise = rng.integers(-30, 30, size=(n, size, size, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def encode_prompts(processor, rows, fps: float = 2.0):
    """rows: list of (question, frames or None) -> processor outputs for left-padded chat prompts."""
    from videoktr.data.video import Clip

    texts, videos, metas = [], [], []
    for question, frames in rows:
        content = ([{"type": "video"}] if frames is not None else []) + [{"type": "text", "text": question}]
        texts.append(processor.apply_chat_template([{"role": "user", "content": content}],
                                                   add_generation_prompt=True, tokenize=False))
        if frames is not None:
            n = frames.shape[0]
            videos.append(frames)
            metas.append(Clip(frames, fps=fps, source_fps=fps, duration=n / fps, indices=list(range(n))).metadata())
    kwargs = dict(text=texts, return_tensors="pt", padding=True, padding_side="left")
    if videos:
        kwargs.update(videos=videos, video_metadata=metas, do_sample_frames=False)
    return processor(**kwargs)


def make_completions(processor, texts):
    """Right-padded completion ids and mask for the given response texts (each ends with <|im_end|>)."""
    tok = processor.tokenizer
    ids = [tok(t + "<|im_end|>", add_special_tokens=False)["input_ids"] for t in texts]
    width = max(len(i) for i in ids)
    out = torch.full((len(ids), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for b, row in enumerate(ids):
        out[b, : len(row)] = torch.tensor(row)
        mask[b, : len(row)] = 1
    return out, mask
