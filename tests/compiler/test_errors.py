"""Diagnostics and how they print."""

from __future__ import annotations

import datetime

import pytest

from bridgec.compiler.errors import (
    Diagnostic,
    SpecError,
    close_match,
    format_diagnostic,
    format_path,
    kind_of,
    render_value,
)


def test_format_with_line_and_hint() -> None:
    d = Diagnostic(
        file="spec.toml",
        line=14,
        path="$.model.num_attention_heads",
        message="$.model.num_attention_heads = 6 is not divisible by parallel.tensor = 4 (each "
        "tensor-parallel rank needs whole heads)",
        hint="tensor = 2 or 3, or 8 heads",
    )
    assert format_diagnostic(d) == (
        "spec.toml:14: $.model.num_attention_heads = 6 is not divisible by parallel.tensor = 4 (each "
        "tensor-parallel rank needs whole heads); hint: tensor = 2 or 3, or 8 heads"
    )


def test_format_leaves_out_unknown_line_and_missing_hint() -> None:
    d = Diagnostic(file="specs/a.toml", line=None, path="$.model", message="missing required table [model]")
    assert format_diagnostic(d) == "specs/a.toml: missing required table [model]"


def test_format_marks_warnings() -> None:
    d = Diagnostic(file="spec.toml", line=3, path="$.x", message="m", hint="h", severity="warning")
    assert format_diagnostic(d) == "spec.toml:3: warning: m; hint: h"


def test_spec_error_carries_every_diagnostic() -> None:
    first = Diagnostic(file="spec.toml", line=1, path="$", message="one")
    second = Diagnostic(file="spec.toml", line=2, path="$", message="two", hint="fix")
    error = SpecError([first, second])
    assert error.diagnostics == (first, second)
    assert str(error) == "spec.toml:1: one\nspec.toml:2: two; hint: fix"


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ((), "$"),
        (("model", "hidden_size"), "$.model.hidden_size"),
        (("data", "sources", 0, "prefix"), "$.data.sources[0].prefix"),
        (("model", "odd key"), '$.model["odd key"]'),
    ],
)
def test_format_path(path: tuple[str | int, ...], text: str) -> None:
    assert format_path(path) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "true"),
        (4, "4"),
        (1e-3, "0.001"),
        (float("inf"), "inf"),
        (float("-inf"), "-inf"),
        (float("nan"), "nan"),
        ("4", '"4"'),
        ([0.9, "a"], '[0.9, "a"]'),
        ((1.0, 2.0), "[1.0, 2.0]"),
        ({"prefix": "a", "odd key": 1}, '{ prefix = "a", "odd key" = 1 }'),
        ({}, "{}"),
        (datetime.date(2024, 5, 27), "2024-05-27"),
        ("x" * 100, '"' + "x" * 56 + "..."),
    ],
)
def test_render_value(value: object, text: str) -> None:
    assert render_value(value) == text


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (True, "a boolean"),
        (1, "an integer"),
        (1.5, "a float"),
        ("s", "a string"),
        ([], "an array"),
        ({}, "a table"),
        (datetime.datetime(2024, 1, 1, 1, 1), "a date-time"),
        (datetime.date(2024, 1, 1), "a date"),
        (datetime.time(1, 1), "a time"),
    ],
)
def test_kind_of(value: object, kind: str) -> None:
    assert kind_of(value) == kind


def test_close_match() -> None:
    assert close_match("hiden_size", ["num_layers", "hidden_size"]) == "hidden_size"
    assert close_match("zzz", ["num_layers", "hidden_size"]) is None
