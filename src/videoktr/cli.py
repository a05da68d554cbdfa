"""The `videoktr` command: one thin function per subcommand; the work lives in the library."""

from __future__ import annotations

import argparse
import re
import sys


def _init_model(args: argparse.Namespace) -> int:
    from .models.factory import FAMILIES, SIZES, create_model_dir

    corpus = None
    if args.corpus:
        from pathlib import Path

        path = Path(args.corpus)
        if not path.is_file():
            print(f"error: --corpus file not found: {path}", file=sys.stderr)
            return 2
        corpus = path.read_text(encoding="utf-8").splitlines()
    out = create_model_dir(args.output, size=args.size, corpus=corpus, seed=args.seed, family=args.family)
    spec = SIZES[args.size]
    print(f"wrote a randomly initialised {FAMILIES[args.family].name} ({args.size}: hidden {spec.hidden_size}, "
          f"{spec.num_layers} layers, vision depth {spec.vision_depth}) to {out}")
    return 0


# a file where a directory must be (an output directory that is a file, or a path through one): the user's to fix
PATH_ERRORS = (FileExistsError, NotADirectoryError)


def user_error_message(exc: BaseException) -> str:
    """The one line printed for a user error (exit code 2)."""
    if isinstance(exc, PATH_ERRORS) and getattr(exc, "filename", None):
        return f"{str(exc.filename)!r}: {exc.strerror} (a directory is needed there, and a file is in the way)"
    return str(exc)


def train(config) -> dict:
    """`videoktr train` from Python: a run on data (`videoktr.train.run.run`) when data.data names a file, else
    the synthetic world's default run (`videoktr.world.run.run`). Returns the run's report."""
    if config.data.data:
        from .train.run import run
    else:
        from .world.run import run
    return run(config)


def _train(args: argparse.Namespace) -> int:
    from .train.config import config_from_args
    from .train.distributed import end_process_group

    finished = False
    try:
        train(config_from_args(args))
        finished = True
    # bad option, file or row (ValueError: ConfigError and the like), a missing file, or a file where a directory
    # must be: the message names it; anything else is a bug in videoktr and keeps its traceback
    except (ValueError, FileNotFoundError, *PATH_ERRORS) as exc:
        print(f"error: {user_error_message(exc)}", file=sys.stderr)
        return 2
    finally:  # under `accelerate launch`: close the process group before the interpreter shuts down
        end_process_group(wait=finished)
    return 0


def _filter(args: argparse.Namespace) -> int:
    from .filter import FilterOptions, run_filter

    opts = FilterOptions(samples=args.samples, low=args.low, high=args.high, temperature=args.temperature,
                         max_new_tokens=args.max_new_tokens, rows_per_batch=args.rows_per_batch,
                         frames=args.frames, max_pixels=args.max_pixels, seed=args.seed, shard=args.shard,
                         num_shards=args.num_shards)
    try:
        summary = run_filter(args.data, args.data_root, args.model, args.output_dir, opts)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not summary["complete"]:
        print(f"shard {summary['shard']} of {summary['num_shards']} done ({summary['shard_rows']} rows); "
              f"{summary['pending']} rows of other shards pending: the last shard to finish writes kept.jsonl")
        return 0
    print(f"kept {summary['kept']} of {summary['rows']} rows ({summary['too_easy']} too easy, "
          f"{summary['too_hard']} too hard, {summary['skipped_samples']} skipped): {summary['kept_file']}")
    return 0


