"""A run's report: the training statistics (`training_summary`, the learning signal), the plot of its curves
(`plot_history`), the console warning when most steps had no gradient, and `report.json` with its console table
(`publish`)."""

from __future__ import annotations

from pathlib import Path

from .config import TrainConfig

REPORT_NAME = "report.json"
PLOT_NAME = "training.png"


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average (bias-corrected, NaN-skipping) of a noisy per-step series, as TensorBoard's."""
    out, avg, seen = [], 0.0, 0
    for v in values:
        if v == v:  # not NaN
            avg, seen = weight * avg + (1 - weight) * v, seen + 1
        out.append(avg / (1 - weight**seen) if seen else float("nan"))
    return out


# training.png's panels after the rewards: (title, ((logged key, label), ...))
HISTORY_PANELS = (
    ("what the update reaches", (("ktr/update_ratio", "share of tokens updated (KTR mask)"),
                                 ("frac_reward_zero_std", "share of prompt groups without gradient"))),
    ("KL to the reference policy", (("kl", "KL to the reference policy"),)),
    ("clip ratio", (("clip_ratio", "clip ratio"),)),
)
# why a series may be absent or 0 throughout, said in the figure's note
ABSENT_HINTS = {"kl": "rl.beta 0: no KL term", "clip_ratio": "one policy update per batch (rl.num_iterations 1)"}


def history_panels(log_history: list[dict], accuracy_key: str | None) -> tuple[list[tuple[str, list]], list[str]]:
    """What training.png shows: the rewards panel, then each HISTORY_PANELS panel with the series the run logged
    with a value other than 0 (a panel left with no series is not drawn), and a note per series left out
    ("kl: not logged (rl.beta 0: no KL term)", "clip_ratio: 0 at every step (...)")."""
    logs = [h for h in log_history if "reward" in h]

    def values(key):
        return [float(h[key]) for h in logs if h.get(key) is not None and float(h[key]) == float(h[key])]

    rewards = [("reward", "mean reward")] + ([(accuracy_key, "accuracy reward")] if accuracy_key else [])
    panels, notes = [("rewards", rewards)], []
    for title, series in HISTORY_PANELS:
        kept = []
        for key, label in series:
            found = values(key)
            hint = f" ({ABSENT_HINTS[key]})" if key in ABSENT_HINTS else ""
            if not found:
                if key != "ktr/update_ratio":  # not a masking method: nothing to say
                    notes.append(f"{key}: not logged{hint}")
            elif all(v == 0 for v in found):
                notes.append(f"{key}: 0 at every step{hint}")
            else:
                kept.append((key, label))
        if kept:
            panels.append((title, kept))
    return panels, notes


