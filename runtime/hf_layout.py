"""Hugging Face tensors <-> megatron-core parameters, on the parameter table's ``hf`` rows.

:func:`expected_shapes` says which tensors a whole model needs and their shapes
(what the import checks before reading anything); :func:`read_local` reads one
tensor-parallel rank's slices of a parameter's tensors and assembles its local
value; :func:`hf_tensors` is the inverse on a whole (gathered) parameter, for export.

Megatron-core's fused layouts: ``linear_qkv`` rows are grouped per key/value
head, ``[q rows of the group's H/G heads, k rows, v rows]``, and a tensor rank
holds G/T whole groups; ``linear_fc1`` holds ``[gate; up]`` and a rank holds
its slice of both. The embedding and output layer have megatron's padded
vocabulary (zero rows past the tokenizer's).
"""

from __future__ import annotations

import attrs
import torch

from bridgec.runtime.hf_read import SafetensorsFolder
from bridgec.runtime.models.gpt import GPTConfig, HFTransform, Parameter, hf_names, parameters

IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
"""Buffers older transformers versions saved; recomputed by megatron-core from rotary_base."""


@attrs.frozen(kw_only=True)
class Shard:
    size: int
    rank: int


def _hf_shapes(parameter: Parameter, config: GPTConfig, vocab_size: int) -> tuple[tuple[int, ...], ...]:
    """The shapes of the Hugging Face tensors ``parameter`` is made of (``vocab_size``: unpadded)."""
    hf = parameter.entry.hf
    assert hf is not None
    rest = parameter.shape[1:]
    match hf.transform:
        case HFTransform.COPY:
            return (parameter.shape,)
        case HFTransform.EMBEDDING:
            return ((vocab_size, *rest),)
        case HFTransform.QKV:
            q = (config.heads * config.head_dim, *rest)
            kv = (config.groups * config.head_dim, *rest)
            return (q, kv, kv)
        case HFTransform.FC1:
            return ((config.ffn, *rest), (config.ffn, *rest))


def expected_shapes(config: GPTConfig, vocab_size: int) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """Every Hugging Face tensor the whole model reads, with its shape; and the parameters with no counterpart."""
    shapes: dict[str, tuple[int, ...]] = {}
    unmapped: list[str] = []
    for parameter in parameters(config):
        try:
            names = hf_names(parameter)
        except KeyError:
            unmapped.append(parameter.name)
            continue
        shapes.update(zip(names, _hf_shapes(parameter, config, vocab_size), strict=True))
    return shapes, unmapped


def check_folder(folder: SafetensorsFolder, config: GPTConfig, vocab_size: int) -> list[str]:
    """Every difference between the folder's tensors and what the model needs (headers only)."""
    shapes, unmapped = expected_shapes(config, vocab_size)
    problems = [f"{name}: the Hugging Face layout has no counterpart for this parameter" for name in unmapped]
    for name, shape in shapes.items():
        if name not in folder:
            problems.append(f"missing tensor {name} (shape {list(shape)})")
            continue
        info = folder.info(name)
        if info.shape != shape:
            problems.append(
                f"tensor {name} in {info.file} has shape {list(info.shape)}; this model needs {list(shape)}"
            )
    extra = [n for n in folder.names if n not in shapes and not n.endswith(IGNORED_SUFFIXES)]
    problems += [f"tensor {name} has no place in this model" for name in extra]
    return problems


def _rows(start: int, count: int) -> slice:
    return slice(start, start + count)


def read_local(
    folder: SafetensorsFolder, parameter: Parameter, config: GPTConfig, *, vocab_size: int, shard: Shard
) -> torch.Tensor:
    """This tensor-parallel rank's value of ``parameter`` (its local shape), reading only the slices it holds."""
    hf = parameter.entry.hf
    assert hf is not None
    names = hf_names(parameter)
    local = parameter.local_shape
    r = shard.rank
    match hf.transform:
        case HFTransform.COPY:
            if parameter.split is None:
                return folder.read(names[0])
            n = local[parameter.split.axis]
            if parameter.split.axis == 0:
                return folder.read(names[0], rows=_rows(r * n, n))
            return folder.read(names[0], columns=_rows(r * n, n))
        case HFTransform.EMBEDDING:
            n = local[0]
            start, stop = r * n, min((r + 1) * n, vocab_size)
            stored = folder.read(names[0], rows=slice(start, max(start, stop)))
            padding = stored.new_zeros((n - stored.shape[0], *stored.shape[1:]))
            return torch.cat([stored, padding])
        case HFTransform.QKV:
            groups = config.groups // shard.size
            per_q = config.heads // config.groups * config.head_dim
            d = config.head_dim
            q = folder.read(names[0], rows=_rows(r * groups * per_q, groups * per_q))
            k = folder.read(names[1], rows=_rows(r * groups * d, groups * d))
            v = folder.read(names[2], rows=_rows(r * groups * d, groups * d))
            rest = q.shape[1:]
            grouped = torch.cat(
                [q.reshape(groups, per_q, *rest), k.reshape(groups, d, *rest), v.reshape(groups, d, *rest)], dim=1
            )
            return grouped.reshape(-1, *rest)
        case HFTransform.FC1:
            n = local[0] // 2
            gate = folder.read(names[0], rows=_rows(r * n, n))
            up = folder.read(names[1], rows=_rows(r * n, n))
            return torch.cat([gate, up])


def hf_tensors(
    parameter: Parameter, value: torch.Tensor, config: GPTConfig, *, vocab_size: int
) -> dict[str, torch.Tensor]:
    """A whole (tensor-parallel gathered) parameter as its Hugging Face tensors: the inverse of :func:`read_local`."""
    hf = parameter.entry.hf
    assert hf is not None
    names = hf_names(parameter)
    match hf.transform:
        case HFTransform.COPY:
            return {names[0]: value}
        case HFTransform.EMBEDDING:
            return {names[0]: value[:vocab_size]}
        case HFTransform.QKV:
            per_q = config.heads // config.groups * config.head_dim
            d = config.head_dim
            rest = value.shape[1:]
            grouped = value.reshape(config.groups, per_q + 2 * d, *rest)
            q, k, v = grouped.split([per_q, d, d], dim=1)
            return {
                names[0]: q.reshape(-1, *rest),
                names[1]: k.reshape(-1, *rest),
                names[2]: v.reshape(-1, *rest),
            }
        case HFTransform.FC1:
            gate, up = value.chunk(2)
            return {names[0]: gate, names[1]: up}
