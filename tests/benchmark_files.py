"""Where the tests find benchmark question files.

`SAMPLES` (tests/eval/fixtures/benchmarks, written by its `make_samples.py`) holds a small sample of every
benchmark's real question files and is always there: every test of the adapters' parsing uses it. The full files
are only needed to check the published item counts: the `full_benchmarks` fixture finds them in
$VIDEOKTR_BENCHMARKS or in a `shared/benchmarks` folder beside the repository, and skips (with the reason) where
neither exists; with VIDEOKTR_REQUIRE_BENCHMARKS=1 (CI) a missing folder fails instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parent / "eval" / "fixtures" / "benchmarks"
_BESIDE = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"


def full_benchmarks_root() -> Path | None:
    env = os.environ.get("VIDEOKTR_BENCHMARKS")
    root = Path(env) if env else _BESIDE
    return root if root.is_dir() else None


@pytest.fixture
def full_benchmarks() -> Path:
    root = full_benchmarks_root()
    if root is None:
        reason = (f"the full benchmark question files are not here (set VIDEOKTR_BENCHMARKS, or put them in "
                  f"{_BESIDE}); the samples in {SAMPLES} cover everything but the published counts")
        if os.environ.get("VIDEOKTR_REQUIRE_BENCHMARKS") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return root
