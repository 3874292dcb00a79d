"""load: TOML text -> Spec, strictly typed, with every problem reported at once.

Specs come from ``spec_toml`` (conftest): MINIMAL's lines are
1 [run] / 2 name / 3 [model] / 4 num_layers / 5 hidden_size / 6 num_attention_heads /
7 vocab_size / 8 seq_length / 9 [batch] / 10 global_batch_size / 11 micro_batch_size /
12 [train] / 13 iters / 14 [optimizer] / 15 lr; new keys follow their table's last key.
"""

from __future__ import annotations

import typing
from typing import Any

import attrs
import pytest

from bridgec.compiler.errors import format_diagnostic
from bridgec.compiler.load import load
from bridgec.compiler.spec import Model, Optimizer, Spec
from tests.compiler.conftest import MINIMAL, dump_toml, spec_toml


def formatted(text: str) -> list[str]:
    result = load(text, "spec.toml")
    assert result.spec is None
    return [format_diagnostic(d) for d in result.diagnostics]


def test_minimal_spec_loads_with_defaults() -> None:
    result = load(spec_toml(), "spec.toml")
    assert result.diagnostics == ()
    assert result.spec is not None
    assert result.spec.model == Model(
        num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=128, seq_length=32
    )
    assert result.spec.optimizer == Optimizer(lr=1e-3)
    assert result.index.line_of(("model", "hidden_size")) == 5


def _defaults(cl: type) -> dict[str, Any]:
    """Every field of ``cl`` that has a plain default, with that default, as TOML data (walked generically)."""
    hints = typing.get_type_hints(cl)
    data: dict[str, Any] = {}
    for field in attrs.fields(cl):
        if isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
            data[field.name] = _defaults(hints[field.name])
        elif field.default is not attrs.NOTHING and field.default is not None:
            default = field.default
            data[field.name] = list(default) if isinstance(default, tuple) else default
    return data


def test_every_default_written_out_loads_to_the_same_spec() -> None:
    data = _defaults(Spec)
    for table, keys in MINIMAL.items():
        data[table] = {**_defaults(typing.get_type_hints(Spec)[table]), **keys}
    result = load(dump_toml(data), "spec.toml")
    assert result.diagnostics == ()
    assert result.spec == load(spec_toml(), "spec.toml").spec


def test_int_accepted_where_a_float_is_expected() -> None:
    result = load(spec_toml(optimizer={"lr": 1}), "spec.toml")
    assert result.spec is not None and result.spec.optimizer.lr == 1.0
    assert isinstance(result.spec.optimizer.lr, float)


def test_optional_fields_take_their_type() -> None:
    result = load(spec_toml(model={"num_query_groups": 2}, precision={"fp8": "delayed"}), "spec.toml")
    assert result.spec is not None
    assert (result.spec.model.num_query_groups, result.spec.precision.fp8) == (2, "delayed")


def test_array_of_tables_loads_to_a_tuple() -> None:
    text = spec_toml(data={"kind": "indexed", "sources": [{"prefix": "a"}, {"prefix": "b", "weight": 2}]})
    result = load(text, "spec.toml")
    assert result.spec is not None
    assert [(s.prefix, s.weight) for s in result.spec.data.sources] == [("a", 1.0), ("b", 2.0)]


