"""An lmms-eval model that evaluates any Qwen-VL checkpoint the way `videoktr eval` does.

    lmms-eval --model videoktr --model_args pretrained=DIR --tasks TASK

lmms-eval's own Qwen2.5-VL model hands frames to the processor without video metadata (every clip is then read
at the processor's default fps and the temporal positions of its frames collapse) and returns the raw output,
`<think>` block included. This model instead:

- samples each video with `videoktr.data.video.read_video` (`fps` frames a second, `min_frames` to `frames`,
  an even count) and passes the sampled fps to the processor as `video_metadata`, so each temporal group gets
  its own temporal position, exactly as `videoktr eval` (`eval/generate.py`) and training do;
- builds the user turn as our evaluator does (`prompt=reasoning`, the default): the task's context is read as a
  question plus option lines ("A. ...", "(A) ...", "A: ..."), the task's own direct-answer instructions
  (`ANSWER_INSTRUCTIONS`, e.g. "Answer with the option's letter from the given choices directly.") are dropped,
  and the question, "Options:" and the options are followed by the paper's reasoning instruction and the
  answer-type suffix (`text/prompts.py`). `prompt=task` keeps the task's context as it is;
- reads the answer with `videoktr.text.extract.extract` (last `<answer>` tag, then answer phrases) and returns it
  to the task (an option letter, yes/no, a number or a short text) so that the task's own parser scores the
  answer rather than the reasoning. An output whose answer cannot be read is returned without its reasoning
  (the text after `</think>`, or nothing when the reasoning was cut off), never the reasoning itself, so that a
  task's parser cannot pick a letter out of it. `answer=raw` returns the model's output unchanged.

Generation settings come from the task's `generation_kwargs`: `max_new_tokens`, `temperature` (0 = greedy;
sampling also needs the task not to say `do_sample: false`), `top_p`, `num_beams` and `until` (stop strings:
generation stops there and the text is cut before them). With `prompt=reasoning` a task's budget is raised to at
least `REASONING_MIN_NEW_TOKENS` (a direct-answer budget such as 16 tokens would end the reasoning before its
answer) and whitespace-only stop strings ("\\n\\n", lmms-eval's default delimiter) are dropped (reasoning has
paragraph breaks). The model arguments `max_new_tokens`, `temperature` and `top_p` override the task's values.

`loglikelihood` (multiple-choice tasks) scores the continuation after the chat template's assistant prefix,
with the request's visuals and the task's context unchanged, as the sum of its tokens' log-probabilities, and
hands lmms-eval its negative (`as_lmms_eval_scores`: lmms-eval 0.7.3 ranks options by the smallest value, as its
own models return a loss); `generate_until_multi_round` is not supported. lmms-eval is imported only when lmms-eval itself asks for the model class (`manifest`, the entry
point, and the module attribute `VideoKTR`); everything else here is plain code the test suite runs without
lmms-eval. Tested against lmms-eval 0.7.3 (README, "lmms-eval").
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from videoktr.text.item import Item
from videoktr.text.extract import clean_output, extract, last_answer_tag
from videoktr.text.prompts import format_question, reasoning_text
from videoktr.eval.runner import (DEFAULT_FPS, DEFAULT_FRAMES, DEFAULT_MAX_NEW_TOKENS, DEFAULT_MAX_PIXELS,
                                  IMAGE_SUFFIXES, VIDEO_SUFFIXES, media_kind)

MODEL_NAME = "videoktr"  # the name given to `lmms-eval --model`
CLASS_NAME = "VideoKTR"  # the lmms subclass, built on first access (see `model_class`)
ENTRY_POINT_GROUP = "lmms_eval.models"  # the group lmms-eval 0.7.3 reads (models/registry_v2.py)

PROMPT_MODES = ("reasoning", "task")
ANSWER_MODES = ("extract", "raw")
ANSWER_TYPE_CHOICES = ("auto", "mc", "yes_no", "numeric", "open", "relaxed")
REASONING_MIN_NEW_TOKENS = DEFAULT_MAX_NEW_TOKENS  # 1024, the budget `videoktr eval` reasons in
TASK_DEFAULT_MAX_NEW_TOKENS = 256  # when a task names no budget (`prompt=task`)

# Sentences of a task's context that ask for a direct answer. With prompt=reasoning they are removed: the
# reasoning instruction replaces them. Each is matched at the start of a line or sentence, case-insensitively,
# and may run over one line break.
ANSWER_INSTRUCTIONS = (
    r"do not (?:generate|give|output|provide|include) any (?:intermediate )?(?:reasoning|explanation)[^.\n]*\.?",
    (r"(?:please )?(?:answer|respond|reply)\b[^.\n]*(?:\n[^.\n]*)?\b(?:directly|only|single word|single letter)\b"
     r"[^.\n]*(?:\n[^.\n]*)?(?:\.|:|$)"),
    r"(?:select|choose|pick) the best (?:answer|option) (?:to|for) the following[^.\n]*\.?",
    r"the best (?:answer|option) is\s*:?[ \t]*$",
    r"answer\s*:[ \t]*$",
)
_INSTRUCTION_RE = re.compile(r"(?:^|(?<=[.!?:])[ \t]+)[ \t]*(?:" + "|".join(ANSWER_INSTRUCTIONS) + r")",
                             re.I | re.M)
_OPTION_RE = re.compile(r"^\s*(?:\(([A-Z])\)|([A-Z])[.):])\s*(\S.*?)\s*$")
_OPTIONS_HEADER_RE = re.compile(r"^\s*(?:options|choices)\s*:\s*$", re.I)
_QUESTION_LABEL_RE = re.compile(r"^\s*(?:question|q)\s*:\s*", re.I)
_YES_NO_RE = re.compile(r"\byes or no\b", re.I)


class PluginError(ValueError):
    """A model argument or a request that this model cannot run. The message names the option or the request."""


class PluginMediaError(RuntimeError):
    """A request's video or image cannot be read. The message names the task, the document and the file."""


