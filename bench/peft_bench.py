"""Full fine-tuning against LoRA ([peft]) on the same model: trainable parameters, optimizer-state bytes,
checkpoint size, peak memory and step time, as LoRA / full ratios from one run of each.

The same spec is launched twice, differing only in a [peft] table (LoRA on linear_qkv, linear_proj,
linear_fc1, linear_fc2, rank 8); each saves one checkpoint at its last step. Figures come from what the runs
leave behind, not from bridgec's own arithmetic:

- trainable parameters and optimizer-state bytes: the checkpoint's tensor index (the model's tensors, and
  the ``optimizer.*`` ones: Adam's two moments per trainable parameter);
- checkpoint size: the bytes of the checkpoint folder;
- peak memory: the largest ``memory_bytes`` the metrics file records (on CPU the process's resident set,
  which the Python and torch runtime dominate at this size; on CUDA the allocator's peak);
- step time: median and interquartile range of ``ms_per_step`` over the steps after the first two.

    .venv/bin/python bench/peft_bench.py [--steps 20] [--procs 1] [--hidden 512]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import tempfile
from pathlib import Path

from common import BIN, iqr, median

from bridgec.runtime.checkpoint_files import find_latest, read_tensor_metadata

SPEC = """
[run]
name = "bench"
output_dir = "out"
[launch]
procs_per_node = {procs}
[model]
num_layers = 4
hidden_size = {hidden}
num_attention_heads = 8
vocab_size = 1024
seq_length = 128
normalization = "rmsnorm"
activation = "swiglu"
position_embedding = "rope"
add_bias_linear = false
[batch]
global_batch_size = 8
micro_batch_size = 2
[train]
iters = {steps}
log_interval = {steps}
[optimizer]
lr = 1e-4
[checkpoint]
dir = "ckpt"
save_interval = {steps}
{peft}
"""

LORA = '[peft]\nmethod = "lora"\nrank = 8\nalpha = 16.0'


def launch(folder: Path, procs: int, steps: int, hidden: int, peft: str) -> dict[str, float | list[float]]:
    """Compile and run the spec; what its checkpoint and metrics file say."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "spec.toml").write_text(SPEC.format(procs=procs, steps=steps, hidden=hidden, peft=peft))
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
    checkpoint = find_latest(folder / "ckpt")
    assert checkpoint is not None
    sizes = {
        key: math.prod(meta.size) * meta.properties.dtype.itemsize
        for key, meta in read_tensor_metadata(checkpoint).state_dict_metadata.items()
        if hasattr(meta, "size")
    }
    records = [json.loads(line) for line in (folder / "out" / "spec.metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r.get("kind") == "train"]
    return {
        "trainable": sum(b for k, b in sizes.items() if not k.startswith(("optimizer.", "rng_state"))) / 4,
        "optimizer_bytes": sum(b for k, b in sizes.items() if k.startswith("optimizer.")),
        "checkpoint_bytes": sum(f.stat().st_size for f in checkpoint.rglob("*") if f.is_file()),
        "peak_memory": max(max(r["memory_bytes"].values()) for r in train),
        "step_ms": [r["ms_per_step"] for r in train[2:]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--procs", type=int, default=1)
    parser.add_argument(
        "--hidden",
        type=int,
        default=512,
        help="hidden size (a full fine-tuning checkpoint holds every weight and its two Adam moments)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        full = launch(Path(scratch) / "full", args.procs, args.steps, args.hidden, "")
        lora = launch(Path(scratch) / "lora", args.procs, args.steps, args.hidden, LORA)
    print(
        f"full fine-tuning vs LoRA (rank 8 on linear_qkv/proj/fc1/fc2): 4 layers, hidden {args.hidden}, swiglu, vocab 1024, "
        f"fp32 + Adam, {args.procs} process(es), {args.steps} steps, one checkpoint at the end"
    )
    print(f"  {'':<24} {'full':>14} {'LoRA':>14} {'LoRA / full':>12}")
    for name, key, unit in (
        ("trainable parameters", "trainable", 1),
        ("optimizer state (MiB)", "optimizer_bytes", 2**20),
        ("checkpoint (MiB)", "checkpoint_bytes", 2**20),
        ("peak memory (MiB)", "peak_memory", 2**20),
    ):
        a, b = float(full[key]) / unit, float(lora[key]) / unit
        print(f"  {name:<24} {a:>14,.2f} {b:>14,.2f} {b / a:>12.4f}")
    steps_full, steps_lora = list(full["step_ms"]), list(lora["step_ms"])  # type: ignore[arg-type]
    print(
        f"  {'step time (ms, median)':<24} {median(steps_full):>14.1f} {median(steps_lora):>14.1f} "
        f"{median(steps_lora) / median(steps_full):>12.4f}"
    )
    print(
        f"  step-time spread: full IQR {iqr(steps_full):.1f} ms, LoRA IQR {iqr(steps_lora):.1f} ms "
        f"(n={len(steps_full)} steps each)"
    )


if __name__ == "__main__":
    main()
