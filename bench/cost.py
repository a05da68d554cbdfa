"""Cost of each training method on the same model, prompts and rollouts (issues 12 and 21): step time (CPU and
wall), the step without sampling, peak memory, vision-encoder work per step and the attribution's seconds, as
per-step ratios to `grpo`.

  .venv/bin/python bench/cost.py                 # default + paper shapes (16 frames), 3 rounds x 3 steps per mode
  .venv/bin/python bench/cost.py --shapes paper-16 --modes grpo ktr --rounds 4 --steps 3
  .venv/bin/python bench/cost.py --frames 16 32 64   # the paper shape at 16, 32 and 64 frames
  .venv/bin/python bench/cost.py --quick         # tiny sizes, seconds per process (the test's configuration)

Modes: `ktr-rollout` (ktr with ktr.select_in_loss off: its mask chosen at the rollout by a pass that also evaluates
the unperturbed input), the trainer's methods `grpo`, `ktr` (ours), `entropy`, `twgrpo`, `tgrpo`, `vppo` (one eval-mode no-grad
pass for the visual dependency, like ktr's attribution with one perturbation), `papo` (no attribution pass, but a
policy pass WITH gradient over twice the rows: the real and the masked input), and `official`: NOT a training
method but Video-KTR's key-token mask computed with the official code's cost structure (`OfficialCostTrainer`
below): the vision tower re-run for every response in every pass (the full, the visually and the temporally
perturbed inputs, and the policy pass), the full-vocabulary logits of every position kept for each of the three
attribution passes together, each response's prompt evaluated on its own (no shared prefix). It computes the same
scores as `ktr` (checked on one rollout: `equivalence` in the JSON).

How the ratios are made to hold on a machine shared with other jobs:
- Same rollouts. In the `fixed` rollout configurations every mode samples the SAME responses: HF generation runs
  for real (prefill, one decoding step per token until every row has emitted <|im_end|>, the full-vocabulary head
  each step) with a logits processor that leaves only the precomputed token possible at each position, so the
  sampling cost is real and the samples are identical in every mode (T-GRPO's extra G/2 shuffled responses per
  prompt are forced alike). The responses of step i are a function of (shape, i) only. The child checks that
  generate returned exactly the forced responses, and the parent FAILS the bench (exit 1) unless every mode, in
  every round, sampled the same number of tokens in the same decoding steps and trained on the same prompts,
  clips and responses (a digest per step) as grpo.
- Rounds. Every mode runs once per round, each time in a FRESH process (peak memory is per process: VmHWM on
  CPU, torch.cuda.max_memory_allocated on a GPU), in an order rotated each round, so that drift in the machine's
  load hits every mode alike; each process trains `--warmup` steps (left out) then `--steps` measured steps.
- Per-step ratios. Step i of a mode is divided by step i of grpo in the same round (the same rollouts, close in
  time); the ratios are summarised by their median and quartiles. Process CPU time (`time.process_time`) is
  reported beside wall time: another job on the machine slows wall time, much less CPU time.

Shapes (per optimizer step, one process):
  default: today's default run: 4 prompts x G=8, 8 frames of 56x56 (16 video tokens), responses of 32-64 tokens;
  paper-F: 1 prompt x G=8, F frames at 128*28*28 pixels (448x224: 128 video tokens per 2 frames, 1024 at F=16),
           responses of 256-768 tokens (the official script's settings per GPU);
  generate: the default shape with real sampling (16 new tokens), to count the vision tower's work in sampling.

Vision-encoder work is counted with a forward hook on the vision tower (`model.model.visual`): calls per step and
videos encoded per step (rows of its grid_thw), sampling apart. "Weights" is the time of the trainer's token
weights per rollout (`_rollout_weights`: the attribution pass and the selection for ktr/entropy/official, the
TW-GRPO pass). Writes bench/results/cost.json and .md; the last line is `step_time_ratio=X peak_memory_ratio=Y
training_time_ratio=Z spread=S in_step_ratio=I in_step_training_ratio=J` (ktr over grpo at the paper shape, 16
frames: medians of the per-step CPU-time ratios with and without sampling, of the per-round peak-memory ratios,
the quartile spread of the first, and the in-step ratios: each ktr step over the same step less its token-weights
pass, with and without sampling, which do not compare processes run minutes apart).
"""

from __future__ import annotations

import argparse
import contextlib
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

MODES = ("grpo", "ktr", "ktr-rollout", "entropy", "twgrpo", "tgrpo", "vppo", "papo", "official")
METHOD_MODES = ("grpo", "ktr", "entropy", "twgrpo", "tgrpo", "vppo", "papo")  # modes that are the trainer's methods
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
    rollouts: str = "fixed"  # "fixed" (the same responses forced in every mode) or "generate" (real sampling)
    max_pixels: int = PAPER_PIXELS
    model: str = "small"  # the model size (models.factory.SIZES, or "7b-prop": `proportional_model_dir`)
    optional: bool = False  # run only when named by --shapes
    lora_r: int = 0  # LoRA rank on the LM (0: full training)


def shapes(frames: list[int], quick: bool) -> dict[str, Shape]:
    if quick:
        return {"quick": Shape("quick", 2, 2, 4, 56, 56, 4, 8, model="tiny"),
                "quick-generate": Shape("quick-generate", 2, 2, 4, 56, 56, 4, 4, rollouts="generate", model="tiny")}
    out = {"default": Shape("default", 4, 8, 8, 56, 56, 32, 64)}
    for f in frames:
        out[f"paper-{f}"] = Shape(f"paper-{f}", 1, 8, f, 224, 448, 256, 768)
    out["generate"] = Shape("generate", 4, 8, 8, 56, 56, 16, 16, rollouts="generate")
    # Qwen2.5-VL-7B's widths, heads and vocabulary with 2 LM layers and 2 vision blocks, LoRA r=64 (full training
    # of its 1.1B-parameter embedding and head would add 13 GB of fp32 gradients and AdamW states to the 6 GB of
    # weights), short sequences: 4 frames of 112x112 (32 video tokens), G=4, responses of 16-32 tokens
    out["7b-prop"] = Shape("7b-prop", 1, 4, 4, 112, 112, 16, 32, model="7b-prop", optional=True, lora_r=64)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Shape construction: the model, the clips, the rows