# ----------------------------------------------------------------------------------------------- settings


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


# ------------------------------------------------------------------------------------------------ prompts


@dataclass(frozen=True)
class ParsedContext:
    """A task's context read as a question (all lines that are not options) and its options (None if none)."""

    question: str
    options: dict[str, str] | None


def strip_answer_instructions(text: str) -> str:
    """`text` without the sentences that ask for a direct answer (`ANSWER_INSTRUCTIONS`)."""
    return _INSTRUCTION_RE.sub("", text)


def _option_run(lines: list[str]) -> tuple[int, dict[str, str]] | None:
    """(index of the first line, options) of the first run of lines labelled A, B, C, ... (at least two)."""
    for start, line in enumerate(lines):
        m = _OPTION_RE.match(line)
        if not m or (m.group(1) or m.group(2)) != "A":
            continue
        options: dict[str, str] = {}
        for offset, nxt in enumerate(lines[start:]):
            m = _OPTION_RE.match(nxt)
            label = (m.group(1) or m.group(2)) if m else None
            if label != chr(ord("A") + offset):
                break
            options[label] = m.group(3)
        if len(options) >= 2:
            return start, options
    return None


def parse_context(context: str) -> ParsedContext:
    """Split a context into the question text and the options ("A. x", "(A) x", "A) x", "A: x" lines). A line
    "Options:" right before the options and a leading "Question:" label are dropped; blank lines are dropped."""
    lines = context.replace("<image>", "").splitlines()
    run = _option_run(lines)
    options = None
    if run is not None:
        start, options = run
        before = lines[:start]
        if before and _OPTIONS_HEADER_RE.match(before[-1]):
            before = before[:-1]
        lines = before + lines[start + len(options):]
    kept = [line.strip() for line in lines if line.strip()]
    if kept:
        kept[0] = _QUESTION_LABEL_RE.sub("", kept[0], count=1)
    return ParsedContext("\n".join(line for line in kept if line), options)


