"""Run every benchmark (`make bench`)."""

from __future__ import annotations

import runpy
from pathlib import Path

HERE = Path(__file__).resolve().parent

for name in (
    "compile_bench.py",
    "overhead_bench.py",
    "runtime_bench.py",
    "data_build_bench.py",
    "logging_bench.py",
    "checkpoint_bench.py",
    "peft_bench.py",
    "perf_bench.py",
    "distill_bench.py",
):
    print(f"== {name}")
    runpy.run_path(str(HERE / name), run_name="__main__")
    print()
