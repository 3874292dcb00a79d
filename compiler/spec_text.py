"""Text of the specs the importers write: TOML values and wrapped comment lines.

`bridgec import maxtext` and `bridgec import hf` both write a spec with a
comment beside each value and wrapped notes; one writer keeps them alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def toml_value(value: Any) -> str:
    """A value as TOML writes it; the importers only put these types."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {value!r}")


def comment_bullets(items: Sequence[str]) -> list[str]:
    """Comment lines, one wrapped bullet per item."""
    lines = []
    for item in items:
        wrapped = wrap_words(item, 94, "")
        lines += [f"#   - {wrapped[0]}", *(f"#     {line}" for line in wrapped[1:])]
    return lines


def wrap_words(text: str, width: int, indent: str) -> list[str]:
    """Greedy word wrap; continuation lines get ``indent``."""
    lines, current = [], ""
    for word in text.split(" "):
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = indent + word
        else:
            current = f"{current} {word}" if current else word
    lines.append(current)
    return lines
