"""Checkpoint saves: training time blocked per save, synchronous against asynchronous ([checkpoint] async_save).

The same spec is launched three times, differing only in [checkpoint]: no
checkpoints, synchronous saves, asynchronous saves (every SAVE_EVERY steps).
Per save, from the script's own log lines:

- blocked: the time the training loop spent in the save call (synchronous: the
  whole save; asynchronous: staging, plus the finalize that publishes it later);
- steps to publish (asynchronous): the steps that ran between a save's start and
  its publish.

The first save of a launch is left out of the per-save figures (an asynchronous
one also starts megatron-core's result queue, a spawned process) and printed on
its own. The whole loop's wall time against the launch without checkpoints
shows what the background writer costs the steps it runs beside (it competes
for the same cores).

    .venv/bin/python bench/checkpoint_bench.py [--steps 40] [--save-every 5] [--procs 1]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from common import BIN, iqr, median

SPEC = """
[run]
name = "bench"
output_dir = "out"
[launch]
procs_per_node = {procs}
[model]
num_layers = 4
hidden_size = 512
num_attention_heads = 8
vocab_size = 1024
seq_length = 128
[batch]
global_batch_size = 8
micro_batch_size = 2
[train]
iters = {steps}
log_interval = {steps}
[optimizer]
lr = 1e-4
{checkpoint}
"""

_SYNC = re.compile(r"checkpoint: saved step (\d+) to \S+ in ([\d.]+) s$", re.M)
_STAGED = re.compile(r"checkpoint: step (\d+) staged in ([\d.]+) s", re.M)
_PUBLISHED = re.compile(
    r"checkpoint: saved step (\d+) to \S+ in ([\d.]+) s \(written in the background, published after step (\d+): "
    r"(\d+) steps later; finalized in ([\d.]+) s\)"
)


def launch(folder: Path, procs: int, steps: int, checkpoint: str) -> tuple[str, float]:
    """Compile and run the spec; return rank 0's output and the loop's wall time (first to last step)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "spec.toml").write_text(SPEC.format(procs=procs, steps=steps, checkpoint=checkpoint))
    subprocess.run(
        [str(BIN / "bridgec"), "compile", str(folder / "spec.toml"), "-o", str(folder / "run.py")],
        check=True,
        capture_output=True,
    )
    completed = subprocess.run(
        [str(BIN / "torchrun"), "--nproc-per-node", str(procs), "run.py"],
        cwd=folder,
        capture_output=True,
        text=True,
        env={"OMP_NUM_THREADS": "1", "PATH": str(BIN)},
    )
    if completed.returncode != 0:
        raise SystemExit(f"{folder} failed:\n{completed.stdout[-2000:]}\n{completed.stderr[-3000:]}")
    lines = (folder / "out" / "spec.metrics.jsonl").read_text().splitlines()
    elapsed = [json.loads(line)["elapsed_s"] for line in lines if '"kind": "train"' in line]
    return completed.stdout, elapsed[-1] - elapsed[0]


def spread(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0] * 1000:8.1f} ms (one save)"
    return f"{median(values) * 1000:8.1f} ms median, IQR {iqr(values) * 1000:6.1f} ms, n={len(values)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--save-every", type=int, default=5)
    parser.add_argument("--procs", type=int, default=1)
    args = parser.parse_args()
    checkpoint = '[checkpoint]\ndir = "ckpt"\nsave_interval = {every}\nasync_save = {mode}'
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        _, plain_loop = launch(root / "none", args.procs, args.steps, "")
        sync_out, sync_loop = launch(
            root / "sync", args.procs, args.steps, checkpoint.format(every=args.save_every, mode="false")
        )
        async_out, async_loop = launch(
            root / "async", args.procs, args.steps, checkpoint.format(every=args.save_every, mode="true")
        )
    sync = [float(seconds) for _, seconds in _SYNC.findall(sync_out)]
    staged = {int(step): float(seconds) for step, seconds in _STAGED.findall(async_out)}
    published = {int(m[0]): (int(m[3]), float(m[4])) for m in _PUBLISHED.findall(async_out)}
    if not sync or sorted(staged) != sorted(published):
        raise SystemExit(f"unexpected log lines:\n--- sync\n{sync_out[-2000:]}\n--- async\n{async_out[-2000:]}")
    steps = sorted(staged)
    blocked = [staged[step] + published[step][1] for step in steps]
    later = [published[step][0] for step in steps]
    print(
        f"checkpoint saves: 4 layers, hidden 512, vocab 1024, fp32 + Adam, {args.procs} process(es), "
        f"{args.steps} steps, a save every {args.save_every} (first save of each launch left out)"
    )
    print(f"  first save: sync {sync[0] * 1000:.1f} ms, async {blocked[0] * 1000:.1f} ms blocked")
    print(f"  blocked per save, sync    {spread(sync[1:])}")
    print(f"  blocked per save, async   {spread(blocked[1:])}")
    print(
        f"  ratio async/sync (medians) x{median(blocked[1:]) / median(sync[1:]):.3f}"
        f"   (per-save ratios: min x{min(b / s for b, s in zip(blocked[1:], sync[1:])):.3f}, "
        f"max x{max(b / s for b, s in zip(blocked[1:], sync[1:])):.3f})"
    )
    print(
        f"  steps from a save's start to its publish: {', '.join(str(n) for n in later)} "
        f"(median {statistics.median(later)})"
    )
    print(
        f"  loop wall time, steps 1-{args.steps}: no checkpoints {plain_loop:.2f} s, sync {sync_loop:.2f} s, "
        f"async {async_loop:.2f} s"
    )


if __name__ == "__main__":
    main()
