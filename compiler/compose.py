"""Compose: a spec file, the bases it ``extends`` and command-line overrides -> one set of tables.

Precedence, lowest first: the base a file extends (itself possibly extending another), the file
that extends it, then each ``key=value`` override in the order typed. Tables merge key by key;
any other value (a number, a string, an array, an array of tables) replaces the one below it
whole. The merged tables carry, for every key, the file and line (or the override) that wrote
it, so every later diagnostic names the source of the value it is about.

Relative paths written in any of the files (data prefixes, the hooks file, checkpoint folders)
stay relative to the folder of the spec being compiled, not to the base's folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from bridgec.compiler.errors import Diagnostic, KeyPath, format_path, kind_of
from bridgec.compiler.load import syntax_diagnostic
from bridgec.compiler.locate import LineIndex, build_index
from bridgec.compiler.rule_base import FileView

EXTENDS = "extends"
"""The top-level key naming the base spec a file builds on (relative to that file's folder)."""


@attrs.frozen
class Override:
    """One ``key=value`` typed after the spec: a dotted key path and a TOML value."""

    text: str
    """As typed; diagnostics name the override by it, and the generated header records it."""
    path: KeyPath
    value: object

    @property
    def label(self) -> str:
        return f"override {self.text}"


class OverrideError(ValueError):
    """An override that is not ``dotted.key=value``."""


def parse_override(text: str) -> Override:
    """``train.iters=10`` -> path ("train", "iters"), value 10. The value is read as TOML
    (``10``, ``1e-4``, ``true``, ``[0.9, 0.95]``, ``"text"``); what is not TOML is taken as a string,
    so ``model.normalization=rmsnorm`` needs no quotes."""
    if "\n" in text or "\r" in text:
        raise OverrideError(f"{text!r}: an override is one line (write arrays inline, as [1, 2])")
    key, equals, value = text.partition("=")
    if not equals or not key.strip():
        raise OverrideError(f"{text!r} is not key=value: write a dotted spec key, as train.iters=10")
    try:
        parsed = tomllib.loads(f"{key} = 0")
    except tomllib.TOMLDecodeError:
        raise OverrideError(f"{text!r}: {key!r} is not a dotted TOML key, as model.num_layers") from None
    path: KeyPath = ()
    while isinstance(parsed, dict):
        (name, parsed), *_ = parsed.items()
        path += (name,)
    if path == (EXTENDS,):
        raise OverrideError(f"{text!r}: extends cannot be overridden; compile the base, or a file that extends it")
    try:
        structured: object = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        structured = value
    return Override(text=text, path=path, value=structured)


@attrs.frozen(kw_only=True)
class Composed:
    """The tables of a spec with its bases and overrides applied, or the reasons they could not be."""

    raw: dict[str, Any] | None
    """The merged tables, ``extends`` removed; None when a file is not TOML or a base cannot be read."""
    index: LineIndex
    """Every written key path -> its line and source."""
    diagnostics: tuple[Diagnostic, ...]
    sha256: str
    """The spec file's own sha256 when nothing else contributes; else the sha256 of every file's text (by
    its path relative to the spec's folder) and the overrides, so a change to any of them changes it."""
    bases: tuple[str, ...] = ()
    """The bases read, nearest first, as diagnostics name them."""


def compose(text: str, filename: str, spec_dir: Path, files: FileView, overrides: Sequence[Override] = ()) -> Composed:
    """The spec ``text`` (the file ``filename`` in ``spec_dir``) with its ``extends`` chain and ``overrides``."""
    chain: list[tuple[str, Path, str]] = [(filename, spec_dir / Path(filename).name, text)]
    layers: list[tuple[str, dict[str, Any], LineIndex]] = []
    while True:
        name, path, source = chain[-1]
        try:
            raw = tomllib.loads(source)
        except tomllib.TOMLDecodeError as exc:
            return _failed(syntax_diagnostic(str(exc), source, name), text)
        index = build_index(source)
        layers.append((name, raw, index))
        base = raw.pop(EXTENDS, None)
        if base is None:
            break
        problem = _base_problem(base, name, index, chain, spec_dir, files)
        if isinstance(problem, Diagnostic):
            return _failed(problem, text)
        chain.append(problem)
    merged: dict[str, Any] = {}
    lines: dict[KeyPath, int | None] = {}
    sources: dict[KeyPath, str] = {}
    for name, raw, index in reversed(layers):
        _merge(merged, raw, (), lines, sources)
        written = {path: line for path, line in index.lines.items() if path[:1] != (EXTENDS,)}
        _replace_entries(lines, sources, written, None if name == filename else name)
    diagnostics = []
    for override in overrides:
        problem = _apply(merged, override, lines, sources)
        if problem is not None:
            diagnostics.append(problem)
    if diagnostics:
        return _failed_all(tuple(diagnostics), text)
    bases = tuple(name for name, _, _ in chain[1:])
    return Composed(
        raw=merged,
        index=LineIndex(lines, sources),
        diagnostics=(),
        sha256=_identity(chain, spec_dir, overrides),
        bases=bases,
    )


def _base_problem(
    base: object, name: str, index: LineIndex, chain: list[tuple[str, Path, str]], spec_dir: Path, files: FileView
) -> Diagnostic | tuple[str, Path, str]:
    """The next link of the chain, or what is wrong with ``extends``."""
    line = index.line_of((EXTENDS,))

    def at(message: str, hint: str) -> Diagnostic:
        return Diagnostic(file=name, line=line, path=format_path((EXTENDS,)), message=message, hint=hint)

    if not isinstance(base, str):
        return at(
            f"extends must be a string, got {kind_of(base)}", 'write extends = "base.toml" (relative to this file)'
        )
    path = Path(os.path.normpath(chain[-1][1].parent / base))
    shown = os.path.normpath(Path(name).parent / base)
    seen = [link[1] for link in chain]
    if path in seen:
        cycle = " -> ".join([link[0] for link in chain[seen.index(path) :]] + [shown])
        return at(f"extends = {json.dumps(base)} makes a cycle: {cycle}", "one of these files must not extend another")
    if not files.exists(path):
        return at(f"extends = {json.dumps(base)}: no such file {shown}", "the base's path is relative to this file")
    try:
        return shown, path, files.read_text(path)
    except (OSError, UnicodeDecodeError) as error:
        return at(f"extends = {json.dumps(base)}: {shown} cannot be read ({error})", "make it a readable UTF-8 file")


def _merge(
    into: dict[str, Any], layer: dict[str, Any], path: KeyPath, lines: dict[KeyPath, int | None], sources: dict
) -> None:
    """Merge ``layer`` into ``into``: tables key by key, other values whole (their old entries dropped)."""
    for key, value in layer.items():
        here = path + (key,)
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value, here, lines, sources)
            continue
        for entry in [entry for entry in lines if entry[: len(here)] == here]:
            del lines[entry]
            sources.pop(entry, None)
        into[key] = value


