"""lower: defaults resolved, derived values computed once, each with its arithmetic."""

from __future__ import annotations

import tomllib

from bridgec.compiler.load import load
from bridgec.compiler.lower import Target, data_parallel, launch_command, lower, padded_vocab
from bridgec.compiler.plan import Plan
from bridgec.compiler.spec import Spec
from tests.compiler.conftest import spec_toml

TARGET = Target(spec_sha256="0" * 64, spec_path="spec.toml", output_name="run.py")


def _spec(**tables: dict | None) -> Spec:
    result = load(spec_toml(**tables), "spec.toml")
    assert result.spec is not None, result.diagnostics
    return result.spec


def _plan(**tables: dict | None) -> Plan:
    return lower(_spec(**tables), TARGET)


def test_derived_values_carry_their_arithmetic() -> None:
    plan = _plan(
        launch={"procs_per_node": 4}, parallel={"tensor": 2}, batch={"global_batch_size": 16, "micro_batch_size": 2}
    )
    assert plan.constant("WORLD_SIZE").value == 4
    assert plan.constant("WORLD_SIZE").why == "nodes 1 x procs_per_node 4"
    assert plan.constant("DATA_PARALLEL").value == 2
    assert plan.constant("DATA_PARALLEL").why == "world 4 / (tensor 2 x pipeline 1 x context 1)"
    assert plan.constant("NUM_MICROBATCHES").value == 4
    assert plan.constant("NUM_MICROBATCHES").why == "global 16 / (micro 2 x data 2)"
    assert plan.constant("PADDED_VOCAB_SIZE").value == 128  # the same model as at tensor 1
    assert plan.constant("PADDED_VOCAB_SIZE").why == (
        "vocab 128 rounded up to a multiple of 128 (lcm of make_vocab_size_divisible_by 128 and tensor 2)"
    )


def test_vocabulary_padding_does_not_depend_on_the_tensor_size_when_it_divides() -> None:
    sizes = [
        _plan(
            launch={"procs_per_node": tp}, parallel={"tensor": tp}, model={"vocab_size": 100, "num_attention_heads": 4}
        )
        .constant("PADDED_VOCAB_SIZE")
        .value
        for tp in (1, 2, 4)
    ]
    assert sizes == [128, 128, 128]
    odd = _plan(
        launch={"procs_per_node": 3},
        parallel={"tensor": 3},
        model={"vocab_size": 100, "num_attention_heads": 6, "hidden_size": 66},
        batch={"global_batch_size": 8, "micro_batch_size": 8},
    )
    assert odd.constant("PADDED_VOCAB_SIZE").value == 384  # lcm(128, 3)


def test_defaults_say_they_are_defaults() -> None:
    plan = _plan()
    assert plan.constant("FFN_HIDDEN_SIZE").value == 256
    assert plan.constant("FFN_HIDDEN_SIZE").why == "default: 4 x hidden 64"
    assert plan.constant("HEAD_DIM").why == "hidden 64 / heads 4"
    assert plan.constant("NUM_QUERY_GROUPS").why == "default: num_attention_heads 4"
    assert plan.constant("LR_DECAY_ITERS").why == "default: train.iters 10"
    assert plan.constant("OUTPUT_DIR").value == "out/quickstart"


def test_values_set_in_the_spec_have_no_comment() -> None:
    plan = _plan(model={"ffn_hidden_size": 100, "num_query_groups": 2})
    assert plan.constant("FFN_HIDDEN_SIZE").why is None
    assert plan.constant("NUM_QUERY_GROUPS").why is None


def test_only_the_sections_a_spec_needs() -> None:
    names = {c.name for s in _plan().sections for c in s.constants}
    assert "VIRTUAL_PIPELINE" not in names and "ROTARY_BASE" not in names and "NUM_EXPERTS" not in names
    assert "CHECKPOINT_DIR" not in names and "DATA_PREFIXES" not in names
    vpp = _plan(launch={"procs_per_node": 2}, parallel={"pipeline": 2, "virtual_pipeline": 2}, model={"num_layers": 4})
    assert vpp.constant("VIRTUAL_PIPELINE").value == 2
    assert vpp.constant("LAYERS_PER_CHUNK").why == "layers 4 / (pipeline 2 x virtual 2)"


def test_launch_command_for_one_and_many_nodes() -> None:
    one = _spec(launch={"procs_per_node": 8})
    assert launch_command(one, "run.py") == "torchrun --nnodes 1 --nproc-per-node 8 run.py"
    many = _spec(launch={"nodes": 4, "procs_per_node": 8})
    assert launch_command(many, "train.py") == (
        "torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST_OF_NODE_0:29500 train.py"
    )
    assert data_parallel(many) == 32
    assert padded_vocab(many) == 128


def test_user_strings_are_collected_for_verification() -> None:
    plan = _plan(run={"name": "x", "description": "hello"}, checkpoint={"dir": "ckpt"})
    assert plan.user_strings == ("x", "hello", "ckpt")
    assert tomllib  # the spec helpers round-trip through real TOML


def test_an_moe_teachers_orbax_load_reads_its_experts_on_each_expert_rank() -> None:
    """The teacher runs on the student's layout, experts split over EXPERT_PARALLEL: its Orbax load gets the rank,
    as the student's [init.checkpoint] load does (without it each rank would read every expert)."""
    teacher = {
        "num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "vocab_size": 128, "seq_length": 32,
        "num_experts": 4, "checkpoint": {"format": "orbax", "path": "teacher/0/items"},
    }  # fmt: skip
    moe = {"num_experts": 4, "add_bias_linear": False}
    plan = _plan(model=moe, parallel={"expert": 2}, launch={"procs_per_node": 2}, distill={"teacher": teacher})
    assert plan.distill is not None
    build = "\n".join(plan.distill.build)
    assert "        param_scan_axis=TEACHER_PARAM_SCAN_AXIS,\n        # An expert-parallel rank" in build
    assert "        expert_parallel=EXPERT_PARALLEL,\n        expert_rank=layout.expert_rank,\n    )" in build
    dense = _plan(
        model=moe,
        parallel={"expert": 2},
        launch={"procs_per_node": 2},
        distill={"teacher": {k: v for k, v in teacher.items() if k != "num_experts"}},
    )
    assert dense.distill is not None and "expert_parallel" not in "\n".join(dense.distill.build)
