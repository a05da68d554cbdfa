"""Cost of each training method on the same model, prompts and rollouts (issue 12): median step time, peak
memory, vision-encoder work per step and the share of step time spent in attribution, as ratios to `grpo`.

  .venv/bin/python bench/cost.py                 # default + paper shapes (16 frames), under 10 min on 2 cores
  .venv/bin/python bench/cost.py --frames 16 32 64   # the paper shape at 16, 32 and 64 frames
  .venv/bin/python bench/cost.py --quick         # tiny sizes, seconds per process (the test's configuration)

Modes: the trainer's methods `grpo`, `ktr` (ours), `entropy`, `twgrpo`, `tgrpo`, `vppo` (one eval-mode no-grad
pass for the visual dependency, like ktr's attribution with one perturbation), `papo` (no attribution pass, but a
policy pass WITH gradient over twice the rows: the real and the masked input), and `official`: NOT a training
method but Video-KTR's key-token mask computed with the official code's cost structure (`OfficialCostTrainer`
below): the vision tower re-run for every response in every pass (the full, the visually and the temporally
perturbed inputs, and the policy pass), the full-vocabulary logits of every position kept for each of the three
attribution passes together, each response's prompt evaluated on its own (no shared prefix). It computes the same
scores as `ktr` (checked on one rollout: `equivalence` in the JSON).

Every mode runs in a FRESH process (peak memory is per process: VmHWM on CPU, torch.cuda.max_memory_allocated on
a GPU) on one random model of the `small` size's width, the same clips and prompts (one distinct clip per prompt
and step, TRL's sampler seeded alike) and, in the `fixed` rollout configurations, the same responses: TRL's
sampling is replaced by precomputed completion ids of the shape's lengths, identical across modes (T-GRPO's extra
G/2 shuffled responses per prompt are fixed texts too), so the differences are attribution, weights and loss;
video decoding and the processor are included for every mode. The `generate` configuration samples for real
(short responses) to count the vision tower's work during generation.

Shapes (per optimizer step, one process):
  default: today's default run: 4 prompts x G=8, 8 frames of 56x56 (16 video tokens), responses of 32-64 tokens;
  paper-F: 1 prompt x G=8, F frames at 128*28*28 pixels (448x224: 128 video tokens per 2 frames, 1024 at F=16),
           responses of 256-768 tokens (the official script's settings per GPU);
  generate: the default shape with real sampling (16 new tokens).

Vision-encoder work is counted with a forward hook on the vision tower (`model.model.visual`): calls per step and
videos encoded per step (rows of its grid_thw), generation apart. Step time is TRL's `step_time` (first step
excluded); the attribution share is the trainer's `ktr/attribution_seconds` (vppo: `vppo/seconds`) over the step
time.
Writes bench/results/cost.json; the last line is `step_time_ratio=X peak_memory_ratio=Y` (ktr over grpo at the
paper shape, 16 frames).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

MODES = ("grpo", "ktr", "entropy", "twgrpo", "tgrpo", "vppo", "papo", "official")
PAPER_PIXELS = 128 * 28 * 28  # per frame; 448x224 frames fill it exactly


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    prompts: int  # distinct prompts per step
    generations: int  # G
    frames: int
    height: int
    width: int
    min_tokens: int  # response lengths, uniform in [min_tokens, max_tokens]
    max_tokens: int
    rollouts: str = "fixed"  # "fixed" (precomputed completion ids) or "generate" (real sampling)
    max_pixels: int = PAPER_PIXELS


def shapes(frames: list[int], quick: bool) -> dict[str, Shape]:
    if quick:
        return {"quick": Shape("quick", 2, 2, 4, 56, 56, 4, 8),
                "quick-generate": Shape("quick-generate", 2, 2, 4, 56, 56, 4, 4, rollouts="generate")}
    out = {"default": Shape("default", 4, 8, 8, 56, 56, 32, 64)}
    for f in frames:
        out[f"paper-{f}"] = Shape(f"paper-{f}", 1, 8, f, 224, 448, 256, 768)
    out["generate"] = Shape("generate", 4, 8, 8, 56, 56, 16, 16, rollouts="generate")
    return out


# ----------------------------------------------------------------------------------------------------------------
# Shape construction: the model, the clips, the rows


def build_model(root: Path, size: str) -> Path:
    from videoktr.models.factory import create_model_dir

    path = root / f"model-{size}"
    if not (path / "config.json").is_file():
        create_model_dir(path, size=size, seed=0)
    return path


def noise_frames(seed: int, n: int, height: int, width: int) -> np.ndarray:
    """[n, h, w, 3] uint8: a flat colour per frame plus noise (every frame distinct)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(n, 1, 1, 3))
    noise = rng.integers(-30, 30, size=(n, height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def write_clips(root: Path, shape: Shape, count: int) -> list[Path]:
    from videoktr.data.video import write_video

    folder = root / f"clips-{shape.frames}x{shape.height}x{shape.width}"
    paths = []
    for i in range(count):
        path = folder / f"clip{i}.mp4"
        if not path.is_file():
            write_video(path, noise_frames(1000 + i, shape.frames, shape.height, shape.width), fps=2.0)
        paths.append(path)
    return paths


def clip_rows(paths: list[Path]) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": [
        {"type": "video", "video": str(p)}, {"type": "text", "text": "Which colour appeared first?"}]}],
        "solution": "red"} for p in paths]


