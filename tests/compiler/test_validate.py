"""validate: one test per rule (``test_<rule name>``), each asserting the exact diagnostics.

Specs come from ``spec_toml`` (conftest): MINIMAL's lines are
1 [run] / 2 name / 3 [model] / 4 num_layers / 5 hidden_size / 6 num_attention_heads /
7 vocab_size / 8 seq_length / 9 [batch] / 10 global_batch_size / 11 micro_batch_size /
12 [train] / 13 iters / 14 [optimizer] / 15 lr. New keys follow their table's last key;
new tables follow from line 16, in the order given.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from bridgec.compiler.errors import format_diagnostic
from bridgec.compiler.frontend import read_spec
from bridgec.compiler.validate import RULES, SpecContext, TokenizerSidecar, parse_tokenizer_sidecar
from tests.compiler.conftest import SPEC_DIR, MemoryFiles, front, idx_header, messages, spec_toml

TE = "transformer_engine"
DATA = {"data/tok.bin": "", "data/tok.idx": idx_header(100)}
INDEXED = {"kind": "indexed", "sources": [{"prefix": "data/tok"}]}


def check(tables: dict[str, Any], expected: list[str], files: dict[str, str] | None = None) -> None:
    assert messages(spec_toml(**tables), MemoryFiles(files)) == expected


def check_without_data(tables: dict[str, Any], expected: list[str], files: dict[str, str] | None = None) -> None:
    """As ``bridgec check`` validates: the data and checkpoints a run reads need not exist."""
    context = SpecContext(file="spec.toml", spec_dir=SPEC_DIR, files=MemoryFiles(files), require_data=False)
    result = read_spec(spec_toml(**tables), "spec.toml", context)
    assert [format_diagnostic(d) for d in result.diagnostics] == expected


def test_every_rule_is_registered_once_and_tested() -> None:
    from bridgec.compiler import (
        rules_distill,
        rules_files,
        rules_layout,
        rules_logging,
        rules_peft,
        rules_perf,
        rules_training,
        validate_interop,
    )
    from tests.compiler import test_validate_interop, test_validate_peft, test_validate_perf

    modules = (
        rules_layout,
        rules_training,
        rules_perf,
        rules_files,
        validate_interop,
        rules_logging,
        rules_peft,
        rules_distill,
    )
    defined = {name for module in modules for name in vars(module) if name.startswith("rule_")}
    registered = [rule.__name__ for rule in RULES]
    assert sorted(registered) == sorted(defined)
    tests = (
        set(globals())
        | set(vars(test_validate_interop))
        | set(vars(test_validate_peft))
        | set(vars(test_validate_perf))
    )
    untested = [name for name in registered if f"test_{name}" not in tests]
    assert untested == []


def test_minimal_spec_is_clean() -> None:
    result = front(spec_toml())
    assert result.spec is not None and result.diagnostics == ()


def test_diagnostics_are_sorted_by_line_and_carry_path_and_line() -> None:
    result = front(spec_toml(model={"hidden_size": 66}, optimizer={"lr": 0.0}))
    assert [(d.line, d.path, d.severity) for d in result.diagnostics] == [
        (5, "$.model.hidden_size", "error"),
        (15, "$.optimizer.lr", "error"),
    ]


def test_cross_field_rules_run_on_every_field_that_loaded_despite_load_errors() -> None:
    """Four type errors do not hide the layout and batch rules on the fields that did load."""
    text = spec_toml(
        run={"seed": "12"},
        launch={"procs_per_node": 3},
        model={"dropout": "0.1"},
        parallel={"tensor": 3},
        batch={"global_batch_size": 7},
        train={"log_interval": True},
        optimizer={"lr": "1e-3"},
    )
    assert messages(text) == [
        'spec.toml:3: $.run.seed = "12" must be an integer, got a string; hint: remove the quotes: 12',
        "spec.toml:7: $.model.num_attention_heads = 4 is not divisible by parallel.tensor = 3 (each tensor-parallel "
        "rank needs whole heads); hint: tensor = 2, or 6 heads",
        'spec.toml:10: $.model.dropout = "0.1" must be a number, got a string; hint: remove the quotes: 0.1',
        "spec.toml:12: $.batch.global_batch_size = 7 is not divisible by batch.micro_batch_size x data parallel = "
        "2 x 1 = 2 (each data-parallel rank runs whole microbatches; data parallel = world size 3 / (tensor x "
        "pipeline x context) 3); hint: global_batch_size = 6 or 8",
        "spec.toml:16: $.train.log_interval = true must be an integer, got a boolean; hint: the default is "
        "log_interval = 1",
        'spec.toml:18: $.optimizer.lr = "1e-3" must be a number, got a string; hint: remove the quotes: 1e-3',
    ]
    assert front(text).spec is None  # nothing downstream sees a partly loaded spec


def test_a_rule_that_reads_a_field_that_did_not_load_is_skipped() -> None:
    """No rule speaks about a value it does not have (lr > 0, heads vs tensor, eod_token vs a missing vocab_size)."""
    text = spec_toml(
        optimizer={"lr": "x"},
        parallel={"tensor": "2"},
        launch={"procs_per_node": 2},
        model={"vocab_size": None, "hidden_size": 96, "num_attention_heads": 3},
        data={"eod_token": 500},
    )
    assert messages(text) == [
        "spec.toml:3: missing required key 'vocab_size' in [model]; hint: add a line vocab_size = <integer> under "
        "[model]",
        'spec.toml:14: $.optimizer.lr = "x" must be a number, got a string',
        'spec.toml:16: $.parallel.tensor = "2" must be an integer, got a string; hint: remove the quotes: 2',
    ]


def test_findings_land_on_the_first_key_the_spec_writes() -> None:
    # [launch] is absent, so the world-size finding goes to parallel.tensor, its next key.
    result = front(spec_toml(parallel={"tensor": 2}))
    assert [(d.line, d.path) for d in result.diagnostics] == [(17, "$.parallel.tensor")]


def test_validate_reads_files_only_through_the_context() -> None:
    class Refuses:
        def exists(self, path: object) -> bool:
            raise AssertionError(f"looked at {path}")

        def read_text(self, path: object) -> str:
            raise AssertionError(f"read {path}")

    context = SpecContext(file="spec.toml", spec_dir=Path("/nowhere"), files=Refuses())
    assert read_spec(spec_toml(), "spec.toml", context).diagnostics == ()


# -- parallel layout ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tables", "expected"),
    [
        (
            {"launch": {"procs_per_node": 3}, "parallel": {"tensor": 2}},
            "spec.toml:17: world size = launch.nodes x procs_per_node = 1 x 3 = 3 is not divisible by parallel.tensor x "
            "pipeline x context = 2 x 1 x 1 = 2, so the ranks do not form whole data-parallel groups; "
            "hint: procs_per_node = 4 (data parallel 2), or tensor x pipeline x context = 1 or 3",
        ),
        (
            {"launch": {"nodes": 3, "procs_per_node": 2}, "parallel": {"tensor": 4}},
            "spec.toml:18: world size = launch.nodes x procs_per_node = 3 x 2 = 6 is not divisible by parallel.tensor x "
            "pipeline x context = 4 x 1 x 1 = 4, so the ranks do not form whole data-parallel groups; "
            "hint: procs_per_node = 4 (data parallel 3), or tensor x pipeline x context = 1, 2, 3 or 6",
        ),
    ],
    ids=["one-node", "three-nodes"],
)
def test_rule_world_divisible(tables: dict[str, Any], expected: str) -> None:
    check(tables, [expected])


def test_rule_global_batch_divisible() -> None:
    check(
        {"launch": {"procs_per_node": 2}, "batch": {"global_batch_size": 10}},
        [
            "spec.toml:10: $.batch.global_batch_size = 10 is not divisible by batch.micro_batch_size x data parallel = "
            "2 x 2 = 4 (each data-parallel rank runs whole microbatches; data parallel = world size 2 / (tensor x "
            "pipeline x context) 1); hint: global_batch_size = 8 or 12"
        ],
    )


@pytest.mark.parametrize(
    ("tables", "expected"),
    [
        (
            {"model": {"num_layers": 3}, "parallel": {"pipeline": 2}, "launch": {"procs_per_node": 2}},
            "spec.toml:4: $.model.num_layers = 3 is not divisible by parallel.pipeline = 2 (each pipeline stage holds "
            "the same number of layers); hint: num_layers = 2 or 4, or pipeline = 1 or 3",
        ),
        (
            {
                "model": {"num_layers": 4},
                "parallel": {"pipeline": 2, "virtual_pipeline": 4},
                "launch": {"procs_per_node": 2},
            },
            "spec.toml:4: $.model.num_layers = 4 is not divisible by parallel.pipeline x virtual_pipeline = 2 x 4 = 8 "
            "(each model chunk holds the same number of layers); hint: num_layers = 8, or a virtual_pipeline that "
            "divides 2 (the layers per stage)",
        ),
    ],
    ids=["pipeline", "virtual-pipeline"],
)
def test_rule_layers_divisible(tables: dict[str, Any], expected: str) -> None:
    check(tables, [expected])


@pytest.mark.parametrize(
    ("tables", "expected"),
    [
        (
            {"parallel": {"virtual_pipeline": 1}},
            "spec.toml:17: $.parallel.virtual_pipeline = 1 must be at least 2 (it is the number of model chunks per "
            "pipeline stage; one chunk is the plain pipeline schedule); hint: remove virtual_pipeline, or set it to 2 "
            "or more",
        ),
        (
            {"parallel": {"virtual_pipeline": 2}},
            "spec.toml:17: $.parallel.virtual_pipeline = 2 needs parallel.pipeline > 1 (the interleaved schedule splits "
            "each pipeline stage into chunks); hint: set pipeline = 2 or more, or remove virtual_pipeline",
        ),
        (
            {
                "model": {"num_layers": 4},
                "parallel": {"pipeline": 2, "virtual_pipeline": 2},
                "launch": {"procs_per_node": 2},
                "batch": {"global_batch_size": 6},
            },
            "spec.toml:10: the interleaved pipeline schedule (parallel.virtual_pipeline = 2) needs the number of "
            "microbatches to be a multiple of parallel.pipeline = 2, but global_batch_size / (micro_batch_size x data "
            "parallel) = 6 / (2 x 1) = 3; hint: global_batch_size = 4 or 8",
        ),
    ],
    ids=["one-chunk", "no-pipeline", "microbatches"],
)
def test_rule_virtual_pipeline(tables: dict[str, Any], expected: str) -> None:
    check(tables, [expected])


@pytest.mark.parametrize(
    ("tables", "expected"),
    [
        (
            {
                "model": {"hidden_size": 96, "num_attention_heads": 6},
                "parallel": {"tensor": 4},
                "launch": {"procs_per_node": 4},
            },
            "spec.toml:6: $.model.num_attention_heads = 6 is not divisible by parallel.tensor = 4 (each tensor-parallel "
            "rank needs whole heads); hint: tensor = 2 or 3, or 8 heads",
        ),
        (
            {
                "model": {"num_attention_heads": 8, "num_query_groups": 2},
                "parallel": {"tensor": 4},
                "launch": {"procs_per_node": 4},
            },
            "spec.toml:9: $.model.num_query_groups = 2 is not divisible by parallel.tensor = 4 (each tensor-parallel "
            "rank needs whole key/value groups); hint: tensor = 2, or 4 query groups",
        ),
    ],
    ids=["heads", "query-groups"],
)
def test_rule_heads_divisible_by_tensor(tables: dict[str, Any], expected: str) -> None:
    check(tables, [expected])


def test_rule_heads_divisible_by_groups() -> None:
    check(
        {"model": {"num_query_groups": 3}},
        [
            "spec.toml:9: $.model.num_attention_heads = 4 is not divisible by model.num_query_groups = 3 (each "
            "key/value group serves the same number of query heads); hint: num_query_groups = 1, 2 or 4"
        ],
    )


def test_rule_hidden_divisible_by_heads() -> None:
    check(
        {"model": {"hidden_size": 66}},
        [
            "spec.toml:5: $.model.hidden_size = 66 is not divisible by model.num_attention_heads = 4, so a head has no "
            "whole width (head_dim defaults to hidden_size / num_attention_heads); hint: hidden_size = 64 or 68, or set "
            "head_dim under [model]"
        ],
    )
    check({"model": {"hidden_size": 66, "head_dim": 16}}, [])


def test_rule_sequence_divisible_by_context() -> None:
    check(
        {
            "model": {"seq_length": 30, "transformer_impl": TE},
            "parallel": {"context": 2},
            "launch": {"device": "cuda", "procs_per_node": 2},
        },
        [
            "spec.toml:8: $.model.seq_length = 30 is not divisible by 2 x parallel.context = 4 (context parallelism "
            "cuts each sequence into 2 x context chunks to balance causal attention); hint: seq_length = 28 or 32"
        ],
    )


def test_rule_sequence_parallel_needs_tensor() -> None:
    check(
        {"parallel": {"sequence_parallel": True}, "model": {"transformer_impl": TE}, "launch": {"device": "cuda"}},
        [
            "spec.toml:18: $.parallel.sequence_parallel = true needs parallel.tensor > 1 (it splits norms and dropout "
            "along the sequence inside tensor-parallel regions); hint: set tensor = 2 or more, or remove "
            "sequence_parallel"
        ],
    )
    check(
        {"parallel": {"sequence_parallel": True, "tensor": 2}, "launch": {"procs_per_node": 2}},
        [
            'spec.toml:17: $.parallel.sequence_parallel = true needs model.transformer_impl = "transformer_engine" '
            "(megatron-core's local torch norms refuse sequence parallelism); hint: set transformer_impl = "
            '"transformer_engine" (and device = "cuda"), or remove sequence_parallel'
        ],
    )


@pytest.mark.parametrize(
    ("tables", "expected"),
    [
        (
            {"parallel": {"expert": 2}, "launch": {"procs_per_node": 2}},
            "spec.toml:17: $.parallel.expert = 2 needs model.num_experts (expert parallelism splits the experts of MoE "
            "layers, and this model is dense); hint: set num_experts under [model] to a multiple of 2, or remove expert",
        ),
        (
            {
                "model": {"num_experts": 3, "add_bias_linear": False},
                "parallel": {"expert": 2},
                "launch": {"procs_per_node": 2},
            },
            "spec.toml:9: $.model.num_experts = 3 is not divisible by parallel.expert = 2 (each expert-parallel rank "
            "holds the same number of experts); hint: num_experts = 2 or 4, or expert = 1 or 3",
        ),
        (
            {"model": {"num_experts": 2, "moe_router_topk": 4, "add_bias_linear": False}},
            "spec.toml:10: $.model.moe_router_topk = 4 is more than model.num_experts = 2 (a token cannot be routed to "
            "more experts than there are); hint: moe_router_topk = 2 or less",
        ),
        (
            {
                "model": {"num_experts": 4, "add_bias_linear": False},
                "parallel": {"tensor": 2},
                "launch": {"procs_per_node": 2},
            },
            "spec.toml:19: MoE layers (model.num_experts = 4) with parallel.tensor = 2 need parallel.sequence_parallel = "
            "true (megatron-core refuses to train MoE with tensor parallelism but without sequence parallelism); "
            'hint: set sequence_parallel = true under [parallel] (which needs transformer_impl = "transformer_engine"), '
            "or use expert parallelism instead of tensor",
        ),
    ],
    ids=["dense", "not-divisible", "topk", "tensor-without-sequence-parallel"],
)
def test_rule_experts(tables: dict[str, Any], expected: str) -> None:
    check(tables, [expected])


def test_rule_experts_without_biases() -> None:
    check(
        {"model": {"num_experts": 4}},
        [
            "spec.toml:9: MoE layers (model.num_experts = 4) need model.add_bias_linear = false (megatron-core adds "
            "expert biases in place, which autograd rejects in the backward pass); hint: set add_bias_linear = false "
            "under [model] (MoE models use no linear biases)"
        ],
    )


def test_rule_expert_fits_data_parallel() -> None:
    check(
        {
            "model": {"num_experts": 4, "add_bias_linear": False},
            "parallel": {"expert": 4},
            "launch": {"procs_per_node": 2},
        },
        [
            "spec.toml:19: $.parallel.expert = 4 does not divide data parallel x context = 2 x 1 = 2 (expert "
            "parallelism is carved out of the data- and context-parallel ranks); hint: expert = 1 or 2"
        ],
    )


# -- devices and number formats ----------------------------------------------------------------------


def test_rule_fp8_needs_cuda_and_transformer_engine() -> None:
    check(
        {"precision": {"fp8": "delayed"}},
        [
            'spec.toml:17: $.precision.fp8 = "delayed" needs launch.device = "cuda" (FP8 runs on GPU tensor cores); '
            'hint: set device = "cuda" under [launch], or remove fp8',
            'spec.toml:17: $.precision.fp8 = "delayed" needs model.transformer_impl = "transformer_engine" (the local '
            'layers have no FP8 path); hint: set transformer_impl = "transformer_engine" under [model], or remove fp8',
        ],
    )
    check({"precision": {"fp8": "delayed"}, "model": {"transformer_impl": TE}, "launch": {"device": "cuda"}}, [])


def test_rule_transformer_engine_needs_cuda() -> None:
    check(
        {"model": {"transformer_impl": TE}},
        [
            'spec.toml:9: $.model.transformer_impl = "transformer_engine" needs launch.device = "cuda" '
            '(transformer_engine\'s kernels run only on GPUs); hint: set device = "cuda" under [launch], or '
            'transformer_impl = "local"'
        ],
    )


def test_rule_context_needs_transformer_engine() -> None:
    check(
        {"parallel": {"context": 2}, "launch": {"procs_per_node": 2}},
        [
            'spec.toml:17: $.parallel.context = 2 needs model.transformer_impl = "transformer_engine" (megatron-core\'s '
            "context parallelism runs through transformer_engine attention); hint: set transformer_impl = "
            '"transformer_engine" under [model] (cuda only), or context = 1'
        ],
    )


# -- schedule and optimizer ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheduler", "expected"),
    [
        (
            {"warmup_iters": 10},
            "spec.toml:17: $.scheduler.warmup_iters = 10 must be less than train.iters = 10 (where decay ends when "
            "scheduler.decay_iters is unset): warmup has to end before the decay does; hint: warmup_iters below 10, e.g. 1",
        ),
        (
            {"warmup_iters": 30, "decay_iters": 20},
            "spec.toml:17: $.scheduler.warmup_iters = 30 must be less than scheduler.decay_iters = 20: warmup has to end "
            "before the decay does; hint: warmup_iters below 20, e.g. 2",
        ),
        (
            {"warmup_iters": 20, "decay_iters": 30},
            "spec.toml:17: $.scheduler.warmup_iters = 20 is more than train.iters = 10, so training would end during "
            "warmup; hint: warmup_iters = 10 or less, e.g. 1",
        ),
        (
            {"decay": "wsd"},
            'spec.toml:17: $.scheduler.decay = "wsd" needs scheduler.wsd_decay_iters (the length of the final decay '
            "phase); hint: add wsd_decay_iters = 1 under [scheduler]",
        ),
        (
            {"decay": "wsd", "wsd_decay_iters": 20},
            "spec.toml:18: $.scheduler.wsd_decay_iters = 20 is more than train.iters = 10 (where decay ends when "
            "scheduler.decay_iters is unset): the final decay phase is part of the decay; hint: wsd_decay_iters = 10 or "
            "less",
        ),
    ],
    ids=[
        "warmup-reaches-default-decay",
        "warmup-after-decay",
        "warmup-after-training",
        "wsd-without-length",
        "wsd-too-long",
    ],
)
def test_rule_schedule_lengths(scheduler: dict[str, Any], expected: str) -> None:
    check({"scheduler": scheduler}, [expected])


@pytest.mark.parametrize(
    ("tables", "expected"),
    [
        (
            {"optimizer": {"lr": 0.0}},
            "spec.toml:15: $.optimizer.lr = 0.0 must be greater than 0; hint: lr = 3e-4 is a common start for small GPT "
            "models",
        ),
        (
            {"optimizer": {"min_lr": -1e-4}},
            "spec.toml:16: $.optimizer.min_lr = -0.0001 must be 0 or more; hint: min_lr = 0.0 decays all the way down",
        ),
        (
            {"optimizer": {"min_lr": 0.01}},
            "spec.toml:16: $.optimizer.min_lr = 0.01 is more than optimizer.lr = 0.001 (the schedule decays from lr "
            "down to min_lr); hint: min_lr = 0.0, or anything up to 0.001",
        ),
        (
            {"scheduler": {"warmup_iters": 2, "warmup_init_lr": -0.1}},
            "spec.toml:18: $.scheduler.warmup_init_lr = -0.1 must be 0 or more; hint: warmup_init_lr = 0.0 warms up from "
            "zero",
        ),
        (
            {"scheduler": {"warmup_init_lr": 1.0, "warmup_iters": 2}},
            "spec.toml:17: $.scheduler.warmup_init_lr = 1.0 is more than optimizer.lr = 0.001 (warmup rises from "
            "warmup_init_lr to lr); hint: warmup_init_lr = 0.0, or anything up to 0.001",
        ),
    ],
    ids=["lr", "min-lr-negative", "min-lr-above-lr", "warmup-init-lr", "warmup-init-lr-above-lr"],
)
def test_rule_learning_rates(tables: dict[str, Any], expected: str) -> None:
    check(tables, [expected])


@pytest.mark.parametrize(
    ("optimizer", "expected"),
    [
        (
            {"betas": [1.0, -0.1]},
            [
                "spec.toml:16: $.optimizer.betas[0] = 1.0 must be in [0, 1) (it is the decay rate of Adam's running average "
                "of the gradient); hint: betas = [0.9, 0.95] or [0.9, 0.999]",
                "spec.toml:16: $.optimizer.betas[1] = -0.1 must be in [0, 1) (it is the decay rate of Adam's running average "
                "of the squared gradient); hint: betas = [0.9, 0.95] or [0.9, 0.999]",
            ],
        ),
        (
            {"eps": 0.0},
            [
                "spec.toml:16: $.optimizer.eps = 0.0 must be greater than 0 (it keeps Adam's update finite where the "
                "squared gradient average is 0); hint: eps = 1e-8"
            ],
        ),
        (
            {"weight_decay": -0.1},
            [
                "spec.toml:16: $.optimizer.weight_decay = -0.1 must be 0 or more; hint: weight_decay = 0.0 turns it off; "
                "0.1 is common for GPT pretraining"
            ],
        ),
        (
            {"clip_grad": -1.0},
            [
                "spec.toml:16: $.optimizer.clip_grad = -1.0 must be 0 or more (0 turns clipping off); hint: clip_grad = "
                "1.0, or 0.0 for no clipping"
            ],
        ),
        (
            {"name": "sgd", "sgd_momentum": 1.0},
            [
                "spec.toml:17: $.optimizer.sgd_momentum = 1.0 must be in [0, 1); hint: sgd_momentum = 0.9, or 0.0 for "
                "plain SGD"
            ],
        ),
    ],
    ids=["betas", "eps", "weight-decay", "clip-grad", "sgd-momentum"],
)
def test_rule_optimizer_settings(optimizer: dict[str, Any], expected: list[str]) -> None:
    check({"optimizer": optimizer}, expected)


@pytest.mark.parametrize(
    ("tables", "expected"),
    [
        (
            {
                "launch": {"procs_per_node": 2},
                "parallel": {"distributed_optimizer": True},
                "optimizer": {"name": "sgd"},
            },
            'spec.toml:16: $.optimizer.name = "sgd" cannot run with parallel.distributed_optimizer = true (megatron-core\'s '
            'distributed optimizer shards Adam\'s state and supports only Adam); hint: use name = "adam" under '
            "[optimizer], or set distributed_optimizer = false",
        ),
        (
            {"launch": {"procs_per_node": 2}, "parallel": {"mesh": {"fsdp": -1}}, "optimizer": {"name": "sgd"}},
            'spec.toml:16: $.optimizer.name = "sgd" cannot run with parallel.distributed_optimizer = true (megatron-core\'s '
            'distributed optimizer shards Adam\'s state and supports only Adam); hint: use name = "adam" under '
            "[optimizer], or set distributed_optimizer = false; with a mesh, parallel.distributed_optimizer is on when "
            "the mesh's fsdp axis is above 1: change it there",
        ),
    ],
    ids=["distributed-optimizer", "mesh-fsdp"],
)
def test_rule_distributed_optimizer_needs_adam(tables: dict[str, Any], expected: str) -> None:
    check(tables, [expected])


# -- counts, intervals and sizes ----------------------------------------------------------------------

_COUNTS = [
    ("launch", "nodes", 17),
    ("launch", "procs_per_node", 17),
    ("model", "num_layers", 4),
    ("model", "hidden_size", 5),
    ("model", "num_attention_heads", 6),
    ("model", "num_query_groups", 9),
    ("model", "head_dim", 9),
    ("model", "ffn_hidden_size", 9),
    ("model", "vocab_size", 7),
    ("model", "make_vocab_size_divisible_by", 9),
    ("model", "seq_length", 8),
    ("model", "num_experts", 9),
    ("parallel", "tensor", 17),
    ("parallel", "pipeline", 17),
    ("parallel", "context", 17),
    ("parallel", "expert", 17),
    ("batch", "global_batch_size", 10),
    ("batch", "micro_batch_size", 11),
    ("train", "iters", 13),
    ("train", "log_interval", 14),
    ("train", "eval_interval", 14),
    ("train", "exit_interval", 14),
    ("scheduler", "decay_iters", 17),
    ("checkpoint", "save_interval", 18),
    ("checkpoint", "keep_last", 18),
]


@pytest.mark.parametrize(("table", "key", "line"), _COUNTS, ids=[f"{t}.{k}" for t, k, _ in _COUNTS])
def test_rule_counts_at_least_one(table: str, key: str, line: int) -> None:
    # checkpoint keys, and early stops, are refused without a checkpoint folder: give them one
    extra = {"checkpoint": {"dir": "ck"}} if table == "checkpoint" or key == "exit_interval" else {}
    diagnostics = messages(spec_toml(**{**extra, table: {**extra.get(table, {}), key: 0}}))
    expected = f"spec.toml:{line}: $.{table}.{key} = 0 must be at least 1; hint: set {key} to 1 or more"
    assert expected in diagnostics
    # the other rules skip sizes below 1 instead of reporting them again
    assert [d for d in diagnostics if "warning" not in d] == [expected]


@pytest.mark.parametrize(
    ("tables", "expected"),
    [
        (
            {"train": {"eval_interval": 5, "eval_iters": 0}},
            "spec.toml:15: $.train.eval_iters = 0 must be at least 1; hint: set eval_iters to 1 or more",
        ),
        (
            {"model": {"num_experts": 2, "moe_router_topk": 0, "add_bias_linear": False}},
            "spec.toml:10: $.model.moe_router_topk = 0 must be at least 1; hint: set moe_router_topk to 1 or more",
        ),
        (
            {"scheduler": {"decay": "wsd", "wsd_decay_iters": 0}},
            "spec.toml:18: $.scheduler.wsd_decay_iters = 0 must be at least 1; hint: set wsd_decay_iters to 1 or more",
        ),
    ],
    ids=["eval-iters", "moe-router-topk", "wsd-decay-iters"],
)
def test_rule_counts_at_least_one_when_they_are_used(tables: dict[str, Any], expected: str) -> None:
    check(tables, [expected])


def test_rule_counts_at_least_one_skips_unused_settings() -> None:
    check(
        {"train": {"eval_iters": 0}},
        [
            "spec.toml:14: warning: $.train.eval_iters = 0 has no effect: it is only used with eval_interval; "
            "hint: remove it, or set eval_interval"
        ],
    )


@pytest.mark.parametrize(
    ("tables", "expected"),
    [
        (
            {"scheduler": {"warmup_iters": -1}},
            "spec.toml:17: $.scheduler.warmup_iters = -1 must be 0 or more; hint: set warmup_iters to 0 or more",
        ),
        (
            {"data": {"eod_token": -1}},
            "spec.toml:17: $.data.eod_token = -1 must be 0 or more; hint: set eod_token to 0 or more",
        ),
    ],
    ids=["warmup-iters", "eod-token"],
)
def test_rule_amounts_not_negative(tables: dict[str, Any], expected: str) -> None:
    check(tables, [expected])


def test_rule_evaluation_runs() -> None:
    check(
        {"train": {"eval_interval": 20}},
        [
            "spec.toml:14: warning: $.train.eval_interval = 20 is more than train.iters = 10, so no evaluation runs "
            "(one runs after every eval_interval-th step); hint: eval_interval = 10 or less, or remove eval_interval "
            "and eval_iters"
        ],
    )
    check({"train": {"eval_interval": 10}}, [])


@pytest.mark.parametrize(
    ("tables", "expected"),
    [
        (
            {"launch": {"timeout_minutes": 0.0}},
            "spec.toml:17: $.launch.timeout_minutes = 0.0 must be greater than 0; hint: timeout_minutes is in minutes, "
            "e.g. timeout_minutes = 10.0",
        ),
        (
            {"train": {"exit_duration_minutes": -1.0}, "checkpoint": {"dir": "ck"}},
            "spec.toml:14: $.train.exit_duration_minutes = -1.0 must be greater than 0; hint: exit_duration_minutes is "
            "in minutes, e.g. exit_duration_minutes = 10.0",
        ),
    ],
    ids=["timeout", "exit-duration"],
)
def test_rule_durations_positive(tables: dict[str, Any], expected: str) -> None:
    check(tables, [expected])


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (
            {"dropout": 1.0},
            "spec.toml:9: $.model.dropout = 1.0 must be in [0, 1) (it is the probability of zeroing an activation); "
            "hint: dropout = 0.0 turns it off; Megatron's default is 0.1",
        ),
        (
            {"norm_epsilon": 0.0},
            "spec.toml:9: $.model.norm_epsilon = 0.0 must be greater than 0 (it keeps the norm finite for an all-zero "
            "input); hint: norm_epsilon = 1e-5",
        ),
        (
            {"init_method_std": 0.0},
            "spec.toml:9: $.model.init_method_std = 0.0 must be greater than 0; hint: init_method_std = 0.02",
        ),
        (
            {"rotary_base": 0, "position_embedding": "rope"},
            "spec.toml:9: $.model.rotary_base = 0 must be at least 1; hint: rotary_base = 10000",
        ),
    ],
    ids=["dropout", "norm-epsilon", "init-method-std", "rotary-base"],
)
def test_rule_model_numbers(model: dict[str, Any], expected: str) -> None:
    check({"model": model}, [expected])


@pytest.mark.parametrize(
    ("run", "expected"),
    [
        (
            {"name": " "},
            'spec.toml:2: $.run.name = " " must be a non-empty name without slashes (it names the run\'s output folder, '
            'out/<name>); hint: name = "quickstart"',
        ),
        (
            {"name": "a/b"},
            'spec.toml:2: $.run.name = "a/b" must be a non-empty name without slashes (it names the run\'s output '
            'folder, out/<name>); hint: name = "quickstart"',
        ),
        (
            {"seed": -1},
            "spec.toml:3: $.run.seed = -1 must be in [0, 2^31) (numpy's and megatron-core's seeding need it, with "
            "per-rank offsets added, to fit in 32 bits); hint: seed = 1234",
        ),
    ],
    ids=["blank-name", "slash", "seed"],
)
def test_rule_run_identity(run: dict[str, Any], expected: str) -> None:
    check({"run": run}, [expected])


# -- data -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"kind": "indexed"},
            'spec.toml:17: $.data.kind = "indexed" needs at least one [[data.sources]] table (it names the .bin/.idx '
            'files to read); hint: add [[data.sources]] with prefix = "path/to/tokens" (the files\' path without '
            ".bin/.idx)",
        ),
        (
            {"sources": [{"prefix": "data/tok"}]},
            'spec.toml:17: $.data.sources has 1 entry, but data.kind = "mock" reads no files (mock data is synthetic); '
            'hint: set kind = "indexed" under [data], or remove the [[data.sources]] tables',
        ),
    ],
    ids=["indexed-without-sources", "mock-with-sources"],
)
def test_rule_data_sources_match_kind(data: dict[str, Any], expected: str) -> None:
    check({"data": data}, [expected])


def test_rule_data_files_exist() -> None:
    sources = [{"prefix": "data/tok"}, {"prefix": "data/b.bin"}, {"prefix": "/abs/c"}, {"prefix": "data/half"}]
    check(
        {"data": {"kind": "indexed", "eod_token": 0, "sources": sources}},
        [
            'spec.toml:20: $.data.sources[0].prefix = "data/tok": data/tok.bin and data/tok.idx do not exist (paths '
            "are relative to the spec's folder); hint: fix the prefix, or build the files with `bridgec data build`",
            'spec.toml:22: $.data.sources[1].prefix = "data/b.bin": data/b.bin.bin and data/b.bin.idx do not exist '
            '(paths are relative to the spec\'s folder); hint: leave out the extension: prefix = "data/b"',
            'spec.toml:24: $.data.sources[2].prefix = "/abs/c": /abs/c.bin and /abs/c.idx do not exist; hint: fix the '
            "prefix, or build the files with `bridgec data build`",
            'spec.toml:26: $.data.sources[3].prefix = "data/half": data/half.idx does not exist (paths are relative '
            "to the spec's folder); hint: fix the prefix, or build the files with `bridgec data build`",
        ],
        files={"data/half.bin": ""},
    )
    check({"data": {**INDEXED, "eod_token": 0}}, [], files=DATA)
    check_without_data({"data": {"kind": "indexed", "eod_token": 0, "sources": sources}}, [])


def test_rule_source_weights_positive() -> None:
    check(
        {"data": {**INDEXED, "eod_token": 0, "sources": [{"prefix": "data/tok", "weight": 0.0}]}},
        [
            "spec.toml:21: $.data.sources[0].weight = 0.0 must be greater than 0 (weights are shares of the blend, "
            "normalised over all sources); hint: weight = 1.0, or remove the source"
        ],
        files=DATA,
    )


@pytest.mark.parametrize(
    ("tables", "expected"),
    [
        (
            {"data": {**INDEXED, "split": [98.0, -1.0, 1.0], "eod_token": 0}},
            "spec.toml:18: $.data.split = [98.0, -1.0, 1.0] must be three shares of 0 or more (train, validation, test); "
            "hint: split = [98.0, 1.0, 1.0]",
        ),
        (
            {"data": {**INDEXED, "split": [0.0, 1.0, 1.0], "eod_token": 0}},
            "spec.toml:18: $.data.split = [0.0, 1.0, 1.0] leaves no training data (the first share is the training "
            "share); hint: split = [98.0, 1.0, 1.0]",
        ),
        (
            {"data": {**INDEXED, "split": [1.0, 0.0, 0.0], "eod_token": 0}, "train": {"eval_interval": 5}},
            "spec.toml:19: $.data.split = [1.0, 0.0, 0.0] leaves no validation data, but train.eval_interval = 5 "
            "evaluates on it; hint: give validation a share, as in split = [98.0, 1.0, 1.0], or remove eval_interval",
        ),
        (
            {"data": {"split": [100.0, 0.0, 0.0]}, "train": {"eval_interval": 5}},
            'spec.toml:18: $.data.split = [100.0, 0.0, 0.0] has no effect with data.kind = "mock": megatron-core splits '
            "its 100,000 synthetic sequences into three equal parts whatever the split says; hint: remove split, or set "
            'kind = "indexed" under [data]',
        ),
    ],
    ids=["negative", "no-train", "no-validation", "mock"],
)
def test_rule_split(tables: dict[str, Any], expected: str) -> None:
    check(tables, [expected], files=DATA)


@pytest.mark.parametrize(
    ("split", "documents", "train", "expected"),
    [
        (
            None,
            5,
            {},
            "spec.toml:20: $.data.split = [98.0, 1.0, 1.0] gives the validation and test splits of data.sources[0] "
            "(data/tok, 5 documents) no document: megatron-core gives a split documents round(start x n) to round(end x "
            "n), here validation round(0.98 x 5) = 5 to round(0.99 x 5) = 5; test round(0.99 x 5) = 5 to round(1 x 5) = "
            "5, and never finishes building a split without documents; hint: split = [4.0, 1.0, 0.0] (shares are "
            "normalised; bridgec never reads the test split), or build the data from more documents",
        ),
        (
            [99.9, 0.1, 0.0],
            200,
            {"eval_interval": 5},
            "spec.toml:19: $.data.split = [99.9, 0.1, 0.0] gives the validation split of data.sources[0] (data/tok, 200 "
            "documents) no document: megatron-core gives a split documents round(start x n) to round(end x n), here "
            "validation round(0.999 x 200) = 200 to round(1 x 200) = 200, and never finishes building a split without "
            "documents; hint: split = [199.0, 1.0, 0.0] (shares are normalised; bridgec never reads the test split), or "
            "build the data from more documents",
        ),
        (
            [90.0, 10.0, 0.0],
            1,
            {},
            "spec.toml:18: $.data.split = [90.0, 10.0, 0.0] gives the validation split of data.sources[0] (data/tok, 1 "
            "document) no document: megatron-core gives a split documents round(start x n) to round(end x n), here "
            "validation round(0.9 x 1) = 1 to round(1 x 1) = 1, and never finishes building a split without documents; "
            "hint: build the data from more documents: every split with a share needs at least one document of each "
            "source",
        ),
        ([100.0, 0.0, 0.0], 1, {}, None),
        ([3.0, 1.0, 0.0], 4, {"eval_interval": 5}, None),
    ],
    ids=["default-split-5-documents", "tiny-share", "one-document", "train-only", "just-enough"],
)
def test_rule_splits_have_documents(
    split: list[float] | None, documents: int, train: dict[str, Any], expected: str | None
) -> None:
    data = {**INDEXED, "eod_token": 0} if split is None else {**INDEXED, "split": split, "eod_token": 0}
    check(
        {"data": data, "train": train},
        [expected] if expected else [],
        files={"data/tok.bin": "", "data/tok.idx": idx_header(documents)},
    )


def test_rule_splits_have_documents_reads_only_the_index_header() -> None:
    check(
        {"data": {**INDEXED, "eod_token": 0}},
        [
            'spec.toml:20: $.data.sources[0].prefix = "data/tok": data/tok.idx is not an index file megatron-core can '
            "read: it does not start with megatron's index header (MMIDIDX); hint: rebuild the data with `bridgec data "
            "build`"
        ],
        files={"data/tok.bin": "", "data/tok.idx": b"not an index file, but long enough for a header"},
    )
    check(
        {"data": {**INDEXED, "eod_token": 0}},
        [
            'spec.toml:20: $.data.sources[0].prefix = "data/tok": data/tok.idx is not an index file megatron-core can '
            "read: it is 0 bytes long, shorter than the 34-byte header of an index file; hint: rebuild the data with "
            "`bridgec data build`"
        ],
        files={"data/tok.bin": "", "data/tok.idx": b""},
    )


def test_rule_eod_token_in_vocab() -> None:
    check(
        {"data": {"eod_token": 128}},
        [
            "spec.toml:17: $.data.eod_token = 128 is not a token id of model.vocab_size = 128 (ids run from 0 to 127); "
            "hint: eod_token = 127 or less, or a larger vocab_size"
        ],
    )


GPT2 = '{"tokenizer": "gpt2", "vocab_size": 50257, "eod": 50256}'


@pytest.mark.parametrize(
    ("eod", "sidecar", "expected"),
    [
        (
            None,
            None,
            [
                "spec.toml:19: $.data.eod_token is not set, and there is no tokenizer file data/tok.json next to the first "
                "source to read it from; hint: set eod_token under [data] to your tokenizer's end-of-document id, or "
                "rebuild the data with `bridgec data build`, which writes data/tok.json"
            ],
        ),
        (5, None, []),
        (
            None,
            "{",
            [
                "spec.toml:19: data/tok.json is not a tokenizer file bridgec can read: invalid JSON at line 1: Expecting "
                "property name enclosed in double quotes; hint: rebuild the data with `bridgec data build`, or delete the "
                "file and set eod_token under [data]"
            ],
        ),
        (
            None,
            GPT2,
            [
                "spec.toml:7: $.model.vocab_size = 128 is smaller than the vocabulary of the data's tokenizer, 50257 "
                "(data/tok.json), so some token ids would fall outside the embedding; hint: vocab_size = 50257"
            ],
        ),
        (None, '{"tokenizer": "byte", "vocab_size": 100, "eod": 3}', []),
        (
            5,
            '{"tokenizer": "byte", "vocab_size": 100, "eod": 3}',
            [
                "spec.toml:18: warning: $.data.eod_token = 5 differs from the end-of-document id of the data's tokenizer, "
                "3 (data/tok.json); hint: remove eod_token to use 3"
            ],
        ),
    ],
    ids=["no-sidecar-no-eod", "no-sidecar-eod", "damaged", "vocab-too-small", "fine", "eod-differs"],
)
def test_rule_tokenizer_sidecar(eod: int | None, sidecar: str | None, expected: list[str]) -> None:
    files = DATA if sidecar is None else {**DATA, "data/tok.json": sidecar}
    check({"data": {**INDEXED, "eod_token": eod}}, expected, files=files)
    # Without the data files (bridgec check), the committed tokenizer file is read all the same.
    check_without_data(
        {"data": {**INDEXED, "eod_token": eod}}, expected, files=None if sidecar is None else {"data/tok.json": sidecar}
    )


def test_a_missing_vocab_size_gets_the_value_the_data_tokenizer_file_knows() -> None:
    text = spec_toml(model={"vocab_size": None}, data=INDEXED)
    sidecar = {"data/tok.json": '{"tokenizer": "bytes", "vocab_size": 257, "eod": 256}'}
    assert messages(text, MemoryFiles({**DATA, **sidecar})) == [
        "spec.toml:3: missing required key 'vocab_size' in [model]; hint: add vocab_size = 257 under [model] (the "
        "vocabulary of data/tok.json, the data's tokenizer)"
    ]
    assert messages(text, MemoryFiles(DATA)) == [  # no tokenizer file: the plain hint (eod_token is then unset too)
        "spec.toml:3: missing required key 'vocab_size' in [model]; hint: add a line vocab_size = <integer> under "
        "[model]",
        "spec.toml:18: $.data.eod_token is not set, and there is no tokenizer file data/tok.json next to the first "
        "source to read it from; hint: set eod_token under [data] to your tokenizer's end-of-document id, or rebuild "
        "the data with `bridgec data build`, which writes data/tok.json",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GPT2, TokenizerSidecar(tokenizer="gpt2", vocab_size=50257, eod=50256)),
        ("[]", "it is not a JSON object"),
        ('{"tokenizer": "gpt2", "vocab_size": 10}', "it has no 'eod'"),
        ('{"tokenizer": "gpt2", "vocab_size": "10", "eod": 1}', "'vocab_size' is not an integer"),
        ('{"tokenizer": "gpt2", "vocab_size": 10, "eod": 10}', "eod = 10 is not a token id of vocab_size = 10"),
    ],
)
def test_parse_tokenizer_sidecar(text: str, expected: TokenizerSidecar | str) -> None:
    assert parse_tokenizer_sidecar(text) == expected


# -- checkpoints ----------------------------------------------------------------------------------


def test_rule_checkpoint_needs_dir() -> None:
    hint = 'hint: add dir = "checkpoints" under [checkpoint]'
    check(
        {"checkpoint": {"save_interval": 5, "resume": True, "keep_last": 2}},
        [
            "spec.toml:17: $.checkpoint.save_interval = 5 needs checkpoint.dir (the folder checkpoints are saved in "
            f"and resumed from); {hint}",
            "spec.toml:18: $.checkpoint.resume = true needs checkpoint.dir (the folder checkpoints are saved in and "
            f"resumed from); {hint}",
            "spec.toml:19: $.checkpoint.keep_last = 2 needs checkpoint.dir (the folder checkpoints are saved in and "
            f"resumed from); {hint}",
        ],
    )
    check({"checkpoint": {"dir": "ck", "save_interval": 5, "resume": True, "keep_last": 2}}, [])
    check(
        {"checkpoint": {"overwrite": True}},
        [
            "spec.toml:17: $.checkpoint.overwrite = true needs checkpoint.dir (the folder checkpoints are saved in and "
            f"resumed from); {hint}"
        ],
    )
    check(
        {"checkpoint": {"async_save": True}},
        [
            "spec.toml:17: $.checkpoint.async_save = true needs checkpoint.dir (the folder checkpoints are saved in "
            f"and resumed from); {hint}"
        ],
    )
    check({"checkpoint": {"async_save": False}}, [])


def test_rule_overwrite_needs_a_fresh_start() -> None:
    check(
        {"checkpoint": {"dir": "ck", "resume": True, "overwrite": True}},
        [
            "spec.toml:19: $.checkpoint.overwrite = true deletes the checkpoints a fresh start finds, but "
            "checkpoint.resume = true continues from them, so it would never act; hint: remove overwrite (to "
            "continue), or set resume = false (to start over)"
        ],
    )
    check({"checkpoint": {"dir": "ck", "overwrite": True}}, [])


def test_rule_checkpoints_need_adam() -> None:
    check(
        {"optimizer": {"lr": 1e-3, "name": "sgd"}, "checkpoint": {"dir": "ckpt"}},
        [
            'spec.toml:18: $.checkpoint.dir is set, but optimizer.name = "sgd": megatron-core 0.16 cannot checkpoint its '
            'SGD optimizer (it has no state initialiser to load into); hint: use name = "adam" under [optimizer], or '
            "remove [checkpoint] dir"
        ],
    )
    check(
        {
            "optimizer": {"lr": 1e-3, "name": "sgd"},
            "model": LLAMA,
            "init": {"checkpoint": {"format": "orbax", "path": "ck", "optimizer_state": True}},
        },
        [
            'spec.toml:22: $.init.checkpoint.optimizer_state = true loads Adam moments, but optimizer.name = "sgd"; '
            'hint: use name = "adam" under [optimizer], or set optimizer_state = false'
        ],
        files={"ck": ""},
    )


def test_rule_stopping_saves_a_checkpoint() -> None:
    loops = (
        "but checkpoint.dir is not set: nothing is saved, and each launch would start over from step 0 and stop "
        'again (a scheduler that requeues on exit 75 loops forever); hint: add dir = "checkpoints" under '
        "[checkpoint]"
    )
    check(
        {"train": {"exit_interval": 5, "exit_duration_minutes": 60.0, "on_nonfinite": "stop"}},
        [
            f"spec.toml:14: $.train.exit_interval = 5 stops the run to resume it later, {loops}",
            f"spec.toml:15: $.train.exit_duration_minutes = 60.0 stops the run to resume it later, {loops}",
            'spec.toml:16: warning: $.train.on_nonfinite = "stop" saves a checkpoint before stopping, but checkpoint.dir '
            'is not set: nothing is saved and the run cannot resume; hint: add dir = "checkpoints" under [checkpoint]',
        ],
    )
    check({"train": {"exit_interval": 5}, "checkpoint": {"dir": "ckpt"}}, [])


LLAMA = {"normalization": "rmsnorm", "add_bias_linear": False, "position_embedding": "rope", "activation": "swiglu"}


def test_rule_init_checkpoint_exists() -> None:
    checkpoint = {"checkpoint": {"format": "orbax", "path": "ckpt/1000/items"}}
    check(
        {"init": checkpoint, "model": LLAMA},
        [
            'spec.toml:21: $.init.checkpoint.path = "ckpt/1000/items" does not exist (paths are relative to the spec\'s '
            "folder); hint: point it at the checkpoint's item folder, e.g. ckpt/1000/items"
        ],
    )
    check({"init": checkpoint, "model": LLAMA}, [], files={"ckpt/1000/items": ""})
    check_without_data({"init": checkpoint, "model": LLAMA}, [])
    check(
        {"init": {"checkpoint": {"format": "megatron", "path": "mlm"}}},
        [
            'spec.toml:17: $.init.checkpoint.path = "mlm" does not exist (paths are relative to the spec\'s folder); '
            "hint: point it at Megatron-LM's save folder (the one holding latest_checkpointed_iteration.txt), a "
            "bridgec [checkpoint] dir or one iter_* folder"
        ],
    )
    check(
        {"init": {"checkpoint": {"format": "huggingface", "path": "llama"}}, "model": LLAMA},
        [
            'spec.toml:21: $.init.checkpoint.path = "llama" does not exist (paths are relative to the spec\'s '
            "folder); hint: point it at the Hugging Face model folder (the one holding config.json and the "
            "safetensors)"
        ],
    )


def test_rule_megatron_init_settings() -> None:
    megatron = {"format": "megatron", "path": "mlm"}
    # Any architecture: the checkpoint's own args are compared at load time (no Llama-family requirement).
    check({"init": {"checkpoint": megatron}}, [], files={"mlm": ""})
    # Megatron-LM's optimizer state, schedule and iteration continue (what cannot is refused at load time).
    check({"init": {"checkpoint": {**megatron, "optimizer_state": True}}}, [], files={"mlm": ""})
    check(
        {
            "init": {
                "checkpoint": {**megatron, "rope_layout": "interleaved", "param_scan_axis": 0, "optimizer_state": True}
            }
        },
        [
            "spec.toml:17: $.init.checkpoint.param_scan_axis = 0 applies to Orbax checkpoints only; format = "
            '"megatron" reads megatron-core\'s own tensor names and layout; hint: remove param_scan_axis from '
            "[init.checkpoint]",
            'spec.toml:17: $.init.checkpoint.rope_layout = "interleaved" applies to Orbax checkpoints only; format = '
            '"megatron" reads megatron-core\'s own tensor names and layout; hint: remove rope_layout from '
            "[init.checkpoint]",
        ],
        files={"mlm": ""},
    )


def test_rule_finetune_start() -> None:
    check(
        {"train": {"iters": 10, "mode": "finetune"}},
        [
            'spec.toml:14: $.train.mode = "finetune" needs pretrained weights to start from, and the spec has no '
            "[init.checkpoint]; hint: an [init.checkpoint] table with the format and path of the pretrained "
            'checkpoint, or mode = "pretrain"'
        ],
    )
    init = {"checkpoint": {"format": "orbax", "path": "ck"}}
    check({"train": {"iters": 10, "mode": "finetune"}, "init": init, "model": LLAMA}, [], files={"ck": ""})
    check(
        {
            "train": {"iters": 10, "mode": "finetune"},
            "init": {"checkpoint": {**init["checkpoint"], "optimizer_state": True}},
            "model": LLAMA,
        },
        [
            'spec.toml:22: $.init.checkpoint.optimizer_state = true with train.mode = "finetune": a fine-tune starts '
            "its optimizer state and learning-rate schedule fresh at step 0, so the pretraining run's would be "
            'ignored; hint: optimizer_state = false, or mode = "pretrain" to continue the pretraining run itself'
        ],
        files={"ck": ""},
    )


# -- hooks ----------------------------------------------------------------------------------------

HOOKS = {"file": "hooks.py", "forward_step": "forward_step", "loss": "my_loss"}
BOTH_HOOKS = (
    "spec.toml:19: hooks.forward_step and hooks.loss are both set, but a forward_step returns its own loss "
    "function, so hooks.loss would never be called; hint: remove hooks.loss and return your loss function "
    "from your forward_step"
)


def _line(message: str) -> int:
    return int(message.split(":")[1])


GOOD_HOOKS = (
    "def forward_step(state, data_iterator, model, return_schedule_plan=False):\n    pass\n\n\n"
    "def my_loss(loss_mask, output_tensor):\n    pass\n"
)


def test_rule_hooks_need_file() -> None:
    check(
        {"hooks": {"forward_step": "step"}},
        [
            'spec.toml:17: $.hooks.forward_step = "step" needs hooks.file (the Python file that defines it); hint: add '
            'file = "hooks.py" under [hooks]'
        ],
    )
    check(
        {"hooks": {"loss": "my_loss"}},
        [
            'spec.toml:17: $.hooks.loss = "my_loss" needs hooks.file (the Python file that defines it); hint: add '
            'file = "hooks.py" under [hooks]'
        ],
    )


@pytest.mark.parametrize(
    ("hooks", "source", "expected"),
    [
        (HOOKS, GOOD_HOOKS, []),
        (
            HOOKS,
            None,
            [
                'spec.toml:17: $.hooks.file = "hooks.py" does not exist (paths are relative to the spec\'s '
                "folder); hint: create it, or fix the path"
            ],
        ),
        (
            HOOKS,
            "def forward_step(:\n    pass\n",
            [
                'spec.toml:17: $.hooks.file = "hooks.py" is not valid Python: hooks.py:1:18: invalid syntax; hint: fix '
                "line 1 of hooks.py"
            ],
        ),
        (
            HOOKS,
            GOOD_HOOKS.replace("def my_loss(loss_mask, ", "def my_loss("),
            [
                'spec.toml:19: $.hooks.loss = "my_loss": def my_loss(output_tensor) at hooks.py:5 takes 1 positional '
                "parameter, but is called with 2: (loss_mask, output_tensor); hint: define it as def my_loss(loss_mask, "
                "output_tensor)"
            ],
        ),
        (
            HOOKS,
            GOOD_HOOKS.replace("def forward_step", "def forwrd_step"),
            [
                'spec.toml:18: $.hooks.forward_step = "forward_step" is not a top-level function of hooks.py; hint: did you '
                "mean 'forwrd_step'?"
            ],
        ),
        (
            HOOKS,
            "x = 1\n",
            [
                'spec.toml:18: $.hooks.forward_step = "forward_step" is not a top-level function of hooks.py; hint: define '
                "def forward_step(state, data_iterator, model, return_schedule_plan=False) at the top level of hooks.py",
                'spec.toml:19: $.hooks.loss = "my_loss" is not a top-level function of hooks.py; hint: define def '
                "my_loss(loss_mask, output_tensor) at the top level of hooks.py",
            ],
        ),
        (
            {"file": "hooks.py"},
            GOOD_HOOKS,
            [
                'spec.toml:17: warning: $.hooks.file = "hooks.py" is not used: neither hooks.forward_step nor hooks.loss '
                'names a function in it; hint: name one, as forward_step = "my_forward_step", or remove file'
            ],
        ),
    ],
    ids=["fine", "missing", "syntax-error", "signature", "did-you-mean", "not-defined", "unused"],
)
def test_rule_hook_functions(hooks: dict[str, str], source: str | None, expected: list[str]) -> None:
    # These cases name both hooks to check both signatures; that combination is itself an error (rule_both_hooks).
    both = [BOTH_HOOKS] if "forward_step" in hooks and "loss" in hooks else []
    check({"hooks": hooks}, sorted(expected + both, key=_line), files=None if source is None else {"hooks.py": source})


GOOD_CALLBACKS = "class Alarm:\n    def on_train_step_end(self, context):\n        pass\n"
CALLBACKS_FILE = (
    "class Alarm:\n"
    "    def __init__(self):\n        self.slow = 0\n\n"
    "    def on_train_start(self, context):\n        pass\n\n"
    "    def on_trian_step_end(self, context):\n        pass\n\n"
    "    def on_eval_end(self):\n        pass\n\n"
    "    def report(self, context):\n        pass\n\n"
    "    def _helper(self):\n        pass\n"
)


@pytest.mark.parametrize(
    ("callbacks", "source", "expected"),
    [
        (["cb.py:Alarm"], GOOD_CALLBACKS, []),
        (
            ["cb.py:Alarm"],
            CALLBACKS_FILE,
            [
                'spec.toml:17: $.hooks.callbacks[0] = "cb.py:Alarm": Alarm.on_eval_end (cb.py:11) takes 1 positional '
                "parameter, but is called with 2: (self, context); hint: define it as def on_eval_end(self, context)",
                'spec.toml:17: $.hooks.callbacks[0] = "cb.py:Alarm": Alarm.on_trian_step_end (cb.py:8) is not a '
                "training event, so it would never be called; hint: did you mean 'on_train_step_end'?",
                'spec.toml:17: $.hooks.callbacks[0] = "cb.py:Alarm": Alarm.report (cb.py:14) is not a training event, '
                "so it would never be called; hint: rename it to one of on_train_start, on_train_step_start, "
                "on_train_step_end, on_train_end, on_eval_start, on_eval_end, on_checkpoint_save, on_checkpoint_load, "
                "on_exception, or start its name with an underscore",
            ],
        ),
        (
            ["cb.py:Alarn"],
            CALLBACKS_FILE,
            [
                "spec.toml:17: $.hooks.callbacks[0] = \"cb.py:Alarn\": cb.py has no top-level class 'Alarn'; hint: did "
                "you mean 'Alarm'?"
            ],
        ),
        (
            ["cb.py"],
            GOOD_CALLBACKS,
            [
                'spec.toml:17: $.hooks.callbacks[0] = "cb.py" must be "file.py:Class": a Python file (relative to the '
                'spec\'s folder) and the name of a class in it; hint: write it as callbacks = ["my_callbacks.py:MyCallback"]'
            ],
        ),
        (
            ["gone.py:Alarm"],
            GOOD_CALLBACKS,
            [
                'spec.toml:17: $.hooks.callbacks[0] = "gone.py:Alarm" does not exist (paths are relative to the spec\'s '
                "folder); hint: create it, or fix the path"
            ],
        ),
        (
            ["json.py:Alarm"],
            GOOD_CALLBACKS,
            [
                'spec.toml:17: $.hooks.callbacks[0] = "json.py:Alarm" has the name of the standard library module '
                "'json'; beside the generated script it would shadow that module for torch and everything else the "
                'script imports; hint: rename it, e.g. file = "my_json.py"'
            ],
        ),
    ],
    ids=["fine", "methods", "class-typo", "no-class", "missing", "shadows-stdlib"],
)
def test_rule_callbacks(callbacks: list[str], source: str, expected: list[str]) -> None:
    check({"hooks": {"callbacks": callbacks}}, expected, files={"cb.py": source, "json.py": source})


def test_rule_hook_functions_reports_unreadable_files() -> None:
    class Undecodable(MemoryFiles):
        def read_text(self, path: object) -> str:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    result = front(spec_toml(hooks={"file": "hooks.py", "forward_step": "forward_step"}), Undecodable({"hooks.py": ""}))
    assert [format_diagnostic(d) for d in result.diagnostics] == [
        'spec.toml:17: $.hooks.file = "hooks.py" is not UTF-8 text; hint: save it as UTF-8'
    ]


# -- settings that do nothing -----------------------------------------------------------------------


def test_rule_unused_settings_min_lr_outside_megatron_schedules() -> None:
    check(
        {
            "optimizer": {"lr": 1e-3, "min_lr": 1e-4, "semantics": "optax"},
            "scheduler": {"style": "maxtext", "maxtext": {"kind": "cosine"}},
        },
        [
            "spec.toml:16: warning: $.optimizer.min_lr = 0.0001 has no effect: it is only used with scheduler.style = "
            '"megatron"; hint: remove it (the MaxText and optax schedules say where they end)'
        ],
    )


def test_rule_unused_settings() -> None:
    check(
        {
            "model": {"rotary_base": 500, "moe_router_topk": 1},
            "optimizer": {"name": "sgd", "betas": [0.8, 0.9], "eps": 1e-6},
            "scheduler": {"wsd_decay_iters": 2, "wsd_decay_style": "cosine", "warmup_init_lr": 1e-5},
            "train": {"eval_iters": 3},
        },
        [
            "spec.toml:9: warning: $.model.rotary_base = 500 has no effect: it is only used with position_embedding = "
            '"rope"; hint: remove it, or set position_embedding = "rope"',
            "spec.toml:10: warning: $.model.moe_router_topk = 1 has no effect: it is only used with num_experts (an MoE "
            "model); hint: remove it, or set num_experts",
            "spec.toml:16: warning: $.train.eval_iters = 3 has no effect: it is only used with eval_interval; hint: "
            "remove it, or set eval_interval",
            'spec.toml:20: warning: $.optimizer.betas = [0.8, 0.9] has no effect: it is only used with name = "adam"; '
            "hint: remove it",
            'spec.toml:21: warning: $.optimizer.eps = 1e-06 has no effect: it is only used with name = "adam"; hint: '
            "remove it",
            'spec.toml:23: warning: $.scheduler.wsd_decay_iters = 2 has no effect: it is only used with decay = "wsd"; '
            'hint: remove it, or set decay = "wsd"',
            'spec.toml:24: warning: $.scheduler.wsd_decay_style = "cosine" has no effect: it is only used with decay = '
            '"wsd"; hint: remove it, or set decay = "wsd"',
            "spec.toml:25: warning: $.scheduler.warmup_init_lr = 1e-05 has no effect: it is only used with "
            "warmup_iters > 0; hint: remove it, or set warmup_iters",
        ],
    )
    check(
        {"optimizer": {"sgd_momentum": 0.5}},
        [
            'spec.toml:16: warning: $.optimizer.sgd_momentum = 0.5 has no effect: it is only used with name = "sgd"; '
            "hint: remove it"
        ],
    )


HOOK_FILES = {
    "random.py": "def fs(state, data_iterator, model, return_schedule_plan=False):\n    pass\n",
    "my-hooks.py": "def fs(state, data_iterator, model, return_schedule_plan=False):\n    pass\n",
    "h.py": "def fs(state, data_iterator, model, return_schedule_plan=False):\n    pass\n"
    "def lf(loss_mask, output_tensor):\n    pass\n",
}


def test_rule_hooks_file_name() -> None:
    check(
        {"hooks": {"file": "random.py", "forward_step": "fs"}},
        [
            "spec.toml:17: $.hooks.file = \"random.py\" has the name of the standard library module 'random'; beside the "
            "generated script it would shadow that module for torch and everything else the script imports; hint: "
            'rename it, e.g. file = "my_random.py"'
        ],
        files=HOOK_FILES,
    )
    check(
        {"hooks": {"file": "my-hooks.py", "forward_step": "fs"}},
        [
            'spec.toml:17: $.hooks.file = "my-hooks.py" must be a Python file whose name is an identifier (it is '
            'imported as a module); hint: rename it, e.g. file = "my_hooks.py"'
        ],
        files=HOOK_FILES,
    )


@pytest.mark.parametrize(
    ("module", "distribution"),
    [
        ("torch", "torch"),
        ("numpy", "numpy"),
        ("megatron", "megatron-core"),
        ("bridgec", "bridgec"),
        ("sympy", "sympy"),  # torch's dependency, found through torch's requirements
        ("yaml", "PyYAML"),  # a module named unlike its distribution
    ],
)
def test_rule_hooks_file_name_shadowing_what_the_script_imports(module: str, distribution: str) -> None:
    files = {f"{module}.py": HOOK_FILES["random.py"]}
    check(
        {"hooks": {"file": f"{module}.py", "forward_step": "fs"}},
        [
            f"spec.toml:17: $.hooks.file = \"{module}.py\" has the name of the module '{module}' (from {distribution}, "
            "which the generated script needs); beside the generated script it would shadow that module for the script "
            f'and everything it imports; hint: rename it, e.g. file = "my_{module}.py"'
        ],
        files=files,
    )


def test_hooks_file_names_of_unrelated_packages_are_fine() -> None:
    # jax is installed for the tests only (bridgec's "test" extra): the script never imports it.
    files = {"jax.py": HOOK_FILES["random.py"]}
    check({"hooks": {"file": "jax.py", "forward_step": "fs"}}, [], files=files)


def test_rule_both_hooks() -> None:
    check(
        {"hooks": {"file": "h.py", "forward_step": "fs", "loss": "lf"}},
        [
            "spec.toml:19: hooks.forward_step and hooks.loss are both set, but a forward_step returns its own loss "
            "function, so hooks.loss would never be called; hint: remove hooks.loss and return your loss function from "
            "your forward_step"
        ],
        files=HOOK_FILES,
    )


@pytest.mark.parametrize("table", ["slurm", "kubernetes"])
def test_rule_scheduler_settings_match(table: str) -> None:
    settings = {"time": "10"} if table == "slurm" else {"image": "i:1"}
    check(
        {"launch": {"scheduler": "torchrun", table: settings}},
        [
            f'spec.toml:18: [launch.{table}] is only read with launch.scheduler = "{table}"; with "torchrun" it '
            f'would change nothing; hint: set scheduler = "{table}" under [launch], or remove [launch.{table}]'
        ],
    )
    check({"launch": {"scheduler": table, table: settings}}, [])


def test_rule_kubernetes_needs_image() -> None:
    check(
        {"launch": {"scheduler": "kubernetes"}},
        [
            'spec.toml:17: launch.scheduler = "kubernetes" needs the container image the job runs: there is no '
            '[launch.kubernetes]; hint: add [launch.kubernetes] with image = "registry/image:tag" (bridgec '
            "installed, the script in working_dir)"
        ],
    )


@pytest.mark.parametrize("time", ["90", "04:00:00", "1-12:00:00", "2-6", "30:00"])
def test_rule_slurm_time_accepts_slurms_forms(time: str) -> None:
    check({"launch": {"scheduler": "slurm", "slurm": {"time": time}}}, [])


def test_rule_slurm_time() -> None:
    check(
        {"launch": {"scheduler": "slurm", "slurm": {"time": "4h"}}},
        [
            'spec.toml:18: $.launch.slurm.time = "4h" is not a SLURM time limit; hint: write minutes ("90"), '
            '"HH:MM:SS" ("04:00:00") or "D-HH:MM:SS" ("1-12:00:00")'
        ],
    )


def _tiktoken_file(merges: int) -> bytes:
    """A tiktoken rank file: the 256 bytes, then ``merges`` two-letter tokens (vocabulary 256 + merges + 1)."""
    import base64

    tokens = [bytes([b]) for b in range(256)] + [bytes([97 + i // 26, 97 + i % 26]) for i in range(merges)]
    return "".join(f"{base64.b64encode(t).decode()} {rank}\n" for rank, t in enumerate(tokens)).encode()


TOKENIZER = {"tok.tiktoken": _tiktoken_file(4)}  # vocabulary 261, eod 260
WITH_TOKENIZER = {**INDEXED, "tokenizer": "tok.tiktoken"}


def _built_with(files: dict[str, bytes]) -> str:
    """The sidecar `bridgec data build --tokenizer tok.tiktoken` writes."""
    from bridgec.runtime.tokenizer import describe

    facts = describe(Path("tok.tiktoken"), lambda path: files[path.name], kind="tiktoken")
    return f'{{"tokenizer": "tiktoken", "vocab_size": 261, "eod": 260, "tokenizer_sha256": "{facts.sha256}"}}'


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (TOKENIZER, []),
        (
            {},
            [
                'spec.toml:17: $.data.tokenizer = "tok.tiktoken" cannot be read (paths are relative to the spec\'s '
                "folder): tok.tiktoken: no such file or folder; hint: name a Hugging Face tokenizer folder (with "
                "tokenizer.json), a SentencePiece .model or a tiktoken rank file"
            ],
        ),
        (
            {"tok.tiktoken": b"YQ== 0\nnot base64 1\n"},
            [
                'spec.toml:17: $.data.tokenizer = "tok.tiktoken" cannot be read (paths are relative to the spec\'s '
                "folder): tok.tiktoken:2: not a tiktoken rank line (expected 'BASE64TOKEN RANK'); a SentencePiece "
                "model must end in .model, a Hugging Face tokenizer is a folder with tokenizer.json; hint: name a "
                "Hugging Face tokenizer folder (with tokenizer.json), a SentencePiece .model or a tiktoken rank file"
            ],
        ),
    ],
    ids=["fine", "missing", "corrupt"],
)
def test_rule_tokenizer_readable(files: dict[str, bytes], expected: list[str]) -> None:
    check({"model": {"vocab_size": 300}, "data": {"tokenizer": "tok.tiktoken"}}, expected, files=files)


def test_rule_tokenizer_fits_vocab() -> None:
    check(
        {"model": {"vocab_size": 260}, "data": {"tokenizer": "tok.tiktoken"}},
        [
            'spec.toml:7: $.model.vocab_size = 260 is smaller than the vocabulary of data.tokenizer = "tok.tiktoken", '
            "261, so some token ids would fall outside the embedding; hint: vocab_size = 261"
        ],
        files=TOKENIZER,
    )
    check({"model": {"vocab_size": 261}, "data": {"tokenizer": "tok.tiktoken"}}, [], files=TOKENIZER)


def test_rule_tokenizer_eod() -> None:
    check(
        {"model": {"vocab_size": 300}, "data": {"tokenizer": "tok.tiktoken", "eod_token": 5}},
        [
            "spec.toml:18: warning: $.data.eod_token = 5 differs from the end-of-document id of data.tokenizer = "
            '"tok.tiktoken", 260; hint: remove eod_token to use 260'
        ],
        files=TOKENIZER,
    )


def test_rule_tokenizer_built_the_data() -> None:
    tables = {"model": {"vocab_size": 300}, "data": WITH_TOKENIZER}
    check(tables, [], files={**DATA, **TOKENIZER, "data/tok.json": _built_with(TOKENIZER)})
    other = _built_with({"tok.tiktoken": _tiktoken_file(5)})
    rebuild = "hint: rebuild it: bridgec data build --input DOCS --tokenizer tok.tiktoken --output data/tok"
    sha, other_sha = (json.loads(text)["tokenizer_sha256"][:12] for text in (_built_with(TOKENIZER), other))
    check(
        tables,
        [
            f'spec.toml:20: $.data.sources[0].prefix = "data/tok" was built with a tiktoken tokenizer with sha256 '
            f"{other_sha} (data/tok.json), not "
            f'with data.tokenizer = "tok.tiktoken" (tiktoken, sha256 {sha}), so its token ids mean other text; {rebuild}'
        ],
        files={**DATA, **TOKENIZER, "data/tok.json": other},
    )
    check(
        tables,
        [
            'spec.toml:20: $.data.sources[0].prefix = "data/tok" was built with the byte-level tokenizer '
            f'(data/tok.json), not with data.tokenizer = "tok.tiktoken" (tiktoken, sha256 {sha}), so its token ids '
            f"mean other text; {rebuild}"
        ],
        files={**DATA, **TOKENIZER, "data/tok.json": '{"tokenizer": "bytes", "vocab_size": 257, "eod": 256}'},
    )
    check(
        tables,
        [
            'spec.toml:20: $.data.sources[0].prefix = "data/tok": bridgec cannot tell which tokenizer built it, '
            "because data/tok.json (written by `bridgec data build`) cannot be read: there is no such file; "
            f"{rebuild}"
        ],
        files={**DATA, **TOKENIZER},
    )
    # bridgec check reads the committed tokenizer file without the data.
    check_without_data(tables, [], files={**TOKENIZER, "data/tok.json": _built_with(TOKENIZER)})


def test_rule_document_masking_layout() -> None:
    check({"data": {"document_masking": True}}, [])
    check(
        {
            "launch": {"device": "cuda"},
            "model": {"transformer_impl": "transformer_engine"},
            "data": {"document_masking": True},
        },
        [
            'spec.toml:20: $.data.document_masking = true needs model.transformer_impl = "local" or "torch": bridgec '
            "gives the block-diagonal mask to megatron-core's local attention (or torch's "
            "scaled_dot_product_attention); Transformer Engine's fused attention would need THD offsets at every "
            "end of document, which bridgec builds for packed SFT samples only; hint: transformer_impl = "
            '"local" or "torch" under [model], or remove document_masking'
        ],
    )
    check(
        {
            "model": {"num_layers": 4},
            "parallel": {"pipeline": 4},
            "launch": {"procs_per_node": 4},
            "data": {"document_masking": True},
        },
        [
            "spec.toml:21: $.data.document_masking = true with parallel.pipeline = 4: model chunks in the middle of "
            "the pipeline read no data, so they would not see where documents end (only the first and last stage "
            "do); hint: pipeline = 2 or less and no virtual_pipeline, or remove document_masking"
        ],
    )


def test_rule_data_sources_match_kind_sft() -> None:
    check(
        {"data": {"kind": "sft", "eod_token": 0}},
        [
            'spec.toml:17: $.data.kind = "sft" needs at least one [[data.sources]] table (a dataset written by '
            '`bridgec data build --sft`); hint: add [[data.sources]] with prefix = "path/to/sft" (several tables '
            "are blended by weight)"
        ],
    )
    sources = [{"prefix": "data/a", "weight": 3.0}, {"prefix": "data/b"}]
    check(  # several SFT datasets are a blend
        {"data": {"kind": "sft", "eod_token": 0, "sources": sources}},
        [],
        files={f"data/{n}{ext}": "" for n in "ab" for ext in (".bin", ".idx", ".loss_mask.bin", ".loss_mask.idx")},
    )


def test_rule_data_files_exist_sft_needs_the_loss_masks() -> None:
    check(
        {"data": {"kind": "sft", "eod_token": 0, "sources": [{"prefix": "data/tok"}]}},
        [
            'spec.toml:20: $.data.sources[0].prefix = "data/tok": data/tok.loss_mask.bin and data/tok.loss_mask.idx '
            "do not exist (paths are relative to the spec's folder); hint: fix the prefix, or build the files with "
            "`bridgec data build`"
        ],
        files=DATA,
    )


def test_rule_document_masking_layout_sft() -> None:
    check(
        {"data": {"kind": "sft", "document_masking": True, "eod_token": 0, "sources": [{"prefix": "data/tok"}]}},
        [
            'spec.toml:18: $.data.document_masking = true has no effect with data.kind = "sft": each SFT sample is '
            "alone in its sequence, or kept apart from the others by packing; hint: remove document_masking "
            "(packing = true packs SFT samples and keeps them apart)"
        ],
        files={**DATA, "data/tok.loss_mask.bin": "", "data/tok.loss_mask.idx": idx_header(100)},
    )


def test_rule_document_masking_layout_packing() -> None:
    sft = {"kind": "sft", "packing": True, "eod_token": 0, "sources": [{"prefix": "data/tok"}]}
    files = {**DATA, "data/tok.loss_mask.bin": "", "data/tok.loss_mask.idx": idx_header(100)}
    check({"data": sft}, [], files=files)
    check(
        {"data": {"packing": True}},
        [
            'spec.toml:17: $.data.packing = true packs SFT samples, but data.kind = "mock": pretraining documents '
            'already fill their sequences back to back; hint: kind = "sft", or document_masking = true to keep '
            "pretraining documents apart"
        ],
    )
    te = {"launch": {"device": "cuda"}, "model": {"transformer_impl": "transformer_engine"}, "data": sft}
    check({**te, "batch": {"micro_batch_size": 1}}, [], files=files)  # THD offsets instead of the mask
    check(
        {
            **te,
            "batch": {"micro_batch_size": 2},
            "parallel": {"context": 2},
            "launch": {"device": "cuda", "procs_per_node": 2},
        },
        [
            "spec.toml:12: $.batch.micro_batch_size = 2 with data.packing = true on Transformer Engine: each "
            "microbatch is one packed sequence in THD format (its samples' offsets are the batch), so it holds "
            "exactly one; hint: micro_batch_size = 1 (packing already fills each sequence with several samples)",
            "spec.toml:27: $.parallel.context = 2 with data.packing = true on Transformer Engine: splitting packed "
            "THD sequences across context-parallel ranks (each sample padded and cut into 2 x context chunks) is "
            "not built in bridgec; hint: context = 1, or remove packing",
        ],
        files=files,
    )


def test_rule_sink_package_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    sinks = {
        "logging": {
            "tensorboard": {"dir": "tb"},
            "wandb": {"project": "p", "mode": "offline"},
            "mlflow": {"tracking_uri": "sqlite:///m.db"},
        }
    }
    check(sinks, [])  # the test extra installs all three
    # A None entry in sys.modules is Python's own "this module cannot be imported" (importlib's find_spec says None).
    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    check(
        sinks,
        [
            f"spec.toml:18: [logging.wandb] needs the wandb package, which this Python ({sys.executable}) cannot "
            "import; hint: pip install 'bridgec[wandb]' (or remove [logging.wandb])",
            f"spec.toml:19: [logging.mlflow] needs the mlflow package, which this Python ({sys.executable}) cannot "
            "import; hint: pip install 'bridgec[mlflow]' (or remove [logging.mlflow])",
        ],
    )


def test_rule_profile_steps() -> None:
    check({"profile": {"start_step": 3, "end_step": 4}}, [])
    check(
        {"profile": {"start_step": 4, "end_step": 3}},
        [
            "spec.toml:17: $.profile: steps 4 to 3 are not a range of this run's steps (1 to train.iters = 10, "
            "start_step <= end_step); hint: e.g. start_step = 3, end_step = 4 (a few steps after the first, which "
            "warms up)"
        ],
    )
    check(
        {"profile": {"start_step": 0, "end_step": 11, "ranks": [0, 1]}},
        [
            "spec.toml:17: $.profile: steps 0 to 11 are not a range of this run's steps (1 to train.iters = 10, "
            "start_step <= end_step); hint: e.g. start_step = 3, end_step = 4 (a few steps after the first, which "
            "warms up)",
            "spec.toml:19: $.profile.ranks = [0, 1]: every rank must be one of this run's 0 to 0 (nodes x "
            "procs_per_node = 1), and at least one is needed; hint: e.g. ranks = [0]",
        ],
    )


def test_rule_profile_cuda_only() -> None:
    check(
        {"profile": {"start_step": 1, "end_step": 1, "memory_snapshot": True, "nvtx": True}},
        [
            "spec.toml:19: $.profile.memory_snapshot = true records CUDA's allocator history, but launch.device = "
            '"cpu"; hint: set device = "cuda" under [launch], or remove memory_snapshot',
            'spec.toml:20: $.profile.nvtx = true records NVTX ranges (for nsys), but launch.device = "cpu"; hint: '
            'set device = "cuda" under [launch], or remove nvtx',
        ],
    )


def test_rule_peak_positive() -> None:
    check({"logging": {"peak_tflops": 989.0}}, [])
    check(
        {"logging": {"peak_tflops": 0.0}},
        [
            "spec.toml:17: $.logging.peak_tflops = 0: MFU divides by the device's peak, which must be above 0; hint: "
            "the dense bf16 TFLOP/s of one device (e.g. 989 for an H100 SXM), or remove it"
        ],
    )


# -- [distill] --------------------------------------------------------------------------------------

TEACHER = {
    "num_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "vocab_size": 128,
    "seq_length": 32,
    "normalization": "rmsnorm",  # a Llama: what the Hugging Face loader reads
    "activation": "swiglu",
    "position_embedding": "rope",
    "add_bias_linear": False,
    "checkpoint": {"format": "huggingface", "path": "teacher"},
}
TEACHER_FILES = {"teacher": ""}  # the folder


def distill(**teacher: Any) -> dict[str, Any]:
    return {"distill": {"teacher": {**TEACHER, **teacher}}}


def test_a_distill_spec_is_clean() -> None:
    check(distill(), [], TEACHER_FILES)


def test_rule_teacher_vocab() -> None:
    check(
        distill(vocab_size=256),
        [
            "spec.toml:17: $.distill.teacher.vocab_size = 256 differs from the student's model.vocab_size = 128 (the "
            "KL loss compares the two distributions token by token over one vocabulary); hint: distil from a teacher "
            "that shares the student's tokenizer"
        ],
        TEACHER_FILES,
    )
    check(
        distill(make_vocab_size_divisible_by=256),
        [
            "spec.toml:17: the teacher's padded vocabulary 256 (distill.teacher.make_vocab_size_divisible_by = 256) "
            "differs from the student's 128 (model.make_vocab_size_divisible_by = 128): the two logits must split "
            "alike over the tensor-parallel ranks; hint: give both the same make_vocab_size_divisible_by"
        ],
        TEACHER_FILES,
    )


def test_rule_teacher_sequence() -> None:
    check(
        distill(seq_length=16),
        [
            "spec.toml:17: $.distill.teacher.seq_length = 16 is shorter than the student's model.seq_length = 32 (the "
            "teacher reads the student's sequences); hint: seq_length = 32 under [distill.teacher]"
        ],
        TEACHER_FILES,
    )


def test_rule_teacher_layout() -> None:
    """The [model] rules run on the teacher with the student's layout: 6 heads on tensor 4 (the student's 4 fit)."""
    check(
        {"launch": {"procs_per_node": 4}, "parallel": {"tensor": 4}, **distill(num_attention_heads=6, hidden_size=96)},
        [
            "spec.toml:21: $.distill.teacher.num_attention_heads = 6 is not divisible by parallel.tensor = 4 (each "
            "tensor-parallel rank needs whole heads) (the teacher runs on the student's layout); hint: tensor = 2 or "
            "3, or 8 heads"
        ],
        TEACHER_FILES,
    )


def test_rule_teacher_checkpoint() -> None:
    """The [init.checkpoint] rules run on the teacher's checkpoint, with the teacher as the model it loads into."""
    check(
        distill(),
        [
            'spec.toml:17: $.distill.teacher.checkpoint.path = "teacher" does not exist (paths are relative to the '
            "spec's folder); hint: point it at the Hugging Face model folder (the one holding config.json and the "
            "safetensors)"
        ],
    )
    check(
        distill(checkpoint={"format": "megatron", "path": "teacher"}),
        [
            'spec.toml:17: $.distill.teacher.checkpoint.path = "teacher" does not exist (paths are relative to the '
            "spec's folder); hint: point it at Megatron-LM's save folder (the one holding "
            "latest_checkpointed_iteration.txt), a bridgec [checkpoint] dir or one iter_* folder"
        ],
    )
    check_without_data(distill(), [])
    check(
        distill(checkpoint={"format": "huggingface", "path": "teacher", "param_scan_axis": 0}),
        [
            "spec.toml:17: $.distill.teacher.checkpoint.param_scan_axis = 0 describes an Orbax checkpoint; "
            'format = "huggingface" reads weights only, in Hugging Face\'s layout; hint: remove param_scan_axis '
            "from [distill.teacher.checkpoint]"
        ],
        TEACHER_FILES,
    )
    check(
        distill(checkpoint={"format": "megatron", "path": "teacher", "rope_layout": "interleaved"}),
        [
            'spec.toml:17: $.distill.teacher.checkpoint.rope_layout = "interleaved" applies to Orbax checkpoints '
            'only; format = "megatron" reads megatron-core\'s own tensor names and layout; hint: remove rope_layout '
            "from [distill.teacher.checkpoint]"
        ],
        TEACHER_FILES,
    )
    check(  # Orbax's own keys are read for an Orbax teacher; the optimizer state never is
        distill(
            checkpoint={"format": "orbax", "path": "teacher", "optimizer_state": True, "rope_layout": "interleaved"}
        ),
        [
            "spec.toml:17: $.distill.teacher.checkpoint.optimizer_state = true, but the frozen teacher has no "
            "optimizer; hint: remove optimizer_state from [distill.teacher.checkpoint]",
        ],
        TEACHER_FILES,
    )
    check(
        distill(activation="gelu", checkpoint={"format": "orbax", "path": "teacher"}),
        [
            'spec.toml:17: [distill.teacher.checkpoint] layout = "maxtext" holds a MaxText '
            'llama2/mistral/qwen3/mixtral/gemma decoder, which needs [distill.teacher] activation = "swiglu" (or "geglu"); '
            'hint: set activation = "swiglu" (or "geglu") under [distill.teacher] to match the checkpoint'
        ],
        TEACHER_FILES,
    )


