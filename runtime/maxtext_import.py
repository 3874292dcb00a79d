"""Load a MaxText Orbax checkpoint into this rank's megatron-core GPTModel chunks: the entry points.

Decoder blocks: llama2, mistral and qwen3 (one tree), mixtral (that tree with an MoE block:
router and stacked expert weights; an expert-parallel rank reads its own experts), gemma (its
norms named apart), gpt3 (fused biased qkv_proj, LayerNorm with biases, learned positions),
recognised by the names of the checkpoint's leaves.

Every rank reads only what it holds: the layers of its pipeline stage (and
virtual chunks) and its tensor-parallel shard of each of them, as boxes of the
checkpoint's leaves (:mod:`bridgec.runtime.orbax_read`). Nothing here imports
JAX. Which leaves a parameter holds and how they become its value:
:mod:`bridgec.runtime.maxtext_layout` (on the parameter table,
:mod:`bridgec.runtime.models.gpt`); where the optimizer keeps main weights and
Adam state: :mod:`bridgec.runtime.maxtext_slots`.

Before anything is copied, the whole expected tree is checked against the
checkpoint (every leaf present, every shape right, nothing left over under
``params``) on every rank, so either all ranks load or all raise the same
:class:`~bridgec.runtime.errors.RunError` (``CHECKPOINT_ERROR``) listing every
difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import attrs
import torch

from bridgec.runtime.errors import ExitCode, RunError
from bridgec.runtime.maxtext_layout import (
    PARAMS_FIELD,
    Dims,
    LeafReader,
    QueryScaling,
    RopeLayout,
    Shard,
    Target,
    Transform,
    check_model,
    check_targets,
    check_tree,
    detect_block,
    detect_scanned,
    expected_leaves,
    orbax_name,
    produce,
    query_kernel_factor,
    raise_if,
    targets,
)
from bridgec.runtime.maxtext_slots import AdamState, flat_part, main_slots, set_megatron_adam_state
from bridgec.runtime.orbax_read import OrbaxItem, ReadStats

AdamKind = Literal["adamw", "adam_pax"]

__all__ = [
    "AdamKind",
    "Dims",
    "ImportReport",
    "QueryScaling",
    "RopeLayout",
    "load_maxtext_optimizer_state",
    "load_maxtext_weights",
    "read_maxtext_adam_state",
]


def _checked_targets(
    chunks: Sequence[torch.nn.Module],
    dims: Dims,
    *,
    tensor_parallel: int,
    expert_parallel: int,
    expert_rank: int,
    query_scaling: QueryScaling,
) -> tuple[list[list[Target]], list[str]]:
    """This rank's targets per chunk and what is wrong with the model."""
    problems = check_model(dims, chunks[0], query_scaling=query_scaling)
    per_chunk = [
        targets([chunk], tensor_parallel=tensor_parallel, expert_parallel=expert_parallel, expert_rank=expert_rank)
        for chunk in chunks
    ]
    return per_chunk, problems + check_targets([target for found in per_chunk for target in found])


@attrs.frozen(kw_only=True)
class ImportReport:
    """What :func:`load_maxtext_weights` found and did on this rank."""

    path: str
    scanned: bool
    block: str
    """The decoder block whose leaf names the checkpoint uses (llama2 stands for mistral, qwen3 and mixtral too)."""
    zarr3: bool
    ocdbt: bool
    dtypes: tuple[str, ...]
    """dtypes of the checkpoint's weight leaves."""
    parameters: int
    """Local parameters set."""
    bytes_read: int
    """Decoded bytes of the boxes this rank read."""
    padded_vocab_rows: int
    """Rows megatron adds to the vocabulary (zeros)."""
    step: int | None
    """The checkpoint's ``step`` leaf, if it has one."""


