"""Runtime overhead: a generated script's step time against a hand-written megatron-core loop of the same run.

    .venv/bin/python bench/overhead_bench.py            # 6 rounds of 40 steps, 2 processes
    .venv/bin/python bench/overhead_bench.py --rounds 10 --procs 1

Both sides train the same GPT (sizes below; a CPU step of a few hundred ms, so
the host's few ms per step are a fraction it can resolve) on megatron-core's
mock data: the compiled spec (bridgec's runtime) and bench/baseline_loop.py
(megatron-core by hand). Both run under bench/step_timer.py, which times each
step's forward/backward and optimizer step the same way on both sides, and both
must report the same parameter count and batch shape.

Rounds alternate the sides, in the order G R, R G, G R, ... so that a slow
drift of the machine (another job starting) hits both alike. The first steps of
each launch are warm-up and not counted. Printed per side: the median step
time and its interquartile range (over all counted steps), as wall time and as
rank 0's CPU time (which other jobs on a shared machine disturb far less), and
the host time per step outside forward/backward and the optimizer step; then
the ratio generated / reference of each round's medians (a round's two launches
run back to back), their median and interquartile range. Target: median ratio
<= 1.03 with an interquartile range below 3 points. On a shared machine the
spread says how far the ratio can be trusted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import attrs
from common import BIN, ROOT, iqr, median

MODELS = {
    "default": {
        "num_layers": 4,
        "hidden_size": 128,
        "num_attention_heads": 8,
        "ffn_hidden_size": 512,
        "vocab_size": 1024,
        "seq_length": 128,
        "global_batch_size": 16,
        "micro_batch_size": 4,
    },
    "tiny": {
        "num_layers": 1,
        "hidden_size": 32,
        "num_attention_heads": 2,
        "ffn_hidden_size": 64,
        "vocab_size": 128,
        "seq_length": 16,
        "global_batch_size": 4,
        "micro_batch_size": 2,
    },
}
"""The run's shape; `tiny` only checks that the benchmark runs (its steps are far too short to judge 3%)."""
TRAINING = {"seed": 1234, "lr": 1e-3, "min_lr": 1e-4, "weight_decay": 0.01, "clip_grad": 1.0, "warmup_iters": 2}

SPEC = """[run]
name = "overhead"
seed = {seed}
[launch]
device = "cpu"
procs_per_node = {procs}
[model]
num_layers = {num_layers}
hidden_size = {hidden_size}
num_attention_heads = {num_attention_heads}
ffn_hidden_size = {ffn_hidden_size}
vocab_size = {vocab_size}
seq_length = {seq_length}
normalization = "rmsnorm"
activation = "swiglu"
position_embedding = "rope"
add_bias_linear = false
[batch]
global_batch_size = {global_batch_size}
micro_batch_size = {micro_batch_size}
[train]
iters = {iters}
log_interval = {iters}
[optimizer]
name = "adam"
lr = {lr}
min_lr = {min_lr}
weight_decay = {weight_decay}
clip_grad = {clip_grad}
[scheduler]
warmup_iters = {warmup_iters}
decay = "cosine"
[data]
kind = "mock"
"""


@attrs.frozen
class Launch:
    """One launch's counted steps (seconds each): the whole step (wall and CPU), and the host time outside the timed
    phases."""

    steps: list[float]
    cpu: list[float]
    host: list[float]
    parameters: int
    batch: dict[str, int]