def test_rule_teacher_logits_multiplier() -> None:
    check(
        distill(logits_multiplier=0.5),
        [
            "spec.toml:17: $.distill.teacher.logits_multiplier = 0.5 is not built yet: the KL loss reads the "
            "teacher's logits as its output layer gives them; hint: remove logits_multiplier from [distill.teacher]"
        ],
        TEACHER_FILES,
    )


def test_rule_teacher_values() -> None:
    """[model]'s value rules hold for the teacher's keys (before them, these compiled and failed at run time)."""
    check(
        distill(num_layers=0, num_attention_heads=0, rotary_base=0),
        [
            "spec.toml:17: $.distill.teacher.num_attention_heads = 0 must be at least 1; hint: set "
            "num_attention_heads to 1 or more",
            "spec.toml:17: $.distill.teacher.num_layers = 0 must be at least 1; hint: set num_layers to 1 or more",
            "spec.toml:17: $.distill.teacher.rotary_base = 0 must be at least 1; hint: rotary_base = 10000",
        ],
        TEACHER_FILES,
    )


def test_rule_teacher_frozen_settings() -> None:
    check(
        distill(dropout=0.1, init_method_std=0.5),
        [
            "spec.toml:17: $.distill.teacher.dropout = 0.1 changes nothing: the frozen teacher runs in eval mode, "
            "where dropout never applies; hint: remove dropout from [distill.teacher]",
            "spec.toml:17: $.distill.teacher.init_method_std = 0.5 changes nothing: the teacher's weights are "
            "loaded from [distill.teacher.checkpoint], never drawn; hint: remove init_method_std from "
            "[distill.teacher]",
        ],
        TEACHER_FILES,
    )


