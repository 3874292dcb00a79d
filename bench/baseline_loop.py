"""A minimal hand-written megatron-core training loop: the reference for runtime overhead.

It imports a compiled script only for its model definition and constants (so
both sides train exactly the same model on the same batch shape) and then does
by hand what a Megatron-LM user would write: DDP, get_megatron_optimizer,
get_forward_backward_func over mock data, optimizer.step(), scheduler-free
constant learning rate, and the step's loss averaged over data-parallel ranks
(one all-reduce, as Megatron-LM's train_step does to report it). Prints one
JSON line with the per-step wall times.

    torchrun --nproc-per-node N bench/baseline_loop.py path/to/run.py STEPS
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import sys
import time

import torch
import torch.distributed as dist

spec = importlib.util.spec_from_file_location("compiled", sys.argv[1])
run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run)
steps = int(sys.argv[2])

from megatron.core import parallel_state  # noqa: E402
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder  # noqa: E402
from megatron.core.datasets.gpt_dataset import GPTDatasetConfig, MockGPTDataset  # noqa: E402
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig  # noqa: E402
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer  # noqa: E402
from megatron.core.pipeline_parallel import get_forward_backward_func  # noqa: E402
from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed  # noqa: E402

from bridgec.runtime import cpu_compat  # noqa: E402

cpu_compat.apply()
dist.init_process_group("gloo")
parallel_state.initialize_model_parallel(run.TENSOR_PARALLEL, run.PIPELINE_PARALLEL)
torch.manual_seed(run.SEED)
model_parallel_cuda_manual_seed(run.SEED)

model = run.model_provider(True, True)
ddp = DistributedDataParallel(
    model.config, DistributedDataParallelConfig(grad_reduce_in_fp32=True), model
)
optimizer = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=run.LR, clip_grad=run.CLIP_GRAD), [ddp])


class Tokens:
    eod = run.EOD_TOKEN
    vocab_size = run.VOCAB_SIZE
    unique_identifiers = {"bench": 1}


config = GPTDatasetConfig(
    random_seed=run.SEED, sequence_length=run.SEQ_LENGTH, split="98,1,1", tokenizer=Tokens(),
    reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False, create_attention_mask=False,
    path_to_cache=os.path.join(os.path.dirname(sys.argv[1]), "out", "bench_cache"),
)
train, _, _ = BlendedMegatronDatasetBuilder(MockGPTDataset, [steps * run.GLOBAL_BATCH_SIZE, 0, 0], lambda: True,
                                            config).build()
rank, world = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()


def batches():
    index = 0
    while True:
        start = index + rank * run.MICRO_BATCH_SIZE
        items = [train[i] for i in range(start, start + run.MICRO_BATCH_SIZE)]
        index += run.MICRO_BATCH_SIZE * world
        yield {k: torch.stack([item[k] for item in items]) for k in items[0]}


def loss_func(loss_mask, output):
    losses = output.float().reshape(-1)
    mask = loss_mask.reshape(-1).float()
    loss = torch.sum(losses * mask)
    return loss, mask.sum().to(torch.int), {"lm loss": torch.stack([loss.detach(), mask.sum()])}


def forward_step(iterator, model):
    batch = next(iterator)
    output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
    return output, functools.partial(loss_func, batch["loss_mask"])


iterator = batches()
forward_backward = get_forward_backward_func()
times = []
for _ in range(steps):
    began = time.perf_counter()
    ddp.zero_grad_buffer()
    optimizer.zero_grad()
    losses = forward_backward(forward_step_func=forward_step, data_iterator=iterator, model=[ddp],
                              num_microbatches=run.NUM_MICROBATCHES, seq_length=run.SEQ_LENGTH,
                              micro_batch_size=run.MICRO_BATCH_SIZE, forward_only=False)
    optimizer.step()
    # Report the step's loss: sum of token losses / tokens, over microbatches and data-parallel ranks.
    total = torch.stack([entry["lm loss"] for entry in losses]).sum(dim=0)
    dist.all_reduce(total, group=parallel_state.get_data_parallel_group())
    loss = (total[0] / total[1]).item()
    times.append(time.perf_counter() - began)
if dist.get_rank() == 0:
    print(json.dumps({"step_seconds": times}))
dist.destroy_process_group()
