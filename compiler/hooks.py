"""Check a user's hook file without importing it.

The compiler must not run user code, so a hook is found by reading the file:
Python's own parser decides whether it is valid (its messages and lines are the
ones the user will see at run time), and libcst finds the top-level ``def`` and
its parameters, which are compared with how the runtime calls the hook.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import Any, Literal

import attrs
import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

from bridgec.compiler.errors import close_match

ParamKind = Literal["positional_only", "positional", "var_positional", "keyword_only", "var_keyword"]


@attrs.frozen(kw_only=True)
class HookSignature:
    """How the runtime calls a hook."""

    positional: tuple[str, ...]
    """Arguments always passed by position (the hook may name them anything)."""
    keyword: tuple[str, ...] = ()
    """Arguments sometimes passed by keyword, so they need defaults."""

    def render(self) -> str:
        return ", ".join([*self.positional, *(f"{name}=False" for name in self.keyword)])


FORWARD_STEP = HookSignature(positional=("state", "data_iterator", "model"), keyword=("return_schedule_plan",))
"""The runtime binds state; megatron-core's schedules pass the rest, return_schedule_plan=True by keyword."""
LOSS = HookSignature(positional=("loss_mask", "output_tensor"))
"""The runtime binds loss_mask; megatron-core passes output_tensor."""
SIGNATURES: Mapping[str, HookSignature] = {"forward_step": FORWARD_STEP, "loss": LOSS}
"""[hooks] key -> how the runtime calls the function it names."""
EVENT_METHOD = HookSignature(positional=("self", "context"))
"""How the loop calls a callback's event method: on the instance, with one CallbackContext."""


@attrs.frozen(kw_only=True)
class Param:
    name: str
    kind: ParamKind
    has_default: bool


@attrs.frozen(kw_only=True)
class Function:
    """A top-level ``def`` of the hook file."""

    name: str
    line: int
    is_async: bool
    params: tuple[Param, ...]

    def render(self) -> str:
        """``def name(a, b=..., *args, **kwargs)``, as a message can show it."""
        parts: list[str] = []
        for index, param in enumerate(self.params):
            if param.kind == "keyword_only" and (
                index == 0 or self.params[index - 1].kind not in ("keyword_only", "var_positional")
            ):
                parts.append("*")
            parts.append(
                {"var_positional": "*", "var_keyword": "**"}.get(param.kind, "")
                + param.name
                + ("=..." if param.has_default else "")
            )
            if param.kind == "positional_only" and (
                index + 1 == len(self.params) or self.params[index + 1].kind != "positional_only"
            ):
                parts.append("/")
        return f"{'async ' if self.is_async else ''}def {self.name}({', '.join(parts)})"


@attrs.frozen(kw_only=True)
class ClassDef:
    """A top-level ``class`` of the hook file, with the functions defined in its body."""

    name: str
    line: int
    methods: Mapping[str, Function]


@attrs.frozen(kw_only=True)
class HookFile:
    """A hook file that parses: its top-level functions and classes by name (the last definition wins, as in Python)."""

    functions: Mapping[str, Function]
    classes: Mapping[str, ClassDef] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class Found:
    """The hook is defined and can be called the way the runtime calls it."""

    function: Function


@attrs.frozen(kw_only=True)
class NotFound:
    """No top-level ``def`` has the hook's name."""

    suggestion: str | None
    """A defined function with a close name, if any."""


@attrs.frozen(kw_only=True)
class BadSignature:
    """The hook is defined, but calling it the runtime's way would fail."""

    function: Function
    problem: str
    """Why, as a phrase that follows the function: ``takes 2 positional parameters, but ...``."""


HookLookup = Found | NotFound | BadSignature


@attrs.frozen(kw_only=True)
class Unparsable:
    """A hook file that is not valid Python."""

    line: int | None
    column: int | None
    message: str


def read_hook_file(source: str) -> HookFile | Unparsable:
    """Parse ``source`` and list its top-level functions."""
    try:
        ast.parse(source)
    except SyntaxError as exc:
        return Unparsable(line=exc.lineno, column=exc.offset, message=exc.msg)
    except ValueError as exc:  # e.g. null bytes, on some Python versions
        return Unparsable(line=None, column=None, message=str(exc))
    try:
        wrapper = MetadataWrapper(cst.parse_module(source))
    except cst.ParserSyntaxError as exc:  # syntax newer than libcst knows
        return Unparsable(line=exc.raw_line, column=exc.raw_column + 1, message=exc.message)
    positions = wrapper.resolve(PositionProvider)
    functions: dict[str, Function] = {}
    classes: dict[str, ClassDef] = {}
    for statement in wrapper.module.body:
        if isinstance(statement, cst.FunctionDef):
            functions[statement.name.value] = _function(statement, positions)
        elif isinstance(statement, cst.ClassDef):
            body = statement.body.body if isinstance(statement.body, cst.IndentedBlock) else ()
            methods = {
                node.name.value: _function(node, positions) for node in body if isinstance(node, cst.FunctionDef)
            }
            classes[statement.name.value] = ClassDef(
                name=statement.name.value, line=positions[statement.name].start.line, methods=methods
            )
    return HookFile(functions=functions, classes=classes)


