"""bench/cost.py: end to end at its smallest configuration (tiny model, 2 prompts x G=2, forced rollouts), its
forced sampling on the tiny model, and the parent's same-tokens check, rounds and per-step ratios on made-up
child results."""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "cost.py"


@pytest.fixture(scope="module")
def cost():
    spec = importlib.util.spec_from_file_location("bench_cost", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_cost"] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("bench_cost", None)


@pytest.mark.slow
def test_cost_bench_quick(tmp_path):
    out = tmp_path / "cost.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--shapes", "quick", "--steps", "1", "--rounds", "1",
                           "--work-dir", str(tmp_path / "work"), "--output", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("step_time_ratio=") and " peak_memory_ratio=" in last and " training_time_ratio=" in last
    result = json.loads(out.read_text())
    entry = result["shapes"]["quick"]
    assert set(entry["modes"]) == {"grpo", "ktr", "ktr-rollout", "entropy", "twgrpo", "tgrpo", "vppo", "papo",
                                   "official"}
    assert entry["same_tokens"] == []
    unique, responses = 2, 4
    reference = entry["runs"]["grpo"][0]["steps"]
    assert len(reference) == 2 and reference[0]["warmup"] and not reference[1]["warmup"]
    for mode, runs in entry["modes"].items():
        steps = entry["runs"][mode][0]["steps"]
        # every mode sampled (for real, forced) and trained on grpo's tokens at every step
        assert [s["digest"] for s in steps] == [s["digest"] for s in reference], mode
        assert [s["tokens_sampled"] for s in steps] == [s["tokens_sampled"] for s in reference], mode
        assert all(s["tokens_sampled"] == s["tokens_trained"] > 0 for s in steps), mode
        assert all(s["cpu_s"] > 0 and s["wall_s"] > 0 and s["sampling_cpu_s"] > 0 for s in steps), mode
        assert runs["peak_bytes"]["median"] > 0
        # sampling: TRL passes every copy of a video to generate, which encodes each distinct clip once (T-GRPO:
        # its shuffled clips too); the official structure every copy
        expected = {"official": responses, "tgrpo": 2 * unique}.get(mode, unique)
        assert runs["generation_videos_encoded_per_step"] == expected, mode
        ratios = entry["ratios"][mode]
        assert ratios["cpu_s"]["n"] == 1 and ratios["cpu_s"]["median"] > 0, mode
    assert all(s["extra_tokens_sampled"] > 0 for s in entry["runs"]["tgrpo"][0]["steps"])
    assert entry["ratios"]["grpo"]["cpu_s"]["median"] == 1.0
    # one vision-tower call per pass, on the unique clips only: policy pass (+ the attribution/weights pass)
    assert entry["modes"]["grpo"]["encoder_calls_per_step"] == 1
    assert entry["modes"]["grpo"]["videos_encoded_per_step"] == unique
    # PAPO's masked half reuses the policy pass's encoding: one call, on the unique clips
    assert entry["modes"]["papo"]["encoder_calls_per_step"] == 1
    assert entry["modes"]["papo"]["videos_encoded_per_step"] == unique
    for mode in ("ktr", "ktr-rollout", "twgrpo", "vppo"):
        assert entry["modes"][mode]["encoder_calls_per_step"] == 2, mode
        assert entry["modes"][mode]["videos_encoded_per_step"] == 2 * unique, mode
        assert entry["modes"][mode]["weights_cpu_s"]["median"] > 0, mode
    # entropy chooses its mask in the loss from the policy pass (ktr.select_in_loss): no pass of its own
    assert entry["modes"]["entropy"]["encoder_calls_per_step"] == 1
    assert entry["modes"]["entropy"]["weights_cpu_s"]["median"] > 0
    # the official cost structure: every response's copy encoded in the 3 attribution passes and the policy pass
    assert entry["modes"]["official"]["encoder_calls_per_step"] == 4
    assert entry["modes"]["official"]["videos_encoded_per_step"] == 4 * responses
    eq = entry["equivalence"]
    assert eq["permutations_equal"]
    assert eq["weights_agreement"] == 1.0
    for signal in ("visual", "temporal", "entropy"):
        assert eq[f"max_abs_score_diff_{signal}"] < 1e-4, signal


@pytest.mark.slow
def test_old_policy_pass_is_paid_by_grpo_and_reused_by_ktr(tmp_path):
    """--old-policy-pass: TRL's old-policy pass over every rollout (the vLLM path's structure): grpo encodes the
    clips in it and in the policy pass; ktr reuses it and adds only its perturbed pass."""
    out = tmp_path / "cost.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--shapes", "quick", "--steps", "1", "--rounds", "1",
                           "--modes", "grpo", "ktr", "--old-policy-pass", "--work-dir", str(tmp_path / "work"),
                           "--output", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    entry = result["shapes"]["quick"]
    assert result["old_policy_pass"] and entry["same_tokens"] == []
    assert entry["modes"]["grpo"]["encoder_calls_per_step"] == 2
    assert entry["modes"]["ktr"]["encoder_calls_per_step"] == 3
    ktr = entry["runs"]["ktr"][0]
    assert ktr["old_policy_pass"] and ktr["old_policy_pass_reused"] == ktr["rollouts"] == 2


def test_forced_sampling_samples_exactly_the_targets(cost, tiny):
    """HF generation with the forced-tokens processor returns exactly the given responses (rows of different
    lengths: a finished row is padded while the others go on), and the wrapper counts them."""
    import torch

    model, processor = tiny
    tok = processor.tokenizer
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    targets = [[5, 9, 11, eos], [7, eos], [13, 14, 15, 16, 17, eos]]
    sampling = cost.ForcedSampling(model, [eos])
    ids = torch.tensor([[3, 4, 6]] * 3)
    with sampling.targets(targets):
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, max_new_tokens=10,
                             pad_token_id=tok.pad_token_id, eos_token_id=eos)
    new = out[:, 3:].tolist()
    assert [row[: len(t)] for row, t in zip(new, targets)] == targets
    assert sampling.calls == [{"rows": 3, "decoding_steps": 6, "tokens": 12, "forced": True}]
    # a forced target the sampler never reaches (max_new_tokens too short) is an error, not a silent difference
    with pytest.raises(RuntimeError, match="did not sample the forced response"):
        with sampling.targets(targets):
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, max_new_tokens=3,
                           pad_token_id=tok.pad_token_id, eos_token_id=eos)
    # targets set but no generate call: the forced responses were not used
    with pytest.raises(RuntimeError, match="without calling the model's generate"):
        with sampling.targets(targets):
            pass


