"""Lower a JAX/MaxText device mesh to megatron-core's parallel sizes.

A spec may write ``[parallel]`` the way a MaxText user thinks of it::

    [parallel]
    mesh = { data = -1, fsdp = 1, tensor = 2, stage = 2 }   # inside one node (MaxText ici_*)
    dcn_mesh = { data = -1 }                                  # across nodes (MaxText dcn_*), optional

Each axis's size is ``ici x dcn`` (MaxText's rule). In each of the two
tables at most one axis may be -1, filled so that the table's product is the
processes per node (ici) or the number of nodes (dcn); a missing ``dcn_mesh``
is MaxText's default, ``{ data = -1 }``. Axis names are MaxText's
``mesh_axes``. What each becomes (:data:`AXES`):

    data -> DP    fsdp -> DP + distributed optimizer    stage -> PP
    tensor -> TP  tensor_sequence -> TP + sequence_parallel
    context, context_usp_ulysses -> CP    expert -> EP (Megatron carves EP out of DP, so it counts in DP too)

diloco, fsdp_transpose, autoregressive and context_autoregressive have no
Megatron counterpart: any size but 1 is an error. Only sizes carry over:
megatron-core orders ranks tp-cp-ep-dp-pp itself. Pure: no torch, no I/O.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping

import attrs

from bridgec.compiler.spec import Spec


@attrs.frozen(kw_only=True)
class Axis:
    """What one MaxText mesh axis becomes in megatron-core."""

    becomes: str | None
    """Short form for the explanation table; None: no counterpart."""
    note: str = ""


AXES: dict[str, Axis] = {
    "diloco": Axis(becomes=None, note="DiLoCo's outer optimizer over replicas"),
    "data": Axis(becomes="DP", note="data parallel"),
    "stage": Axis(becomes="PP", note="pipeline parallel; MaxText's circular repeats ~ Megatron's virtual pipeline"),
    "fsdp": Axis(
        becomes="DP + distributed optimizer",
        note="same math as FSDP; Megatron shards optimizer state and fp32 main parameters over all of DP (ZeRO-1)",
    ),
    "fsdp_transpose": Axis(becomes=None, note="sharding weights a second way over fsdp"),
    "context": Axis(becomes="CP", note="context parallel"),
    "context_usp_ulysses": Axis(becomes="CP", note="Ulysses (all-to-all) context parallel; same math as Megatron's CP"),
    "context_autoregressive": Axis(becomes=None, note="inference-only axis"),
    "tensor": Axis(becomes="TP", note="tensor parallel"),
    "tensor_sequence": Axis(
        becomes="TP + sequence_parallel", note="tensor parallel with norms and dropout split along the sequence"
    ),
    "expert": Axis(becomes="EP (and DP)", note="expert parallel; outside MoE layers it splits the batch like DP"),
    "autoregressive": Axis(becomes=None, note="inference-only axis"),
}
"""MaxText's mesh_axes (configs/base.yml), in MaxText's order."""

_SPELLINGS = {"model": "tensor", "sequence": "context", "pipeline": "stage", "pipe": "stage"}
"""Names people write from other frameworks or older MaxText, and the axis they mean."""

DEFAULT_DCN: dict[str, int] = {"data": -1}
"""MaxText's default across slices: dcn_data_parallelism = -1, every other dcn_* = 1."""


@attrs.frozen(kw_only=True)
class MeshError:
    """One problem with a mesh: where (a key path), what, and how to fix it."""

    path: str
    message: str
    hint: str | None = None


@attrs.frozen(kw_only=True)
class MeshAxis:
    """One row of ``bridgec explain``'s mesh table."""

    name: str
    ici: int
    dcn: int
    size: int
    becomes: str
    note: str


@attrs.frozen(kw_only=True)
class MeshLowering:
    """The Megatron sizes a mesh resolves to, and how each axis got there."""

    tensor: int
    pipeline: int
    context: int
    expert: int
    data: int
    """Megatron's data-parallel size: data x fsdp x expert."""
    sequence_parallel: bool
    distributed_optimizer: bool
    """True when fsdp > 1 (a spec with a mesh cannot set ``distributed_optimizer`` itself)."""
    world_size: int
    axes: tuple[MeshAxis, ...]


@attrs.frozen(kw_only=True)
class MeshResult:
    lowering: MeshLowering | None
    """None when there are errors."""
    errors: tuple[MeshError, ...] = ()


