"""GPU check (issue 21): what ktr costs over grpo at the paper's shape on ONE GPU with Qwen2.5-VL-7B's dimensions,
and whether the attribution pass picks the same key tokens as the reference path there.

  python bench/gpu_check.py                      # one 80 GB GPU: about 5 minutes (8 at most)
  python bench/gpu_check.py --tiny               # CPU, tiny model: the suite's check of this script (seconds)
  python bench/gpu_check.py --check-only         # only say what this environment lacks (exit 2 if anything)

Model: random weights with Qwen2.5-VL-7B-Instruct's published dimensions (LM: width 3584, 28 layers, 28 query /
4 key-value heads of 128, MLP 18944, vocabulary 152064, untied head; vision tower: 32 blocks of width 1280, 16
heads, MLP 3420, full attention in blocks 7/15/23/31), LoRA r = 64 on the LM's linear layers (q/k/v/o, gate/up/
down; vision tower frozen, as `videoktr train` does with model.lora_r > 0). Why 7B with LoRA rather than the 3B
fully trained: the paper's numbers are for the 7B, and what attribution costs against the policy pass depends on
the width, depth and vocabulary it runs at; full training of the 3B needs fp32 master weights, gradients and
AdamW states (16 bytes x 3.8B = 60 GB) before activations, too close to 80 GB at this shape, while the 7B's
frozen fp32 weights (33 GB) and adapters leave room. The price: LoRA's backward skips the base weights' gradients,
so the policy pass is cheaper than a full fine-tune's and the attribution's share of the step is an upper bound
of the full fine-tune's. The adapters have no dropout (as the full fine-tune has none), so ktr runs its default path:
the rollout evaluates only the perturbed inputs and the mask is chosen in the loss (ktr.select_in_loss).

Settings (the paper's per-GPU shape and the 7B recipe): one prompt with a 16-frame clip at 128*28*28 pixels per
frame (448x224, 1024 video tokens), G = 8 responses of 256-768 tokens (forced, identical in both modes: the bench's
`ForcedSampling`, so HF generation pays real sampling's cost), bf16 autocast over fp32 parameters (what `videoktr
train` loads for model.dtype bfloat16 on one process), gradient checkpointing, SDPA attention, beta = 0. Runs
`--warmup` + `--steps` optimizer steps of grpo, then of ktr, each in a fresh process on a freshly built model
(same seed), and reports per mode: step time with and without sampling, the token-weights (attribution) seconds, peak GPU memory
(torch.cuda.max_memory_allocated, reset after the model is built), and the per-step ratios ktr / grpo. Then, on
ktr's first rollout: the key-token masks of the trainer's attribution path (shared prompt prefix, bf16 autocast)
against the reference path (every row's full sequence in one forward, no shared prefix) in bf16 and in fp32,
raw and with ties forgiven (a token tied at its response's cut in either path: bf16 rounds many scores equal).

Needs: torch >= 2.11 with CUDA, torchvision (the node's, matched to its torch), transformers with Qwen2.5-VL's
`mm_encoder_outputs=` (5.23; 5.17 lacks it), trl 1.16, peft >= 0.21, accelerate >= 1.10, datasets >= 4.7, av,
pyyaml, and this project (PYTHONPATH=src or its wheel installed with --no-deps). vLLM is not used. What is missing
is listed before any work (exit 2). docs/benchmarks.md says which wheels to bring to an offline node.
Writes `--output` (default bench/results/gpu_check.json).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"

TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 64,
        "vocab_size": 1000, "vision_depth": 2, "vision_hidden": 32, "vision_heads": 2, "vision_intermediate": 64,
        "fullatt_block_indexes": (1,)}

# (module, distribution, minimum version or None, why it is needed)
NEEDS = [
    ("torch", "torch", "2.11", "PyTorch with CUDA (the node's own)"),
    ("torchvision", "torchvision", None, "transformers' video processor (the node's, matched to its torch)"),
    ("transformers", "transformers", "5.17", "Qwen2.5-VL"),
    ("trl", "trl", "1.16", "GRPOTrainer, which videoktr's trainer subclasses (TRL 1.16's internals)"),
    ("peft", "peft", "0.21", "LoRA adapters"),
    ("accelerate", "accelerate", "1.10", "the trainer's devices and mixed precision"),
    ("datasets", "datasets", "4.7", "TRL's dataset handling"),
    ("av", "av", "14", "writing and decoding the video clips"),
    ("yaml", "pyyaml", None, "videoktr's configuration"),
]


def version_tuple(v: str) -> tuple:
    out = []
    for part in v.split("+")[0].split("."):
        digits = "".join(c for c in part if c.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def lacks(tiny: bool) -> list[str]:
    """What this environment lacks for the check, one line each (empty: all there). Imports nothing heavy
    before the versions are known to be right."""
    problems = []
    for module, dist, minimum, why in NEEDS:
        if importlib.util.find_spec(module) is None:
            problems.append(f"{dist}{'>=' + minimum if minimum else ''} is not installed ({why})")
            continue
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        if minimum and version != "unknown" and version_tuple(version) < version_tuple(minimum):
            problems.append(f"{dist} {version} is older than {minimum} ({why})")
        if dist == "trl" and version != "unknown" and version_tuple(version)[:2] != (1, 16):
            problems.append(f"trl {version}: videoktr's trainer overrides TRL 1.16's GRPOTrainer internals; bring "
                            "the trl 1.16 wheel")
    if importlib.util.find_spec("videoktr") is None:
        problems.append(f"videoktr is not importable: run with PYTHONPATH={SRC} or install this project's wheel "
                        "with pip install --no-deps")
    if problems:
        return problems
    try:
        import torch
        from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen
        from trl.trainer import utils as trl_utils
    except ImportError as error:  # a dependency of these packages the node lacks (e.g. huggingface_hub's)
        return [f"importing the stack failed: {error} (bring that package's wheel)"]
    if not takes_encoder_outputs(qwen.Qwen2_5_VLModel):
        problems.append(f"transformers {importlib.metadata.version('transformers')}: Qwen2.5-VL's forward has no "
                        "`mm_encoder_outputs=` (videoktr passes each clip's encoder outputs, perturbed or not, "
                        "through it); bring the transformers 5.23 wheel")
    if not hasattr(trl_utils, "add_fused_lm_head"):
        problems.append("trl lacks add_fused_lm_head (TRL 1.16's fused LM head, used by the policy pass)")
    if not problems:
        try:
            import videoktr.train.trainer  # noqa: F401  (the trainer and everything it imports)
        except ImportError as error:
            problems.append(f"importing videoktr's trainer failed: {error}")
    if not hasattr(torch.nn.functional, "scaled_dot_product_attention"):
        problems.append(f"torch {torch.__version__} has no scaled_dot_product_attention (SDPA)")
    if not tiny:
        if not torch.cuda.is_available():
            problems.append(f"torch {torch.__version__} sees no CUDA GPU (built for CUDA "
                            f"{torch.version.cuda or 'none'}); the full check needs one (--tiny runs on CPU)")
        else:
            total = torch.cuda.get_device_properties(0).total_memory
            if total < 70 * 2**30:
                problems.append(f"GPU 0 has {total / 2**30:.0f} GiB; the 7B shape needs an 80 GB GPU "
                                "(fp32 weights 33 GB, generation and the policy pass at 8 x 1.9k tokens)")
    return problems


def takes_encoder_outputs(model_class) -> bool:
    """Whether a Qwen-VL model class's forward takes precomputed encoder outputs (`mm_encoder_outputs=`)."""
    import inspect

    return "mm_encoder_outputs" in inspect.signature(model_class.forward).parameters


