"""Hugging Face PEFT adapter folders (adapter_config.json + adapter_model.safetensors) in and out of bridgec's adapters.

peft names a LoRA module's tensors ``base_model.model.model.layers.{layer}.{module}.lora_A.weight``
([rank, in]), ``....lora_B.weight`` ([out, rank]) and, for DoRA,
``....lora_magnitude_vector`` ([out]); ``lora_alpha / r`` scales the update. A
per-projection target (linear_q, linear_fc1_gate, ...) is one peft module. A
fused one (linear_qkv, linear_fc1) is several peft modules sharing one A: its
B rows are theirs in megatron-core's order (per key/value group [q..., k, v];
[gate; up]). Loading one from peft needs those A matrices to be equal.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from bridgec.runtime.errors import ExitCode, RunError
from bridgec.runtime.maxtext_slots import flat_part, main_slots
from bridgec.runtime.models import lora
from bridgec.runtime.models.chunks import config_of
from bridgec.runtime.models.gpt import GPTConfig
from bridgec.runtime.peft import LowRankAdapter, local_part

__all__ = [
    "AdapterConfig",
    "FullAdapter",
    "export_hf_adapter",
    "gather_adapters",
    "hf_adapter_tensors",
    "load_hf_adapter",
    "merge_adapters",
    "write_hf_adapter",
]

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model.model.layers."
ROLE_SUFFIX = {lora.Role.A: "lora_A.weight", lora.Role.B: "lora_B.weight", lora.Role.MAGNITUDE: "lora_magnitude_vector"}


@attrs.frozen(kw_only=True)
class AdapterConfig:
    """What adapter_config.json says about the adapters' arithmetic."""

    rank: int
    alpha: float
    dora: bool
    rslora: bool


