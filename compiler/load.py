"""Load: TOML text -> :class:`Spec`, or every reason it is not one.

tomllib parses; a dedicated cattrs converter structures the tables into the
frozen spec classes. The converter is strict where cattrs is lenient by default
(``int("4")``, ``int(3.7)``, ``bool("no")`` are all errors here) and runs with
detailed validation, so one pass collects every problem in every table. Each
leaf of cattrs' error tree becomes one :class:`Diagnostic` with the key's line.

Nothing here knows the spec's field names: keys, types and defaults all come
from walking the attrs classes, so new fields need no change here.
"""

from __future__ import annotations

import functools
import math
import re
import tomllib
import typing
from collections.abc import Iterator
from typing import Any, Literal

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError, IterableValidationNote
from cattrs.gen import make_dict_structure_fn

from bridgec.compiler import foreign_keys
from bridgec.compiler.errors import (
    Diagnostic,
    KeyPath,
    close_match,
    dotted,
    format_path,
    kind_of,
    render_value,
    sort_key,
)
from bridgec.compiler.locate import EMPTY_INDEX, LineIndex, build_index
from bridgec.compiler.mixed_precision import fill_recipe
from bridgec.compiler.rule_base import NOT_LOADED
from bridgec.compiler.spec import Spec


@attrs.frozen
class LoadResult:
    spec: Spec | None
    """The structured spec; None when any diagnostic stopped structuring."""
    index: LineIndex
    """Key path -> line, for later stages' diagnostics (empty for malformed TOML)."""
    diagnostics: tuple[Diagnostic, ...]
    partial: Spec | None = None
    """When ``spec`` is None: every field that loaded, the others NOT_LOADED (unknown keys left out), so the
    cross-field rules can still check what loaded. None for malformed TOML."""


