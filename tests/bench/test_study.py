"""bench/study.py --quick end to end: every arm and seed summarised, paired tests against grpo, answer-span rates,
and a second invocation that launches nothing (finished cells are skipped) and continues a half-finished study."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "study.py"


def _study(out: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=1800, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _module():
    sys.path.insert(0, str(BENCH.parent))
    try:
        import study
    finally:
        sys.path.remove(str(BENCH.parent))
    return study


def _launched(out: Path) -> list[dict]:
    path = out / "launched.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.mark.slow
def test_quick_study(tmp_path):
    out = tmp_path / "study"
    _study(out)
    assert len(_launched(out)) == 4  # grpo and ktr x seeds 0, 1
    summary = json.loads((out / "summary.json").read_text())
    arms = summary["worlds"]["short"]["arms"]
    assert set(arms) == {"grpo", "ktr"}
    for name, arm in arms.items():
        assert arm["seeds"] == [0, 1] and arm["steps"] == [3], name
        assert arm["accuracy_after"]["n"] == 2 and 0 <= arm["accuracy_after"]["mean"] <= 1
        assert set(arm["accuracy_after_per_family"]) == {"count", "order", "presence", "text"}
        # one warm start for the world: the same accuracy before RL in every cell
        assert arm["accuracy_before"]["std"] == 0
    assert arms["grpo"]["accuracy_before"]["mean"] == arms["ktr"]["accuracy_before"]["mean"]
    assert arms["grpo"]["vs_grpo"] is None
    vs = arms["ktr"]["vs_grpo"]
    assert set(vs["per_seed"]) == {"ws0-seed0", "ws0-seed1"}  # replicates: warm start 0, RL seeds 0 and 1
    n_clips = vs["per_seed"]["ws0-seed0"]["n"]
    assert vs["pooled"]["n"] == 2 * n_clips  # pooled over seeds: the per-seed lists concatenated
    assert 0 <= vs["pooled"]["p_value"] <= 1 and vs["pooled"]["ci95"][0] <= vs["pooled"]["gain"]
    assert set(arms["ktr"]["vs_grpo_per_family"]) == {"count", "order", "presence", "text"}
    seeds = arms["ktr"]["vs_grpo_seeds"]  # the per-seed accuracy differences and their paired t-test
    assert seeds["n"] == 2 and seeds["df"] == 1 and len(seeds["diffs"]) == 2
    assert seeds["p_value"] is None or 0 <= seeds["p_value"] <= 1  # None: identical differences
    # outcomes per replicate, with what the greedy outputs and the training rollouts looked like
    for name, arm in arms.items():
        assert [o["replicate"] for o in arm["outcomes"]] == ["ws0-seed0", "ws0-seed1"], name
        for o in arm["outcomes"]:
            assert o["gain"] == pytest.approx(o["after"] - o["before"], abs=1e-9)
            assert 0 <= o["outputs"]["after"]["format"] <= 1 and o["outputs"]["before"]["mean_words"] > 0
            assert o["sampling"]["accuracy"]["start"] is not None
        assert arm["collapse"]["n"] == 2 and arm["collapse"]["count"] == len(arm["collapse"]["replicates"])
        assert set(arm["variance"]["per_warm_start"]) == {"0"} and arm["variance"]["between_warm_starts"] is None
    power = summary["worlds"]["short"]["power"]
    assert power["replicates"] == 2 and power["delta"] == 0.02
    items = json.loads((out / "short" / "ktr" / "seed-0" / "heldout_items.json").read_text())
    assert len(items["responses_after"]) == len(items["after"]) == len(items["solutions"]) == n_clips
    # the answer span's selection by each signal of ktr, from the rollout log
    span = arms["ktr"]["answer_span"]
    assert set(span) == {"visual", "temporal", "entropy", "union"}
    for signal, rates in span.items():
        for key in ("answer_selected", "answer_tokens_selected"):
            assert 0 <= rates[key]["mean"] <= 1, (signal, key)
    assert span["union"]["answer_selected"]["mean"] >= span["visual"]["answer_selected"]["mean"]
    assert arms["ktr"]["answer_span_responses"] > 0
    assert arms["grpo"]["answer_span"] == {}  # grpo selects nothing: every token is updated
    assert 0 < arms["ktr"]["update_ratio"]["mean"] < 1
    masked = arms["ktr"]["mask_gradient"]
    assert 0 <= masked["unselected_share"]["mean"] <= 1 and 0 <= masked["unselected_confident"]["mean"] <= 1
    assert arms["grpo"]["mask_gradient"] == {"unselected_share": None, "unselected_confident": None}
    auc = arms["ktr"]["attribution_auc"]
    assert "visual/zero/vision" in auc and "temporal/shuffle/order" in auc and "entropy/vision" in auc
    text = (out / "study.md").read_text()
    assert "| grpo |" in text and "| ktr |" in text
    assert (out / "short-families.png").stat().st_size > 0 and (out / "short-outcomes.png").stat().st_size > 0
    assert "Outcomes: each replicate's change" in text

    # resumable: nothing left to run, nothing launched; a removed cell (and only it) runs again
    _study(out)
    assert len(_launched(out)) == 4
    shutil.rmtree(out / "short" / "ktr" / "seed-1")
    _study(out)
    launched = _launched(out)
    assert len(launched) == 5 and (launched[-1]["arm"], launched[-1]["seed"]) == ("ktr", 1)
    again = json.loads((out / "summary.json").read_text())["worlds"]["short"]["arms"]["ktr"]
    assert again["seeds"] == [0, 1]

    # a second warm start: its own warm-start seed and cells beside the first's, paired within a replicate
    _study(out, "--warmstart-seeds", "0", "1", "--seeds", "0", "--arms", "grpo", "ktr")
    launched = _launched(out)
    assert [(x["arm"], x["warmstart_seed"]) for x in launched[5:]] == [("grpo", 1), ("ktr", 1)]
    assert (out / "short" / "ktr" / "ws1-seed-0" / "report.json").is_file()
    arms = json.loads((out / "summary.json").read_text())["worlds"]["short"]["arms"]
    assert arms["ktr"]["replicates"] == ["ws0-seed0", "ws1-seed0"] and arms["ktr"]["warmstart_seeds"] == [0, 1]
    before = {o["warmstart_seed"]: o["before"] for o in arms["grpo"]["outcomes"]}
    assert before == {o["warmstart_seed"]: o["before"] for o in arms["ktr"]["outcomes"]}  # one warm start each
    assert set(arms["ktr"]["variance"]["per_warm_start"]) == {"0", "1"}
    assert arms["ktr"]["variance"]["between_warm_starts"] is not None


def test_mask_gradient_share(monkeypatch, tmp_path):
    """sum |A| (1 - p) on unselected tokens over the whole sum, by hand, on two logged responses (one with no
    advantage: not attributed, left out)."""
    import math

    import videoktr.analysis.rollouts as rollouts

    records = [
        {"attributed": True, "advantage": -2.0, "selected": {"union": [True, False, False]},
         "logp": {"full": [math.log(0.5), math.log(0.995), math.log(0.9)]}},
        {"attributed": True, "advantage": 1.0, "selected": {"union": [False, True]},
         "logp": {"full": [math.log(0.999), None]}},
        {"attributed": False, "advantage": 0.0, "selected": {"union": None}, "logp": {"full": [math.log(0.1)]}},
    ]
    monkeypatch.setattr(rollouts, "load_rollouts", lambda run_dir: records)
    got = _module().mask_gradient_share(tmp_path)
    chosen = 2 * 0.5
    rest = 2 * 0.005 + 2 * 0.1 + 1 * 0.001
    assert got["unselected_share"] == pytest.approx(rest / (chosen + rest))
    assert got["unselected_confident"] == pytest.approx(2 / 3)  # 0.995 and 0.999 of the three unselected
    assert got["responses"] == 2
    # a control arm: the mask is the control's weights, not the union it was sized on
    for r in records:
        r["settings"] = {"control": "complement"}
    records[0]["weights"], records[1]["weights"] = [0.0, 1.0, 0.0], [1.0, 0.0]
    records[2]["weights"] = [0.0]
    got = _module().mask_gradient_share(tmp_path)
    chosen, rest = 2 * 0.005 + 1 * 0.001, 2 * 0.5 + 2 * 0.1
    assert got["unselected_share"] == pytest.approx(rest / (chosen + rest))
    assert got["unselected_confident"] == pytest.approx(0.0)


def test_answer_token_mask():
    sys.path.insert(0, str(BENCH.parent))
    try:
        import study
    finally:
        sys.path.remove(str(BENCH.parent))
    tokens = ["<think>", " red", " then", " blue", "</think>", "<answer>", " blue", " ", "</answer>"]
    assert study.answer_token_mask(tokens) == [False, False, False, False, False, False, True, False, False]
    assert study.answer_token_mask(["<think>", " red", "</think>"]) is None
    assert study.answer_token_mask(["<answer>", "</answer>"]) is None
    # a token that straddles the tag boundary counts when it carries answer text
    assert study.answer_token_mask(["<answer>re", "d</answer>"]) == [True, True]


@pytest.mark.parametrize("t,df,p", [(1.0, 1, 0.5), (12.706, 1, 0.05), (4.303, 2, 0.05), (1.84, 2, 0.2072),
                                    (3.182, 3, 0.05), (2.776, 4, 0.05), (2.228, 10, 0.05), (0.0, 5, 1.0),
                                    (-2.776, 4, 0.05)])
def test_student_t_two_sided_p(t, df, p):
    """Against the t table (two-sided 5% critical values) and closed forms."""
    assert _module().student_t_sf2(t, df) == pytest.approx(p, abs=2e-4)


def test_paired_seed_test():
    study = _module()
    acc = lambda x: {"accuracy_after": {"overall": x}}  # noqa: E731
    ref = {0: acc(0.641), 1: acc(0.659), 2: acc(0.609)}
    arm = {0: acc(0.647), 1: acc(0.673), 2: acc(0.653)}
    got = study.paired_seed_test(ref, arm)
    diffs = [0.006, 0.014, 0.044]
    mean = sum(diffs) / 3
    sd = (sum((d - mean) ** 2 for d in diffs) / 2) ** 0.5
    assert got["mean_diff"] == pytest.approx(mean) and got["sd"] == pytest.approx(sd) and got["df"] == 2
    assert got["t"] == pytest.approx(mean / (sd / 3 ** 0.5))
    assert got["p_value"] == pytest.approx(study.student_t_sf2(got["t"], 2))
    assert study.paired_seed_test(ref, {0: acc(0.7)}) is None  # one seed: no test
    # identical differences: no spread, so no p-value (not 0), unless there is no difference at all
    same = study.paired_seed_test({0: acc(0.5), 1: acc(0.6)}, {0: acc(0.52), 1: acc(0.62)})
    assert same["sd"] == 0 and same["p_value"] is None
    assert study.paired_seed_test(ref, ref)["p_value"] == 1.0


def test_power_of_a_paired_t_test():
    """Against textbook values: the two-sided 5% critical t and the one-sided 80% t at df 9, and the sample size
    of a paired t-test with effect size delta / sd = 1 (two-sided 5%, power 0.8: 10 pairs by the usual iteration)."""
    study = _module()
    assert study.student_t_quantile(0.05, 9) == pytest.approx(2.262, abs=1e-3)
    assert study.student_t_quantile(0.4, 9) == pytest.approx(0.883, abs=1e-3)
    assert study.detectable_difference(1.0, 10) == pytest.approx((2.262 + 0.883) / 10 ** 0.5, abs=1e-3)
    assert study.replicates_needed(0.02, delta=0.02) == 10
    assert study.replicates_needed(0.01, delta=0.02) == 5  # (2.776 + 0.941) / sqrt(5) * 0.5 = 0.83 <= 1
    assert study.replicates_needed(0.0, delta=0.02) == 2 and study.detectable_difference(1.0, 1) is None
    assert study.replicates_needed(1.0, delta=0.02, most=50) is None


def test_variance_collapse_and_outputs():
    study = _module()

    def cell(ws, after, gain):
        return {"warmstart_seed": ws, "accuracy_after": {"overall": after}, "gain": {"gain": gain}}

    cells = {"ws0-seed0": cell(0, 0.70, 0.03), "ws0-seed1": cell(0, 0.60, -0.07), "ws1-seed0": cell(1, 0.66, -0.05),
             "ws1-seed1": cell(1, 0.68, -0.01)}
    v = study.variance_parts(cells)
    assert v["between_warm_starts"] == pytest.approx(study.mean_std([0.65, 0.67])["std"])
    within = ((0.1 ** 2 / 2) + (0.02 ** 2 / 2)) / 2  # two warm starts, one degree of freedom each
    assert v["within_warm_start"] == pytest.approx(within ** 0.5)
    c = study.collapse_summary(cells)
    assert c["replicates"] == ["ws0-seed1", "ws1-seed0"] and c["rate"] == 0.5  # -5 points counts, -1 does not

    responses = ["<think>a b</think><answer>3</answer>", "<think>a</think><answer>3</answer>",
                 "<think>a</think><answer>red</answer>", "no format"]
    got = study.output_profile(responses, ["count", "count", "order", "order"])
    assert got["format"] == 0.75 and got["distinct_responses"] == 1.0
    assert got["top_answer_share"] == 1.0  # count: 3, 3; order: red (the unformatted one has no answer)
    assert got["mean_words"] == pytest.approx((2 + 1 + 1 + 2) / 4)  # whitespace-separated words
    history = [{"reward": 1, "rewards/accuracy_reward/mean": x, "entropy": 1 - x} for x in (0.1, 0.2, 0.5, 0.9)]
    path = study.sampling_path(history + [{"train_loss": 0.0}], window=0.5)
    assert path["accuracy"] == {"start": pytest.approx(0.15), "end": pytest.approx(0.7)}
    assert path["entropy"]["end"] == pytest.approx(0.3) and path["length"] == {"start": None, "end": None}


def test_token_roles_and_role_selection(monkeypatch, tmp_path):
    """Roles from the words the tokens belong to (a word split over tokens gives each piece its role), and the
    per-role selection rates and left-out gradient by hand on two logged responses."""
    import math

    study = _module()
    tokens = ["<think>", "Okay", " I", " will", " watch", " the", " red", " circ", "le", ".", "</think>",
              "<answer>", "red", "</answer>"]
    assert study.token_roles(tokens) == ["format", "filler", "filler", "filler", "filler", "filler", "content",
                                         "content", "content", "other", "format", "format", "answer", "format"]
    records = [
        {"attributed": True, "advantage": 1.0, "tokens": ["Okay", " red", "."],
         "selected": {"union": [False, True, False], "entropy": [True, False, False]},
         "logp": {"full": [math.log(0.5), math.log(0.9), math.log(0.99)]}},
        {"attributed": False, "advantage": 0.0, "tokens": ["Well"], "selected": {"union": None},
         "logp": {"full": [0.0]}},
    ]
    got = study.role_selection(records)
    assert got["token_share"]["filler"] == pytest.approx(1 / 3) and got["token_share"]["content"] == pytest.approx(1 / 3)
    assert got["selected_rate"]["union"]["content"] == 1.0 and got["selected_rate"]["union"]["filler"] == 0.0
    assert got["selected_rate"]["entropy"]["filler"] == 1.0 and got["selected_rate"]["union"]["answer"] is None
    # left out: "Okay" (0.5) and "." (0.01), of the filler and other roles
    assert got["left_out_gradient_share"]["filler"] == pytest.approx(0.5 / 0.51)
    assert got["left_out_gradient_share"]["other"] == pytest.approx(0.01 / 0.51)
    assert study.role_selection(None) == {} and study.role_selection(records[1:]) == {}


def test_optimizer_path(tmp_path, monkeypatch):
    """How far a run moved its weights from the model it started from (found relative to the study's directory),
    its median gradient norm and its share of clipped steps."""
    import torch
    from safetensors.torch import save_file

    study = _module()
    start, run = tmp_path / ".cache" / "warm", tmp_path / "runs" / "w" / "grpo" / "seed-0"
    for folder in (start, run / "checkpoint-2", run / "checkpoint-1"):
        folder.mkdir(parents=True)
    save_file({"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([[0.0, 4.0]]), "n": torch.tensor([7])},
              str(start / "model.safetensors"))
    save_file({"a": torch.tensor([3.0, 1.0]), "b": torch.tensor([[2.0, 4.0]]), "n": torch.tensor([9])},
              str(run / "checkpoint-2" / "model.safetensors"))
    save_file({"a": torch.tensor([0.0, 0.0]), "b": torch.tensor([[0.0, 0.0]])},
              str(run / "checkpoint-1" / "model.safetensors"))
    (run / "config.json").write_text(json.dumps({"model": {"model": ".cache/warm"}, "rl": {"max_grad_norm": 1.0}}))
    history = [{"step": 1, "grad_norm": 0.5}, {"step": 2, "grad_norm": 2.0}, {"step": 2, "train_loss": 0.1}]
    monkeypatch.chdir(tmp_path / "runs")  # the start model is not beside the working directory: found above the run
    got = study.optimizer_path(run, history)
    # the last checkpoint (step 2) against the start, floating-point tensors only: sqrt(1 + 4) over the norm 5
    assert got["weights_moved"] == pytest.approx(5 ** 0.5)
    assert got["weights_moved_relative"] == pytest.approx(5 ** 0.5 / 5)
    assert got["grad_norm"] == pytest.approx(1.25) and got["clipped"] == 0.5
    # the optimizer saw 0.5 and 1.0 (clipped at 1): coefficients of variation 0.75/1.25 before, 0.25/0.75 after
    assert got["norm_cv"] == pytest.approx(0.6) and got["clipped_norm_cv"] == pytest.approx(1 / 3)
    assert got["norm_signal_corr"] is None  # no frac_reward_zero_std logged
    (run / "checkpoint-2" / "model.safetensors").unlink()  # no final weights: the gradient side only
    got = study.optimizer_path(run, history)
    assert got["weights_moved"] is None and got["clipped"] == 0.5
    lines = study.optimizer_lines({"grpo": {"optimizer": {"weights_moved": {"mean": 1.0, "std": 0.1, "n": 2},
                                                          "weights_moved_relative": None, "grad_norm": None,
                                                          "clipped": None}}})
    assert any(line.startswith("| grpo | 1.000 ± 0.100 |") for line in lines)


def test_step_weights_against_a_slow_reference():
    """The variation of the gradient norm over steps, before and after clipping, and its correlation with the share
    of groups that carry a gradient, against numpy's definitions."""
    import numpy as np

    study = _module()
    rng = np.random.default_rng(0)
    norms, zero = rng.uniform(0.3, 2.0, 40), rng.uniform(0.0, 0.6, 40)
    history = [{"step": i + 1, "grad_norm": float(n), "frac_reward_zero_std": float(z)}
               for i, (n, z) in enumerate(zip(norms, zero))] + [{"step": 40, "train_loss": 0.0}]
    got = study.step_weights(history, 1.0)
    seen = np.minimum(norms, 1.0)
    assert got["norm_cv"] == pytest.approx(norms.std() / norms.mean())
    assert got["clipped_norm_cv"] == pytest.approx(seen.std() / seen.mean())
    assert got["norm_signal_corr"] == pytest.approx(np.corrcoef(norms, 1 - zero)[0, 1])
    unclipped = study.step_weights(history, 0.0)  # max_grad_norm 0: no clipping, the optimizer saw the norms
    assert unclipped["clipped_norm_cv"] == pytest.approx(unclipped["norm_cv"])
    assert study.step_weights([], 1.0) == {"norm_cv": None, "clipped_norm_cv": None, "norm_signal_corr": None}
    lines = study.optimizer_lines({"ktr": {"optimizer": {"weights_moved": {"mean": 1.0, "std": 0.0, "n": 1},
                                                         "weights_moved_relative": None, "grad_norm": None,
                                                         "clipped": None,
                                                         "norm_cv": {"mean": 0.23, "std": 0.01, "n": 2},
                                                         "clipped_norm_cv": {"mean": 0.12, "std": 0.01, "n": 2},
                                                         "norm_signal_corr": None}}})
    assert any(line.startswith("| ktr | 0.23 ± 0.01 | 0.12 ± 0.01 |") for line in lines)


def test_response_update_ratios():
    """The spread of the update ratio between attributed responses, and its mean by the sign of the advantage."""
    study = _module()

    def record(advantage, union, attributed=True):
        return {"attributed": attributed, "advantage": advantage, "selected": {"union": union}, "settings": {}}

    records = [record(1.0, [1, 0, 0, 0]), record(-0.5, [1, 1, 0, 0]), record(-0.5, [1, 1, 1, 1]),
               record(2.0, [1, 1, 1, 1], attributed=False)]  # not attributed: no mask trained, left out
    got = study.response_update_ratios(records)
    assert got["responses"] == 3 and got["std"] == pytest.approx(study.statistics.stdev([0.25, 0.5, 1.0]))
    assert got["positive"] == 0.25 and got["negative"] == pytest.approx(0.75)
    assert study.response_update_ratios([records[0]]) == {} and study.response_update_ratios(None) == {}


def test_contrasts_name_arms_of_the_grid():
    """Every paired contrast names two different arms the study can run, so a typo cannot hide a contrast."""
    study = _module()
    for arm, reference, what in study.CONTRASTS:
        assert arm in study.ARMS and reference in study.ARMS and arm != reference and what
        assert arm in study.CORE and reference in study.CORE  # both run on every world


def test_world_power_pools_the_arms_at_grpos_learning_rate():
    """The power of the replicate count comes from the spread of method comparisons: an arm at another learning
    rate (whose differences to grpo include that rate's collapses) is left out of the pooled std."""
    study = _module()

    def arm(sd, n, **options):
        return {"options": {"method": "ktr", **options}, "vs_grpo_seeds": {"n": n, "sd": sd}}

    arms = {"grpo": {"options": {"method": "grpo"}, "vs_grpo_seeds": None, "variance": {"within_warm_start": 0.01}},
            "ktr": arm(0.02, 6), "ktr-random": arm(0.03, 3), "ktr-lr0.0003": arm(0.09, 6, learning_rate=3e-4)}
    got = study.world_power(arms)
    assert got["pooled_sd_of_differences"] == pytest.approx(((5 * 0.02 ** 2 + 2 * 0.03 ** 2) / 7) ** 0.5)
    assert got["replicates"] == 6 and got["grpo_within_warm_start_std"] == 0.01