@pytest.mark.parametrize(
    ("tables", "expected"),
    [
        (
            {"model": {"num_layers": "4"}},
            'spec.toml:4: $.model.num_layers = "4" must be an integer, got a string; hint: remove the quotes: 4',
        ),
        (
            {"model": {"num_layers": 3.7}},
            "spec.toml:4: $.model.num_layers = 3.7 must be an integer, got a float; hint: write a whole number, such as 4",
        ),
        (
            {"model": {"num_layers": 4.0}},
            "spec.toml:4: $.model.num_layers = 4.0 must be an integer, got a float; hint: write 4",
        ),
        ({"model": {"num_layers": True}}, "spec.toml:4: $.model.num_layers = true must be an integer, got a boolean"),
        (
            {"optimizer": {"lr": "1e-3"}},
            'spec.toml:15: $.optimizer.lr = "1e-3" must be a number, got a string; hint: remove the quotes: 1e-3',
        ),
        ({"optimizer": {"lr": True}}, "spec.toml:15: $.optimizer.lr = true must be a number, got a boolean"),
        ({"optimizer": {"lr": float("inf")}}, "spec.toml:15: $.optimizer.lr = inf must be a finite number"),
        (
            {"model": {"tie_embeddings": "false"}},
            'spec.toml:9: $.model.tie_embeddings = "false" must be true or false, got a string; '
            "hint: write false (lower case, no quotes)",
        ),
        (
            {"model": {"tie_embeddings": 0}},
            "spec.toml:9: $.model.tie_embeddings = 0 must be true or false, got an integer; hint: write false",
        ),
        (
            {"model": {"tie_embeddings": "yes"}},
            'spec.toml:9: $.model.tie_embeddings = "yes" must be true or false, got a string; '
            "hint: the default is tie_embeddings = true",
        ),
        ({"run": {"name": 5}}, 'spec.toml:2: $.run.name = 5 must be a string, got an integer; hint: quote it: "5"'),
        ({"run": {"name": ["a"]}}, 'spec.toml:2: $.run.name = ["a"] must be a string, got an array'),
        (
            {"model": {"num_query_groups": "2"}},
            'spec.toml:9: $.model.num_query_groups = "2" must be an integer, got a string; hint: remove the quotes: 2',
        ),
    ],
    ids=[
        "int-str",
        "int-float",
        "int-whole-float",
        "int-bool",
        "float-str",
        "float-bool",
        "float-inf",
        "bool-str",
        "bool-int",
        "bool-other",
        "str-int",
        "str-array",
        "optional-int-str",
    ],
)
def test_types_are_strict(tables: dict[str, dict[str, Any]], expected: str) -> None:
    assert formatted(spec_toml(**tables)) == [expected]


@pytest.mark.parametrize(
    ("tables", "expected"),
    [
        (
            {"model": {"normalization": "rmsnrom"}},
            "spec.toml:9: $.model.normalization = \"rmsnrom\" must be one of 'layernorm', 'rmsnorm'; "
            "hint: did you mean 'rmsnorm'?",
        ),
        (
            {"model": {"normalization": "batchnorm"}},
            "spec.toml:9: $.model.normalization = \"batchnorm\" must be one of 'layernorm', 'rmsnorm'; "
            'hint: the default is normalization = "layernorm"',
        ),
        (
            {"model": {"normalization": 1}},
            "spec.toml:9: $.model.normalization = 1 must be one of 'layernorm', 'rmsnorm', got an integer; "
            'hint: the default is normalization = "layernorm"',
        ),
        (
            {"model": {"kind": "transformer"}},
            'spec.toml:9: $.model.kind = "transformer" must be \'gpt\'; hint: the default is kind = "gpt"',
        ),
        (
            {"precision": {"fp8": "hybrid"}},
            "spec.toml:17: $.precision.fp8 = \"hybrid\" must be one of 'delayed', 'tensorwise', 'blockwise', 'mxfp8'",
        ),
    ],
    ids=["close", "far", "wrong-type", "single-choice", "optional"],
)
def test_choices(tables: dict[str, dict[str, Any]], expected: str) -> None:
    assert formatted(spec_toml(**tables)) == [expected]


@pytest.mark.parametrize(
    ("tables", "expected"),
    [
        (
            {"optimizer": {"betas": [0.9]}},
            [
                "spec.toml:16: $.optimizer.betas = [0.9] must be an array of 2 numbers, got an array of 1; "
                "hint: the default is betas = [0.9, 0.999]"
            ],
        ),
        (
            {"data": {"split": [1.0, 2.0, 3.0, 4.0]}},
            [
                "spec.toml:17: $.data.split = [1.0, 2.0, 3.0, 4.0] must be an array of 3 numbers, got an array of 4; "
                "hint: the default is split = [98.0, 1.0, 1.0]"
            ],
        ),
        (
            {"optimizer": {"betas": 0.9}},
            [
                "spec.toml:16: $.optimizer.betas = 0.9 must be an array of 2 numbers, got a float; "
                "hint: the default is betas = [0.9, 0.999]"
            ],
        ),
        (
            {"optimizer": {"betas": [0.9, "0.95"]}},
            [
                'spec.toml:16: $.optimizer.betas[1] = "0.95" must be a number, got a string; hint: remove the quotes: 0.95'
            ],
        ),
        (
            {"data": {"kind": "indexed", "sources": {"prefix": "a"}}},
            [
                'spec.toml:18: $.data.sources = { prefix = "a" } must be an array of tables, got a table; '
                "hint: write each element as a table under its own [[data.sources]] header"
            ],
        ),
        (
            {"data": {"kind": "indexed", "sources": [1, {"prefix": "a", "wieght": 2.0}, {"weight": 1.0}]}},
            [
                "spec.toml:18: $.data.sources[0] = 1 must be a table, got an integer; "
                "hint: write each element as a table under its own [[data.sources]] header",
                "spec.toml:18: unknown key 'wieght' in [[data.sources]]; hint: did you mean 'weight'?",
                "spec.toml:18: missing required key 'prefix' in [[data.sources]]; "
                'hint: add a line prefix = "..." under [[data.sources]]',
            ],
        ),
    ],
    ids=["tuple-short", "tuple-long", "tuple-scalar", "tuple-element", "sources-table", "sources-elements"],
)
def test_arrays(tables: dict[str, dict[str, Any]], expected: list[str]) -> None:
    assert formatted(spec_toml(**tables)) == expected