def _merge_lora(args: argparse.Namespace) -> int:
    from .models.lora import LoraError, merge_adapter

    try:
        out = merge_adapter(args.adapter, args.output, base=args.base or None, dtype=args.dtype,
                            rope_positions=args.rope_positions)
    except LoraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"merged model: {out}")
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from .analysis.analyze import analyze
    from .analysis.rollouts import NoRollouts

    try:
        result = analyze(args.run_dir, out_dir=args.output_dir, step=args.step, gradients=args.gradients,
                         checkpoint=args.checkpoint, compare=args.compare, cost_benchmark=args.cost_benchmark,
                         device=args.device, max_gradient_steps=args.max_gradient_steps,
                         spacy_model=args.spacy_model, rope_positions=args.rope_positions)
    except (NoRollouts, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, entry in result.items():
        if name != "index":
            print(f"{name:12s} {entry['summary']}")
    print(f"index: {result['index']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="videoktr",
        description="Train video-language models with Video-KTR (key-token RL), offline and on CPU or GPU.",
    )
    parser.add_argument("--version", action="version", version=f"videoktr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("init-model", help="write a randomly initialised Qwen-VL-family model directory (offline)",
                       description="Build a Qwen2.5-VL-architecture model (or, with --family, Qwen2-VL or "
                       "Qwen3-VL) offline: a byte-level BPE tokenizer trained here, the family's processor with "
                       "image and video processors, random weights. The directory loads with from_pretrained "
                       "like any checkpoint.")
    p.add_argument("--family", choices=["qwen2_5_vl", "qwen2_vl", "qwen3_vl"], default="qwen2_5_vl",
                   help="architecture: qwen2_5_vl (Qwen2.5-VL, the paper's), qwen2_vl (Qwen2-VL) or qwen3_vl "
                   "(Qwen3-VL: 16 px patches, DeepStack, timestamps in the prompt)")
    p.add_argument("--size", choices=["tiny", "small"], default="tiny",
                   help="tiny: <1M parameters, for tests; small: the default CPU training run's model")
    p.add_argument("--output", required=True, help="directory to write (created if missing)")
    p.add_argument("--corpus", default=None,
                   help="text file (one text a line) to train the tokenizer on, in addition to a built-in corpus")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weight initialisation")
    p.set_defaults(func=_init_model)

    from .train.config import add_config_arguments

    p = sub.add_parser(
        "train", help="train with GRPO or Video-KTR (default: the built-in synthetic world, on CPU)",
        # one line: a mistyped flag is answered by its error, not by 70 lines listing every option
        usage="videoktr train [--config FILE] [--OPTION VALUE ...]   (`videoktr train --help` lists every option)",
        description="Train with plain GRPO or Video-KTR. With no arguments: build the small offline model, "
        "warm-start it on the synthetic video world (cached), run Video-KTR RL, and write report.json and plots "
        "into the run directory. Every option below can also be set in a YAML file (--config); flags win.")
    add_config_arguments(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("filter", help="difficulty filter: keep rows the model solves sometimes (paper 4.1)",
                       description="Sample k responses per Video-R1-format row with the starting model and keep "
                       "the rows whose accuracy lies in [low, high]. Resumable: finished rows are not recomputed.")
    p.add_argument("--data", required=True, help="Video-R1-format JSON/JSONL rows")
    p.add_argument("--data-root", default=None, help="directory that media paths in the rows are relative to")
    p.add_argument("--model", required=True, help="model directory (the starting model, e.g. the SFT checkpoint)")
    p.add_argument("--output-dir", required=True, help="writes accuracies.jsonl, kept.jsonl, skipped.jsonl, summary.json")
    p.add_argument("--samples", type=int, default=8, help="responses sampled per row (paper: 8)")
    p.add_argument("--low", type=float, default=0.2, help="keep rows with accuracy >= low (paper: 0.2)")
    p.add_argument("--high", type=float, default=0.8, help="keep rows with accuracy <= high (paper: 0.8)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--max-new-tokens", type=int, default=768, help="longest response in tokens")
    p.add_argument("--rows-per-batch", type=int, default=2, help="rows per generate call (x samples responses)")
    p.add_argument("--frames", type=int, default=16, help="most frames per clip (2 fps sampling)")
    p.add_argument("--max-pixels", type=int, default=128 * 28 * 28, help="per-frame pixel budget")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--shard", type=int, default=0,
                   help="with --num-shards N: this process filters rows shard, shard+N, ... (one process per GPU, "
                        "same --output-dir; the last shard to finish merges)")
    p.add_argument("--num-shards", type=int, default=1, help="number of filter processes sharing the rows")
    p.set_defaults(func=_filter)

    p = sub.add_parser("merge-lora", help="merge a LoRA adapter (a checkpoint or final/adapter) into a plain model",
                       description="Load the base model, add the trained adapter, merge it into the weights and "
                       "write a model directory that `videoktr eval` and transformers load like any checkpoint. "
                       "A LoRA run does this itself for final/ (model.merge_lora); use this for a checkpoint.")
    p.add_argument("--adapter", required=True, help="directory with adapter_config.json (a checkpoint-N of a LoRA "
                   "run, or its final/adapter)")
    p.add_argument("--output", required=True, help="model directory to write (created if missing)")
    p.add_argument("--base", default="", help="base model directory (default: the one the adapter records)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="dtype the merge runs and is saved in (float32 keeps updates below bf16's resolution)")
    p.add_argument("--rope-positions", choices=("qwen", "transformers"), default=None,
                   help="3D position scheme the merged model records (default: the one the adapter was trained "
                        "under, as its checkpoint records it)")
    p.set_defaults(func=_merge_lora)

    from .analysis import explain as explain_cli

    p = sub.add_parser("explain", help="score one response token by token and write an HTML page of it",
                       description="Generate a response to a question about a video (or score a given one) and "
                       "attribute it with the trainer's attribute(): each token's visual, temporal and entropy "
                       "score, the top-r key tokens per signal and their union. Writes explain.html (self-contained: "
                       "frames, shaded tokens, scores on hover) and explain.json into --output-dir.")
    explain_cli.add_arguments(p)
    p.set_defaults(func=explain_cli.run_cli)

    p = sub.add_parser("analyze", help="the paper's analysis figures from a run's rollout log (PNG + JSON + index.md)",
                       description="Read RUN_DIR/rollouts/ (written every run.log_rollouts_every steps) and the run's "
                       "logs, and write RUN_DIR/analysis/: part-of-speech shares of selected vs unselected tokens "
                       "(spaCy, optional: pip install 'videoktr[pos]' && python -m spacy download en_core_web_sm), the "
                       "synthetic world's token roles, the signals' overlap, token frequencies, update probability "
                       "by position, the gradient decomposition of key vs remaining tokens (with the run's final "
                       "model), and the cost table, each as <name>.png and <name>.json, with index.md.")
    p.add_argument("run_dir", help="a training run's output directory")
    p.add_argument("--output-dir", default=None, help="where to write (default: RUN_DIR/analysis)")
    p.add_argument("--step", type=int, default=None, help="only this logged step (default: every logged step)")
    p.add_argument("--gradients", action=argparse.BooleanOptionalAction, default=True,
                   help="compute the gradient decomposition (loads the model; --no-gradients skips it)")
    p.add_argument("--checkpoint", default=None, help="model directory for the gradients (default: RUN_DIR/final, "
                   "else the newest checkpoint)")
    p.add_argument("--max-gradient-steps", type=int, default=8,
                   help="logged steps the gradient decomposition covers, evenly spread (0 = all)")
    p.add_argument("--device", default=None, help="device for the gradients (default: cuda when present, else cpu)")
    p.add_argument("--rope-positions", choices=("qwen", "transformers"), default=None,
                   help="Qwen2-VL/2.5-VL 3D position scheme for the gradients' model (default: the one the model "
                        "directory records, else the run's model.rope_positions)")
    p.add_argument("--compare", action="append", default=[], metavar="RUN_DIR",
                   help="another run whose cost goes into the cost table beside this one (repeatable)")
    p.add_argument("--cost-benchmark", default=None, help="JSON results of a cost benchmark to add to the cost table")
    p.add_argument("--spacy-model", default="en_core_web_sm", help="spaCy pipeline for the part-of-speech tags")
    p.set_defaults(func=_analyze)

    try:
        from .eval import cli as eval_cli
    except ImportError:
        eval_cli = None
    if eval_cli is not None and hasattr(eval_cli, "add_arguments"):
        p = sub.add_parser("eval", help="evaluate a model or rescore predictions on video benchmarks",
                           description="Evaluate on Video-Holmes, VideoMMMU, MMVU, TempCompass, VideoMME and more.")
        eval_cli.add_arguments(p)
        p.set_defaults(func=eval_cli.run)
    return parser


# a negative number that argparse would take for an option (it accepts -5 and -0.5 as values, not -1e-5 or -inf)
_NEGATIVE_VALUE = re.compile(r"-(\d+\.?\d*|\.\d+)[eE][+-]?\d+|-(inf|infinity|nan)", re.IGNORECASE)


def attach_negative_values(argv: list[str]) -> list[str]:
    """`--learning-rate -1e-5` -> `--learning-rate=-1e-5`, so that argparse reads the number as the flag's value
    instead of failing with "expected one argument" (the option's range check then answers, in one line)."""
    out: list[str] = []
    for token in argv:
        if out and _NEGATIVE_VALUE.fullmatch(token) and out[-1].startswith("--") and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(attach_negative_values(list(sys.argv[1:] if argv is None else argv)))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
