"""[recompute] and [overlap] change memory and timing, never the numbers: the same losses, bit for bit.

One torchrun launch (2 gloo ranks, data parallel 2) runs every variant's compiled script in turn
(tests/e2e/scripts_worker.py). Dropout 0.1 on: recomputation must redraw the dropout masks it drew in the
forward pass. Recomputed selective modules (core attention, MLP), full layers (uniform and block) and
no recomputation give identical losses; so do overlapped gradient reduction in small buckets and
synchronous reduction, and, with the distributed optimizer, overlapped parameter all-gathers.
"""

from __future__ import annotations

from pathlib import Path

from tests.e2e.harness import compile_to, launch
from tests.e2e.scripts_worker import __file__ as WORKER

SPEC = """
[run]
name = "{name}"
seed = 5

[launch]
procs_per_node = 2

[model]
num_layers = 2
hidden_size = 64
num_attention_heads = 4
vocab_size = 128
seq_length = 32
position_embedding = "rope"
add_bias_linear = false
dropout = 0.1

[parallel]
distributed_optimizer = {distributed}

[batch]
global_batch_size = 8
micro_batch_size = 2

[train]
iters = 3

[optimizer]
lr = 2e-3
{extra}
"""

BUCKETS = "bucket_size = 4000  # several buckets for this model's ~60k parameters"
VARIANTS = {
    "plain": (False, ""),
    "selective": (False, '[recompute]\ngranularity = "selective"\nmodules = ["core_attn", "mlp"]'),
    "full_uniform": (False, '[recompute]\ngranularity = "full"\nmethod = "uniform"\nnum_layers = 1'),
    "full_block": (False, '[recompute]\ngranularity = "full"\nmethod = "block"\nnum_layers = 1'),
    "grad_reduce": (False, f"[overlap]\ngrad_reduce = true\n{BUCKETS}"),
    "distributed": (True, ""),
    "param_gather": (True, f"[overlap]\ngrad_reduce = true\nparam_gather = true\n{BUCKETS}"),
}


def test_recompute_and_overlap_give_bit_identical_losses(tmp_path: Path) -> None:
    scripts = [
        compile_to(tmp_path, SPEC.format(name=name, distributed=str(d).lower(), extra=extra), name=f"{name}.toml",
                   output=f"{name}.py")
        for name, (d, extra) in VARIANTS.items()
    ]  # fmt: skip
    worker = tmp_path / "scripts_worker.py"
    worker.write_text(Path(WORKER).read_text())
    result = launch(worker, 2, args=tuple(script.name for script in scripts))
    assert result.returncode == 0, result.explain()
    losses = {name: result.train_losses(f"out/{name}", name) for name in VARIANTS}
    assert len(losses["plain"]) == 3 and len(set(losses["plain"])) == 3
    for name in ("selective", "full_uniform", "full_block", "grad_reduce"):
        assert losses[name] == losses["plain"], name
    assert losses["param_gather"] == losses["distributed"]
