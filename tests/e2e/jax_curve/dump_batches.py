"""Write the global batches a compiled script trains on, step by step, to an .npz for the JAX side.

``python -m tests.e2e.jax_curve.dump_batches RUN.py OUT.npz`` imports the
compiled script as a module (its main() does not run), builds its datasets with
its own ``datasets()``, and deals the samples with the runtime's own sampler
(:class:`bridgec.runtime.data.MicrobatchIterator`) at the script's micro batch
size and data-parallel size 1, so each step's microbatches, concatenated, are
exactly the sequences that step of the compiled run sees. Arrays are
[steps, global batch, sequence]: tokens, labels, loss_mask, position_ids.
"""

from __future__ import annotations

import importlib.util
import sys

import numpy as np

from bridgec.runtime.data import MicrobatchIterator


def main(script: str, out: str) -> int:
    spec = importlib.util.spec_from_file_location("compiled", script)
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    if run.DATA_PARALLEL != 1:
        raise SystemExit(f"{script}: data parallel {run.DATA_PARALLEL}; the dump assumes one data-parallel rank")
    sampler = MicrobatchIterator(
        run.datasets().train, micro_batch_size=run.MICRO_BATCH_SIZE, data_parallel_size=1, data_rank=0
    )
    steps: dict[str, list[np.ndarray]] = {}
    for _ in range(run.TRAIN_ITERS):
        micro = [next(sampler) for _ in range(run.NUM_MICROBATCHES)]
        for key in ("tokens", "labels", "loss_mask", "position_ids"):
            steps.setdefault(key, []).append(np.concatenate([batch[key].numpy() for batch in micro]))
    np.savez(out, **{key: np.stack(value) for key, value in steps.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
