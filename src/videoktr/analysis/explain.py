"""`videoktr explain`: one response to one video question, scored token by token the way the trainer scores its
rollouts, as a plain record (rendered to HTML by `analysis.page`, written as JSON by the CLI).

Pipeline (`explain`): decode the video with the evaluator's sampling (`data.video.read_video`: `fps` frames a
second, at most `frames`, an even count) and pass the frames with their fps metadata to the processor; build the
user turn as the evaluator does (`text.prompts`: the reasoning prompt, with "Options:" for a multiple-choice
question) or as the synthetic world trains (the bare question); generate a response (greedy, or sampled with
`temperature`/`seed`) or take the given one; then score it with `videoktr.attribution.attribute` (all three
signals, one batched forward) and select the key tokens with `select_key_tokens` (top `ratio` per signal, union),
exactly the calls the trainer makes. `check_inputs` validates the user's inputs (model directory, video, ratio,
response...) before any model is loaded, raising `ExplainInputError` naming the option or file.

Record schema (the JSON file and `page.render` use it; keys marked * may be absent or null, so that e.g. a
training-time rollout log can be rendered with the same page):
  schema        "videoktr.explain/1"
  kind          "explain" (this module) or another producer's name, e.g. "rollout"
  title*        short label of the record (the page's record selector)
  question      the question text as given; prompt*: the full user-turn text sent to the model
  options*      {label: text} of a multiple-choice question
  response      the response text (special tokens skipped)
  answer*       the answer read from the response (text.extract), answer_method* the rule that read it
  tokens        [T] decoded text of each response token (concatenated: the response with special tokens);
                token_ids [T] ints; special* [T] bools (end-of-turn and other special tokens)
  scores        {"visual", "temporal", "entropy": [T] float or null (null: undefined there, e.g. no video)}
  selected      {"visual", "temporal", "entropy", "union": [T] bool} (the key-token mask is "union")
  logp*         {"full", "visual", "temporal": [T] float or null}: log-probability of each token under the full,
                the visually perturbed and the temporally perturbed input (null where not computed)
  permutation*  [G] ints: the temporal perturbation, position g of the perturbed video shows group perm[g]
  groups*       [{"group", "frames": [frame indices], "start_s", "end_s"}] temporal groups of the video
  frames*       [{"index", "timestamp_s", "group", "mime", "image" (base64), "width", "height"}]
  stats*        selection statistics of core.selection_stats (update_ratio, ratio/<signal>, overlap, unique)
  settings      {"model", "video", the ExplainOptions fields ("ratio", "visual_strategy", "visual_fraction",
                 "temporal_strategy", "segment_groups", "temporal_samples", "distance", "signed", "temperature",
                 "top_p", "seed", "max_new_tokens", "frames", "fps", "max_pixels", "min_pixels", "answer_type",
                 "frame_side", "rope_positions"),
                 "signals", "selection_scope", "weighting", "score_temperature", "prompt_style", "generated",
                 "device", "dtype", "video_fps", "source_fps", "duration_s", "attribution_seconds", "seconds"}*
                (shown as a table; every key optional, a producer writes its own, e.g. a run's "method")
  extra*        {name: value} shown as a "Run details" table; without it the page shows the record's other
                top-level fields with short values there (a rollout's step, rank, row, reward, advantage...)
A `--run` record (`rollout_records`) is `analysis.rollouts.load_rollouts`' record with `frames` and `groups`
decoded from its video as the run sampled it (`frames_error` says why not, where not) and `media` the run's
sampling settings.
"""

from __future__ import annotations

import base64
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

SCHEMA = "videoktr.explain/1"
PROMPT_CHOICES = ("auto", "reasoning", "plain")


class ExplainInputError(ValueError):
    """A user error found before the model is loaded: the message names the option or file."""