def load(text: str, filename: str) -> LoadResult:
    """Parse and structure ``text``; ``filename`` is only used in diagnostics."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return LoadResult(None, EMPTY_INDEX, (syntax_diagnostic(str(exc), text, filename),))
    return load_tables(raw, build_index(text), filename)


def load_tables(raw: dict[str, Any], index: LineIndex, filename: str) -> LoadResult:
    """Structure parsed TOML tables (one file's, or a composition's: see compose.py) into a :class:`Spec`."""
    raw = fill_recipe(raw)
    try:
        spec = _CONVERTER.structure(raw, Spec)
    except (cattrs.BaseValidationError, _BadValue) as exc:
        problems = list(_problems(exc, (), Spec, Spec))
        diagnostics = [d for problem in problems for d in _diagnose(problem, raw, index, filename)]
        return LoadResult(None, index, tuple(sorted(diagnostics, key=sort_key)), _partial_spec(raw, problems))
    return LoadResult(spec, index, ())


# -- what loaded, when something did not ----------------------------------------------


def _partial_spec(raw: dict[str, Any], problems: list[_Problem]) -> Spec:
    """The spec with NOT_LOADED wherever a problem is; tables with unknown keys are rebuilt without them."""
    failed: set[KeyPath] = set()
    for problem in problems:
        if isinstance(problem.error, ForbiddenExtraKeysError):
            # not a field: marks the table as one to rebuild key by key
            failed.update(problem.path + (name,) for name in problem.error.extra_fields)
        else:
            failed.add(problem.path)
    return _partial(raw, Spec, (), failed)


def _partial(raw: object, cl: type, path: KeyPath, failed: set[KeyPath]) -> Any:
    """``cl`` from ``raw`` with NOT_LOADED for every path in ``failed`` (and tables that are not tables)."""
    if path in failed or not isinstance(raw, dict):
        return NOT_LOADED
    hints = typing.get_type_hints(cl)
    values: dict[str, Any] = {}
    for field in attrs.fields(cl):
        here = path + (field.name,)
        if field.name not in raw:
            if field.default is attrs.NOTHING:
                values[field.name] = NOT_LOADED  # a required key that is missing
            continue
        values[field.name] = _partial_value(raw[field.name], hints[field.name], here, failed)
    return cl(**values)


def _partial_value(value: object, type_: Any, path: KeyPath, failed: set[KeyPath]) -> Any:
    if path in failed:
        return NOT_LOADED
    if not any(bad[: len(path)] == path for bad in failed):
        return _CONVERTER.structure(value, type_)  # loaded cleanly, as a whole
    present = _present(type_)
    if attrs.has(present):
        return _partial(value, present, path, failed)
    element = typing.get_args(present)[0] if _is_array(present) else None
    if element is not None and attrs.has(element) and isinstance(value, list):
        return tuple(_partial(item, element, path + (index,), failed) for index, item in enumerate(value))
    return NOT_LOADED  # an array with a bad element


# -- malformed TOML ----------------------------------------------------------------

_POSITION = re.compile(r" \(at (?:line (\d+), column (\d+)|end of document)\)$")

# tomllib's message (a regex on its start) -> what it means, and how to fix it.
_SYNTAX_ADVICE: tuple[tuple[str, str, str], ...] = (
    (
        r"Invalid value",
        "this value is not valid TOML",
        'quote text ("like this"); write numbers, true and false bare; arrays as [1, 2]',
    ),
    (
        r"Invalid statement",
        "this line is neither a key = value pair nor a [table] header",
        "write key = value, or a [table] header on its own line",
    ),
    (r"Expected '=' after a key", "a key must be followed by '=' and a value", "write key = value"),
    (
        r"Expected newline or end of document",
        "unexpected text after the value",
        "put each key = value on its own line; start comments with #",
    ),
    (r"Expected ']' at the end of a table", "the table header is not closed", "write the header as [name]"),
    (
        r"Expected ']]' at the end of an array",
        "the array-of-tables header is not closed",
        "write the header as [[name]]",
    ),
    (r"Unclosed array", "the array is not closed", "separate elements with commas and end the array with ]"),
    (
        r"Unclosed inline table",
        "the inline table is not closed",
        "write inline tables on one line, as { a = 1, b = 2 }, or use a [table] header",
    ),
    (r"Unterminated string", "the string is not closed", "end the string with the quote it starts with"),
    (
        r"Cannot overwrite a value|Cannot declare|Duplicate inline table key",
        "this key or table is already defined",
        "keep one definition and delete the other",
    ),
    (
        r"Cannot mutate immutable namespace|Cannot redefine namespace",
        "this adds to a table or array that was already written out in full",
        "define each table in one place, under one [header]",
    ),
    (
        r"Invalid initial character for a key",
        "a key must be letters, digits, '_' and '-', or quoted",
        'quote other keys, as "my key" = 1',
    ),
    (
        r"Unescaped '\\' in a string",
        "a backslash in a double-quoted string must start an escape",
        "write \\\\ for a backslash, or use single quotes: 'C:\\path'",
    ),
    (
        r"Illegal character '\\n'",
        "the string is not closed before the end of the line",
        'end the string with the quote it starts with, or use """ for text over several lines',
    ),
    (r"Illegal character", "this character is not allowed in a TOML string", "remove it or write it as an escape"),
    (
        r"Invalid date or datetime",
        "this date or time is not valid",
        "write dates as 2024-05-27 or 2024-05-27T07:32:00Z",
    ),
    (
        r"Invalid hex value|Escaped character is not a Unicode",
        "this \\u escape is not a valid character",
        "write \\uXXXX with four hex digits",
    ),
)


def syntax_diagnostic(message: str, text: str, filename: str) -> Diagnostic:
    position = _POSITION.search(message)
    reason = message[: position.start()] if position else message
    if position and position.group(1):
        line: int | None = int(position.group(1))
        where = f"invalid TOML at column {position.group(2)}"
    else:
        line = max(1, text.count("\n") + (0 if text.endswith("\n") else 1))  # TOML lines end at \n only
        where = "invalid TOML at the end of the file"
    if not (position and position.group(1)) and reason == "Invalid value":
        # tomllib's word for a file that ends inside an array or right after '='
        return Diagnostic(
            file=filename,
            line=line,
            path="$",
            message=f"{where}: a value is cut off",
            hint="close every array with ] and give the last key a value",
        )
    for pattern, meaning, hint in _SYNTAX_ADVICE:
        if re.match(pattern, reason):
            return Diagnostic(file=filename, line=line, path="$", message=f"{where}: {meaning}", hint=hint)
    return Diagnostic(
        file=filename,
        line=line,
        path="$",
        message=f"{where}: {reason[:1].lower()}{reason[1:]}",
        hint="check the TOML syntax at this position",
    )


