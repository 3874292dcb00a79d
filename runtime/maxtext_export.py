"""Write megatron-core GPTModel weights as a MaxText Orbax checkpoint (the inverse of maxtext_import).

The checkpoint is written with tensorstore directly, in the layout Orbax's
``PyTreeCheckpointHandler`` writes and reads (``_METADATA`` + zarr arrays inside
one OCDBT store), under ``<directory>/<step>/items`` with the step's
``_CHECKPOINT_METADATA``, as MaxText's converters write it
(checkpoint_conversion/utils/utils.py ``save_weights_to_checkpoint``). The item
holds ``{"params": {"params": <MaxText module tree>}}``, which is what
``load_parameters_path=<directory>/<step>/items`` restores
(common/checkpointing.py ``load_params_from_path``).

Why tensorstore rather than orbax: no JAX at export time, and the writer streams
one megatron parameter (one layer) at a time into the stacked leaves, whose zarr
chunks are one layer thick, so memory stays at about one layer whatever the
model size; orbax's ``save`` wants the whole tree as arrays at once.

Weights come from ``fetch(global megatron name) -> full (TP=1) tensor``; for
the chunks of a running model :func:`gather_full_params` provides them (the
fp32 main parameters when given a mixed-precision optimizer). Values
are cast once to ``dtype``; the inverse transforms are exact (permutations,
transposes, splits) except "undo" query scaling, which divides by sqrt(D) in
float64: bit-exact round trip when sqrt(D) is a power of two, or when the
checkpoint is bf16 and megatron holds fp32.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import attrs
import numpy as np
import tensorstore as ts
import torch
import torch.distributed as dist

from bridgec.runtime.init import global_name, layer_numbers
from bridgec.runtime.maxtext_import import (
    Dims,
    MainSlot,
    QueryScaling,
    RopeLayout,
    canonical_name,
    expected_leaves,
    layer_suffixes,
    main_slots,
    orbax_name,
    rope_permutation,
    stacked,
)
from bridgec.runtime.orbax_read import to_numpy
from bridgec.runtime.parallel import collective_device
from bridgec.runtime.param_paths import maxtext_paths

ExportDType = Literal["float32", "bfloat16"]
Fetch = Callable[[str], torch.Tensor]
"""Global megatron parameter name -> its full (TP=1) tensor, padded vocabulary rows included."""

ITEM = "items"
_PARAMS_FIELD = "params"
_CHUNK_BYTES = 256 << 20
_OCDBT_CONFIG = {"max_inline_value_bytes": 1024, "max_decoded_node_bytes": 100_000_000, "compression": {"id": "zstd"}}
_HANDLER = "orbax.checkpoint._src.handlers.pytree_checkpoint_handler.PyTreeCheckpointHandler"


@attrs.frozen(kw_only=True)
class ExportReport:
    items: str
    """The item folder to give MaxText as load_parameters_path."""
    leaves: int
    bytes_written: int
    scanned: bool
    zarr3: bool
    dtype: str


# --------------------------------------------------------------------------------------------
# megatron -> MaxText values (full tensors, one layer).


def _unrope(tensor: torch.Tensor, interleaved: bool) -> torch.Tensor:
    if not interleaved:
        return tensor
    inverse = torch.argsort(rope_permutation(tensor.shape[-1]))
    return tensor[..., inverse]


def split_qkv(
    weight: torch.Tensor, dims: Dims, *, query_factor: float, interleaved: bool
) -> tuple[torch.Tensor, ...]:
    """linear_qkv [G (H/G + 2) D, E] -> query [E, H, D], key, value [E, G, D] (query_factor divides the query)."""
    per_group = dims.heads // dims.groups
    grouped = weight.t().reshape(dims.hidden, dims.groups, per_group + 2, dims.head_dim)
    query = grouped[:, :, :per_group].reshape(dims.hidden, dims.heads, dims.head_dim)
    if query_factor != 1.0:
        query = query.double() / query_factor
    key, value = grouped[:, :, per_group], grouped[:, :, per_group + 1]
    return _unrope(query, interleaved), _unrope(key, interleaved), value


def layer_leaves(
    suffix: str, weight: torch.Tensor, dims: Dims, *, query_factor: float, interleaved: bool
) -> tuple[torch.Tensor, ...]:
    """One layer's megatron parameter -> its MaxText leaves, in param_paths order."""
    if suffix == "self_attention.linear_qkv.weight":
        return split_qkv(weight, dims, query_factor=query_factor, interleaved=interleaved)
    if suffix == "self_attention.linear_proj.weight":
        return (weight.t().reshape(dims.heads, dims.head_dim, dims.hidden),)
    if suffix == "mlp.linear_fc1.weight":
        return tuple(part.t() for part in torch.chunk(weight, 2, dim=0)) if dims.gated else (weight.t(),)
    if suffix == "mlp.linear_fc2.weight":
        return (weight.t(),)
    if suffix in ("self_attention.q_layernorm.weight", "self_attention.k_layernorm.weight"):
        return (_unrope(weight, interleaved),)
    return (weight,)