def fake_run(mode: str, tokens=(20, 30, 25), digests=("a", "b", "c"), cpu=(1.0, 2.0, 4.0), peak=1000):
    steps = [{"step": i, "warmup": i == 0, "wall_s": c * 1.5, "cpu_s": c, "sampling_wall_s": c * 0.5,
              "sampling_cpu_s": c / 2, "training_wall_s": c, "training_cpu_s": c / 2, "weights_wall_s": 0.0,
              "weights_cpu_s": 0.0, "tokens_sampled": t, "decoding_row_steps": 2 * t, "digest": d,
              "responses": 2, "tokens_trained": t, "extra_responses": 0, "extra_tokens_sampled": 0}
             for i, (t, d, c) in enumerate(zip(tokens, digests, cpu))]
    return {"mode": mode, "shape": "quick", "steps": steps, "peak_bytes": peak, "baseline_bytes": 100,
            "peak_kind": "VmHWM", "encoder_calls_per_step": 1, "videos_encoded_per_step": 1,
            "generation_encoder_calls_per_step": 1, "generation_videos_encoded_per_step": 1,
            "unique_videos_per_step": 1, "responses_per_step": 2, "device": "cpu", "threads": 1}


def test_same_tokens_check_names_every_difference(cost):
    runs = {"grpo": [fake_run("grpo")], "ktr": [fake_run("ktr")]}
    assert cost.same_tokens_problems(runs) == []
    # the bug of issue 21: a mode sampling far fewer tokens than grpo at the same step
    short = copy.deepcopy(runs)
    short["tgrpo"] = [fake_run("tgrpo", tokens=(20, 3, 25))]
    problems = cost.same_tokens_problems(short)
    assert any("tgrpo round 0 step 1: sampled 3 tokens" in p for p in problems), problems
    other = copy.deepcopy(runs)
    other["ktr"][0]["steps"][2]["digest"] = "z"
    assert any("ktr round 0 step 2: trained on other rollouts" in p for p in cost.same_tokens_problems(other))
    missing = copy.deepcopy(runs)
    missing["ktr"][0]["steps"].pop()
    assert any("ktr round 0: 2 steps, grpo 3" in p for p in cost.same_tokens_problems(missing))


