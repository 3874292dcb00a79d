"""Diagnostics: what every stage of the compiler reports about a spec.

A :class:`Diagnostic` names the file, the line, the key path
(``$.model.hidden_size``), what is wrong and how to fix it. The stages return
diagnostics; only the command line prints them, with :func:`format_diagnostic`.
"""

from __future__ import annotations

import datetime
import difflib
import json
import math
import re
from collections.abc import Sequence
from typing import Literal

import attrs

Severity = Literal["error", "warning"]
KeyPath = tuple[str | int, ...]
"""A key path as TOML nests it: table and key names, and array indices as ints."""

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_MAX_VALUE_CHARS = 60


@attrs.frozen(kw_only=True)
class Diagnostic:
    """One problem found in a spec."""

    file: str
    """The spec file as the user named it (no absolute paths, so output is portable)."""
    line: int | None
    """1-based line of the key the diagnostic is about; None when no line applies."""
    path: str
    """Where in the spec, as ``$.model.hidden_size`` or ``$.data.sources[0].prefix``."""
    message: str
    """What is wrong, and why it matters."""
    hint: str | None = None
    """A concrete fix."""
    severity: Severity = "error"
    """Errors stop the compile; warnings are printed and never block."""


class SpecError(Exception):
    """Raised by callers that want an exception instead of a diagnostics list."""

    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        self.diagnostics = tuple(diagnostics)
        super().__init__("\n".join(format_diagnostic(d) for d in self.diagnostics))


def format_diagnostic(d: Diagnostic) -> str:
    """``file:line: message; hint: hint``, leaving out the parts that are unknown.

    Warnings carry a ``warning:`` prefix so they stand out from errors.
    """
    where = d.file if d.line is None else f"{d.file}:{d.line}"
    prefix = "warning: " if d.severity == "warning" else ""
    text = f"{where}: {prefix}{d.message}"
    return text if d.hint is None else f"{text}; hint: {d.hint}"


def is_error(d: Diagnostic) -> bool:
    return d.severity == "error"


def sort_key(d: Diagnostic) -> tuple[int, str, str]:
    """Order by line (file-wide diagnostics first), then path, then message."""
    return (d.line or 0, d.path, d.message)


def format_path(path: KeyPath) -> str:
    """``("data", "sources", 0, "prefix")`` -> ``$.data.sources[0].prefix``."""
    parts = ["$"]
    for part in path:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif _BARE_KEY.fullmatch(part):
            parts.append(f".{part}")
        else:
            parts.append(f"[{json.dumps(part, ensure_ascii=False)}]")
    return "".join(parts)


def dotted(path: KeyPath) -> str:
    """``("parallel", "tensor")`` -> ``parallel.tensor`` (array indices left out)."""
    return ".".join(str(p) for p in path if not isinstance(p, int))


def render_value(value: object) -> str:
    """A value as it would be written in TOML, cut short when long."""
    text = _render(value)
    if len(text) > _MAX_VALUE_CHARS:
        return text[: _MAX_VALUE_CHARS - 3] + "..."
    return text


def _render(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_render(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = ", ".join(f"{_render_key(k)} = {_render(v)}" for k, v in value.items())
        return "{ " + items + " }"
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    return str(value)


def _render_key(key: object) -> str:
    text = str(key)
    return text if _BARE_KEY.fullmatch(text) else json.dumps(text, ensure_ascii=False)


def kind_of(value: object) -> str:
    """What a TOML value is, in words: ``a string``, ``an integer``, ``a table``..."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime.datetime):
        return "a date-time"
    if isinstance(value, datetime.date):
        return "a date"
    if isinstance(value, datetime.time):
        return "a time"
    return type(value).__name__


def close_match(word: str, candidates: Sequence[str]) -> str | None:
    """The candidate ``word`` was most likely meant to be, if any is close (difflib, ignoring case)."""
    by_lower = {candidate.lower(): candidate for candidate in reversed(candidates)}  # first one wins
    matches = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[matches[0]] if matches else None