def plot_history(log_history: list[dict], path: Path, accuracy_key: str | None,
                 heldout: tuple[float, float] | None = None) -> Path:
    """The run's curves as a PNG, each series raw (faint) under its smoothed curve: rewards (and held-out accuracy
    before and after, when the run measured it), then what the run logged of the share of updated tokens and of
    prompt groups without gradient, the KL to the reference and the clip ratio (`history_panels`: series never
    logged, or 0 throughout, are named in a note under the panels instead of drawn)."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = [h for h in log_history if "reward" in h]
    steps = [h["step"] for h in logs]
    panels, notes = history_panels(log_history, accuracy_key)

    def draw(ax, key, label):
        values = [float("nan") if h.get(key) is None else float(h[key]) for h in logs]
        if all(v != v for v in values):
            return
        line, = ax.plot(steps, smooth(values), label=label)
        ax.plot(steps, values, color=line.get_color(), alpha=0.25, linewidth=0.8)

    cols = min(2, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.5 * rows + (0.4 if notes else 0)), sharex=True,
                             squeeze=False)
    flat = list(axes.flat)
    for ax, (title, series) in zip(flat, panels):
        for key, label in series:
            draw(ax, key, label)
        if title == "rewards" and heldout is not None and steps:
            ax.scatter([steps[0], steps[-1]], list(heldout), marker="D", color="black", zorder=3,
                       label=f"held-out accuracy {heldout[0]:.3f} -> {heldout[1]:.3f}")
        if title == "what the update reaches":
            ax.set_ylim(-0.02, 1.02)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in flat[len(panels):]:
        fig.delaxes(ax)
    for ax in flat[:len(panels)][-cols:]:
        ax.set_xlabel("optimizer step")
        ax.xaxis.set_tick_params(labelbottom=True)
    if notes:
        fig.text(0.01, 0.01, "not drawn: " + "; ".join(notes), fontsize=8, color="#555555")
    fig.tight_layout(rect=(0, 0.04 if notes else 0, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def training_summary(history: list[dict], method: str, window: int = 10) -> dict:
    """The report's training statistics from the whole log history (a resumed run's history includes the
    steps of earlier invocations): rewards at the start and the end (means over `window` logged steps), the
    learning signal, step time, for the masking methods (and VPPO) the update ratio, for PAPO its perception KL,
    and with dynamic sampling the mean counts it logged per step."""
    steps = [h for h in history if "reward" in h]

    def mean(key, rows=steps):
        values = [h[key] for h in rows if h.get(key) is not None]
        return sum(values) / len(values) if values else None

    out = {
        "logged_steps": len(steps),
        "reward_start": mean("reward", steps[:window]),
        "reward_end": mean("reward", steps[-window:]),
        "mean_step_seconds": mean("step_time"),
        "learning_signal": learning_signal(steps),
    }
    if method in ("ktr", "entropy"):
        out["mean_update_ratio"] = mean("ktr/update_ratio")
        out["mean_attributed_share"] = mean("ktr/attributed_share")
    if method == "vppo":
        out["mean_update_ratio"] = mean("vppo/update_ratio")
    if method == "papo":
        out["mean_perception_kl"] = mean("papo/perception_kl")
    if any("dynamic_sampling/resampled_groups" in h for h in steps):  # rl.dynamic_sampling: per logged step
        out["dynamic_sampling"] = {name: mean(f"dynamic_sampling/{name}") for name in (
            "informative_share", "resampled_groups", "sampled_groups", "generation_batches", "unfilled_groups")}
    return out


def no_gradient(log: dict) -> bool:
    """Whether a logged step carried no learning signal: every prompt group's responses had equal rewards (zero
    advantages: loss 0, no update), or the gradient norm was 0."""
    return log.get("frac_reward_zero_std") == 1.0 or log.get("grad_norm") == 0.0


def learning_signal(steps: list[dict]) -> dict:
    """How much of the run could learn at all: logged steps without any gradient, and the mean share of prompt
    groups whose responses all got the same reward (TRL's frac_reward_zero_std)."""
    n = len(steps)
    dead = sum(no_gradient(h) for h in steps)
    zero_std = [h["frac_reward_zero_std"] for h in steps if h.get("frac_reward_zero_std") is not None]
    return {"steps_without_gradient": dead, "share_steps_without_gradient": dead / n if n else None,
            "mean_share_groups_without_gradient": sum(zero_std) / len(zero_std) if zero_std else None}


NO_SIGNAL_HINT = ("every prompt group's responses got the same reward, so the advantages are 0 and nothing is "
                  "updated. Likely: the data is too hard or too easy for this model (all wrong or all right), or "
                  "the reward never parses its answers (see rewards/*/mean and a few completions)")


WORLD_NO_SIGNAL_NOTE = ("every prompt group's responses got the same reward. Expected on the synthetic world: most "
                        "of its RL prompts are ones the warm start answers right in every sample or in none (82% of "
                        "them for the default run's warm start); data.world_rl_filter keeps only the others, which did "
                        "not raise held-out accuracy (docs/default-run.md)")


def no_signal_message(config: TrainConfig, dead: int, span: str) -> str:
    """The console line for `dead` steps of `span` ("500 logged steps") without a learning signal: a warning on
    data, where it means something is likely wrong; a note on the synthetic world, its difficulty mix."""
    if config.data.data:
        return f"warning: {dead} of {span} had no learning signal: {NO_SIGNAL_HINT}"
    return f"note: {dead} of {span} had no gradient: {WORLD_NO_SIGNAL_NOTE}"


def learning_signal_callback(window: int = 20, threshold: float = 0.8, every: int = 100, config=None):
    """A TrainerCallback that warns on the console when most of the last `window` logged steps had no learning
    signal (`no_gradient`), at most once every `every` steps."""
    from transformers import TrainerCallback

    class LearningSignalMonitor(TrainerCallback):
        def __init__(self):
            self.recent: list[bool] = []
            self.warned_at = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "reward" not in logs:
                return
            self.recent = (self.recent + [no_gradient(logs)])[-window:]
            dead = sum(self.recent)
            if (len(self.recent) == window and dead >= threshold * window and state.is_world_process_zero
                    and (self.warned_at is None or state.global_step - self.warned_at >= every)):
                self.warned_at = state.global_step
                message = (no_signal_message(config, dead, f"the last {window} logged steps") if config is not None
                           else f"{dead} of the last {window} logged steps had no learning signal: {NO_SIGNAL_HINT}")
                print(f"\nvideoktr: {message}", flush=True)

    return LearningSignalMonitor()


def write_report(output_dir: Path, report: dict) -> Path:
    from .checkpoint import write_json_atomic

    return write_json_atomic(output_dir / REPORT_NAME, report)


def publish(config: TrainConfig, report: dict) -> Path:
    """On the main process, at the end of a run: the no-learning-signal warning when at least half the logged
    steps had no gradient, report.json, the results in the final model's card, and the console table."""
    from .summary import add_results_to_card, console_table

    out = Path(config.run.output_dir)
    signal = (report.get("train") or {}).get("learning_signal") or {}
    if signal.get("share_steps_without_gradient") and signal["share_steps_without_gradient"] >= 0.5:
        print(no_signal_message(config, signal["steps_without_gradient"],
                                f"{report['train']['logged_steps']} logged steps"))
    path = write_report(out, report)
    final = (report.get("train") or {}).get("final_model")
    if final:
        add_results_to_card(Path(final), report)
    print("\n" + console_table(report) + "\n")
    print(f"report: {path}")
    if (out / PLOT_NAME).exists():
        print(f"plot:   {out / PLOT_NAME}")
    return path
