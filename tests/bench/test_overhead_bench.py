"""bench/overhead_bench.py runs: both sides train the same model on the same batch, and the report is printed.

A tiny model for one round of a few steps (two single-process launches): this checks the benchmark, not the
overhead (no timed assertions; the figures come from running the benchmark itself).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_overhead_benchmark_runs_both_sides_on_the_same_work() -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "bench/overhead_bench.py",
            "--model",
            "tiny",
            "--rounds",
            "1",
            "--steps",
            "4",
            "--warmup",
            "1",
            "--procs",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # The benchmark exits non-zero when the two sides differ in parameters or batch shape.
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = completed.stdout
    assert "tiny model (14432 parameters, 1 layers, hidden 32; 2 microbatches of 2 x 16 tokens per rank)" in out
    for side in ("hand-written megatron-core loop:", "generated script (bridgec):"):
        assert side in out
    assert len(re.findall(r"wall per step +[\d.]+ ms +IQR", out)) == 2
    assert len(re.findall(r"host time per step outside forward/backward and the optimizer step: median", out)) == 2
    assert re.search(r"CPU ratio generated / reference per round: [\d.]+\n", out)
