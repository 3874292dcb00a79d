"""Verify a rendered script with libcst before anything is written.

Three checks, each a named function returning problems (empty when fine):
the text parses as Python; every string that came from the spec sits inside a
string literal (so a spec value can never become code); every name the script
imports from ``bridgec.runtime`` exists there (read statically with ``ast``, so
verifying never imports torch or megatron).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import io
import re
import tokenize

import libcst

_RUNTIME = "bridgec.runtime"
_IDENTIFIER_LIKE = re.compile(r"[A-Za-z0-9_]*")
# Python 3.12 splits f-strings into several token types; 3.11 has one STRING token.
_LITERAL_TOKENS = frozenset(
    getattr(tokenize, name) for name in ("STRING", "COMMENT", "FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END")
    if hasattr(tokenize, name)
)


def check_parses(source: str) -> tuple[libcst.Module | None, list[str]]:
    try:
        return libcst.parse_module(source), []
    except libcst.ParserSyntaxError as error:
        return None, [f"the generated script does not parse: {error}"]


class _Literals(libcst.CSTVisitor):
    def __init__(self) -> None:
        self.values: list[str] = []

    def visit_SimpleString(self, node: libcst.SimpleString) -> None:  # noqa: N802 (libcst's name)
        value = node.evaluated_value
        self.values.append(value if isinstance(value, str) else value.decode("latin-1"))

    def visit_ConcatenatedString(self, node: libcst.ConcatenatedString) -> None:  # noqa: N802
        value = node.evaluated_value
        if isinstance(value, str):
            self.values.append(value)


def _code_without_strings_and_comments(source: str) -> str:
    kept = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in _LITERAL_TOKENS:
            kept.append(token.string)
    return " ".join(kept)


def check_spec_strings(module: libcst.Module, source: str, user_strings: tuple[str, ...]) -> list[str]:
    """Each spec string must be inside one string literal and nowhere in the code around them."""
    visitor = _Literals()
    module.visit(visitor)
    code = _code_without_strings_and_comments(source)
    problems = []
    for text in user_strings:
        if not any(text in value for value in visitor.values):
            problems.append(f"the spec string {text!r} is not inside any string literal of the script")
        elif not _IDENTIFIER_LIKE.fullmatch(text) and text in code:
            problems.append(f"the spec string {text!r} appears outside string literals")
    return problems


@functools.cache
def _runtime_names(module: str) -> frozenset[str] | None:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    with open(spec.origin, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return frozenset(names)


def check_runtime_imports(source: str) -> list[str]:
    problems = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom) or node.module is None:
            continue
        if node.module == _RUNTIME:
            for alias in node.names:
                if importlib.util.find_spec(f"{_RUNTIME}.{alias.name}") is None:
                    problems.append(f"the script imports {_RUNTIME}.{alias.name}, which does not exist")
        elif node.module.startswith(_RUNTIME + "."):
            names = _runtime_names(node.module)
            if names is None:
                problems.append(f"the script imports from {node.module}, which does not exist")
                continue
            for alias in node.names:
                if alias.name not in names:
                    problems.append(f"the script imports {alias.name} from {node.module}, which does not define it")
    return problems


def verify(source: str, user_strings: tuple[str, ...]) -> list[str]:
    """All problems with a rendered script; empty when it is fit to write."""
    module, problems = check_parses(source)
    if module is None:
        return problems
    return check_spec_strings(module, source, user_strings) + check_runtime_imports(source)
