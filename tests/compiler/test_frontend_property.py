"""Property: whatever the text, compiling ends in a script that parses or in diagnostics, never an exception.

Specs start valid (every table written out), then values, types and keys are
mutated, keys and tables dropped, garbage inserted; separately, random edits
and bytes are spliced into the TOML text itself.
"""

from __future__ import annotations

import ast
import copy
import datetime
import typing
from typing import Any

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridgec.compiler.compile import compile_spec
from bridgec.compiler.errors import format_diagnostic, is_error
from bridgec.compiler.spec import DataSource, Spec
from tests.compiler.conftest import MINIMAL, SPEC_DIR, MemoryFiles, dump_toml, front, idx_header

FULL: dict[str, dict[str, Any]] = {
    **copy.deepcopy(MINIMAL),
    "launch": {"device": "cpu", "nodes": 1, "procs_per_node": 2, "timeout_minutes": 5.0},
    "parallel": {"tensor": 2, "pipeline": 1, "distributed_optimizer": True},
    "scheduler": {"warmup_iters": 2, "decay": "cosine"},
    "precision": {"dtype": "bf16"},
    "data": {"kind": "indexed", "split": [98.0, 1.0, 1.0], "sources": [{"prefix": "data/tok", "weight": 1.0}]},
    "loss": {"kind": "cross_entropy"},
    "checkpoint": {"dir": "ck", "save_interval": 5, "keep_last": 2},
    "hooks": {"file": "hooks.py", "forward_step": "forward_step"},
    "init": {"scheme": "portable"},
}
FILES = MemoryFiles(
    {
        "data/tok.bin": "",
        "data/tok.idx": idx_header(100),
        "data/tok.json": '{"tokenizer": "byte", "vocab_size": 128, "eod": 0}',
        "hooks.py": "def forward_step(state, data_iterator, model, return_schedule_plan=False):\n    pass\n",
    }
)


def _table_type(table: str) -> type:
    """The attrs class of a spec table; an optional table ([profile]) is `Table | None`."""
    hint = typing.get_type_hints(Spec)[table]
    return next(arg for arg in (hint, *typing.get_args(hint)) if attrs.has(arg))


def _paths() -> list[tuple[str, ...]]:
    """Every (table, key) of the spec, from the attrs classes, and the keys of a data source."""
    paths = []
    for table in typing.get_type_hints(Spec):
        paths += [(table, field.name) for field in attrs.fields(_table_type(table))]
    return paths + [("data", "sources", field.name) for field in attrs.fields(DataSource)]


PATHS = _paths()
KEYS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-0123456789 .\"'é[]", min_size=1, max_size=12)
SCALARS = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-3, 300),
    st.floats(),
    st.booleans(),
    st.text(max_size=12),
    st.sampled_from(["cuda", "rope", "wsd", "fp16", "fp8", "indexed", "mock", "hooks.py", "data/tok", "/abs"]),
    st.dates(),
    st.datetimes(),
    st.times(),
)
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=3), max_leaves=6
)