def top_leaf(name: str, weight: torch.Tensor, dims: Dims) -> torch.Tensor:
    """Embedding (padded rows dropped), final norm, or untied output layer -> its MaxText leaf."""
    if name == "embedding.word_embeddings.weight":
        return weight[: dims.vocab]
    if name == "output_layer.weight":
        return weight[: dims.vocab].t()
    return weight


# --------------------------------------------------------------------------------------------
# Writing.


def _chunk_shape(shape: tuple[int, ...], layer_axis: int | None, itemsize: int) -> list[int]:
    """One layer thick along the layer axis; halve the largest other axis until a chunk is <= 256 MiB."""
    chunk = list(shape)
    if layer_axis is not None:
        chunk[layer_axis] = 1
    while math.prod(chunk) * itemsize > _CHUNK_BYTES:
        axis = max((a for a in range(len(chunk)) if a != layer_axis), key=lambda a: chunk[a])
        chunk[axis] = -(-chunk[axis] // 2)
    return chunk


def _array_spec(
    items: Path, name: str, shape: tuple[int, ...], dtype: ExportDType, chunk: list[int], zarr3: bool
) -> dict:
    kvstore = {"driver": "ocdbt", "base": f"file://{items.absolute()}/", "path": f"{name}/", "config": _OCDBT_CONFIG}
    if zarr3:
        metadata = {
            "shape": list(shape),
            "data_type": dtype,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunk}},
            "codecs": [
                {"name": "bytes", "configuration": {"endian": "little"}},
                {"name": "zstd", "configuration": {"level": 3, "checksum": False}},
            ],
            "fill_value": 0,
        }
        return {"driver": "zarr3", "kvstore": kvstore, "metadata": metadata, "create": True}
    zarr2_dtype = {"float32": "<f4", "bfloat16": "bfloat16"}[dtype]
    metadata = {
        "shape": list(shape),
        "chunks": chunk,
        "dtype": zarr2_dtype,
        "compressor": {"id": "zstd", "level": 1},
        "fill_value": None,
        "order": "C",
    }
    return {"driver": "zarr", "kvstore": kvstore, "metadata": metadata, "create": True}


def _tree_metadata(names_and_shapes: dict[str, tuple[int, ...]], zarr3: bool) -> dict:
    tree = {}
    for name, shape in names_and_shapes.items():
        keys = name.split(".")
        tree[str(tuple(keys))] = {
            "key_metadata": [{"key": key, "key_type": 2} for key in keys],
            "value_metadata": {"value_type": "jax.Array", "skip_deserialize": False, "write_shape": list(shape)},
        }
    return {
        "tree_metadata": tree,
        "use_ocdbt": True,
        "use_zarr3": zarr3,
        "store_array_data_equal_to_fill_value": True,
        "custom_metadata": None,
    }