def answer_kind(context: str, parsed: ParsedContext, setting: str, where: str) -> str:
    """The answer type used to phrase the prompt's suffix and to read the answer: `setting` unless "auto";
    "auto" is "mc" with options, "yes_no" when the context asks for yes or no, else "open"."""
    if setting == "auto":
        if parsed.options:
            return "mc"
        return "yes_no" if _YES_NO_RE.search(context) else "open"
    if setting == "mc" and not parsed.options:
        raise PluginError(f"{where}: answer_type=mc but the context has no option lines (A. ..., B. ...): "
                          f"{context[:200]!r}")
    return setting


@dataclass(frozen=True)
class PromptedRequest:
    """The user-turn text for a request and the Item the answer is read against."""

    prompt: str
    item: Item


def build_prompt(context: str, settings: PluginSettings, task: str | None = None, doc_id: Any = None
                 ) -> PromptedRequest:
    """The user turn and the extraction Item for one lmms-eval context (see the module docstring)."""
    where = describe_request(task, doc_id)
    reasoning = settings.prompt == "reasoning"
    text = strip_answer_instructions(context) if reasoning else context
    parsed = parse_context(text)
    kind = answer_kind(context, parsed, settings.answer_type, where)
    options = parsed.options if kind == "mc" else None
    if reasoning:
        prompt = reasoning_text(format_question(parsed.question, options), kind)
    else:
        prompt = context.replace("<image>", "")
    item = Item(id=str(doc_id), benchmark=f"lmms_eval:{task or ''}", question=parsed.question, answer="",
                answer_type=kind, options=options, task=task)
    return PromptedRequest(prompt, item)


def describe_request(task: str | None, doc_id: Any) -> str:
    """"task T doc D", for messages."""
    return f"lmms-eval task {task!r} doc {doc_id!r}" if task is not None else f"lmms-eval request {doc_id!r}"


# -------------------------------------------------------------------------------------------------- media


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


# ------------------------------------------------------------------------------------------------ encoding


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


# -------------------------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class GenerationOptions:
    """Resolved generation settings of one request; requests with equal options share a batch."""

    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_p: float
    num_beams: int
    until: tuple[str, ...]


def generation_options(gen_kwargs: dict | None, settings: PluginSettings, where: str = "lmms-eval request"
                       ) -> GenerationOptions:
    """A task's `generation_kwargs` with the model arguments applied (see the module docstring)."""
    gk = dict(gen_kwargs or {})
    until = gk.get("until")
    if until is None:
        until = []
    elif isinstance(until, str):
        until = [until]
    elif not isinstance(until, (list, tuple)) or not all(isinstance(u, str) for u in until):
        raise PluginError(f"{where}: generation_kwargs until must be a string or a list of strings, got {until!r}")
    reasoning = settings.prompt == "reasoning"
    stops = tuple(u for u in until if u and not (reasoning and not u.strip()))
    if settings.max_new_tokens is not None:
        budget = settings.max_new_tokens
    else:
        task_budget = gk.get("max_new_tokens")
        budget = int(task_budget) if task_budget is not None else TASK_DEFAULT_MAX_NEW_TOKENS
        if reasoning:
            budget = max(budget, REASONING_MIN_NEW_TOKENS)
    if settings.temperature is not None:
        temperature = settings.temperature
        do_sample = temperature > 0
    else:
        temperature = float(gk.get("temperature") or 0.0)
        do_sample = temperature > 0 and gk.get("do_sample") is not False
    top_p = settings.top_p if settings.top_p is not None else gk.get("top_p")
    top_p = 1.0 if top_p is None else float(top_p)
    num_beams = int(gk.get("num_beams") or 1)
    return GenerationOptions(budget, do_sample, temperature if do_sample else 0.0, top_p, num_beams, stops)