def launch(command: Sequence[str], timings: Path, procs: int, warmup: int, cwd: Path) -> Launch:
    """Run a script under the step timer with torchrun; its steps after ``warmup``."""
    completed = subprocess.run(
        [
            str(BIN / "torchrun"),
            "--nproc-per-node",
            str(procs),
            str(ROOT / "bench" / "step_timer.py"),
            str(timings),
            *command,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={"OMP_NUM_THREADS": "1", "PATH": str(BIN)},
    )
    if completed.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    record = json.loads(timings.read_text())
    starts, cpu_starts = record["starts"], record["cpu_starts"]
    steps, cpu, host = [], [], []
    for index in range(warmup, len(starts) - 1):  # a step ends where the next one starts
        step = starts[index + 1] - starts[index]
        steps.append(step)
        cpu.append(cpu_starts[index + 1] - cpu_starts[index])
        host.append(step - record["forward_backward"][index] - record["optimizer"][index])
    if not steps or not any(record["optimizer"]):
        raise SystemExit(f"{' '.join(command)}: no timed steps (is the optimizer megatron-core's ChainedOptimizer?)")
    return Launch(steps=steps, cpu=cpu, host=host, parameters=record["parameters"], batch=record["batch"])


def same_work(generated: Launch, reference: Launch) -> None:
    if (generated.parameters, generated.batch) != (reference.parameters, reference.batch):
        raise SystemExit(
            f"the two sides differ: generated {generated.parameters} parameters, batch {generated.batch}; "
            f"reference {reference.parameters} parameters, batch {reference.batch}"
        )


def spread(values: Sequence[float]) -> str:
    """'median ms (IQR x ms, y% of the median)'."""
    middle = median(values)
    return f"{middle * 1000:8.1f} ms  IQR {iqr(values) * 1000:6.2f} ms ({100 * iqr(values) / middle:4.1f}%)"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="pairs of launches, alternating the order (default 6)")
    parser.add_argument("--steps", type=int, default=40, help="steps per launch (default 40)")
    parser.add_argument("--warmup", type=int, default=5, help="first steps of each launch not counted (default 5)")
    parser.add_argument("--procs", type=int, default=2, help="processes (data parallel; default 2)")
    parser.add_argument("--model", choices=sorted(MODELS), default="default")
    args = parser.parse_args(argv)
    shape = MODELS[args.model]
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        (scratch / "spec.toml").write_text(SPEC.format(**shape, **TRAINING, procs=args.procs, iters=args.steps))
        compiled = subprocess.run(
            [str(BIN / "bridgec"), "compile", "spec.toml", "-o", "run.py"], cwd=scratch, capture_output=True, text=True
        )
        if compiled.returncode != 0:
            raise SystemExit(f"bridgec compile failed:\n{compiled.stderr}")
        reference_run = json.dumps({**shape, **TRAINING, "iters": args.steps, "cache_dir": str(scratch / "cache")})
        sides = {
            "generated": (["run.py"], scratch),
            "reference": ([str(ROOT / "bench" / "baseline_loop.py"), reference_run], scratch),
        }
        results: dict[str, list[Launch]] = {"generated": [], "reference": []}
        for round_ in range(args.rounds):
            order = ("generated", "reference") if round_ % 2 == 0 else ("reference", "generated")
            for side in order:
                command, cwd = sides[side]
                results[side].append(launch(command, scratch / f"{side}.json", args.procs, args.warmup, cwd))
            same_work(results["generated"][-1], results["reference"][-1])
    report(results, args, shape)


def report(results: dict[str, list[Launch]], args: argparse.Namespace, shape: dict[str, int]) -> None:
    first = results["generated"][0]
    print(
        f"runtime overhead: {args.model} model ({first.parameters} parameters, {shape['num_layers']} layers, hidden "
        f"{shape['hidden_size']}; {first.batch['num_microbatches']} microbatches of {first.batch['micro_batch_size']}"
        f" x {first.batch['seq_length']} tokens per rank), {args.procs} process(es), {args.rounds} rounds of "
        f"{args.steps} steps ({args.warmup} warm-up) per side"
    )
    for side, name in (("reference", "hand-written megatron-core loop"), ("generated", "generated script (bridgec)")):
        steps = [step for run in results[side] for step in run.steps]
        cpu = [seconds for run in results[side] for seconds in run.cpu]
        host = [seconds for run in results[side] for seconds in run.host]
        print(f"  {name}:")
        print(f"    wall per step {spread(steps)}")
        print(f"    CPU per step  {spread(cpu)}   (rank 0's process time)")
        print(
            f"    host time per step outside forward/backward and the optimizer step: median "
            f"{median(host) * 1000:.2f} ms, IQR {iqr(host) * 1000:.2f} ms"
        )
    for what, measure in (("wall", lambda run: run.steps), ("CPU", lambda run: run.cpu)):
        ratios = [median(measure(g)) / median(measure(r)) for g, r in zip(results["generated"], results["reference"])]
        ratio, ratio_iqr = median(ratios), iqr(ratios) if len(ratios) > 1 else float("nan")
        verdict = "met" if ratio <= 1.03 and ratio_iqr < 0.03 else "not met"
        print(f"  {what} ratio generated / reference per round: " + " ".join(f"{r:.3f}" for r in ratios))
        print(
            f"    median {ratio:.3f}, IQR {ratio_iqr:.3f}, mean {statistics.fmean(ratios):.3f} "
            f"(target: median <= 1.03 with IQR < 0.03: {verdict})"
        )


if __name__ == "__main__":
    main()
