"""bench/data_build_bench.py runs: both sides tokenize the same corpus to the same token count, and it reports a ratio.

A tiny corpus for one round (no timed assertions: the figures come from running the benchmark itself).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_data_build_benchmark_runs_both_sides_on_the_same_corpus() -> None:
    completed = subprocess.run(
        [sys.executable, "bench/data_build_bench.py", "--megabytes", "0.3", "--rounds", "1", "--workers", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert re.search(
        r"^round 1: reference .* tokens/s .* data build .* tokens/s .* x\d+\.\d\d$", completed.stdout, re.M
    )
    assert re.search(
        r"^ratio x\d+\.\d\d \(median; spread x\d+\.\d\d-x\d+\.\d\d\); target >= 1.8x: (meets|misses) it$",
        completed.stdout,
        re.M,
    )