def hf_generate_kwargs(opts: GenerationOptions, suppress: list[int], tokenizer) -> dict:
    """Keyword arguments for `model.generate` (vision placeholder tokens are never sampled)."""
    kwargs: dict = dict(max_new_tokens=opts.max_new_tokens, suppress_tokens=suppress or None,
                        num_beams=opts.num_beams, do_sample=opts.do_sample)
    if opts.do_sample:
        kwargs.update(temperature=opts.temperature, top_p=opts.top_p)
    if opts.until:
        kwargs.update(stop_strings=list(opts.until), tokenizer=tokenizer)
    return kwargs


def cut_at_stop(text: str, until: tuple[str, ...] | list[str]) -> str:
    """`text` up to the earliest stop string (generation may run a token past it)."""
    cut = len(text)
    for stop in until:
        i = text.find(stop) if stop else -1
        if i >= 0:
            cut = min(cut, i)
    return text[:cut]


def generate_texts(model, processor, suppress: list[int], prompts: list[str], media: list[Media],
                   opts: GenerationOptions) -> list[str]:
    """One batched `model.generate` call; the decoded continuations, cut at the stop strings."""
    import torch

    inputs = encode(processor, prompts, media, model.device)
    with torch.no_grad():
        out = model.generate(**inputs, **hf_generate_kwargs(opts, suppress, processor.tokenizer))
    texts = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return [cut_at_stop(t, opts.until) for t in texts]


# ------------------------------------------------------------------------------------------------ answers


def unparsed_answer(output: str) -> str:
    """What to hand a task when no answer can be read: the content of the last <answer> tag, else the text after
    the last </think>, else nothing when the output reasons without closing (cut off), else the output."""
    text = clean_output(output)
    tagged = last_answer_tag(text)
    if tagged is not None:
        return tagged.strip()
    parts = re.split(r"</think>", text, flags=re.I)
    if len(parts) > 1:
        return parts[-1].strip()
    if re.search(r"<think>", text, re.I):
        return ""
    return text.strip()


def final_answer(output: str, item: Item, mode: str = "extract") -> tuple[str, str]:
    """(text returned to lmms-eval, how it was read). mode "raw": the output itself."""
    if mode == "raw":
        return output, "raw"
    found = extract(output, item)
    if found.value is not None:
        return found.value, found.method
    return unparsed_answer(output), found.method


# ------------------------------------------------------------------------------------------------ requests


@dataclass
class GenerateRequest:
    """An lmms-eval `generate_until` request with its document's visuals resolved."""

    context: str
    gen_kwargs: dict
    visuals: list
    task: str | None = None
    doc_id: Any = None


@dataclass
class LoglikelihoodRequest:
    """An lmms-eval `loglikelihood` request: continuation scored after the context (with visuals)."""

    context: str
    continuation: str
    visuals: list
    task: str | None = None
    doc_id: Any = None


def _doc(task_dict: dict, task: str, split: str, doc_id: Any):
    try:
        return task_dict[task][split][doc_id]
    except (KeyError, IndexError, TypeError) as exc:
        raise PluginError(f"{describe_request(task, doc_id)}: no document {doc_id!r} in split {split!r} of the "
                          f"task's data ({type(exc).__name__}: {exc})") from exc


def _visuals_of(doc_to_visual: Callable | None, doc) -> list:
    if doc_to_visual is None:
        return []
    visuals = doc_to_visual(doc)
    if visuals is None:
        return []
    return list(visuals) if isinstance(visuals, (list, tuple)) else [visuals]


