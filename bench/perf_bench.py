"""Step time and peak memory of the recomputation choices and of local vs torch attention, as ratios.

Every case is the same small model compiled by bridgec with one [recompute] / transformer_impl choice and
run for STEPS steps on one process; the reference is no recomputation with megatron-core's local
attention, measured in the same run. Step time: the median of the wall time between consecutive steps'
metrics records (after WARMUP steps), with its interquartile range. Peak memory: the largest value the
metrics records hold (CUDA's max_allocated on a GPU, the process's resident set on the CPU, where the
allocator's caching and the interpreter blur activation savings).

    .venv/bin/python bench/perf_bench.py            # launch.device = "cpu"
    .venv/bin/python bench/perf_bench.py cuda       # on a GPU machine
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from common import iqr, median
from runtime_bench import compile_spec, torchrun

STEPS = 30
WARMUP = 5

SPEC = """
[run]
name = "bench"
[launch]
device = "{device}"
[model]
num_layers = 4
hidden_size = 128
num_attention_heads = 8
vocab_size = 256
seq_length = 512
normalization = "rmsnorm"
activation = "swiglu"
position_embedding = "rope"
add_bias_linear = false
transformer_impl = "{impl}"
[batch]
global_batch_size = 8
micro_batch_size = 4
[train]
iters = {steps}
log_interval = 1
[optimizer]
lr = 1e-3
{recompute}
"""

CASES = {
    "local, no recomputation (reference)": ("local", ""),
    "local, selective core_attn": ("local", '[recompute]\ngranularity = "selective"'),
    "local, selective core_attn+mlp": (
        "local",
        '[recompute]\ngranularity = "selective"\nmodules = ["core_attn", "mlp"]',
    ),
    "local, full uniform 1": ("local", '[recompute]\ngranularity = "full"\nmethod = "uniform"\nnum_layers = 1'),
    "torch attention, no recomputation": ("torch", ""),
    "torch attention, full uniform 1": (
        "torch",
        '[recompute]\ngranularity = "full"\nmethod = "uniform"\nnum_layers = 1',
    ),
}


def measure(script: Path) -> tuple[list[float], int]:
    """(step times after warm-up, peak memory bytes) of one launch."""
    shutil.rmtree(script.parent / "out", ignore_errors=True)
    torchrun(script, 1)
    records = [json.loads(line) for line in (script.parent / "out/bench/spec.metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    elapsed = [r["elapsed_s"] for r in train]
    steps = [later - earlier for earlier, later in zip(elapsed, elapsed[1:])][WARMUP:]
    peak = max(max(r["memory_bytes"].get("max_allocated", 0), r["memory_bytes"].get("rss", 0)) for r in train)
    return steps, peak


def main(device: str) -> None:
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for index, (name, (impl, recompute)) in enumerate(CASES.items()):
            text = SPEC.format(device=device, impl=impl, steps=STEPS, recompute=recompute)
            results[name] = measure(compile_spec(Path(folder) / f"case{index}", text))
    reference_time = median(results["local, no recomputation (reference)"][0])
    reference_peak = results["local, no recomputation (reference)"][1]
    print(f"\nrecomputation and attention ({device}; 4 layers, hidden 128, 8 heads, seq 512, micro batch 4, fp32)")
    print(f"{'case':<40} {'step':>9} {'IQR':>8} {'time ratio':>11} {'peak':>10} {'memory ratio':>13}")
    for name, (steps, peak) in results.items():
        seconds = median(steps)
        print(
            f"{name:<40} {seconds * 1000:7.1f}ms {iqr(steps) * 1000:6.1f}ms {seconds / reference_time:10.2f}x "
            f"{peak / 2**20:8.0f}MiB {peak / reference_peak:12.2f}x"
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "cpu")
