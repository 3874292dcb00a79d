"""The adapter table: which linear layers of a GPTModel take a LoRA/DoRA adapter, and the adapter parameters.

One :class:`Target` per adaptable module of a transformer layer. The four
megatron-core linears (``linear_qkv``, ``linear_proj``, ``linear_fc1``,
``linear_fc2``) and the per-projection targets of Megatron Bridge's CanonicalLoRA
(``linear_q``, ``linear_k``, ``linear_v`` inside the fused ``linear_qkv``;
``linear_fc1_gate``, ``linear_fc1_up`` inside a gated ``linear_fc1``). A target
says which base linear it adapts, whether that linear is column- or
row-parallel, which of its output rows the adapter writes, and its Hugging Face
module names. The compiler (validation, ``bridgec explain``) and the runtime
(:mod:`bridgec.runtime.peft`) both read it.

A target is selected by its name (``linear_q``: every layer's) or by a pattern
over the module's global path (``decoder.layers.0.*.linear_qkv``,
``decoder.layers.1[0-9].mlp.*``; :func:`fnmatch.fnmatchcase`).

No torch here: the compiler imports this module.
"""

from __future__ import annotations

import enum
import fnmatch
from collections.abc import Callable, Sequence

import attrs

from bridgec.runtime.models.gpt import LAYER_PREFIX, GPTConfig, Split

PEFT_PREFIX = "peft.layers."
"""Adapter parameters live under the chunk's ``peft`` module: ``peft.layers.{layer}.{target}.lora_a``."""


class Parallel(enum.Enum):
    """How megatron-core splits the base linear over tensor-parallel ranks."""

    COLUMN = "column"
    """Output rows split (linear_qkv, linear_fc1): the adapter's B and DoRA magnitude split the same way; A is whole."""
    ROW = "row"
    """Input columns split (linear_proj, linear_fc2): the adapter's A splits its columns; B and the magnitude are whole."""


class Part(enum.Enum):
    """Which output rows of the base linear an adapter writes."""

    ALL = "all"
    Q = "q"
    """The query rows of linear_qkv (the first heads/groups heads of every key/value group block)."""
    K = "k"
    V = "v"
    GATE = "gate"
    """The first half of a gated linear_fc1's rows (on every tensor-parallel rank: each holds [gate; up])."""
    UP = "up"


@attrs.frozen(kw_only=True)
class Target:
    name: str
    """The target's own name, as target_modules writes it."""
    module: str
    """Its path below ``decoder.layers.{layer}.`` (the per-projection ones: a name of their own)."""
    base: str
    """The megatron-core linear it adapts, below ``decoder.layers.{layer}.``."""
    parallel: Parallel
    part: Part
    hf: tuple[str, ...]
    """Hugging Face modules below ``model.layers.{layer}.`` whose weights this adapter adds to, in row order."""
    rows: Callable[[GPTConfig], int]
    """Output rows the adapter writes (global)."""
    columns: Callable[[GPTConfig], int]
    """Input features of the base linear (global)."""
    when: Callable[[GPTConfig], bool]


def _qkv_rows(c: GPTConfig) -> int:
    return (c.heads + 2 * c.groups) * c.head_dim


def _dense_local(c: GPTConfig) -> bool:
    # transformer_engine's fused linears and MoE experts are other module types: no adapter is written for them.
    return not c.transformer_engine and c.num_experts is None


def _attention(c: GPTConfig) -> bool:
    return not c.transformer_engine


def _gated(c: GPTConfig) -> bool:
    return _dense_local(c) and c.gated


