"""LoRA and DoRA adapters on megatron-core's column- and row-parallel linears, split as their base layers are.

:func:`attach_adapters` gives every selected linear (the table:
:mod:`bridgec.runtime.models.lora`) a low-rank adapter and freezes every base
weight (``requires_grad`` off: megatron's DDP then allocates no gradient buffer
for it and reduces nothing, and the optimizer holds no state for it). The
adapters of a chunk live in one module, ``chunk.peft`` (``peft.layers.{layer}.
{target}.lora_a``); a forward hook on the base linear adds their output to its
own, so the base modules and their names stay megatron-core's.

Tensor parallelism, with x the linear's input and g the gradient of its output:

* column-parallel base (rows split: linear_qkv, linear_fc1): A is whole, B and
  the DoRA magnitude hold this rank's rows. ``A x`` goes through
  ``copy_to_tensor_model_parallel_region`` so that its gradient, a partial sum
  ``B_r^T g_r`` on each rank, is all-reduced before it reaches A and x.
* row-parallel base (input columns split: linear_proj, linear_fc2): A holds this
  rank's columns and ``A_r x_r`` goes through
  ``reduce_from_tensor_model_parallel_region`` (summed forward, as the base's own
  output is); B and the magnitude are whole.

DoRA (Hugging Face peft's DoraLinearLayer): with s = alpha / rank and the row norm
n = ||W + s B A|| taken without gradient, the output gains
``(m / n - 1) (W x) + (m / n) s B A x``; a row-parallel base sums n's squares over
the tensor-parallel ranks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.tensor_parallel import (
    copy_to_tensor_model_parallel_region,
    reduce_from_tensor_model_parallel_region,
)
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from megatron.core.transformer.mlp import apply_swiglu_sharded_factory
from megatron.core.utils import make_sharded_tensor_for_checkpoint, make_tp_sharded_tensor_for_checkpoint

from bridgec.runtime.init import name_seed, shard
from bridgec.runtime.models import lora
from bridgec.runtime.models.chunks import config_of, layer_numbers
from bridgec.runtime.models.gpt import GPTConfig

__all__ = [
    "AdapterSettings",
    "LowRankAdapter",
    "PeftReport",
    "adapter_pairs",
    "attach_adapters",
    "local_part",
    "local_rows",
    "reset_magnitudes",
]


@attrs.frozen(kw_only=True)
class AdapterSettings:
    """The spec's [peft], resolved by the compiler."""

    method: str
    """lora or dora."""
    targets: tuple[str, ...]
    """target_modules: names or global-path patterns (runtime.models.lora.select)."""
    rank: int
    scaling: float
    """alpha / rank."""
    dropout: float
    init_a: str
    init_b: str

    @property
    def dora(self) -> bool:
        return self.method == "dora"


@attrs.frozen(kw_only=True)
class PeftReport:
    """What :func:`attach_adapters` did on this rank."""

    adapters: int
    trainable: int
    """Adapter parameters (elements) on this rank."""
    frozen: int
    """Base parameters (elements) on this rank, now frozen."""


