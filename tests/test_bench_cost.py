"""bench/cost.py end to end at its smallest configuration (tiny model, 2 prompts x G=2, fixed rollouts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "cost.py"


@pytest.mark.slow
def test_cost_bench_quick(tmp_path):
    out = tmp_path / "cost.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--shapes", "quick", "--steps", "2",
                           "--work-dir", str(tmp_path / "work"), "--output", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("step_time_ratio=") and " peak_memory_ratio=" in last
    result = json.loads(out.read_text())
    entry = result["shapes"]["quick"]
    assert set(entry["modes"]) == {"grpo", "ktr", "entropy", "twgrpo", "tgrpo", "vppo", "papo", "official"}
    unique, responses = 2, 4
    for mode, r in entry["modes"].items():
        assert r["steps"] == 2 and r["median_step_s"] > 0 and r["peak_bytes"] > 0, mode
        # sampling (its cost paid, fixed responses returned): TRL passes every copy of a video to generate, which
        # encodes each distinct clip once (T-GRPO: its shuffled clips too); the official structure every copy
        expected = {"official": responses, "tgrpo": 2 * unique}.get(mode, unique)
        assert r["generation_videos_encoded_per_step"] == expected, mode
        assert 0 <= r["attribution_share"] < 1, mode
        assert entry["ratios"][mode]["step_time"] > 0
    # one vision-tower call per pass, on the unique clips only: policy pass (+ the attribution/weights pass)
    assert entry["modes"]["grpo"]["encoder_calls_per_step"] == 1
    assert entry["modes"]["grpo"]["videos_encoded_per_step"] == unique
    # PAPO's masked half reuses the policy pass's encoding: one call, on the unique clips
    assert entry["modes"]["papo"]["encoder_calls_per_step"] == 1
    assert entry["modes"]["papo"]["videos_encoded_per_step"] == unique
    assert entry["modes"]["vppo"]["attribution_share"] > 0
    for mode in ("ktr", "entropy", "twgrpo", "vppo"):
        assert entry["modes"][mode]["encoder_calls_per_step"] == 2, mode
        assert entry["modes"][mode]["videos_encoded_per_step"] == 2 * unique, mode
    # the official cost structure: every response's copy encoded in the 3 attribution passes and the policy pass
    assert entry["modes"]["official"]["encoder_calls_per_step"] == 4
    assert entry["modes"]["official"]["videos_encoded_per_step"] == 4 * responses
    assert entry["modes"]["ktr"]["attribution_share"] > 0
    eq = entry["equivalence"]
    assert eq["permutations_equal"]
    assert eq["weights_agreement"] == 1.0
    for signal in ("visual", "temporal", "entropy"):
        assert eq[f"max_abs_score_diff_{signal}"] < 1e-4, signal
