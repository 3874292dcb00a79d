"""Reading one merged MaxText config: which keys were read, the spec entries written, and what was refused.

Each table's mapping (:mod:`bridgec.compiler.maxtext_model`, ``maxtext_layout``,
``maxtext_training``) reads keys through a :class:`ConfigReader`, which marks
them used, and writes spec entries, notes, caveats and problems into it; the
facts one table hands to the next are returned as values. :meth:`ConfigReader.result`
is the frozen :class:`MappedConfig` that :mod:`bridgec.compiler.maxtext` renders.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

Entry = tuple[str, Any, str]
"""(spec key, value, comment)."""


@attrs.frozen(kw_only=True)
class ImportProblem:
    """Why a config does not import: the MaxText key, what is wrong, and what would import."""

    key: str
    message: str
    hint: str | None = None


@attrs.frozen(kw_only=True)
class MappedConfig:
    """One config mapped: spec tables with comments, what needs attention, and what happened to each key."""

    config: dict[str, Any]
    """The merged config (base <- model file <- overrides), "none" strings as None."""
    origin: dict[str, str]
    """key -> "base", "model" or "cli": where its value came from."""
    names: dict[str, str]
    """"base"/"model"/"cli" -> the file name (or "command line") comments show."""
    tables: dict[str, tuple[Entry, ...]]
    """Spec table -> its entries, in the order written."""
    notes: tuple[str, ...]
    """What needs the user's action."""
    caveats: tuple[str, ...]
    """Mapped, but not exactly MaxText's behaviour."""
    errors: tuple[ImportProblem, ...]
    used: frozenset[str]
    """The keys the mapping read."""
    inactive: dict[str, str]
    """Keys read only by a feature this config keeps off, with the reason."""


def maxtext_value(value: Any) -> Any:
    """MaxText turns the string "none" (any case) into None (pyconfig._prepare_for_pydantic)."""
    return None if isinstance(value, str) and value.lower() == "none" else value


def show(value: Any) -> str:
    """A MaxText value as comments and messages print it."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "None"
    return str(value)


@attrs.define
class ConfigReader:
    """The merged config being mapped, and what the mapping has written so far."""

    config: dict[str, Any]
    origin: dict[str, str]
    names: dict[str, str]
    tables: dict[str, list[Entry]] = attrs.Factory(dict)
    errors: list[ImportProblem] = attrs.Factory(list)
    notes: list[str] = attrs.Factory(list)
    caveats: list[str] = attrs.Factory(list)
    used: set[str] = attrs.Factory(set)
    inactive: dict[str, str] = attrs.Factory(dict)

    def get(self, key: str, default: Any = None) -> Any:
        """The key's value (``default`` when the config lacks it); the key counts as read."""
        self.used.add(key)
        return self.config.get(key, default)

    def mark_read(self, key: str) -> None:
        self.used.add(key)

    def src(self, *keys: str) -> str:
        """'key value (file)' for comments."""
        parts = []
        for key in keys:
            where = self.names[self.origin.get(key, "base")]
            parts.append(f"{key} {show(self.config.get(key))} ({where})")
        return "; ".join(parts)

    def put(self, table: str, key: str, value: Any, comment: str = "") -> None:
        self.tables.setdefault(table, []).append((key, value, comment))

    def refuse(self, key: str, message: str, hint: str | None = None) -> None:
        self.errors.append(ImportProblem(key=key, message=message, hint=hint))

    def note(self, text: str) -> None:
        """Something the user must act on (printed by the command, and at the top of the spec)."""
        self.notes.append(text)

    def caveat(self, text: str) -> None:
        """Mapped, with a difference worth knowing (in the spec's closing block)."""
        self.caveats.append(text)

    def skip(self, keys: Sequence[str], reason: str) -> None:
        """Keys read only by a feature this config keeps off."""
        for key in keys:
            if key in self.config and key not in self.used:
                self.used.add(key)
                self.inactive[key] = reason

    def mark_inactive(self, key: str, reason: str) -> None:
        """A key already read whose value changes nothing here, and why."""
        self.inactive[key] = reason

    def result(self) -> MappedConfig:
        return MappedConfig(
            config=self.config,
            origin=self.origin,
            names=self.names,
            tables={table: tuple(entries) for table, entries in self.tables.items()},
            notes=tuple(self.notes),
            caveats=tuple(self.caveats),
            errors=tuple(self.errors),
            used=frozenset(self.used),
            inactive=dict(self.inactive),
        )
