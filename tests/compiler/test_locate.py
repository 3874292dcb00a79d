"""Key path -> line index over TOML text."""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bridgec.compiler.locate import build_index

DOCUMENT = '''\
# a comment with [fake.header] and key = 1
title = "x" # trailing
"quoted key" = 1
'lit.key' = 2
a.b . c = 3
text = """
[not.a.table]
not_a_key = 1
"""
literal = \'\'\'
x = 2 \'\'\'
arr = [
  1, # comment
  [2, 3],
  { p = "q", r.s = 1 },
]
mesh = { data = -1, tensor = 2 }
when = 1979-05-27 07:32:00Z
[model]
hidden_size = 64
[[data.sources]]
prefix = "a"
[data.sources.extra]
k = 1
[[data.sources]]
prefix = "b"
[[data.sources.inner]]
z = 1
[[data.sources.inner]]
z = 2
[data]
kind = "indexed"
'''


def test_index_of_every_construct() -> None:
    tomllib.loads(DOCUMENT)
    lines = build_index(DOCUMENT).lines
    assert lines == {
        ("title",): 2,
        ("quoted key",): 3,
        ("lit.key",): 4,
        ("a",): 5,
        ("a", "b"): 5,
        ("a", "b", "c"): 5,
        ("text",): 6,
        ("literal",): 10,
        ("arr",): 12,
        ("arr", 0): 13,
        ("arr", 1): 14,
        ("arr", 1, 0): 14,
        ("arr", 1, 1): 14,
        ("arr", 2): 15,
        ("arr", 2, "p"): 15,
        ("arr", 2, "r"): 15,
        ("arr", 2, "r", "s"): 15,
        ("mesh",): 17,
        ("mesh", "data"): 17,
        ("mesh", "tensor"): 17,
        ("when",): 18,
        ("model",): 19,
        ("model", "hidden_size"): 20,
        ("data",): 31,
        ("data", "kind"): 32,
        ("data", "sources"): 21,
        ("data", "sources", 0): 21,
        ("data", "sources", 0, "prefix"): 22,
        ("data", "sources", 0, "extra"): 23,
        ("data", "sources", 0, "extra", "k"): 24,
        ("data", "sources", 1): 25,
        ("data", "sources", 1, "prefix"): 26,
        ("data", "sources", 1, "inner"): 27,
        ("data", "sources", 1, "inner", 0): 27,
        ("data", "sources", 1, "inner", 0, "z"): 28,
        ("data", "sources", 1, "inner", 1): 29,
        ("data", "sources", 1, "inner", 1, "z"): 30,
    }


def test_missing_paths_fall_back_to_the_nearest_ancestor() -> None:
    index = build_index(DOCUMENT)
    assert index.line_of(("model", "num_layers")) == 19
    assert index.line_of(("data", "sources", 1, "weight")) == 25
    assert index.line_of(("mesh", "context")) == 17
    assert index.line_of(("nowhere", "x")) is None
    assert index.line_of(()) is None
    assert index.has(("model",)) and not index.has(("model", "num_layers"))


def test_escaped_quotes_in_strings_and_keys() -> None:
    text = 'a = "say \\"[x]\\" = 1"\n"k\\"ey" = 2\nb = """ends with quote""""\nc = \'\'\'two\'\'\'\'\'\n[t]\nd = 1\n'
    assert tomllib.loads(text)["b"] == 'ends with quote"'
    assert build_index(text).lines == {("a",): 1, ('k"ey',): 2, ("b",): 3, ("c",): 4, ("t",): 5, ("t", "d"): 6}


def test_crlf_line_endings() -> None:
    text = '[run]\r\nname = "x"\r\n\r\n[model]\r\nhidden_size = 4\r\n'
    assert build_index(text).lines == {("run",): 1, ("run", "name"): 2, ("model",): 4, ("model", "hidden_size"): 5}


def test_super_table_defined_after_its_sub_table() -> None:
    text = "[a.b]\nx = 1\n[a]\ny = 2\n"
    assert build_index(text).lines == {("a",): 3, ("a", "b"): 1, ("a", "b", "x"): 2, ("a", "y"): 4}


def test_empty_document() -> None:
    assert build_index("").lines == {}
    assert build_index("# only a comment\n\n").lines == {}


# -- property: random documents, written in every style, index every key on its own line ------------

