"""Video decoding and encoding with PyAV, and the fps metadata the Qwen2.5-VL processor needs.

One decode path serves training, evaluation and the synthetic world: frames are sampled at a target rate
(2 fps by default, as Video-R1), clamped to [min_frames, max_frames] and to an even count (Qwen2.5-VL packs
2 frames into one temporal patch), and returned with the *sampled* frame rate. That rate becomes
`second_per_grid_ts` in the processor and so the temporal position of every temporal group; without it the
processor assumes 24 fps and the groups of a 2 fps clip sit almost on top of each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class VideoDecodeError(RuntimeError):
    """A video file is missing, unreadable or has no decodable frame. The message names the file."""


@dataclass
class Clip:
    """Decoded frames of one video.

    frames: uint8 array [F, H, W, 3] (RGB), F even.
    fps: frame rate of the *sampled* frames (frames per second of video time), e.g. 2.0.
    source_fps: the file's own frame rate; duration: seconds covered by the file.
    indices: indices of the sampled frames in the decoded stream.
    """

    frames: np.ndarray
    fps: float
    source_fps: float
    duration: float
    indices: list[int]
    path: str = ""

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    def metadata(self):
        """transformers' VideoMetadata describing the already-sampled frames: `sampled_fps` equals `fps`."""
        from transformers.video_utils import VideoMetadata

        n = self.num_frames
        return VideoMetadata(
            total_num_frames=n,
            fps=float(self.fps),
            width=int(self.frames.shape[2]),
            height=int(self.frames.shape[1]),
            duration=float(self.duration),
            video_backend="pyav",
            frames_indices=list(range(n)),
        )


def sample_indices(num_source_frames: int, source_fps: float, target_fps: float = 2.0,
                   min_frames: int = 4, max_frames: int = 16) -> list[int]:
    """Indices of frames to keep: `target_fps` over the clip, clamped to [min_frames, max_frames], even count,
    spread uniformly. A clip shorter than `min_frames` repeats frames rather than failing."""
    if num_source_frames <= 0:
        raise ValueError("a clip needs at least one frame")
    if min_frames < 2 or max_frames < min_frames:
        raise ValueError(f"need 2 <= min_frames <= max_frames, got min_frames={min_frames}, max_frames={max_frames}")
    duration = num_source_frames / source_fps if source_fps > 0 else num_source_frames / target_fps
    n = int(round(duration * target_fps))
    n = max(min_frames, min(max_frames, n))
    n -= n % 2  # even: frames pair up into temporal patches
    n = max(n, 2)
    # centres of n equal segments of the clip
    return [min(num_source_frames - 1, int((i + 0.5) * num_source_frames / n)) for i in range(n)]


VIDEO_BACKENDS = ("pyav", "decord")


def read_video(path: str | Path, target_fps: float = 2.0, min_frames: int = 4, max_frames: int = 16,
               backend: str = "pyav") -> Clip:
    """Decode `path` and sample frames (see `sample_indices`). Raises VideoDecodeError naming the file.

    backend: "pyav" (default, a dependency) or "decord" (optional, `pip install decord`: random access by
    frame index, often faster on long clips). Both sample the same frame indices; on the same file they return
    the same frames (tested on lossless clips)."""
    if backend not in VIDEO_BACKENDS:
        raise ValueError(f"video backend must be one of {VIDEO_BACKENDS}, got {backend!r}")
    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(f"video file not found: {path}")
    if backend == "decord":
        return _read_decord(path, target_fps, min_frames, max_frames)
    return _read_pyav(path, target_fps, min_frames, max_frames)


def _clip(path: Path, frames, idx: list[int], n_source: int, source_fps: float, target_fps: float) -> Clip:
    # Sampled rate: frames kept per second of video time (equals target_fps unless clamped).
    duration = n_source / source_fps
    fps = len(idx) / duration if duration > 0 else target_fps
    return Clip(np.stack(frames), fps=fps, source_fps=source_fps, duration=duration, indices=idx, path=str(path))


def _read_decord(path: Path, target_fps: float, min_frames: int, max_frames: int) -> Clip:
    try:
        import decord
    except ImportError as exc:
        raise ImportError("video backend 'decord' needs the decord package: pip install decord "
                          "(or use the default backend 'pyav')") from exc
    try:
        reader = decord.VideoReader(str(path), num_threads=1)
        total = len(reader)
        if total <= 0:
            raise VideoDecodeError(f"no decodable frame in {path}")
        source_fps = float(reader.get_avg_fps() or 0.0) or target_fps
        idx = sample_indices(total, source_fps, target_fps, min_frames, max_frames)
        frames = reader.get_batch(idx).asnumpy()
    except VideoDecodeError:
        raise
    except Exception as exc:  # decord raises DECORDError and others for damaged files
        raise VideoDecodeError(f"cannot decode video {path}: {exc}") from exc
    return _clip(path, list(frames), idx, total, source_fps, target_fps)


def _read_pyav(path: Path, target_fps: float, min_frames: int, max_frames: int) -> Clip:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"no video stream in {path}")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            source_fps = float(rate) if rate else 0.0
            total = int(stream.frames or 0)
            if total <= 0 and stream.duration and stream.time_base and source_fps > 0:
                total = int(round(float(stream.duration * stream.time_base) * source_fps))
            if total > 0 and source_fps > 0:
                # known length: keep only the sampled frames while decoding (long clips never sit in memory)
                idx = sample_indices(total, source_fps, target_fps, min_frames, max_frames)
                wanted = set(idx)
                kept: dict[int, np.ndarray] = {}
                for i, frame in enumerate(container.decode(stream)):
                    if i in wanted:
                        kept[i] = frame.to_ndarray(format="rgb24")
                    if i >= idx[-1]:
                        break
                if not kept:
                    raise VideoDecodeError(f"no decodable frame in {path}")
                # a header that overstates the length leaves the last wanted frames missing: repeat the last one
                frames = []
                for i in idx:
                    frames.append(kept[i] if i in kept else (frames[-1] if frames else next(iter(kept.values()))))
                n_source = total
            else:
                decoded = list(container.decode(stream))  # converted to RGB below, only the sampled frames
                if not decoded:
                    raise VideoDecodeError(f"no decodable frame in {path}")
                source_fps = source_fps if source_fps > 0 else target_fps
                idx = sample_indices(len(decoded), source_fps, target_fps, min_frames, max_frames)
                frames = [decoded[i].to_ndarray(format="rgb24") for i in idx]
                n_source = len(decoded)
    except VideoDecodeError:
        raise
    except Exception as exc:  # PyAV raises several error types for damaged files
        raise VideoDecodeError(f"cannot decode video {path}: {exc}") from exc
    return _clip(path, frames, idx, n_source, source_fps, target_fps)


def write_video(path: str | Path, frames: np.ndarray, fps: float) -> Path:
    """Write uint8 RGB frames [F, H, W, 3] as an H.264 mp4 (lossless-quality settings; H and W must be even)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [F, H, W, 3] uint8, got shape {frames.shape}")
    from fractions import Fraction

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "yuv444p"
        stream.options = {"crf": "0", "preset": "ultrafast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def seconds_per_temporal_group(fps: float, temporal_patch_size: int = 2) -> float:
    """`second_per_grid_ts` of a clip sampled at `fps`: one temporal group spans `temporal_patch_size` frames."""
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be a positive number, got {fps}")
    return temporal_patch_size / fps