def environment() -> dict:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    for _, dist, _, _ in NEEDS[1:]:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def build_model(config, device: str, dtype: str, seed: int = 0):
    """Random weights, built directly on `device` (an 8B model initialised on the GPU in seconds), SDPA
    attention, Qwen's 3D positions (as `models.factory.load_model` installs them)."""
    import torch
    import transformers

    from videoktr.models.positions import install

    torch.manual_seed(seed)
    with torch.device(device):
        model = transformers.Qwen2_5_VLForConditionalGeneration._from_config(
            config, dtype=getattr(torch, dtype), attn_implementation="sdpa")
    install(model, "qwen")
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    return model


@dataclasses.dataclass
class Setup:
    dims: dict
    frames: int
    height: int
    width: int
    generations: int
    min_tokens: int
    max_tokens: int
    lora_r: int
    bf16: bool
    device: str


def make_trainer(mode: str, model, processor, clips: list[Path], setup: Setup, steps: int, output_dir: str):
    from datasets import Dataset
    from trl import GRPOConfig

    import cost
    from videoktr.models.factory import suppressed_token_ids
    from videoktr.models.lora import LoraOptions, peft_config
    from videoktr.train.trainer import VideoGRPOTrainer, VideoOptions

    args = GRPOConfig(output_dir=output_dir, per_device_train_batch_size=setup.generations,
                      num_generations=setup.generations, max_completion_length=setup.max_tokens, max_steps=steps,
                      use_cpu=setup.device == "cpu", report_to=[], logging_steps=1, save_strategy="no",
                      learning_rate=1e-5, bf16=setup.bf16, gradient_checkpointing=True,
                      use_bias_correction_kl=False, beta=0.0, temperature=1.0,
                      generation_kwargs={"suppress_tokens": suppressed_token_ids(processor.tokenizer)},
                      seed=0, disable_tqdm=True)
    from transformers import PrinterCallback

    # lora_dropout 0: the 7B recipe trains without dropout, so its ktr takes the default path (ktr.select_in_loss:
    # the rollout evaluates the perturbed inputs only); LoRA's default 0.05 would keep the unperturbed pass
    lora = LoraOptions(r=setup.lora_r, dropout=0.0)
    trainer = VideoGRPOTrainer(model=model, peft_config=peft_config(model, lora),
                               processing_class=processor, reward_funcs=[cost.length_reward], args=args,
                               train_dataset=Dataset.from_list(cost.clip_rows(clips)), method=mode,
                               video=VideoOptions(fps=2.0, min_frames=4, max_frames=max(16, setup.frames)))
    trainer.remove_callback(PrinterCallback)  # the per-step log dicts: this script prints its own lines
    return trainer