def test_array_of_tables_errors_point_at_each_element() -> None:
    text = spec_toml(data={"kind": "indexed"}) + '[[data.sources]]\nprefix = "a"\n[[data.sources]]\nprefx = "b"\n'
    assert formatted(text) == [
        "spec.toml:20: missing required key 'prefix' in [[data.sources]]; "
        'hint: add a line prefix = "..." under [[data.sources]]',
        "spec.toml:21: unknown key 'prefx' in [[data.sources]]; hint: did you mean 'prefix'?",
    ]


@pytest.mark.parametrize(
    ("tables", "expected"),
    [
        (
            {"model": {"hiden_size": 64}},
            "spec.toml:9: unknown key 'hiden_size' in [model]; hint: did you mean 'hidden_size'?",
        ),
        ({"model": {"tensor": 2}}, "spec.toml:9: unknown key 'tensor' in [model]; hint: tensor belongs in [parallel]"),
        (
            {"model": {"colour": "blue"}},
            "spec.toml:9: unknown key 'colour' in [model]; hint: valid keys in [model]: kind, num_layers, "
            "hidden_size, num_attention_heads, num_query_groups, head_dim, qk_layernorm, query_scaling, "
            "ffn_hidden_size, vocab_size, make_vocab_size_divisible_by, seq_length, normalization, norm_epsilon, "
            "norm_zero_centered, activation, gelu_approximation, position_embedding, rotary_base, "
            "rope_scaling_factor, tie_embeddings, embedding_multiplier, logits_multiplier, add_bias_linear, add_qkv_bias, "
            "dropout, "
            "init_method_std, transformer_impl, num_experts, moe_router_topk, moe_router_pre_softmax",
        ),
        ({"paralel": {"tensor": 2}}, "spec.toml:16: unknown table [paralel]; hint: did you mean [parallel]?"),
        (
            {"telemetry": {"project": "x"}},
            "spec.toml:16: unknown table [telemetry]; hint: valid tables: run, launch, model, parallel, batch, train, "
            "optimizer, scheduler, precision, recompute, offload, overlap, fusions, cuda_graph, data, loss, "
            "checkpoint, hooks, init, peft, logging, profile, distill",
        ),
        ({"parallel": {"tensr": 2}}, "spec.toml:17: unknown key 'tensr' in [parallel]; hint: did you mean 'tensor'?"),
    ],
    ids=["close", "other-table", "nothing-close", "table-close", "table-nothing-close", "defaulted-table"],
)
def test_unknown_keys(tables: dict[str, dict[str, Any]], expected: str) -> None:
    assert formatted(spec_toml(**tables)) == [expected]


def test_unknown_keys_at_the_top_level() -> None:
    text = "hidden_size = 64\nbogus = 1\n" + spec_toml()
    assert formatted(text) == [
        "spec.toml:1: unknown key 'hidden_size' at the top level; hint: hidden_size belongs in [model]",
        "spec.toml:2: unknown key 'bogus' at the top level; hint: valid tables: run, launch, model, parallel, "
        "batch, train, optimizer, scheduler, precision, recompute, offload, overlap, fusions, cuda_graph, data, "
        "loss, checkpoint, hooks, init, peft, logging, profile, distill",
    ]


def test_missing_required_key_points_at_its_table() -> None:
    assert formatted(spec_toml(model={"hidden_size": None})) == [
        "spec.toml:3: missing required key 'hidden_size' in [model]; "
        "hint: add a line hidden_size = <integer> under [model]",
    ]


def test_missing_required_tables_have_no_line() -> None:
    assert formatted(spec_toml(optimizer=None, model=None)) == [
        "spec.toml: missing required table [model]; hint: add the [model] table with the keys num_layers, "
        "hidden_size, num_attention_heads, vocab_size and seq_length",
        "spec.toml: missing required table [optimizer]; hint: add the [optimizer] table with the key lr",
    ]


