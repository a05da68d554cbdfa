"""Hugging Face `generate` generator for the runner: one batched, left-padded `model.generate` call per batch,
on CPU or GPU.

Videos are decoded with `videoktr.data.video.read_video` (frames sampled at `fps`, at least `min_frames` and at
most `frames`, an even count) and passed to the processor with their sampled-fps metadata, so the temporal
positions of the frames are the ones the model was trained with. The per-frame pixel budget is set on the
processor (`max_pixels`, default 256*28*28 as Video-R1's evaluation). Vision placeholder tokens are suppressed
during sampling. A video that does not decode or an image that does not open raises the runner's MediaError
naming every such request of the batch (the runner records or stops on them). torch and transformers are
imported when a generator is built, not when this module is.
"""

from __future__ import annotations

import io
from pathlib import Path

from .runner import DEFAULT_FPS, DEFAULT_FRAMES, DEFAULT_MAX_PIXELS, MediaError, Request


def _load_image(src: Path | bytes):
    from PIL import Image

    img = Image.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src)
    return img.convert("RGB")


class HFGenerator:
    """generate(batch, *, max_new_tokens, temperature, top_p) -> list of decoded completions (the runner's
    generator protocol). temperature 0 means greedy decoding."""

    def __init__(self, model_path: str | Path, *, frames: int = DEFAULT_FRAMES, fps: float = DEFAULT_FPS,
                 min_frames: int = 4, max_pixels: int | None = DEFAULT_MAX_PIXELS, min_pixels: int | None = None,
                 device: str | None = None, dtype: str | None = None, seed: int = 0, video_backend: str = "pyav",
                 rope_positions: str | None = None):
        import torch

        from videoktr.models.factory import load_model, load_processor, suppressed_token_ids
        from videoktr.models.positions import loaded_scheme

        if frames < 2 or frames % 2:
            raise ValueError(f"frames must be an even number >= 2 (got {frames})")
        self.model_path = str(Path(model_path).resolve())
        self.frames, self.fps, self.min_frames = frames, fps, min(min_frames, frames)
        self.max_pixels, self.min_pixels = max_pixels, min_pixels
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = dtype
        self.seed = seed
        self.video_backend = video_backend
        self.model = load_model(model_path, dtype=dtype, device=self.device, rope_positions=rope_positions).eval()
        # the scheme the model computes: the flag, else what its directory records (models.positions)
        self.rope_positions = loaded_scheme(self.model, rope_positions)
        self.processor = load_processor(model_path, min_pixels=min_pixels, max_pixels=max_pixels)
        self.suppress = suppressed_token_ids(self.processor.tokenizer)
        torch.manual_seed(seed)

    def describe(self) -> dict:
        """Settings recorded in run.json (a resumed run must use the same)."""
        return {"model": self.model_path, "frames": self.frames, "fps": self.fps, "min_frames": self.min_frames,
                "max_pixels": self.max_pixels, "min_pixels": self.min_pixels, "dtype": self.dtype,
                "seed": self.seed, "backend": "hf", "rope_positions": self.rope_positions}

    def _load_media(self, batch: list[Request]) -> list[tuple]:
        """(clip or None, [images]) per request. Every request's media is read before any failure is raised, so
        that one MediaError names all the unreadable ones of the batch."""
        from PIL import Image

        from videoktr.data.video import VideoDecodeError, read_video

        loaded, failures = [], []
        for i, req in enumerate(batch):
            clip, imgs = None, []
            try:
                if req.video is not None:
                    clip = read_video(req.video, target_fps=self.fps, min_frames=self.min_frames,
                                      max_frames=self.frames, backend=self.video_backend)
            except VideoDecodeError as exc:
                failures.append((i, req.video, str(exc)))
                continue
            for src in req.images:
                name = src if isinstance(src, Path) else None
                try:
                    imgs.append(_load_image(src))
                except (OSError, ValueError, Image.DecompressionBombError) as exc:
                    failures.append((i, name, f"cannot read image {name or '(embedded)'}: {exc}"))
                    break
            loaded.append((clip, imgs))
        if failures:
            raise MediaError(failures)
        return loaded

    def _encode(self, batch: list[Request]):
        texts, videos, metas, images = [], [], [], []
        for req, (clip, imgs) in zip(batch, self._load_media(batch)):
            content = []
            if clip is not None:
                videos.append(clip.frames)
                metas.append(clip.metadata())
                content.append({"type": "video"})
            for img in imgs:
                images.append(img)
                content.append({"type": "image"})
            content.append({"type": "text", "text": req.prompt})
            texts.append(self.processor.apply_chat_template([{"role": "user", "content": content}],
                                                            add_generation_prompt=True, tokenize=False))
        kwargs = dict(text=texts, return_tensors="pt", padding=True, padding_side="left")
        if videos:
            kwargs.update(videos=videos, video_metadata=metas, do_sample_frames=False)
        if images:
            kwargs["images"] = images
        return self.processor(**kwargs).to(self.model.device)

    def generate(self, batch: list[Request], *, max_new_tokens: int, temperature: float, top_p: float) -> list[str]:
        import torch

        if not batch:
            return []
        inputs = self._encode(batch)
        gen = dict(max_new_tokens=max_new_tokens, suppress_tokens=self.suppress or None)
        if temperature > 0:
            gen.update(do_sample=True, temperature=temperature, top_p=top_p)
        else:
            gen.update(do_sample=False)
        with torch.no_grad():
            out = self.model.generate(**inputs, **gen)
        completions = out[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(completions, skip_special_tokens=True)