def resolve_generate_args(args: tuple, task_dict: dict) -> GenerateRequest:
    """An `Instance.args` of a `generate_until` request, (context, gen_kwargs, doc_to_visual, doc_id, task,
    split), with the document's visuals looked up in `task_dict[task][split]`."""
    if len(args) != 6:
        raise PluginError(f"generate_until request with {len(args)} arguments; --model {MODEL_NAME} expects "
                          "(context, generation_kwargs, doc_to_visual, doc_id, task, split)")
    context, gen_kwargs, doc_to_visual, doc_id, task, split = args
    visuals = _visuals_of(doc_to_visual, _doc(task_dict, task, split, doc_id)) if doc_to_visual else []
    return GenerateRequest(context, dict(gen_kwargs or {}), visuals, task, doc_id)


def resolve_loglikelihood_args(args: tuple, task_dict: dict) -> LoglikelihoodRequest:
    """An `Instance.args` of a `loglikelihood` request: (context, continuation or doc_to_target, doc_to_visual,
    doc_id, task, split), or (context, continuation) for the unconditional scores of `acc_mutual_info`."""
    if len(args) == 2:
        return LoglikelihoodRequest(args[0], args[1], [])
    if len(args) != 6:
        raise PluginError(f"loglikelihood request with {len(args)} arguments; --model {MODEL_NAME} expects "
                          "(context, continuation, doc_to_visual, doc_id, task, split)")
    context, continuation, doc_to_visual, doc_id, task, split = args
    doc = _doc(task_dict, task, split, doc_id)
    if callable(continuation):
        continuation = continuation(doc)
    return LoglikelihoodRequest(context, str(continuation), _visuals_of(doc_to_visual, doc), task, doc_id)


# ---------------------------------------------------------------------------------------------- the backend


