"""Lowering a MaxText/JAX mesh to megatron-core sizes: MaxText's -1 and ici x dcn rules, and every error."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bridgec.compiler.mesh import MeshLowering, explain_mesh, lower_mesh


def lowered(ici: dict, dcn: dict | None = None, *, nodes: int = 1, procs_per_node: int = 8) -> MeshLowering:
    result = lower_mesh(ici, dcn, nodes=nodes, procs_per_node=procs_per_node)
    assert result.errors == (), result.errors
    assert result.lowering is not None
    return result.lowering


def errors(
    ici: dict, dcn: dict | None = None, *, nodes: int = 1, procs_per_node: int = 8
) -> list[tuple[str, str, str | None]]:
    result = lower_mesh(ici, dcn, nodes=nodes, procs_per_node=procs_per_node)
    assert result.lowering is None
    return [(e.path, e.message, e.hint) for e in result.errors]


def sizes(lowering: MeshLowering) -> tuple:
    return (
        lowering.tensor,
        lowering.pipeline,
        lowering.context,
        lowering.expert,
        lowering.data,
        lowering.sequence_parallel,
        lowering.distributed_optimizer,
    )


def test_maxtext_default_mesh_is_fsdp_over_everything() -> None:
    """base.yml: ici_fsdp_parallelism = -1, dcn_data_parallelism = -1."""
    assert sizes(lowered({"fsdp": -1})) == (1, 1, 1, 1, 8, False, True)


def test_issue_example() -> None:
    mesh = {"data": -1, "fsdp": 1, "tensor": 2, "stage": 2, "context": 1, "expert": 1}
    assert sizes(lowered(mesh)) == (2, 2, 1, 1, 2, False, False)


def test_ici_times_dcn_over_nodes() -> None:
    lowering = lowered({"data": -1, "tensor": 2}, nodes=2, procs_per_node=8)
    assert sizes(lowering) == (2, 1, 1, 1, 8, False, False)  # data: ici 4 x dcn 2
    assert lowering.world_size == 16
    data = next(row for row in lowering.axes if row.name == "data")
    assert (data.ici, data.dcn, data.size) == (4, 2, 8)


def test_dcn_table_with_its_own_fill() -> None:
    lowering = lowered({"fsdp": 4, "tensor": 2}, {"data": -1, "stage": 2}, nodes=4, procs_per_node=8)
    assert sizes(lowering) == (2, 2, 1, 1, 8, False, True)


def test_tensor_sequence_context_ulysses_and_expert() -> None:
    lowering = lowered(
        {"tensor_sequence": 2, "context": 2, "context_usp_ulysses": 2, "expert": 2, "data": -1}, procs_per_node=32
    )
    assert sizes(lowering) == (2, 1, 4, 2, 4, True, False)  # DP = data 2 x expert 2
    assert lowering.tensor * lowering.pipeline * lowering.context * lowering.data == 32


def test_size_one_axes_without_counterpart_are_fine() -> None:
    assert sizes(lowered({"diloco": 1, "fsdp_transpose": 1, "autoregressive": 1, "data": 8})) == (
        1,
        1,
        1,
        1,
        8,
        False,
        False,
    )


@pytest.mark.parametrize("axis", ["diloco", "fsdp_transpose", "autoregressive", "context_autoregressive"])
def test_axes_without_counterpart_are_errors(axis: str) -> None:
    [(path, message, hint)] = errors({axis: 2, "data": 4})
    assert path == f"$.parallel.mesh.{axis}"
    assert message.startswith(f"mesh axis {axis} = 2 has no Megatron counterpart")
    assert hint.startswith(f"set {axis} to 1")


def test_fill_on_an_axis_without_counterpart_is_an_error() -> None:
    [(path, message, _)] = errors({"diloco": -1, "data": 8})
    assert path == "$.parallel.mesh.diloco" and "diloco = -1 has no Megatron counterpart" in message


def test_unknown_axis_names_the_meant_one() -> None:
    [(path, message, hint)] = errors({"model": 2, "data": -1})
    assert path == "$.parallel.mesh.model"
    assert message.startswith("mesh has no axis 'model'; the axes are MaxText's: diloco, data, stage")
    assert hint == "did you mean tensor?"
    assert errors({"tensr": 2})[0][2] == "did you mean tensor?"


def test_more_than_one_fill() -> None:
    [(path, message, _)] = errors({"data": -1, "fsdp": -1})
    assert path == "$.parallel.mesh.fsdp"
    assert message == (
        "mesh has -1 on more than one axis (data, fsdp); at most one axis can be filled from the "
        "device count (MaxText's rule)"
    )


def test_fill_that_does_not_divide() -> None:
    [(path, message, _)] = errors({"data": -1, "tensor": 3})
    assert path == "$.parallel.mesh.data"
    assert message == (
        "mesh.data = -1 cannot be filled: 8 processes per node (launch.procs_per_node) is not a "
        "multiple of 3, the product of the other mesh axes"
    )


def test_product_mismatch_in_either_table() -> None:
    [(path, message, hint)] = errors({"data": 2, "tensor": 2})
    assert path == "$.parallel.mesh"
    assert (
        message == "mesh multiplies to 4 (data 2 x tensor 2) but there are 8 processes per node (launch.procs_per_node)"
    )
    assert hint.startswith("change the sizes, or put -1 on one axis")
    [(path, message, _)] = errors({"data": -1}, {"data": 3}, nodes=2)
    assert path == "$.parallel.dcn_mesh" and "there are 2 nodes (launch.nodes)" in message


@pytest.mark.parametrize("value", [0, -2, 1.5, True, "2"])
def test_sizes_are_whole_numbers_or_minus_one(value: object) -> None:
    [(path, message, _)] = errors({"data": -1, "tensor": value})
    assert path == "$.parallel.mesh.tensor"
    assert message.startswith(f"mesh.tensor = {value!r}: an axis size is a whole number >= 1, or -1 to fill")


def test_explain_table() -> None:
    lines = explain_mesh(lowered({"data": -1, "tensor": 2, "stage": 2}, nodes=2, procs_per_node=4))
    assert lines[0].startswith("axis")
    assert any(line.startswith("data") and "1 x 2   = 2" in line and "->  DP" in line for line in lines)
    assert any(line.startswith("tensor") and "->  TP" in line for line in lines)
    assert lines[-2] == (
        "megatron: TP=2 PP=2 CP=1 EP=1 DP=2 (world 8 = TP x PP x CP x DP), "
        "sequence_parallel=false, distributed_optimizer=false"
    )


def test_modules_explain_and_import_use_load_no_torch_jax_or_megatron() -> None:
    code = (
        "import sys, bridgec.compiler.mesh, bridgec.compiler.maxtext, bridgec.runtime.decay_mask, "
        "bridgec.runtime.schedules; "
        "bad = [m for m in ('torch', 'jax', 'megatron') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