@torch.no_grad()
def load_maxtext_weights(
    chunks: Sequence[torch.nn.Module],
    *,
    path: str,
    vocab_size: int,
    tensor_parallel: int,
    tensor_rank: int,
    query_scaling: QueryScaling,
    rope_layout: RopeLayout,
    param_scan_axis: int = 1,
    expert_parallel: int = 1,
    expert_rank: int = 0,
    optimizer: object | None = None,
    stats: ReadStats | None = None,
) -> ImportReport:
    """Copy a MaxText checkpoint's weights into this rank's (unwrapped) GPTModel chunks.

    ``path`` is the Orbax item folder (``<ckpt>/<step>/items``); ``vocab_size``
    MaxText's vocabulary (megatron's padded rows are zero). Call it on every
    rank, either before the optimizer exists, or after it with ``optimizer``
    passed: megatron's mixed-precision and distributed optimizers copy the
    weights into their fp32 main parameters when they are built, and the first
    step copies those back over the model, so a load after build_optimizer that
    skips them is lost. Passing the optimizer also gives the main parameters the
    checkpoint's fp32 values rather than their bf16 rounding. An expert-parallel rank
    (``expert_rank`` of ``expert_parallel``) reads its own experts of each MoE layer. Raises RunError
    (CHECKPOINT_ERROR) listing every difference before copying anything.
    """
    dims = Dims.of(chunks[0], vocab_size=vocab_size)
    item = OrbaxItem(path, stats=stats)
    scanned = detect_scanned(item, PARAMS_FIELD)
    dims = detect_block(item, PARAMS_FIELD, dims, scanned=scanned)
    per_chunk, problems = _checked_targets(
        chunks,
        dims,
        tensor_parallel=tensor_parallel,
        expert_parallel=expert_parallel,
        expert_rank=expert_rank,
        query_scaling=query_scaling,
    )
    problems += check_tree(item, dims, prefix=PARAMS_FIELD, scanned=scanned, scan_axis=param_scan_axis)
    raise_if(problems, path=path, dims=dims)

    slots = main_slots(optimizer) if optimizer is not None else {}
    transform = Transform(
        rope_interleaved=rope_layout == "interleaved",
        query_factor=query_kernel_factor(dims, query_scaling),
    )
    shard = Shard(size=tensor_parallel, rank=tensor_rank)
    reader = LeafReader(item, prefix=PARAMS_FIELD, dims=dims, shard=shard, scanned=scanned, scan_axis=param_scan_axis)
    count = 0
    for found in per_chunk:
        for target, value in produce(reader, found, transform):
            target.param.data.copy_(value.reshape(target.param.shape))
            slot = slots.get(target.param)
            if slot is not None and slot.separate:
                slot.main.data.copy_(flat_part(value, slot))
            count += 1
    weight_leaves = expected_leaves(dims, scanned=scanned, scan_axis=param_scan_axis)
    weight_names = [orbax_name(PARAMS_FIELD, path) for path in weight_leaves]
    return ImportReport(
        path=path,
        scanned=scanned,
        block=dims.block,
        zarr3=item.use_zarr3,
        ocdbt=item.use_ocdbt,
        dtypes=tuple(sorted({item.info(name).dtype.name for name in weight_names})),
        parameters=count,
        bytes_read=item.stats.bytes_read,
        padded_vocab_rows=dims.model.vocab - dims.vocab,
        step=int(item.read("step")) if "step" in item else None,
    )


def moment_prefix(item: OrbaxItem) -> str:
    """Where the Adam state sits in opt_state: ``opt_state.0`` (optax.adamw's chain), ``opt_state`` (adam_pax), ..."""
    marker = f".mu.{PARAMS_FIELD}.token_embedder.embedding"
    found = sorted(name[: -len(marker)] for name in item.names if name.endswith(marker))
    if len(found) != 1:
        what = "no Adam moments (opt_state ... mu / nu)" if not found else f"several Adam states: {', '.join(found)}"
        raise RunError(ExitCode.CHECKPOINT_ERROR, f"{item.path}: found {what}; cannot import the optimizer state")
    return found[0]


