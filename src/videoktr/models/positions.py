"""3D RoPE position ids of Qwen2-VL and Qwen2.5-VL prompts, as the checkpoints were trained with them.

Qwen's multimodal RoPE gives every token a (temporal, height, width) position. A text token has the same value in
all three; a vision token of temporal group g at merged-patch row i and column j of a segment that starts at s
gets (s + floor(g * interval), s + i, s + j), where interval = tokens_per_second * seconds per group (Qwen2.5-VL)
or 1 (Qwen2-VL, and images). Where the text AFTER a vision segment starts is the point of this module:

* Qwen's scheme (the released models' code, vLLM, and transformers up to 5.2): at the segment's highest position
  + 1, i.e. s + max((t - 1) * interval, h - 1, w - 1) + 1. (transformers up to 5.2 truncates the seconds per
  temporal group to an integer before computing the interval, so it matches only for whole seconds per group.)
* transformers 5.3 to 5.25: at s + max(h, w), whatever the temporal span (tools/upstream/transformers_rope_index.py).

The two agree for images and for clips whose temporal span stays within the larger spatial side; for longer
clips (Qwen2.5-VL-7B at 2 fps and 448x224 frames: more than 16 frames) transformers puts the text after the
video, and so the response, on positions the model never saw in pretraining and that vLLM's rollouts do not
use. (HF generation follows the library's own scheme: it extends the prompt's position ids, so it agrees with
the training forward either way, tests/models/test_positions.py; only the `rope_deltas` it stores, highest
position + 1, differ, which is why attribution computes its positions instead of reading them.)
`install(model, "qwen")` makes the model compute Qwen's scheme everywhere (training, attribution, generation),
which is also what vLLM rollouts use; `"transformers"` leaves the library's scheme in place.

The scheme travels with the model: `install` sets `config.videoktr_rope_positions`, so every directory written
with `save_pretrained` (checkpoints, `final/`, merged LoRA, warm starts) records it in its config.json; an
adapter directory (no config.json) records it in `videoktr_positions.json` (`record_scheme`). `resolve_scheme`
is what `load_model` does with a directory: an explicit choice wins (with one warning when the directory records
another), else the record, else, for a directory videoktr wrote before the record existed (its model card,
warm-start file, run config or checkpoint marker say so), the scheme it was trained under, else "qwen"; it says
which it chose.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
import types
from pathlib import Path

import torch

SCHEMES = ("qwen", "transformers")
FAMILIES_WITH_SCHEMES = ("qwen2_vl", "qwen2_5_vl")  # Qwen3-VL writes timestamps as text: one scheme only
RECORD_KEY = "videoktr_rope_positions"  # config.json key of a model directory
ADAPTER_RECORD = "videoktr_positions.json"  # {"rope_positions": ...} of an adapter directory (no config.json)


def segment_positions(start: int, grid_thw, spatial_merge_size: int, interval: float) -> torch.Tensor:
    """Positions [3, t*h*w/m^2] of one vision segment starting at `start`, temporal-group-major, row-major."""
    t, h, w = int(grid_thw[0]), int(grid_thw[1]) // spatial_merge_size, int(grid_thw[2]) // spatial_merge_size
    temporal = (torch.arange(t) * interval).long().view(t, 1, 1).expand(t, h, w)
    rows = torch.arange(h).view(1, h, 1).expand(t, h, w)
    cols = torch.arange(w).view(1, 1, w).expand(t, h, w)
    return torch.stack([temporal, rows, cols]).reshape(3, -1) + start


def row_positions(token_types: list[int], grids: dict[int, list], intervals: list[float],
                  spatial_merge_size: int) -> torch.Tensor:
    """Qwen's scheme for one unpadded sequence: token_types [L] (0 text, 1 image, 2 video), the grids of its
    images (key 1) and videos (key 2) in order, and each video's temporal interval -> positions [3, L].
    Text continues one past the highest position so far."""
    parts, next_pos = [], 0
    counters = {1: 0, 2: 0}
    for kind, run in itertools.groupby(token_types):
        n = len(list(run))
        if kind == 0:
            parts.append(torch.arange(next_pos, next_pos + n).expand(3, n))
        else:
            grid = grids[kind][counters[kind]]
            interval = intervals[counters[kind]] if kind == 2 else 1.0
            counters[kind] += 1
            seg = segment_positions(next_pos, grid, spatial_merge_size, interval)
            if seg.shape[1] != n:
                raise ValueError(f"a vision segment of {n} placeholder tokens does not match its grid {list(grid)} "
                                 f"({seg.shape[1]} tokens)")
            parts.append(seg)
        next_pos = int(parts[-1].max()) + 1
    return torch.cat(parts, dim=1) if parts else torch.zeros(3, 0, dtype=torch.long)


def qwen_rope_index(model, input_ids: torch.Tensor, mm_token_type_ids: torch.Tensor, image_grid_thw=None,
                    video_grid_thw=None, second_per_grid_ts=None, attention_mask=None, **_):
    """Drop-in for `Qwen2VLModel.get_rope_index` / `Qwen2_5_VLModel.get_rope_index` with Qwen's scheme:
    input_ids [B, L] -> (position_ids [3, B, L] (pads 0), rope_deltas [B, 1] = highest position + 1 - length),
    the deltas generation adds to a new token's index."""
    vision = model.config.vision_config
    merge = vision.spatial_merge_size
    per_second = getattr(vision, "tokens_per_second", None)  # Qwen2.5-VL only
    B, L = input_ids.shape
    positions = torch.zeros(3, B, L, dtype=input_ids.dtype, device=input_ids.device)
    deltas = []
    images = list(image_grid_thw) if image_grid_thw is not None else []
    videos = list(video_grid_thw) if video_grid_thw is not None else []
    seconds = [float(s) for s in second_per_grid_ts] if second_per_grid_ts is not None else [1.0] * len(videos)
    used = {1: 0, 2: 0}
    for b in range(B):
        keep = attention_mask[b].bool() if attention_mask is not None else torch.ones(L, dtype=torch.bool,
                                                                                      device=input_ids.device)
        types_ = mm_token_type_ids[b][keep].tolist()
        counts = {k: sum(1 for kind, _ in itertools.groupby(types_) if kind == k) for k in (1, 2)}
        grids = {1: images[used[1]: used[1] + counts[1]], 2: videos[used[2]: used[2] + counts[2]]}
        intervals = [(per_second * s) if per_second is not None else 1.0
                     for s in seconds[used[2]: used[2] + counts[2]]]
        used[1] += counts[1]
        used[2] += counts[2]
        row = row_positions(types_, grids, intervals, merge)
        positions[:, b, keep] = row.to(positions)
        deltas.append(int(row.max()) + 1 - row.shape[1] if row.numel() else 0)
    return positions, torch.tensor(deltas, device=input_ids.device).unsqueeze(1)