def build_model(root: Path, size: str) -> Path:
    from videoktr.models.factory import create_model_dir

    path = root / f"model-{size}"
    if not (path / "config.json").is_file():
        if size == "7b-prop":
            proportional_model_dir(path, layers=2, vision_depth=2)
        else:
            create_model_dir(path, size=size, seed=0)
    return path


# Qwen2.5-VL-7B-Instruct's published dimensions (its config.json)
QWEN25_VL_7B = {"hidden_size": 3584, "num_layers": 28, "num_heads": 28, "num_kv_heads": 4,
                "intermediate_size": 18944, "vocab_size": 152064, "vision_depth": 32, "vision_hidden": 1280,
                "vision_heads": 16, "vision_intermediate": 3420, "fullatt_block_indexes": (7, 15, 23, 31)}


def model_config(tokenizer, dims: dict, layers: int | None = None, vision_depth: int | None = None):
    """A Qwen2.5-VL config with `dims` (optionally fewer LM layers / vision blocks), token ids from `tokenizer`;
    the vocabulary is dims["vocab_size"] (beyond the tokenizer's own tokens: never sampled, but in every LM-head
    pass, as the real model's)."""
    from videoktr.models.factory import ModelSize, build_config

    layers = layers or dims["num_layers"]
    vision_depth = vision_depth or dims["vision_depth"]
    size = ModelSize(vocab_size=dims["vocab_size"], hidden_size=dims["hidden_size"], num_layers=layers,
                     num_heads=dims["num_heads"], num_kv_heads=dims["num_kv_heads"],
                     intermediate_size=dims["intermediate_size"], vision_depth=vision_depth,
                     vision_hidden=dims["vision_hidden"], vision_heads=dims["vision_heads"],
                     vision_intermediate=dims["vision_intermediate"], max_pixels=PAPER_PIXELS, min_pixels=56 * 56)
    config = build_config(size, tokenizer)
    if dims["vocab_size"] < len(tokenizer):
        raise ValueError(f"vocabulary {dims['vocab_size']} is smaller than the tokenizer's {len(tokenizer)}")
    config.text_config.vocab_size = dims["vocab_size"]
    config.vision_config.fullatt_block_indexes = ([i for i in dims["fullatt_block_indexes"] if i < vision_depth]
                                                  or [vision_depth - 1])
    return config


def proportional_model_dir(path: Path, layers: int, vision_depth: int, dims: dict = QWEN25_VL_7B) -> Path:
    """A random-weight model directory with `dims`' widths, heads and vocabulary and `layers` LM layers, `vision_depth`
    vision blocks (the built-in tokenizer and processor), loadable with models.factory.load_model."""
    import torch
    import transformers

    from videoktr.models.factory import DEFAULT_CORPUS, build_processor, train_tokenizer

    tokenizer = train_tokenizer(DEFAULT_CORPUS, 1024)
    processor = build_processor(tokenizer, 56 * 56, PAPER_PIXELS)
    config = model_config(tokenizer, dims, layers, vision_depth)
    torch.manual_seed(0)
    model = transformers.Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    (path / "videoktr_model.json").write_text(json.dumps({
        "family": "qwen2_5_vl", "size": "7b-prop", "layers": layers, "vision_depth": vision_depth, "dims": dims,
        "parameters": sum(p.numel() for p in model.parameters())}, indent=2))
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


class Clock:
    """Wall and process CPU seconds per (part, step), summed over the part's calls in that step. `sync` (e.g.
    torch.cuda.synchronize) runs at both ends of every measurement so that queued GPU work is counted."""

    def __init__(self, sync=None):
        self.seconds: dict[tuple[str, int], list[float]] = {}
        self.sync = sync or (lambda: None)
        self.current = "step_rest"  # the part being measured now (`PassMeter` charges operators to it)

    @contextlib.contextmanager
    def part(self, name: str, step: int):
        self.sync()
        wall, cpu = time.perf_counter(), time.process_time()
        outer, self.current = self.current, name
        try:
            yield
        finally:
            self.current = outer
            self.sync()
            acc = self.seconds.setdefault((name, step), [0.0, 0.0])
            acc[0] += time.perf_counter() - wall
            acc[1] += time.process_time() - cpu

    def get(self, name: str, step: int) -> tuple[float, float]:
        wall, cpu = self.seconds.get((name, step), (0.0, 0.0))
        return wall, cpu


def forced_tokens_processor(targets: list[list[int]], prompt_length: int, filler: int):
    """A logits processor that leaves only row b's token t of `targets` possible at new position t: HF
    generation then samples exactly those responses, paying real sampling's cost (prefill, one decoding step per
    token until every row has emitted its <|im_end|>, the full-vocabulary head at each step)."""
    import torch
    from transformers import LogitsProcessor

    longest = max(map(len, targets))
    table = torch.full((len(targets), longest), filler, dtype=torch.long)
    for b, t in enumerate(targets):
        table[b, : len(t)] = torch.tensor(t, dtype=torch.long)

    class ForcedTokens(LogitsProcessor):
        def __call__(self, input_ids, scores):
            t = input_ids.shape[1] - prompt_length
            if t >= longest:
                return scores
            out = torch.full_like(scores, float("-inf"))
            return out.scatter_(1, table[:, t : t + 1].to(scores.device), 0.0)

    return ForcedTokens()


