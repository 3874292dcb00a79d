"""Where each key of a TOML document is written: key path -> 1-based line.

tomllib returns values without positions, so diagnostics get their lines from
this index, built by a small scanner over the same text. The scanner only runs
on text tomllib has accepted, so it follows the grammar loosely: it needs to
tell keys and headers from the insides of strings, arrays and inline tables,
and nothing more.
"""

from __future__ import annotations

import bisect
import tomllib
from collections.abc import Mapping

import attrs

from bridgec.compiler.errors import KeyPath

_BARE_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_SCALAR_END = frozenset(",]}#\r\n")


@attrs.frozen
class LineIndex:
    """Lines of the keys, tables and array elements of one TOML document."""

    lines: Mapping[KeyPath, int | None]
    """Exact entries: a key's own line, a table's header line, an element's first line (None: a command-line
    override, which has no line)."""
    files: Mapping[KeyPath, str] = attrs.field(factory=dict)
    """For a spec composed of several sources (``extends`` bases, command-line overrides): the source that
    wrote each entry, as diagnostics name it. An entry without one was written by the spec file itself."""

    def where(self, path: KeyPath) -> tuple[str | None, int | None]:
        """The source and line of ``path``, else of its nearest written ancestor; (None, None) when unwritten."""
        for end in range(len(path), 0, -1):
            if path[:end] in self.lines:
                return self.files.get(path[:end]), self.lines[path[:end]]
        return None, None

    def line_of(self, path: KeyPath) -> int | None:
        """The line of ``path``, else of its nearest written ancestor, else None."""
        return self.where(path)[1]

    def file_of(self, path: KeyPath, spec_file: str) -> str:
        """The source that wrote ``path`` (or its nearest written ancestor); ``spec_file`` when it is the spec."""
        return self.where(path)[0] or spec_file

    def has(self, path: KeyPath) -> bool:
        """Whether ``path`` itself is written in the document (not just an ancestor)."""
        return path in self.lines


EMPTY_INDEX = LineIndex({})


def build_index(text: str) -> LineIndex:
    """Index every key path of ``text``, which must be TOML that tomllib accepts."""
    scanner = _Scanner(text)
    scanner.document()
    return LineIndex(dict(scanner.lines))