def install(model, scheme: str = "qwen"):
    """Make a loaded Qwen2-VL / Qwen2.5-VL model compute its 3D positions with `scheme` (training forward,
    attribution and generation all go through `model.model.get_rope_index`). Other families are left as they
    are (Qwen3-VL writes timestamps as text and gives every temporal group one temporal step). Returns model."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown position scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    inner = getattr(model, "model", None)
    family = getattr(getattr(model, "config", None), "model_type", "")
    if inner is None or family not in FAMILIES_WITH_SCHEMES or not hasattr(inner, "get_rope_index"):
        return model
    if scheme == "qwen":
        inner.get_rope_index = types.MethodType(qwen_rope_index, inner)
    elif "get_rope_index" in vars(inner):
        del inner.get_rope_index
    setattr(model.config, RECORD_KEY, scheme)  # save_pretrained writes it into config.json: the record
    return model


def scheme_of(model) -> str:
    """Which scheme a model computes ("qwen" once `install`ed, else "transformers")."""
    inner = getattr(model, "model", None)
    bound = vars(inner).get("get_rope_index") if inner is not None else None
    return "qwen" if bound is not None and getattr(bound, "__func__", None) is qwen_rope_index else "transformers"


def loaded_scheme(model, requested: str | None = None) -> str:
    """The scheme a model loaded by `load_model` computes, for a run's recorded settings: its config's record
    (set by `install`), else (a family with one scheme only) `requested` or "qwen"."""
    return getattr(getattr(model, "config", None), RECORD_KEY, None) or requested or "qwen"


# ------------------------------------------------------------------------------------------------------------
# The record: which scheme a model directory was trained under

_said: set[str] = set()  # messages already printed by this process (each warning or choice is said once)


def _say(message: str) -> None:
    if message not in _said:
        _said.add(message)
        print(message, file=sys.stderr)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def recorded_scheme(path: str | Path) -> str | None:
    """The scheme a directory records: config.json's `videoktr_rope_positions` (a model directory) or
    `videoktr_positions.json` (an adapter directory); None when it records none."""
    p = Path(path)
    for file, key in ((p / "config.json", RECORD_KEY), (p / ADAPTER_RECORD, "rope_positions")):
        value = (_read_json(file) or {}).get(key) if file.is_file() else None
        if value in SCHEMES:
            return value
    return None


def record_scheme(path: str | Path, scheme: str) -> Path:
    """Record `scheme` in the directory `path`: in its config.json when it has one (normally written there by
    save_pretrained already), else in `videoktr_positions.json` (adapter directories). Returns the file."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown position scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    p = Path(path)
    config = p / "config.json"
    if config.is_file():
        raw = _read_json(config)
        if isinstance(raw, dict) and raw.get(RECORD_KEY) != scheme:
            raw[RECORD_KEY] = scheme
            config.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
        return config
    target = p / ADAPTER_RECORD
    target.write_text(json.dumps({"rope_positions": scheme}) + "\n")
    return target