# -- the strict converter -------------------------------------------------------------


class _BadValue(ValueError):
    """A value that does not fit its field; becomes one diagnostic at the field's path."""

    def __init__(self, value: object, requirement: str, *, got: str | bool = True, hint: str | None = None) -> None:
        got_text = kind_of(value) if got is True else got
        super().__init__(f"must be {requirement}, got {got_text}" if got_text else f"must be {requirement}")
        self.value = value
        self.hint = hint


def _structure_int(value: object, _: type) -> int:
    if type(value) is int:
        return value
    if isinstance(value, float) and value.is_integer():
        raise _BadValue(value, "an integer", hint=f"write {int(value)}")
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d[\d_]*", value.strip()):
        raise _BadValue(value, "an integer", hint=f"remove the quotes: {value.strip()}")
    finite = isinstance(value, float) and math.isfinite(value)
    whole = f"write a whole number, such as {round(value)}" if finite else None
    raise _BadValue(value, "an integer", hint=whole)


def _structure_float(value: object, _: type) -> float:
    if type(value) in (int, float):
        if not math.isfinite(value):
            raise _BadValue(value, "a finite number", got=False)
        return float(value)
    if isinstance(value, str) and _is_number(value):
        raise _BadValue(value, "a number", hint=f"remove the quotes: {value.strip()}")
    raise _BadValue(value, "a number")


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _structure_bool(value: object, _: type) -> bool:
    if type(value) is bool:
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        raise _BadValue(value, "true or false", hint=f"write {value.strip().lower()} (lower case, no quotes)")
    if type(value) is int and value in (0, 1):
        raise _BadValue(value, "true or false", hint=f"write {'true' if value else 'false'}")
    raise _BadValue(value, "true or false")


def _structure_str(value: object, _: type) -> str:
    if type(value) is str:
        return value
    if isinstance(value, (bool, int, float)):
        raise _BadValue(value, "a string", hint=f"quote it: {render_value(render_value(value))}")
    raise _BadValue(value, "a string")


def _is_literal(type_: Any) -> bool:
    return typing.get_origin(type_) is Literal


def _structure_literal(value: object, type_: Any) -> object:
    choices = typing.get_args(type_)
    if any(type(value) is type(choice) and value == choice for choice in choices):
        return value
    listed = ", ".join(repr(c) for c in choices)
    requirement = f"one of {listed}" if len(choices) > 1 else listed
    same_kind = any(type(value) is type(c) for c in choices)
    match = close_match(value, [str(c) for c in choices]) if isinstance(value, str) else None
    raise _BadValue(value, requirement, got=not same_kind, hint=f"did you mean {match!r}?" if match else None)


def _is_array(type_: Any) -> bool:
    return typing.get_origin(type_) in (tuple, list)


def _array_hook(type_: Any, converter: cattrs.Converter) -> Any:
    """Arrays must be TOML arrays (cattrs would iterate a string) of the right length; elements are collected."""
    args = typing.get_args(type_)
    homogeneous = typing.get_origin(type_) is list or (len(args) == 2 and args[1] is Ellipsis)
    requirement = _array_requirement(args[0] if homogeneous else args, homogeneous)

    def structure(value: object, _: Any) -> tuple[Any, ...] | list[Any]:
        if not isinstance(value, list):
            raise _BadValue(value, requirement)
        if not homogeneous and len(value) != len(args):
            raise _BadValue(value, requirement, got=f"an array of {len(value)}")
        element_types = [args[0]] * len(value) if homogeneous else list(args)
        result, errors = [], []
        for index, (element, element_type) in enumerate(zip(value, element_types)):
            try:
                result.append(converter.structure(element, element_type))
            except Exception as exc:  # noqa: BLE001 - collected with its index, as cattrs does for iterables
                exc.add_note(IterableValidationNote(f"Structuring {type_!r} @ index {index}", index, element_type))
                errors.append(exc)
        if errors:
            raise IterableValidationError(f"While structuring {type_!r}", errors, type_)
        return result if typing.get_origin(type_) is list else tuple(result)

    return structure


def _array_requirement(element: Any, homogeneous: bool) -> str:
    if homogeneous:
        return "an array of tables" if attrs.has(element) else f"an array of {_plural(element)}"
    kinds = {_plural(e) for e in element}
    what = kinds.pop() if len(kinds) == 1 else "values"
    return f"an array of {len(element)} {what}"


