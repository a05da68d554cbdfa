"""Check that vLLM's own multimodal processor accepts the trainer's video/image requests unchanged.

Run where vLLM is installed (it needs no GPU: only vLLM's input processing runs):

    python bench/vllm_requests.py --output bench/results/vllm_requests.json

For each model family (a tiny offline model built here) and each media kind, the trainer tokenizes a prompt
(`encode_prompts`, fps metadata included), `vllm_requests` builds the vLLM request, and vLLM's multimodal
processor (the one `LLM.generate` uses) processes {prompt_token_ids, multi_modal_data, mm_processor_kwargs}.
Checked per case: the prompt ids vLLM expands equal the trainer's; its placeholder run sits at the
trainer's position with the trainer's length; its grid equals the trainer's; its pixel values equal the
trainer's after normalisation (vLLM 0.33 hands uint8 patches to the model, which normalises on device);
its second_per_grid_ts matches the trainer's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch


def _vllm_processor(model_dir: str):
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY

    config = ModelConfig(model=model_dir, tokenizer=model_dir, dtype="float32", max_model_len=4096,
                         limit_mm_per_prompt={"video": 1, "image": 1})
    return MULTIMODAL_REGISTRY.create_processor(config)


def _vllm_apply(mm_processor, request: dict):
    from vllm.multimodal.processing.context import TimingContext
    from vllm.multimodal.processing.inputs import ProcessorInputs

    items = mm_processor.info.parse_mm_data(request["multi_modal_data"])
    inputs = ProcessorInputs(request["prompt_token_ids"], items, hf_processor_mm_kwargs=request["mm_processor_kwargs"])
    return mm_processor.apply(inputs, TimingContext(enabled=False))


def _embed_positions(placeholders) -> list[int]:
    """Prompt positions that vLLM fills with encoder features (a range may hold text, e.g. Qwen3-VL times)."""
    out = []
    for p in placeholders:
        mask = getattr(p, "is_embed", None)
        out += [p.offset + i for i in range(p.length) if mask is None or bool(mask[i])]
    return out


def check_case(family: str, kind: str, work: Path) -> dict:
    from PIL import Image

    from videoktr.data.video import read_video, write_video
    from videoktr.models.adapters import adapter_for_config
    from videoktr.models.factory import create_model_dir, load_processor
    from videoktr.train.rollout import PatchLayout, check_vllm_budget, vllm_requests
    from videoktr.train.trainer import encode_prompts

    model_dir = work / family
    if not model_dir.exists():
        create_model_dir(model_dir, size="tiny", family=family)
        if family == "qwen3_vl":  # a real checkpoint's per-frame cap (768 tokens), not the tiny model's
            from transformers import AutoProcessor

            saved = AutoProcessor.from_pretrained(str(model_dir), local_files_only=True)
            saved.video_processor.max_video_tokens = 768
            saved.save_pretrained(str(model_dir))
    processor = load_processor(model_dir, min_pixels=64 * 28 * 28, max_pixels=160 * 28 * 28)
    check_vllm_budget(str(model_dir), processor)
    from transformers import AutoConfig

    adapter = adapter_for_config(AutoConfig.from_pretrained(str(model_dir), local_files_only=True))
    rng = np.random.default_rng(0)
    if kind == "video":
        path = write_video(work / "clip.mp4", rng.integers(0, 255, (16, 270, 480, 3), dtype=np.uint8), fps=4.0)
        part = {"type": "video", "video": str(path)}
    else:
        path = work / "image.png"
        Image.fromarray(rng.integers(0, 255, (300, 420, 3), dtype=np.uint8)).save(path)
        part = {"type": "image", "image": str(path)}
    prompt = [{"role": "user", "content": [part, {"type": "text", "text": "What happens?"}]}]
    batch = encode_prompts(processor, adapter, [prompt], lambda p: read_video(p, max_frames=8))
    row, ids = batch.rows[0], batch.prompt_ids[0]
    request = vllm_requests(batch.template_ids, batch.rows, processor)[0]
    out = _vllm_apply(_vllm_processor(str(model_dir)), request)
    token = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>" if kind == "video" else "<|image_pad|>")
    ours = [i for i, t in enumerate(ids) if t == token]
    theirs = _embed_positions(out["mm_placeholders"][kind])
    kwargs = out["mm_kwargs"].get_data()
    pix_key, grid_key = ("pixel_values_videos", "video_grid_thw") if kind == "video" else ("pixel_values", "image_grid_thw")
    pixels = torch.as_tensor(kwargs[pix_key]).reshape(row.pixels.shape)
    if pixels.dtype == torch.uint8:  # normalise as the model does on device
        layout = PatchLayout.of(processor.video_processor if kind == "video" else processor.image_processor)
        x = pixels.double().reshape(len(pixels), 3, -1) * layout.rescale_factor
        mean = torch.tensor(layout.mean, dtype=torch.float64).view(1, 3, 1)
        std = torch.tensor(layout.std, dtype=torch.float64).view(1, 3, 1)
        pixels = ((x - mean) / std).reshape(row.pixels.shape)
    result = {
        "family": family, "kind": kind,
        "prompt_ids_equal": list(out["prompt_token_ids"]) == ids,
        "feature_positions_equal": ours == theirs, "feature_tokens": len(ours),
        "grid_trainer": row.grid.reshape(-1).tolist(), "grid_vllm": torch.as_tensor(kwargs[grid_key]).reshape(-1).tolist(),
        "request_prompt_tokens": len(request["prompt_token_ids"]), "trainer_prompt_tokens": len(ids),
        "pixels_max_abs_diff": float((pixels - row.pixels.double()).abs().max()),
    }
    if kind == "video" and row.seconds_per_group is not None:
        result["second_per_grid_ts_trainer"] = float(row.seconds_per_group.reshape(-1)[0])
        if "second_per_grid_ts" in kwargs:
            result["second_per_grid_ts_vllm"] = float(torch.as_tensor(kwargs["second_per_grid_ts"]).reshape(-1)[0])
    result["ok"] = (result["prompt_ids_equal"] and ours == theirs and result["grid_trainer"] == result["grid_vllm"]
                    and result["pixels_max_abs_diff"] < 1e-4
                    and result.get("second_per_grid_ts_vllm", 0.0) == result.get("second_per_grid_ts_trainer", 0.0))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=["qwen2_5_vl", "qwen2_vl", "qwen3_vl"],
                        help="model families to check (tiny offline models are built for each)")
    parser.add_argument("--output", default="bench/results/vllm_requests.json", help="where to write the results (JSON)")
    args = parser.parse_args(argv)
    import vllm

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            for kind in ("video", "image"):
                try:
                    r = check_case(family, kind, Path(tmp))
                except Exception as e:  # report every case, not only the first failure
                    r = {"family": family, "kind": kind, "ok": False, "error": f"{type(e).__name__}: {e}"}
                results.append(r)
                print(json.dumps(r))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"vllm": vllm.__version__, "results": results}, indent=2))
    print(f"{sum(r['ok'] for r in results)}/{len(results)} cases match; written to {out}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