def test_rule_teacher_query_scaling() -> None:
    check(
        distill(query_scaling="initial_weights"),
        [
            'spec.toml:17: $.distill.teacher.query_scaling = "initial_weights" scales freshly drawn query weights, '
            'but the teacher\'s weights are loaded as stored; hint: query_scaling = "none" (the scores are not '
            "scaled; the loaded weights hold the scale)"
        ],
        TEACHER_FILES,
    )


def test_rule_distill_loss() -> None:
    check(
        {"loss": {"reduction": "per_microbatch"}, **distill()},
        [
            "spec.toml:17: [distill] adds its KL loss to bridgec's token-weighted cross entropy; loss.reduction = "
            '"per_microbatch" replaces that loss (not built together yet); hint: remove one of the two'
        ],
        TEACHER_FILES,
    )


def test_a_pipelined_students_teacher_is_whole_so_its_layers_need_not_divide_the_pipeline() -> None:
    """The teacher runs whole on the last stage: the layout rules see it on one stage, the student on two."""
    pipelined = {"launch": {"procs_per_node": 2}, "parallel": {"pipeline": 2, "virtual_pipeline": 2}}
    check({**pipelined, "model": {"num_layers": 4}, **distill(num_layers=3)}, [], TEACHER_FILES)
    check(
        {
            "launch": {"procs_per_node": 2},
            "parallel": {"pipeline": 2},
            "model": {"num_layers": 3},
            **distill(num_layers=3),
        },
        [  # the student's layers only: the teacher's 3 are fine
            "spec.toml:4: $.model.num_layers = 3 is not divisible by parallel.pipeline = 2 (each pipeline stage "
            "holds the same number of layers); hint: num_layers = 2 or 4, or pipeline = 1 or 3"
        ],
        TEACHER_FILES,
    )