def _function(statement: cst.FunctionDef, positions: Mapping[cst.CSTNode, Any]) -> Function:
    return Function(
        name=statement.name.value,
        line=positions[statement.name].start.line,
        is_async=statement.asynchronous is not None,
        params=_params(statement.params),
    )


def _params(params: cst.Parameters) -> tuple[Param, ...]:
    found = [
        Param(name=p.name.value, kind="positional_only", has_default=p.default is not None)
        for p in params.posonly_params
    ]
    found += [Param(name=p.name.value, kind="positional", has_default=p.default is not None) for p in params.params]
    if isinstance(params.star_arg, cst.Param):
        found.append(Param(name=params.star_arg.name.value, kind="var_positional", has_default=False))
    found += [
        Param(name=p.name.value, kind="keyword_only", has_default=p.default is not None) for p in params.kwonly_params
    ]
    if params.star_kwarg is not None:
        found.append(Param(name=params.star_kwarg.name.value, kind="var_keyword", has_default=False))
    return tuple(found)


def find_hook(hook_file: HookFile, name: str, expected: HookSignature) -> HookLookup:
    """Look up the hook ``name`` and check it can be called as ``expected`` says."""
    function = hook_file.functions.get(name)
    if function is None:
        return NotFound(suggestion=close_match(name, sorted(hook_file.functions)))
    problem = signature_problem(function, expected)
    return Found(function=function) if problem is None else BadSignature(function=function, problem=problem)


def signature_problem(function: Function, expected: HookSignature) -> str | None:
    """Why ``function`` cannot be called the way ``expected`` says, or None when it can."""
    if function.is_async:
        return "is async, but the training loop calls it synchronously"
    count = len(expected.positional)
    slots = [p for p in function.params if p.kind in ("positional_only", "positional")]
    takes_args = any(p.kind == "var_positional" for p in function.params)
    takes_kwargs = any(p.kind == "var_keyword" for p in function.params)
    if len(slots) < count and not takes_args:
        return (
            f"takes {len(slots)} positional parameter{'s' if len(slots) != 1 else ''}, "
            f"but is called with {count}: ({', '.join(expected.positional)})"
        )
    for param in slots[count:]:
        if not param.has_default and param.name not in expected.keyword:
            return f"has a parameter {param.name!r} with no default, but only {count} arguments are passed"
    for param in function.params:
        if param.kind == "keyword_only" and not param.has_default and param.name not in expected.keyword:
            return f"has a keyword-only parameter {param.name!r} with no default, which is never passed"
    for keyword in expected.keyword:
        problem = _keyword_problem(keyword, slots[:count], function.params, takes_kwargs)
        if problem is not None:
            return problem
    return None


def _keyword_problem(keyword: str, first: list[Param], params: tuple[Param, ...], takes_kwargs: bool) -> str | None:
    named = [p for p in params if p.name == keyword and p.kind in ("positional", "keyword_only")]
    if any(p.name == keyword for p in first):
        return f"takes {keyword!r} among its first {len(first)} parameters, but {keyword} is passed by keyword"
    if named and not named[0].has_default:
        return f"needs a default for {keyword!r}: it is passed only sometimes, as {keyword}=True"
    if not named and not takes_kwargs:
        return f"does not accept {keyword}=True, which megatron-core passes by keyword"
    return None


@attrs.frozen(kw_only=True)
class MethodProblem:
    """A method of a callback class that the loop would never call, or could not call."""

    method: Function
    message: str
    """What is wrong, as a phrase that follows ``Class.method (file:line)``."""
    hint: str


def callback_problems(cls: ClassDef, events: tuple[str, ...]) -> list[MethodProblem]:
    """Every public method of ``cls`` must be an event, callable as ``method(context)``.

    Names with a leading underscore (``__init__``, helpers) are the class's own
    business; any other name is a typo of an event or a method nobody calls,
    and both are worth stopping for (``on_trian_step_end`` would never fire).
    """
    problems: list[MethodProblem] = []
    for name, method in cls.methods.items():
        if name.startswith("_"):
            continue
        if name not in events:
            near = close_match(name, events)
            problems.append(
                MethodProblem(
                    method=method,
                    message="is not a training event, so it would never be called",
                    hint=f"did you mean {near!r}?"
                    if near
                    else "rename it to one of " + ", ".join(events) + ", or start its name with an underscore",
                )
            )
            continue
        problem = signature_problem(method, EVENT_METHOD)
        if problem is not None:
            problems.append(
                MethodProblem(method=method, message=problem, hint=f"define it as def {name}(self, context)")
            )
    return problems