@dataclass
class ExplainOptions:
    """Settings of one explanation (`videoktr explain` has one flag per field)."""

    ratio: float = 0.2  # r: share of the response's tokens kept per signal, in (0, 1] (paper: 0.2)
    visual_strategy: str = "zero"  # visual perturbation of the encoder outputs (models.perturb.VISUAL_STRATEGIES)
    visual_fraction: float = 0.5  # share of visual tokens zeroed by zero_fraction
    temporal_strategy: str = "shuffle"  # temporal perturbation of the temporal groups (TEMPORAL_STRATEGIES)
    segment_groups: int = 2  # temporal groups per segment for the segment strategy
    temporal_samples: int = 1  # temporal score = mean over this many permutation draws (the page shows the first)
    distance: str = "logprob"  # |Δ log p| (paper) or a full-distribution distance (core.DISTANCES)
    signed: bool = False  # official code's signed logp_full - logp_perturbed
    temperature: float = 0.0  # sampling temperature; 0 = greedy
    top_p: float = 1.0  # nucleus sampling threshold when sampling
    seed: int = 0  # seed of sampling and of the perturbation draws (shuffle order, zero_fraction, replace)
    max_new_tokens: int = 1024  # longest generated response in tokens
    frames: int = 16  # most frames per video (even), sampled at `fps`
    fps: float = 2.0  # frame sampling rate before the frame cap
    max_pixels: int = 256 * 28 * 28  # per-frame pixel budget
    min_pixels: int | None = None  # per-frame lower pixel bound (None: the processor's own)
    prompt: str = "auto"  # reasoning | plain | auto (plain for a model trained on the synthetic world)
    answer_type: str | None = None  # eval answer type of the question (default: mc with options, else open)
    device: str | None = None  # cuda if available, else cpu
    dtype: str | None = None  # float32 | bfloat16 | float16 | None (the checkpoint's own)
    frame_side: int = 320  # longest side of the frames embedded in the record, in pixels
    rope_positions: str | None = None  # 3D position scheme (models.positions): qwen | transformers | None (the
    # one the model directory records, else the one an earlier videoktr trained it under, else qwen)

    def attribution_options(self):
        from ..attribution import AttributionOptions

        return AttributionOptions(
            signals=("visual", "temporal", "entropy"), visual_strategy=self.visual_strategy,
            visual_fraction=self.visual_fraction, temporal_strategy=self.temporal_strategy,
            segment_groups=self.segment_groups, temporal_samples=self.temporal_samples, distance=self.distance,
            signed=self.signed, temperature=self.score_temperature)

    def selection_options(self):
        from ..attribution import SelectionOptions

        return SelectionOptions(ratio=self.ratio)

    @property
    def score_temperature(self) -> float:
        """Logits are divided by the sampling temperature when sampling (as the trainer scores its rollouts),
        by 1 for a greedy or given response."""
        return self.temperature if self.temperature > 0 else 1.0


def parse_options(texts: Sequence[str] | None) -> dict[str, str] | None:
    """Multiple-choice options from the command line: ["A. red", "B. blue"] keep their labels; unlabelled
    texts ["red", "blue"] are labelled A, B, ... in order."""
    from ..eval.benchmarks.base import LABELLED_OPTION, lettered_options

    if not texts:
        return None
    texts = [str(t) for t in texts]
    if any(not t.strip() for t in texts):
        raise ExplainInputError("--options: an option is empty")
    matches = [LABELLED_OPTION.match(t) for t in texts]
    if all(matches):
        labels = [m.group(1) for m in matches]
        if len(set(labels)) != len(labels):
            raise ExplainInputError(f"--options: a label appears twice in {labels}")
        return {m.group(1): m.group(2).strip() for m in matches}
    try:
        return lettered_options(texts)
    except ValueError as exc:
        raise ExplainInputError(f"--options: {exc}") from None