@contextlib.contextmanager
def fp32_scoring(trainer):
    """The trainer's scoring context without autocast: fp32 parameters compute in fp32 (the precision reference)."""
    import torch

    from videoktr.attribution import eval_mode
    from videoktr.models.lora import base_model

    unwrapped = base_model(trainer.accelerator.unwrap_model(trainer.model))
    device_type = "cuda" if next(unwrapped.parameters()).is_cuda else "cpu"
    with torch.no_grad(), eval_mode(unwrapped), torch.autocast(device_type, enabled=False):
        yield unwrapped


def attribute_batch(trainer, batch: dict, share_prefix: bool, autocast: bool):
    """The trainer's attribution call on one rollout (every response), with the given path and precision."""
    import torch

    from videoktr.attribution import attribute
    from videoktr.train.trainer import _grid_kwargs

    device = batch["completion_ids"].device
    with (trainer._scoring() if autocast else fp32_scoring(trainer)) as unwrapped:
        media = trainer._encode_media(unwrapped, batch["videos"])
        options = dataclasses.replace(trainer.attribution_options, share_prefix=share_prefix)
        return attribute(unwrapped, batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"],
                         batch["completion_mask"], options=options, generator=torch.Generator().manual_seed(1234),
                         video_features=media.video_features, video_keys=media.video_keys,
                         **_grid_kwargs(media.videos, device))


def mask_agreement(a, b, selection) -> dict:
    """Per signal and for the union (the tokens trained): the share of response tokens whose selection agrees
    between attributions `a` and `b`, raw and with ties forgiven (a disagreement at a token tied at its response's
    cut in either attribution, `at_threshold`, is not counted), and the largest score difference."""
    import torch

    from videoktr.attribution import select_key_tokens

    w_a, m_a, _ = select_key_tokens(a, selection)
    w_b, m_b, _ = select_key_tokens(b, selection)
    out = {}
    tie_any = None
    for s in a.scores:
        valid = a.valid[s]
        ties = at_threshold(a.scores[s], m_a[s], valid) | at_threshold(b.scores[s], m_b[s], valid)
        tie_any = ties if tie_any is None else tie_any | ties
        agree = (m_a[s] == m_b[s]) & valid
        n = int(valid.sum())
        out[s] = {"agreement": float(agree.sum()) / max(1, n),
                  "agreement_ties_forgiven": float((agree | (ties & valid)).sum()) / max(1, n),
                  "max_abs_score_diff": float((a.scores[s].float() - b.scores[s].float())[valid].abs().max())
                  if n else 0.0, "tokens": n}
    valid = torch.zeros_like(w_a, dtype=torch.bool)
    for v in a.valid.values():
        valid |= v
    agree = (w_a == w_b) & valid
    n = int(valid.sum())
    out["union"] = {"agreement": float(agree.sum()) / max(1, n),
                    "agreement_ties_forgiven": float((agree | (tie_any & valid)).sum()) / max(1, n), "tokens": n}
    return out