def length_reward(completions, **kwargs):
    """Varies within a group (advantages non-zero, every response attributed), the same for every mode."""
    return [zlib.crc32(c[0]["content"].encode()) % 1000 / 1000 for c in completions]


def fixed_completions(tokenizer, shape: Shape, step: int, rows: int, seed: int = 0) -> list[list[int]]:
    """Completion ids of `rows` responses for generation call `step`: lengths uniform in the shape's range,
    ordinary tokens, <|im_end|> last. A function of (shape, step, row) only: identical in every mode."""
    from videoktr.models.factory import suppressed_token_ids

    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    banned = set(tokenizer.all_special_ids) | set(suppressed_token_ids(tokenizer)) | {eos, tokenizer.pad_token_id}
    vocab = np.array([i for i in range(len(tokenizer)) if i not in banned and i < len(tokenizer) - 64])
    rng = np.random.default_rng([seed, step, shape.frames, shape.max_tokens])
    out = []
    for _ in range(rows):
        n = int(rng.integers(shape.min_tokens, shape.max_tokens + 1))
        out.append(rng.choice(vocab, size=n - 1).tolist() + [eos])
    return out


# ----------------------------------------------------------------------------------------------------------------
# The official code's cost structure (a benchmark mode, not a training method)


def official_attribute(model, adapter, prompt_ids, prompt_mask, completion_ids, completion_mask, rows, options,
                       generator):
    """Video-KTR's scores computed as the official code computes them: three forwards over every response's own
    (prompt + response) sequence, the unperturbed, visually perturbed and temporally perturbed input, each
    re-running the vision tower on every response's copy of its video and keeping the full-vocabulary logits of
    every position; the three logits tensors are alive together. The perturbations are ours (encoder outputs
    zeroed; temporal groups permuted, one draw per clip in order of first appearance, as `attribute` draws them)
    so that the scores equal ours. Returns an `Attribution` (what `select_key_tokens` takes)."""
    import torch

    from videoktr.attribution import Attribution
    from videoktr.core import logprobs_and_entropy
    from videoktr.models.perturb import permute_groups, temporal_permutation, zero_features

    start = time.perf_counter()
    B, P = prompt_ids.shape
    C = completion_ids.shape[1]
    device = completion_ids.device
    ids = torch.cat([prompt_ids, completion_ids], 1)
    mask = torch.cat([prompt_mask, completion_mask], 1)
    grid = torch.cat([r.grid for r in rows]).to(device)
    groups = adapter.num_groups(grid).tolist()
    perms: dict[str, torch.Tensor] = {}
    for r, g in zip(rows, groups):  # one draw per clip, in order of first appearance
        if r.key not in perms:
            perms[r.key] = temporal_permutation(g, options.temporal_strategy, generator, options.segment_groups)
    extra = {"video_grid_thw": grid}
    if rows[0].seconds_per_group is not None:
        extra["second_per_grid_ts"] = torch.cat([r.seconds_per_group for r in rows]).to(device)
    logits = {}
    for kind in ("full", "visual", "temporal"):
        # every response's copy of the video through the tower, in every pass
        feats = adapter.encode_videos(model, torch.cat([r.pixels for r in rows]).to(device), grid)
        if kind == "visual":
            feats = [zero_features(f) for f in feats]
        elif kind == "temporal":
            feats = [permute_groups(f, g, perms[r.key]) for f, g, r in zip(feats, groups, rows)]
        out = model(input_ids=ids, attention_mask=mask, mm_token_type_ids=adapter.mm_token_type_ids(ids),
                    use_cache=False, **adapter.media_kwargs(feats), **extra)
        logits[kind] = out.logits.float()  # [B, P + C, V]: every position, full vocabulary, kept
    sliced = {k: v[:, P - 1 : P - 1 + C] / options.temperature for k, v in logits.items()}
    logp, entropy = logprobs_and_entropy(sliced["full"], completion_ids)
    cmask = completion_mask.bool()
    scores, valid, perturbed = {}, {}, {}
    for kind in ("visual", "temporal"):
        pert = torch.log_softmax(sliced[kind], -1).gather(-1, completion_ids[..., None]).squeeze(-1)
        perturbed[kind] = pert
        diff = logp - pert
        scores[kind] = diff if options.signed else diff.abs()
        valid[kind] = cmask.clone()
    scores["entropy"], valid["entropy"] = entropy.float(), cmask.clone()
    scores = {s: scores[s] for s in options.signals}
    valid = {s: valid[s] for s in options.signals}
    del logits, sliced
    return Attribution(scores, valid, logp, entropy, time.perf_counter() - start, [perms[r.key] for r in rows],
                       perturbed)