TARGETS: tuple[Target, ...] = (
    Target(
        name="linear_qkv",
        module="self_attention.linear_qkv",
        base="self_attention.linear_qkv",
        parallel=Parallel.COLUMN,
        part=Part.ALL,
        hf=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        rows=_qkv_rows,
        columns=lambda c: c.hidden,
        when=_attention,
    ),
    Target(
        name="linear_q",
        module="self_attention.linear_q",
        base="self_attention.linear_qkv",
        parallel=Parallel.COLUMN,
        part=Part.Q,
        hf=("self_attn.q_proj",),
        rows=lambda c: c.heads * c.head_dim,
        columns=lambda c: c.hidden,
        when=_attention,
    ),
    Target(
        name="linear_k",
        module="self_attention.linear_k",
        base="self_attention.linear_qkv",
        parallel=Parallel.COLUMN,
        part=Part.K,
        hf=("self_attn.k_proj",),
        rows=lambda c: c.groups * c.head_dim,
        columns=lambda c: c.hidden,
        when=_attention,
    ),
    Target(
        name="linear_v",
        module="self_attention.linear_v",
        base="self_attention.linear_qkv",
        parallel=Parallel.COLUMN,
        part=Part.V,
        hf=("self_attn.v_proj",),
        rows=lambda c: c.groups * c.head_dim,
        columns=lambda c: c.hidden,
        when=_attention,
    ),
    Target(
        name="linear_proj",
        module="self_attention.linear_proj",
        base="self_attention.linear_proj",
        parallel=Parallel.ROW,
        part=Part.ALL,
        hf=("self_attn.o_proj",),
        rows=lambda c: c.hidden,
        columns=lambda c: c.heads * c.head_dim,
        when=_attention,
    ),
    Target(
        name="linear_fc1",
        module="mlp.linear_fc1",
        base="mlp.linear_fc1",
        parallel=Parallel.COLUMN,
        part=Part.ALL,
        hf=("mlp.gate_proj", "mlp.up_proj"),
        rows=lambda c: c.ffn * (2 if c.gated else 1),
        columns=lambda c: c.hidden,
        when=_dense_local,
    ),
    Target(
        name="linear_fc1_gate",
        module="mlp.linear_fc1_gate",
        base="mlp.linear_fc1",
        parallel=Parallel.COLUMN,
        part=Part.GATE,
        hf=("mlp.gate_proj",),
        rows=lambda c: c.ffn,
        columns=lambda c: c.hidden,
        when=_gated,
    ),
    Target(
        name="linear_fc1_up",
        module="mlp.linear_fc1_up",
        base="mlp.linear_fc1",
        parallel=Parallel.COLUMN,
        part=Part.UP,
        hf=("mlp.up_proj",),
        rows=lambda c: c.ffn,
        columns=lambda c: c.hidden,
        when=_gated,
    ),
    Target(
        name="linear_fc2",
        module="mlp.linear_fc2",
        base="mlp.linear_fc2",
        parallel=Parallel.ROW,
        part=Part.ALL,
        hf=("mlp.down_proj",),
        rows=lambda c: c.hidden,
        columns=lambda c: c.ffn,
        when=_dense_local,
    ),
)
"""Every adaptable module of a layer: the MLP's need a dense MLP, and gate/up a gated one."""

BY_NAME = {target.name: target for target in TARGETS}


@attrs.frozen(kw_only=True)
class Selected:
    """One adapter: a target in one layer."""

    layer: int
    target: Target

    @property
    def path(self) -> str:
        return f"{LAYER_PREFIX}{self.layer}.{self.target.module}"


def available(config: GPTConfig) -> list[Target]:
    """The targets a model of this config has."""
    return [target for target in TARGETS if target.when(config)]


def _matches(pattern: str, selected: Selected) -> bool:
    if "." in pattern or any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatchcase(selected.path, pattern)
    return pattern == selected.target.name


def select(config: GPTConfig, patterns: Sequence[str]) -> tuple[list[Selected], list[str]]:
    """The adapters ``patterns`` select (layer by layer, in table order) and the patterns that select none."""
    every = [Selected(layer=layer, target=t) for layer in range(config.num_layers) for t in available(config)]
    chosen = [s for s in every if any(_matches(p, s) for p in patterns)]
    unmatched = [p for p in patterns if not any(_matches(p, s) for s in every)]
    return chosen, unmatched


