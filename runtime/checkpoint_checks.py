"""What a checkpoint must agree on with the run that loads it, and the messages when it does not.

Loading compares the manifest (the model's architecture, the optimizer, the
layout) and every tensor this rank will read with the checkpoint's index, on
all ranks, and refuses with one message naming each difference before a single
tensor is read (:mod:`bridgec.runtime.checkpoint`). The tensors themselves are
megatron-core's sharded model and optimizer state: every parameter's global
shape is compared there, by its sharded key.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor, ShardedTensorFactory
from megatron.core.distributed import DistributedDataParallel
from megatron.core.optimizer.optimizer import ChainedOptimizer
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

from bridgec.runtime import checkpoint_files as files
from bridgec.runtime.model import unwrap
from bridgec.runtime.parallel import Layout

ARCHITECTURE = (
    "num_layers",
    "hidden_size",
    "ffn_hidden_size",
    "num_attention_heads",
    "num_query_groups",
    "kv_channels",
    "normalization",
    "layernorm_epsilon",
    "gated_linear_unit",
    "add_bias_linear",
    "add_qkv_bias",
    "qk_layernorm",
    "num_moe_experts",
    "moe_router_topk",
)
"""TransformerConfig fields a checkpoint must agree on (layout fields excluded)."""

DISTRIBUTED_OPTIMIZER_SIZES = ("tensor", "pipeline", "virtual_pipeline", "context", "expert")


def model_signature(model: list[DistributedDataParallel]) -> dict[str, Any]:
    """The architecture of the model, in JSON-able values: what a checkpoint must match."""
    gpt = unwrap(model[0])
    config = gpt.config
    signature = {name: getattr(config, name) for name in ARCHITECTURE}
    signature["activation"] = config.activation_func.__name__
    signature["params_dtype"] = str(config.params_dtype).removeprefix("torch.")
    signature["vocab_size"] = gpt.vocab_size
    signature["max_sequence_length"] = gpt.max_sequence_length
    signature["position_embedding_type"] = gpt.position_embedding_type
    signature["tied_output"] = gpt.share_embeddings_and_output_weights
    if gpt.position_embedding_type == "rope":
        signature["rotary_base"] = gpt.rotary_base
        signature["rotary_percent"] = gpt.rotary_percent
    return signature


RECORDED_LATER = ("rotary_base", "rotary_percent")
"""Signature keys that manifests written before they were recorded lack: compared only when recorded."""


def layout_record(layout: Layout) -> dict[str, int | None]:
    return {
        "world_size": layout.world_size,
        "tensor": layout.tensor,
        "pipeline": layout.pipeline,
        "virtual_pipeline": layout.virtual_pipeline,
        "context": layout.context,
        "expert": layout.expert,
        "data": layout.data,
    }


def optimizer_kind(optimizer: ChainedOptimizer) -> str:
    """The manifest's optimizer kind: "distributed" or "plain"."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    return (
        "distributed" if any(isinstance(sub, DistributedOptimizer) for sub in optimizer.chained_optimizers) else "plain"
    )


def manifest_problems(
    manifest: files.Manifest, *, model: list[DistributedDataParallel], optimizer: ChainedOptimizer, layout: Layout
) -> list[str]:
    """What this run's model, optimizer and layout disagree on with the manifest."""
    problems = []
    running = model_signature(model)
    for key in sorted(set(running) | set(manifest.model)):
        if key in RECORDED_LATER and key not in manifest.model:
            continue
        if manifest.model.get(key) != running.get(key):
            problems.append(
                f"model {key}: the checkpoint has {manifest.model.get(key)!r}, this run {running.get(key)!r}"
            )
    saved_kind = manifest.optimizer["kind"]
    kind = optimizer_kind(optimizer)
    if saved_kind != kind:
        problems.append(
            f"optimizer: the checkpoint was written with the {saved_kind} optimizer, this run uses the {kind} one "
            "([parallel] distributed_optimizer must match)"
        )
    saved_class = manifest.optimizer["class"]
    running_class = type(optimizer.chained_optimizers[0].optimizer).__name__
    if saved_class != running_class:
        problems.append(f"optimizer: the checkpoint holds {saved_class} state, this run uses {running_class}")
    if saved_kind == "distributed" and kind == "distributed" and manifest.optimizer["has_state"]:
        running_layout = layout_record(layout)
        for size in DISTRIBUTED_OPTIMIZER_SIZES:
            if manifest.layout[size] != running_layout[size]:
                problems.append(
                    f"layout {size}: the checkpoint has {manifest.layout[size]}, this run {running_layout[size]}; "
                    "distributed-optimizer state only loads when just the data-parallel size changes"
                )
    return problems


def sharded_items(state: dict[str, Any]) -> Iterator[ShardedTensor | ShardedObject]:
    for item in nested_values(state):
        if isinstance(item, ShardedTensorFactory):
            yield from (
                built for built in nested_values(item.build()) if isinstance(built, (ShardedTensor, ShardedObject))
            )
        elif isinstance(item, (ShardedTensor, ShardedObject)):
            yield item


def tensor_problems(state: dict[str, Any], metadata: Metadata, *, any_dtype: bool = False) -> list[str]:
    """What this rank would read that the checkpoint lacks or stores with another shape or dtype.

    ``any_dtype``: another dtype is no problem (weights alone are read, and megatron-core's load casts them)."""
    stored = metadata.state_dict_metadata
    missing: list[str] = []
    problems: list[str] = []
    for item in sharded_items(state):
        if isinstance(item, ShardedObject):
            if item.unique_key not in stored:
                missing.append(item.key)
            continue
        entry = stored.get(item.key)
        if not isinstance(entry, TensorStorageMetadata):
            missing.append(item.key)
        elif tuple(entry.size) != tuple(item.global_shape) or (not any_dtype and entry.properties.dtype != item.dtype):
            problems.append(
                f"tensor {item.key}: the checkpoint has {shape_text(entry.size)} {entry.properties.dtype}, "
                f"this run {shape_text(item.global_shape)} {item.dtype}"
            )
    if missing:
        unique = sorted(set(missing))
        shown = ", ".join(unique[:8]) + (f" and {len(unique) - 8} more" if len(unique) > 8 else "")
        problems.append(f"not in the checkpoint: {shown}")
    return problems


def dtype_casts(state: dict[str, Any], metadata: Metadata) -> list[str]:
    """Each "stored -> this run" dtype pair among the tensors this rank reads that differ (sorted, once each)."""
    stored = metadata.state_dict_metadata
    casts = set()
    for item in sharded_items(state):
        entry = stored.get(item.key) if isinstance(item, ShardedTensor) else None
        if isinstance(entry, TensorStorageMetadata) and entry.properties.dtype != item.dtype:
            casts.add(f"{_dtype(entry.properties.dtype)} -> {_dtype(item.dtype)}")
    return sorted(casts)


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def shape_text(shape: Any) -> str:
    return "x".join(str(size) for size in shape)


def gather(problems: list[str]) -> list[str]:
    """Every rank's problems on every rank, so that all of them stop (or go on) together."""
    gathered: list[list[str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, problems)
    merged: list[str] = []
    for rank_problems in gathered:
        for problem in rank_problems or []:
            if problem not in merged:
                merged.append(problem)
    return merged


def cannot_load(path: Path, problems: list[str]) -> str:
    shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
    return f"cannot resume from {path}; nothing was loaded:\n  " + "\n  ".join(shown)