def official_trainer_class():
    """VideoGRPOTrainer with the official code's cost structure (method "ktr" scores, options at their defaults:
    visual zero, temporal shuffle, |Δ log p|, per-response top r)."""
    import torch

    from videoktr.attribution import select_key_tokens
    from videoktr.core import logprobs_and_entropy
    from videoktr.train.trainer import VideoGRPOTrainer

    class OfficialCostTrainer(VideoGRPOTrainer):
        def _sampling_encoder(self):
            # the official scripts sample with HF generate on every row's pixels: each copy of a video is encoded
            # (the trainer's own sampling encodes each distinct clip once: models.adapters.encode_each_item_once)
            import contextlib

            return contextlib.nullcontext()

        def _encode_media(self, model, rows):
            # the official code passes every row's pixel values to the model: each copy of a video is encoded
            rows = [None if r is None else dataclasses.replace(r, key=f"{r.key}#row{i}") for i, r in enumerate(rows)]
            return super()._encode_media(model, rows)

        def _forward_logps(self, model, input_ids, attention_mask, logits_to_keep, rows, compute_entropy):
            # TRL 0.16's per-token log-probs: the logits of every position, then a selective log-softmax
            media = self._encode_media(model, rows)
            kwargs = dict(input_ids=input_ids, attention_mask=attention_mask,
                          mm_token_type_ids=self.adapter.mm_token_type_ids(input_ids),
                          **media.forward_kwargs(self.adapter, self.accelerator.device))
            with self.accelerator.autocast():
                logits = model(**kwargs).logits[:, -logits_to_keep - 1 : -1] / self.temperature
                logps, entropy = logprobs_and_entropy(logits, input_ids[:, -logits_to_keep:])
            return logps, (entropy if compute_entropy else None), media

        def _key_token_weights(self, batch):
            start = time.perf_counter()
            completion_mask = batch["completion_mask"]
            B = completion_mask.shape[0]
            active = batch["advantages"].reshape(B, -1).ne(0).any(-1)
            if not self.skipping_is_exact():
                active = torch.ones_like(active)
            weights = torch.zeros(completion_mask.shape, dtype=torch.float32, device=completion_mask.device)
            idx = active.nonzero().squeeze(-1).tolist()
            if not idx:
                return weights
            pick = torch.tensor(idx, device=completion_mask.device)
            with self._scoring() as unwrapped:
                attribution = official_attribute(
                    unwrapped, self.adapter, batch["prompt_ids"][pick], batch["prompt_mask"][pick],
                    batch["completion_ids"][pick], completion_mask[pick], [batch["videos"][i] for i in idx],
                    self.attribution_options, self._attr_generator)
            groups = batch["prompt_group"][pick] if self.selection_options.scope in ("group", "quantile") else None
            sub, _, stats = select_key_tokens(attribution, self.selection_options, group_ids=groups)
            weights[pick] = sub
            for k, v in stats.items():
                self._metrics["train"][f"ktr/{k}"].append(v)
            self._metrics["train"]["ktr/attribution_seconds"].append(time.perf_counter() - start)
            return weights

    return OfficialCostTrainer