def _as_numpy(tensor: torch.Tensor, dtype: ExportDType) -> np.ndarray:
    target = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    if tensor.dtype == torch.float64 and target == torch.bfloat16:
        tensor = tensor.float()  # exact enough: bf16 keeps 8 of float32's 24 bits
    return to_numpy(tensor.detach().to(target).contiguous())


@torch.no_grad()
def export_maxtext(
    fetch: Fetch,
    *,
    directory: str | os.PathLike[str],
    step: int,
    dims: Dims,
    scanned: bool,
    dtype: ExportDType,
    query_scaling: QueryScaling,
    rope_layout: RopeLayout,
    param_scan_axis: int = 1,
    zarr3: bool = True,
) -> ExportReport:
    """Write ``fetch``'s weights as a MaxText checkpoint at ``<directory>/<step>/items`` (one process).

    ``query_scaling`` and ``rope_layout`` must be those the weights were imported
    (or trained) with. The folder must not exist yet.
    """
    step_dir = Path(directory) / str(step)
    items = step_dir / ITEM
    if step_dir.exists():
        raise FileExistsError(f"{step_dir} already exists")
    items.mkdir(parents=True)
    expected = expected_leaves(dims, scanned=scanned, scan_axis=param_scan_axis)
    names = {orbax_name(_PARAMS_FIELD, path): shape for path, shape in expected.items()}
    itemsize = 4 if dtype == "float32" else 2
    context = ts.Context()
    stores = {}
    for path, shape in expected.items():
        layer_axis = param_scan_axis if stacked(path, scanned) else None
        chunk = _chunk_shape(shape, layer_axis, itemsize)
        spec = _array_spec(items, orbax_name(_PARAMS_FIELD, path), shape, dtype, chunk, zarr3)
        stores[path] = ts.open(spec, context=context).result()

    written = 0

    def write(path: str, value: torch.Tensor, layer: int | None = None) -> None:
        nonlocal written
        array = _as_numpy(value, dtype)
        store = stores[path]
        target = store[(slice(None),) * param_scan_axis + (layer,)] if layer is not None else store
        target.write(array).result()
        written += array.nbytes

    interleaved = rope_layout == "interleaved"
    query_factor = math.sqrt(dims.head_dim) if query_scaling == "undo" else 1.0
    tops = ["embedding.word_embeddings.weight", "decoder.final_layernorm.weight"]
    if not dims.tied:
        tops.append("output_layer.weight")
    for name in tops:
        (path,) = maxtext_paths(name, gated_mlp=dims.gated, scanned=scanned)
        write(path, top_leaf(name, fetch(name), dims))
    for layer in range(dims.num_layers):
        for suffix in layer_suffixes(dims):
            name = f"decoder.layers.{layer}.{suffix}"
            paths = maxtext_paths(name, gated_mlp=dims.gated, scanned=scanned)
            values = layer_leaves(suffix, fetch(name), dims, query_factor=query_factor, interleaved=interleaved)
            for path, value in zip(paths, values, strict=True):
                write(path, value, layer if stacked(path, scanned) else None)

    (items / "_METADATA").write_text(json.dumps(_tree_metadata(names, zarr3)))
    now = time.time_ns()
    (step_dir / "_CHECKPOINT_METADATA").write_text(
        json.dumps(
            {
                "item_handlers": {ITEM: _HANDLER},
                "metrics": {},
                "performance_metrics": {},
                "init_timestamp_nsecs": now,
                "commit_timestamp_nsecs": now,
                "custom_metadata": {},
            }
        )
    )
    return ExportReport(
        items=str(items), leaves=len(stores), bytes_written=written, scanned=scanned, zarr3=zarr3, dtype=dtype
    )


# --------------------------------------------------------------------------------------------
# Full tensors from a running model.


def unshard(pieces: Sequence[torch.Tensor], *, dim: int, stride: int) -> torch.Tensor:
    """Inverse of :func:`bridgec.runtime.init.shard`: rank r's piece holds full pieces r, r + T, ... (T ranks)."""
    parts = [piece.chunk(stride, dim=dim) for piece in pieces]
    return torch.cat([parts[rank][s] for s in range(stride) for rank in range(len(pieces))], dim=dim)