def test_per_step_ratios_pair_step_i_with_step_i(cost):
    """Ratios are taken step by step against grpo's same round and step, then summarised (the warm-up left out):
    a mode that is 1.2x grpo at every step is 1.2x even when the steps themselves vary 4-fold."""
    grpo = [fake_run("grpo", cpu=(9.0, 1.0, 4.0)), fake_run("grpo", cpu=(9.0, 2.0, 3.0))]
    ktr = [fake_run("ktr", cpu=(1.0, 1.2, 4.8), peak=1010), fake_run("ktr", cpu=(1.0, 2.4, 3.6), peak=1030)]
    for run in ktr:  # its token-weights pass: a sixth of each step, so the step is 1.2x the step without it
        for s in run["steps"]:
            s["weights_cpu_s"] = s["cpu_s"] / 6
    modes, ratios = cost.summarise({"grpo": grpo, "ktr": ktr})
    assert ratios["ktr"]["in_step_cpu_s"]["median"] == pytest.approx(1.2)
    assert ratios["ktr"]["in_step_cpu_s"]["n"] == 4 and ratios["grpo"]["in_step_cpu_s"]["median"] == 1.0
    assert ratios["ktr"]["cpu_s"]["median"] == pytest.approx(1.2)
    assert ratios["ktr"]["cpu_s"]["min"] == pytest.approx(1.2) and ratios["ktr"]["cpu_s"]["max"] == pytest.approx(1.2)
    assert ratios["ktr"]["cpu_s"]["n"] == 4
    assert ratios["ktr"]["peak_memory"]["median"] == pytest.approx(1.02)
    assert modes["grpo"]["cpu_s"]["median"] == pytest.approx(2.5)  # of 1, 4, 2, 3: the warm-up's 9 left out
    # the ratio of the medians would not be 1.2 here: it mixes steps with different rollouts
    assert modes["ktr"]["cpu_s"]["median"] / modes["grpo"]["cpu_s"]["median"] == pytest.approx(3.0 / 2.5)


def test_bench_rotates_modes_and_fails_on_different_tokens(cost, tmp_path, monkeypatch, capsys):
    """The parent runs every mode once per round in a rotated order, and exits with an error (no headline
    ratio) when a mode did not sample the same tokens as grpo."""
    calls = []

    def run_child(task, threads):
        calls.append(task["mode"])
        if task["mode"] == "equivalence":
            return {}
        return fake_run(task["mode"], tokens=(20, 3, 25) if task["mode"] == "tgrpo" else (20, 30, 25))

    monkeypatch.setattr(cost, "run_child", run_child)
    monkeypatch.setattr(cost, "build_model", lambda root, size: _model_dir(tmp_path))
    monkeypatch.setattr(cost, "write_clips", lambda root, shape, count: [tmp_path / f"c{i}.mp4" for i in range(count)])
    monkeypatch.setattr(sys, "argv", ["cost.py", "--quick", "--shapes", "quick", "--modes", "grpo", "ktr", "tgrpo",
                                      "--rounds", "3", "--output", str(tmp_path / "cost.json")])
    with pytest.raises(SystemExit) as exit_:
        cost.main()
    assert "FAILED" in str(exit_.value)
    assert calls == ["grpo", "ktr", "tgrpo", "ktr", "tgrpo", "grpo", "tgrpo", "grpo", "ktr"]
    out = capsys.readouterr().out
    assert "step_time_ratio=" not in out and "tgrpo round 0 step 1: sampled 3 tokens" in out
    result = json.loads((tmp_path / "cost.json").read_text())
    assert result["shapes"]["quick"]["same_tokens"]


def _model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / "videoktr_model.json").write_text(json.dumps({"size": "tiny"}))
    return folder


def test_pass_meter_splits_passes_and_vocabulary_ops(cost):
    """Operators are charged to the pass running when they run (the rest of the step otherwise), and those on a
    vocabulary-sized tensor to the LM head; FLOPs by torch's formulas (backward included) and CPU attention's."""
    import torch

    vocab, hidden = 997, 64
    head = torch.randn(vocab, hidden, requires_grad=True)
    x = torch.randn(256, hidden)
    q = torch.randn(1, 2, 16, 8)
    clock = cost.Clock()
    with cost.pass_meter(vocab, lambda: clock.current, head_weight=head) as meter:
        with clock.part("weights", 0):
            for _ in range(20):
                torch.log_softmax(x @ head.T, -1)
                x @ torch.randn(hidden, hidden)
        for _ in range(20):
            x @ torch.randn(hidden, hidden)
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
        (x @ head.T).sum().backward()  # the head's backward: its weight's gradient [V, H]
        x @ head[:100].T  # a tile of the head's rows (TRL's fused head): its storage is the head's
    shares = meter.report()
    assert set(shares) == {"weights", "step_rest", "all"}
    assert shares["weights"]["lm_head_share"] > 0.5  # the head's matmul and log-softmax dominate that range
    assert shares["all"]["self_cpu_s"] == pytest.approx(shares["weights"]["self_cpu_s"]
                                                        + shares["step_rest"]["self_cpu_s"])
    # FLOPs: 2 m n k per matmul; attention 4 B H L S D; the backward's weight gradient 2 V N H
    head_flops, square = 2 * 256 * hidden * vocab, 2 * 256 * hidden * hidden
    assert shares["weights"]["lm_head_flops"] == 20 * head_flops
    assert shares["weights"]["flops"] == 20 * head_flops + 20 * square
    tile_flops = 2 * 256 * hidden * 100
    assert shares["step_rest"]["lm_head_flops"] == 2 * head_flops + tile_flops
    assert shares["step_rest"]["flops"] == 2 * head_flops + tile_flops + 20 * square + 4 * 2 * 16 * 16 * 8
