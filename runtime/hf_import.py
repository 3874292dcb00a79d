"""Load a Hugging Face model folder's safetensors weights into this rank's megatron-core GPTModel chunks.

Every rank reads only what it holds: the layers of its pipeline stage and its
tensor-parallel slice of each parameter (:mod:`bridgec.runtime.hf_read`'s lazy
slices; :mod:`bridgec.runtime.hf_layout` says which slices and how they are
fused). Before anything is copied, every rank checks the whole model's tensors
against the folder's headers (each present, each shape right, nothing left
over), so either all ranks load or all raise the same
:class:`~bridgec.runtime.errors.RunError` (``CHECKPOINT_ERROR``) listing every
difference. The model's configuration itself (sizes, RoPE, norms) is the
spec's: ``bridgec import hf`` writes it from ``config.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import attrs
import torch

from bridgec.runtime.errors import ExitCode, RunError
from bridgec.runtime.hf_layout import Shard, check_folder, read_local
from bridgec.runtime.hf_read import ReadStats, SafetensorsFolder
from bridgec.runtime.maxtext_slots import flat_part, main_slots
from bridgec.runtime.models.chunks import config_of, pairs

__all__ = ["HFImportReport", "load_hf_weights"]


@attrs.frozen(kw_only=True)
class HFImportReport:
    """What :func:`load_hf_weights` found and did on this rank."""

    path: str
    dtypes: tuple[str, ...]
    """safetensors dtypes of the folder's tensors (F32, BF16, F16)."""
    parameters: int
    """Local parameters set."""
    bytes_read: int
    """Bytes of the slices this rank read."""
    padded_vocab_rows: int
    """Rows megatron adds to the vocabulary (zeros)."""


@torch.no_grad()
def load_hf_weights(
    chunks: Sequence[torch.nn.Module],
    *,
    path: str,
    vocab_size: int,
    tensor_parallel: int,
    tensor_rank: int,
    expert_parallel: int = 1,
    expert_rank: int = 0,
    optimizer: object | None = None,
    stats: ReadStats | None = None,
    model: str = "this model",
    table: str = "[model]",
) -> HFImportReport:
    """Copy a Hugging Face folder's weights into this rank's (unwrapped) GPTModel chunks.

    An expert-parallel rank reads its own experts (``expert_rank`` of
    ``expert_parallel``). ``vocab_size`` is the tokenizer's (config.json's ``vocab_size``); megatron's
    padded rows are zero. Pass the optimizer when it already exists: its fp32
    main parameters are updated too (megatron's mixed-precision optimizers copy
    them back over the model at the first step). Raises RunError
    (CHECKPOINT_ERROR) listing every difference before copying anything, naming the ``model`` and the spec's ``table``
    it was built from ("the teacher", "[distill.teacher]" for a distillation's teacher).
    """
    folder = SafetensorsFolder(Path(path), stats=stats or ReadStats())
    config = config_of(chunks[0])
    problems = check_folder(folder, config, vocab_size)
    if problems:
        listing = "\n".join(f"  - {problem}" for problem in problems)
        raise RunError(
            ExitCode.CHECKPOINT_ERROR,
            f"Hugging Face folder {path} does not fit {model}; nothing was loaded. "
            f"{len(problems)} difference(s):\n{listing}\n  (compare the spec's {table} with the folder's "
            "config.json, or write the spec with bridgec import hf)",
        )
    slots = main_slots(optimizer) if optimizer is not None else {}
    shard = Shard(size=tensor_parallel, rank=tensor_rank)
    count = 0
    local_experts = (config.num_experts or 0) // expert_parallel
    for chunk in chunks:
        held = pairs(chunk, tensor_parallel=tensor_parallel, expert_rank=expert_rank, local_experts=local_experts)
        for parameter, param in held:
            value = read_local(folder, parameter, config, vocab_size=vocab_size, shard=shard)
            param.data.copy_(value.reshape(param.shape))
            slot = slots.get(param)
            if slot is not None and slot.separate:
                slot.main.data.copy_(flat_part(value.to(slot.main.dtype), slot))
            count += 1
    return HFImportReport(
        path=path,
        dtypes=tuple(sorted({folder.info(name).dtype for name in folder.names})),
        parameters=count,
        bytes_read=folder.stats.bytes_read,
        padded_vocab_rows=config.vocab - vocab_size,
    )