def _plural(type_: Any) -> str:
    return {int: "integers", float: "numbers", bool: "booleans", str: "strings"}.get(type_, "values")


def _table_hook(cl: type, converter: cattrs.Converter) -> Any:
    """cattrs' own hook for the class, once the value is known to be a table."""
    inner = make_dict_structure_fn(cl, converter, _cattrs_forbid_extra_keys=True, _cattrs_detailed_validation=True)

    def structure(value: object, type_: type) -> Any:
        if not isinstance(value, dict):
            raise _BadValue(value, "a table")
        return inner(value, type_)

    return structure


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    converter.register_structure_hook(int, _structure_int)
    converter.register_structure_hook(float, _structure_float)
    converter.register_structure_hook(bool, _structure_bool)
    converter.register_structure_hook(str, _structure_str)
    converter.register_structure_hook_func(_is_literal, _structure_literal)
    converter.register_structure_hook_factory(_is_array, _array_hook)
    converter.register_structure_hook_factory(attrs.has, _table_hook)
    return converter


_CONVERTER = _make_converter()


# -- cattrs' error tree -> diagnostics ------------------------------------------------------


@attrs.frozen
class _Problem:
    path: KeyPath
    error: BaseException
    type: Any
    """The type expected at ``path``."""
    owner: type
    """The attrs class whose field (or table) ``path`` is, or that holds the array at ``path``."""


def _problems(exc: BaseException, path: KeyPath, type_: Any, owner: type) -> Iterator[_Problem]:
    """Every leaf of cattrs' error tree, with its key path (what transform_error walks)."""
    if isinstance(exc, ClassValidationError):
        with_notes, others = exc.group_exceptions()
        for sub, note in with_notes:
            yield from _problems(sub, path + (note.name,), note.type, exc.cl)
        for sub in others:
            yield _Problem(path, sub, exc.cl, exc.cl)
    elif isinstance(exc, IterableValidationError):
        with_notes, others = exc.group_exceptions()
        for sub, note in with_notes:
            yield from _problems(sub, path + (note.index,), note.type, owner)
        for sub in others:
            yield _Problem(path, sub, type_, owner)
    else:
        yield _Problem(path, exc, type_, owner)


def _diagnose(problem: _Problem, raw: dict[str, Any], index: LineIndex, filename: str) -> Iterator[Diagnostic]:
    path, error = problem.path, problem.error
    if isinstance(error, ForbiddenExtraKeysError):
        for name in sorted(error.extra_fields):
            message, hint = _unknown(path, name, _lookup(raw, path + (name,)), error.cl)
            yield _at(path + (name,), message, hint, index, filename)
        return
    if isinstance(error, KeyError):
        message, hint = _missing(path, _present(problem.type))
    elif isinstance(error, _BadValue):
        message = f"{format_path(path)} = {render_value(error.value)} {error}"
        hint = (
            foreign_keys.value_hint(path, error.value)
            or error.hint
            or _shape_hint(path, _present(problem.type))
            or _default_hint(path, problem.owner)
        )
    else:  # a hook outside this module failed; still say where
        message = f"{format_path(path)} = {render_value(_lookup(raw, path))} is not valid: {error}"
        hint = _default_hint(path, problem.owner)
    yield _at(path, message, hint, index, filename)


def _at(path: KeyPath, message: str, hint: str | None, index: LineIndex, filename: str) -> Diagnostic:
    file, line = index.file_of(path, filename), index.line_of(path)
    return Diagnostic(file=file, line=line, path=format_path(path), message=message, hint=hint)


def _unknown(table: KeyPath, name: str, value: object, cl: type) -> tuple[str, str]:
    if isinstance(value, dict):
        message = f"unknown table [{dotted(table + (name,))}]"
    else:
        message = f"unknown key {name!r} " + (f"in {_table_label(table)}" if table else "at the top level")
    types = _field_types(cl)
    foreign = None if _is_bridgec_name(name) else foreign_keys.key_hint(name)
    if foreign is not None:
        return message, foreign
    match = close_match(name, list(types))
    if match is not None:
        shown = f"[{dotted(table + (match,))}]" if attrs.has(types[match]) else repr(match)
        return message, f"did you mean {shown}?"
    homes = [label for label, home in _tables(Spec, ()) if name in _field_types(home)]
    # A table that repeats another's keys ([distill.teacher] is [model]'s) leaves the top-level one the home.
    top_level = [label for label in homes if "." not in label]
    if len(homes) == 1 or len(top_level) == 1:
        return message, f"{name} belongs in {(top_level or homes)[0]}"
    if not table:
        return message, "valid tables: " + ", ".join(types)
    return message, f"valid keys in {_table_label(table)}: " + ", ".join(types)


