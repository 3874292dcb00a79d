"""Forward-only pattern 3 through a compiled script's pieces: collect per-token losses without reduction.

Usage: torchrun --nproc-per-node N collect_outputs.py path/to/run.py OUT.json
Builds the compiled script's model and data for its layout, runs
step.collect_non_loss_data over the first global batch with a forward step whose
loss function is runtime.loss.token_outputs, and writes (on the rank that holds
the last stage's first data-parallel shard) each microbatch's per-token losses.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import sys

import torch.distributed as dist

spec = importlib.util.spec_from_file_location("compiled", sys.argv[1])
run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run)

from bridgec.runtime.data import MicrobatchIterator, next_batch  # noqa: E402
from bridgec.runtime.loss import token_outputs  # noqa: E402
from bridgec.runtime.model import unwrap  # noqa: E402
from bridgec.runtime.step import collect_non_loss_data  # noqa: E402

run.cpu_compat.apply()
layout = run.initialize(
    device="cpu",
    tensor=run.TENSOR_PARALLEL,
    pipeline=run.PIPELINE_PARALLEL,
    virtual_pipeline=None,
    context=1,
    expert=1,
    seed=run.SEED,
    timeout_minutes=5,
)
model = run.build_model(
    run.model_provider,
    layout=layout,
    init_scheme=run.INIT_SCHEME,
    seed=run.SEED,
    init_std=run.INIT_METHOD_STD,
    num_layers=run.NUM_LAYERS,
    tied_output=True,
    dtype="fp32",
    distributed_optimizer=False,
)
train = run.datasets().train


def forward_step(data_iterator, model):
    chunk = unwrap(model)
    batch = next_batch(
        data_iterator, pre_process=chunk.pre_process, post_process=chunk.post_process, device=layout.device
    )
    output = model(batch.tokens, batch.position_ids, None, labels=batch.labels)
    return output, functools.partial(token_outputs, batch.loss_mask)


iterators = [
    MicrobatchIterator(
        train, micro_batch_size=run.MICRO_BATCH_SIZE, data_parallel_size=layout.data, data_rank=layout.data_rank
    )
]
collected = collect_non_loss_data(
    forward_step,
    iterators,
    model,
    num_microbatches=run.NUM_MICROBATCHES,
    micro_batch_size=run.MICRO_BATCH_SIZE,
    seq_length=run.SEQ_LENGTH,
)
if layout.holds_loss:
    rows = [item["output"].reshape(-1).tolist() for item in collected]
    with open(sys.argv[2], "w") as handle:
        json.dump({"microbatches": rows}, handle)
dist.destroy_process_group()
