"""A JSON Schema (draft-07) of spec.toml, generated from the spec classes, for TOML editors.

Taplo and VS Code's Even Better TOML read it to complete keys, list a key's choices and show its
documentation on hover. Types, choices (the Literals), defaults and descriptions all come from
``spec.py`` (the field docstrings, as the README's reference), so the schema never needs editing.

The schema describes what a file may contain, not every rule: cross-field rules (divisibility, the
layout) are ``bridgec validate``'s. Required keys are only required of a file without ``extends``:
a file that extends a base writes only what it changes.
"""

from __future__ import annotations

import ast
import json
import typing
from typing import Any, Literal

import attrs

from bridgec.compiler.compose import EXTENDS
from bridgec.compiler.spec import Spec
from bridgec.compiler.specdoc import spec_source

DRAFT = "http://json-schema.org/draft-07/schema#"
SCALARS: dict[Any, str] = {bool: "boolean", int: "integer", float: "number", str: "string"}


def docstrings(source: str) -> dict[str, tuple[str, dict[str, str]]]:
    """Class name -> (its docstring, field name -> the docstring under the field), read from ``source``."""
    found = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        fields = {}
        for statement, following in zip(node.body, [*node.body[1:], None]):
            if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
                    fields[statement.target.id] = " ".join(str(following.value.value).split())
        found[node.name] = (" ".join((ast.get_docstring(node) or "").split()), fields)
    return found


class _Builder:
    def __init__(self, docs: dict[str, tuple[str, dict[str, str]]]) -> None:
        self.docs = docs
        self.definitions: dict[str, dict[str, Any]] = {}

    def table(self, cl: type, *, complete: bool) -> dict[str, Any]:
        """A reference to ``cl``'s definition; ``complete``: its required keys are required (array elements)."""
        if cl.__name__ not in self.definitions:
            self.definitions[cl.__name__] = {}  # reserved first: a class may refer to itself
            hints = typing.get_type_hints(cl)
            class_doc, field_docs = self.docs.get(cl.__name__, ("", {}))
            properties = {}
            for field in attrs.fields(cl):
                prop = self.value(hints[field.name])
                if "$ref" in prop:
                    prop = {"allOf": [prop]}  # draft-07 ignores the keys beside a $ref
                if field.name in field_docs:
                    prop["description"] = field_docs[field.name]
                default = _default(field)
                if default is not None:
                    prop["default"] = default
                properties[field.name] = prop
            definition: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
            if class_doc:
                definition["description"] = class_doc
            required = _required(cl)
            if complete and required:
                definition["required"] = required
            self.definitions[cl.__name__] = definition
        return {"$ref": f"#/definitions/{cl.__name__}"}

    def value(self, type_: Any) -> dict[str, Any]:
        args = typing.get_args(type_)
        origin = typing.get_origin(type_)
        if type(None) in args:  # X | None: TOML has no null, so None only means "not written"
            (present,) = [arg for arg in args if arg is not type(None)]
            return self.value(present)
        if origin is Literal:
            return {"type": SCALARS[type(args[0])], "enum": list(args)}
        if attrs.has(type_):
            return self.table(type_, complete=False)
        if origin in (tuple, list) and (origin is list or (len(args) == 2 and args[1] is Ellipsis)):
            element = args[0]
            items = self.table(element, complete=True) if attrs.has(element) else self.value(element)
            return {"type": "array", "items": items}
        if origin is tuple:
            items = [self.value(arg) for arg in args]
            return {"type": "array", "items": items, "minItems": len(args), "maxItems": len(args)}
        if origin is dict:
            return {"type": "object", "additionalProperties": self.value(args[1])}
        return {"type": SCALARS[type_]}


def _default(field: attrs.Attribute) -> Any:
    """The default as TOML writes it; None when there is none to show (required, unset, or a table)."""
    default = field.default
    if default is attrs.NOTHING or default is None or isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        return None
    return list(default) if isinstance(default, tuple) else default


def _required(cl: type) -> list[str]:
    return [field.name for field in attrs.fields(cl) if field.default is attrs.NOTHING]


def _required_tree(cl: type) -> dict[str, Any]:
    """``cl``'s required keys, and its tables' (nested): what a file without ``extends`` must write."""
    hints = typing.get_type_hints(cl)
    tree: dict[str, Any] = {}
    if _required(cl):
        tree["required"] = _required(cl)
    nested = {
        field.name: _required_tree(hints[field.name]) for field in attrs.fields(cl) if attrs.has(hints[field.name])
    }
    nested = {name: sub for name, sub in nested.items() if sub}
    if nested:
        tree["properties"] = nested
    return tree


def spec_schema() -> dict[str, Any]:
    """The JSON Schema of a spec file."""
    builder = _Builder(docstrings(spec_source()))
    builder.table(Spec, complete=False)
    # The file itself is inlined at the root: draft-07 ignores the keys beside a $ref.
    spec = builder.definitions.pop(Spec.__name__)
    extends = {
        "type": "string",
        "description": "A base spec this file builds on, relative to this file's folder: the base's values, "
        "then this file's, then command-line overrides (tables merge key by key; other values replace).",
    }
    return {
        "$schema": DRAFT,
        "title": "bridgec spec.toml",
        "description": "A bridgec training spec (generated by: bridgec schema).",
        "type": "object",
        "properties": {EXTENDS: extends, **spec["properties"]},
        "additionalProperties": False,
        "if": {"not": {"required": [EXTENDS]}},
        "then": _required_tree(Spec),
        "definitions": dict(sorted(builder.definitions.items())),
    }


def schema_text() -> str:
    return json.dumps(spec_schema(), indent=2) + "\n"
