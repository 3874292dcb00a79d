"""Layout step times and start-up, measured against references taken in the same run.

1. Layouts: median step time of the same small model at 1 process, DP2, TP2,
   PP2 and VPP on PP2, as ratios to the 1-process run.
2. Start-up: `import megatron.core` against `python -c pass`.

The runtime's overhead against a hand-written loop is bench/overhead_bench.py.

    .venv/bin/python bench/runtime_bench.py
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import BIN, median, row, time_command

STEPS = 40
WARMUP = 5


def torchrun(script: Path, nprocs: int, *args: str) -> subprocess.CompletedProcess[str]:
    completed = subprocess.run(
        [str(BIN / "torchrun"), "--nproc-per-node", str(nprocs), str(script), *args],
        cwd=script.parent,
        capture_output=True,
        text=True,
        env={"OMP_NUM_THREADS": "1", "PATH": str(BIN)},
    )
    if completed.returncode != 0:
        raise SystemExit(f"{script} failed:\n{completed.stderr[-3000:]}")
    return completed


def compile_spec(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.toml").write_text(text)
    subprocess.run(
        [str(BIN / "bridgec"), "compile", str(folder / "spec.toml"), "-o", str(folder / "run.py")], check=True
    )
    return folder / "run.py"


def generated_step_times(script: Path, nprocs: int, output_dir: str) -> list[float]:
    """Wall time between consecutive steps' log records: the whole loop iteration, logging included."""
    shutil.rmtree(script.parent / output_dir, ignore_errors=True)
    torchrun(script, nprocs)
    lines = (script.parent / output_dir / "spec.metrics.jsonl").read_text().splitlines()
    elapsed = [json.loads(line)["elapsed_s"] for line in lines if '"train"' in line]
    return [later - earlier for earlier, later in zip(elapsed, elapsed[1:])]


LAYOUT_SPEC = """
[run]
name = "bench"
[launch]
procs_per_node = {procs}
[model]
num_layers = 4
hidden_size = 128
num_attention_heads = 4
vocab_size = 256
seq_length = 64
normalization = "rmsnorm"
activation = "swiglu"
position_embedding = "rope"
add_bias_linear = false
[parallel]
{parallel}
[batch]
global_batch_size = 16
micro_batch_size = 2
[train]
iters = {steps}
log_interval = {steps}
[optimizer]
lr = 1e-3
"""


def layouts(scratch: Path) -> None:
    cases = {
        "1 process": (1, ""),
        "DP2": (2, ""),
        "TP2": (2, "tensor = 2"),
        "PP2": (2, "pipeline = 2"),
        "VPP2 on PP2": (2, "pipeline = 2\nvirtual_pipeline = 2"),
    }
    medians = {}
    for name, (procs, parallel) in cases.items():
        script = compile_spec(
            scratch / name.replace(" ", "_"), LAYOUT_SPEC.format(procs=procs, parallel=parallel, steps=STEPS)
        )
        medians[name] = median(generated_step_times(script, procs, "out/bench")[WARMUP:])
    print("\nlayout step times (4 layers, hidden 128, global batch 16 x 64 tokens, fp32, CPU)")
    for name, seconds in medians.items():
        print(row(name, seconds, medians["1 process"]))


def startup() -> None:
    reference = median(time_command([sys.executable, "-c", "pass"], repeat=5))
    megatron = median(time_command([sys.executable, "-c", "import megatron.core"], repeat=5))
    print("\nstart-up")
    print(row("python -c pass (reference)", reference, reference))
    print(row("import megatron.core", megatron, reference))


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        layouts(Path(folder))
    startup()


if __name__ == "__main__":
    main()