# ----------------------------------------------------------------------------------------------------------------
# One mode in a fresh process


def vm_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0


class EncoderCounter:
    """Forward pre-hook on the vision tower: calls and videos (grid rows) encoded, generation apart."""

    def __init__(self, visual):
        self.phase = "train"
        self.calls = {"generation": 0, "train": 0}
        self.videos = {"generation": 0, "train": 0}
        visual.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        self.calls[self.phase] += 1
        self.videos[self.phase] += 0 if grid is None else int(grid.shape[0])


def make_trainer(mode: str, shape: Shape, model_dir: Path, rows: list[dict], steps: int, output_dir: str):
    import torch
    from datasets import Dataset
    from trl import GRPOConfig

    from videoktr.models.factory import load_model, load_processor, suppressed_token_ids
    from videoktr.train.trainer import VideoGRPOTrainer, VideoOptions

    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    model = load_model(model_dir, dtype="float32")
    processor = load_processor(model_dir, min_pixels=56 * 56, max_pixels=shape.max_pixels)
    args = GRPOConfig(output_dir=output_dir, per_device_train_batch_size=shape.prompts * shape.generations,
                      num_generations=shape.generations, max_completion_length=shape.max_tokens, max_steps=steps,
                      use_cpu=not cuda, report_to=[], logging_steps=1, save_strategy="no", learning_rate=1e-4,
                      bf16=False, gradient_checkpointing=False, use_bias_correction_kl=False, beta=0.0,
                      temperature=1.0, generation_kwargs={"suppress_tokens": suppressed_token_ids(processor.tokenizer)},
                      seed=0, disable_tqdm=True)
    cls = official_trainer_class() if mode == "official" else VideoGRPOTrainer
    return cls(model=model, processing_class=processor, reward_funcs=[length_reward], args=args,
               train_dataset=Dataset.from_list(rows), method="ktr" if mode == "official" else mode,
               video=VideoOptions(fps=2.0, min_frames=4, max_frames=max(16, shape.frames)))


