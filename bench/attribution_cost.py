"""Cost of Video-KTR attribution relative to the training forward, measured in one run (ratios, not timings
to assert). Prints a table and writes bench/results/attribution_cost.json.

  .venv/bin/python bench/attribution_cost.py [--size small] [--prompts 4] [--generations 8] [--tokens 64]

Measures, on the offline model of the given size:
  1. policy pass: forward + backward over B = prompts x generations responses with video (what GRPO does);
  2. attribution: the extra no-grad pass Video-KTR adds (visual + temporal rows, encoder outputs reused), twice:
     with the unperturbed log-probs and entropies handed in (ktr.reuse_rollout_logps where TRL computed the
     old-policy pass) and with the unperturbed input evaluated in the same forward (the path without that pass);
  3. peak memory of per-token log-probs: chunked LM head vs full fp32 logits + log_softmax (subprocesses).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _median_times(fns: dict, repeats: int) -> dict[str, float]:
    """Median CPU seconds of each function (process time: other jobs on the machine do not count), the functions
    interleaved in every repeat so that drift hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.process_time()
            fn()
            times[name].append(time.process_time() - start)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def timing(size: str, prompts: int, generations: int, tokens: int, repeats: int) -> dict:
    from builders import encode_prompts, random_frames

    from videoktr.attribution import AttributionOptions, attribute
    from videoktr.models.adapters import adapter_for
    from videoktr.models.factory import create_model_dir, load_model, load_processor

    torch.manual_seed(0)
    path = create_model_dir(Path(tempfile.mkdtemp()) / size, size=size)
    model, processor = load_model(path, dtype="float32"), load_processor(path)
    adapter = adapter_for(model)
    rows = [(f"Question {i}?", random_frames(i)) for i in range(prompts) for _ in range(generations)]
    enc = encode_prompts(processor, rows)
    B = len(rows)
    completion = torch.randint(300, 500, (B, tokens))
    cmask = torch.ones(B, tokens, dtype=torch.long)
    ids = torch.cat([enc["input_ids"], completion], 1)
    mask = torch.cat([enc["attention_mask"], cmask], 1)
    features_holder = {}

    def policy_pass():
        model.zero_grad()
        feats = adapter.encode_videos(model, enc["pixel_values_videos"], enc["video_grid_thw"])
        features_holder["f"] = [f.detach() for f in feats]
        out = model(input_ids=ids, attention_mask=mask, mm_token_type_ids=adapter.mm_token_type_ids(ids),
                    video_grid_thw=enc["video_grid_thw"], second_per_grid_ts=enc["second_per_grid_ts"],
                    **adapter.video_kwargs(feats))
        logp = out.logits[:, -tokens - 1 : -1].log_softmax(-1).gather(-1, completion[..., None]).squeeze(-1)
        features_holder["logp"] = logp.detach()
        logp.mean().backward()

    def attribution_pass(reuse: bool = True):
        given = dict(logp=features_holder["logp"], entropy=torch.zeros(B, tokens)) if reuse else {}
        with torch.no_grad():
            attribute(model, enc["input_ids"], enc["attention_mask"], completion, cmask,
                      video_grid_thw=enc["video_grid_thw"], second_per_grid_ts=enc["second_per_grid_ts"],
                      video_features=features_holder["f"], options=AttributionOptions(), **given)

    policy_pass()
    attribution_pass()
    attribution_pass(reuse=False)
    t = _median_times({"policy": policy_pass, "reuse": attribution_pass,
                       "full": lambda: attribution_pass(reuse=False)}, repeats)
    t_policy, t_attr, t_full = t["policy"], t["reuse"], t["full"]
    return {"size": size, "responses": B, "response_tokens": tokens, "policy_pass_s": t_policy,
            "attribution_s": t_attr, "attribution_over_policy": t_attr / t_policy,
            "attribution_with_unperturbed_s": t_full, "attribution_with_unperturbed_over_policy": t_full / t_policy,
            "reuse_saves": 1 - t_attr / t_full}


def _peak_rss_child(mode: str, rows: int, vocab: int, hidden: int) -> float:
    code = f"""
import torch
from videoktr.core import lm_head_logprobs

def status(key):  # kB
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1])

torch.manual_seed(0)
h = torch.randn({rows}, {hidden}); w = torch.randn({vocab}, {hidden}) * 0.02; idx = torch.randint(0, {vocab}, ({rows},))
open("/proc/self/clear_refs", "w").write("5")  # reset the peak resident size (VmHWM) to the current size
base = status("VmRSS")
if "{mode}" == "naive":
    lp = torch.log_softmax((h @ w.T).float(), -1).gather(-1, idx[:, None])
else:
    lp = lm_head_logprobs(h, w, idx, chunk_size=1024)
print((status("VmHWM") - base) / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def memory(rows: int, vocab: int, hidden: int) -> dict:
    naive = _peak_rss_child("naive", rows, vocab, hidden)
    chunked = _peak_rss_child("chunked", rows, vocab, hidden)
    return {"rows": rows, "vocab": vocab, "naive_peak_mib": naive, "chunked_peak_mib": chunked,
            "chunked_over_naive": chunked / naive if naive else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", choices=["tiny", "small"])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--vocab", type=int, default=32000, help="vocabulary size of the memory measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)  # CPU time of one thread: comparable on a machine shared with other jobs
    result = {"timing": timing(args.size, args.prompts, args.generations, args.tokens, args.repeats),
              "memory": memory(8 * 512, args.vocab, 256)}
    out = Path(__file__).parent / "results" / "attribution_cost.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    t, m = result["timing"], result["memory"]
    print(f"attribution pass / policy forward+backward: {t['attribution_over_policy']:.2f} "
          f"({t['attribution_s'] * 1000:.1f} ms vs {t['policy_pass_s'] * 1000:.1f} ms, {t['responses']} responses x "
          f"{t['response_tokens']} tokens, {t['size']} model), unperturbed side handed in")
    print(f"  with the unperturbed input evaluated too: {t['attribution_with_unperturbed_over_policy']:.2f} "
          f"({t['attribution_with_unperturbed_s'] * 1000:.1f} ms); reusing the old-policy pass saves "
          f"{t['reuse_saves']:.0%} of the attribution pass")
    print(f"peak memory of log-probs, chunked / full fp32 logits: {m['chunked_over_naive']:.2f} "
          f"({m['chunked_peak_mib']:.0f} MiB vs {m['naive_peak_mib']:.0f} MiB for {m['rows']} rows x {m['vocab']} vocab)")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
