"""Write megatron-core GPTModel weights as a MaxText Orbax checkpoint (the inverse of maxtext_import).

Which leaves each parameter becomes comes from the parameter table
(:mod:`bridgec.runtime.models.gpt`), through :mod:`bridgec.runtime.maxtext_layout`.

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
from typing import Literal, assert_never

import attrs
import numpy as np
import tensorstore as ts
import torch
import torch.distributed as dist

from bridgec.runtime.maxtext_layout import (
    Dims,
    QueryScaling,
    RopeLayout,
    expected_leaves,
    leaves_of,
    mapped,
    orbax_name,
    query_kernel_factor,
    rope_permutation,
    stacked,
)
from bridgec.runtime.maxtext_slots import MainSlot, main_slots
from bridgec.runtime.models import gpt
from bridgec.runtime.models.chunks import pairs
from bridgec.runtime.orbax_read import to_numpy
from bridgec.runtime.parallel import collective_device

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


def split_qkv(weight: torch.Tensor, dims: Dims, *, query_factor: float, interleaved: bool) -> tuple[torch.Tensor, ...]:
    """linear_qkv [G (H/G + 2) D, E] -> query [E, H, D], key, value [E, G, D] (query_factor divides the query)."""
    m = dims.model
    per_group = m.heads // m.groups
    grouped = weight.t().reshape(m.hidden, m.groups, per_group + 2, m.head_dim)
    query = grouped[:, :, :per_group].reshape(m.hidden, m.heads, m.head_dim)
    if query_factor != 1.0:
        query = query.double() / query_factor
    key, value = grouped[:, :, per_group], grouped[:, :, per_group + 1]
    return _unrope(query, interleaved), _unrope(key, interleaved), value


def maxtext_leaves(
    kind: gpt.MaxTextTransform, weight: torch.Tensor, dims: Dims, *, query_factor: float, interleaved: bool
) -> tuple[torch.Tensor, ...]:
    """One megatron parameter (full, one layer) -> its MaxText leaves, in the table's leaf order."""
    m = dims.model
    match kind:
        case gpt.MaxTextTransform.QKV:
            return split_qkv(weight, dims, query_factor=query_factor, interleaved=interleaved)
        case gpt.MaxTextTransform.QKV_FUSED:
            return (weight.t().reshape(m.hidden, m.heads, 3, m.head_dim).permute(0, 2, 1, 3),)
        case gpt.MaxTextTransform.QKV_FUSED_BIAS:
            return (weight.reshape(m.heads, 3, m.head_dim).permute(1, 0, 2),)
        case gpt.MaxTextTransform.OUT:
            return (weight.t().reshape(m.heads, m.head_dim, m.hidden),)
        case gpt.MaxTextTransform.FC1:
            return tuple(part.t() for part in torch.chunk(weight, 2, dim=0)) if m.gated else (weight.t(),)
        case gpt.MaxTextTransform.TRANSPOSE:
            return (weight.t(),)
        case gpt.MaxTextTransform.QK_NORM:
            return (_unrope(weight, interleaved),)
        case gpt.MaxTextTransform.COPY:
            return (weight,)
        case gpt.MaxTextTransform.EMBEDDING:
            return (weight[: dims.vocab],)  # megatron's padded rows dropped
        case gpt.MaxTextTransform.LOGITS:
            return (weight[: dims.vocab].t(),)
        case _:
            assert_never(kind)


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
    stacked_paths = {
        path for p in mapped(dims) if stacked(p, scanned) for path, _ in leaves_of(p, dims, scanned=scanned)
    }
    for path, shape in expected.items():
        layer_axis = param_scan_axis if path in stacked_paths else None
        chunk = _chunk_shape(shape, layer_axis, itemsize)
        spec = _array_spec(items, orbax_name(_PARAMS_FIELD, path), shape, dtype, chunk, zarr3)
        stores[path] = ts.open(spec, context=context).result()

    written = 0

    def write(path: str, leaf: gpt.MaxTextLeaf, value: torch.Tensor, parameter: gpt.Parameter) -> None:
        """One layer's (and one expert's) value into its place in the leaf."""
        nonlocal written
        array = _as_numpy(value, dtype)
        index: list[slice | int] = [slice(None)] * len(leaf.shape(dims.model, dims.vocab))
        if leaf.expert_axis is not None:
            index[leaf.expert_axis] = int(parameter.expert)  # type: ignore[arg-type]
        if stacked(parameter, scanned):
            index.insert(param_scan_axis, int(parameter.layer))  # type: ignore[arg-type]
        stores[path][tuple(index)].write(array).result()
        written += array.nbytes

    interleaved = rope_layout == "interleaved"
    query_factor = query_kernel_factor(dims, query_scaling)
    for parameter in mapped(dims):
        assert parameter.entry.maxtext is not None
        kind = parameter.entry.maxtext.for_block(dims.block).transform
        values = maxtext_leaves(kind, fetch(parameter.name), dims, query_factor=query_factor, interleaved=interleaved)
        for (path, leaf), value in zip(leaves_of(parameter, dims, scanned=scanned), values, strict=True):
            write(path, leaf, value, parameter)

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
    expert_group: dist.ProcessGroup | None = None,
) -> dict[str, torch.Tensor] | None:
    """Full (TP=1) fp32 tensors of every parameter, by global name, on the first rank of the model-parallel group.

    With ``optimizer`` (megatron's, mixed precision) the values are its fp32 main
    parameters rather than the bf16 model copies. Collective over the tensor and
    pipeline groups, and with a distributed optimizer over the data-parallel
    group too: call it on every rank. Returns None on all but the first rank of
    each model-parallel group (and of the expert group). Holds the whole model on the receiving rank: for
    conversion-sized runs. ``expert_group`` (megatron's expert-model-parallel group): each of its ranks
    holds its own experts of every MoE layer, gathered from all of them.
    """
    tensor_size = dist.get_world_size(tensor_group) if tensor_group is not None else 1
    expert_size = dist.get_world_size(expert_group) if expert_group is not None else 1
    expert_rank = dist.get_rank(expert_group) if expert_group is not None else 0
    slots = main_slots(optimizer) if optimizer is not None else {}
    sharded = _sharded_main_groups(optimizer)
    stage: dict[str, torch.Tensor] = {}
    for chunk in chunks:
        if bool(chunk.share_embeddings_and_output_weights) != tied:
            raise ValueError(f"gather_full_params: tied={tied}, but the model chunk says otherwise")
        experts = chunk.config.num_moe_experts or 0
        held = pairs(chunk, tensor_parallel=tensor_size, expert_rank=expert_rank, local_experts=experts // expert_size)
        for parameter, param in held:
            if parameter.tied_copy:
                continue  # the embedding's copy
            value = _fp32_value(param, slots.get(param), sharded.get(param))
            if parameter.split is not None and tensor_size > 1:
                pieces = [torch.empty_like(value) for _ in range(tensor_size)]
                dist.all_gather(pieces, value.contiguous(), group=tensor_group)
                value = unshard(pieces, dim=parameter.split.axis, stride=parameter.stride)
            stage[parameter.name] = value
    if expert_size > 1:
        ours = {name: value for name, value in stage.items() if ".mlp.experts." in name}
        everyone: list[dict[str, torch.Tensor] | None] = [None] * expert_size
        dist.all_gather_object(everyone, ours, group=expert_group)
        for part in everyone:
            stage.update(part or {})
    if tensor_group is not None and dist.get_rank(tensor_group) != 0:
        return None
    if pipeline_group is None or dist.get_world_size(pipeline_group) == 1:
        return stage if expert_rank == 0 else None
    stages: list[dict[str, torch.Tensor] | None] = [None] * dist.get_world_size(pipeline_group)
    first = dist.get_global_rank(pipeline_group, 0)
    dist.gather_object(stage, stages if dist.get_rank() == first else None, dst=first, group=pipeline_group)
    if dist.get_rank() != first:
        return None
    merged: dict[str, torch.Tensor] = {}
    for part in stages:
        merged.update(part or {})
    return merged if expert_rank == 0 else None
