"""Checks of a run's options that take seconds, done before any media is decoded or any weights are loaded.

`preflight(config)` runs first in `train.run.run`: the options' types and ranges (`TrainConfig.validate`), then
what needs the file system or transformers but no model weights and no media: the learning-rate schedule, the
run's directories, the data file and media root, and the starting model's config.json. A mistake there is
reported in seconds instead of after the start-up media check and the model load (minutes on real data and a
7B model). Every refusal is a `ConfigError` (a ValueError: `videoktr train` prints it and exits with code 2).
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import ConfigError, TrainConfig

# schedules that need an evaluation strategy (TrainingArguments refuses them without one); `videoktr train`
# evaluates nothing during training
NEEDS_EVALUATION = ("reduce_lr_on_plateau", "greedy")


def preflight(config: TrainConfig) -> None:
    """Raise ConfigError for the first option that cannot work; load no weights and decode no media."""
    config.validate()
    check_scheduler(config)
    check_directory_target(config.run.output_dir, config.label("run", "output_dir"))
    d = config.data
    if d.data:
        check_data(config)
        if d.media_cache not in ("", "none"):
            check_file_target(d.media_cache, config.label("data", "media_cache"))
    else:  # the synthetic world: its clips, the base model and the warm start are written under these
        check_directory_target(config.run.cache_dir, config.label("run", "cache_dir"))
        if not config.model.model and config.model.warmstart_dir:
            check_directory_target(config.model.warmstart_dir, config.label("model", "warmstart_dir"))
    if config.model.model:
        check_model_dir(config.model.model, config.label("model", "model"))
    check_trackers(config)


TRACKERS = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb"}  # name -> the package it needs


def check_trackers(config: TrainConfig) -> None:
    """run.report_to names known trackers whose packages are installed (else the run would fail at its first log)."""
    import importlib.util

    label = config.label("run", "report_to")
    for name in config.run.report_to:
        if name not in TRACKERS:
            raise ConfigError(f"{label}: unknown tracker {name!r}; choose from {sorted(TRACKERS)}")
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise ConfigError(f"{label}: {name} is not installed: pip install {TRACKERS[name]}")


def scheduler_problems() -> dict[str, str]:
    """Every transformers `SchedulerType` value -> "" when `videoktr train` can run it, else why not (it needs
    an evaluation strategy, or options such as min_lr that videoktr does not pass). Built on a one-parameter
    optimizer: nothing is loaded."""
    import torch
    from transformers import get_scheduler
    from transformers.trainer_utils import SchedulerType

    problems = {}
    for kind in SchedulerType:
        name = kind.value
        if name in NEEDS_EVALUATION:
            problems[name] = "it needs an evaluation strategy, and videoktr train evaluates nothing during training"
            continue
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        try:
            get_scheduler(name, optimizer, num_warmup_steps=1, num_training_steps=2)
            problems[name] = ""
        except (ValueError, TypeError) as exc:  # a required scheduler option (lr_scheduler_kwargs) is missing
            problems[name] = f"it needs options videoktr does not pass ({exc})"
    return problems


def check_scheduler(config: TrainConfig) -> None:
    name = config.rl.lr_scheduler_type
    problems = scheduler_problems()
    usable = [n for n, why in problems.items() if not why]
    label = config.label("rl", "lr_scheduler_type")
    if name not in problems:
        raise ConfigError(f"{label} must be one of {usable} (transformers' schedules), got {name!r}")
    if problems[name]:
        raise ConfigError(f"{label} {name!r} cannot be used: {problems[name]}; usable: {usable}")


def _first_existing_parent(p: Path) -> Path | None:
    return next((parent for parent in p.parents if parent.exists() or parent.is_symlink()), None)


def check_directory_target(path: str | Path, label: str) -> None:
    """`path` is a directory, or one that can be created: neither it nor its nearest existing parent is a file."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{label} {str(p)!r} is a file, not a directory: choose another directory, or move the "
                          f"file away")
    if not p.exists():
        parent = _first_existing_parent(p)
        if parent is not None and not parent.is_dir():
            raise ConfigError(f"{label} {str(p)!r} cannot be created: {str(parent)!r} is a file, not a directory")


def check_file_target(path: str | Path, label: str) -> None:
    """`path` is a file, or one that can be written: not a directory, and its nearest existing parent is one."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{label} {str(p)!r} is a directory; it names a file")
    if not p.exists():
        parent = _first_existing_parent(p)
        if parent is not None and not parent.is_dir():
            raise ConfigError(f"{label} {str(p)!r} cannot be created: {str(parent)!r} is a file, not a directory")


def _relative_hint(p: Path) -> str:
    return "" if p.is_absolute() else f" (relative to the current directory, {Path.cwd()})"


def check_data(config: TrainConfig) -> None:
    d = config.data
    data = Path(d.data)
    if not data.is_file():
        what = "is a directory, not a file" if data.is_dir() else "not found"
        raise ConfigError(f"{config.label('data', 'data')} {d.data!r}: training data file {what}"
                          f"{_relative_hint(data)}")
    # a file without rows (an empty list or an empty file is small): said here, not as "no trainable rows left"
    head = data.read_text(encoding="utf-8", errors="replace").strip() if data.stat().st_size < 4096 else None
    if head in ("", "[]"):
        raise ConfigError(f"{config.label('data', 'data')} {d.data!r}: the training data file holds no rows "
                          f"({'an empty JSON list' if head else 'it is empty'})")
    if d.data_root and not Path(d.data_root).is_dir():
        root = Path(d.data_root)
        what = "is a file, not a directory" if root.exists() else "not found"
        raise ConfigError(f"{config.label('data', 'data_root')} {d.data_root!r}: media directory {what}"
                          f"{_relative_hint(root)}")
    if not config.model.model:
        raise ConfigError("model.model (--model) must name a model directory when training on data "
                          "(e.g. a Qwen2.5-VL checkpoint, or one written by `videoktr init-model`)")


def check_model_dir(path: str | Path, label: str) -> None:
    """A local checkpoint videoktr can train: a directory with a config.json of a supported architecture (read
    with transformers' AutoConfig, local files only) and a weights file. No weights are read."""
    from transformers import AutoConfig
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME

    from ..models.adapters import SUPPORTED, adapter_for_config

    p = Path(path)
    if not p.is_dir():
        what = "is a file, not a directory" if p.exists() else "does not exist"
        raise ConfigError(f"{label} {str(path)!r}: model directory {what}{_relative_hint(p)} (videoktr never "
                          f"downloads: pass a local checkpoint, e.g. one written by `videoktr init-model`)")
    config_file = p / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"{label} {str(path)!r} is not a model checkpoint: it has no config.json")
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{label} {str(path)!r}: {config_file} cannot be read as JSON ({exc})") from None
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    supported = ", ".join(f"{k} ({v})" for k, v in SUPPORTED.items())
    if model_type not in SUPPORTED:
        raise ConfigError(f"{label} {str(path)!r} holds an unsupported architecture (config.json model_type "
                          f"{model_type!r}); videoktr trains {supported}")
    try:
        adapter_for_config(AutoConfig.from_pretrained(str(p), local_files_only=True))
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
        raise ConfigError(f"{label} {str(path)!r}: {config_file} is not a usable {SUPPORTED[model_type]} "
                          f"configuration ({type(exc).__name__}: {exc})") from None
    weights = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)
    if not any((p / name).is_file() for name in weights):
        raise ConfigError(f"{label} {str(path)!r} has a config.json but no weights (none of {list(weights)})")