def child(mode: str, shape: Shape, model_dir: Path, clips: list[Path], steps: int) -> dict:
    import torch

    from videoktr.models.lora import base_model

    torch.set_num_threads(int(os.environ.get("VIDEOKTR_BENCH_THREADS", "2")))
    torch.set_flush_denormal(True)  # CPU: denormal floats of a random model's drifting weights take slow paths
    trainer = make_trainer(mode, shape, model_dir, clip_rows(clips), steps, tempfile.mkdtemp(prefix=f"cost-{mode}-"))
    core = base_model(trainer.accelerator.unwrap_model(trainer.model))
    counter = EncoderCounter(core.model.visual)
    tokenizer = trainer.processing_class.tokenizer
    generated = {"calls": 0}
    generation_seconds: dict[int, float] = {}  # per step: sampling (T-GRPO's extra responses included)

    original = trainer._generate_single_turn

    def generate(prompt_ids, *args, **kwargs):
        counter.phase = "generation"
        start = time.perf_counter()
        try:
            if shape.rollouts == "generate":
                return original(prompt_ids, *args, **kwargs)
            generated["calls"] += 1
            fixed = fixed_completions(tokenizer, shape, generated["calls"], len(prompt_ids))
            # the sampling cost paid as real sampling pays it: HF generation of the batch until its longest
            # response ends (the fixed length), the video encoded as TRL passes it; the samples are discarded
            config = trainer.generation_config
            saved = config.min_new_tokens, config.max_new_tokens
            config.min_new_tokens = config.max_new_tokens = max(map(len, fixed))
            try:
                original(prompt_ids, *args, **kwargs)
            finally:
                config.min_new_tokens, config.max_new_tokens = saved
            return fixed, None
        finally:
            counter.phase = "train"
            step = trainer.state.global_step
            generation_seconds[step] = generation_seconds.get(step, 0.0) + time.perf_counter() - start

    trainer._generate_single_turn = generate
    original_shuffled = trainer._sample_shuffled_hf

    def sample_shuffled(groups, shuffled, per):  # T-GRPO's extra responses: sampling like the main rollouts
        counter.phase = "generation"
        start = time.perf_counter()
        try:
            if shape.rollouts == "generate":
                return original_shuffled(groups, shuffled, per)
            ids = fixed_completions(tokenizer, shape, 10_000 + trainer.state.global_step, len(groups) * per)
            config = trainer.generation_config
            saved = config.min_new_tokens, config.max_new_tokens
            config.min_new_tokens = config.max_new_tokens = max(map(len, ids))
            try:
                original_shuffled(groups, shuffled, per)  # its cost, as in `generate`; the samples are discarded
            finally:
                config.min_new_tokens, config.max_new_tokens = saved
            return tokenizer.batch_decode(ids, skip_special_tokens=True)
        finally:
            counter.phase = "train"
            step = trainer.state.global_step
            generation_seconds[step] = generation_seconds.get(step, 0.0) + time.perf_counter() - start

    trainer._sample_shuffled_hf = sample_shuffled
    from transformers import TrainerCallback

    cpu_seconds: list[float] = []  # process CPU time per step: far less sensitive than wall time to other load

    class CpuClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            cpu_seconds.append(time.process_time() - self.start)

    trainer.add_callback(CpuClock())
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here: training only (model already loaded)
    base_kib = vm_kib("VmRSS")
    trainer.train()
    logs = [h for h in trainer.state.log_history if "step_time" in h]
    times = [h["step_time"] for h in logs][1:]
    gen = [generation_seconds.get(step, 0.0) for step in range(len(logs))][1:]
    training = [t - g for t, g in zip(times, gen)]  # the step without sampling
    attribution = [h.get("ktr/attribution_seconds", h.get("vppo/seconds", 0.0)) for h in logs][1:]
    n = max(1, len(logs))
    if cuda:
        peak, baseline, kind = torch.cuda.max_memory_allocated(), 0, "cuda_max_allocated"
    else:
        peak, baseline, kind = vm_kib("VmHWM") * 1024, base_kib * 1024, "VmHWM"
    lengths = [h.get("completions/mean_length") for h in logs]
    return {"mode": mode, "shape": shape.name, "steps": len(logs), "median_step_s": statistics.median(times),
            "step_times": times, "median_step_cpu_s": statistics.median(cpu_seconds[1:]),
            "step_cpu_seconds": cpu_seconds[1:], "median_generation_s": statistics.median(gen),
            "median_training_s": statistics.median(training), "attribution_s": statistics.median(attribution),
            "attribution_share": statistics.median(a / t for a, t in zip(attribution, times)),
            "attribution_share_of_training": statistics.median(a / t for a, t in zip(attribution, training)),
            "peak_bytes": peak, "baseline_bytes": baseline, "peak_kind": kind,
            "encoder_calls_per_step": counter.calls["train"] / n,
            "videos_encoded_per_step": counter.videos["train"] / n,
            "generation_encoder_calls_per_step": counter.calls["generation"] / n,
            "generation_videos_encoded_per_step": counter.videos["generation"] / n,
            "unique_videos_per_step": shape.prompts, "responses_per_step": shape.prompts * shape.generations,
            "mean_completion_tokens": statistics.mean(x for x in lengths if x is not None) if any(lengths) else None,
            "device": "cuda" if cuda else "cpu", "threads": torch.get_num_threads()}