def test_rule_distill_values() -> None:
    check(
        {"distill": {"temperature": 0.0, "kd_loss_scale": -1.0, "teacher": TEACHER}},
        [
            "spec.toml:17: $.distill.temperature = 0.0 must be positive (logits are divided by it); hint: temperature "
            "= 1.0 (the teacher's own distribution) or above to soften it",
            "spec.toml:18: $.distill.kd_loss_scale = -1.0 must be positive; hint: kd_loss_scale = 1.0, or remove "
            "[distill] to train on the cross entropy alone",
        ],
        TEACHER_FILES,
    )


def layers(*pairs: dict[str, Any], **teacher: Any) -> dict[str, Any]:
    """[distill] with [[distill.layers]] entries."""
    return {"distill": {"teacher": {**TEACHER, **teacher}, "layers": list(pairs)}}


def test_a_distill_spec_with_layer_pairs_is_clean() -> None:
    check(
        layers({"student": 1, "teacher": 1}, {"student": 0, "teacher": 1, "loss": "mse", "scale": 0.5}),
        [],
        TEACHER_FILES,
    )


def test_rule_distill_layer_width() -> None:
    check(
        layers({"student": 1, "teacher": 1}, hidden_size=128, num_attention_heads=8),
        [
            "spec.toml:18: [[distill.layers]] compares hidden states of the student's model.hidden_size = 64 with the "
            "teacher's distill.teacher.hidden_size = 128: a projection between the two widths is not built; hint: "
            "distil layers from a teacher of the student's hidden_size, or remove [[distill.layers]]"
        ],
        TEACHER_FILES,
    )