class LowRankAdapter(torch.nn.Module):
    """One adapter: ``lora_a`` [rank, in], ``lora_b`` [rows, rank] and, for DoRA, ``magnitude`` [rows] (local shapes)."""

    def __init__(
        self,
        parameters: Sequence[lora.AdapterParameter],
        *,
        settings: AdapterSettings,
        rows: torch.Tensor | None,
        tensor_parallel: int,
    ) -> None:
        super().__init__()
        self.table = tuple(parameters)
        """This adapter's rows of the adapter table (runtime.models.lora)."""
        self.parallel = parameters[0].selected.target.parallel
        self.rank = settings.rank
        self.scaling = settings.scaling
        self.dropout = torch.nn.Dropout(settings.dropout) if settings.dropout > 0 else torch.nn.Identity()
        self.register_buffer("rows", rows, persistent=False)
        self.rows: torch.Tensor | None
        self.magnitude: torch.nn.Parameter | None = None
        for parameter in parameters:
            param = torch.nn.Parameter(torch.zeros(parameter.local_shape))
            if parameter.split is not None and tensor_parallel > 1:
                set_tensor_model_parallel_attributes(param, True, parameter.split.axis, parameter.stride)
            setattr(self, parameter.role.value, param)

    def forward(self, x: torch.Tensor, base: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The base linear's output ``base`` (bias excluded) plus this adapter's contribution."""
        h = F.linear(self.dropout(x), self.lora_a)
        match self.parallel:
            case lora.Parallel.COLUMN:
                h = copy_to_tensor_model_parallel_region(h)
            case lora.Parallel.ROW:
                h = reduce_from_tensor_model_parallel_region(h)
        update = F.linear(h, self.lora_b) * self.scaling
        if self.magnitude is not None:
            plain = base if self.rows is None else base.index_select(-1, self.rows)
            scale = self.magnitude / self._row_norm(weight)
            update = (scale - 1) * plain + scale * update
        if self.rows is None:
            return base + update
        return base.index_add(-1, self.rows, update)

    @torch.no_grad()
    def _row_norm(self, weight: torch.Tensor) -> torch.Tensor:
        """||W + s B A|| per output row, without gradient (peft detaches it: DoRA paper, section 4.3)."""
        if self.rows is not None:
            weight = weight.index_select(0, self.rows)
        squares = (weight + self.scaling * (self.lora_b @ self.lora_a)).pow(2).sum(dim=1)
        if self.parallel is lora.Parallel.ROW and parallel_state.get_tensor_model_parallel_world_size() > 1:
            dist.all_reduce(squares, group=parallel_state.get_tensor_model_parallel_group())
        return squares.sqrt()

    @torch.no_grad()
    def reset_magnitude(self, weight: torch.Tensor) -> None:
        """DoRA's starting magnitude: the base weight's row norms, so the adapted layer starts as the base."""
        assert self.magnitude is not None
        saved = self.lora_b.clone()
        self.lora_b.zero_()
        self.magnitude.copy_(self._row_norm(weight))
        self.lora_b.copy_(saved)


class _Hook:
    """A base linear's forward hook: adds its adapters' outputs to the base output (megatron's (output, bias) pair)."""

    def __init__(self, adapters: list[LowRankAdapter]) -> None:
        self.adapters = adapters

    def __call__(
        self, module: torch.nn.Module, args: tuple[torch.Tensor, ...], output: tuple[torch.Tensor, torch.Tensor | None]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        out, bias = output
        # With skip_bias_add off the bias is already in out (and bias is None); DoRA rescales W x alone.
        added = module.bias if bias is None and getattr(module, "bias", None) is not None else None
        base = out if added is None else out - added
        for adapter in self.adapters:
            base = adapter(args[0], base, module.weight)
        return (base if added is None else base + added), bias


def local_rows(target: lora.Target, config: GPTConfig, tensor: int) -> torch.Tensor | None:
    """The rows of this rank's base output that a per-projection adapter writes (None: all of them)."""
    match target.part:
        case lora.Part.ALL:
            return None
        case lora.Part.Q | lora.Part.K | lora.Part.V:
            per_q = config.heads // config.groups * config.head_dim
            d = config.head_dim
            block = per_q + 2 * d
            start, count = {lora.Part.Q: (0, per_q), lora.Part.K: (per_q, d), lora.Part.V: (per_q + d, d)}[target.part]
            groups = torch.arange(config.groups // tensor).unsqueeze(1) * block
            return (groups + start + torch.arange(count)).reshape(-1)
        case lora.Part.GATE | lora.Part.UP:
            n = config.ffn // tensor
            return torch.arange(n) + (n if target.part is lora.Part.UP else 0)


def _draw(init: str, shape: tuple[int, ...], name: str, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(name_seed(seed, name))
    match init:
        case "zero":
            return torch.zeros(shape)
        case "kaiming_uniform":  # torch's Linear default (a = sqrt 5): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            bound = 1 / math.sqrt(shape[1])
            return (torch.rand(shape, generator=generator) * 2 - 1) * bound
        case "gaussian":  # peft's init_lora_weights = "gaussian": N(0, 1/rank) for A [rank, in]
            return torch.randn(shape, generator=generator) / shape[0]
        case "xavier_normal":
            return torch.randn(shape, generator=generator) * math.sqrt(2 / (shape[0] + shape[1]))
        case _:
            raise ValueError(f"unknown adapter initialisation {init!r}")


def local_part(parameter: lora.AdapterParameter, full: torch.Tensor, tensor: int, rank: int) -> torch.Tensor:
    """This tensor-parallel rank's piece of a whole adapter parameter."""
    if parameter.split is None:
        return full
    return shard(full, axis=parameter.split.axis, stride=parameter.stride, tensor_parallel=tensor, tensor_rank=rank)


class PeftLayers(torch.nn.Module):
    """A chunk's adapters: ``layers[local layer][target name]``."""

    def __init__(self, per_layer: list[dict[str, LowRankAdapter]]) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.ModuleDict(adapters) for adapters in per_layer)

    def sharded_state_dict(
        self, prefix: str = "", sharded_offsets: tuple = (), metadata: dict | None = None
    ) -> dict[str, object]:
        """megatron-core's dist_checkpointing view: each tensor by its global name, split as the table says.

        GPTModel's recursion calls this for ``chunk.peft``. Keys use global layer numbers (no pipeline
        offsets to add); a [gate; up] adapter of linear_fc1 is saved as two halves (megatron-core's swiglu
        factory, as for linear_fc1's own weight), so a checkpoint loads at another tensor-parallel size.
        """
        found: dict[str, object] = {}
        for local_layer, adapters in enumerate(self.layers):
            for name, adapter in adapters.items():
                for parameter in adapter.table:
                    tensor = getattr(adapter, parameter.role.value)
                    local_key = f"{prefix}layers.{local_layer}.{name}.{parameter.role.value}"
                    key = f"{prefix}layers.{parameter.selected.layer}.{name}.{parameter.role.value}"
                    found[local_key] = _sharded(tensor, key, parameter)
        return found


def _sharded(tensor: torch.Tensor, key: str, parameter: lora.AdapterParameter) -> object:
    if parameter.split is None:
        return make_sharded_tensor_for_checkpoint(tensor, key)
    sharded = make_tp_sharded_tensor_for_checkpoint(tensor, key, tp_axis=parameter.split.axis)
    return apply_swiglu_sharded_factory(sharded, ()) if parameter.stride == 2 else sharded


def attach_adapters(
    chunks: Sequence[torch.nn.Module],
    settings: AdapterSettings,
    *,
    seed: int,
    tensor_parallel: int,
    tensor_rank: int,
) -> PeftReport:
    """Give the (unwrapped) chunks their adapters, drawn whole from (seed, global name) and cut to this rank; freeze the rest."""
    adapters = trainable = frozen = 0
    for chunk in chunks:
        config = config_of(chunk)
        numbers = layer_numbers(chunk)
        layers = [numbers[index] - 1 for index in sorted(numbers)]
        selected, _ = lora.select(config, settings.targets)
        parameters = lora.adapter_parameters(
            config, selected, rank=settings.rank, dora=settings.dora, tensor=tensor_parallel, local_layers=layers
        )
        for param in chunk.parameters():
            frozen += param.numel()
            param.requires_grad_(False)
        per_layer: list[dict[str, LowRankAdapter]] = [{} for _ in layers]
        hooks: dict[torch.nn.Module, list[LowRankAdapter]] = {}
        for s in selected:
            if s.layer not in layers:
                continue
            local_layer = layers.index(s.layer)
            own = [p for p in parameters if p.selected == s]
            adapter = LowRankAdapter(
                own,
                settings=settings,
                rows=local_rows(s.target, config, tensor_parallel),
                tensor_parallel=tensor_parallel,
            )
            with torch.no_grad():
                for p in own:
                    if p.role is not lora.Role.MAGNITUDE:
                        init = settings.init_a if p.role is lora.Role.A else settings.init_b
                        getattr(adapter, p.role.value).copy_(
                            local_part(p, _draw(init, p.shape, p.name, seed), tensor_parallel, tensor_rank)
                        )
            per_layer[local_layer][s.target.name] = adapter
            base = chunk.decoder.layers[local_layer].get_submodule(s.target.base)
            hooks.setdefault(base, []).append(adapter)
            adapters += 1
            trainable += sum(p.numel() for p in adapter.parameters())
        chunk.peft = PeftLayers(per_layer)
        for base, own_adapters in hooks.items():
            base.register_forward_hook(_Hook(own_adapters))
        if settings.dora:
            reset_magnitudes([chunk])
    return PeftReport(adapters=adapters, trainable=trainable, frozen=frozen)


def _adapters_with_bases(chunk: torch.nn.Module) -> list[tuple[LowRankAdapter, torch.nn.Module]]:
    found = []
    for local_layer, adapters in enumerate(chunk.peft.layers):
        for name, adapter in adapters.items():
            found.append((adapter, chunk.decoder.layers[local_layer].get_submodule(lora.BY_NAME[name].base)))
    return found


@torch.no_grad()
def reset_magnitudes(chunks: Sequence[torch.nn.Module], optimizer: object | None = None) -> None:
    """DoRA: set every magnitude to its base rows' norms (after the base weights are loaded)."""
    from bridgec.runtime.maxtext_slots import flat_part, main_slots

    slots = main_slots(optimizer) if optimizer is not None else {}
    for chunk in chunks:
        for adapter, base in _adapters_with_bases(chunk):
            if adapter.magnitude is None:
                continue
            adapter.reset_magnitude(base.weight)
            slot = slots.get(adapter.magnitude)
            if slot is not None and slot.separate:
                slot.main.data.copy_(flat_part(adapter.magnitude.data.to(slot.main.dtype), slot))


def adapter_pairs(
    chunk: torch.nn.Module, settings: AdapterSettings, *, tensor_parallel: int
) -> list[tuple[lora.AdapterParameter, torch.nn.Parameter]]:
    """Every adapter parameter of an (unwrapped) chunk with its table row; ValueError naming differences."""
    config = config_of(chunk)
    numbers = layer_numbers(chunk)
    layers = [numbers[index] - 1 for index in sorted(numbers)]
    selected, _ = lora.select(config, settings.targets)
    listed = {
        p.local_name: p
        for p in lora.adapter_parameters(
            config, selected, rank=settings.rank, dora=settings.dora, tensor=tensor_parallel, local_layers=layers
        )
    }
    held = {name: param for name, param in chunk.named_parameters() if name.startswith(lora.PEFT_PREFIX)}
    if set(held) != set(listed) or any(tuple(held[n].shape) != listed[n].local_shape for n in held):
        raise ValueError(
            f"the chunk's adapters differ from bridgec's adapter table (runtime/models/lora.py): "
            f"not in the table {sorted(set(held) - set(listed))}, missing {sorted(set(listed) - set(held))}"
        )
    return [(listed[name], param) for name, param in held.items()]