class ForcedSampling:
    """Wraps the model's `generate`: while `targets(ids)` is active, the next generate call samples exactly `ids`
    (one list per row, each ending with <|im_end|>); every call's new tokens are counted (up to each row's first
    stop token) and, when forced, checked against the targets."""

    def __init__(self, model, stop_ids: list[int]):
        self.original = model.generate
        self.stop = set(stop_ids)
        self.pending: list[list[int]] | None = None
        self.calls: list[dict] = []  # per generate call: rows, decoding steps, tokens sampled, forced or not
        model.generate = self._generate

    @contextlib.contextmanager
    def targets(self, ids: list[list[int]]):
        self.pending = ids
        try:
            yield
            if self.pending is not None:
                raise RuntimeError("the trainer sampled without calling the model's generate: the forced responses "
                                   "were not used (the bench's sampling patch no longer reaches TRL's HF path)")
        finally:
            self.pending = None

    def _generate(self, *args, **kwargs):
        from transformers import LogitsProcessorList

        prompt_length = kwargs["input_ids"].shape[1]
        targets, self.pending = self.pending, None
        if targets is not None:
            if len(targets) != kwargs["input_ids"].shape[0]:
                raise RuntimeError(f"{len(targets)} forced responses for {kwargs['input_ids'].shape[0]} rows")
            kwargs["logits_processor"] = LogitsProcessorList(
                [forced_tokens_processor(targets, prompt_length, next(iter(self.stop)))])
        out = self.original(*args, **kwargs)
        new = out[:, prompt_length:].tolist()
        sampled = []
        for row in new:
            end = next((i + 1 for i, t in enumerate(row) if t in self.stop), len(row))
            sampled.append(row[:end])
        if targets is not None and sampled != targets:
            bad = next(b for b, (s, t) in enumerate(zip(sampled, targets)) if s != t)
            raise RuntimeError(f"generate did not sample the forced response of row {bad}: {len(sampled[bad])} "
                               f"tokens for {len(targets[bad])}")
        self.calls.append({"rows": len(new), "decoding_steps": len(new[0]) if new else 0,
                           "tokens": sum(map(len, sampled)), "forced": targets is not None})
        return out


def digest(*parts) -> str:
    """A short hash of tensors and strings: what the trainer trained on at one step."""
    import hashlib

    h = hashlib.sha256()
    for p in parts:
        if hasattr(p, "detach"):
            h.update(str(tuple(p.shape)).encode())
            h.update(p.detach().to("cpu").contiguous().numpy().tobytes())
        else:
            h.update(repr(p).encode())
    return h.hexdigest()[:16]


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
    peft = None
    if shape.lora_r:
        from videoktr.models.lora import LoraOptions, peft_config

        # no dropout, as the 7B recipe's full fine-tune has none: ktr then takes its default path (select_in_loss)
        peft = peft_config(model, LoraOptions(r=shape.lora_r, dropout=0.0))
    # ktr-rollout: ktr with its mask chosen at the rollout (the unperturbed input evaluated by attribution), as
    # before ktr.select_in_loss; official computes its own passes at the rollout
    return cls(model=model, peft_config=peft, processing_class=processor, reward_funcs=[length_reward], args=args,
               train_dataset=Dataset.from_list(rows), method=mode if mode in METHOD_MODES else "ktr",
               select_in_loss=mode not in ("ktr-rollout", "official"),
               video=VideoOptions(fps=2.0, min_frames=4, max_frames=max(16, shape.frames)))


def bench_threads() -> int:
    return int(os.environ.get("VIDEOKTR_BENCH_THREADS") or os.environ.get("OMP_NUM_THREADS") or 2)


