"""[launch], [parallel] and [batch] from a MaxText config: devices over nodes, the ici/dcn mesh, the pipeline, and
the batch as megatron-core's microbatches.
"""

from __future__ import annotations

import attrs

from bridgec.compiler.maxtext_model import ModelFacts
from bridgec.compiler.maxtext_read import ConfigReader
from bridgec.compiler.mesh import lower_mesh

_MESH_KEYS = {
    "diloco": "diloco",
    "data": "data",
    "stage": "pipeline",
    "fsdp": "fsdp",
    "fsdp_transpose": "fsdp_transpose",
    "sequence": "sequence",
    "context": "context",
    "context_usp_ulysses": "context_usp_ulysses",
    "context_autoregressive": "context_autoregressive",
    "tensor": "tensor",
    "tensor_sequence": "tensor_sequence",
    "model": "tensor",
    "expert": "expert",
    "autoregressive": "autoregressive",
}
"""Mesh axis -> the <x> of MaxText's ici_<x>_parallelism / dcn_<x>_parallelism (configs/types.py)."""


@attrs.frozen(kw_only=True)
class LaunchFacts:
    """The devices of the run, as the mesh and the batch need them."""

    devices: int
    nodes: int
    procs_per_node: int


def map_launch(reader: ConfigReader, *, devices: int, nodes: int | None, device: str) -> LaunchFacts:
    """[launch]: ``devices`` over the nodes (``nodes``, else MaxText's num_slices, else 1)."""
    slices = reader.get("num_slices", -1)
    count = nodes if nodes is not None else (slices if isinstance(slices, int) and slices > 0 else 1)
    if nodes is not None and isinstance(slices, int) and slices > 0 and slices != nodes:
        reader.refuse(
            "num_slices",
            f"num_slices = {slices} but the import was asked for {nodes} nodes",
            "give --nodes the slice count, or leave num_slices at -1",
        )
    if devices < 1 or count < 1 or devices % count:
        reader.refuse(
            "num_slices",
            f"{devices} devices do not split evenly over {count} nodes",
            "give --devices a multiple of --nodes",
        )
        count = 1
    procs_per_node = max(devices // count, 1)
    hardware = reader.get("hardware")
    reader.put("launch", "device", device, f"MaxText hardware {hardware!r}; the target is the import's --device")
    reader.put("launch", "nodes", count, "MaxText slices (num_slices, or --nodes)")
    reader.put("launch", "procs_per_node", procs_per_node, f"{devices} devices / {count} node(s)")
    return LaunchFacts(devices=devices, nodes=count, procs_per_node=procs_per_node)


def map_parallel_and_batch(reader: ConfigReader, model: ModelFacts, launch: LaunchFacts) -> None:
    """[parallel] from the mesh axes, then [batch] (which needs the data-parallel size and the pipeline)."""
    ici, dcn = _mesh(reader)
    result = lower_mesh(ici, dcn, nodes=launch.nodes, procs_per_node=launch.procs_per_node)
    for problem in result.errors:
        axis = problem.path.rsplit(".", 1)[-1]
        kind = "dcn" if ".dcn_mesh" in problem.path else "ici"
        key = f"{kind}_{_MESH_KEYS.get(axis, axis)}_parallelism" if axis in _MESH_KEYS else f"{kind}_*_parallelism"
        reader.refuse(key, problem.message.replace("dcn_mesh", "dcn").replace("mesh", "ici"), problem.hint)
    if result.lowering is None:
        return
    lowering = result.lowering
    mesh = {axis: value for axis, value in ici.items() if value != 1} or {"data": ici.get("data", 1)}
    reader.put("parallel", "mesh", mesh, "MaxText ici_*_parallelism (the axes not 1)")
    dcn_shown = {axis: value for axis, value in dcn.items() if value != 1}
    if dcn_shown != {"data": -1}:
        reader.put("parallel", "dcn_mesh", dcn_shown or {"data": 1}, "MaxText dcn_*_parallelism (the axes not 1)")
    if reader.get("shard_optimizer_over_data"):
        reader.put("parallel", "distributed_optimizer", True, reader.src("shard_optimizer_over_data"))
    reader.caveat(
        f"mesh resolves to TP={lowering.tensor} PP={lowering.pipeline} CP={lowering.context} EP={lowering.expert} "
        f"DP={lowering.data}" + (" with the distributed optimizer (fsdp)" if lowering.distributed_optimizer else "")
    )
    microbatches = _pipeline(reader, lowering.pipeline, model.layers)
    _batch(reader, launch.devices, lowering.data, microbatches)


def _mesh(reader: ConfigReader) -> tuple[dict[str, int], dict[str, int]]:
    """The ici and dcn sizes of each axis in mesh_axes (MaxText's older sequence/model axes renamed)."""
    ici: dict[str, int] = {}
    dcn: dict[str, int] = {}
    for axis in reader.get("mesh_axes") or []:
        name = _MESH_KEYS.get(axis)
        if name is None:
            reader.refuse("mesh_axes", f"mesh axis {axis!r} is not one of MaxText's training axes")
            continue
        ici[axis] = int(reader.get(f"ici_{name}_parallelism", 1))
        dcn[axis] = int(reader.get(f"dcn_{name}_parallelism", 1))
    for name in dict.fromkeys(_MESH_KEYS.values()):  # MaxText's axis order: the notes come out the same every run
        for kind in ("ici", "dcn"):
            key = f"{kind}_{name}_parallelism"
            if key in reader.config and key not in reader.used:
                reader.mark_read(key)
                if reader.config[key] != 1:
                    reader.note(
                        f"{key} = {reader.config[key]} is ignored: '{name}' is not in mesh_axes "
                        "(MaxText ignores it too)"
                    )
                else:
                    reader.mark_inactive(key, "its axis is not in mesh_axes")
    for old, new in (("sequence", "context"), ("model", "tensor")):
        if old in ici:
            ici[new] = ici.get(new, 1) * ici.pop(old)
            dcn[new] = dcn.get(new, 1) * dcn.pop(old)
    return ici, dcn


def _pipeline(reader: ConfigReader, stages: int, layers: int) -> int:
    """[parallel] virtual_pipeline for MaxText's circular pipeline; returns the pipeline microbatches per step."""
    keys = (
        "num_pipeline_microbatches",
        "num_layers_per_pipeline_stage",
        "num_pipeline_repeats",
        "pipeline_parallel_layers",
    )
    if stages == 1:
        reader.skip(keys, "only pipeline runs (stage > 1) read it")
        return 1
    if reader.get("pipeline_parallel_layers", -1) != -1:
        reader.refuse(
            "pipeline_parallel_layers",
            "pipelining only some layers has no Megatron counterpart",
            "set pipeline_parallel_layers=-1",
        )
    per_stage = int(reader.get("num_layers_per_pipeline_stage", 1))
    repeats = int(reader.get("num_pipeline_repeats", -1))
    if repeats == -1:
        if layers % (stages * per_stage):
            reader.refuse(
                "num_layers_per_pipeline_stage",
                f"{layers} layers do not split into {stages} stages x {per_stage} layers per stage",
            )
            return 1
        repeats = layers // (stages * per_stage)
    if repeats > 1:
        reader.put(
            "parallel",
            "virtual_pipeline",
            repeats,
            f"MaxText's circular pipeline: {repeats} repeats of {per_stage} layer(s) per stage",
        )
    microbatches = int(reader.get("num_pipeline_microbatches", -1))
    return stages if microbatches == -1 else microbatches


def _batch(reader: ConfigReader, devices: int, data_parallel: int, pipeline_microbatches: int) -> None:
    per_device = reader.get("per_device_batch_size")
    accumulation = int(reader.get("gradient_accumulation_steps", 1))
    per_step = int(devices * per_device)
    if per_step != devices * per_device:
        reader.note(
            f"int({devices} devices x per_device_batch_size {per_device}) = {per_step}: "
            "MaxText truncates the batch to whole sequences, and so does this spec"
        )
    share = data_parallel * pipeline_microbatches
    if per_step < share or per_step % share:
        smallest = share / devices
        reader.refuse(
            "per_device_batch_size",
            f"per_device_batch_size {per_device} on {devices} devices gives {per_step} sequences per "
            f"accumulation step for {data_parallel} data-parallel ranks"
            + (f" x {pipeline_microbatches} pipeline microbatches" if pipeline_microbatches > 1 else "")
            + "; megatron-core's micro batch is a whole number of sequences (>= 1) per rank",
            f"set per_device_batch_size to a multiple of {smallest:g} (e.g. per_device_batch_size={smallest:g}), "
            "or make the data-parallel size smaller with ici_tensor_parallelism or ici_pipeline_parallelism",
        )
        return
    micro = per_step // share
    reader.put(
        "batch",
        "global_batch_size",
        per_step * accumulation,
        f"int({devices} devices x per_device_batch_size {per_device}) x gradient_accumulation_steps {accumulation}",
    )
    reader.put(
        "batch",
        "micro_batch_size",
        micro,
        f"{per_step} / ({data_parallel} data-parallel ranks"
        + (f" x {pipeline_microbatches} num_pipeline_microbatches)" if pipeline_microbatches > 1 else ")")
        + f"; {accumulation * pipeline_microbatches} microbatches per step",
    )
