"""Build the model chunks this rank holds, initialise them, wrap them for training."""

from __future__ import annotations

from collections.abc import Callable

import attrs
import torch
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.transformer.module import Float16Module, MegatronModule

from bridgec.runtime.init import portable_init
from bridgec.runtime.parallel import Layout
from bridgec.runtime.peft import AdapterSettings, attach_adapters


@attrs.frozen(kw_only=True)
class Overlap:
    """megatron-core DistributedDataParallelConfig fields of [overlap] (and precision.fp8_param_gather)."""

    grad_reduce: bool = False
    """overlap_grad_reduce: reduce each gradient bucket during the backward pass."""
    param_gather: bool = False
    """overlap_param_gather: the distributed optimizer's all-gathers during the next forward pass."""
    align_param_gather: bool = False
    """align_param_gather: the interleaved schedule starts every chunk's all-gather at once."""
    bucket_size: int | None = None
    """Parameters per bucket; None: megatron-core's default."""
    fp8_param_gather: bool = False
    """All-gather FP8 parameters (Transformer Engine)."""


NO_OVERLAP = Overlap()

ModelProvider = Callable[[bool, bool, "int | None"], MegatronModule]
"""(pre_process, post_process, vp_stage) -> model chunk; the generated script's model_provider."""


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU with the tanh approximation: jax.nn.gelu's default, so MaxText's "gelu".

    A named function rather than functools.partial(F.gelu, approximate="tanh"):
    checkpoints record the activation by its name.
    """
    return torch.nn.functional.gelu(x, approximate="tanh")


def build_chunks(provider: ModelProvider, layout: Layout) -> list[MegatronModule]:
    """One model chunk per virtual pipeline stage (one when there is no virtual pipeline).

    Chunk ``i`` on pipeline rank ``p`` holds layers of virtual stage ``i x pipeline + p``;
    only the very first holds the embedding and only the very last the output layer.
    """
    chunks = []
    for vp_stage in range(layout.num_chunks):
        stage = vp_stage if layout.virtual_pipeline else None
        pre = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage)
        post = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage)
        chunks.append(provider(pre, post, stage))
    return chunks


def build_model(
    provider: ModelProvider,
    *,
    layout: Layout,
    init_scheme: str,
    seed: int,
    init_std: float,
    num_layers: int,
    tied_output: bool,
    dtype: str,
    distributed_optimizer: bool,
    num_experts: int | None = None,
    adapters: AdapterSettings | None = None,
    overlap: Overlap = NO_OVERLAP,
) -> list[DistributedDataParallel]:
    """Build, initialise, cast and wrap this rank's chunks in megatron's DDP.

    ``init_scheme`` "portable" redraws every weight from (seed, global name)
    (see :mod:`bridgec.runtime.init`); "megatron" keeps megatron-core's own init.
    Gradients are reduced in fp32, after the backward pass unless ``overlap``
    says otherwise (see :func:`wire_overlap`); like Megatron-LM, only the first
    chunk's buffer is bucketed.

    ``adapters`` ([peft]): every chunk gets its LoRA/DoRA adapters and its base weights are
    frozen before the DDP wrap, so megatron's DDP and optimizer see only the adapters.
    """
    chunks = build_chunks(provider, layout)
    if init_scheme == "portable":
        portable_init(
            chunks,
            seed=seed,
            std=init_std,
            num_layers=num_layers,
            tensor_parallel=layout.tensor,
            tensor_rank=layout.tensor_rank,
            tied_output=tied_output,
            expert_rank=layout.expert_rank,
            local_experts=(num_experts or 0) // layout.expert,
        )
    if adapters is not None:
        attach_adapters(chunks, adapters, seed=seed, tensor_parallel=layout.tensor, tensor_rank=layout.tensor_rank)
    if layout.device.type == "cuda":
        chunks = [chunk.cuda(layout.device) for chunk in chunks]
    if dtype in ("bf16", "fp16"):
        chunks = [Float16Module(chunk.config, chunk) for chunk in chunks]
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=overlap.grad_reduce,
        overlap_param_gather=overlap.param_gather,
        align_param_gather=overlap.align_param_gather,
        bucket_size=overlap.bucket_size,
        fp8_param_gather=overlap.fp8_param_gather,
        use_distributed_optimizer=distributed_optimizer,
        check_for_nan_in_grad=False,
    )
    model = [
        DistributedDataParallel(chunk.config, ddp_config, chunk, disable_bucketing=index > 0)
        for index, chunk in enumerate(chunks)
    ]
    wire_overlap(model, overlap)
    return model


def wire_overlap(model: list[DistributedDataParallel], overlap: Overlap) -> None:
    """Give megatron-core's schedules the DDP hooks overlapped communication needs, as Megatron-LM's training.py does.

    With overlap_grad_reduce a bucket's reduction starts from its gradients'
    backward hooks, so every microbatch but the last must run under DDP's
    ``no_sync`` (no_sync_func), or each would reduce partial sums; the
    interleaved schedule also starts each chunk's reduction itself
    (grad_sync_func). align_param_gather lets it start every chunk's parameter
    all-gather (param_sync_func).
    """
    config = model[0].config  # the chunks share one TransformerConfig
    if overlap.grad_reduce:
        no_sync = [chunk.no_sync for chunk in model]
        grad_sync = [chunk.start_grad_sync for chunk in model]
        config.no_sync_func = no_sync[0] if len(model) == 1 else no_sync
        config.grad_sync_func = grad_sync[0] if len(model) == 1 else grad_sync
    if overlap.align_param_gather:
        param_sync = [chunk.start_param_sync for chunk in model]
        config.param_sync_func = param_sync[0] if len(model) == 1 else param_sync


def unwrap(chunk: torch.nn.Module) -> torch.nn.Module:
    """The GPTModel inside DDP and Float16Module wrappers."""
    while hasattr(chunk, "module") and isinstance(chunk, (DistributedDataParallel, Float16Module)):
        chunk = chunk.module
    return chunk