def equivalence(shape: Shape, model_dir: Path, clips: list[Path]) -> dict:
    """`official_attribute` and `attribute` (the trainer's call) on one rollout: scores and masks compared."""
    import torch

    from videoktr.attribution import AttributionOptions, SelectionOptions, attribute, select_key_tokens
    from videoktr.models.factory import load_model, load_processor
    from videoktr.train.trainer import encode_prompts
    from videoktr.models.adapters import adapter_for
    from videoktr.data.video import read_video

    torch.set_num_threads(int(os.environ.get("VIDEOKTR_BENCH_THREADS", "2")))
    model = load_model(model_dir, dtype="float32").eval()
    processor = load_processor(model_dir, min_pixels=56 * 56, max_pixels=shape.max_pixels)
    adapter = adapter_for(model)
    prompts = [r["prompt"] for r in clip_rows(clips[: shape.prompts]) for _ in range(shape.generations)]
    enc = encode_prompts(processor, adapter, prompts,
                         lambda p: read_video(p, target_fps=2.0, min_frames=4, max_frames=max(16, shape.frames)))
    pad = processor.tokenizer.pad_token_id
    P = max(len(p) for p in enc.prompt_ids)
    prompt_ids = torch.full((len(prompts), P), pad)
    prompt_mask = torch.zeros((len(prompts), P), dtype=torch.long)
    for b, p in enumerate(enc.prompt_ids):
        prompt_ids[b, P - len(p):], prompt_mask[b, P - len(p):] = torch.tensor(p), 1
    comps = fixed_completions(processor.tokenizer, shape, 1, len(prompts))
    C = max(map(len, comps))
    completion_ids = torch.full((len(prompts), C), pad)
    completion_mask = torch.zeros((len(prompts), C), dtype=torch.long)
    for b, c in enumerate(comps):
        completion_ids[b, : len(c)], completion_mask[b, : len(c)] = torch.tensor(c), 1
    rows = enc.rows
    options = AttributionOptions()
    with torch.no_grad():
        uniq = {}
        for r in rows:
            uniq.setdefault(r.key, r)
        feats = dict(zip(uniq, adapter.encode_videos(model, torch.cat([r.pixels for r in uniq.values()]),
                                                     torch.cat([r.grid for r in uniq.values()]))))
        ours = attribute(model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                         video_grid_thw=torch.cat([r.grid for r in rows]),
                         second_per_grid_ts=torch.cat([r.seconds_per_group for r in rows]),
                         video_features=[feats[r.key] for r in rows], video_keys=[r.key for r in rows],
                         options=options, generator=torch.Generator().manual_seed(7))
        theirs = official_attribute(model, adapter, prompt_ids, prompt_mask, completion_ids, completion_mask, rows,
                                    options, torch.Generator().manual_seed(7))
    selection = SelectionOptions()
    w_ours, m_ours, _ = select_key_tokens(ours, selection)
    w_theirs, m_theirs, _ = select_key_tokens(theirs, selection)
    valid = completion_mask.bool()
    out = {"shape": shape.name, "responses": len(prompts), "tokens": int(valid.sum())}
    for s in ours.scores:
        out[f"max_abs_score_diff_{s}"] = float((ours.scores[s] - theirs.scores[s])[valid].abs().max())
        out[f"mask_agreement_{s}"] = float((m_ours[s] == m_theirs[s])[valid].float().mean())
    out["weights_agreement"] = float((w_ours == w_theirs)[valid].float().mean())
    out["permutations_equal"] = all(torch.equal(a, b) for a, b in zip(ours.permutations, theirs.permutations))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Parent: one fresh process per (shape, mode); ratios; JSON and Markdown