class _Scanner:
    """A cursor over the text that records key lines as it passes them."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.newlines = [i for i, c in enumerate(text) if c == "\n"]
        self.lines: dict[KeyPath, int] = {}
        self.array_tables: dict[KeyPath, int] = {}  # [[x]] path -> index of its last element

    # -- the document ------------------------------------------------------------

    def document(self) -> None:
        table: KeyPath = ()
        while True:
            self.skip_trivia()
            if self.pos >= len(self.text):
                return
            start = self.pos
            if self.text.startswith("[[", self.pos):
                table = self.array_table_header()
            elif self.peek() == "[":
                table = self.table_header()
            else:
                self.key_value(table)
            if self.pos == start:  # never loop on text the grammar above does not expect
                self.pos += 1

    def table_header(self) -> KeyPath:
        line = self.line()
        self.pos += 1
        path = self.resolve(self.key())
        self.skip_ws()
        self.expect("]")
        self.mark_ancestors(path, line)
        self.lines[path] = line
        return path

    def array_table_header(self) -> KeyPath:
        line = self.line()
        self.pos += 2
        parts = self.key()
        self.skip_ws()
        self.expect("]]")
        array = self.resolve(parts[:-1]) + tuple(parts[-1:])
        index = self.array_tables.get(array, -1) + 1
        self.array_tables[array] = index
        self.mark_ancestors(array, line)
        self.lines.setdefault(array, line)
        self.lines[array + (index,)] = line
        return array + (index,)

    def resolve(self, parts: list[str]) -> KeyPath:
        """A header's key, with the current element index after each array of tables."""
        path: KeyPath = ()
        for part in parts:
            path += (part,)
            if path in self.array_tables:
                path += (self.array_tables[path],)
        return path

    def key_value(self, table: KeyPath) -> None:
        line = self.line()
        path = table + tuple(self.key())
        self.mark_ancestors(path, line)
        self.lines[path] = line
        self.skip_ws()
        self.expect("=")
        self.skip_ws()
        self.value(path)

    def mark_ancestors(self, path: KeyPath, line: int) -> None:
        """Tables created implicitly by a dotted key or header point at that line."""
        for end in range(1, len(path)):
            self.lines.setdefault(path[:end], line)

    # -- keys and values ---------------------------------------------------------

    def key(self) -> list[str]:
        """A possibly dotted key, as its parts."""
        parts: list[str] = []
        while True:
            self.skip_ws()
            char = self.peek()
            if char in ('"', "'"):
                parts.append(self.quoted_key())
            else:
                start = self.pos
                while self.peek() in _BARE_KEY_CHARS:
                    self.pos += 1
                parts.append(self.text[start : self.pos])
            self.skip_ws()
            if self.peek() != ".":
                return parts
            self.pos += 1

    def quoted_key(self) -> str:
        start = self.pos
        self.single_line_string()
        raw = self.text[start : self.pos]
        # The key is a valid TOML string, so let tomllib apply its escape rules.
        return tomllib.loads(f"k = {raw}")["k"]

    def value(self, path: KeyPath) -> None:
        char = self.peek()
        if self.text.startswith('"""', self.pos) or self.text.startswith("'''", self.pos):
            self.multi_line_string()
        elif char in ('"', "'"):
            self.single_line_string()
        elif char == "[":
            self.array(path)
        elif char == "{":
            self.inline_table(path)
        else:
            while self.pos < len(self.text) and self.text[self.pos] not in _SCALAR_END:
                self.pos += 1

    def array(self, path: KeyPath) -> None:
        self.pos += 1
        index = 0
        while True:
            self.skip_trivia()
            if self.pos >= len(self.text) or self.peek() == "]":
                self.pos += 1
                return
            start = self.pos
            element = path + (index,)
            self.lines[element] = self.line()
            self.value(element)
            self.skip_trivia()
            if self.peek() == ",":
                self.pos += 1
            index += 1
            if self.pos == start:
                self.pos += 1

    def inline_table(self, path: KeyPath) -> None:
        self.pos += 1
        while True:
            self.skip_trivia()
            if self.pos >= len(self.text) or self.peek() == "}":
                self.pos += 1
                return
            start = self.pos
            self.key_value(path)
            self.skip_trivia()
            if self.peek() == ",":
                self.pos += 1
            if self.pos == start:
                self.pos += 1

    def single_line_string(self) -> None:
        quote = self.text[self.pos]
        self.pos += 1
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "\\" and quote == '"':
                self.pos += 2
                continue
            self.pos += 1
            if char == quote:
                return

    def multi_line_string(self) -> None:
        delimiter = self.text[self.pos : self.pos + 3]
        self.pos += 3
        while self.pos < len(self.text):
            if self.text[self.pos] == "\\" and delimiter == '"""':
                self.pos += 2
            elif self.text.startswith(delimiter, self.pos):
                self.pos += 3
                # Up to two quotes right before the delimiter belong to the string.
                for _ in range(2):
                    if self.peek() == delimiter[0]:
                        self.pos += 1
                return
            else:
                self.pos += 1

    # -- low level ---------------------------------------------------------------

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def line(self) -> int:
        return bisect.bisect_left(self.newlines, self.pos) + 1

    def expect(self, token: str) -> None:
        if self.text.startswith(token, self.pos):
            self.pos += len(token)

    def skip_ws(self) -> None:
        while self.peek() in (" ", "\t"):
            self.pos += 1

    def skip_trivia(self) -> None:
        """Whitespace, newlines and comments."""
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in " \t\r\n\ufeff":
                self.pos += 1
            elif char == "#":
                while self.pos < len(self.text) and self.text[self.pos] != "\n":
                    self.pos += 1
            else:
                return
