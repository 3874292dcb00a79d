"""Verify a rendered script with libcst before anything is written.

Three checks, each a named function returning problems (empty when fine):
the text parses as Python (libcst); every string that came from the spec sits
inside a string literal (so a spec value can never become code; literals are
read token by token, which is exact and much faster than a full CST walk);
every name the script imports from ``bridgec.runtime`` exists there (the
runtime modules are read statically with ``ast``, so verifying never imports
torch or megatron).
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
_HAS_WORD = re.compile(r"[A-Za-z0-9_]")
"""A spec string with no letter, digit or underscore ("=", "-", "()") names nothing and cannot call
anything; it occurs in any script's code as an operator, so only its literal is checked."""
# Python 3.12 splits f-strings into several token types; 3.11 has one STRING token.
_LITERAL_TOKENS = frozenset(
    getattr(tokenize, name)
    for name in ("STRING", "COMMENT", "FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END")
    if hasattr(tokenize, name)
)


def check_parses(source: str) -> tuple[libcst.Module | None, list[str]]:
    try:
        return libcst.parse_module(source), []
    except libcst.ParserSyntaxError as error:
        return None, [f"the generated script does not parse: {error}"]


def _literal_values(source: str) -> list[str]:
    """The value of every string literal, read token by token (f-strings have none to offer)."""
    values = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.STRING and not token.string.lstrip("rRbBuU").startswith(("f", "F")):
            value = ast.literal_eval(token.string)
            values.append(value if isinstance(value, str) else value.decode("latin-1"))
    return values


def _code_without_strings_and_comments(source: str) -> str:
    kept = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in _LITERAL_TOKENS:
            kept.append(token.string)
    return " ".join(kept)


def check_spec_strings(source: str, user_strings: tuple[str, ...]) -> list[str]:
    """Each spec string must be inside one string literal and nowhere in the code around them."""
    values = _literal_values(source)
    code = _code_without_strings_and_comments(source)
    problems = []
    for text in user_strings:
        if not any(text in value for value in values):
            problems.append(f"the spec string {text!r} is not inside any string literal of the script")
        elif not _IDENTIFIER_LIKE.fullmatch(text) and _HAS_WORD.search(text) and text in code:
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


def _runtime_imports(module: libcst.Module) -> list[tuple[str, str]]:
    """(module, name) of every top-level ``from bridgec.runtime... import name`` (the script imports nothing nested)."""
    found = []
    for statement in module.body:
        if not isinstance(statement, libcst.SimpleStatementLine):
            continue
        for small in statement.body:
            if (
                isinstance(small, libcst.ImportFrom)
                and small.module is not None
                and not isinstance(small.names, libcst.ImportStar)
            ):
                dotted = module.code_for_node(small.module)
                if dotted == _RUNTIME or dotted.startswith(_RUNTIME + "."):
                    found += [(dotted, module.code_for_node(alias.name)) for alias in small.names]
    return found


def check_runtime_imports(module: libcst.Module) -> list[str]:
    problems = []
    for dotted, name in _runtime_imports(module):
        if dotted == _RUNTIME:
            if importlib.util.find_spec(f"{_RUNTIME}.{name}") is None:
                problems.append(f"the script imports {_RUNTIME}.{name}, which does not exist")
            continue
        names = _runtime_names(dotted)
        if names is None:
            problems.append(f"the script imports from {dotted}, which does not exist")
        elif name not in names:
            problems.append(f"the script imports {name} from {dotted}, which does not define it")
    return problems


def verify(source: str, user_strings: tuple[str, ...]) -> list[str]:
    """All problems with a rendered script; empty when it is fit to write."""
    module, problems = check_parses(source)
    if module is None:
        return problems
    return check_spec_strings(source, user_strings) + check_runtime_imports(module)
