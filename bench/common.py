"""Helpers shared by the benchmarks: timing commands, medians and spreads, printing ratios."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def time_command(command: Sequence[str], *, cwd: Path = ROOT, repeat: int = 7) -> list[float]:
    """Wall-clock seconds of ``repeat`` cold runs of a command (each a fresh process)."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        completed = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env={**os.environ})
        times.append(time.perf_counter() - started)
        if completed.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{completed.stderr[-2000:]}")
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def row(name: str, seconds: float, reference: float, target: str = "") -> str:
    return f"{name:<48} {seconds * 1000:9.1f} ms   x{seconds / reference:6.2f} of reference   {target}"


def iqr(values: Sequence[float]) -> float:
    """Interquartile range: the spread of the middle half (robust to the odd slow step)."""
    quartiles = statistics.quantiles(values, n=4, method="inclusive")
    return quartiles[2] - quartiles[0]
