"""Portable weight initialisation: the same initial model whatever the layout.

megatron-core initialises each rank's shard from that rank's RNG, so TP=1 and
TP=2, or PP=1 and PP=2, start from different weights. bridgec's ``portable``
scheme instead draws every parameter's *full* tensor from a generator seeded by
``(seed, global parameter name)`` and keeps this rank's shard of it:

* names, full shapes, tensor-parallel splits and distributions come from the
  parameter table (:mod:`bridgec.runtime.models.gpt`); the global name has the
  global layer index, so a layer has the same name on whichever pipeline stage
  or virtual chunk holds it;
* the shard is cut the way megatron-core cuts its CPU master weights
  (``_initialize_affine_weight_cpu``): split along the split axis into
  ``tensor x stride`` pieces and take pieces ``rank::tensor``. Stride 2 is the
  gated MLP's ``[gate; up]`` input projection;
* a tied output layer on the last stage is the embedding under the table's
  global name, so it equals the first stage's embedding exactly.

megatron-core must still run its own initialisation first (``perform_initialization``
left on): only then does it mark tensor-parallel parameters with
``tensor_model_parallel``/``partition_dim``/``partition_stride``, which
megatron's gradient-norm de-duplication relies on.

Distributions follow megatron-core (the table's init rule): weights ~ N(0, std),
the two residual output projections ~ N(0, std / sqrt(2 x layers)), norm scales
1, biases 0. Cost: one full tensor per parameter is
generated on each rank at start-up (transient), which is why ``[init] scheme =
"megatron"`` exists for very large runs.
"""

from __future__ import annotations

import hashlib
import math
from typing import assert_never

import torch

from bridgec.runtime.models.chunks import chunk_inventory, config_of, pairs
from bridgec.runtime.models.gpt import QKV, Init


def name_seed(seed: int, name: str) -> int:
    """A 63-bit generator seed from the run seed and a global parameter name (stable across runs and machines)."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def shard(full: torch.Tensor, *, axis: int, stride: int, tensor_parallel: int, tensor_rank: int) -> torch.Tensor:
    """This rank's piece of a full tensor, cut as megatron-core cuts its master weights."""
    if tensor_parallel == 1:
        return full
    piece = full.shape[axis] // (tensor_parallel * stride)
    pieces = torch.split(full, piece, dim=axis)
    return torch.cat(pieces[tensor_rank::tensor_parallel], dim=axis)


def draw(
    init: Init,
    name: str,
    shape: tuple[int, ...],
    *,
    seed: int,
    std: float,
    num_layers: int,
    zero_centered_norms: bool = False,
) -> torch.Tensor:
    """The full fp32 initial value of one parameter, by its init rule; weights from a generator seeded by its name.

    Norm scales start at 1, stored as 0 when the model keeps them zero-centred
    (``layernorm_zero_centered_gamma``: the layer applies 1 + weight).
    """
    match init:
        case Init.ZERO:
            return torch.zeros(shape)
        case Init.ONE:
            return torch.zeros(shape) if zero_centered_norms else torch.ones(shape)
        case Init.NORMAL | Init.SCALED_NORMAL:
            generator = torch.Generator().manual_seed(name_seed(seed, name))
            scale = std / math.sqrt(2.0 * num_layers) if init is Init.SCALED_NORMAL else std
            return torch.randn(shape, generator=generator, dtype=torch.float32) * scale
        case _:
            assert_never(init)


@torch.no_grad()
def portable_init(
    chunks: list[torch.nn.Module],
    *,
    seed: int,
    std: float,
    num_layers: int,
    tensor_parallel: int,
    tensor_rank: int,
    tied_output: bool,
    expert_rank: int = 0,
    local_experts: int = 0,
) -> int:
    """Overwrite every parameter of the (unwrapped) model chunks; return how many were set.

    The table names a tied output layer's copy as the embedding; ``tied_output``
    must say what the chunks are (ValueError otherwise).
    """
    count = 0
    for chunk in chunks:
        if config_of(chunk).tied != tied_output:
            raise ValueError(f"portable_init: tied_output={tied_output}, but the model chunk says otherwise")
        zero_centered = chunk.config.layernorm_zero_centered_gamma  # megatron-core TransformerConfig
        for parameter, param in pairs(
            chunk, tensor_parallel=tensor_parallel, expert_rank=expert_rank, local_experts=local_experts
        ):
            full = draw(
                parameter.entry.init,
                parameter.name,
                parameter.shape,
                seed=seed,
                std=std,
                num_layers=num_layers,
                zero_centered_norms=zero_centered,
            )
            if parameter.split is not None:
                full = shard(
                    full,
                    axis=parameter.split.axis,
                    stride=parameter.stride,
                    tensor_parallel=tensor_parallel,
                    tensor_rank=tensor_rank,
                )
            param.copy_(full.to(param.dtype))
            count += 1
    return count


@torch.no_grad()
def scale_query_rows(
    chunks: list[torch.nn.Module], factor: float, *, num_attention_heads: int, num_query_groups: int, head_dim: int
) -> int:
    """Multiply the query part of every fused ``linear_qkv`` weight (and bias) by ``factor``.

    MaxText's llama2/mistral/gemma blocks fold 1/sqrt(head_dim) into the query
    kernel's initial weights instead of scaling attention scores; with
    ``softmax_scale = 1`` this reproduces that model. megatron-core lays
    ``linear_qkv`` out per query group as ``[q heads of the group..., k, v]``
    (``head_dim`` rows each), on every tensor-parallel shard alike, so the query
    rows are the first ``heads / groups`` heads of every group block. Returns how
    many weights were scaled.
    """
    per_group = num_attention_heads // num_query_groups
    block = (per_group + 2) * head_dim
    scaled = 0
    for chunk in chunks:
        # Local names do not depend on the tensor-parallel size; only the table's rows are needed here.
        fused = {p.local_name for p in chunk_inventory(chunk, tensor_parallel=1) if p.entry in QKV}
        for name, param in chunk.named_parameters():
            if name not in fused:
                continue
            groups = param.shape[0] // block
            view = param.view(groups, block, *param.shape[1:])
            view[:, : per_group * head_dim].mul_(factor)
            scaled += 1
    return scaled