_CARD_TITLE = "# Trained with videoktr"
_CARD_INSTALL = re.compile(r'install\(model, "(qwen|transformers)"\)')


def _run_config_scheme(run_dir: Path) -> tuple[str, str] | None:
    """The scheme in a videoktr run directory's config.json (model.rope_positions; absent before the option)."""
    raw = _read_json(run_dir / "config.json") if (run_dir / "config.json").is_file() else None
    if not (isinstance(raw, dict) and isinstance(raw.get("model"), dict) and isinstance(raw.get("rl"), dict)):
        return None
    scheme = raw["model"].get("rope_positions")
    if scheme in SCHEMES:
        return scheme, f"its run's {run_dir / 'config.json'} names it (model.rope_positions)"
    return "transformers", (f"its run ({run_dir / 'config.json'}) was made by videoktr before the scheme was an "
                            f"option, under transformers' positions")


def legacy_scheme(path: str | Path) -> tuple[str, str] | None:
    """(scheme, why) for a directory without a record that videoktr wrote earlier, from what it left there: its
    model card (README.md: the snippet's `install(model, ...)`; a card without it predates the option), a warm
    start's warmstart.json (settings.rope_positions), the run directory's config.json (for checkpoint-N/,
    final/ and final/adapter/), or a checkpoint completion marker alone. Before the option existed
    (2026-11-29) videoktr trained under transformers' scheme. None: no videoktr marker."""
    p = Path(path)
    card = p / "README.md"
    text = card.read_text(encoding="utf-8", errors="replace") if card.is_file() else ""
    if _CARD_TITLE in text:
        m = _CARD_INSTALL.search(text)
        if m:
            return m.group(1), f"its model card ({card}) names it"
        return "transformers", (f"its model card ({card}) was written by videoktr before the scheme was an "
                                f"option, under transformers' positions")
    warm = _read_json(p / "warmstart.json") if (p / "warmstart.json").is_file() else None
    if isinstance(warm, dict) and "key" in warm:
        scheme = (warm.get("settings") or {}).get("rope_positions")
        if scheme in SCHEMES:
            return scheme, f"its {p / 'warmstart.json'} names it"
        return "transformers", (f"it is a videoktr warm start ({p / 'warmstart.json'}) from before the scheme was "
                                f"an option, under transformers' positions")
    for run_dir in (p.parent, p.parent.parent) if p.parent.name == "final" else (p.parent,):
        found = _run_config_scheme(run_dir)
        if found is not None:
            return found
    if (p / "videoktr_complete.json").is_file() or (p / "run_identity.json").is_file():
        return "transformers", (f"it is a videoktr checkpoint ({p / 'videoktr_complete.json'}) from before the "
                                f"scheme was an option, under transformers' positions")
    return None


def resolve_scheme(path: str | Path, requested: str | None = None, what: str = "model directory") -> str:
    """The scheme to load the model in `path` with. `requested` (a flag or option) wins; it warns once when the
    directory records (or, written by an earlier videoktr, implies) another. Without it: the record; else the
    scheme an earlier videoktr trained it under (`legacy_scheme`); else "qwen" (the released models' own). A
    choice made without a record is said once on stderr."""
    if requested is not None and requested not in SCHEMES:
        raise ValueError(f"unknown position scheme {requested!r}; choose one of {', '.join(SCHEMES)}")
    record = recorded_scheme(path)
    legacy = legacy_scheme(path) if record is None else None
    if requested is not None:
        known = record or (legacy[0] if legacy else None)
        if known is not None and known != requested:
            source = "records" if record else "was trained under"
            _say(f"warning: {what} {path} {source} 3D position scheme {known!r}; using {requested!r} as asked "
                 f"(after a long clip the two put the text on different positions)")
        return requested
    if record is not None:
        return record
    if legacy is not None:
        scheme, why = legacy
    elif (Path(path) / "videoktr_model.json").is_file():
        scheme, why = "qwen", "an untrained model written by `videoktr init-model` (no scheme of its own)"
    else:
        scheme, why = "qwen", ("it has no videoktr marker (another tool's checkpoint, e.g. a released model): the "
                               "released models' scheme")
    _say(f"note: {what} {path} records no 3D position scheme; using {scheme!r}: {why}. Choose another with "
         f"--rope-positions (rope_positions= for the lmms-eval plugin)")
    return scheme