def test_rule_distill_layer_indices() -> None:
    check(
        layers({"student": 2, "teacher": -1, "scale": 0.0}),
        [
            "spec.toml:19: $.distill.layers[0].student = 2 is not a layer of the student: model.num_layers = 2 "
            "(layers are 0-based); hint: a layer from 0 to 1",
            "spec.toml:20: $.distill.layers[0].teacher = -1 is not a layer of the teacher: "
            "distill.teacher.num_layers = 2 (layers are 0-based); hint: a layer from 0 to 1",
            "spec.toml:21: $.distill.layers[0].scale = 0.0 must be positive; hint: scale = 1.0, or remove the entry",
        ],
        TEACHER_FILES,
    )


def test_a_layer_loss_outside_cosine_and_mse_is_refused() -> None:
    check(
        layers({"student": 1, "teacher": 1, "loss": "kl"}),
        [
            "spec.toml:21: $.distill.layers[0].loss = \"kl\" must be one of 'cosine', 'mse'; hint: the default is loss = \"cosine\""
        ],
        TEACHER_FILES,
    )


def test_rule_distill_layer_stage() -> None:
    pipelined = {"launch": {"procs_per_node": 2}, "model": {"num_layers": 4}}
    check(
        {
            **pipelined,
            "parallel": {"pipeline": 2},
            **layers({"student": 1, "teacher": 0}, {"student": 2, "teacher": 0}),
        },
        [
            "spec.toml:23: $.distill.layers[0].student = 1 is on pipeline stage 0, but the teacher runs on the last "
            "stage (1), where the pairs' states meet: only its layers 2 to 3 can be paired; hint: a student layer "
            "from 2 to 3"
        ],
        TEACHER_FILES,
    )
    check(
        {
            **pipelined,
            "parallel": {"pipeline": 2, "virtual_pipeline": 2},
            **layers({"student": 2, "teacher": 0}, {"student": 3, "teacher": 0}),
        },
        [
            "spec.toml:24: $.distill.layers[0].student = 2 is in model chunk 1 of pipeline stage 0, but the teacher "
            "runs beside the last model chunk of the last stage (1), where the pairs' states meet: only its layer 3 "
            "can be paired; hint: student = 3"
        ],
        TEACHER_FILES,
    )