@torch.no_grad()
def read_maxtext_adam_state(
    chunks: Sequence[torch.nn.Module],
    *,
    path: str,
    vocab_size: int,
    tensor_parallel: int,
    tensor_rank: int,
    query_scaling: QueryScaling,
    rope_layout: RopeLayout,
    opt_type: AdamKind,
    adam_beta1: float,
    adam_beta2: float,
    param_scan_axis: int = 1,
    expert_parallel: int = 1,
    expert_rank: int = 0,
    stats: ReadStats | None = None,
) -> AdamState:
    """Read MaxText's Adam state (``mu``, ``nu``, ``count``) for this rank's parameters.

    Moments go through the same permutations, fusions and transposes as their
    parameters. Under ``query_scaling="undo"`` a query gradient is 1/sqrt(D) of
    MaxText's, so its exp_avg is divided by sqrt(D) and exp_avg_sq by D.
    ``adam_pax`` keeps bias-corrected moments m^, v^; torch keeps raw ones:
    exp_avg = m^ (1 - b1^t), exp_avg_sq = v^ (1 - b2^t) with t = count.
    """
    dims = Dims.of(chunks[0], vocab_size=vocab_size)
    item = OrbaxItem(path, stats=stats)
    prefix = moment_prefix(item)
    scanned = detect_scanned(item, PARAMS_FIELD)
    dims = detect_block(item, PARAMS_FIELD, dims, scanned=scanned)
    per_chunk, problems = _checked_targets(
        chunks,
        dims,
        tensor_parallel=tensor_parallel,
        expert_parallel=expert_parallel,
        expert_rank=expert_rank,
        query_scaling=query_scaling,
    )
    for field in ("mu", "nu"):
        problems += check_tree(item, dims, prefix=f"{prefix}.{field}", scanned=scanned, scan_axis=param_scan_axis)
    if f"{prefix}.count" not in item:
        problems.append(f"missing leaf {prefix}.count (Adam's step count)")
    raise_if(problems, path=path, dims=dims)

    step = int(item.read(f"{prefix}.count"))
    scale = query_kernel_factor(dims, query_scaling)
    corrections = {"mu": 1.0, "nu": 1.0}
    if opt_type == "adam_pax":
        corrections = {"mu": 1.0 - adam_beta1**step, "nu": 1.0 - adam_beta2**step}
    shard = Shard(size=tensor_parallel, rank=tensor_rank)
    moments: dict[torch.nn.Parameter, dict[str, torch.Tensor]] = {}
    for field, key, power in (("mu", "exp_avg", 1), ("nu", "exp_avg_sq", 2)):
        transform = Transform(rope_interleaved=rope_layout == "interleaved", query_factor=scale**-power)
        reader = LeafReader(
            item, prefix=f"{prefix}.{field}", dims=dims, shard=shard, scanned=scanned, scan_axis=param_scan_axis
        )
        for found in per_chunk:
            for target, value in produce(reader, found, transform):
                value = value.double() * corrections[field] if corrections[field] != 1.0 else value
                moments.setdefault(target.param, {})[key] = value.to(torch.float32).reshape(target.param.shape)
    return AdamState(step=step, moments=moments)


def load_maxtext_optimizer_state(
    chunks: Sequence[torch.nn.Module],
    optimizer: object,
    *,
    path: str,
    vocab_size: int,
    tensor_parallel: int,
    tensor_rank: int,
    query_scaling: QueryScaling,
    rope_layout: RopeLayout,
    opt_type: AdamKind,
    adam_beta1: float,
    adam_beta2: float,
    param_scan_axis: int = 1,
    expert_parallel: int = 1,
    expert_rank: int = 0,
) -> int:
    """:func:`read_maxtext_adam_state` then :func:`set_megatron_adam_state`; returns the step count (updates done)."""
    state = read_maxtext_adam_state(
        chunks,
        path=path,
        vocab_size=vocab_size,
        tensor_parallel=tensor_parallel,
        tensor_rank=tensor_rank,
        query_scaling=query_scaling,
        rope_layout=rope_layout,
        opt_type=opt_type,
        adam_beta1=adam_beta1,
        adam_beta2=adam_beta2,
        param_scan_axis=param_scan_axis,
        expert_parallel=expert_parallel,
        expert_rank=expert_rank,
    )
    set_megatron_adam_state(optimizer, state)
    return state.step