_KEY = st.text(alphabet="abz_-09 .é\"'", min_size=1, max_size=5)
_TRICKY_STRINGS = [
    "[fake]",
    "k = 1",
    "# no comment",
    'quote " inside',
    "x'''y",
    'a"""b',
    "two\nlines",
    "tab\t",
    "back\\slash",
    "{ a = 1 }",
    "[[x]]",
    "",
]
_SCALAR = st.one_of(
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=False),
    st.booleans(),
    st.sampled_from(_TRICKY_STRINGS),
    st.text(max_size=8),
)
_TREE = st.recursive(
    st.dictionaries(_KEY, _SCALAR | st.lists(_SCALAR, max_size=3), max_size=4),
    lambda inner: st.dictionaries(_KEY, inner | st.lists(inner, min_size=1, max_size=3) | _SCALAR, max_size=4),
    max_leaves=12,
)
_STYLES = st.lists(st.sampled_from(["header", "dotted", "inline"]), min_size=1, max_size=40)


def _basic(text: str) -> str:
    """A TOML basic string (JSON's escapes, plus DEL, which TOML also forbids raw)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _key(key: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_-]+", key):
        return key
    if "'" not in key:
        return f"'{key}'"
    return _basic(key)


def _string(text: str, variant: int) -> str:
    if text.startswith("\n"):  # a multi-line string drops a newline right after its opening quotes
        return _basic(text)
    literal_ok = "'''" not in text and not text.endswith("'") and re.fullmatch(r"[^\x00-\x08\x0b-\x1f\x7f]*", text)
    if variant == 1 and literal_ok:
        return f"'''{text}'''"
    if variant == 2:
        body = _basic(text)[1:-1].replace("\\n", "\n")
        return f'"""{body}"""' if not body.endswith('"') else _basic(text)
    return _basic(text)


def _value(value: Any, styles: list[str]) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if value == value and abs(value) != float("inf") else ("inf" if value > 0 else "-inf")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _string(value, len(styles) % 3)
    if isinstance(value, list):
        return "[\n  " + ",\n  ".join(_value(v, styles) for v in value) + ",\n]" if value else "[]"
    return "{ " + ", ".join(f"{_key(k)} = {_value(v, styles)}" for k, v in value.items()) + " }"


def _is_tables(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


class _Writer:
    """Writes a tree as TOML, choosing header, dotted or inline style per table, and records each key's line."""

    def __init__(self, styles: list[str]) -> None:
        self.styles, self.lines, self.expected = styles, [], {}

    def style(self) -> str:
        self.styles.append(self.styles.pop(0))
        return self.styles[-1]

    def emit(self, line: str, path: tuple[Any, ...], key: str) -> None:
        self.expected[path] = (sum(written.count("\n") + 1 for written in self.lines) + 1, key)
        self.lines.append(line)

    def table(self, tree: dict[str, Any], path: tuple[Any, ...], header: list[str]) -> None:
        later = []
        for key, value in tree.items():
            if isinstance(value, dict) and value and self.style() == "header":
                later.append((key, value, False))
            elif _is_tables(value) and self.style() == "header":
                later.append((key, value, True))
            elif isinstance(value, dict) and value and self.style() == "dotted":
                self.dotted(value, path + (key,), [_key(key)])
            else:
                self.emit(f"{_key(key)} = {_value(value, self.styles)}", path + (key,), _key(key))
        for key, value, is_array in later:
            names = header + [_key(key)]
            if is_array:
                for index, element in enumerate(value):
                    self.emit(f"[[{'.'.join(names)}]]", path + (key, index), _key(key))
                    self.table(element, path + (key, index), names)
            else:
                self.emit(f"[{'.'.join(names)}]", path + (key,), _key(key))
                self.table(value, path + (key,), names)

    def dotted(self, tree: dict[str, Any], path: tuple[Any, ...], names: list[str]) -> None:
        for key, value in tree.items():
            if isinstance(value, dict) and value:
                self.dotted(value, path + (key,), names + [_key(key)])
            else:
                self.emit(f"{' . '.join(names + [_key(key)])} = {_value(value, self.styles)}", path + (key,), _key(key))


@settings(max_examples=300, deadline=None, database=None)
@given(tree=_TREE, styles=_STYLES)
def test_every_written_key_is_indexed_on_its_line(tree: dict[str, Any], styles: list[str]) -> None:
    writer = _Writer(list(styles))
    writer.table(tree, (), [])
    text = "\n".join(writer.lines) + "\n"
    assert tomllib.loads(text) == tree
    index = build_index(text)
    for path, (line, key) in writer.expected.items():
        assert index.lines[path] == line, (path, text)
        assert key in text.split("\n")[line - 1]