def _replace_entries(
    lines: dict[KeyPath, int | None],
    sources: dict[KeyPath, str],
    written: dict[KeyPath, int | None],
    source: str | None,
) -> None:
    for path, line in written.items():
        lines[path] = line
        if source is None:
            sources.pop(path, None)
        else:
            sources[path] = source


def _apply(
    merged: dict[str, Any], override: Override, lines: dict[KeyPath, int | None], sources: dict[KeyPath, str]
) -> Diagnostic | None:
    """Set one override's value (creating tables on the way); a diagnostic when a value on its path is no table."""
    table = merged
    for depth, key in enumerate(override.path[:-1]):
        if key not in table:
            table[key] = {}
        if not isinstance(table[key], dict):
            above = override.path[: depth + 1]
            return Diagnostic(
                file=override.label,
                line=None,
                path=format_path(override.path),
                message=f"{format_path(above)} is {kind_of(table[key])}, not a table, so it has no key "
                f"{override.path[depth + 1]!r}",
                hint=f"override {'.'.join(map(str, above))} itself",
            )
        table = table[key]
    name = override.path[-1]
    _merge(table, {name: override.value}, override.path[:-1], lines, sources)
    for end in range(1, len(override.path) + 1):
        if override.path[:end] not in lines:
            lines[override.path[:end]] = None
            sources[override.path[:end]] = override.label
    lines[override.path] = None
    sources[override.path] = override.label
    return None


def _identity(chain: list[tuple[str, Path, str]], spec_dir: Path, overrides: Sequence[Override]) -> str:
    if len(chain) == 1 and not overrides:
        return hashlib.sha256(chain[0][2].encode("utf-8")).hexdigest()
    files = [[os.path.relpath(path, spec_dir), text] for _, path, text in chain]
    record = json.dumps({"files": files, "overrides": [o.text for o in overrides]}, sort_keys=True)
    return hashlib.sha256(record.encode("utf-8")).hexdigest()


def _failed(diagnostic: Diagnostic, text: str) -> Composed:
    return _failed_all((diagnostic,), text)


def _failed_all(diagnostics: tuple[Diagnostic, ...], text: str) -> Composed:
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return Composed(raw=None, index=LineIndex({}), diagnostics=diagnostics, sha256=sha)
