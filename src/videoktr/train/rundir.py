"""The run directory's lifecycle: its identity (what a checkpoint must have been trained with to be resumed), the
checkpoint to resume or the fresh start that moves an earlier run aside (`superseded-<time>/`), the finished run
that has nothing left to do (`RunComplete`), and the wall time of every invocation (`WallClock`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import NamedTuple

from .config import TrainConfig
from .report import REPORT_NAME

FINAL_NAME = "final"  # the trained model, loadable like any checkpoint (videoktr eval --model)


def cpu_only() -> bool:
    """Whether the run trains on CPU (no GPU present): GRPOConfig's `use_cpu` and `process_state` agree on it."""
    import torch

    return not torch.cuda.is_available()


def process_state():
    """accelerate's view of this run's processes, set up as the trainer sets it up (a bare PartialState()
    under torchrun on CPU would see one process while the trainer later sees all)."""
    from accelerate import PartialState

    return PartialState(cpu=cpu_only())


def start_run_dir(config: TrainConfig) -> Path:
    """Set the run's CPU threads, seed it and create its directory (`prepare_resume` records the resolved
    configuration there)."""
    import torch

    from .threads import apply_cpu_threads

    apply_cpu_threads(config.run.cpu_threads)
    torch.manual_seed(config.run.seed)
    out = Path(config.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


IDENTITY_NAME = "run_identity.json"
WALL_TIME_NAME = "wall_time.json"  # seconds of every invocation of the run, so the report can total them
# what stays when a fresh run takes over a directory: the media-check cache (results per file, not per run) and
# the earlier runs already moved aside
KEPT_ON_FRESH_START = ("media_check.jsonl",)
SUPERSEDED_PREFIX = "superseded-"
# option fields that are paths: the run identity compares them resolved (a job script may cd elsewhere)
PATH_FIELDS = {"model": ("model", "warmstart_dir"), "data": ("data", "data_root")}
# options a resumed run may change: how long it runs, how it saves and logs, where things are written
RESUMABLE = {"rl": ("max_steps", "num_train_epochs"), "data": ("media_workers", "media_cache"),
             "run": ("output_dir", "cache_dir", "save_steps", "save_total_limit", "save_only_model", "logging_steps",
                     "resume", "eval_attribution", "save_final", "log_rollouts_every", "log_rollouts_max",
                     "cpu_threads")}


def run_identity(config: TrainConfig, start_model: str | Path) -> dict:
    """What a checkpoint in the run directory must have been trained with to be resumed: every option except
    the RESUMABLE ones, and the resolved starting model (e.g. the default run's warm start, named by a hash of
    its inputs)."""
    sections = config.to_dict()
    for section, names in PATH_FIELDS.items():
        for name in names:
            if sections[section].get(name):
                sections[section][name] = str(Path(sections[section][name]).resolve())
    for section, names in RESUMABLE.items():
        for name in names:
            sections[section].pop(name, None)
    return {"config": sections, "start_model": str(Path(start_model).resolve())}


def identity_digest(identity: dict) -> str:
    """A short digest of a run identity: what each checkpoint's completion marker records."""
    import hashlib

    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _differences(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix.rstrip('.')}: {b!r} -> {a!r}"]


def checkpoint_to_resume(config: TrainConfig, out: Path, identity: dict) -> str | None:
    """The newest complete checkpoint this run wrote in `out` (None: start fresh), after saying which newer ones
    it skips and why (incomplete: killed while saving). Raises ValueError when the directory holds complete
    checkpoints of another experiment, rather than continuing a different run or discarding it silently."""
    from .checkpoint import resumable_checkpoint

    if not config.run.resume:
        return None
    resume, skipped = resumable_checkpoint(out, identity_digest(identity))
    for name, reason in skipped:
        print(f"      not resuming {out / name}: {reason}")
    if resume is not None:
        return str(resume)
    others = [name for name, reason in skipped if reason.startswith("written by another run")]
    if others:
        recorded = out / IDENTITY_NAME
        differences = _differences(identity, json.loads(recorded.read_text())) if recorded.is_file() else []
        what = "; ".join(differences[:5]) + ("; ..." if len(differences) > 5 else "") if differences else others[0]
        raise ValueError(f"{out} holds checkpoints of a different run ({what}): use another --output-dir, or "
                         f"--no-resume to start over in this one (the earlier run's files are then moved to "
                         f"{out / SUPERSEDED_PREFIX}<time>/, nothing is deleted)")
    return None


def move_aside(out: Path) -> Path | None:
    """Move an earlier run's files out of the way of a fresh start: into `<out>/superseded-<UTC time>/`, all but
    the media-check cache and earlier superseded folders. Returns that folder, None when there was nothing."""
    import shutil
    from datetime import datetime, timezone

    old = [p for p in out.iterdir() if p.name not in KEPT_ON_FRESH_START and not p.name.startswith(SUPERSEDED_PREFIX)
           and not p.name.startswith(".")]
    if not old:
        return None
    dest = out / f"{SUPERSEDED_PREFIX}{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%f')}"
    dest.mkdir()
    for p in old:
        shutil.move(str(p), str(dest / p.name))
    return dest


class RunStart(NamedTuple):
    resume: str | None  # the checkpoint to continue from, None for a fresh start
    identity: str  # digest of the run identity, recorded in every checkpoint's completion marker


class RunComplete(Exception):
    """The run directory holds this run finished (its last step's checkpoint, report and final model): `run`
    says so and returns the report without doing anything."""

    def __init__(self, out: Path, steps: int, report: dict):
        super().__init__(f"{out} is already complete: {steps} of {steps} steps")
        self.out, self.steps, self.report = out, steps, report


def planned_steps(config: TrainConfig, checkpoint: str | Path) -> int | None:
    """The optimizer steps this configuration trains in all: rl.max_steps, or (rl.num_train_epochs > 0) the steps
    that the checkpoint's run planned for the same number of epochs (its completion marker); None when unknown."""
    from .checkpoint import read_marker

    if config.rl.num_train_epochs <= 0:
        return config.rl.max_steps
    length = read_marker(checkpoint).get("length") or {}
    if length.get("max_steps") == -1 and length.get("num_train_epochs") == config.rl.num_train_epochs:
        return length.get("planned_steps")
    return None


def finished_report(config: TrainConfig, out: Path, checkpoint: str | Path) -> RunComplete | None:
    """RunComplete when `checkpoint` (the one to resume) is the run's last step and the run wrote its report for
    that step (and final/, when run.save_final): re-running the same command then has nothing to do. A run killed
    between its last checkpoint and its report is not complete (the rerun writes them without training)."""
    from .checkpoint import read_marker

    step, planned = read_marker(checkpoint).get("step"), planned_steps(config, checkpoint)
    if step is None or planned is None or step < planned:
        return None
    try:
        report = json.loads((out / REPORT_NAME).read_text())
    except (OSError, ValueError):
        return None
    if report.get("steps") != step or (config.run.save_final and not (out / FINAL_NAME).is_dir()):
        return None
    return RunComplete(out, step, report)


def prepare_resume(config: TrainConfig, out: Path, start_model: str | Path) -> RunStart:
    """Before any expensive work: the checkpoint to resume, or a fresh start that moves an earlier run's files
    aside (`move_aside`) and records this run's identity; the resolved configuration is written either way.
    Raises ValueError when the directory holds another run's checkpoints and --no-resume was not given, and
    RunComplete when the checkpoint to resume ends the run and its report is written (`finished_report`)."""
    from .checkpoint import write_json_atomic

    identity = run_identity(config, start_model)
    resume = checkpoint_to_resume(config, out, identity)
    done = finished_report(config, out, resume) if resume else None
    if done is not None:
        raise done
    state = process_state()
    if state.is_main_process:
        if resume is None:
            moved = move_aside(out)
            if moved is not None:
                print(f"      starting fresh: the earlier contents of {out} were moved to {moved}")
            write_json_atomic(out / IDENTITY_NAME, identity)
        write_json_atomic(out / "config.json", config.to_dict())
    state.wait_for_everyone()  # no process reads the directory while the main process moves things
    return RunStart(resume, identity_digest(identity))


class WallClock:
    """This invocation's seconds in the run's `wall_time.json` (one entry per invocation), written as it goes:
    when training starts, at each checkpoint, at most every `every` seconds between them, and at the end, so
    that an invocation killed half-way still counts in the total that a later invocation's report gives."""

    def __init__(self, out: Path, started: float, every: float = 10.0):
        import os

        self.out, self.started, self.every = Path(out), started, every
        self.id = f"{os.getpid()}-{time.time_ns()}"
        self.written_at: float | None = None

    def record(self, seconds: float | None = None) -> float:
        """Write this invocation's seconds so far (or `seconds`); return the total over every invocation."""
        from .checkpoint import write_json_atomic

        path = self.out / WALL_TIME_NAME
        try:
            invocations = json.loads(path.read_text())["invocations"] if path.is_file() else []
        except (OSError, ValueError, KeyError, TypeError):
            invocations = []
        # entries of older videoktr versions are bare numbers
        mine = {"id": self.id, "seconds": time.perf_counter() - self.started if seconds is None else seconds}
        invocations = [e for e in invocations if not (isinstance(e, dict) and e.get("id") == self.id)] + [mine]
        if self.out.is_dir():
            write_json_atomic(path, {"invocations": invocations})
        self.written_at = time.perf_counter()
        return sum(e["seconds"] if isinstance(e, dict) else float(e) for e in invocations)

    def callback(self):
        """A TrainerCallback that records on the main process as training goes."""
        from transformers import TrainerCallback

        clock = self

        class WallTime(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                if state.is_world_process_zero:
                    clock.record()

            def on_save(self, args, state, control, **kwargs):
                if state.is_world_process_zero:
                    clock.record()

            def on_step_end(self, args, state, control, **kwargs):
                if state.is_world_process_zero and (clock.written_at is None
                                                    or time.perf_counter() - clock.written_at >= clock.every):
                    clock.record()

        return WallTime()