class Instrumented:
    """A trainer measured as the bench measures it: its sampling forced to the shape's fixed responses (checked),
    and per step the wall and CPU seconds of the step, of its sampling and of its token weights
    (`_rollout_weights`: attribution and selection), the tokens sampled (T-GRPO's shuffled ones apart) and what
    was trained on (a digest of prompts, clips and responses). Vision-tower calls are counted, sampling apart."""

    def __init__(self, trainer, shape: Shape, sync=None):
        from transformers import TrainerCallback

        from videoktr.models.lora import base_model

        self.trainer = trainer
        core = base_model(trainer.accelerator.unwrap_model(trainer.model))
        self.counter = EncoderCounter(core.model.visual)
        self.sampling = ForcedSampling(core, trainer.eos_token_ids)
        self.clock = Clock(sync)
        self.trained: dict[int, dict] = {}  # per step: digest and token counts of the rollouts trained on
        self.extra: dict[int, list[str]] = {}  # T-GRPO: the texts of its shuffled responses per step
        self.batches: list[dict] = []  # the rollouts whose token weights were computed (kept: `keep_batches`)
        self.keep_batches = 0
        tokenizer = trainer.processing_class.tokenizer
        counter, sampling, clock, trained, extra = self.counter, self.sampling, self.clock, self.trained, self.extra

        def step_now() -> int:
            return trainer.state.global_step

        self._step_now = step_now

        @contextlib.contextmanager
        def sampling_phase(kind: str):
            counter.phase = "generation"
            calls = len(sampling.calls)
            try:
                with clock.part("sampling", step_now()):
                    yield
            finally:
                counter.phase = "train"
                for c in sampling.calls[calls:]:
                    acc = trained.setdefault(step_now(), {}).setdefault(kind, [0, 0])
                    acc[0] += c["tokens"]
                    acc[1] += c["decoding_steps"] * c["rows"]

        original = trainer._generate_single_turn

        def generate(prompt_ids, *args, **kwargs):
            with sampling_phase("sampled"):
                if shape.rollouts == "generate":
                    return original(prompt_ids, *args, **kwargs)
                fixed = fixed_completions(tokenizer, shape, step_now(), len(prompt_ids))
                with sampling.targets(fixed):
                    ids, logprobs = original(prompt_ids, *args, **kwargs)
                if [list(x) for x in ids] != fixed:
                    raise RuntimeError(f"step {step_now()}: TRL's completion ids differ from the forced responses")
                return ids, logprobs

        trainer._generate_single_turn = generate
        original_shuffled = trainer._sample_shuffled_hf

        def sample_shuffled(groups, shuffled, per):  # T-GRPO's extra responses on shuffled frames, forced alike
            with sampling_phase("sampled_extra"):
                if shape.rollouts == "generate":
                    return original_shuffled(groups, shuffled, per)
                ids = fixed_completions(tokenizer, shape, 10_000 + step_now(), len(groups) * per)
                with sampling.targets(ids):
                    texts = original_shuffled(groups, shuffled, per)
                if texts != tokenizer.batch_decode(ids, skip_special_tokens=True):
                    raise RuntimeError(f"step {step_now()}: T-GRPO's shuffled responses differ from the forced ones")
                extra[step_now()] = texts
                return texts

        trainer._sample_shuffled_hf = sample_shuffled
        original_rollouts = trainer._generate_and_score_completions

        def rollouts(inputs):
            out = original_rollouts(inputs)
            mask = out["completion_mask"]
            keys = [None if r is None else Path(r.key).name for r in out["videos"]]
            entry = trained.setdefault(step_now(), {})
            entry.update(digest=digest(out["prompt_ids"], out["prompt_mask"], out["completion_ids"], mask, keys),
                         responses=int(mask.shape[0]), tokens_trained=int(mask.sum()))
            return out

        trainer._generate_and_score_completions = rollouts
        # the token-weights pass: _rollout_weights, or for vppo _vppo_weights (its weights and advantage factors),
        # or with ktr.select_in_loss the rollout's perturbed pass (_perturbed_side) and the selection in the loss
        # (_loss_time_weights), summed per step
        for name in ("_vppo_weights",) if trainer.method == "vppo" else ("_rollout_weights", "_perturbed_side"):
            self._meter_weights(trainer, name, keep=True)
        self._meter_weights(trainer, "_loss_time_weights", keep=False)

        class StepClock(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                clock.sync()
                self.step, self.wall, self.cpu = state.global_step, time.perf_counter(), time.process_time()

            def on_step_end(self, args, state, control, **kwargs):
                clock.sync()
                clock.seconds[("step", self.step)] = [time.perf_counter() - self.wall,
                                                      time.process_time() - self.cpu]

        trainer.add_callback(StepClock())

    def _meter_weights(self, trainer, name: str, keep: bool) -> None:
        original, clock, step_now = getattr(trainer, name), self.clock, self._step_now

        def metered(batch, *args):
            if keep and len(self.batches) < self.keep_batches:
                self.batches.append(batch)
            with clock.part("weights", step_now()):
                return original(batch, *args)

        setattr(trainer, name, metered)

    def steps(self, total: int, warmup: int) -> list[dict]:
        """Per step (0-based) of a finished run of `total` steps, the first `warmup` marked."""
        out = []
        for step in range(total):
            wall, cpu = self.clock.get("step", step)
            s_wall, s_cpu = self.clock.get("sampling", step)
            w_wall, w_cpu = self.clock.get("weights", step)
            t = self.trained.get(step, {})
            out.append({"step": step, "warmup": step < warmup, "wall_s": wall, "cpu_s": cpu,
                        "sampling_wall_s": s_wall, "sampling_cpu_s": s_cpu,
                        "training_wall_s": wall - s_wall, "training_cpu_s": cpu - s_cpu,
                        "weights_wall_s": w_wall, "weights_cpu_s": w_cpu,
                        "tokens_sampled": t.get("sampled", [0, 0])[0],
                        "decoding_row_steps": t.get("sampled", [0, 0])[1], "digest": t.get("digest"),
                        "responses": t.get("responses"), "tokens_trained": t.get("tokens_trained"),
                        "extra_responses": len(self.extra.get(step, [])),
                        "extra_tokens_sampled": t.get("sampled_extra", [0, 0])[0]})
        return out


def force_old_policy_pass(trainer) -> None:
    """TRL's old-policy pass over every rollout, as with vLLM's importance-sampling correction (on by default there),
    while sampling stays HF's and generation stays aligned with the optimizer step. TRL runs that pass when
    gradient_accumulation_steps is not a multiple of steps_per_generation x num_iterations; the rollout sees such a
    steps_per_generation while it runs, the rest of the step the real one. ktr then reuses the pass
    (ktr.reuse_rollout_logps) and evaluates only the perturbed inputs at the rollout."""
    real = trainer._generate_and_score_completions

    def rollouts(inputs):
        args = trainer.args
        kept = args.steps_per_generation
        args.steps_per_generation = args.gradient_accumulation_steps + 1
        try:
            return real(inputs)
        finally:
            args.steps_per_generation = kept

    trainer._generate_and_score_completions = rollouts


def child(mode: str, shape: Shape, model_dir: Path, clips: list[Path], steps: int, warmup: int,
          profile: bool = False, old_policy_pass: bool = False) -> dict:
    """Train `warmup + steps` steps of `mode` in this process, measured by `Instrumented`; the first `warmup`
    steps are recorded but left out of the times. `profile`: under torch's profiler, and the LM head's share of
    each pass (`lm_head_shares`) in the result. `old_policy_pass`: TRL's old-policy pass over every rollout, as on
    the vLLM path (`force_old_policy_pass`)."""
    import torch

    torch.set_flush_denormal(True)  # CPU: denormal floats of a random model's drifting weights take slow paths
    torch.set_num_threads(bench_threads())
    trainer = make_trainer(mode, shape, model_dir, clip_rows(clips), warmup + steps,
                           tempfile.mkdtemp(prefix=f"cost-{mode}-"))
    reused: list[bool] = []  # ktr: whether each rollout found TRL's old-policy pass to reuse
    if old_policy_pass:
        force_old_policy_pass(trainer)
        real_old = trainer._old_policy_entropies

        def counting(output, captured):
            found = real_old(output, captured)
            reused.append(found is not None)
            return found

        trainer._old_policy_entropies = counting
    cuda = torch.cuda.is_available()
    measured = Instrumented(trainer, shape, sync=torch.cuda.synchronize if cuda else None)
    counter = measured.counter
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here: training only (model already loaded)
    base_kib = vm_kib("VmRSS")
    shares = None
    if profile:
        from videoktr.models.lora import base_model

        core = base_model(trainer.accelerator.unwrap_model(trainer.model))
        head = core.get_output_embeddings().weight
        with pass_meter(int(head.shape[0]), lambda: measured.clock.current, head_weight=head) as meter:
            trainer.train()
        shares = meter.report()
    else:
        trainer.train()
    total = warmup + steps
    per_step = measured.steps(total, warmup)
    if cuda:
        peak, baseline, kind = torch.cuda.max_memory_allocated(), 0, "cuda_max_allocated"
    else:
        peak, baseline, kind = vm_kib("VmHWM") * 1024, base_kib * 1024, "VmHWM"
    return {"mode": mode, "shape": shape.name, "steps": per_step, "peak_bytes": peak, "baseline_bytes": baseline,
            "peak_kind": kind, "encoder_calls_per_step": counter.calls["train"] / total,
            "videos_encoded_per_step": counter.videos["train"] / total,
            "generation_encoder_calls_per_step": counter.calls["generation"] / total,
            "generation_videos_encoded_per_step": counter.videos["generation"] / total,
            "unique_videos_per_step": shape.prompts, "responses_per_step": shape.prompts * shape.generations,
            "device": "cuda" if cuda else "cpu", "threads": torch.get_num_threads(), "lm_head_shares": shares,
            "old_policy_pass": old_policy_pass,
            "old_policy_pass_reused": sum(reused), "rollouts": total}


def pass_meter(vocab: int, current, head_weight=None):
    """A dispatch mode that charges every aten operator (forward and backward) to the pass `current()` names and,
    when it touches a vocabulary-sized tensor, to the LM head: its thread CPU seconds and its floating-point
    operations (torch's FLOP formulas for matmuls and attention, CPU scaled-dot-product attention added). Keeps
    sums only (a profiler's event list of a paper-shape step outgrows the machine's memory). `report()` gives, per
    pass and for all, self CPU seconds, FLOPs and the LM head's share of each. An operator is the head's when an
    operand is (a slice of) `head_weight`, or has a last dimension of V or of one of TRL's fused head's
    vocabulary tiles (its policy pass projects [tokens, 32768] tiles), or is a matrix of V rows (the head's
    gradient); where another tensor happens to have such a size it is counted too (e.g. the small model's 1024
    video tokens at 16 frames)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten
    widths = {vocab}
    try:  # TRL's fused LM head (the policy pass) projects the vocabulary in tiles of this many columns
        from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE as tile
    except ImportError:
        tile = 0
    if tile and vocab > tile:
        widths |= {tile, vocab % tile} - {0}
    head_storage = None if head_weight is None else head_weight.untyped_storage().data_ptr()

    def is_head(args, kwargs) -> bool:
        for a in list(args) + list(kwargs.values()):
            for t in (a if isinstance(a, (list, tuple)) else [a]):
                if isinstance(t, torch.Tensor):
                    shape = tuple(t.shape)
                    if shape and (shape[-1] in widths or (len(shape) == 2 and shape[0] == vocab)):
                        return True
                    if head_storage is not None and t.untyped_storage().data_ptr() == head_storage:
                        return True
        return False

    cpu_sdpa = {aten._scaled_dot_product_flash_attention_for_cpu: "forward",
                aten._scaled_dot_product_flash_attention_for_cpu_backward: "backward"}

    def flops(func, args, kwargs, out) -> float:
        packet = func.overloadpacket
        try:
            if packet in cpu_sdpa:
                if cpu_sdpa[packet] == "forward":
                    return sdpa_flop_count(args[0].shape, args[1].shape, args[2].shape)
                return sdpa_backward_flop_count(args[0].shape, args[1].shape, args[2].shape, args[3].shape)
            if packet in flop_registry:
                return flop_registry[packet](*args, **kwargs, out_val=out)
        except Exception:  # a formula that does not fit this call's arguments: not counted
            return 0.0
        return 0.0

    class PassMeter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.totals: dict[str, list[float]] = {}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            start = time.thread_time()
            out = func(*args, **kwargs)
            seconds = time.thread_time() - start
            f = flops(func, args, kwargs, out)
            head = is_head(args, kwargs)
            acc = self.totals.setdefault(current(), [0.0, 0.0, 0.0, 0.0])
            acc[0] += seconds
            acc[2] += f
            if head:
                acc[1] += seconds
                acc[3] += f
            return out

        def report(self) -> dict:
            totals = dict(self.totals)
            totals["all"] = [sum(v[i] for v in self.totals.values()) for i in range(4)]
            return {name: {"self_cpu_s": t, "lm_head_s": h, "lm_head_share": h / t if t else 0.0, "flops": f,
                           "lm_head_flops": hf, "lm_head_flop_share": hf / f if f else 0.0}
                    for name, (t, h, f, hf) in totals.items()}

    return PassMeter()


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
# Parent: rounds of fresh processes, the same-tokens check, per-step ratios; JSON and Markdown


def run_child(task: dict, threads: int) -> dict:
    env = {**os.environ, "VIDEOKTR_BENCH_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(task)], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        sys.exit(f"{task['mode']} at {task['shape']['name']} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def same_tokens_problems(runs: dict[str, list[dict]]) -> list[str]:
    """Every mode, in every round, must have sampled and trained on the same tokens as grpo's first round at each
    step (same prompts, clips, responses; the same number of tokens sampled). T-GRPO's extra responses on
    shuffled frames are its own, and are counted apart. Returns what differs (empty: all alike)."""
    problems = []
    reference = runs["grpo"][0]["steps"]
    for mode, rounds in runs.items():
        for r, run in enumerate(rounds):
            for ref, s in zip(reference, run["steps"]):
                where = f"{mode} round {r} step {s['step']}"
                if s["digest"] is None or s["digest"] != ref["digest"]:
                    problems.append(f"{where}: trained on other rollouts than grpo (digest {s['digest']} vs "
                                    f"{ref['digest']})")
                if s["tokens_sampled"] != ref["tokens_sampled"] or s["decoding_row_steps"] != ref["decoding_row_steps"]:
                    problems.append(f"{where}: sampled {s['tokens_sampled']} tokens in {s['decoding_row_steps']} "
                                    f"row-steps of decoding, grpo {ref['tokens_sampled']} in "
                                    f"{ref['decoding_row_steps']}")
                if mode == "tgrpo" and s["extra_tokens_sampled"] != rounds[0]["steps"][s["step"]]["extra_tokens_sampled"]:
                    problems.append(f"{where}: {s['extra_tokens_sampled']} tokens in T-GRPO's shuffled responses, "
                                    f"round 0 {rounds[0]['steps'][s['step']]['extra_tokens_sampled']}")
                if s["tokens_trained"] != ref["tokens_trained"]:
                    problems.append(f"{where}: trained on {s['tokens_trained']} tokens, grpo {ref['tokens_trained']}")
            if len(run["steps"]) != len(reference):
                problems.append(f"{mode} round {r}: {len(run['steps'])} steps, grpo {len(reference)}")
    return problems


def spread(values: list[float]) -> dict:
    """Median and spread of a list: quartiles (inclusive method), min, max, n."""
    v = sorted(values)
    if not v:
        return {"median": float("nan"), "q1": float("nan"), "q3": float("nan"), "min": float("nan"),
                "max": float("nan"), "n": 0}
    q = statistics.quantiles(v, n=4, method="inclusive") if len(v) > 1 else [v[0]] * 3
    return {"median": statistics.median(v), "q1": q[0], "q3": q[2], "min": v[0], "max": v[-1], "n": len(v)}


TIMES = ("cpu_s", "wall_s", "training_cpu_s", "training_wall_s", "sampling_cpu_s", "weights_cpu_s",
         "weights_wall_s")


def summarise(runs: dict[str, list[dict]]) -> tuple[dict, dict]:
    """Per mode: the median and spread of each time over the measured steps of every round, and of the per-step
    ratios to grpo (step i of round r over step i of round r of grpo: the same rollouts), peak memory per round."""
    modes, ratios = {}, {}
    grpo = runs["grpo"]
    for mode, rounds in runs.items():
        measured = [s for run in rounds for s in run["steps"] if not s["warmup"]]
        entry = {k: spread([s[k] for s in measured]) for k in TIMES}
        for k in ("tokens_sampled", "extra_tokens_sampled", "tokens_trained", "responses", "decoding_row_steps"):
            entry[k] = statistics.mean(s[k] or 0 for s in measured) if measured else 0
        entry["weights_share_of_training"] = spread([s["weights_cpu_s"] / s["training_cpu_s"] for s in measured
                                                     if s["training_cpu_s"] > 0])
        entry["peak_bytes"] = spread([run["peak_bytes"] for run in rounds])
        entry["peak_increment_bytes"] = spread([run["peak_bytes"] - run["baseline_bytes"] for run in rounds])
        for k in ("encoder_calls_per_step", "videos_encoded_per_step", "generation_encoder_calls_per_step",
                  "generation_videos_encoded_per_step", "unique_videos_per_step", "responses_per_step"):
            entry[k] = rounds[0][k]
        entry["rounds"] = len(rounds)
        modes[mode] = entry
        pairs = [(s, g) for run, ref in zip(rounds, grpo) for s, g in zip(run["steps"], ref["steps"])
                 if not s["warmup"]]
        ratios[mode] = {k: spread([s[k] / g[k] for s, g in pairs if g[k] > 0])
                        for k in ("cpu_s", "wall_s", "training_cpu_s", "training_wall_s")}
        # within one step of the mode's own process: the step over the same step less its token-weights pass,
        # i.e. the mode over grpo where the weights pass is all it adds (ktr, entropy, twgrpo), measured seconds
        # apart instead of minutes: the machine's load changes little in between
        ratios[mode]["in_step_cpu_s"] = spread([s["cpu_s"] / (s["cpu_s"] - s["weights_cpu_s"]) for s in measured
                                                if s["cpu_s"] > s["weights_cpu_s"]])
        ratios[mode]["in_step_training_cpu_s"] = spread(
            [s["training_cpu_s"] / (s["training_cpu_s"] - s["weights_cpu_s"]) for s in measured
             if s["training_cpu_s"] > s["weights_cpu_s"]])
        ratios[mode]["peak_memory"] = spread([run["peak_bytes"] / ref["peak_bytes"] for run, ref in zip(rounds, grpo)])
        ratios[mode]["peak_increment"] = spread(
            [(run["peak_bytes"] - run["baseline_bytes"]) / max(1, ref["peak_bytes"] - ref["baseline_bytes"])
             for run, ref in zip(rounds, grpo)])
    return modes, ratios


def fmt(s: dict, digits: int = 3) -> str:
    """median [q1-q3]"""
    return f"{s['median']:.{digits}f} [{s['q1']:.{digits}f}-{s['q3']:.{digits}f}]"


def markdown(results: dict) -> str:
    lines = []
    for name, entry in results["shapes"].items():
        s = entry["shape"]
        lines.append(f"\n### {name}: {s['prompts']} prompt(s) x G={s['generations']}, {s['frames']} frames of "
                     f"{s['width']}x{s['height']}, responses {s['min_tokens']}-{s['max_tokens']} tokens, "
                     f"{s['rollouts']} rollouts, model `{s['model']}`; {entry['rounds']} rounds x "
                     f"{entry['steps']} steps (after {entry['warmup']} warm-up) per mode"
                     + ("; TRL's old-policy pass over every rollout, as on the vLLM path (--old-policy-pass)"
                        if results.get("old_policy_pass") else "") + "\n")
        lines.append("Times are medians over the measured steps of every round; `x grpo` is the median [quartiles] "
                     "of the per-step ratios (step i of the mode over step i of grpo, same round, same rollouts); "
                     "`in-step x grpo` is the median of each step over the same step less its token-weights pass, "
                     "in CPU time (the mode over grpo where that pass is all it adds: ktr, entropy, twgrpo).\n")
        lines.append("| mode | step CPU s | x grpo | step wall s | x grpo | without sampling CPU s | x grpo | "
                     "without sampling wall s | x grpo | peak MiB | x grpo | peak - start MiB | x grpo | "
                     "weights CPU s (share of step without sampling) | in-step x grpo: step, without sampling | "
                     "tokens sampled (+ T-GRPO's shuffled) / trained per step | "
                     "encoder calls/step (videos): training, sampling |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        if not entry["modes"]:
            lines = lines[:-4] + [lines[-4].replace(f"{entry['rounds']} rounds", "profile only, 0 rounds")]
        for mode, r in entry["modes"].items():
            q = entry["ratios"][mode]
            lines.append(
                f"| {mode} | {r['cpu_s']['median']:.3f} | {fmt(q['cpu_s'])} | {r['wall_s']['median']:.3f} | "
                f"{fmt(q['wall_s'])} | {r['training_cpu_s']['median']:.3f} | {fmt(q['training_cpu_s'])} | "
                f"{r['training_wall_s']['median']:.3f} | {fmt(q['training_wall_s'])} | "
                f"{r['peak_bytes']['median'] / 2**20:.0f} | {q['peak_memory']['median']:.3f} | "
                f"{r['peak_increment_bytes']['median'] / 2**20:.0f} | {q['peak_increment']['median']:.3f} | "
                f"{r['weights_cpu_s']['median']:.3f} ({r['weights_share_of_training']['median']:.1%}) | "
                f"{fmt(q['in_step_cpu_s'])}, {fmt(q['in_step_training_cpu_s'])} | "
                f"{r['tokens_sampled']:.0f}{'' if not r['extra_tokens_sampled'] else ' + %.0f' % r['extra_tokens_sampled']}"
                f" / {r['tokens_trained']:.0f} | "
                f"{r['encoder_calls_per_step']:g} ({r['videos_encoded_per_step']:g}), "
                f"{r['generation_encoder_calls_per_step']:g} ({r['generation_videos_encoded_per_step']:g}) |")
        if entry.get("lm_head_shares"):
            lines.append("\nProfiled (1 warm-up + 1 step per mode, `pass_meter`): per pass, its operators' CPU "
                         "seconds and FLOPs, and the LM head's share of each (operators on vocabulary-sized "
                         "tensors; the meter's own overhead is not in the seconds)\n")
            lines.append("| mode | pass | CPU s | LM head share | GFLOP | LM head share of FLOPs |")
            lines.append("|---|---|---|---|---|---|")
            for mode, shares in entry["lm_head_shares"].items():
                for k, v in shares.items():
                    lines.append(f"| {mode} | {k} | {v['self_cpu_s']:.2f} | {v['lm_head_share']:.1%} | "
                                 f"{v['flops'] / 1e9:.1f} | {v['lm_head_flop_share']:.1%} |")
            if entry.get("flop_ratio"):
                lines.append(f"\nktr / grpo FLOPs over the profiled steps: {entry['flop_ratio']['all']:.3f} "
                             f"({entry['flop_ratio']['without_sampling']:.3f} without sampling)")
        if entry.get("same_tokens") is not None:
            lines.append(f"\nSame tokens in every mode and round: "
                         f"{'yes' if not entry['same_tokens'] else 'NO: ' + '; '.join(entry['same_tokens'][:5])}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[16], help="frames of the paper shape (16 32 64)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--shapes", nargs="+", default=None, help="shape names to run (default: all but 7b-prop)")
    parser.add_argument("--steps", type=int, default=3, help="measured optimizer steps per process and round")
    parser.add_argument("--warmup", type=int, default=1, help="steps per process before the measured ones")
    parser.add_argument("--rounds", type=int, default=3, help="rounds: every mode once per round, order rotated")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per process (default: $OMP_NUM_THREADS, else 2)")
    parser.add_argument("--profile", action="store_true",
                        help="also meter 1+1 steps of grpo and ktr per shape: CPU seconds and FLOPs per pass, the LM "
                             "head's share of each, ktr / grpo FLOPs (--rounds 0: only this)")
    parser.add_argument("--quick", action="store_true", help="tiny model and sizes (the test's configuration)")
    parser.add_argument("--old-policy-pass", action="store_true",
                        help="TRL's old-policy pass over every rollout in every mode, as on the vLLM path with its "
                             "importance-sampling correction (HF sampling stays): grpo pays that pass and ktr reuses "
                             "it (ktr.reuse_rollout_logps)")
    parser.add_argument("--work-dir", default="", help="where the model and clips are written (default: a temp dir)")
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent / "results" / "cost.json"))
    parser.add_argument("--summarise", default="", metavar="JSON",
                        help="recompute the summaries and tables of an earlier cost.json from its per-step records")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.summarise:
        results = json.loads(Path(args.summarise).read_text())
        for entry in results["shapes"].values():
            entry["modes"], entry["ratios"] = summarise(entry["runs"])
        Path(args.summarise).write_text(json.dumps(results, indent=2))
        table = markdown(results)
        Path(args.summarise).with_suffix(".md").write_text(table)
        print(table)
        return
    if args.child:
        task = json.loads(args.child)
        shape = Shape(**task["shape"])
        clips = [Path(p) for p in task["clips"]]
        if task["mode"] == "equivalence":
            print(json.dumps(equivalence(shape, Path(task["model"]), clips)))
        else:
            print(json.dumps(child(task["mode"], shape, Path(task["model"]), clips, task["steps"], task["warmup"],
                                   task.get("profile", False), task.get("old_policy_pass", False))))
        return
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.rounds < (0 if args.profile else 1):
        parser.error("--rounds must be >= 1 (0 with --profile: the profile only)")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")

    start = time.time()
    chosen = shapes(args.frames, args.quick)
    if args.shapes:
        unknown = sorted(set(args.shapes) - set(chosen))
        if unknown:
            parser.error(f"--shapes: unknown {unknown}; with these --frames the shapes are {sorted(chosen)}")
        chosen = {k: v for k, v in chosen.items() if k in args.shapes}
    else:
        chosen = {k: v for k, v in chosen.items() if not v.optional}
    threads = args.threads or bench_threads()
    root = Path(args.work_dir or tempfile.mkdtemp(prefix="videoktr-cost-"))
    modes = ["grpo"] + [m for m in args.modes if m != "grpo"]
    results = {"steps": args.steps, "warmup": args.warmup, "rounds": args.rounds, "threads": threads,
               "old_policy_pass": args.old_policy_pass,
               "modes": modes, "models": {}, "shapes": {}}
    failed = []
    for name, shape in chosen.items():
        model_dir = build_model(root, shape.model)
        results["models"][shape.model] = json.loads((model_dir / "videoktr_model.json").read_text())
        clips = write_clips(root, shape, shape.prompts * (args.steps + args.warmup))
        base = {"shape": dataclasses.asdict(shape), "model": str(model_dir), "clips": [str(c) for c in clips],
                "steps": args.steps, "warmup": args.warmup, "old_policy_pass": args.old_policy_pass}
        runs: dict[str, list[dict]] = {m: [] for m in modes}
        for r in range(args.rounds):
            order = modes[r % len(modes):] + modes[: r % len(modes)]  # rotated: no mode always first or last
            for mode in order:
                out = run_child({**base, "mode": mode}, threads)
                runs[mode].append(out)
                measured = [s for s in out["steps"] if not s["warmup"]]
                print(f"[{time.time() - start:6.0f}s] {name:>10} round {r} {mode:>8}: step CPU "
                      + " ".join(f"{s['cpu_s']:.2f}" for s in measured) + " s (wall "
                      + " ".join(f"{s['wall_s']:.2f}" for s in measured) + "), without sampling CPU "
                      + " ".join(f"{s['training_cpu_s']:.2f}" for s in measured)
                      + f" s, peak {out['peak_bytes'] / 2**20:.0f} MiB, tokens sampled "
                      + " ".join(str(s["tokens_sampled"] + s["extra_tokens_sampled"]) for s in out["steps"]), flush=True)
        entry = {"shape": dataclasses.asdict(shape), "rounds": args.rounds, "steps": args.steps,
                 "warmup": args.warmup, "runs": runs, "modes": {}, "ratios": {}, "same_tokens": None}
        if args.rounds:
            entry["modes"], entry["ratios"] = summarise(runs)
        if shape.rollouts == "fixed" and args.rounds:
            entry["same_tokens"] = same_tokens_problems(runs)
            if entry["same_tokens"]:
                failed.append(name)
                print(f"{name}: the modes did not sample and train on the same tokens:\n  "
                      + "\n  ".join(entry["same_tokens"][:20]), flush=True)
        else:
            entry["same_tokens"] = None  # real sampling: each mode samples from its own policy
        if "official" in modes and shape.rollouts == "fixed" and args.rounds:
            entry["equivalence"] = run_child({**base, "mode": "equivalence"}, threads)
            print(f"           official vs ktr on one rollout: {entry['equivalence']}", flush=True)
        if args.profile:
            entry["lm_head_shares"] = {}
            for mode in [m for m in ("grpo", "ktr") if m in modes]:
                prof = run_child({**base, "mode": mode, "steps": 1, "warmup": 1, "profile": True}, threads)
                entry["lm_head_shares"][mode] = prof["lm_head_shares"]
                print(f"           {mode} per pass: LM-head share of self CPU time (of FLOPs): " + ", ".join(
                    f"{k} {v['lm_head_share']:.1%} of {v['self_cpu_s']:.1f} s ({v['lm_head_flop_share']:.1%} of "
                    f"{v['flops'] / 1e9:.1f} GFLOP)" for k, v in prof["lm_head_shares"].items()), flush=True)
            shares = entry["lm_head_shares"]
            if "grpo" in shares and "ktr" in shares:
                def without_sampling(mode):
                    return shares[mode]["all"]["flops"] - shares[mode].get("sampling", {}).get("flops", 0.0)

                entry["flop_ratio"] = {"all": shares["ktr"]["all"]["flops"] / max(1.0, shares["grpo"]["all"]["flops"]),
                                       "without_sampling": without_sampling("ktr") / max(1.0, without_sampling("grpo"))}
                print(f"           ktr / grpo FLOPs over the profiled steps: {entry['flop_ratio']}", flush=True)
        results["shapes"][name] = entry
    results["seconds"] = time.time() - start
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    table = markdown(results)
    out.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {out} ({results['seconds']:.0f} s)")
    if failed:
        sys.exit(f"FAILED: at {failed} the modes did not sample and train on the same tokens (see above); "
                 "their ratios compare different work")
    headline = next((results["shapes"][k] for k in ("paper-16", "quick") if k in results["shapes"]), None)
    if headline is None:
        headline = next(iter(results["shapes"].values()))
    if "ktr" in headline["ratios"] and "grpo" in headline["ratios"]:
        r = headline["ratios"]["ktr"]
        print(f"step_time_ratio={r['cpu_s']['median']:.3f} peak_memory_ratio={r['peak_memory']['median']:.3f} "
              f"training_time_ratio={r['training_cpu_s']['median']:.3f} "
              f"spread={r['cpu_s']['q3'] - r['cpu_s']['q1']:.3f} in_step_ratio={r['in_step_cpu_s']['median']:.3f} "
              f"in_step_training_ratio={r['in_step_training_cpu_s']['median']:.3f}")


if __name__ == "__main__":
    main()