def check_inputs(model_dir, video, question: str, response: str | None, opts: ExplainOptions):
    """Validate everything that can be wrong with the user's inputs, before any model is loaded; decode the
    video (the evaluator's sampling) and return its Clip. Raises ExplainInputError naming the option/file."""
    from ..data.video import VideoDecodeError, read_video
    from ..text.prompts import ANSWER_SUFFIX

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ExplainInputError(f"--model: directory not found: {model_dir}")
    if not (model_dir / "config.json").is_file():
        raise ExplainInputError(f"--model: {model_dir} has no config.json (not a model directory)")
    if not question or not question.strip():
        raise ExplainInputError("--question: empty")
    if response is not None and not response.strip():
        raise ExplainInputError("--response: empty (leave it out to generate a response)")
    if not (0.0 < opts.ratio <= 1.0):
        raise ExplainInputError(f"--ratio must be in (0, 1], got {opts.ratio}")
    if opts.temperature < 0:
        raise ExplainInputError(f"--temperature must be >= 0 (0 = greedy), got {opts.temperature}")
    if not (0.0 < opts.top_p <= 1.0):
        raise ExplainInputError(f"--top-p must be in (0, 1], got {opts.top_p}")
    if opts.max_new_tokens < 1:
        raise ExplainInputError(f"--max-new-tokens must be >= 1, got {opts.max_new_tokens}")
    if opts.frames < 2 or opts.frames % 2:
        raise ExplainInputError(f"--frames must be an even number >= 2, got {opts.frames}")
    if not opts.fps > 0:
        raise ExplainInputError(f"--fps must be > 0, got {opts.fps}")
    if opts.max_pixels < 1 or (opts.min_pixels is not None and not 1 <= opts.min_pixels <= opts.max_pixels):
        raise ExplainInputError(f"--max-pixels/--min-pixels: need 1 <= min <= max, got {opts.min_pixels}, "
                                f"{opts.max_pixels}")
    if opts.prompt not in PROMPT_CHOICES:
        raise ExplainInputError(f"--prompt must be one of {PROMPT_CHOICES}, got {opts.prompt!r}")
    if opts.answer_type is not None and opts.answer_type not in ANSWER_SUFFIX:
        raise ExplainInputError(f"--answer-type must be one of {tuple(ANSWER_SUFFIX)}, got {opts.answer_type!r}")
    if opts.temporal_samples < 1:
        raise ExplainInputError(f"--temporal-samples must be >= 1, got {opts.temporal_samples}")
    try:
        opts.attribution_options().validate()
    except ValueError as exc:
        raise ExplainInputError(f"attribution options: {exc}") from None
    if opts.visual_strategy == "replace":
        raise ExplainInputError("--visual-strategy replace puts another clip's features in place of the video's, "
                                "and one explanation has one clip: use zero or zero_fraction")
    if opts.visual_strategy == "zero_fraction" and not 0.0 < opts.visual_fraction <= 1.0:
        raise ExplainInputError(f"--visual-fraction must be in (0, 1], got {opts.visual_fraction}")
    if opts.temporal_strategy == "segment" and opts.segment_groups < 2:
        raise ExplainInputError(f"--segment-groups must be >= 2, got {opts.segment_groups}")
    video = Path(video)
    try:
        return read_video(video, target_fps=opts.fps, min_frames=min(4, opts.frames), max_frames=opts.frames)
    except (VideoDecodeError, ValueError) as exc:
        raise ExplainInputError(f"--video: {exc}") from None


def is_synthetic_world_model(model_dir) -> bool:
    """Whether the directory holds a model trained on the synthetic world's bare questions (models.info: its
    videoktr.json, or a warm start, or a run whose model card names the world): prompted plain, not reasoning."""
    from ..models.info import trained_prompt

    return trained_prompt(model_dir) == "plain"


def build_item(question: str, options: dict[str, str] | None, answer_type: str | None):
    """An eval Item for the question (for the prompt and the answer extraction)."""
    from ..eval.benchmarks.base import ANSWER_TYPES, Item

    kind = answer_type or ("mc" if options else "open")
    # training-only answer kinds (ocr, free_form) have a prompt suffix but extract like open answers
    return Item(id="explain", benchmark="explain", question=question, answer="",
                answer_type=kind if kind in ANSWER_TYPES else "open", options=options), kind


def prompt_text(question: str, options: dict[str, str] | None, style: str, answer_kind: str) -> str:
    """The user-turn text: "reasoning" = the evaluator's reasoning prompt (`text.prompts.reasoning_text`),
    "plain" = the question (and options) alone, as the synthetic world trains."""
    from ..text.prompts import format_question, plain_text, reasoning_text

    block = format_question(question, options, ": " if answer_kind == "caption_matching" else ". ")  # as eval's
    return reasoning_text(block, answer_kind) if style == "reasoning" else plain_text(block)


