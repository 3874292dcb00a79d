"""A hand-written megatron-core training loop: the reference the generated script's overhead is measured against.

What a Megatron-LM user writes by hand for the same run, and no more: a GPT
model of the given shape (RMSNorm, SwiGLU, RoPE, no biases, tied embeddings,
fp32), DDP, ``get_megatron_optimizer`` (Adam, clipping inside its ``step()``),
megatron-core's learning-rate schedule, ``get_forward_backward_func`` over
microbatches of megatron-core's mock data, and the step's loss averaged over
data-parallel ranks (one all-reduce, as Megatron-LM's train_step does to report
it). It shares no code with bridgec's runtime (``cpu_compat`` aside, which
megatron-core needs on the CPU), and reads the run's shape from a JSON argument,
the same values the benchmark writes into the spec.

    torchrun --nproc-per-node N bench/baseline_loop.py '{"num_layers": 2, ...}'
"""

from __future__ import annotations

import functools
import json
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDatasetConfig, MockGPTDataset
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed
from megatron.core.transformer import TransformerConfig

from bridgec.runtime import cpu_compat

run = json.loads(sys.argv[1])
cpu_compat.apply()
dist.init_process_group("gloo")
parallel_state.initialize_model_parallel(1, 1)
torch.manual_seed(run["seed"])
model_parallel_cuda_manual_seed(run["seed"])
rank, world = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
num_microbatches = run["global_batch_size"] // (run["micro_batch_size"] * world)

config = TransformerConfig(
    num_layers=run["num_layers"],
    hidden_size=run["hidden_size"],
    num_attention_heads=run["num_attention_heads"],
    ffn_hidden_size=run["ffn_hidden_size"],
    normalization="RMSNorm",
    gated_linear_unit=True,
    activation_func=F.silu,
    add_bias_linear=False,
    hidden_dropout=0.0,
    attention_dropout=0.0,
    use_cpu_initialization=True,
    params_dtype=torch.float32,
    pipeline_dtype=torch.float32,
    calculate_per_token_loss=True,
    finalize_model_grads_func=finalize_model_grads,
)
model = GPTModel(
    config=config,
    transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
    vocab_size=run["vocab_size"],
    max_sequence_length=run["seq_length"],
    pre_process=True,
    post_process=True,
    share_embeddings_and_output_weights=True,
    position_embedding_type="rope",
)
ddp = DistributedDataParallel(config, DistributedDataParallelConfig(grad_reduce_in_fp32=True), model)
optimizer = get_megatron_optimizer(
    OptimizerConfig(
        optimizer="adam",
        lr=run["lr"],
        min_lr=run["min_lr"],
        weight_decay=run["weight_decay"],
        clip_grad=run["clip_grad"],
    ),
    [ddp],
)
config.grad_scale_func = optimizer.scale_loss  # as Megatron-LM's train() does
scheduler = OptimizerParamScheduler(
    optimizer,
    init_lr=0.0,
    max_lr=run["lr"],
    min_lr=run["min_lr"],
    lr_warmup_steps=run["warmup_iters"],
    lr_decay_steps=run["iters"],
    lr_decay_style="cosine",
    start_wd=run["weight_decay"],
    end_wd=run["weight_decay"],
    wd_incr_steps=run["iters"],
    wd_incr_style="constant",
)


class Tokens:
    eod = run["vocab_size"] - 1
    vocab_size = run["vocab_size"]
    unique_identifiers = {"bench": 1}


data_config = GPTDatasetConfig(
    random_seed=run["seed"],
    sequence_length=run["seq_length"],
    split="98,1,1",
    tokenizer=Tokens(),
    reset_position_ids=False,
    reset_attention_mask=False,
    eod_mask_loss=False,
    create_attention_mask=False,
    path_to_cache=run["cache_dir"],
)
samples = run["iters"] * run["global_batch_size"]
train, _, _ = BlendedMegatronDatasetBuilder(MockGPTDataset, [samples, 0, 0], lambda: True, data_config).build()


def batches():
    index = 0
    while True:
        start = index + rank * run["micro_batch_size"]
        items = [train[i] for i in range(start, start + run["micro_batch_size"])]
        index += run["micro_batch_size"] * world
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
for _ in range(run["iters"]):
    ddp.zero_grad_buffer()
    optimizer.zero_grad()
    losses = forward_backward(
        forward_step_func=forward_step,
        data_iterator=iterator,
        model=[ddp],
        num_microbatches=num_microbatches,
        seq_length=run["seq_length"],
        micro_batch_size=run["micro_batch_size"],
        forward_only=False,
    )
    optimizer.step()
    scheduler.step(increment=1)
    # Report the step's loss: sum of token losses / tokens, over microbatches and data-parallel ranks.
    total = torch.stack([entry["lm loss"] for entry in losses]).sum(dim=0)
    dist.all_reduce(total, group=parallel_state.get_data_parallel_group())
    loss = (total[0] / total[1]).item()
dist.destroy_process_group()