def test_rule_distill_layer_parallel() -> None:
    check(
        {
            "recompute": {"granularity": "full", "method": "uniform", "num_layers": 1},
            **layers({"student": 1, "teacher": 1}),
        },
        [
            'spec.toml:22: [[distill.layers]] with recompute.granularity = "full" is not built: a recomputed layer '
            "runs its forward without a graph first, so its caught hidden states would carry no gradient; hint: "
            'remove [[distill.layers]], or use granularity = "selective" (it recomputes inside the layers)'
        ],
        TEACHER_FILES,
    )
    check(
        {
            "launch": {"procs_per_node": 2},
            "parallel": {"tensor": 2, "sequence_parallel": True},
            **layers({"student": 1, "teacher": 1}),
        },
        [
            'spec.toml:20: $.parallel.sequence_parallel = true needs model.transformer_impl = "transformer_engine" '
            "(megatron-core's local torch norms refuse sequence parallelism); hint: set transformer_impl = "
            '"transformer_engine" (and device = "cuda"), or remove sequence_parallel',
            "spec.toml:23: [[distill.layers]] with parallel.sequence_parallel = true is not built: the hidden states "
            "between layers are then split along the sequence over the tensor-parallel ranks; hint: remove one of the "
            "two",
        ],
        TEACHER_FILES,
    )


def test_rule_distill_layer_repeated() -> None:
    check(
        layers(
            {"student": 1, "teacher": 1},
            {"student": 1, "teacher": 1, "loss": "mse"},
            {"student": 1, "teacher": 1, "loss": "cosine", "scale": 2.0},
        ),
        [
            'spec.toml:25: $.distill.layers[2] repeats $.distill.layers[0] (student = 1, teacher = 1, loss = "cosine"): '
            "each pair's loss is logged once, by those three; hint: keep one entry, its scale the sum of the two"
        ],
        TEACHER_FILES,
    )
