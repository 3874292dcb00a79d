"""Portable weight initialisation: the same initial model whatever the layout.

megatron-core initialises each rank's shard from that rank's RNG, so TP=1 and
TP=2, or PP=1 and PP=2, start from different weights. bridgec's ``portable``
scheme instead draws every parameter's *full* tensor from a generator seeded by
``(seed, global parameter name)`` and keeps this rank's shard of it:

* the global name replaces the stage-local layer index with the global one
  (``decoder.layers.{layer_number - 1}``), so a layer has the same name on
  whichever pipeline stage or virtual chunk holds it;
* the shard is cut the way megatron-core cuts its CPU master weights
  (``_initialize_affine_weight_cpu``): split along ``partition_dim`` into
  ``tensor x stride`` pieces and take pieces ``rank::tensor``. Stride 2 is the
  gated MLP's ``[gate; up]`` input projection;
* a tied output layer on the last stage takes the embedding's name, so it equals
  the first stage's embedding exactly.

megatron-core must still run its own initialisation first (``perform_initialization``
left on): only then does it mark tensor-parallel parameters with
``tensor_model_parallel``/``partition_dim``/``partition_stride``, which both the
shard cut here and megatron's gradient-norm de-duplication rely on.

Distributions follow megatron-core: weights ~ N(0, std), the two residual
output projections (``linear_proj``, ``linear_fc2``) ~ N(0, std / sqrt(2 x
layers)), norm scales 1, biases 0. Cost: one full tensor per parameter is
generated on each rank at start-up (transient), which is why ``[init] scheme =
"megatron"`` exists for very large runs.
"""

from __future__ import annotations

import hashlib
import math
import re

import torch

_LAYER = re.compile(r"^(?P<head>(?:.*\.)?decoder\.layers\.)(?P<index>\d+)(?P<tail>\..*)$")
_LOCAL_EXPERT = re.compile(r"\.experts\.local_experts\.(\d+)\.")
_RESIDUAL_OUTPUTS = ("self_attention.linear_proj.weight", "linear_fc2.weight")


def name_seed(seed: int, name: str) -> int:
    """A 63-bit generator seed from the run seed and a global parameter name (stable across runs and machines)."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def global_name(
    local_name: str, layer_numbers: dict[int, int], *, expert_rank: int = 0, local_experts: int = 0
) -> str:
    """Map a stage-local parameter name to its layout-independent name.

    ``layer_numbers`` maps the local layer index to megatron's 1-based global
    ``layer_number`` for this model chunk. MoE experts are numbered locally on
    each expert-parallel rank; rank ``r`` holds experts ``r x local_experts + i``.
    """
    match = _LAYER.match(local_name)
    if match is None:
        return local_name
    index = int(match["index"])
    name = f"{match['head']}{layer_numbers[index] - 1}{match['tail']}"
    return _LOCAL_EXPERT.sub(lambda m: f".experts.{expert_rank * local_experts + int(m[1])}.", name)


def full_shape(param: torch.Tensor, tensor_parallel: int) -> tuple[int, ...]:
    """The parameter's shape at TP=1."""
    shape = list(param.shape)
    if getattr(param, "tensor_model_parallel", False) and tensor_parallel > 1:
        shape[param.partition_dim] *= tensor_parallel  # type: ignore[attr-defined]
    return tuple(shape)


def shard(full: torch.Tensor, param: torch.Tensor, tensor_parallel: int, tensor_rank: int) -> torch.Tensor:
    """This rank's piece of a full tensor, cut as megatron-core cuts its master weights."""
    if not getattr(param, "tensor_model_parallel", False) or tensor_parallel == 1:
        return full
    dim: int = param.partition_dim  # type: ignore[attr-defined]
    stride: int = getattr(param, "partition_stride", 1)
    piece = full.shape[dim] // (tensor_parallel * stride)
    pieces = torch.split(full, piece, dim=dim)
    return torch.cat(pieces[tensor_rank::tensor_parallel], dim=dim)


def draw(
    name: str, shape: tuple[int, ...], *, seed: int, std: float, num_layers: int, zero_centered_norms: bool = False
) -> torch.Tensor:
    """The full fp32 initial value of one parameter, by megatron-core's rules for its kind.

    Norm scales start at 1, stored as 0 when the model keeps them zero-centred
    (``layernorm_zero_centered_gamma``: the layer applies 1 + weight).
    """
    leaf = name.rsplit(".", 1)[-1]
    if len(shape) == 1:
        if leaf in ("bias", "layer_norm_bias"):
            return torch.zeros(shape)
        if leaf in ("weight", "layer_norm_weight"):
            return torch.zeros(shape) if zero_centered_norms else torch.ones(shape)
    if leaf == "bias":
        return torch.zeros(shape)
    generator = torch.Generator().manual_seed(name_seed(seed, name))
    scale = std / math.sqrt(2.0 * num_layers) if name.endswith(_RESIDUAL_OUTPUTS) else std
    return torch.randn(shape, generator=generator, dtype=torch.float32) * scale


def layer_numbers(chunk: torch.nn.Module) -> dict[int, int]:
    """Local layer index -> global 1-based layer number for a GPTModel chunk."""
    decoder = getattr(chunk, "decoder", None)
    if decoder is None:
        return {}
    return {index: layer.layer_number for index, layer in enumerate(decoder.layers)}


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
    """Overwrite every parameter of the (unwrapped) model chunks; return how many were set."""
    count = 0
    for chunk in chunks:
        numbers = layer_numbers(chunk)
        zero_centered = chunk.config.layernorm_zero_centered_gamma  # megatron-core TransformerConfig
        for local, param in chunk.named_parameters():
            name = global_name(local, numbers, expert_rank=expert_rank, local_experts=local_experts)
            if tied_output and name == "output_layer.weight":
                name = "embedding.word_embeddings.weight"
            full = draw(
                name,
                full_shape(param, tensor_parallel),
                seed=seed,
                std=std,
                num_layers=num_layers,
                zero_centered_norms=zero_centered,
            )
            param.copy_(shard(full, param, tensor_parallel, tensor_rank).to(param.dtype))
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
        for name, param in chunk.named_parameters():
            if not name.endswith(("linear_qkv.weight", "linear_qkv.bias")):
                continue
            groups = param.shape[0] // block
            view = param.view(groups, block, *param.shape[1:])
            view[:, : per_group * head_dim].mul_(factor)
            scaled += 1
    return scaled