def overlaps(selected: Sequence[Selected]) -> list[str]:
    """Paths adapted twice over: a fused target and one of its own projections in the same layer."""
    parts: dict[tuple[int, str], list[Selected]] = {}
    for s in selected:
        parts.setdefault((s.layer, s.target.base), []).append(s)
    return [
        f"{group[0].path.rsplit('.', 1)[0]}: " + " and ".join(s.target.name for s in group)
        for group in parts.values()
        if len(group) > 1 and any(s.target.part is Part.ALL for s in group)
    ]


# --------------------------------------------------------------------------------------------
# Adapter parameters.


class Role(enum.Enum):
    A = "lora_a"
    """[rank, columns]: the down projection."""
    B = "lora_b"
    """[rows, rank]: the up projection."""
    MAGNITUDE = "magnitude"
    """[rows]: DoRA's per-row magnitude."""


@attrs.frozen(kw_only=True)
class AdapterParameter:
    name: str
    """Global name: ``peft.layers.{layer}.{target}.{role}``."""
    local_name: str
    """Its name in the chunk (the chunk's layer index)."""
    selected: Selected
    role: Role
    shape: tuple[int, ...]
    local_shape: tuple[int, ...]
    split: Split | None
    """None: every tensor-parallel rank holds all of it."""

    @property
    def stride(self) -> int:
        # linear_fc1 with both halves (gated): every rank holds [gate; up] rows, as its base weight does.
        return 2 if self.split is not None and self.split.gate_up else 1


def _split(target: Target, role: Role, config: GPTConfig) -> Split | None:
    match target.parallel, role:
        case Parallel.COLUMN, Role.B | Role.MAGNITUDE:
            return Split(axis=0, gate_up=target.name == "linear_fc1" and config.gated)
        case Parallel.ROW, Role.A:
            return Split(axis=1)
        case _:
            return None


def adapter_parameters(
    config: GPTConfig,
    selected: Sequence[Selected],
    *,
    rank: int,
    dora: bool,
    tensor: int = 1,
    local_layers: Sequence[int] | None = None,
) -> list[AdapterParameter]:
    """The adapter parameters of ``selected`` (in that order); ``local_layers``: the chunk's global layers, in order."""
    found = []
    position = {layer: index for index, layer in enumerate(local_layers)} if local_layers is not None else None
    for s in selected:
        if position is not None and s.layer not in position:
            continue
        local_layer = position[s.layer] if position is not None else s.layer
        rows, columns = s.target.rows(config), s.target.columns(config)
        shapes = {Role.A: (rank, columns), Role.B: (rows, rank), Role.MAGNITUDE: (rows,)}
        for role in (Role.A, Role.B, Role.MAGNITUDE) if dora else (Role.A, Role.B):
            split = _split(s.target, role, config)
            local = list(shapes[role])
            if split is not None:
                local[split.axis] //= tensor
            found.append(
                AdapterParameter(
                    name=f"{PEFT_PREFIX}{s.layer}.{s.target.name}.{role.value}",
                    local_name=f"{PEFT_PREFIX}{local_layer}.{s.target.name}.{role.value}",
                    selected=s,
                    role=role,
                    shape=shapes[role],
                    local_shape=tuple(local),
                    split=split,
                )
            )
    return found


def too_small(config: GPTConfig, selected: Sequence[Selected], rank: int) -> list[str]:
    """Targets whose rows or columns are fewer than ``rank`` (a low-rank update would not be low rank)."""
    seen: dict[str, str] = {}
    for s in selected:
        rows, columns = s.target.rows(config), s.target.columns(config)
        if rank > min(rows, columns):
            seen.setdefault(s.target.name, f"{s.target.name} ({columns} in, {rows} out)")
    return list(seen.values())


def parameter_named(config: GPTConfig, name: str, *, rank: int) -> AdapterParameter:
    """The whole model's adapter parameter of this global name (``peft.layers.{layer}.{target}.{role}``)."""
    layer, target, _ = name.removeprefix(PEFT_PREFIX).split(".")
    selected = Selected(layer=int(layer), target=BY_NAME[target])
    return next(p for p in adapter_parameters(config, [selected], rank=rank, dora=True) if p.name == name)
