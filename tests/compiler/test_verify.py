"""verify: a spec string can never become code; runtime imports must exist."""

from __future__ import annotations

import ast
from pathlib import Path

import libcst

from bridgec.compiler.compile import compile_spec
from bridgec.compiler.verify import check_runtime_imports, verify
from tests.compiler.conftest import SPEC_DIR, MemoryFiles, spec_toml

INJECTIONS = [
    'x"); import os; os.system("id',
    "x'); import os; os.system('id",
    'x"""\nimport os\n"""',
    "line\nbreak # and a comment",
    "back\\slash\\",
    "\u2028 unicode line separator",
]


def test_injection_attempts_stay_string_literals() -> None:
    for text in INJECTIONS:
        source = compile_spec(
            spec_toml(run={"name": "injection", "description": text}),
            spec_name="spec.toml",
            spec_path=SPEC_DIR / "spec.toml",
            output_path=SPEC_DIR / "run.py",
            files=MemoryFiles(),
        ).source
        assert source is not None
        assert verify(source, (text,)) == []
        imported = {
            alias.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Import) for alias in node.names
        }
        assert "os" not in imported


def test_a_string_that_escaped_its_literal_is_caught() -> None:
    source = 'NAME = "x"; import os; os.system("id")\n'
    problems = verify(source, ('x"; import os; os.system("id',))
    assert problems == [
        "the spec string 'x\"; import os; os.system(\"id' is not inside any string literal of the script"
    ]


def test_a_string_that_also_appears_as_code_is_caught() -> None:
    source = 'NAME = "1.5e3"\nSCALE = 1.5e3\n'
    assert verify(source, ("1.5e3",)) == ["the spec string '1.5e3' appears outside string literals"]


def test_a_punctuation_only_run_name_compiles() -> None:
    """ "=" names a run; it also occurs in every script as an operator, which is not the spec string escaping."""
    for name in ("=", "-", "()", "+="):
        result = compile_spec(
            spec_toml(run={"name": name}),
            spec_name="spec.toml",
            spec_path=SPEC_DIR / "spec.toml",
            output_path=SPEC_DIR / "run.py",
            files=MemoryFiles(),
        )
        assert result.source is not None, name
        assert repr(name) in result.source or f'"{name}"' in result.source


def test_unparsable_output_is_reported() -> None:
    assert verify("def broken(:\n", ())[0].startswith("the generated script does not parse")


def test_runtime_imports_are_checked_statically() -> None:
    assert check_runtime_imports(libcst.parse_module("from bridgec.runtime.loop import train\n")) == []
    assert check_runtime_imports(libcst.parse_module("from bridgec.runtime.loop import nope\n")) == [
        "the script imports nope from bridgec.runtime.loop, which does not define it"
    ]
    assert check_runtime_imports(libcst.parse_module("from bridgec.runtime import missing_module\n")) == [
        "the script imports bridgec.runtime.missing_module, which does not exist"
    ]
    assert Path  # keeps the import list honest for readers
