"""The plugin's model arguments (`--model_args key=value,...`), checked, and its errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from videoktr.eval.runner import DEFAULT_FPS, DEFAULT_FRAMES, DEFAULT_MAX_NEW_TOKENS, DEFAULT_MAX_PIXELS

MODEL_NAME = "videoktr"  # the name given to `lmms-eval --model`
CLASS_NAME = "VideoKTR"  # the lmms subclass, built on first access (see `model_class`)
ENTRY_POINT_GROUP = "lmms_eval.models"  # the group lmms-eval 0.7.3 reads (models/registry_v2.py)

PROMPT_MODES = ("reasoning", "task")
ANSWER_MODES = ("extract", "raw")
ANSWER_TYPE_CHOICES = ("auto", "mc", "yes_no", "numeric", "open", "relaxed")
REASONING_MIN_NEW_TOKENS = DEFAULT_MAX_NEW_TOKENS  # 1024, the budget `videoktr eval` reasons in
TASK_DEFAULT_MAX_NEW_TOKENS = 256  # when a task names no budget (`prompt=task`)


class PluginError(ValueError):
    """A model argument or a request that this model cannot run. The message names the option or the request."""


class PluginMediaError(RuntimeError):
    """A request's video or image cannot be read. The message names the task, the document and the file."""


@dataclass(frozen=True)
class PluginSettings:
    """The model arguments (`--model_args key=value,...`), checked. See the module docstring."""

    pretrained: str
    device: str | None = None
    dtype: str | None = None
    batch_size: int = 1
    frames: int = DEFAULT_FRAMES
    fps: float = DEFAULT_FPS
    min_frames: int = 4
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    min_pixels: int | None = None
    prompt: str = "reasoning"
    answer_type: str = "auto"
    answer: str = "extract"
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    video_backend: str = "pyav"
    seed: int = 0
    raw_output_file: str | None = None
    rope_positions: str | None = None

    def __post_init__(self):
        _check_choice("prompt", self.prompt, PROMPT_MODES)
        if self.rope_positions is not None:
            _check_choice("rope_positions", self.rope_positions, ("qwen", "transformers"))
        _check_choice("answer", self.answer, ANSWER_MODES)
        _check_choice("answer_type", self.answer_type, ANSWER_TYPE_CHOICES)
        _check_choice("video_backend", self.video_backend, ("pyav", "decord"))
        if self.frames < 2 or self.frames % 2:
            raise PluginError(f"model argument frames must be an even number >= 2, got {self.frames}")
        if not 2 <= self.min_frames <= self.frames:
            raise PluginError(f"model argument min_frames must be in [2, frames={self.frames}], got {self.min_frames}")
        if not self.fps > 0:
            raise PluginError(f"model argument fps must be positive, got {self.fps}")
        if self.batch_size < 1:
            raise PluginError(f"model argument batch_size must be >= 1, got {self.batch_size}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise PluginError(f"model argument max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature is not None and self.temperature < 0:
            raise PluginError(f"model argument temperature must be >= 0, got {self.temperature}")

    @classmethod
    def from_model_args(cls, **kwargs) -> "PluginSettings":
        """Settings from lmms-eval's parsed `--model_args` plus its `batch_size`/`device` (strings or numbers).
        An unknown argument is an error naming it and the known ones."""
        known = set(cls.__dataclass_fields__)
        kwargs = {k: v for k, v in kwargs.items() if not (k == "max_batch_size" and v in (None, ""))}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise PluginError(f"unknown model argument(s) {', '.join(unknown)} for --model {MODEL_NAME}; "
                              f"known: {', '.join(sorted(known))}")
        if "pretrained" not in kwargs:
            raise PluginError(f"--model {MODEL_NAME} needs --model_args pretrained=DIR (a local model directory)")
        typed = {k: _convert(k, v) for k, v in kwargs.items() if v is not None}
        return cls(**typed)


_INT_ARGS = ("batch_size", "frames", "min_frames", "max_pixels", "min_pixels", "max_new_tokens", "seed")
_FLOAT_ARGS = ("fps", "temperature", "top_p")


def _convert(name: str, value: Any) -> Any:
    """A model argument as the type its field needs; an error names the argument and value."""
    try:
        if name in _INT_ARGS:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if name in _FLOAT_ARGS:
            return float(value)
    except (TypeError, ValueError):
        kind = "an integer" if name in _INT_ARGS else "a number"
        raise PluginError(f"model argument {name} must be {kind}, got {value!r}") from None
    return str(value)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise PluginError(f"model argument {name} must be one of {', '.join(choices)}, got {value!r}")