def default_device() -> str:
    """cuda:LOCAL_RANK under a multi-process launcher, cuda on a GPU machine, else cpu."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    local = os.environ.get("LOCAL_RANK")
    return f"cuda:{int(local)}" if local is not None else "cuda"


@dataclass
class GenerationResult:
    """One generate_until result: what lmms-eval gets (`answer`), the raw output and how the answer was read."""

    answer: str
    output: str
    method: str
    prompt: str


class Backend:
    """The model, processor and request handling behind the lmms-eval class (no lmms-eval import here)."""

    def __init__(self, settings: PluginSettings, model=None, processor=None):
        import torch

        from videoktr.models.factory import load_model, load_processor, suppressed_token_ids

        self.settings = settings
        self.device = settings.device or default_device()
        if model is None:
            model = load_model(settings.pretrained, dtype=settings.dtype, device=self.device,
                               rope_positions=settings.rope_positions).eval()
        if processor is None:
            processor = load_processor(settings.pretrained, min_pixels=settings.min_pixels,
                                       max_pixels=settings.max_pixels)
        self.model, self.processor = model, processor
        self.suppress = suppressed_token_ids(processor.tokenizer)
        torch.manual_seed(settings.seed)

    # ------------------------------------------------------------------ generate_until

    def generate(self, requests: list[GenerateRequest], progress: Callable[[int], None] | None = None
                 ) -> list[GenerationResult]:
        """Results in request order. Requests with the same generation options are batched together,
        `batch_size` at a time; every request's media is read before its batch runs."""
        results: list[GenerationResult | None] = [None] * len(requests)
        groups: dict[GenerationOptions, list[int]] = {}
        for i, req in enumerate(requests):
            opts = generation_options(req.gen_kwargs, self.settings, describe_request(req.task, req.doc_id))
            groups.setdefault(opts, []).append(i)
        for opts, indices in groups.items():
            for start in range(0, len(indices), self.settings.batch_size):
                chunk = indices[start:start + self.settings.batch_size]
                for i, res in zip(chunk, self._generate_chunk([requests[i] for i in chunk], opts)):
                    results[i] = res
                if progress is not None:
                    progress(len(chunk))
        self._record(requests, results)
        return results  # type: ignore[return-value]

    def _generate_chunk(self, chunk: list[GenerateRequest], opts: GenerationOptions) -> list[GenerationResult]:
        prompted = [build_prompt(r.context, self.settings, r.task, r.doc_id) for r in chunk]
        media = [load_visuals(r.visuals, self.settings, describe_request(r.task, r.doc_id)) for r in chunk]
        outputs = generate_texts(self.model, self.processor, self.suppress, [p.prompt for p in prompted], media,
                                 opts)
        results = []
        for p, out in zip(prompted, outputs):
            answer, method = final_answer(out, p.item, self.settings.answer)
            results.append(GenerationResult(answer, out, method, p.prompt))
        return results

    def _record(self, requests: list[GenerateRequest], results: list) -> None:
        """Append every request's prompt, raw output and returned answer to `raw_output_file` (if set)."""
        if not self.settings.raw_output_file:
            return
        path = Path(self.settings.raw_output_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            for req, res in zip(requests, results):
                row = {"task": req.task, "doc_id": req.doc_id, "prompt": res.prompt, "output": res.output,
                       "answer": res.answer, "method": res.method}
                f.write(json.dumps(row, default=str) + "\n")

    # ------------------------------------------------------------------ loglikelihood

    def loglikelihood(self, requests: list[LoglikelihoodRequest],
                      progress: Callable[[int], None] | None = None) -> list[tuple[float, bool]]:
        """(sum of the continuation's token log-probabilities, whether greedy decoding gives exactly it) per
        request. Requests sharing a context and document (the choices of one question) share one encoding."""
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault((req.context, req.task, str(req.doc_id), len(req.visuals) > 0), []).append(i)
        for indices in groups.values():
            first = requests[indices[0]]
            where = describe_request(first.task, first.doc_id)
            media = load_visuals(first.visuals, self.settings, where)
            prompt = first.context.replace("<image>", "")
            inputs = encode(self.processor, [prompt], [media], self.model.device)
            for i in indices:
                out[i] = continuation_logprob(self.model, self.processor.tokenizer, inputs,
                                              requests[i].continuation, where)
            if progress is not None:
                progress(len(indices))
        return out  # type: ignore[return-value]


def as_lmms_eval_scores(scores: list[tuple[float, bool]]) -> list[tuple[float, bool]]:
    """(log-probability, greedy) pairs in lmms-eval's convention: (negative log-likelihood, greedy). lmms-eval
    0.7.3 picks a multiple-choice answer by the *smallest* value `loglikelihood` returns (`np.argmin`, because its
    own models return a loss there), so a log-probability would select the least likely option."""
    return [(-logprob, greedy) for logprob, greedy in scores]


def continuation_logprob(model, tokenizer, inputs, continuation: str, where: str = "lmms-eval request"
                         ) -> tuple[float, bool]:
    """Score `continuation` appended (as its own tokens) after the encoded prompt `inputs` (batch of one):
    (sum of log p(token | everything before), every token is the argmax)."""
    import torch

    cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    if not cont:
        raise PluginError(f"{where}: the continuation {continuation!r} has no tokens to score")
    ids = inputs["input_ids"]
    if ids.shape[0] != 1:
        raise PluginError(f"{where}: continuation_logprob scores one prompt at a time, got {ids.shape[0]}")
    n_prompt = ids.shape[1]
    cont_ids = torch.tensor([cont], dtype=ids.dtype, device=ids.device)
    full = dict(inputs)
    for key, value in inputs.items():
        if torch.is_tensor(value) and value.dim() == 2 and tuple(value.shape) == tuple(ids.shape):
            # per-token tensors: ids get the continuation, the attention mask ones, type ids (text) zeros
            fill = cont_ids if key == "input_ids" else (
                torch.ones_like(cont_ids, dtype=value.dtype) if key == "attention_mask"
                else torch.zeros_like(cont_ids, dtype=value.dtype))
            full[key] = torch.cat([value, fill], dim=1)
    with torch.no_grad():
        logits = model(**full).logits[0, n_prompt - 1:-1].float()
    logp = torch.log_softmax(logits, dim=-1)
    target = cont_ids[0]
    total = logp.gather(1, target[:, None]).sum().item()
    greedy = bool((logits.argmax(dim=-1) == target).all().item())
    return float(total), greedy


# -------------------------------------------------------------------------------------- lmms-eval glue


def manifest():
    """The entry point lmms-eval calls (group `lmms_eval.models`): the manifest naming our model class."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=f"{__name__}.{CLASS_NAME}")


_MODEL_CLASS = None


def model_class():
    """The lmms subclass (built once; importing this module does not import lmms-eval)."""
    global _MODEL_CLASS
    if _MODEL_CLASS is None:
        _MODEL_CLASS = _build_model_class()
    return _MODEL_CLASS


def __getattr__(name: str):
    if name == CLASS_NAME:
        return model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _build_model_class():
    try:
        from lmms_eval.api.model import lmms
    except ImportError as exc:
        raise ImportError(f"the {MODEL_NAME} lmms-eval model needs lmms-eval in the same environment "
                          "(pip install lmms-eval==0.7.3; see README, 'lmms-eval')") from exc

    class VideoKTR(lmms):
        """videoktr's frame sampling, fps metadata, prompts and answer extraction for any Qwen-VL checkpoint."""

        is_simple = True

        def __init__(self, **model_args):
            super().__init__()
            self.settings = PluginSettings.from_model_args(**model_args)
            self.backend = Backend(self.settings)

        @property
        def model(self):
            return self.backend.model

        @property
        def processor(self):
            return self.backend.processor

        @property
        def tokenizer(self):
            return self.backend.processor.tokenizer

        @property
        def device(self):
            return self.backend.model.device

        @property
        def batch_size(self):
            return self.settings.batch_size

        def _progress(self, total: int, desc: str):
            from tqdm import tqdm

            return tqdm(total=total, disable=self.rank != 0, desc=desc)

        def generate_until(self, requests) -> list[str]:
            resolved = [resolve_generate_args(r.args, self.task_dict) for r in requests]
            bar = self._progress(len(resolved), "videoktr generate")
            results = self.backend.generate(resolved, progress=bar.update)
            bar.close()
            for req, res in zip(resolved, results):
                self.cache_hook.add_partial("generate_until", (req.context, req.gen_kwargs), res.answer)
            return [res.answer for res in results]

        def loglikelihood(self, requests) -> list[tuple[float, bool]]:
            resolved = [resolve_loglikelihood_args(r.args, self.task_dict) for r in requests]
            bar = self._progress(len(resolved), "videoktr loglikelihood")
            scores = self.backend.loglikelihood(resolved, progress=bar.update)
            bar.close()
            pairs = as_lmms_eval_scores(scores)
            for req, pair in zip(resolved, pairs):
                self.cache_hook.add_partial("loglikelihood", (req.context, req.continuation), pair)
            return _survive_unwrap(pairs)

        def generate_until_multi_round(self, requests) -> list[str]:
            raise NotImplementedError(f"--model {MODEL_NAME} does not implement generate_until_multi_round "
                                      "(multi-round tasks); use a generate_until or multiple_choice task")

    def _survive_unwrap(scores):
        """The (log-probability, greedy) pairs in a form lmms-eval's evaluator keeps. lmms-eval 0.7.3 passes every
        response through `unwrap_generation_output`, which turns anything but a string or a GenerationResult into
        its text, so a plain pair reaches `multiple_choice` scoring as "(-1.2, False)" and fails there; its
        GenerationResult is unwrapped to its `text` field unchanged, so the pairs travel in that."""
        try:
            from lmms_eval.api.instance import GenerationResult, unwrap_generation_output
        except ImportError:  # an lmms-eval without the wrapper keeps the pairs as they are
            return scores
        if unwrap_generation_output((0.0, True))[0] == (0.0, True):
            return scores
        return [GenerationResult(text=pair) for pair in scores]

    VideoKTR.__module__ = __name__
    VideoKTR.__qualname__ = CLASS_NAME
    return VideoKTR