def lower_mesh(
    ici: Mapping[str, int],
    dcn: Mapping[str, int] | None,
    *,
    nodes: int,
    procs_per_node: int,
    path: str = "$.parallel",
) -> MeshResult:
    """Resolve -1s, multiply ici by dcn, and map the axes to megatron-core's sizes; report every problem at once.

    ``ici`` is ``[parallel] mesh`` (per node), ``dcn`` is ``[parallel] dcn_mesh``
    (across nodes; None means MaxText's default). ``path`` prefixes the key
    paths in errors.
    """
    errors: list[MeshError] = []
    ici_values = _check_table(ici, f"{path}.mesh", "mesh", errors)
    dcn_values = _check_table(DEFAULT_DCN if dcn is None else dcn, f"{path}.dcn_mesh", "dcn_mesh", errors)
    if errors:
        return MeshResult(lowering=None, errors=tuple(errors))
    ici_sizes = _fill(
        ici_values, procs_per_node, f"{path}.mesh", "mesh", "processes per node (launch.procs_per_node)", errors
    )
    dcn_sizes = _fill(dcn_values, nodes, f"{path}.dcn_mesh", "dcn_mesh", "nodes (launch.nodes)", errors)
    if errors:
        return MeshResult(lowering=None, errors=tuple(errors))
    size = {axis: ici_sizes.get(axis, 1) * dcn_sizes.get(axis, 1) for axis in AXES}
    for axis, meaning in AXES.items():
        asked_fill = ici_values.get(axis) == -1 or dcn_values.get(axis) == -1
        if meaning.becomes is None and (size[axis] != 1 or asked_fill):
            table = "mesh" if axis in ici_values and ici_values[axis] != 1 else "dcn_mesh"
            errors.append(
                MeshError(
                    path=f"{path}.{table}.{axis}",
                    message=f"mesh axis {axis} = {size[axis] if not asked_fill else -1} has no Megatron counterpart "
                    f"({meaning.note})",
                    hint=f"set {axis} to 1 (or leave it out) and give those devices to data, fsdp, tensor or stage",
                )
            )
    if errors:
        return MeshResult(lowering=None, errors=tuple(errors))
    rows = tuple(
        MeshAxis(
            name=axis,
            ici=ici_sizes.get(axis, 1),
            dcn=dcn_sizes.get(axis, 1),
            size=size[axis],
            becomes=AXES[axis].becomes or "-",
            note=AXES[axis].note,
        )
        for axis in AXES
        if axis in ici_values or axis in dcn_values or size[axis] != 1
    )
    lowering = MeshLowering(
        tensor=size["tensor"] * size["tensor_sequence"],
        pipeline=size["stage"],
        context=size["context"] * size["context_usp_ulysses"],
        expert=size["expert"],
        data=size["data"] * size["fsdp"] * size["expert"],
        sequence_parallel=size["tensor_sequence"] > 1,
        distributed_optimizer=size["fsdp"] > 1,
        world_size=nodes * procs_per_node,
        axes=rows,
    )
    return MeshResult(lowering=lowering)


def _check_table(values: Mapping[str, int], path: str, key: str, errors: list[MeshError]) -> dict[str, int]:
    """Known axis names and sizes (-1 or >= 1); unknown names are errors with the likely meant axis."""
    good: dict[str, int] = {}
    for axis, value in values.items():
        if axis not in AXES:
            meant = _SPELLINGS.get(axis) or next(iter(difflib.get_close_matches(axis, list(AXES), n=1)), None)
            errors.append(
                MeshError(
                    path=f"{path}.{axis}",
                    message=f"{key} has no axis {axis!r}; the axes are MaxText's: {', '.join(AXES)}",
                    hint=f"did you mean {meant}?" if meant else None,
                )
            )
            continue
        if isinstance(value, bool) or not isinstance(value, int) or (value < 1 and value != -1):
            errors.append(
                MeshError(
                    path=f"{path}.{axis}",
                    message=f"{key}.{axis} = {value!r}: an axis size is a whole number >= 1, or -1 to fill",
                    hint=f"write {axis} = 1 to leave the axis unsplit",
                )
            )
            continue
        good[axis] = value
    fills = [axis for axis, value in good.items() if value == -1]
    if len(fills) > 1:
        errors.append(
            MeshError(
                path=f"{path}.{fills[1]}",
                message=f"{key} has -1 on more than one axis ({', '.join(fills)}); at most one axis can be filled "
                "from the device count (MaxText's rule)",
                hint="keep -1 on one of them and give the others a size",
            )
        )
    return good


