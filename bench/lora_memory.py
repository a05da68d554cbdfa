"""What LoRA saves: training memory of full fine-tuning vs LoRA, measured in one run.

  .venv/bin/python bench/lora_memory.py [--model DIR] [--steps 4] [--rank 8] [--rank-7b 64]

For each mode (full fine-tuning; LoRA on the language model with the vision tower frozen; LoRA on the language
model and the vision tower) a FRESH process (peak memory is per process) trains Video-KTR for `--steps` steps on
the synthetic world's prompts with the same model and settings, and reports:
  - trainable parameters;
  - measured training state: bytes of gradients plus AdamW's state tensors after the last step;
  - peak resident memory of the process (VmHWM; on a GPU, torch.cuda.max_memory_allocated);
  - median step time.
Then, from parameter counts alone, the training state of Qwen2.5-VL-7B (its published dimensions, built on
PyTorch's meta device, no weights) in bf16 with fp32 master weights, full vs LoRA at the same rank.
Writes bench/results/lora_memory.json; the last line is `state_ratio=X peak_ratio=Y` (LoRA, frozen tower, over
full fine-tuning, on the measured model).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

MODES = {"full": {}, "lora": {"lora_r": None, "vision_tower": "frozen"},
         "lora+vision": {"lora_r": None, "vision_tower": "lora"}}
# Qwen2.5-VL-7B-Instruct's config.json (dimensions only)
QWEN25_VL_7B = dict(
    text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
              num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                fullatt_block_indexes=[7, 15, 23, 31]),
)


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def child(mode: str, model_dir: str, steps: int, rank: int, cache_dir: str) -> None:
    """One mode in this (fresh) process; prints one JSON line."""
    import torch

    from videoktr.models.lora import base_model, trainable_parameters
    from videoktr.train.config import load_config
    from videoktr.world.run import world_trainer

    torch.set_num_threads(2)
    overrides = {k: (rank if v is None else v) for k, v in MODES[mode].items()}
    config = load_config(overrides={"method": "ktr", "max_steps": steps, "cache_dir": cache_dir, "model": model_dir,
                                    "output_dir": tempfile.mkdtemp(prefix=f"lora-{mode}-"), "save_steps": 10_000,
                                    "log_rollouts_every": 0, **overrides})
    trainer, _, model_path = world_trainer(config)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    grads = sum(p.grad.numel() * p.grad.element_size() for p in trainer.model.parameters() if p.grad is not None)
    optimizer = sum(t.numel() * t.element_size() for state in trainer.optimizer.state.values()
                    for t in state.values() if torch.is_tensor(t) and t.dim() > 0)
    trainable, total = trainable_parameters(trainer.model)
    times = [h["step_time"] for h in trainer.state.log_history if "step_time" in h][1:]
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else peak_rss_bytes()
    print(json.dumps({"mode": mode, "trainable_params": trainable, "total_params": total,
                      "state_bytes": grads + optimizer, "grad_bytes": grads, "optimizer_bytes": optimizer,
                      "peak_bytes": peak, "peak_kind": "cuda_max_allocated" if torch.cuda.is_available() else "VmHWM",
                      "median_step_s": statistics.median(times) if times else None,
                      "model": str(getattr(base_model(trainer.model), "name_or_path", model_path))}))


def estimate_7b(rank: int) -> dict:
    """Training state of Qwen2.5-VL-7B from parameter counts (bf16 weights, fp32 master + AdamW moments for what
    trains): full fine-tuning vs LoRA at `rank` (LM projections; vision tower frozen)."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from videoktr.models.lora import LoraOptions, target_names, training_state_bytes

    config = Qwen2_5_VLConfig(text_config=QWEN25_VL_7B["text"], vision_config=QWEN25_VL_7B["vision"])
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    total = sum(p.numel() for p in model.parameters())
    modules = dict(model.named_modules())
    lora = sum(rank * (modules[n].in_features + modules[n].out_features)
               for n in target_names(model, LoraOptions(r=rank)))
    full = training_state_bytes(total, total, weight_dtype_bytes=2)
    adapted = training_state_bytes(total, lora, weight_dtype_bytes=2)
    gib = 1024 ** 3
    return {"total_params": total, "lora_params": lora, "rank": rank,
            "full_GiB": {"weights": full.weight_bytes / gib, "state": full.state_bytes / gib,
                         "total": full.total_bytes / gib},
            "lora_GiB": {"weights": adapted.weight_bytes / gib, "state": adapted.state_bytes / gib,
                         "total": adapted.total_bytes / gib},
            "note": "per process without sharding; ZeRO-3/FSDP divide weights and state by the process count; "
                    "activations (the same for both) not included"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help="model directory (default: the default run's warm start)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank on the measured model (the default run's "
                        "small model is 128 wide: rank 8 is a typical fraction of its width)")
    parser.add_argument("--rank-7b", type=int, default=64, help="LoRA rank of the Qwen2.5-VL-7B estimate")
    parser.add_argument("--cache-dir", default=".cache/videoktr")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.model, args.steps, args.rank, args.cache_dir)
        return
    results = {}
    for mode in MODES:
        proc = subprocess.run([sys.executable, __file__, "--child", mode, "--model", args.model, "--steps",
                               str(args.steps), "--rank", str(args.rank), "--cache-dir", args.cache_dir],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{mode} failed:\n{proc.stderr[-3000:]}")
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = results[mode]
        print(f"{mode:12s} trainable {r['trainable_params']:>11,} of {r['total_params']:,}  state "
              f"{r['state_bytes'] / 2**20:8.1f} MiB  peak {r['peak_bytes'] / 2**20:8.1f} MiB ({r['peak_kind']})  "
              f"step {r['median_step_s']:.3f} s")
    full = results["full"]
    ratios = {mode: {"state": r["state_bytes"] / full["state_bytes"], "peak": r["peak_bytes"] / full["peak_bytes"],
                     "step_time": (r["median_step_s"] / full["median_step_s"]) if full["median_step_s"] else None}
              for mode, r in results.items()}
    seven = estimate_7b(args.rank_7b)
    print(f"Qwen2.5-VL-7B ({seven['total_params'] / 1e9:.2f}B params), bf16 + fp32 master, per unsharded process: "
          f"full {seven['full_GiB']['total']:.1f} GiB (state {seven['full_GiB']['state']:.1f}), LoRA r={args.rank_7b} "
          f"{seven['lora_GiB']['total']:.1f} GiB (state {seven['lora_GiB']['state']:.2f}, "
          f"{seven['lora_params'] / 1e6:.0f}M adapter params)")
    out = Path(__file__).resolve().parent / "results" / "lora_memory.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"steps": args.steps, "rank": args.rank, "measured": results, "ratios": ratios,
                               "qwen2_5_vl_7b_estimate": seven}, indent=2))
    print(f"wrote {out}")
    lora = ratios["lora"]
    print(f"state_ratio={lora['state']:.3f} peak_ratio={lora['peak']:.3f}")


if __name__ == "__main__":
    main()
