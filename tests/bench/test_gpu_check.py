"""bench/gpu_check.py: its tiny CPU mode end to end (the recipe settings scaled down: bf16 autocast, gradient
checkpointing, LoRA, SDPA, forced identical rollouts), what it says an environment lacks, and its mask-agreement
measure."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("bench_gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu_check"] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("bench_gpu_check", None)


@pytest.mark.slow
def test_gpu_check_tiny_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--steps", "2", "--warmup", "0",
                           "--work-dir", str(tmp_path / "work"), "--output", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1].startswith("ratio_step=")
    result = json.loads(out.read_text())
    assert result["setup"]["bf16"] and result["setup"]["lora_r"] == 8
    summary = result["summary"]
    assert summary["same_tokens"]
    for mode in ("grpo", "ktr"):
        run = result["runs"][mode]
        assert len(run["steps"]) == 2 and all(s["tokens_sampled"] > 0 for s in run["steps"])
        assert 0 < run["trainable_parameters"] < run["parameters"]  # LoRA: adapters only
        assert summary[mode]["step_s"] > summary[mode]["step_without_sampling_s"] > 0
    assert summary["ktr"]["attribution_s"] > 0 and summary["grpo"]["attribution_s"] == 0
    assert result["runs"]["ktr"]["select_in_loss"]  # the recipe's default path: only perturbed inputs at the rollout
    assert len(summary["ratios_per_step"]["step"]) == 2 and summary["ratios"]["step"] > 0
    agreement = result["mask_agreement"]
    for name in ("trainer_vs_reference_same_precision", "trainer_vs_reference_fp32", "reference_vs_reference_fp32"):
        for signal in ("visual", "temporal", "entropy", "union"):
            entry = agreement[name][signal]
            assert entry["tokens"] > 0
            assert 0.5 <= entry["agreement"] <= entry["agreement_ties_forgiven"] <= 1.0, (name, signal)
    # the tiny model in bf16 autocast: both paths agree on every token's selection
    assert agreement["trainer_vs_reference_same_precision"]["union"]["agreement_ties_forgiven"] == 1.0


def test_gpu_check_says_what_is_missing_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: nothing is missing here")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check-only"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "sees no CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr
    assert "docs/benchmarks.md" in proc.stderr


def test_lacks_names_old_or_missing_packages(gpu_check, monkeypatch):
    real_version = gpu_check.importlib.metadata.version
    real_find = gpu_check.importlib.util.find_spec
    fake = {"trl": "1.15.2", "peft": "0.18.0"}
    monkeypatch.setattr(gpu_check.importlib.metadata, "version", lambda d: fake.get(d) or real_version(d))
    monkeypatch.setattr(gpu_check.importlib.util, "find_spec",
                        lambda name, *a: None if name == "av" else real_find(name, *a))
    problems = gpu_check.lacks(tiny=True)
    assert any(p.startswith("peft 0.18.0 is older than 0.21") for p in problems), problems
    assert any(p.startswith("trl 1.15.2 is older than 1.16") for p in problems), problems
    assert any(p.startswith("av>=14 is not installed") for p in problems), problems


def test_transformers_without_encoder_outputs_is_named(gpu_check):
    """transformers 5.17's Qwen2.5-VL forward has no `mm_encoder_outputs=`, which every videoktr pass uses."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

    class Old:
        def forward(self, input_ids=None, pixel_values_videos=None, video_grid_thw=None):
            pass

    assert gpu_check.takes_encoder_outputs(Qwen2_5_VLModel)
    assert not gpu_check.takes_encoder_outputs(Old)


def test_mask_agreement_forgives_ties_only(gpu_check):
    import torch

    from videoktr.attribution import Attribution, SelectionOptions

    valid = torch.ones(1, 5, dtype=torch.bool)

    def attribution(scores):
        s = torch.tensor([scores], dtype=torch.float32)
        return Attribution({"visual": s}, {"visual": valid}, torch.zeros(1, 5), None, 0.0)

    selection = SelectionOptions(ratio=0.2)  # one token of five
    # a tie at the cut (tokens 1 and 3 score 0.5 in one path): whichever it picks, the other path's choice of one
    # of them is forgiven
    tie = attribution([0.1, 0.5, 0.2, 0.5, 0.0])
    results = [gpu_check.mask_agreement(tie, attribution(other), selection)
               for other in ([0.1, 0.5001, 0.2, 0.5, 0.0], [0.1, 0.5, 0.2, 0.5001, 0.0])]
    assert sorted(r["visual"]["agreement"] for r in results) == pytest.approx([0.6, 1.0])
    assert all(r["visual"]["agreement_ties_forgiven"] == 1.0 for r in results)
    # a real difference (another token clearly on top): not forgiven
    other = gpu_check.mask_agreement(attribution([0.9, 0.1, 0.2, 0.3, 0.0]), attribution([0.1, 0.1, 0.2, 0.9, 0.0]),
                                     selection)
    assert other["visual"]["agreement"] == pytest.approx(0.6)
    assert other["visual"]["agreement_ties_forgiven"] == pytest.approx(0.6)
    assert other["union"]["agreement"] == pytest.approx(0.6)