def _sharded_main_groups(optimizer: object | None) -> dict[torch.nn.Parameter, dist.ProcessGroup]:
    """Half-precision parameters whose fp32 main copy the distributed optimizer splits over data-parallel ranks."""
    if optimizer is None:
        return {}
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
    from megatron.core.optimizer.optimizer import ChainedOptimizer

    subs = optimizer.chained_optimizers if isinstance(optimizer, ChainedOptimizer) else [optimizer]
    # Every parameter of the optimizer's buffers, owned here or not (model_param_gbuf_map has only the owned).
    return {
        param: sub.data_parallel_group
        for sub in subs
        if isinstance(sub, DistributedOptimizer)
        for buffer in sub.buffers
        for param in buffer.param_index_map
        if param.dtype != torch.float32
    }


def _fp32_value(param: torch.nn.Parameter, slot: MainSlot | None, group: dist.ProcessGroup | None) -> torch.Tensor:
    """The parameter's fp32 value: the optimizer's main copy under mixed precision, else the parameter."""
    if group is not None:
        # Each data-parallel rank holds a disjoint range of the flattened main copy: sum the ranges.
        flat = torch.zeros(param.numel(), dtype=torch.float32, device=collective_device())
        if slot is not None:
            flat[slot.start : slot.end] = slot.main.detach().reshape(-1)
        dist.all_reduce(flat, group=group)
        return flat.view(param.shape).cpu()
    if slot is not None and slot.separate:
        return slot.main.detach().float().reshape(param.shape).clone()
    return param.detach().float()


@torch.no_grad()
def gather_full_params(
    chunks: Sequence[torch.nn.Module],
    *,
    tensor_group: dist.ProcessGroup | None,
    pipeline_group: dist.ProcessGroup | None,
    tied: bool,
    optimizer: object | None = None,
) -> dict[str, torch.Tensor] | None:
    """Full (TP=1) fp32 tensors of every parameter, by global name, on the first rank of the model-parallel group.

    With ``optimizer`` (megatron's, mixed precision) the values are its fp32 main
    parameters rather than the bf16 model copies. Collective over the tensor and
    pipeline groups, and with a distributed optimizer over the data-parallel
    group too: call it on every rank. Returns None on all but the first rank of
    each model-parallel group. Holds the whole model on the receiving rank: for
    conversion-sized runs.
    """
    tensor_size = dist.get_world_size(tensor_group) if tensor_group is not None else 1
    slots = main_slots(optimizer) if optimizer is not None else {}
    sharded = _sharded_main_groups(optimizer)
    stage: dict[str, torch.Tensor] = {}
    for chunk in chunks:
        numbers = layer_numbers(chunk)
        for local, param in chunk.named_parameters():
            if tied and global_name(local, numbers) == "output_layer.weight":
                continue  # the embedding's copy
            name = canonical_name(local, numbers, tied=tied)
            value = _fp32_value(param, slots.get(param), sharded.get(param))
            if getattr(param, "tensor_model_parallel", False) and tensor_size > 1:
                pieces = [torch.empty_like(value) for _ in range(tensor_size)]
                dist.all_gather(pieces, value.contiguous(), group=tensor_group)
                value = unshard(pieces, dim=param.partition_dim, stride=getattr(param, "partition_stride", 1))
            stage[name] = value
    if tensor_group is not None and dist.get_rank(tensor_group) != 0:
        return None
    if pipeline_group is None or dist.get_world_size(pipeline_group) == 1:
        return stage
    stages: list[dict[str, torch.Tensor] | None] = [None] * dist.get_world_size(pipeline_group)
    first = dist.get_global_rank(pipeline_group, 0)
    dist.gather_object(stage, stages if dist.get_rank() == first else None, dst=first, group=pipeline_group)
    if dist.get_rank() != first:
        return None
    merged: dict[str, torch.Tensor] = {}
    for part in stages:
        merged.update(part or {})
    return merged