def token_texts(tokenizer, ids: Sequence[int]) -> list[str]:
    """The text each token adds to the decoded response (special tokens kept), so that the pieces concatenate to
    the decoded text. A token that ends inside a multi-byte character adds nothing; the next one adds the
    character."""
    out, prev = [], ""
    for i in range(len(ids)):
        text = tokenizer.decode(list(ids[: i + 1]), skip_special_tokens=False,
                                clean_up_tokenization_spaces=False)
        if text.endswith("\ufffd") and i + 1 < len(ids):
            out.append("")
            continue
        if text.startswith(prev):
            out.append(text[len(prev):])
        else:  # the tokenizer rewrote earlier text: fall back to the token alone
            out.append(tokenizer.decode([int(ids[i])], skip_special_tokens=False, clean_up_tokenization_spaces=False))
        prev = text
    return out


def encode_frames(frames, side: int = 320) -> list[dict]:
    """uint8 frames [F, H, W, 3] -> [{"mime", "image" (base64), "width", "height"}], shrunk to `side` pixels on
    the longest side; PNG for small frames (exact colours), JPEG for larger ones."""
    from PIL import Image

    out = []
    for frame in frames:
        img = Image.fromarray(frame)
        if max(img.size) > side:
            img.thumbnail((side, side))
        buf = io.BytesIO()
        small = img.size[0] * img.size[1] <= 160 * 160
        img.save(buf, format="PNG" if small else "JPEG", **({} if small else {"quality": 85}))
        out.append({"mime": "image/png" if small else "image/jpeg",
                    "image": base64.b64encode(buf.getvalue()).decode("ascii"),
                    "width": img.size[0], "height": img.size[1]})
    return out


