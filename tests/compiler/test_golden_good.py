"""Golden good cases: tests/golden/good/<case>/spec.toml compiles to exactly <case>/expected_run.py.

A mismatch prints the diff and the command that regenerates the expected files
(after you have checked that the new output is what you want):

    BRIDGEC_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/compiler/test_golden_good.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bridgec.compiler.cli import DiskFiles
from bridgec.compiler.compile import compile_spec
from bridgec.compiler.emit import unified_diff

GOOD = Path(__file__).resolve().parent.parent / "golden" / "good"
CASES = sorted(p.name for p in GOOD.iterdir() if (p / "spec.toml").is_file())
UPDATE = "BRIDGEC_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/compiler/test_golden_good.py"


@pytest.mark.parametrize("case", CASES)
def test_golden_good(case: str) -> None:
    folder = GOOD / case
    result = compile_spec(
        (folder / "spec.toml").read_text(encoding="utf-8"),
        spec_name="spec.toml",
        spec_path=folder / "spec.toml",
        output_path=folder / "expected_run.py",
        files=DiskFiles(),
    )
    assert result.source is not None, result.diagnostics
    expected_path = folder / "expected_run.py"
    if os.environ.get("BRIDGEC_UPDATE_GOLDEN"):
        expected_path.write_text(result.source, encoding="utf-8")
    expected = expected_path.read_text(encoding="utf-8") if expected_path.exists() else ""
    assert result.source == expected, (
        f"{case}: the compiled script differs from expected_run.py; if the change is intended run:\n"
        f"    {UPDATE}\n" + unified_diff(expected, result.source, "expected_run.py")
    )