def test_a_table_written_as_a_value() -> None:
    assert formatted("model = 3\n" + spec_toml(model=None)) == [
        "spec.toml:1: $.model = 3 must be a table, got an integer; "
        "hint: write it as a [model] table with its keys on the lines below",
    ]


def test_every_table_is_checked_in_one_pass() -> None:
    text = spec_toml(
        run={"name": 1},
        model={"hidden_size": "64"},
        batch={"micro_batch_size": 1.5},
        train={"iters": None},
        optimizer={"lr": "x"},
        parallel={"tensr": 2},
    )
    assert formatted(text) == [
        'spec.toml:2: $.run.name = 1 must be a string, got an integer; hint: quote it: "1"',
        'spec.toml:5: $.model.hidden_size = "64" must be an integer, got a string; hint: remove the quotes: 64',
        "spec.toml:11: $.batch.micro_batch_size = 1.5 must be an integer, got a float; "
        "hint: write a whole number, such as 2",
        "spec.toml:12: missing required key 'iters' in [train]; hint: add a line iters = <integer> under [train]",
        'spec.toml:14: $.optimizer.lr = "x" must be a number, got a string',
        "spec.toml:16: unknown key 'tensr' in [parallel]; hint: did you mean 'tensor'?",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[run\nname = "a"\n',
            "spec.toml:1: invalid TOML at column 5: the table header is not closed; hint: write the header as [name]",
        ),
        (
            "[run]\nname = \n",
            "spec.toml:2: invalid TOML at column 8: this value is not valid TOML; "
            'hint: quote text ("like this"); write numbers, true and false bare; arrays as [1, 2]',
        ),
        (
            "[run]\nname = quickstart\n",
            "spec.toml:2: invalid TOML at column 8: this value is not valid TOML; "
            'hint: quote text ("like this"); write numbers, true and false bare; arrays as [1, 2]',
        ),
        (
            "[optimizer]\nbetas = [0.9, 0.95\n",
            "spec.toml:2: invalid TOML at the end of the file: the array is not closed; "
            "hint: separate elements with commas and end the array with ]",
        ),
        (
            '[run]\nname = "abc\n',
            "spec.toml:2: invalid TOML at column 12: the string is not closed before the end of the line; "
            'hint: end the string with the quote it starts with, or use """ for text over several lines',
        ),
        (
            "[train]\niters = 1 log_interval = 2\n",
            "spec.toml:2: invalid TOML at column 11: unexpected text after the value; "
            "hint: put each key = value on its own line; start comments with #",
        ),
        (
            "[train]\niters = 1\niters = 2\n",
            "spec.toml:3: invalid TOML at column 10: this key or table is already defined; "
            "hint: keep one definition and delete the other",
        ),
        (
            "[train]\n[train]\n",
            "spec.toml:2: invalid TOML at column 7: this key or table is already defined; "
            "hint: keep one definition and delete the other",
        ),
        (
            "[launch]\nmesh = { data = 1\n",
            "spec.toml:2: invalid TOML at column 18: the inline table is not closed; "
            "hint: write inline tables on one line, as { a = 1, b = 2 }, or use a [table] header",
        ),
        (
            "[data]\nsources = []\n[[data.sources]]\n",
            "spec.toml:3: invalid TOML at column 15: this adds to a table or array that was already written out in full; "
            "hint: define each table in one place, under one [header]",
        ),
        (
            '[data]\nprefix = "C:\\data"\n',
            "spec.toml:2: invalid TOML at column 15: a backslash in a double-quoted string must start an escape; "
            "hint: write \\\\ for a backslash, or use single quotes: 'C:\\path'",
        ),
        (
            "num_layers\n",
            "spec.toml:1: invalid TOML at column 11: a key must be followed by '=' and a value; hint: write key = value",
        ),
        (
            "$x = 1\n",
            "spec.toml:1: invalid TOML at column 1: this line is neither a key = value pair nor a [table] header; "
            "hint: write key = value, or a [table] header on its own line",
        ),
    ],
    ids=[
        "header",
        "no-value",
        "bare-word",
        "open-array",
        "open-string",
        "two-on-a-line",
        "duplicate-key",
        "duplicate-table",
        "open-inline-table",
        "static-array-extended",
        "backslash",
        "no-equals",
        "bad-statement",
    ],
)
def test_malformed_toml(text: str, expected: str) -> None:
    result = load(text, "spec.toml")
    assert (result.spec, result.index.lines) == (None, {})
    assert [format_diagnostic(d) for d in result.diagnostics] == [expected]
    assert result.diagnostics[0].path == "$"
