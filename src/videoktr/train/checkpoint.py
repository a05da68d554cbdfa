"""Loading a training checkpoint's weights back into the model, under the names the model uses.

transformers 5 writes Qwen-VL weights under the checkpoint-format names (`visual.*`, `model.layers.*`;
`save_pretrained` reverts its load-time renaming), but `Trainer._load_from_checkpoint` reads them back with a
plain `load_state_dict(strict=False)`: none of the renamed weights load, only a warning is logged, and a
resumed run silently continues from the weights it started with (transformers issue #43701, open in 5.23).
`load_checkpoint_weights` undoes the renaming with the library's own save-time mapping and loads strictly.
"""

from __future__ import annotations

import json
from pathlib import Path

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"


def saved_names(model) -> dict[str, str]:
    """model state-dict name -> the name `save_pretrained` writes it under (the same name when the model
    has no renaming). Computed by running the library's save-time conversion on placeholder tensors."""
    import torch
    from transformers.core_model_loading import revert_weight_conversion

    placeholders = {name: torch.empty(0) for name in model.state_dict()}
    by_id = {id(t): name for name, t in placeholders.items()}
    reverted = revert_weight_conversion(model, dict(placeholders))
    names = {by_id[id(t)]: saved for saved, t in reverted.items() if id(t) in by_id}
    if len(names) != len(reverted):  # a converter built new tensors (merged or split weights): not a renaming
        raise NotImplementedError(f"{type(model).__name__}: its checkpoint format is not a renaming of its weights")
    return names


def weight_files(checkpoint: str | Path) -> list[Path]:
    """The weight files of a checkpoint directory (one file, or the shards of an index); [] when none."""
    ckpt = Path(checkpoint)
    if (ckpt / SAFE_INDEX).is_file():
        index = json.loads((ckpt / SAFE_INDEX).read_text())
        return [ckpt / name for name in dict.fromkeys(index["weight_map"].values())]
    return [ckpt / name for name in (SAFE_WEIGHTS, TORCH_WEIGHTS) if (ckpt / name).is_file()][:1]


def load_checkpoint_weights(model, checkpoint: str | Path) -> int:
    """Load the checkpoint's weights into `model` under the model's own names; returns how many tensors
    loaded. Raises ValueError naming the checkpoint when a weight is missing (other than one tied to a loaded
    weight, which save_pretrained leaves out) or a checkpoint weight has no place in the model."""
    import torch
    from safetensors.torch import load_file

    files = weight_files(checkpoint)
    if not files:
        raise ValueError(f"{checkpoint}: no model weights ({SAFE_WEIGHTS}, {SAFE_INDEX} or {TORCH_WEIGHTS})")
    to_model = {saved: name for name, saved in saved_names(model).items()}
    state = {}
    for f in files:
        part = load_file(f, device="cpu") if f.suffix == ".safetensors" else torch.load(f, map_location="cpu",
                                                                                         weights_only=True)
        state.update({to_model.get(k, k): t for k, t in part.items()})
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a weight of another shape: another model's checkpoint
        raise ValueError(f"{checkpoint}: the checkpoint does not match the model: {exc}") from None
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = {id(params[k]) for k in state if k in params}  # tied weights: one tensor under several names
    missing = [k for k in result.missing_keys if not (k in params and id(params[k]) in loaded)]
    if missing or result.unexpected_keys:
        raise ValueError(f"{checkpoint}: the checkpoint does not match the model ({len(missing)} weights missing, "
                         f"e.g. {missing[:3]}; {len(result.unexpected_keys)} unexpected, e.g. "
                         f"{result.unexpected_keys[:3]})")
    return len(state)


# ------------------------------------------------------------------------------------------------------------
# Complete checkpoints: a checkpoint counts only once the marker written after its last file exists

COMPLETE_MARKER = "videoktr_complete.json"
CHECKPOINT_PREFIX = "checkpoint-"


def write_json_atomic(path: str | Path, value) -> Path:
    """Write JSON to `path` through a temporary file renamed into place: a reader (or a kill) never sees half."""
    import os

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=2, default=float))
    os.replace(tmp, path)
    return path


def mark_complete(checkpoint: str | Path, identity: str, step: int, length: dict | None = None) -> Path:
    """Record that `checkpoint` is whole, which run (identity digest) wrote it, and (`length`) the options that
    set the run's length with the steps they planned (`planned_steps`), so a rerun can tell a finished run."""
    return write_json_atomic(Path(checkpoint) / COMPLETE_MARKER,
                             {"identity": identity, "step": step, **({"length": length} if length else {})})


def read_marker(checkpoint: str | Path) -> dict:
    """A checkpoint's completion marker ({} when missing or unreadable)."""
    try:
        return json.loads((Path(checkpoint) / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return {}


def checkpoint_status(checkpoint: str | Path, identity: str) -> str | None:
    """None when `checkpoint` is complete and was written by the run `identity`; else why it cannot be resumed."""
    marker = Path(checkpoint) / COMPLETE_MARKER
    if not marker.is_file():
        return "incomplete: no completion marker (killed while saving, or written by an older videoktr)"
    try:
        written_by = json.loads(marker.read_text()).get("identity")
    except (OSError, ValueError):
        return "incomplete: unreadable completion marker"
    if written_by != identity:
        return "written by another run (different options or starting model)"
    return None


def checkpoints_newest_first(output_dir: str | Path) -> list[Path]:
    """The `checkpoint-N` directories of a run directory, highest step first."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [p for p in out.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
             and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]), reverse=True)


def resumable_checkpoint(output_dir: str | Path, identity: str) -> tuple[Path | None, list[tuple[str, str]]]:
    """The newest complete checkpoint written by run `identity`, and the newer ones skipped with the reason."""
    skipped = []
    for ckpt in checkpoints_newest_first(output_dir):
        reason = checkpoint_status(ckpt, identity)
        if reason is None:
            return ckpt, skipped
        skipped.append((ckpt.name, reason))
    return None, skipped