def at_threshold(score, mask, valid):
    """[B, C] bool: tokens tied at their response's cut: their score equals the smallest selected score and some
    token of that score was left out, so the selection among them is arbitrary."""
    import torch

    big = torch.finfo(score.dtype).max
    threshold = torch.where(mask & valid, score, torch.full_like(score, big)).amin(-1, keepdim=True)
    equal = (score == threshold) & valid
    split = (equal & ~mask).any(-1, keepdim=True) & (equal & mask).any(-1, keepdim=True)
    return equal & split


def run_mode(mode: str, setup: Setup, config, processor, clips, warmup: int, steps: int, param_dtype: str,
             keep_batch: bool) -> tuple[dict, dict | None]:
    import torch

    import cost

    shape = cost.Shape(f"gpu-{mode}", 1, setup.generations, setup.frames, setup.height, setup.width,
                       setup.min_tokens, setup.max_tokens)
    built = time.perf_counter()
    model = build_model(config, setup.device, param_dtype)
    build_s = time.perf_counter() - built
    trainer = make_trainer(mode, model, processor, clips, setup, warmup + steps, tempfile.mkdtemp(prefix=f"gpu-{mode}-"))
    cuda = setup.device != "cpu"
    measured = cost.Instrumented(trainer, shape, sync=torch.cuda.synchronize if cuda else None)
    measured.keep_batches = 1 if keep_batch else 0
    trainer.model.train()
    select_in_loss = trainer.selects_in_loss()  # ktr's default path: the mask chosen in the loss
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    per_step = measured.steps(warmup + steps, warmup)
    peak = torch.cuda.max_memory_allocated() if cuda else None
    agreement = None
    if keep_batch and measured.batches:
        agreement = paths_agreement(trainer, measured.batches[0])
    trainable, total = (sum(p.numel() for p in model.parameters() if p.requires_grad),
                        sum(p.numel() for p in model.parameters()))
    out = {"mode": mode, "steps": per_step, "peak_gpu_bytes": peak, "model_build_s": build_s, "train_s": train_s,
           "parameters": total, "trainable_parameters": trainable,
           "encoder_calls_per_step": measured.counter.calls["train"] / (warmup + steps),
           "select_in_loss": select_in_loss}
    del trainer, model, measured
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return out, agreement


def paths_agreement(trainer, batch) -> dict:
    """Key-token masks of the trainer's path (shared prefix, its autocast) against the reference path (no shared
    prefix) in the same precision and in fp32, on one rollout."""
    from videoktr.attribution import SelectionOptions

    start = time.perf_counter()
    selection = SelectionOptions(ratio=trainer.selection_options.ratio)
    trainer_path = attribute_batch(trainer, batch, share_prefix=True, autocast=True)
    reference = attribute_batch(trainer, batch, share_prefix=False, autocast=True)
    reference_fp32 = attribute_batch(trainer, batch, share_prefix=False, autocast=False)
    return {"trainer_vs_reference_same_precision": mask_agreement(trainer_path, reference, selection),
            "trainer_vs_reference_fp32": mask_agreement(trainer_path, reference_fp32, selection),
            "reference_vs_reference_fp32": mask_agreement(reference, reference_fp32, selection),
            "responses": int(batch["completion_mask"].shape[0]),
            "tokens": int(batch["completion_mask"].sum()), "seconds": time.perf_counter() - start}


