"""Hook files are read with libcst, never imported."""

from __future__ import annotations

import pytest

from bridgec.compiler.hooks import (
    FORWARD_STEP,
    LOSS,
    BadSignature,
    Found,
    Function,
    HookFile,
    NotFound,
    Unparsable,
    find_hook,
    read_hook_file,
    signature_problem,
)


def _function(source: str, name: str) -> Function:
    parsed = read_hook_file(source)
    assert isinstance(parsed, HookFile)
    return parsed.functions[name]


def test_top_level_functions_with_lines() -> None:
    source = (
        "import os\n"
        "\n"
        "@decorator\n"
        "def step(state, data_iterator, model, return_schedule_plan=False):\n"
        "    def inner(): pass\n"
        "    return inner\n"
        "class Hooks:\n"
        "    def loss(self, loss_mask, output_tensor): pass\n"
        "if True:\n"
        "    def hidden(): pass\n"
        "async def later(a, /, b=1, *args, c, d=2, **kwargs): pass\n"
    )
    parsed = read_hook_file(source)
    assert isinstance(parsed, HookFile)
    assert sorted(parsed.functions) == ["later", "step"]
    assert parsed.functions["step"].line == 4
    assert parsed.functions["later"].render() == "async def later(a, /, b=..., *args, c, d=..., **kwargs)"


def test_the_last_definition_wins() -> None:
    parsed = read_hook_file("def f(a): pass\ndef f(a, b): pass\n")
    assert isinstance(parsed, HookFile)
    assert parsed.functions["f"].line == 2


def test_keyword_only_marker_is_rendered() -> None:
    assert _function("def f(a, *, b=1): pass\n", "f").render() == "def f(a, *, b=...)"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def f(:\n    pass\n", Unparsable(line=1, column=7, message="invalid syntax")),
        ("def f(a)\n    return a\n", Unparsable(line=1, column=9, message="expected ':'")),
        (
            "def f(a):\nreturn a\n",
            Unparsable(line=2, column=1, message="expected an indented block after function definition on line 1"),
        ),
    ],
)
def test_syntax_errors_carry_python_s_line_and_message(source: str, expected: Unparsable) -> None:
    assert read_hook_file(source) == expected


@pytest.mark.parametrize(
    "source",
    [
        "def f(state, data_iterator, model, return_schedule_plan=False): pass",
        "def f(s, it, m, return_schedule_plan=False, extra=None): pass",
        "def f(state, data_iterator, model, *, return_schedule_plan=False): pass",
        "def f(state, data_iterator, model, **kwargs): pass",
        "def f(*args, **kwargs): pass",
        "def f(state, /, data_iterator, model, return_schedule_plan=False): pass",
    ],
)
def test_forward_step_signatures_that_fit(source: str) -> None:
    assert signature_problem(_function(source, "f"), FORWARD_STEP) is None


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        (
            "def f(state, data_iterator): pass",
            "takes 2 positional parameters, but is called with 3: (state, data_iterator, model)",
        ),
        (
            "def f(state, data_iterator, model): pass",
            "does not accept return_schedule_plan=True, which megatron-core passes by keyword",
        ),
        (
            "def f(state, data_iterator, model, plan=False): pass",
            "does not accept return_schedule_plan=True, which megatron-core passes by keyword",
        ),
        (
            "def f(state, data_iterator, model, return_schedule_plan): pass",
            "needs a default for 'return_schedule_plan': it is passed only sometimes, as return_schedule_plan=True",
        ),
        (
            "def f(state, data_iterator, model, extra, return_schedule_plan=False): pass",
            "has a parameter 'extra' with no default, but only 3 arguments are passed",
        ),
        (
            "def f(state, data_iterator, model, *, flag, return_schedule_plan=False): pass",
            "has a keyword-only parameter 'flag' with no default, which is never passed",
        ),
        (
            "def f(state, return_schedule_plan, model, x=False): pass",
            "takes 'return_schedule_plan' among its first 3 parameters, but return_schedule_plan is passed by keyword",
        ),
        (
            "def f(state, *args): pass",
            "does not accept return_schedule_plan=True, which megatron-core passes by keyword",
        ),
        (
            "async def f(state, data_iterator, model, return_schedule_plan=False): pass",
            "is async, but the training loop calls it synchronously",
        ),
    ],
)
def test_forward_step_signatures_that_do_not_fit(source: str, problem: str) -> None:
    assert signature_problem(_function(source, "f"), FORWARD_STEP) == problem


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("def f(loss_mask, output_tensor): pass", None),
        ("def f(mask, output, scale=1.0): pass", None),
        ("def f(*tensors): pass", None),
        (
            "def f(output_tensor): pass",
            "takes 1 positional parameter, but is called with 2: (loss_mask, output_tensor)",
        ),
        (
            "def f(loss_mask, output_tensor, scale): pass",
            "has a parameter 'scale' with no default, but only 2 arguments are passed",
        ),
    ],
)
def test_loss_signatures(source: str, problem: str | None) -> None:
    assert signature_problem(_function(source, "f"), LOSS) == problem


def test_expected_signatures_render_as_a_definition_to_copy() -> None:
    assert FORWARD_STEP.render() == "state, data_iterator, model, return_schedule_plan=False"
    assert LOSS.render() == "loss_mask, output_tensor"


def test_find_hook() -> None:
    parsed = read_hook_file("def forward_stp(a): pass\ndef loss(loss_mask, output_tensor): pass\n")
    assert isinstance(parsed, HookFile)
    assert find_hook(parsed, "loss", LOSS) == Found(function=parsed.functions["loss"])
    assert find_hook(parsed, "forward_step", FORWARD_STEP) == NotFound(suggestion="forward_stp")
    assert find_hook(parsed, "zzz", LOSS) == NotFound(suggestion=None)
    assert find_hook(parsed, "forward_stp", FORWARD_STEP) == BadSignature(
        function=parsed.functions["forward_stp"],
        problem="takes 1 positional parameter, but is called with 3: (state, data_iterator, model)",
    )
