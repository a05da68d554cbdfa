"""`videoktr eval`: evaluate a model (or rescore saved outputs) on one or more benchmarks.

    videoktr eval --benchmark NAME [--benchmark NAME ...] [--task TASK] --data-root DIR [--questions FILE]
                  (--model PATH | --predictions FILE) --output-dir DIR [generation options]

Per benchmark, <output-dir>/<benchmark>/ receives predictions.jsonl (model runs; appended as produced, so a
killed run resumes), run.json (generation settings), scored.jsonl (id, output, extracted, correct, ...),
summary.json (accuracy in percent, overall and per category, counts, unparsed count) and summary.md.
<output-dir>/summary.md and summary.json give one line per benchmark. Items whose media cannot be read are
recorded in failed.jsonl and counted as failed (--on-media-error skip, the default), or stop the run with exit
code 2 (--on-media-error stop); a resumed run does not retry them unless --retry-failed.

The main CLI calls `add_arguments(parser)` and `run(args)`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import runner as R

EXIT_OK, EXIT_ERROR = 0, 2


class UsageError(ValueError):
    pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .benchmarks import BENCHMARKS
    from ..text.prompts import PROMPT_STYLES
    from .report import PAPER_TABLE1, PAPER_TABLE3

    names = ", ".join(BENCHMARKS)
    parser.add_argument("--benchmark", action="append", required=True, metavar="NAME",
                        help=f"benchmark to evaluate; repeat for several. One of: {names}")
    parser.add_argument("--task", action="append", default=None, metavar="TASK",
                        help="sub-task to evaluate (repeatable): tempcompass multi-choice (default) | yes_no | "
                             "caption_matching | all; mmvu mc (default) | open | all; videommmu perception | "
                             "comprehension | adaptation (default all); videomme short | medium | long (default "
                             "all); chartqa human | augmented. Use BENCH=TASK to aim at one benchmark when several "
                             "are given")
    parser.add_argument("--data-root", type=Path, default=None, metavar="DIR",
                        help="folder holding the question files (official repository layout or flat) and the "
                             "videos/images; media paths are resolved under it")
    parser.add_argument("--questions", action="append", default=None, metavar="FILE",
                        help="question file to use instead of discovery under --data-root (e.g. VideoMME's "
                             "official JSON or the Hugging Face parquet); with several benchmarks use "
                             "BENCH=FILE")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, metavar="PATH",
                        help="local model directory to generate with (Hugging Face format)")
    source.add_argument("--predictions", type=Path, metavar="FILE",
                        help="rescore saved outputs without a model: JSONL of {id, output} (optional task, "
                             "benchmark), or VideoMME's official answer JSON, Video-R1's results JSON, or "
                             "TempCompass's prediction JSON")
    parser.add_argument("--output-dir", type=Path, required=True, metavar="DIR",
                        help="where results go: one folder per benchmark plus an overview")
    parser.add_argument("--prompt", choices=PROMPT_STYLES, default=None,
                        help="prompt: reasoning = the paper's reasoning prompt with <think>/<answer> tags; "
                             "official = the benchmark's own direct-answer format (our paraphrase); plain = the "
                             "question (and options) alone, as the synthetic world trains. Default: the prompt "
                             "the --model was trained with when its videoktr.json records it (plain for a model "
                             "trained on the synthetic world, as `videoktr explain` prompts it), else reasoning")
    parser.add_argument("--frames", type=int, default=R.DEFAULT_FRAMES,
                        help="maximum frames per video (the paper reports 16, 32 and 64; default %(default)s)")
    parser.add_argument("--fps", type=float, default=R.DEFAULT_FPS,
                        help="frame sampling rate before the frame cap (default %(default)s, as Video-R1)")
    parser.add_argument("--video-backend", choices=("pyav", "decord"), default="pyav",
                        help="video decoder (decord is optional: pip install decord); both sample the same frames")
    parser.add_argument("--max-pixels", type=int, default=R.DEFAULT_MAX_PIXELS,
                        help="pixel budget per frame/image (default 256*28*28 = %(default)s)")
    parser.add_argument("--min-pixels", type=int, default=None,
                        help="minimum pixels per frame/image (default: the processor's own)")
    parser.add_argument("--max-new-tokens", type=int, default=R.DEFAULT_MAX_NEW_TOKENS,
                        help="generation budget; reasoning needs the full default (%(default)s)")
    parser.add_argument("--temperature", type=float, default=R.DEFAULT_TEMPERATURE,
                        help="sampling temperature; 0 = greedy (default %(default)s, as Video-R1's evaluation)")
    parser.add_argument("--top-p", type=float, default=R.DEFAULT_TOP_P,
                        help="nucleus sampling threshold (default %(default)s, as Video-R1's evaluation)")
    parser.add_argument("--batch-size", type=int, default=R.DEFAULT_BATCH_SIZE,
                        help="items per generate call (default %(default)s)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"],
                        help="model weights dtype (default: the checkpoint's own)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for sampling (default %(default)s)")
    parser.add_argument("--rope-positions", choices=("qwen", "transformers"), default=None,
                        help="Qwen2-VL/2.5-VL 3D positions of the text after a video: qwen (the released models' "
                             "scheme, vLLM's) or transformers (5.23's). Default: the scheme the model directory "
                             "records (videoktr writes it into config.json), else the one an earlier videoktr "
                             "trained it under, else qwen; the choice is printed. They differ for clips longer "
                             "than the grid side")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="evaluate only the first N items of each benchmark (smoke tests)")
    parser.add_argument("--on-media-error", choices=R.MEDIA_ERROR_MODES, default="skip",
                        help="with --model, an item whose video or image cannot be read (or is of the other kind "
                             "than the item declares): skip records it in failed.jsonl, counts it as failed (and "
                             "wrong) in the summary and goes on (default); stop exits with an error naming the "
                             "item and the file")
    parser.add_argument("--retry-failed", action="store_true",
                        help="with --model, retry the items an earlier run of this --output-dir recorded as "
                             "failed (e.g. after fixing their files); by default a resumed run keeps them failed")
    parser.add_argument("--allow-missing", action="store_true",
                        help="with --predictions: score items that have no prediction as wrong instead of "
                             "stopping")
    parser.add_argument("--compare-paper", action="store_true",
                        help="add the paper's number (Table 1 at --frames, Table 3 for images) beside ours")
    models = sorted({m for m, _ in PAPER_TABLE1} | set(PAPER_TABLE3))
    parser.add_argument("--paper-model", default="Video-KTR-7B", choices=models, metavar="MODEL",
                        help=f"which paper row --compare-paper shows (default %(default)s); one of: "
                             f"{', '.join(models)}")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _per_benchmark(values: list[str] | None, benchmarks: list[str], what: str) -> dict[str, list[str]]:
    """["x", "bench=y"] -> {bench: [...]}. A plain --task goes to every selected benchmark that has that task;
    a plain --questions needs a single benchmark."""
    from .benchmarks import BenchmarkError, canonical_name, get_benchmark

    out: dict[str, list[str]] = {b: [] for b in benchmarks}
    for v in values or []:
        head, sep, tail = v.partition("=")
        if sep:
            try:
                name = canonical_name(head)
            except BenchmarkError:
                name = None
            if name is not None:
                if name not in out:
                    raise BenchmarkError(f"{what} {v!r} names benchmark {name}, which is not selected")
                out[name].append(tail)
                continue
        if what == "--questions" or len(benchmarks) == 1:
            if len(benchmarks) > 1:
                raise BenchmarkError(f"--questions {v!r}: with several benchmarks write BENCH=FILE")
            out[benchmarks[0]].append(v)
            continue
        takers = [b for b in benchmarks if v == "all" or v in get_benchmark(b).tasks]
        if not takers:
            raise BenchmarkError(f"--task {v!r} is a task of none of the selected benchmarks")
        for b in takers:
            out[b].append(v)
    return out


def _settings(args, generator_info: dict) -> R.GenerationSettings:
    return R.GenerationSettings(prompt_style=args.prompt, max_new_tokens=args.max_new_tokens,
                                temperature=args.temperature, top_p=args.top_p, batch_size=args.batch_size,
                                generator=generator_info)


def resolve_prompt(args) -> str:
    """--prompt, or (not given) the prompt --model was trained with (models.info.default_prompt), else
    reasoning; says on stderr when the model's own record decided."""
    from ..models.info import default_prompt, trained_prompt

    if args.prompt is not None:
        return args.prompt
    if args.model is not None and trained_prompt(args.model) is not None:
        style = default_prompt(args.model)
        print(f"prompt: {style} (the prompt {args.model} was trained with; --prompt sets another)", file=sys.stderr)
        return style
    return "reasoning"