def clip_frames(clip, temporal_patch_size: int = 2, side: int = 320) -> tuple[list[dict], list[dict]]:
    """The record's "frames" (each sampled frame: index, timestamp, temporal group, embedded image) and "groups"
    (frames, start and end time of each temporal group of `temporal_patch_size` frames) of a decoded clip."""
    timestamps = [float(i) / clip.source_fps if clip.source_fps > 0 else i / clip.fps for i in clip.indices]
    n = clip.num_frames
    groups = []
    for g in range(n // temporal_patch_size):
        members = list(range(g * temporal_patch_size, min((g + 1) * temporal_patch_size, n)))
        end = timestamps[members[-1]] + 1.0 / clip.fps
        groups.append({"group": g, "frames": members, "start_s": timestamps[members[0]], "end_s": end})
    images = encode_frames(clip.frames, side)
    frames = [{"index": i, "timestamp_s": timestamps[i], "group": i // temporal_patch_size, **images[i]}
              for i in range(n)]
    return frames, groups


def _floats(t, valid=None) -> list[float | None]:
    values = t.float().cpu().tolist()
    if valid is None:
        return [float(v) for v in values]
    return [float(v) if ok else None for v, ok in zip(values, valid.cpu().tolist())]


def explain(model_dir, video, question: str, response: str | None = None,
            options: dict[str, str] | None = None, opts: ExplainOptions | None = None, model=None,
            processor=None, clip=None) -> dict:
    """Generate (or take) a response to `question` about `video` and attribute it; returns the record (see the
    module docstring). model/processor: already loaded ones (else loaded from `model_dir` with the evaluator's
    loader and pixel budget); clip: the already decoded video (else `check_inputs` decodes it)."""
    import torch

    from ..attribution import attribute, select_key_tokens
    from ..text.extract import extract
    from ..models.factory import load_model, load_processor, suppressed_token_ids
    from ..models.positions import loaded_scheme

    opts = opts or ExplainOptions()
    start = time.perf_counter()
    if clip is None:
        clip = check_inputs(model_dir, video, question, response, opts)
    device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if processor is None:
        processor = load_processor(model_dir, min_pixels=opts.min_pixels, max_pixels=opts.max_pixels)
    if model is None:
        model = load_model(model_dir, dtype=opts.dtype, device=device, rope_positions=opts.rope_positions)
    model.eval()
    device = next(model.parameters()).device
    tok = processor.tokenizer

    style = opts.prompt
    if style == "auto":
        from ..models.info import default_prompt

        style = default_prompt(model_dir)  # the model's videoktr.json: what `videoktr eval` defaults to as well
    item, answer_kind = build_item(question, options, opts.answer_type)
    user_text = prompt_text(question, options, style, answer_kind)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": user_text}]}]
    chat = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    enc = processor(text=[chat], videos=[clip.frames], video_metadata=[clip.metadata()], do_sample_frames=False,
                    return_tensors="pt").to(device)

    eos = tok.convert_tokens_to_ids("<|im_end|>")
    eos = eos if isinstance(eos, int) and eos != tok.unk_token_id else tok.eos_token_id
    if response is None:
        gen = dict(max_new_tokens=opts.max_new_tokens, suppress_tokens=suppressed_token_ids(tok) or None,
                   pad_token_id=tok.pad_token_id, eos_token_id=eos)
        if opts.temperature > 0:
            gen.update(do_sample=True, temperature=opts.temperature, top_p=opts.top_p, top_k=0)
            torch.manual_seed(opts.seed)
        else:
            gen.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.no_grad():
            out = model.generate(**enc, **gen)
        ids = out[0, enc["input_ids"].shape[1]:].tolist()
        if eos in ids:  # keep the end-of-turn token (the trainer scores it too), drop the padding after it
            ids = ids[: ids.index(eos) + 1]
        if not ids:
            raise RuntimeError("the model generated no token")
    else:  # teacher-forced: the response and the end-of-turn token, as a training row
        ids = tok(response, add_special_tokens=False)["input_ids"] + [eos]
    completion = torch.tensor([ids], dtype=torch.long, device=device)
    cmask = torch.ones_like(completion)

    aopts = opts.attribution_options()
    generator = torch.Generator().manual_seed(opts.seed)
    video_kwargs = dict(pixel_values_videos=enc["pixel_values_videos"], video_grid_thw=enc["video_grid_thw"],
                        second_per_grid_ts=enc.get("second_per_grid_ts"))
    att = attribute(model, enc["input_ids"], enc["attention_mask"], completion, cmask, options=aopts,
                    generator=generator, keep_perturbed_logp=True, **video_kwargs)
    perturbed = att.perturbed_logp
    weights, masks, stats = select_key_tokens(att, opts.selection_options())

    text = tok.decode(ids, skip_special_tokens=True)
    special_ids = set(tok.all_special_ids)
    extraction = extract(text, item)
    patch = int(getattr(processor.video_processor, "temporal_patch_size", 2) or 2)
    frames, groups = clip_frames(clip, patch, opts.frame_side)
    permutation = att.permutations[0].tolist() if att.permutations else None

    valid = att.valid
    settings = {
        "model": str(Path(model_dir).resolve()) if model_dir is not None else None,
        "video": str(Path(video).resolve()) if video is not None else clip.path,
        **{k: v for k, v in asdict(opts).items() if k not in ("device", "dtype", "prompt")},
        "rope_positions": loaded_scheme(model, opts.rope_positions),  # what the model computed
    }
    settings.update({
        "signals": list(aopts.signals), "selection_scope": "response", "weighting": "binary",
        "score_temperature": aopts.temperature, "prompt_style": style, "answer_type": answer_kind,
        "generated": response is None, "device": str(device),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "video_fps": clip.fps, "source_fps": clip.source_fps, "duration_s": clip.duration,
        "attribution_seconds": att.seconds, "seconds": time.perf_counter() - start,
    })
    return {
        "schema": SCHEMA,
        "kind": "explain",
        "title": question if len(question) <= 80 else question[:77] + "...",
        "question": question,
        "prompt": user_text,
        "options": options,
        "response": text,
        "answer": extraction.value,
        "answer_method": extraction.method,
        "tokens": token_texts(tok, ids),
        "token_ids": [int(i) for i in ids],
        "special": [int(i) in special_ids for i in ids],
        "scores": {s: _floats(att.scores[s][0], valid[s][0]) for s in ("visual", "temporal", "entropy")},
        "selected": {**{s: [bool(x) for x in masks[s][0].cpu().tolist()] for s in ("visual", "temporal", "entropy")},
                     "union": [bool(x > 0) for x in weights[0].cpu().tolist()]},
        "logp": {"full": _floats(att.logp[0]),
                 **{s: _floats(perturbed[s][0], valid[s][0]) if s in perturbed else [None] * len(ids)
                    for s in ("visual", "temporal")}},
        "permutation": permutation,
        "groups": groups,
        "frames": frames,
        "stats": {k: float(v) for k, v in stats.items()},
        "settings": settings,
    }


def write_outputs(records: list[dict], output_dir, name: str = "explain") -> dict[str, Path]:
    """Write <name>.json (one record: the record; several: a list) and <name>.html into `output_dir`."""
    from .page import render

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / f"{name}.json", out / f"{name}.html"
    payload = records[0] if len(records) == 1 else records
    json_path.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    html_path.write_text(render(records), encoding="utf-8")
    return {"json": json_path, "html": html_path}


# ------------------------------------------------------------------------------------------------- command line


def add_arguments(parser) -> None:
    """The options of `videoktr explain` (defaults: ExplainOptions)."""
    from dataclasses import fields

    from ..text.prompts import ANSWER_SUFFIX
    from ..train.config import KTRConfig

    # the training config's choices (the same strategies and distances; importing them from core would load torch
    # whenever the command line is parsed)
    choices = {f.name: f.metadata.get("choices") for f in fields(KTRConfig)}
    d = ExplainOptions()
    parser.add_argument("--model", metavar="DIR", help="model directory (Hugging Face format: a run's final/, a "
                        "checkpoint, the warm-started model, or a downloaded Qwen2.5-VL checkpoint)")
    parser.add_argument("--video", metavar="FILE", help="video file to ask about (any format PyAV decodes)")
    parser.add_argument("--question", metavar="TEXT", help="the question about the video")
    parser.add_argument("--response", metavar="TEXT", default=None,
                        help="score this response (teacher-forced, + the end-of-turn token) instead of generating one")
    parser.add_argument("--options", nargs="+", metavar="TEXT", default=None,
                        help="multiple-choice options, e.g. --options 'A. red' 'B. blue' (unlabelled texts are "
                             "labelled A, B, ...); they follow the question under 'Options:', as in evaluation")
    parser.add_argument("--answer-type", choices=tuple(ANSWER_SUFFIX), default=None,
                        help="answer type of the question: picks the reasoning prompt's last sentence and how the "
                             "answer is read (default: mc with --options, else open)")
    parser.add_argument("--prompt", choices=PROMPT_CHOICES, default=d.prompt,
                        help="reasoning: the evaluator's reasoning prompt (<think>/<answer>); plain: the bare "
                             "question, as the synthetic world trains; auto (default): plain for a model trained "
                             "on the synthetic world (warmstart.json or a model card naming it), else reasoning")
    parser.add_argument("--output-dir", metavar="DIR", help="writes explain.html (self-contained page) and "
                        "explain.json (the same data)")
    parser.add_argument("--run", metavar="RUN_DIR", default=None,
                        help="instead of --model/--video/--question: show the responses a training run logged "
                             "(RUN_DIR/rollouts/) with the scores and selections the trainer computed; loads no model")
    parser.add_argument("--step", type=int, default=None,
                        help="with --run: the logged optimizer step to show (default: the last one logged)")
    parser.add_argument("--ratio", type=float, default=d.ratio,
                        help="r: share of the response's tokens selected per signal, in (0, 1] (default %(default)s)")
    parser.add_argument("--visual-strategy", choices=choices["visual_strategy"], default=d.visual_strategy,
                        help="visual perturbation of the video's encoder outputs (default %(default)s: all zero; "
                             "replace needs another clip, so it is refused here)")
    parser.add_argument("--visual-fraction", type=float, default=d.visual_fraction,
                        help="share of visual tokens zeroed by zero_fraction (default %(default)s)")
    parser.add_argument("--temporal-strategy", choices=choices["temporal_strategy"], default=d.temporal_strategy,
                        help="temporal perturbation of the temporal groups (default %(default)s: a random "
                             "non-identity order, drawn with --seed)")
    parser.add_argument("--segment-groups", type=int, default=d.segment_groups,
                        help="temporal groups per segment for the segment strategy (default %(default)s)")
    parser.add_argument("--temporal-samples", type=int, default=d.temporal_samples,
                        help="average the temporal score over this many permutation draws (default %(default)s; "
                             "the page shows the first draw's order)")
    parser.add_argument("--distance", choices=choices["distance"], default=d.distance,
                        help="score: |Δ log p| of the token (paper, default) or a distance between the full and "
                             "perturbed next-token distributions")
    parser.add_argument("--signed", action="store_true",
                        help="signed score log p(full) - log p(perturbed), as the official code (logprob only)")
    parser.add_argument("--temperature", type=float, default=d.temperature,
                        help="sampling temperature; 0 = greedy (default). Scores use the same temperature "
                             "(1 for greedy or --response)")
    parser.add_argument("--top-p", type=float, default=d.top_p, help="nucleus sampling threshold (default %(default)s)")
    parser.add_argument("--seed", type=int, default=d.seed,
                        help="seed of sampling and of the perturbation draws (default %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens,
                        help="longest generated response in tokens (default %(default)s)")
    parser.add_argument("--frames", type=int, default=d.frames,
                        help="most frames sampled from the video, even (default %(default)s, as evaluation)")
    parser.add_argument("--fps", type=float, default=d.fps,
                        help="frame sampling rate before the frame cap (default %(default)s)")
    parser.add_argument("--max-pixels", type=int, default=d.max_pixels,
                        help="per-frame pixel budget (default 256*28*28 = %(default)s, as evaluation)")
    parser.add_argument("--min-pixels", type=int, default=None,
                        help="per-frame lower pixel bound (default: the processor's own)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                        help="weights' dtype (default: the checkpoint's own)")
    parser.add_argument("--rope-positions", choices=("qwen", "transformers"), default=d.rope_positions,
                        help="Qwen2-VL/2.5-VL 3D positions of the text after a video: qwen (the released models' "
                             "scheme) or transformers (5.23's). Default: the scheme the model directory records, "
                             "else the one an earlier videoktr trained it under, else qwen; the choice is printed")


def options_from_args(args) -> ExplainOptions:
    return ExplainOptions(
        ratio=args.ratio, visual_strategy=args.visual_strategy, visual_fraction=args.visual_fraction,
        temporal_strategy=args.temporal_strategy, segment_groups=args.segment_groups,
        temporal_samples=args.temporal_samples, distance=args.distance,
        signed=args.signed, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
        max_new_tokens=args.max_new_tokens, frames=args.frames, fps=args.fps, max_pixels=args.max_pixels,
        min_pixels=args.min_pixels, prompt=args.prompt, answer_type=args.answer_type, device=args.device,
        dtype=args.dtype, rope_positions=args.rope_positions)


def top_tokens(record: dict, signal: str, k: int = 6) -> str:
    """'tok(score) tok(score) ...': the record's k highest-scoring tokens under `signal`, in score order."""
    scores = record["scores"][signal]
    ranked = sorted((i for i, s in enumerate(scores) if s is not None), key=lambda i: -scores[i])[:k]
    return " ".join(f"{record['tokens'][i].strip() or repr(record['tokens'][i])}({scores[i]:.2f})" for i in ranked)


def _resolve_media(path: str, run_dir: Path) -> Path | None:
    for candidate in (Path(path), run_dir / path):
        if candidate.is_file():
            return candidate
    return None


def rollout_records(run_dir, step: int | None = None, side: int = 320) -> tuple[int, list[dict]]:
    """(step, records) of a run's rollout log (`analysis.rollouts.load_rollouts`; default: the last logged step),
    each with the frames of its video decoded as the run sampled them (`frames`, `groups`), for `page.render`.
    A video that cannot be read leaves the record without frames and says why in `frames_error`."""
    from ..data.video import VideoDecodeError, read_video
    from .rollouts import load_rollouts, rollout_steps

    run_dir = Path(run_dir)
    if step is None:
        steps = rollout_steps(run_dir) if run_dir.is_dir() else []
        step = steps[-1] if steps else None
    records = load_rollouts(run_dir, step)  # NoRollouts (a FileNotFoundError) names the directory
    step = step if step is not None else records[-1]["step"]
    decoded: dict = {}
    for record in records:
        media = record.get("frames") if isinstance(record.get("frames"), dict) else {}
        record.setdefault("kind", "rollout")
        if media:
            record["media"] = {k: v for k, v in media.items() if k != "images"}
        record["frames"], record["groups"] = None, None
        videos = media.get("videos") or record.get("videos") or []
        if not videos:
            continue
        path = _resolve_media(str(videos[0]), run_dir)
        if path is None:
            record["frames_error"] = f"video not found: {videos[0]}"
            continue
        key = (str(path), media.get("fps"), media.get("min_frames"), media.get("max_frames"))
        if key not in decoded:
            try:
                clip = read_video(path, target_fps=float(media.get("fps") or 2.0),
                                  min_frames=int(media.get("min_frames") or 4),
                                  max_frames=int(media.get("max_frames") or 16),
                                  backend=media.get("backend") or "pyav")
                patch = int((record.get("settings") or {}).get("temporal_patch_size") or 2)
                decoded[key] = clip_frames(clip, patch, side)
            except (VideoDecodeError, ValueError) as exc:
                decoded[key] = str(exc)
        if isinstance(decoded[key], str):
            record["frames_error"] = decoded[key]
        else:
            record["frames"], record["groups"] = decoded[key]
    return step, records


def _run_rollouts(args) -> int:
    import sys

    from .rollouts import NoRollouts

    given = [flag for flag, value in (("--model", args.model), ("--video", args.video),
                                      ("--question", args.question), ("--response", args.response)) if value]
    if given:
        print(f"error: --run shows the responses a run logged: leave out {', '.join(given)}", file=sys.stderr)
        return 2
    if not args.output_dir:
        print("error: videoktr explain needs --output-dir", file=sys.stderr)
        return 2
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        print(f"error: --output-dir: {out} is a file", file=sys.stderr)
        return 2
    try:
        step, records = rollout_records(args.run, args.step)
    except NoRollouts as exc:
        print(f"error: --run: {exc}", file=sys.stderr)
        return 2
    paths = write_outputs(records, out)
    with_frames = sum(1 for r in records if r.get("frames"))
    print(f"step {step}: {len(records)} logged responses ({with_frames} with frames)")
    print(f"wrote {paths['html']} and {paths['json']}")
    return 0


def run_cli(args) -> int:
    """`videoktr explain`: exit 0 with the page written, 2 for a user error (named before any model load)."""
    import sys

    if args.run:
        return _run_rollouts(args)
    if args.step is not None:
        print("error: --step goes with --run", file=sys.stderr)
        return 2
    missing = [f"--{name.replace('_', '-')}" for name in ("model", "video", "question", "output_dir")
               if getattr(args, name) in (None, "")]
    if missing:
        print(f"error: videoktr explain needs {', '.join(missing)}", file=sys.stderr)
        return 2
    opts = options_from_args(args)
    try:
        options = parse_options(args.options)
        out = Path(args.output_dir)
        if out.exists() and not out.is_dir():
            raise ExplainInputError(f"--output-dir: {out} is a file")
        clip = check_inputs(args.model, args.video, args.question, args.response, opts)
    except ExplainInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    record = explain(args.model, args.video, args.question, args.response, options, opts, clip=clip)
    paths = write_outputs([record], out)
    n, union = len(record["tokens"]), sum(record["selected"]["union"])
    print(f"response ({n} tokens, {union} key tokens): {record['response']}")
    print(f"answer: {record['answer']}")
    for signal in ("visual", "temporal", "entropy"):
        print(f"top {signal:8s} {top_tokens(record, signal)}")
    if record["permutation"] is not None:
        print(f"temporal permutation ({opts.temporal_strategy}): {record['permutation']}")
    print(f"wrote {paths['html']} and {paths['json']} ({record['settings']['seconds']:.1f} s)")
    return 0