def _is_bridgec_name(name: str) -> bool:
    """A key or table name some table of the spec has (then "it belongs in [x]" is the better hint)."""
    return name in _field_types(Spec) or any(name in _field_types(home) for _, home in _tables(Spec, ()))


@functools.cache
def _field_types(cl: type) -> dict[str, Any]:
    """Field name -> the type a written value must have, in declaration order (spec.py postpones annotations)."""
    hints = typing.get_type_hints(cl)
    return {field.name: _present(hints[field.name]) for field in attrs.fields(cl)}


def _present(type_: Any) -> Any:
    """``X`` for ``X | None``: TOML has no null, so None only ever means the key is absent."""
    args = [arg for arg in typing.get_args(type_) if arg is not type(None)]
    return args[0] if len(args) == 1 and len(typing.get_args(type_)) == 2 else type_


def _tables(cl: type, path: KeyPath) -> Iterator[tuple[str, type]]:
    """Every table class reachable from ``cl``, labelled as its TOML header."""
    for name, type_ in _field_types(cl).items():
        if attrs.has(type_):
            yield f"[{dotted(path + (name,))}]", type_
            yield from _tables(type_, path + (name,))
        elif _is_array(type_) and attrs.has(typing.get_args(type_)[0]):
            yield f"[[{dotted(path + (name,))}]]", typing.get_args(type_)[0]
            yield from _tables(typing.get_args(type_)[0], path + (name, 0))


def _missing(path: KeyPath, type_: Any) -> tuple[str, str]:
    table, name = path[:-1], path[-1]
    if attrs.has(type_):
        required = [f.name for f in attrs.fields(type_) if f.default is attrs.NOTHING]
        keys = f" with the key{'s' if len(required) > 1 else ''} {_and_list(required)}" if required else ""
        return f"missing required table [{dotted(path)}]", f"add the [{dotted(path)}] table{keys}"
    return (
        f"missing required key {name!r} in {_table_label(table)}",
        f"add a line {name} = {_placeholder(type_)} under {_table_label(table)}",
    )


def _placeholder(type_: Any) -> str:
    if _is_literal(type_):
        return render_value(typing.get_args(type_)[0])
    if _is_array(type_):
        return "[...]"
    return {int: "<integer>", float: "<number>", bool: "true", str: '"..."'}.get(type_, "...")


def _shape_hint(path: KeyPath, type_: Any) -> str | None:
    if attrs.has(type_) and path and isinstance(path[-1], int):
        return f"write each element as a table under its own [[{dotted(path)}]] header"
    if attrs.has(type_):
        return f"write it as a [{dotted(path)}] table with its keys on the lines below"
    if _is_array(type_) and attrs.has(typing.get_args(type_)[0]):
        return f"write each element as a table under its own [[{dotted(path)}]] header"
    return None


def _default_hint(path: KeyPath, owner: type) -> str | None:
    name = path[-1] if path else None
    if not isinstance(name, str) or not attrs.has(owner) or name not in attrs.fields_dict(owner):
        return None
    default = attrs.fields_dict(owner)[name].default
    if default is attrs.NOTHING or default is None or isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        return None
    return f"the default is {name} = {render_value(default)}"


def _table_label(path: KeyPath) -> str:
    if not path:
        return "the top level"
    if isinstance(path[-1], int):
        return f"[[{dotted(path)}]]"
    return f"[{dotted(path)}]"


def _and_list(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _lookup(raw: object, path: KeyPath) -> object:
    for part in path:
        if isinstance(raw, dict) and part in raw:
            raw = raw[part]
        elif isinstance(raw, list) and isinstance(part, int) and part < len(raw):
            raw = raw[part]
        else:
            return None
    return raw
