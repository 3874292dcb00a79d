"""Shared helpers for the front-end tests: spec builders and file-system views."""

from __future__ import annotations

import copy
import datetime
import json
import math
import struct
from pathlib import Path
from typing import Any

from bridgec.compiler.errors import format_diagnostic
from bridgec.compiler.frontend import FrontendResult, read_spec
from bridgec.compiler.validate import SpecContext

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
SPEC_DIR = Path("/specs/run")
"""Where in-memory specs pretend to live; MemoryFiles paths are relative to it."""

MINIMAL: dict[str, dict[str, Any]] = {
    "run": {"name": "quickstart"},
    "model": {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "vocab_size": 128, "seq_length": 32},
    "batch": {"global_batch_size": 8, "micro_batch_size": 2},
    "train": {"iters": 10},
    "optimizer": {"lr": 1e-3},
}
"""The smallest valid spec (tests/golden/good/minimal/spec.toml), as data."""


def idx_header(documents: int) -> bytes:
    """The first bytes of a megatron-core index file (.idx) announcing ``documents`` documents."""
    return b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, 8, documents, documents + 1)


class MemoryFiles:
    """A FileView over a dict: path (relative to SPEC_DIR, or absolute) -> text or bytes."""

    def __init__(self, files: dict[str, str | bytes] | None = None) -> None:
        self.files = {str(SPEC_DIR / name): content for name, content in (files or {}).items()}

    def exists(self, path: Path) -> bool:
        return str(path) in self.files

    def _content(self, path: Path) -> str | bytes:
        if str(path) not in self.files:
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return self.files[str(path)]

    def read_text(self, path: Path) -> str:
        content = self._content(path)
        return content.decode("utf-8") if isinstance(content, bytes) else content

    def read_head(self, path: Path, size: int) -> bytes:
        content = self._content(path)
        return (content.encode("utf-8") if isinstance(content, str) else content)[:size]

    def read_bytes(self, path: Path) -> bytes:
        content = self._content(path)
        return content.encode("utf-8") if isinstance(content, str) else content


class DiskFiles:
    """A FileView over the real disk, for golden cases."""

    def exists(self, path: Path) -> bool:
        return Path(path).exists()

    def read_text(self, path: Path) -> str:
        return Path(path).read_text(encoding="utf-8")

    def read_head(self, path: Path, size: int) -> bytes:
        with Path(path).open("rb") as stream:
            return stream.read(size)

    def read_bytes(self, path: Path) -> bytes:
        return Path(path).read_bytes()


def spec_toml(**tables: dict[str, Any] | None) -> str:
    """MINIMAL with tables merged in; a key (or table) set to None is left out.

    Tables and keys keep MINIMAL's order; new ones follow. One line per header
    or key and no blank lines, so line numbers are easy to count.
    """
    data = copy.deepcopy(MINIMAL)
    for table, keys in tables.items():
        if keys is None:
            data.pop(table, None)
            continue
        merged = data.setdefault(table, {})
        for key, value in keys.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
    return dump_toml(data)


def dump_toml(data: dict[str, Any]) -> str:
    """A small TOML writer for tests: [table] per dict, [[table.key]] for lists of dicts."""
    lines: list[str] = []
    for table, keys in data.items():
        _dump_table(lines, table, keys)
    return "\n".join(lines) + "\n"


def _dump_table(lines: list[str], header: str, keys: dict[str, Any], array: bool = False) -> None:
    lines.append(f"[[{header}]]" if array else f"[{header}]")
    nested = []
    for key, value in keys.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            nested.extend((f"{header}.{key}", v) for v in value)
        else:
            lines.append(f"{key} = {toml_value(value)}")
    for name, element in nested:
        _dump_table(lines, name, element, array=True)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    raise TypeError(f"no TOML for {value!r}")


def front(text: str, files: MemoryFiles | None = None) -> FrontendResult:
    """read_spec on ``text`` as spec.toml in SPEC_DIR."""
    context = SpecContext(file="spec.toml", spec_dir=SPEC_DIR, files=files or MemoryFiles())
    return read_spec(text, "spec.toml", context)


def messages(text: str, files: MemoryFiles | None = None) -> list[str]:
    """Every diagnostic of ``text``, formatted."""
    return [format_diagnostic(d) for d in front(text, files).diagnostics]
