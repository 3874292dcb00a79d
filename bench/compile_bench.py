"""Cold `bridgec compile` per example and `bridgec check --all examples`, as ratios to `python -c pass`.

Each figure is the median of 7 fresh processes, measured in this run next to
the reference (an empty interpreter start-up), so the ratios survive noisy
machines. Targets: compile under 0.5 s cold, check of all examples under 2 s.

    .venv/bin/python bench/compile_bench.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from common import BIN, ROOT, median, row, time_command


def main() -> None:
    python = [sys.executable, "-c", "pass"]
    reference = median(time_command(python))
    print(f"reference: python -c pass = {reference * 1000:.1f} ms (median of 7)")
    with tempfile.TemporaryDirectory() as scratch:
        for spec in sorted((ROOT / "examples").glob("*/spec.toml")):
            out = Path(scratch) / f"{spec.parent.name}.py"
            seconds = median(time_command([str(BIN / "bridgec"), "compile", str(spec), "-o", str(out)]))
            verdict = "ok" if seconds < 0.5 else "over the 0.5 s target"
            print(row(f"bridgec compile {spec.parent.name}", seconds, reference, f"target < 500 ms: {verdict}"))
    seconds = median(time_command([str(BIN / "bridgec"), "check", "--all", "examples"]))
    verdict = "ok" if seconds < 2.0 else "over the 2 s target"
    print(row("bridgec check --all examples", seconds, reference, f"target < 2000 ms: {verdict}"))


if __name__ == "__main__":
    main()