def _validate(args) -> None:
    args.prompt = resolve_prompt(args)
    if args.max_new_tokens < 1 or args.batch_size < 1:
        raise UsageError("--max-new-tokens and --batch-size must be positive")
    if args.frames < 2 or args.frames % 2:
        raise UsageError(f"--frames must be an even number >= 2 (got {args.frames})")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise UsageError("--temperature must be >= 0 and --top-p in (0, 1]")
    _check_output_dir(Path(args.output_dir))
    if args.model is not None and args.prompt == "reasoning" and args.max_new_tokens < 768:
        print(f"warning: --max-new-tokens {args.max_new_tokens} truncates reasoning chains (the paper trains "
              f"with 768-token responses and evaluates with 1024)", file=sys.stderr)


def _check_output_dir(out: Path) -> None:
    """--output-dir is a directory or can be created: neither it nor its nearest existing parent is a file
    (mkdir would fail with NotADirectoryError after the benchmark was scored)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output-dir {str(out)!r} is a file, not a directory: choose another directory, or move "
                         f"the file away")
    parent = next((p for p in out.parents if p.exists()), None) if not out.exists() else None
    if parent is not None and not parent.is_dir():
        raise UsageError(f"--output-dir {str(out)!r} cannot be created: {str(parent)!r} is a file, not a directory")


def run(args) -> int:
    from videoktr.data.video import VideoDecodeError

    from .benchmarks import BenchmarkError
    from .scoring import MissingPredictionsError

    try:
        return _run(args)
    except (BenchmarkError, MissingPredictionsError, R.MissingMediaError, R.RunConfigMismatch, R.MediaFailure,
            UsageError, VideoDecodeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _run(args) -> int:
    from .benchmarks import BenchmarkError, canonical_name, get_benchmark
    from .predictions import match_predictions, read_predictions
    from .report import markdown_overview, paper_number, write_report
    from .scoring import score_items, summarize

    _validate(args)
    benchmarks = list(dict.fromkeys(canonical_name(b) for b in args.benchmark))
    tasks = _per_benchmark(args.task, benchmarks, "--task")
    questions = _per_benchmark(args.questions, benchmarks, "--questions")
    for b, qs in questions.items():
        if len(qs) > 1:
            raise BenchmarkError(f"{b}: several --questions files given; pass one per benchmark (BENCH=FILE)")
    out_root = Path(args.output_dir)
    preds = read_predictions(args.predictions) if args.predictions is not None else None
    generator = None
    overview, combined = [], {}
    for name in benchmarks:
        bench = get_benchmark(name)
        items = bench.load(args.data_root, questions[name][0] if questions[name] else None, tasks[name] or None)
        if args.limit is not None:
            items = items[: args.limit]
        if not items:
            raise BenchmarkError(f"{name}: no items selected")
        out_dir = out_root / name
        failures: dict = {}
        if preds is not None:
            outputs, unknown = match_predictions(preds, items, name, source=str(args.predictions))
            if unknown:
                print(f"{name}: {unknown} predictions match no selected item (ignored)", file=sys.stderr)
            settings = {"source": str(args.predictions)}
        else:
            if generator is None:
                from .generate import HFGenerator

                generator = HFGenerator(args.model, frames=args.frames, fps=args.fps, max_pixels=args.max_pixels,
                                        min_pixels=args.min_pixels, device=args.device, dtype=args.dtype,
                                        seed=args.seed, video_backend=args.video_backend,
                                        rope_positions=args.rope_positions)
            gs = _settings(args, generator.describe())
            outputs = R.run_generation(items, generator, out_dir, data_root=args.data_root, settings=gs,
                                       progress=not args.no_progress, desc=name,
                                       on_media_error=args.on_media_error, retry_failed=args.retry_failed)
            keys = {it.key for it in items}
            failures = {k: row for k, row in R.load_failures(out_dir).items() if k in keys and k not in outputs}
            settings = {**gs.generator, "prompt": args.prompt, "max_new_tokens": args.max_new_tokens,
                        "temperature": args.temperature, "top_p": args.top_p}
        records = score_items(items, outputs, allow_missing=args.allow_missing,
                              failed={k: row["reason"] for k, row in failures.items()})
        summary = summarize(items, records, name)
        selected = bench.resolve_tasks(tasks[name] or None)
        summary = {"benchmark": name, "title": bench.title, "tasks": list(selected), **summary,
                   "settings": settings}
        if failures:
            order = {it.key: i for i, it in enumerate(items)}
            summary["failures"] = [failures[k] for k in sorted(failures, key=order.__getitem__)]
        paper = None
        if args.compare_paper:
            # the paper's columns use the default tasks (MMVU mc, TempCompass multi-choice, all of the rest)
            comparable = selected == bench.resolve_tasks(None) and args.limit is None
            paper = paper_number(name, args.paper_model, args.frames) if comparable else None
        write_report(out_dir, records, summary, paper, title=bench.title)
        overview.append((bench.title, summary, paper))
        combined[name] = {k: summary[k] for k in ("accuracy", "correct", "total", "unparsed", "failed",
                                                  "accuracy_parsed") if k in summary}
        failed_note = (f", failed {summary['failed']}: see {out_dir / R.FAILED_FILE}"
                       if summary.get("failed") else "")
        print(f"{bench.title}: {summary['accuracy']:.2f}% of {summary['total']} "
              f"(unparsed {summary['unparsed']}{failed_note}) -> {out_dir}")
    out_root.mkdir(parents=True, exist_ok=True)
    (out_root / "summary.md").write_text(markdown_overview(overview))
    (out_root / "summary.json").write_text(json.dumps(combined, indent=2) + "\n")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: `python -m videoktr.eval.cli ...` (the package CLI wraps the same functions)."""
    parser = argparse.ArgumentParser(prog="videoktr eval", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