def run_child(args, task: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(task)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{task} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(results: dict) -> str:
    lines = []
    for name, entry in results["shapes"].items():
        s = entry["shape"]
        lines.append(f"\n### {name}: {s['prompts']} prompt(s) x G={s['generations']}, {s['frames']} frames of "
                     f"{s['width']}x{s['height']}, responses {s['min_tokens']}-{s['max_tokens']} tokens, "
                     f"{s['rollouts']} rollouts\n")
        lines.append("| mode | step CPU s | x grpo | step s | x grpo | without sampling s | x grpo | peak MiB | x grpo | peak - start MiB | "
                     "x grpo | encoder calls/step (videos), training passes | in sampling | attribution share of "
                     "step (of step without sampling) |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for mode, r in entry["modes"].items():
            ratio = entry["ratios"][mode]
            lines.append(
                f"| {mode} | {r['median_step_cpu_s']:.3f} | {ratio['step_cpu_time']:.3f} | {r['median_step_s']:.3f} | {ratio['step_time']:.3f} | {r['median_training_s']:.3f} | "
                f"{ratio['training_time']:.3f} | {r['peak_bytes'] / 2**20:.0f} | {ratio['peak_memory']:.3f} | "
                f"{(r['peak_bytes'] - r['baseline_bytes']) / 2**20:.0f} | {ratio['peak_increment']:.3f} | "
                f"{r['encoder_calls_per_step']:g} ({r['videos_encoded_per_step']:g}) | "
                f"{r['generation_encoder_calls_per_step']:g} ({r['generation_videos_encoded_per_step']:g}) | "
                f"{r['attribution_share']:.1%} ({r['attribution_share_of_training']:.1%}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[16], help="frames of the paper shape (16 32 64)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--shapes", nargs="+", default=None, help="shape names to run (default: all)")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per process (the first is excluded)")
    parser.add_argument("--quick", action="store_true", help="tiny model and sizes (the test's configuration)")
    parser.add_argument("--work-dir", default="", help="where the model and clips are written (default: a temp dir)")
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent / "results" / "cost.json"))
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        task = json.loads(args.child)
        shape = Shape(**task["shape"])
        clips = [Path(p) for p in task["clips"]]
        if task["mode"] == "equivalence":
            print(json.dumps(equivalence(shape, Path(task["model"]), clips)))
        else:
            print(json.dumps(child(task["mode"], shape, Path(task["model"]), clips, task["steps"])))
        return

    start = time.time()
    chosen = shapes(args.frames, args.quick)
    if args.shapes:
        unknown = sorted(set(args.shapes) - set(chosen))
        if unknown:
            parser.error(f"--shapes: unknown {unknown}; with these --frames the shapes are {sorted(chosen)}")
        chosen = {k: v for k, v in chosen.items() if k in args.shapes}
    root = Path(args.work_dir or tempfile.mkdtemp(prefix="videoktr-cost-"))
    model_dir = build_model(root, "tiny" if args.quick else "small")
    modes = ["grpo"] + [m for m in args.modes if m != "grpo"]
    results = {"model": json.loads((model_dir / "videoktr_model.json").read_text()), "steps": args.steps,
               "modes": modes, "shapes": {}}
    for name, shape in chosen.items():
        clips = write_clips(root, shape, shape.prompts * args.steps)
        base = {"shape": dataclasses.asdict(shape), "model": str(model_dir), "clips": [str(c) for c in clips],
                "steps": args.steps}
        entry = {"shape": dataclasses.asdict(shape), "modes": {}}
        for mode in modes:
            r = run_child(args, {**base, "mode": mode})
            entry["modes"][mode] = r
            print(f"[{time.time() - start:6.0f}s] {name:>10} {mode:>8}: step {r['median_step_s']:.3f} s "
                  f"(CPU {r['median_step_cpu_s']:.3f} s) "
                  f"({r['median_training_s']:.3f} s without sampling), peak "
                  f"{r['peak_bytes'] / 2**20:.0f} MiB (+{(r['peak_bytes'] - r['baseline_bytes']) / 2**20:.0f}), "
                  f"encoder {r['encoder_calls_per_step']:g} calls / {r['videos_encoded_per_step']:g} videos per step "
                  f"(+{r['generation_videos_encoded_per_step']:g} videos in generation), attribution "
                  f"{r['attribution_share']:.1%}", flush=True)
        g = entry["modes"]["grpo"]
        entry["ratios"] = {m: {"step_time": r["median_step_s"] / g["median_step_s"],
                               "training_time": r["median_training_s"] / g["median_training_s"],
                               "step_cpu_time": r["median_step_cpu_s"] / g["median_step_cpu_s"],
                               "peak_memory": r["peak_bytes"] / g["peak_bytes"],
                               "peak_increment": (r["peak_bytes"] - r["baseline_bytes"])
                               / max(1, g["peak_bytes"] - g["baseline_bytes"])}
                           for m, r in entry["modes"].items()}
        if "official" in modes and shape.rollouts == "fixed":
            entry["equivalence"] = run_child(args, {**base, "mode": "equivalence"})
            print(f"           official vs ktr on one rollout: {entry['equivalence']}", flush=True)
        results["shapes"][name] = entry
    results["seconds"] = time.time() - start
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    table = markdown(results)
    out.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {out} ({results['seconds']:.0f} s)")
    headline = next((results["shapes"][k] for k in ("paper-16", "quick") if k in results["shapes"]), None)
    if headline is None:
        headline = next(iter(results["shapes"].values()))
    if "ktr" in headline["ratios"]:
        r = headline["ratios"]["ktr"]
        print(f"step_time_ratio={r['step_time']:.3f} peak_memory_ratio={r['peak_memory']:.3f}")


if __name__ == "__main__":
    main()