def child(task: dict) -> int:
    """One mode in this (fresh) process; its result, with ktr's mask agreement, goes to task["result"]."""
    import warnings

    import torch

    import cost
    from videoktr.models.factory import DEFAULT_CORPUS, build_processor, train_tokenizer

    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' renames that TRL 1.16 still calls
    setup = Setup(**task["setup"])
    if setup.device == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 2))
    tokenizer = train_tokenizer(DEFAULT_CORPUS, 1024)
    processor = build_processor(tokenizer, 56 * 56, 128 * 28 * 28)
    config = cost.model_config(tokenizer, setup.dims)
    out, agreement = run_mode(task["mode"], setup, config, processor, [Path(c) for c in task["clips"]],
                              task["warmup"], task["steps"], task["param_dtype"], task["keep_batch"])
    out["mask_agreement"] = agreement
    Path(task["result"]).write_text(json.dumps(out))
    return 0


def summary(grpo: dict, ktr: dict) -> dict:
    def med(run, key):
        values = [s[key] for s in run["steps"] if not s["warmup"]]
        return statistics.median(values) if values else float("nan")

    pairs = [(k, g) for k, g in zip(ktr["steps"], grpo["steps"]) if not k["warmup"]]
    out = {}
    for mode, run in (("grpo", grpo), ("ktr", ktr)):
        out[mode] = {"step_s": med(run, "wall_s"), "step_without_sampling_s": med(run, "training_wall_s"),
                     "sampling_s": med(run, "sampling_wall_s"), "attribution_s": med(run, "weights_wall_s"),
                     "peak_gpu_gib": None if run["peak_gpu_bytes"] is None else run["peak_gpu_bytes"] / 2**30}
    out["ratios_per_step"] = {
        "step": [k["wall_s"] / g["wall_s"] for k, g in pairs],
        "step_without_sampling": [k["training_wall_s"] / g["training_wall_s"] for k, g in pairs]}
    out["ratios"] = {key: statistics.median(v) if v else float("nan") for key, v in out["ratios_per_step"].items()}
    if grpo["peak_gpu_bytes"]:
        out["ratios"]["peak_gpu_memory"] = ktr["peak_gpu_bytes"] / grpo["peak_gpu_bytes"]
    same = all(k["digest"] == g["digest"] and k["tokens_sampled"] == g["tokens_sampled"]
               for k, g in zip(ktr["steps"], grpo["steps"]))
    out["same_tokens"] = same
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU, tiny model and shape (the suite's check)")
    parser.add_argument("--check-only", action="store_true", help="only report what the environment lacks")
    parser.add_argument("--steps", type=int, default=3, help="measured optimizer steps per mode")
    parser.add_argument("--warmup", type=int, default=1, help="steps per mode before the measured ones")
    parser.add_argument("--frames", type=int, default=None, help="frames per clip (default 16; --tiny 4)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="longest response (default 768)")
    parser.add_argument("--lora-r", type=int, default=None, help="LoRA rank on the LM (default 64; --tiny 8)")
    parser.add_argument("--param-dtype", default="float32", choices=("float32", "bfloat16"),
                        help="parameter dtype under bf16 autocast (float32: what `videoktr train` loads)")
    parser.add_argument("--work-dir", default="", help="where the clips are written (default: a temp dir)")
    parser.add_argument("--output", default=str(HERE / "results" / "gpu_check.json"))
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if SRC.is_dir() and str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))  # the package from the same clone as this script, installed or not
    missing = lacks(args.tiny)
    if missing:
        print("gpu_check: this environment lacks what the check needs:\n  - " + "\n  - ".join(missing)
              + "\n(docs/benchmarks.md, 'GPU check': the wheels to bring to an offline node)", file=sys.stderr)
        return 2
    if args.check_only:
        print("gpu_check: nothing missing: " + json.dumps(environment()))
        return 0
    if not args.child:
        print("gpu_check: nothing missing", flush=True)
    sys.path.insert(0, str(HERE))  # bench/cost.py: forced sampling and the per-step clock
    import cost

    if args.child:
        return child(json.loads(args.child))
    start = time.perf_counter()
    if args.tiny:
        setup = Setup(TINY, args.frames or 4, 56, 56, 2, 4, args.max_new_tokens or 8, args.lora_r or 8, True, "cpu")
    else:
        setup = Setup(cost.QWEN25_VL_7B, args.frames or 16, 224, 448, 8, 256, args.max_new_tokens or 768,
                      args.lora_r or 64, True, "cuda")
    setup.min_tokens = min(setup.min_tokens, setup.max_tokens)
    root = Path(args.work_dir or tempfile.mkdtemp(prefix="videoktr-gpu-check-"))
    shape = cost.Shape("gpu", 1, setup.generations, setup.frames, setup.height, setup.width, setup.min_tokens,
                       setup.max_tokens)
    clips = cost.write_clips(root, shape, args.warmup + args.steps)
    print(f"gpu_check: {json.dumps(environment())}", flush=True)
    print(f"gpu_check: Qwen2.5-VL {'tiny' if args.tiny else '7B'} dimensions, LoRA r={setup.lora_r}, "
          f"{setup.frames} frames of {setup.width}x{setup.height}, G={setup.generations}, responses "
          f"{setup.min_tokens}-{setup.max_tokens} tokens, {args.warmup}+{args.steps} steps per mode", flush=True)
    runs, agreement = {}, None
    for mode in ("grpo", "ktr"):  # each in a fresh process: its peak memory is its own, nothing of the other left
        result_path = root / f"{mode}.json"
        task = {"mode": mode, "setup": dataclasses.asdict(setup), "clips": [str(c) for c in clips],
                "warmup": args.warmup, "steps": args.steps, "param_dtype": args.param_dtype,
                "keep_batch": mode == "ktr", "result": str(result_path)}
        code = subprocess.run([sys.executable, __file__, "--child", json.dumps(task)]
                              + (["--tiny"] if args.tiny else [])).returncode
        if code != 0:
            print(f"gpu_check: FAILED: the {mode} process exited with status {code} (its output is above)",
                  file=sys.stderr)
            return 1
        runs[mode] = json.loads(result_path.read_text())
        agreement = runs[mode].pop("mask_agreement", None) or agreement
        r = runs[mode]
        print(f"[{time.perf_counter() - start:5.0f}s] {mode}: steps "
              + ", ".join(f"{s['wall_s']:.2f} s ({s['training_wall_s']:.2f} without sampling, attribution "
                          f"{s['weights_wall_s']:.2f})" for s in r["steps"])
              + ("" if r["peak_gpu_bytes"] is None else f"; peak GPU memory {r['peak_gpu_bytes'] / 2**30:.1f} GiB"),
              flush=True)
    result = {"environment": environment(), "setup": dataclasses.asdict(setup), "param_dtype": args.param_dtype,
              "warmup": args.warmup, "steps": args.steps, "runs": runs, "summary": summary(runs["grpo"], runs["ktr"]),
              "mask_agreement": agreement, "seconds": time.perf_counter() - start}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    s = result["summary"]
    for mode in ("grpo", "ktr"):
        m = s[mode]
        print(f"{mode:>5}: step {m['step_s']:.2f} s, without sampling {m['step_without_sampling_s']:.2f} s, "
              f"sampling {m['sampling_s']:.2f} s, attribution {m['attribution_s']:.2f} s"
              + ("" if m["peak_gpu_gib"] is None else f", peak GPU memory {m['peak_gpu_gib']:.1f} GiB"))
    if agreement:
        for name in ("trainer_vs_reference_same_precision", "trainer_vs_reference_fp32"):
            u = agreement[name]["union"]
            print(f"mask agreement, {name}: {u['agreement']:.4f} ({u['agreement_ties_forgiven']:.4f} with ties "
                  f"forgiven) over {u['tokens']} tokens")
    if not s["same_tokens"]:
        print("gpu_check: FAILED: grpo and ktr did not sample and train on the same tokens", file=sys.stderr)
        return 1
    ratios = s["ratios"]
    print(f"wrote {out} ({result['seconds']:.0f} s)")
    print(f"ratio_step={ratios['step']:.3f} ratio_without_sampling={ratios['step_without_sampling']:.3f}"
          + (f" ratio_peak_memory={ratios['peak_gpu_memory']:.3f}" if "peak_gpu_memory" in ratios else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
