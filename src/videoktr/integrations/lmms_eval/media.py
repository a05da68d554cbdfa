"""A request's visuals decoded (videos through videoktr's sampler, with their fps) and encoded with the prompts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from videoktr.eval.runner import IMAGE_SUFFIXES, VIDEO_SUFFIXES, media_kind

from .settings import MODEL_NAME, PluginMediaError, PluginSettings

@dataclass
class Media:
    """A request's decoded visuals: videos (videoktr Clips, frames sampled with their fps) and RGB images."""

    clips: list = field(default_factory=list)
    images: list = field(default_factory=list)


def load_visuals(visuals, settings: PluginSettings, where: str) -> Media:
    """Decode what a task's `doc_to_visual` returned: video or image file paths and PIL images. Videos go through
    our sampler (`read_video`). Anything unreadable raises PluginMediaError naming `where` and the file."""
    media = Media()
    for visual in visuals or []:
        if isinstance(visual, (str, Path)):
            _load_path(Path(visual), settings, where, media)
        elif _is_pil_image(visual):
            media.images.append(visual.convert("RGB"))
        else:
            what = f"a dict with keys {sorted(visual)}" if isinstance(visual, dict) else type(visual).__name__
            raise PluginMediaError(f"{where}: doc_to_visual gave {what}; --model {MODEL_NAME} reads video and "
                                   "image file paths and PIL images only")
    return media


def _is_pil_image(obj) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with transformers
        return False
    return isinstance(obj, Image.Image)


def _load_path(path: Path, settings: PluginSettings, where: str, media: Media) -> None:
    from PIL import Image

    from videoktr.data.video import VideoDecodeError, read_video

    kind = media_kind(path) if path.is_file() else None
    suffix = path.suffix.lower()
    if kind == "video" or (kind is None and suffix in VIDEO_SUFFIXES):
        try:
            media.clips.append(read_video(path, target_fps=settings.fps, min_frames=settings.min_frames,
                                          max_frames=settings.frames, backend=settings.video_backend))
        except VideoDecodeError as exc:
            raise PluginMediaError(f"{where}: {exc}") from exc
    elif kind == "image" or suffix in IMAGE_SUFFIXES:
        try:
            with Image.open(path) as img:
                media.images.append(img.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            reason = "image file not found" if not path.exists() else f"cannot read image ({exc})"
            raise PluginMediaError(f"{where}: {reason}: {path}") from exc
    elif not path.exists():
        raise PluginMediaError(f"{where}: media file not found: {path}")
    else:
        raise PluginMediaError(f"{where}: cannot tell whether {path} is a video or an image")


def encode(processor, prompts: list[str], media: list[Media], device=None):
    """Processor inputs for a batch, laid out as `videoktr eval` lays them out (eval/generate.py): per request
    its videos, then its images, then the text, in one user turn of the chat template; videos go with their
    sampled-fps metadata and are not resampled; left padding."""
    texts, videos, metas, images = [], [], [], []
    for prompt, med in zip(prompts, media, strict=True):
        content = [{"type": "video"} for _ in med.clips] + [{"type": "image"} for _ in med.images]
        content.append({"type": "text", "text": prompt})
        texts.append(processor.apply_chat_template([{"role": "user", "content": content}],
                                                   add_generation_prompt=True, tokenize=False))
        for clip in med.clips:
            videos.append(clip.frames)
            metas.append(clip.metadata())
        images.extend(med.images)
    kwargs = dict(text=texts, return_tensors="pt", padding=True, padding_side="left")
    if videos:
        kwargs.update(videos=videos, video_metadata=metas, do_sample_frames=False)
    if images:
        kwargs["images"] = images
    inputs = processor(**kwargs)
    return inputs.to(device) if device is not None else inputs