def _fill(
    values: dict[str, int], target: int, path: str, key: str, target_name: str, errors: list[MeshError]
) -> dict[str, int]:
    """MaxText's fill_unspecified_mesh_axes: -1 becomes target / product of the rest; the product must be target."""
    known = math.prod(value for value in values.values() if value != -1)
    filled = dict(values)
    fill = next((axis for axis, value in values.items() if value == -1), None)
    if fill is not None:
        if target % known != 0:
            errors.append(
                MeshError(
                    path=f"{path}.{fill}",
                    message=f"{key}.{fill} = -1 cannot be filled: {target} {target_name} is not a multiple of "
                    f"{known}, the product of the other {key} axes",
                    hint=f"make the other {key} axes multiply to a divisor of {target}",
                )
            )
            return filled
        filled[fill] = target // known
    product = math.prod(filled.values())
    if product != target:
        sizes = " x ".join(f"{axis} {value}" for axis, value in filled.items() if value != 1) or "1"
        errors.append(
            MeshError(
                path=path,
                message=f"{key} multiplies to {product} ({sizes}) but there are {target} {target_name}",
                hint=f"change the sizes, or put -1 on one axis to fill it from the {target_name}",
            )
        )
    return filled


def explain_mesh(lowering: MeshLowering) -> list[str]:
    """The per-axis table and the resulting Megatron sizes, as lines for ``bridgec explain``."""
    width = max(len(row.name) for row in lowering.axes) if lowering.axes else 4
    lines = [f"{'axis':<{width}}  ici x dcn = size  ->  megatron"]
    for row in lowering.axes:
        lines.append(
            f"{row.name:<{width}}  {row.ici:>3} x {row.dcn:<3} = {row.size:<4}  ->  {row.becomes}  ({row.note})"
        )
    lines.append(
        f"megatron: TP={lowering.tensor} PP={lowering.pipeline} CP={lowering.context} EP={lowering.expert} "
        f"DP={lowering.data} (world {lowering.world_size} = TP x PP x CP x DP), "
        f"sequence_parallel={str(lowering.sequence_parallel).lower()}, "
        f"distributed_optimizer={str(lowering.distributed_optimizer).lower()}"
    )
    lines.append(
        "ranks are laid out by megatron-core (tp-cp-ep-dp-pp, TP innermost); the ici/dcn split sets sizes only"
    )
    return lines


_DECIDED_BY_MESH = ("tensor", "pipeline", "context", "expert", "sequence_parallel", "distributed_optimizer")


def key_path(path: str) -> tuple[str, ...]:
    """``$.parallel.mesh.tensor`` -> ``("parallel", "mesh", "tensor")``."""
    return tuple(part for part in path.removeprefix("$.").split(".") if part)


def resolve(spec: Spec, written: Callable[[tuple[str, ...]], bool]) -> tuple[Spec, tuple[MeshError, ...]]:
    """The spec with ``[parallel]`` sizes taken from its mesh (unchanged without one), and every mesh problem.

    ``written(path)`` says whether the spec text sets a key (sizes the mesh
    decides must not also be set by hand). Validation then runs on the resolved
    sizes, so every layout rule applies to a mesh too.
    """
    parallel = spec.parallel
    if parallel.mesh is None:
        if parallel.dcn_mesh is not None:
            return spec, (
                MeshError(
                    path="$.parallel.dcn_mesh",
                    message="[parallel] dcn_mesh splits a mesh across nodes, but there is no mesh",
                    hint="add mesh = { ... } under [parallel], or remove dcn_mesh",
                ),
            )
        return spec, ()
    clashes = [key for key in _DECIDED_BY_MESH if written(("parallel", key))]
    if clashes:
        return spec, tuple(
            MeshError(
                path=f"$.parallel.{key}",
                message=f"[parallel] mesh decides tensor, pipeline, context, expert, sequence_parallel and "
                f"distributed_optimizer, but {key} is also set",
                hint=f"remove {key}, or remove mesh and set the sizes directly",
            )
            for key in clashes
        )
    result = lower_mesh(
        parallel.mesh, parallel.dcn_mesh, nodes=spec.launch.nodes, procs_per_node=spec.launch.procs_per_node
    )
    if result.lowering is None:
        return spec, result.errors
    low = result.lowering
    resolved = attrs.evolve(
        parallel,
        tensor=low.tensor,
        pipeline=low.pipeline,
        context=low.context,
        expert=low.expert,
        sequence_parallel=low.sequence_parallel,
        distributed_optimizer=low.distributed_optimizer,
    )
    return attrs.evolve(spec, parallel=resolved), ()