def _set(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    table = data.setdefault(path[0], {})
    if not isinstance(table, dict):
        return
    if len(path) == 3:  # a key of the first data source
        sources = table.get("sources")
        if isinstance(sources, list) and sources and isinstance(sources[0], dict):
            sources[0][path[2]] = value
        return
    table[path[1]] = value


def _field_type(path: tuple[str, ...]) -> Any:
    table_type = DataSource if len(path) == 3 else _table_type(path[0])
    return typing.get_type_hints(table_type)[path[-1]]


def _typed(type_: Any) -> st.SearchStrategy[Any]:
    """Values load accepts for ``type_``, with wild numbers, so the validation rules get fuzzed too."""
    origin, args = typing.get_origin(type_), typing.get_args(type_)
    if origin is typing.Literal:
        return st.sampled_from(args)
    if type(None) in args:
        return _typed(next(a for a in args if a is not type(None)))
    if origin is dict:
        axes = st.sampled_from(["data", "fsdp", "tensor", "stage", "context", "expert", "diloco", "bogus"])
        return st.dictionaries(axes, _typed(args[1]), max_size=4)
    if origin is tuple and args[-1] is Ellipsis:
        return st.lists(_typed(args[0]), max_size=3)
    if origin is tuple:
        return st.tuples(*(_typed(a) for a in args)).map(list)
    if attrs.has(type_):
        hints = typing.get_type_hints(type_)
        fields = attrs.fields(type_)
        return st.fixed_dictionaries(
            {f.name: _typed(hints[f.name]) for f in fields if f.default is attrs.NOTHING},
            optional={f.name: _typed(hints[f.name]) for f in fields if f.default is not attrs.NOTHING},
        )
    strategies: dict[Any, st.SearchStrategy[Any]] = {
        bool: st.booleans(),
        int: st.integers(-3, 130) | st.integers(-(2**63), 2**63 - 1),
        float: st.floats(-3, 3) | st.floats(allow_nan=False, allow_infinity=False),
        str: st.sampled_from(["hooks.py", "data/tok", "missing", "", "a/b", "/abs/x"]) | st.text(max_size=8),
    }
    return strategies[type_]


TYPED = st.sampled_from(PATHS).flatmap(lambda path: st.tuples(st.just("set"), st.just(path), _typed(_field_type(path))))
MUTATIONS = st.one_of(
    TYPED,
    TYPED,
    TYPED,
    st.tuples(st.just("set"), st.sampled_from(PATHS), VALUES),
    st.tuples(st.just("drop"), st.sampled_from(PATHS), st.none()),
    st.tuples(st.just("add"), st.sampled_from(sorted(FULL)), st.tuples(KEYS, VALUES)),
    st.tuples(st.just("drop-table"), st.sampled_from(sorted(FULL)), st.none()),
    st.tuples(st.just("replace-table"), st.sampled_from(sorted(FULL)), SCALARS),
    st.tuples(st.just("new-table"), KEYS, st.dictionaries(KEYS, VALUES, max_size=3)),
)


def _mutate(data: dict[str, Any], mutation: tuple[str, Any, Any]) -> None:
    kind, where, what = mutation
    if kind == "set":
        _set(data, where, what)
    elif kind == "drop" and isinstance(data.get(where[0]), dict):
        data[where[0]].pop(where[-1], None)
    elif kind == "add" and isinstance(data.get(where), dict):
        data[where][what[0]] = what[1]
    elif kind == "drop-table":
        data.pop(where, None)
    elif kind in ("replace-table", "new-table"):
        data[where] = what


def _dump(data: dict[str, Any]) -> str:
    """TOML for ``data``; scalars at the top level go first, as TOML needs."""
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    head = dump_toml({"_": scalars}).split("\n", 1)[1] if scalars else ""
    return head + (dump_toml(tables) if tables else "")


def _check(text: str) -> None:
    result = front(text, FILES)
    assert result.spec is not None or any(is_error(d) for d in result.diagnostics)
    compiled = compile_spec(
        text, spec_name="spec.toml", spec_path=SPEC_DIR / "spec.toml", output_path=SPEC_DIR / "run.py", files=FILES
    )
    if compiled.source is not None:
        ast.parse(compiled.source)  # a spec without errors always compiles to Python
    else:
        assert any(is_error(d) for d in compiled.diagnostics)
    line_count = text.count("\n") + 1
    for diagnostic in result.diagnostics:
        assert format_diagnostic(diagnostic).startswith("spec.toml")
        assert diagnostic.line is None or 1 <= diagnostic.line <= line_count
        assert diagnostic.path.startswith("$")


def test_the_full_spec_is_valid() -> None:
    result = front(_dump(FULL), FILES)
    assert result.spec is not None and result.diagnostics == ()


@settings(max_examples=250, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(MUTATIONS, min_size=1, max_size=6))
def test_mutated_specs_end_in_diagnostics(mutations: list[tuple[str, Any, Any]]) -> None:
    data = copy.deepcopy(FULL)
    for mutation in mutations:
        _mutate(data, mutation)
    _check(_dump(data))


EDITS = st.one_of(
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.text(max_size=8)),
    st.tuples(
        st.just("insert"),
        st.integers(0, 10**6),
        st.sampled_from(['"', "'", "[", "]", "{", "}", "=", "\n", "#", '"""', "[[", ".", ",", "\\"]),
    ),
    st.tuples(st.just("bytes"), st.integers(0, 10**6), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 40)),
)


@settings(max_examples=250, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(EDITS, min_size=1, max_size=4))
def test_edited_text_ends_in_diagnostics(edits: list[tuple[str, int, Any]]) -> None:
    text = _dump(FULL)
    for kind, position, what in edits:
        at = position % (len(text) + 1)
        if kind == "insert":
            text = text[:at] + what + text[at:]
        elif kind == "bytes":
            text = text[:at] + what.decode("utf-8", errors="replace") + text[at:]
        else:
            text = text[:at] + text[at + what :]
    _check(text)


def test_datetimes_and_other_odd_values_are_reported_not_raised() -> None:
    _check(_dump({**FULL, "run": {"name": datetime.datetime(2024, 1, 1, 12, 0)}, "model": {"nested": {"a": [{}]}}}))
