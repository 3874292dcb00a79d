"""Write a model's full weights as a Hugging Face folder: config.json, sharded safetensors with their index,
and the tokenizer files, atomically.

The tensors come from :func:`bridgec.runtime.maxtext_export.gather_full_params`
(global names, fp32) and go through the parameter table's Hugging Face rows
(:func:`bridgec.runtime.hf_layout.hf_tensors`). ``config.json`` is the one of
the folder the run started from ([init.checkpoint] format = "huggingface"):
that file describes this model (``bridgec import hf`` wrote the spec from it,
and the import checked every tensor's shape against it), with ``dtype`` set to
what is written. The folder is written beside ``output`` under a temporary name
and renamed into place at the end, so ``output`` is either absent or complete.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import attrs
import torch
from safetensors.torch import save_file

from bridgec.runtime.errors import ExitCode, RunError
from bridgec.runtime.hf_layout import hf_tensors
from bridgec.runtime.hf_read import INDEX_FILE
from bridgec.runtime.models.gpt import GPTConfig, parameters

HFDType = Literal["float32", "bfloat16"]
SHARD_BYTES = 4 * 1024**3
"""At most this many bytes of tensors per safetensors file (transformers' save_pretrained default is 5 GB)."""
COPIED = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)
"""Files of the source folder that travel with an export unchanged."""

__all__ = ["HFExportReport", "HFDType", "export_hf", "hf_state_dict"]


@attrs.frozen(kw_only=True)
class HFExportReport:
    folder: Path
    tensors: int
    shards: int
    dtype: HFDType
    copied: tuple[str, ...]


def hf_state_dict(
    full: Mapping[str, torch.Tensor], config: GPTConfig, *, vocab_size: int, dtype: HFDType
) -> dict[str, torch.Tensor]:
    """Every Hugging Face tensor of the model, from its full parameters by global name."""
    tensors: dict[str, torch.Tensor] = {}
    for parameter in parameters(config):
        for name, value in hf_tensors(parameter, full[parameter.name], config, vocab_size=vocab_size).items():
            tensors[name] = value.to(getattr(torch, dtype)).contiguous()
    return tensors


def _shards(tensors: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, value in tensors.items():
        nbytes = value.numel() * value.element_size()
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = value
        size += nbytes
    return shards


def export_hf(
    full: Mapping[str, torch.Tensor],
    config: GPTConfig,
    *,
    vocab_size: int,
    source: Path,
    output: Path,
    dtype: HFDType,
) -> HFExportReport:
    """Write ``output`` (which must not exist) from the full parameters; ``source`` is the Hugging Face folder
    whose config.json and tokenizer files describe this model."""
    if output.exists():
        raise RunError(ExitCode.CHECKPOINT_ERROR, f"{output} already exists; choose another --output")
    try:
        hf_config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise RunError(ExitCode.CHECKPOINT_ERROR, f"{source / 'config.json'}: cannot be read ({error})") from None
    tensors = hf_state_dict(full, config, vocab_size=vocab_size, dtype=dtype)
    shards = _shards(tensors)
    temporary = output.parent / f".{output.name}.partial-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    try:
        weight_map: dict[str, str] = {}
        for number, shard in enumerate(shards, start=1):
            file = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(temporary / file), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, file))
        total = sum(value.numel() * value.element_size() for value in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (temporary / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        hf_config.pop("torch_dtype", None)
        hf_config["dtype"] = dtype
        (temporary / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
        copied = tuple(name for name in COPIED if (source / name).is_file())
        for name in copied:
            shutil.copyfile(source / name, temporary / name)
        temporary.rename(output)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return HFExportReport(folder=output, tensors=len(tensors), shards=len(shards), dtype=dtype, copied=copied)
