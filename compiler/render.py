"""Render a Plan to Python source with jinja2, one template per section of the script.

Templates see only the Plan (StrictUndefined: a missing name is an error, not
an empty string). Values reach the text through :func:`py_literal`, which
writes Python literals (``repr``), so a string from the spec can only ever
become a string literal.
"""

from __future__ import annotations

import functools
import shlex
from importlib import resources

import jinja2

from bridgec.compiler.plan import Argument, Call, Code, Constant, Import, Items, Plan, Value

TEMPLATE = "script.py.j2"


def py_literal(value: Value) -> str:
    """A Python literal for a plan value; deterministic (repr of floats, tuples as tuples)."""
    if isinstance(value, tuple):
        inner = ", ".join(py_literal(item) for item in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, str):
        return _string_literal(value)
    if isinstance(value, (bool, int, float)) or value is None:
        return repr(value)
    raise TypeError(f"not a plan value: {value!r}")


def _string_literal(text: str) -> str:
    """repr(), but double-quoted like the rest of the script when the text has no double quote."""
    literal = repr(text)
    if literal.startswith("'") and '"' not in text:
        literal = '"' + literal[1:-1].replace("\\'", "'") + '"'
    return literal


def docstring_text(text: str) -> str:
    """Text made safe inside a triple-double-quoted docstring.

    Backslashes and double quotes are escaped; characters that are not
    printable (NUL, carriage returns, line separators...) are written as escapes,
    so the docstring's value is exactly ``text``.
    """
    out = []
    for char in text:
        if char == "\\":
            out.append("\\\\")
        elif char == '"':
            out.append('\\"')
        elif char in "\n\t" or char.isprintable():
            out.append(char)
        else:
            out.append(repr(char)[1:-1])
    return "".join(out)


def render_call(call: Call, indent: int) -> str:
    """``function(`` one argument per line ``)``; the first line unindented (it follows ``name = `` or ``return ``)."""
    if not call.arguments:
        return f"{call.function}()"
    inner = " " * (indent + 4)
    lines = [f"{call.function}("]
    lines += [inner + _argument(argument, indent + 4) for argument in call.arguments]
    lines.append(" " * indent + ")")
    return "\n".join(lines)


def _argument(argument: Argument, indent: int) -> str:
    prefix = "" if argument.name is None else f"{argument.name}="
    comment = "" if argument.comment is None else f"  # {argument.comment}"
    return f"{prefix}{_value(argument.value, indent)},{comment}"


def _value(value: Code | Call | Items | Value, indent: int) -> str:
    match value:
        case Code(text=text):
            return text
        case Call():
            return render_call(value, indent)
        case Items(items=items):
            inner = " " * (indent + 4)
            lines = ["[", *(inner + _value(item, indent + 4) + "," for item in items), " " * indent + "]"]
            return "\n".join(lines)
        case _:
            return py_literal(value)


def render_import(line: Import) -> str:
    """One import statement; a from-import longer than a line is parenthesised, one name per line."""
    if not line.names:
        return f"import {line.module}" + ("" if line.alias is None else f" as {line.alias}")
    text = f"from {line.module} import {', '.join(line.names)}"
    if len(text) <= 120:
        return text
    return "\n".join([f"from {line.module} import (", *(f"    {name}," for name in line.names), ")"])


def render_constant(constant: Constant) -> str:
    text = f"{constant.name} = {py_literal(constant.value)}"
    return text if constant.why is None else f"{text}  # {constant.why}"


@functools.cache
def environment() -> jinja2.Environment:
    loader = jinja2.FunctionLoader(
        lambda name: resources.files("bridgec.templates").joinpath(name).read_text(encoding="utf-8")
    )
    env = jinja2.Environment(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["py"] = py_literal
    env.filters["doc"] = docstring_text
    env.filters["call"] = render_call
    env.filters["import_line"] = render_import
    env.filters["constant"] = render_constant
    env.filters["shell_words"] = shlex.join
    return env


def render(plan: Plan) -> str:
    """The generated script's text."""
    return environment().get_template(TEMPLATE).render(plan=plan)