def _read_config(path: Path) -> AdapterConfig:
    try:
        raw = json.loads((path / CONFIG_FILE).read_text())
        return AdapterConfig(
            rank=int(raw["r"]),
            alpha=float(raw["lora_alpha"]),
            dora=bool(raw.get("use_dora", False)),
            rslora=bool(raw.get("use_rslora", False)),
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RunError(ExitCode.CHECKPOINT_ERROR, f"{path / CONFIG_FILE}: not a PEFT LoRA config ({error})") from error


def _names(parameter: lora.AdapterParameter) -> list[str]:
    s = parameter.selected
    return [f"{PREFIX}{s.layer}.{module}.{ROLE_SUFFIX[parameter.role]}" for module in s.target.hf]


def _fuse(parameter: lora.AdapterParameter, values: list[torch.Tensor], config: GPTConfig) -> torch.Tensor:
    """The peft modules' tensors as this adapter's whole (TP=1) tensor."""
    if len(values) == 1:
        return values[0]
    if parameter.role is lora.Role.A:
        return values[0]  # equal (checked)
    if parameter.selected.target.part is lora.Part.ALL and parameter.selected.target.name == "linear_qkv":
        per_q, d = config.heads // config.groups * config.head_dim, config.head_dim
        q, k, v = values
        rest = q.shape[1:]
        parts = [
            q.reshape(config.groups, per_q, *rest),
            k.reshape(config.groups, d, *rest),
            v.reshape(config.groups, d, *rest),
        ]
        return torch.cat(parts, dim=1).reshape(-1, *rest)
    return torch.cat(values)


def _split(parameter: lora.AdapterParameter, value: torch.Tensor, config: GPTConfig) -> list[torch.Tensor]:
    """The inverse of :func:`_fuse`: one tensor per peft module."""
    hf = parameter.selected.target.hf
    if len(hf) == 1:
        return [value]
    if parameter.role is lora.Role.A:
        return [value.clone() for _ in hf]
    if parameter.selected.target.name == "linear_qkv":
        per_q, d = config.heads // config.groups * config.head_dim, config.head_dim
        rest = value.shape[1:]
        q, k, v = value.reshape(config.groups, per_q + 2 * d, *rest).split([per_q, d, d], dim=1)
        return [t.reshape(-1, *rest) for t in (q, k, v)]
    return list(value.chunk(2))


def _adapters(chunk: torch.nn.Module) -> list[LowRankAdapter]:
    return [adapter for adapters in chunk.peft.layers for adapter in adapters.values()]


@torch.no_grad()
def load_hf_adapter(
    chunks: Sequence[torch.nn.Module],
    *,
    path: Path,
    tensor_parallel: int,
    tensor_rank: int,
    optimizer: object | None = None,
) -> int:
    """Copy a PEFT adapter folder's weights into this rank's adapters; returns how many tensors were set.

    Every difference (rank, scaling, method, a module either side lacks, a shape) is listed in one
    RunError (CHECKPOINT_ERROR) before anything is copied.
    """
    saved = _read_config(path)
    try:
        tensors = load_file(str(path / WEIGHTS_FILE))
    except OSError as error:
        raise RunError(ExitCode.CHECKPOINT_ERROR, f"{path / WEIGHTS_FILE}: {error}") from error
    problems: list[str] = []
    planned: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    used: set[str] = set()
    for chunk in chunks:
        config = config_of(chunk)
        for adapter in _adapters(chunk):
            if saved.rank != adapter.rank or abs(saved.alpha / saved.rank - adapter.scaling) > 1e-12:
                problems.append(
                    f"r = {saved.rank}, lora_alpha = {saved.alpha:g} (scaling {saved.alpha / saved.rank:g}); "
                    f"this run's adapters: rank {adapter.rank}, scaling {adapter.scaling:g}"
                )
                break
            if saved.dora != (adapter.magnitude is not None) or saved.rslora:
                problems.append(f"use_dora = {saved.dora}, use_rslora = {saved.rslora}; this run's method differs")
                break
            for parameter in adapter.table:
                names = _names(parameter)
                missing = [n for n in names if n not in tensors]
                if missing:
                    problems += [f"{n}: missing" for n in missing]
                    continue
                used.update(names)
                values = [tensors[n].to(torch.float32) for n in names]
                if parameter.role is lora.Role.A and any(not torch.equal(values[0], v) for v in values[1:]):
                    problems.append(
                        f"{', '.join(names)}: different A matrices, and {parameter.selected.target.name} shares one; "
                        "target the projections instead (linear_q, linear_k, linear_v; linear_fc1_gate, linear_fc1_up)"
                    )
                    continue
                expected = [_expected(parameter, module_index, config) for module_index in range(len(names))]
                wrong = [
                    f"{n}: {tuple(v.shape)}, expected {e}"
                    for n, v, e in zip(names, values, expected)
                    if tuple(v.shape) != e
                ]
                if wrong:
                    problems += wrong
                    continue
                full = _fuse(parameter, values, config)
                planned.append(
                    (getattr(adapter, parameter.role.value), local_part(parameter, full, tensor_parallel, tensor_rank))
                )
    layers = {int(name[len(PREFIX) :].split(".")[0]) for name in tensors if name.startswith(PREFIX)}
    held = {p.selected.layer for chunk in chunks for adapter in _adapters(chunk) for p in adapter.table}
    # Tensors of this rank's layers that no adapter here takes: the folder adapts modules the spec does not.
    # A folder of another rank or method fails every tensor too: say so once, not per tensor.
    if not any(p.startswith(("r = ", "use_dora = ")) for p in problems):
        extra = sorted(
            n for n in tensors if n not in used and n.startswith(PREFIX) and int(n[len(PREFIX) :].split(".")[0]) in held
        )
        problems += [f"{n}: not an adapter of this run (compare target_modules)" for n in extra]
    if not layers:
        problems.append(f"no tensor named {PREFIX}... (not a LoRA adapter of a *ForCausalLM model)")
    if problems:
        listing = "\n".join(f"  - {p}" for p in dict.fromkeys(problems))
        raise RunError(
            ExitCode.CHECKPOINT_ERROR,
            f"PEFT adapter {path} does not fit this run's adapters; nothing was loaded. "
            f"{len(dict.fromkeys(problems))} difference(s):\n{listing}\n  (compare [peft] and [model] with the "
            "adapter's adapter_config.json and its base model)",
        )
    slots = main_slots(optimizer) if optimizer is not None else {}
    for param, value in planned:
        param.data.copy_(value)
        slot = slots.get(param)
        if slot is not None and slot.separate:
            slot.main.data.copy_(flat_part(value.to(slot.main.dtype), slot))
    return len(planned)


def _expected(parameter: lora.AdapterParameter, module_index: int, config: GPTConfig) -> tuple[int, ...]:
    """The shape peft stores for one of the adapter's modules."""
    whole = parameter.shape
    count = len(parameter.selected.target.hf)
    if count == 1 or parameter.role is lora.Role.A:
        return whole
    if parameter.selected.target.name == "linear_qkv":
        rows = (config.heads if module_index == 0 else config.groups) * config.head_dim
    else:
        rows = whole[0] // count
    return (rows, *whole[1:])


def hf_adapter_tensors(
    parameter: lora.AdapterParameter, value: torch.Tensor, config: GPTConfig
) -> dict[str, torch.Tensor]:
    """A whole (tensor-parallel gathered) adapter parameter as peft's tensors."""
    return dict(zip(_names(parameter), _split(parameter, value, config), strict=True))


def write_hf_adapter(
    folder: Path,
    tensors: dict[str, torch.Tensor],
    *,
    rank: int,
    alpha: float,
    dora: bool,
    dropout: float,
    modules: Sequence[str],
    base_model: str | None,
) -> None:
    """adapter_config.json and adapter_model.safetensors, as peft's save_pretrained writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "use_dora": dora,
        "use_rslora": False,
        "target_modules": sorted(modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": None,
    }
    save_file(
        {name: t.contiguous() for name, t in tensors.items()}, str(folder / WEIGHTS_FILE), metadata={"format": "pt"}
    )
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# Export: whole adapters on global rank 0, as a PEFT folder or folded into the base weights.


@attrs.frozen(kw_only=True)
class FullAdapter:
    parameter: lora.AdapterParameter
    value: torch.Tensor
    """The whole (TP=1) fp32 tensor."""


@torch.no_grad()
def gather_adapters(chunks: Sequence[torch.nn.Module], *, tensor_group: object | None) -> dict[str, FullAdapter] | None:
    """Every adapter parameter whole, by global name, on global rank 0 (None elsewhere). Collective: all ranks."""
    tensor = dist.get_world_size(tensor_group) if tensor_group is not None else 1
    mine: dict[str, Any] = {}
    rank = 0
    for chunk in chunks:
        for adapter in _adapters(chunk):
            rank = adapter.rank
            for parameter in adapter.table:
                local = getattr(adapter, parameter.role.value).detach().float()
                mine[parameter.name] = _whole(parameter, local, tensor, tensor_group).numpy().copy()
    every: list[dict[str, Any] | None] = [None] * dist.get_world_size()
    # Plain arrays by name: the table's rows (AdapterParameter) hold functions, which do not pickle.
    dist.all_gather_object(every, mine)
    if dist.get_rank() != 0:
        return None
    config = config_of(chunks[0])
    return {
        name: FullAdapter(parameter=lora.parameter_named(config, name, rank=rank), value=torch.from_numpy(value))
        for part in every
        if part
        for name, value in part.items()
    }


def _whole(parameter: lora.AdapterParameter, local: torch.Tensor, tensor: int, group: object | None) -> torch.Tensor:
    if parameter.split is None or tensor == 1:
        return local
    pieces = [torch.empty_like(local) for _ in range(tensor)]
    dist.all_gather(pieces, local.contiguous(), group=group)
    axis = parameter.split.axis
    if parameter.stride == 1:
        return torch.cat(pieces, dim=axis)
    halves = [piece.chunk(2, dim=axis) for piece in pieces]  # each rank holds [gate_r; up_r]
    return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=axis)


def export_hf_adapter(
    adapters: dict[str, FullAdapter],
    config: GPTConfig,
    *,
    output: Path,
    scaling: float,
    dropout: float,
    base_model: str,
) -> int:
    """Write ``output`` as peft's save_pretrained does; returns the tensor count."""
    tensors: dict[str, torch.Tensor] = {}
    modules: set[str] = set()
    for found in adapters.values():
        tensors.update(hf_adapter_tensors(found.parameter, found.value, config))
        modules.update(module.rsplit(".", 1)[-1] for module in found.parameter.selected.target.hf)
    first = next(iter(adapters.values())).parameter
    rank = first.shape[0] if first.role is lora.Role.A else first.shape[1]
    dora = any(found.parameter.role is lora.Role.MAGNITUDE for found in adapters.values())
    write_hf_adapter(
        output, tensors, rank=rank, alpha=scaling * rank, dora=dora, dropout=dropout, modules=sorted(modules),
        base_model=base_model,
    )  # fmt: skip
    return len(tensors)


@torch.no_grad()
def merge_adapters(
    full: dict[str, torch.Tensor], adapters: dict[str, FullAdapter], config: GPTConfig, *, scaling: float
) -> int:
    """Fold every adapter into its base weight in ``full`` (global names): W + s B A on its rows, and for DoRA
    those rows scaled to the magnitude (m / ||W + s B A|| per row). Returns how many adapters were folded."""
    from bridgec.runtime.peft import local_rows

    by_adapter: dict[str, dict[lora.Role, torch.Tensor]] = {}
    selected: dict[str, lora.Selected] = {}
    for found in adapters.values():
        key = found.parameter.selected.path
        by_adapter.setdefault(key, {})[found.parameter.role] = found.value
        selected[key] = found.parameter.selected
    for key, parts in by_adapter.items():
        s = selected[key]
        name = f"decoder.layers.{s.layer}.{s.target.base}.weight"
        weight = full[name]
        rows = local_rows(s.target, config, 1)
        index = rows if rows is not None else torch.arange(weight.shape[0])
        adapted = weight[index].float() + scaling * (parts[lora.Role.B] @ parts[lora.Role.A])
        if lora.Role.MAGNITUDE in parts:
            adapted = adapted * (parts[lora.Role.MAGNITUDE] / adapted.norm(dim=1)).unsqueeze(1)
        merged = weight.clone()
        merged[index] = adapted.to(weight.dtype)
        full[name] = merged
    return len(by_adapter)
