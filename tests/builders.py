"""Batch builders shared by tests (importable as `builders`: tests/ is on pytest's pythonpath)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def random_frames(seed: int, n: int = 8, size: int = 56) -> np.ndarray:
    """[n, size, size, 3] uint8 frames: each frame a random flat colour plus noise (distinct per frame)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(n, 1, 1, 3))
    noise = rng.integers(-30, 30, size=(n, size, size, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def encode_prompts(processor, rows, fps: float = 2.0):
    """rows: list of (question, frames or None) -> processor outputs for left-padded chat prompts."""
    from videoktr.data.video import Clip

    texts, videos, metas = [], [], []
    for question, frames in rows:
        content = ([{"type": "video"}] if frames is not None else []) + [{"type": "text", "text": question}]
        texts.append(processor.apply_chat_template([{"role": "user", "content": content}],
                                                   add_generation_prompt=True, tokenize=False))
        if frames is not None:
            n = frames.shape[0]
            videos.append(frames)
            metas.append(Clip(frames, fps=fps, source_fps=fps, duration=n / fps, indices=list(range(n))).metadata())
    kwargs = dict(text=texts, return_tensors="pt", padding=True, padding_side="left")
    if videos:
        kwargs.update(videos=videos, video_metadata=metas, do_sample_frames=False)
    return processor(**kwargs)


def make_completions(processor, texts):
    """Right-padded completion ids and mask for the given response texts (each ends with <|im_end|>)."""
    tok = processor.tokenizer
    ids = [tok(t + "<|im_end|>", add_special_tokens=False)["input_ids"] for t in texts]
    width = max(len(i) for i in ids)
    out = torch.full((len(ids), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for b, row in enumerate(ids):
        out[b, : len(row)] = torch.tensor(row)
        mask[b, : len(row)] = 1
    return out, mask


def length_reward(completions, **kwargs):
    """Varies within a group for a random model, so advantages are non-zero."""
    return [float(len(c[0]["content"]) % 7) for c in completions]


def make_trainer(tiny_dir, rows, tmp_path, method="ktr", max_steps=2, run_identity="", lora=None, reward=None,
                 trainer_kwargs=None, **config):
    """A VideoGRPOTrainer on the tiny model; `lora`: models.lora.LoraOptions (adapters through TRL's peft_config);
    `reward`: the reward function (default length_reward); `trainer_kwargs`: more VideoGRPOTrainer arguments."""
    from datasets import Dataset
    from trl import GRPOConfig

    from videoktr.models.factory import load_model, load_processor, suppressed_token_ids
    from videoktr.models.lora import peft_config
    from videoktr.train.trainer import VideoGRPOTrainer

    torch.manual_seed(0)
    model = load_model(tiny_dir, dtype="float32")
    processor = load_processor(tiny_dir)
    args = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, num_generations=4,
                max_completion_length=8, max_steps=max_steps, use_cpu=True, report_to=[], logging_steps=1,
                save_strategy="no", learning_rate=1e-3, bf16=False, gradient_checkpointing=False,
                use_bias_correction_kl=False,
                generation_kwargs={"suppress_tokens": suppressed_token_ids(processor.tokenizer)}, seed=0)
    args.update(config)
    return VideoGRPOTrainer(model=model, processing_class=processor, reward_funcs=[reward or length_reward],
                            args=GRPOConfig(**args), train_dataset=Dataset.from_list(rows), method=method,
                            run_identity=run_identity,
                            peft_config=peft_config(model, lora) if lora is not None else None,
                            **(trainer_kwargs or {}))


def loss_token_weights(trainer, batch) -> torch.Tensor:
    """The token weights [B, C] the loss multiplies into `batch` (a generated batch taken as one micro-batch): the
    rollout's `token_weights`, or where the mask is chosen in the loss (ktr.select_in_loss) the weights that
    `_compute_loss` itself chooses from its policy forward."""
    if "token_weights" in batch:
        return batch["token_weights"]
    import videoktr.train.trainer as trainer_module

    seen, real = [], trainer_module.masked_clipped_loss

    def spy(*args, **kwargs):
        seen.append(kwargs["token_weights"])
        return real(*args, **kwargs)

    trainer_module.masked_clipped_loss = spy
    try:
        trainer._compute_loss(trainer.model, batch)
    finally:
        trainer_module.masked_clipped_loss = real
    return seen[0]


def reference_key_token_weights(trainer, batch, generator_state, model_dir, ties: float | None = None,
                                control_state=None):
    """The reference path for a generated batch: a fresh fp32 copy of the trainer's weights in eval mode, no
    gradient checkpointing, no autocast, every row evaluated on its own unshared sequence, the vision tower
    run on the rows' pixels (videos and images), the same attributed rows, perturbation draws and selection as
    the trainer. Returns weights [B, C]; with `ties`, (weights, near_tie [B, C] bool): the tokens that some
    signal selects (or not) over another token of its row whose score is within `ties` of its own, i.e. whose
    selection a difference in the last float digits may swap (a random model's entropies differ by 1e-6).
    A control (trainer.selection_options.control): the union is replaced by core.control_mask over the response
    tokens, its draws from a generator in `control_state` (the trainer's _control_generator state before the
    batch)."""
    import dataclasses

    from videoktr.attribution import attribute, select_key_tokens
    from videoktr.models.factory import load_model

    model = load_model(model_dir, dtype="float32").eval()
    trained = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(trained, "peft_config"):  # LoRA: the adapters merged into a copy of the weights
        import copy

        trained = copy.deepcopy(trained).merge_and_unload()
    trained = trained.state_dict()
    model.load_state_dict({k: v.float() for k, v in trained.items()})
    generator = torch.Generator()
    generator.set_state(generator_state)
    B = batch["completion_ids"].shape[0]
    active = batch["advantages"].reshape(B, -1).ne(0).any(-1)
    if not trainer.skipping_is_exact():
        active = torch.ones_like(active)
    idx = active.nonzero().squeeze(-1).tolist()
    out = torch.zeros(batch["completion_ids"].shape, dtype=torch.float32)
    near = torch.zeros(batch["completion_ids"].shape, dtype=torch.bool)
    if not idx:  # no response carries a policy gradient: nothing attributed
        return out if ties is None else (out, near)
    rows = [batch["videos"][i] for i in idx]
    videos = [r for r in rows if r is not None and r.kind == "video"]
    kwargs = {}
    if videos:
        kwargs = dict(pixel_values_videos=torch.cat([r.pixels for r in videos]),
                      video_grid_thw=torch.cat([r.grid for r in videos]),
                      second_per_grid_ts=torch.cat([r.seconds_per_group for r in videos]),
                      video_keys=[r.key for r in videos])
    images = [r for r in rows if r is not None and r.kind == "image"]
    if images:
        grid = torch.cat([r.grid for r in images])
        kwargs.update(image_grid_thw=grid, image_keys=[r.key for r in images],
                      image_features=trainer.adapter.encode_images(model, torch.cat([r.pixels for r in images]), grid))
    pick = torch.tensor(idx)
    options = dataclasses.replace(trainer.attribution_options, share_prefix=False)
    with torch.no_grad():
        attribution = attribute(model, batch["prompt_ids"][pick], batch["prompt_mask"][pick],
                                batch["completion_ids"][pick], batch["completion_mask"][pick], options=options,
                                generator=generator, **kwargs)
    groups = batch["prompt_group"][pick] if trainer.selection_options.scope in ("group", "quantile") else None
    control = trainer.selection_options.control
    weights, masks, _ = select_key_tokens(attribution, dataclasses.replace(trainer.selection_options, control="none"),
                                          group_ids=groups)
    if control != "none":
        from videoktr.core import control_mask

        control_generator = torch.Generator()
        control_generator.set_state(control_state)
        weights = control_mask(control, weights.bool(), batch["completion_mask"][pick].bool(), attribution.entropy,
                               control_generator).float()
    out[pick] = weights
    if ties is None:
        return out
    for r, row in enumerate(idx):
        for signal, score in attribution.scores.items():
            if signal not in masks:
                continue
            valid = attribution.valid[signal][r]
            s, m = score[r][valid], masks[signal][r][valid].bool()
            close = (s[:, None] - s[None, :]).abs() <= ties
            swappable = (close & (m[:, None] != m[None, :])).any(1)
            near[row, valid.nonzero().squeeze(-1)] |= swappable
    return out, near


def clip_rows(root, first_seed: int, n: int = 4) -> list[dict]:
    """n TRL rows, each a random clip (56x56, 8 frames at 2 fps) with one question: clips of one size asked one
    question, so their prompts have identical token ids."""
    from videoktr.data.video import write_video

    rows = []
    for i in range(n):
        path = write_video(Path(root) / f"clip{i}.mp4", random_frames(first_seed + i), fps=2.0)
        rows.append({"prompt": [{"role": "user", "content": [
            {"type": "video", "video": str(path)}, {"type": "text", "text": "Which colour appeared first?"}]}],
            "solution": "red"})
    return rows


# Directories of one model "trained" under each 3D position scheme, as videoktr writes them now (a record in
# config.json) and as an earlier videoktr or another tool left them (no record): name -> the scheme it was
# trained under. The weights are the same in all of them; only what the directory says differs. They are the tiny
# model's with the language model's query and key projections scaled x10: sharp attention, as a trained model's,
# so that the position scheme changes its greedy outputs after a long clip (the random model's barely move).
SCHEME_DIRS = {"records_qwen": "qwen", "records_transformers": "transformers",
               "old_videoktr_card": "transformers", "old_videoktr_warmstart": "transformers",
               "old_videoktr_run": "transformers", "foreign": "qwen"}

OLD_CARD = """---
library_name: transformers
tags: [videoktr, video, reinforcement-learning, grpo]
---

# Trained with videoktr

- **Base model:** `base`
"""


def scheme_dirs(tiny_dir, root) -> dict[str, Path]:
    """Write the SCHEME_DIRS under `root`; returns name -> model directory."""
    import json
    import shutil

    from videoktr.models.factory import load_model
    from videoktr.models.positions import RECORD_KEY

    root = Path(root)
    out = {}
    for name, scheme in SCHEME_DIRS.items():
        path = root / name / "final" if name == "old_videoktr_run" else root / name
        model = load_model(tiny_dir, dtype="float32", rope_positions=scheme)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "language_model" in n and n.rsplit(".", 2)[-2] in ("q_proj", "k_proj"):
                    p.mul_(10.0)
        model.save_pretrained(path)
        for f in Path(tiny_dir).iterdir():  # processor and tokenizer files
            if f.name not in ("config.json", "model.safetensors", "videoktr_model.json", "generation_config.json"):
                shutil.copy(f, path / f.name)
        config = json.loads((path / "config.json").read_text())
        assert config[RECORD_KEY] == scheme  # install() records it; save_pretrained writes it
        if not name.startswith("records_"):
            del config[RECORD_KEY]
            (path / "config.json").write_text(json.dumps(config))
        if name == "old_videoktr_card":
            (path / "README.md").write_text(OLD_CARD)
        elif name == "old_videoktr_warmstart":
            (path / "warmstart.json").write_text(json.dumps({"key": "0123", "complete": True,
                                                             "settings": {"max_steps": 10}}))
        elif name == "old_videoktr_run":
            (path.parent / "config.json").write_text(json.dumps({"model": {"model": ""}, "rl": {"method": "grpo"}}))
        out[name] = path
    return out


def reference_vppo(trainer, batch, model_dir, generator_state=None):
    """VPPO's reference path for a generated batch: a fresh fp32 copy of the trainer's weights in eval mode, no
    checkpointing, no autocast, every row on its own unshared sequence, the vision tower run on the rows' pixels;
    the visual dependency of every response token (rl.vppo_dependency), core.top_ratio_mask over the rows with a
    video or image (every response token for a text row) and core.vppo_advantage_scaling. Returns (weights [B, C],
    advantage factors [B], attribution)."""
    import dataclasses

    from videoktr.attribution import attribute
    from videoktr.core import k3_dependency, top_ratio_mask, vppo_advantage_scaling
    from videoktr.models.factory import load_model

    model = load_model(model_dir, dtype="float32").eval()
    trained = trainer.accelerator.unwrap_model(trainer.model).state_dict()
    model.load_state_dict({k: v.float() for k, v in trained.items()})
    o = trainer.perception_options
    rows = batch["videos"]
    videos = [r for r in rows if r is not None and r.kind == "video"]
    images = [r for r in rows if r is not None and r.kind == "image"]
    kwargs = {}
    if videos:
        kwargs = dict(pixel_values_videos=torch.cat([r.pixels for r in videos]),
                      video_grid_thw=torch.cat([r.grid for r in videos]),
                      second_per_grid_ts=torch.cat([r.seconds_per_group for r in videos]),
                      video_keys=[r.key for r in videos])
    if images:
        grid = torch.cat([r.grid for r in images])
        kwargs.update(image_grid_thw=grid, image_keys=[r.key for r in images],
                      image_features=trainer.adapter.encode_images(model, torch.cat([r.pixels for r in images]), grid))
    options = dataclasses.replace(trainer.attribution_options, signals=("visual",), share_prefix=False, signed=False,
                                  distance="kl" if o.vppo_dependency == "kl" else "logprob")
    generator = None
    if generator_state is not None:
        generator = torch.Generator()
        generator.set_state(generator_state)
    with torch.no_grad():
        att = attribute(model, batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"],
                        batch["completion_mask"], options=options, keep_perturbed_logp=True, generator=generator,
                        **kwargs)
    valid = att.valid["visual"]
    dep = att.scores["visual"] if o.vppo_dependency == "kl" else k3_dependency(att.logp, att.perturbed_logp["visual"])
    dep = torch.where(valid, dep, 0.0)
    has_media = torch.tensor([r is not None for r in rows])
    weights = torch.where(has_media[:, None], top_ratio_mask(dep, valid, o.vppo_ratio),
                          batch["completion_mask"].bool()).float()
    return weights, vppo_advantage_scaling(dep, valid, o.vppo_advantage_min), att
