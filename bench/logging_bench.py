"""Logging overhead: a generated script's step time with every [logging] sink on against the console alone.

    .venv/bin/python bench/logging_bench.py            # 4 rounds of 40 steps, 2 processes
    .venv/bin/python bench/logging_bench.py --rounds 6 --model tiny

Both sides compile the overhead benchmark's GPT (bench/overhead_bench.py; a CPU
step of a few hundred ms) on mock data. "sinks" adds TensorBoard, an offline
W&B run and an MLflow sqlite store to the console line and the metrics file
(always written); "console" has neither. A step's time here is the interval
between consecutive records of the metrics file (its elapsed_s), so it covers
the training step and everything the logging rank does after it: the metrics
file, the console line and every sink's write. The first steps of each launch
are warm-up and not counted.

Rounds alternate the order (S C, C S, ...) so that a drift of the machine hits
both alike. Printed: each side's median step time and interquartile range, the
ratio sinks / console of each round's medians, and their median and IQR.
Target: median ratio <= 1.02.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from common import BIN, iqr, median
from overhead_bench import MODELS, SPEC, TRAINING

SINKS = """[logging.tensorboard]
dir = "tb"
[logging.wandb]
project = "bridgec-bench"
mode = "offline"
[logging.mlflow]
tracking_uri = "sqlite:///{folder}/mlflow.db"
"""


def compile_side(folder: Path, spec_text: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "spec.toml").write_text(spec_text)
    done = subprocess.run(
        [str(BIN / "bridgec"), "compile", "spec.toml", "-o", "run.py"], cwd=folder, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"bridgec compile failed:\n{done.stderr}")
    return folder / "run.py"


def launch(script: Path, procs: int, warmup: int) -> list[float]:
    """One launch (its outputs replaced first); the seconds between its metrics records after ``warmup`` steps."""
    for old in script.parent.glob("out"):
        subprocess.run(["rm", "-rf", str(old)], check=True)
    done = subprocess.run(
        [str(BIN / "torchrun"), "--nproc-per-node", str(procs), script.name],
        cwd=script.parent,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}:{os.environ.get('PATH', '')}"},
    )
    if done.returncode != 0:
        raise SystemExit(f"{script} failed:\n{done.stderr[-3000:]}")
    (metrics,) = (script.parent / "out").glob("*/spec.metrics.jsonl")
    elapsed = [json.loads(line)["elapsed_s"] for line in metrics.read_text().splitlines() if '"train"' in line]
    return [after - before for before, after in zip(elapsed[warmup:], elapsed[warmup + 1 :])]


def spread(values: Sequence[float]) -> str:
    middle = median(values)
    return f"{middle * 1000:8.1f} ms  IQR {iqr(values) * 1000:6.2f} ms ({100 * iqr(values) / middle:4.1f}%)"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="pairs of launches, alternating the order (default 4)")
    parser.add_argument("--steps", type=int, default=40, help="steps per launch (default 40)")
    parser.add_argument("--warmup", type=int, default=5, help="first steps of each launch not counted (default 5)")
    parser.add_argument("--procs", type=int, default=2, help="processes (data parallel; default 2)")
    parser.add_argument("--model", choices=sorted(MODELS), default="default")
    args = parser.parse_args(argv)
    shape = MODELS[args.model]
    base = SPEC.format(**shape, **TRAINING, procs=args.procs, iters=args.steps)
    results: dict[str, list[list[float]]] = {"sinks": [], "console": []}
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        scripts = {
            "sinks": compile_side(scratch / "sinks", base + SINKS.format(folder=scratch / "sinks")),
            "console": compile_side(scratch / "console", base),
        }
        for round_ in range(args.rounds):
            order = ("sinks", "console") if round_ % 2 == 0 else ("console", "sinks")
            for side in order:
                results[side].append(launch(scripts[side], args.procs, args.warmup))
    print(
        f"logging overhead: {args.model} model, {args.procs} process(es), {args.rounds} rounds of {args.steps} steps "
        f"({args.warmup} warm-up) per side; a step = the interval between two metrics records"
    )
    for side, name in (("console", "console and metrics file only"), ("sinks", "+ TensorBoard, W&B offline, MLflow")):
        print(f"  {name:<38} {spread([s for run in results[side] for s in run])}")
    ratios = [median(s) / median(c) for s, c in zip(results["sinks"], results["console"])]
    ratio, ratio_iqr = median(ratios), iqr(ratios) if len(ratios) > 1 else float("nan")
    print("  ratio sinks / console per round: " + " ".join(f"{r:.3f}" for r in ratios))
    print(
        f"    median {ratio:.3f}, IQR {ratio_iqr:.3f}, mean {statistics.fmean(ratios):.3f} "
        f"(target: median <= 1.02: {'met' if ratio <= 1.02 else 'not met'})"
    )


if __name__ == "__main__":
    main()
