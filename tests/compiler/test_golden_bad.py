"""Golden cases: every tests/golden/bad/<case>/spec.toml and its exact diagnostics.

Each case folder holds ``spec.toml`` (plus any data or hook files it names) and
``expected.txt``: the formatted diagnostics of ``read_spec``, one per line, with
the file shown as ``spec.toml``. tests/golden/good/<case>/spec.toml must produce none.

After a deliberate change of wording, regenerate the expected files and review the diff:

    .venv/bin/python -m tests.compiler.test_golden_bad --update

(``BRIDGEC_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/compiler/test_golden_bad.py``
does the same.) A plain test run only compares.
"""

from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path

import pytest

from bridgec.compiler.errors import format_diagnostic, is_error
from bridgec.compiler.frontend import FrontendResult, read_spec
from bridgec.compiler.validate import SpecContext
from tests.compiler.conftest import GOLDEN, DiskFiles

UPDATE_COMMAND = ".venv/bin/python -m tests.compiler.test_golden_bad --update"
BAD = sorted(path for path in (GOLDEN / "bad").iterdir() if path.is_dir())
GOOD = sorted(path for path in (GOLDEN / "good").iterdir() if path.is_dir())


def run_case(case: Path) -> FrontendResult:
    text = (case / "spec.toml").read_text(encoding="utf-8")
    return read_spec(text, "spec.toml", SpecContext(file="spec.toml", spec_dir=case, files=DiskFiles()))


def render(result: FrontendResult) -> str:
    return "".join(format_diagnostic(d) + "\n" for d in result.diagnostics)


def update(cases: list[Path]) -> list[Path]:
    """Rewrite each case's expected.txt; the cases whose file changed."""
    changed = []
    for case in cases:
        expected, actual = case / "expected.txt", render(run_case(case))
        if not expected.exists() or expected.read_text(encoding="utf-8") != actual:
            expected.write_text(actual, encoding="utf-8")
            changed.append(case)
    return changed


@pytest.mark.parametrize("case", BAD, ids=[case.name for case in BAD])
def test_bad_case(case: Path) -> None:
    if os.environ.get("BRIDGEC_UPDATE_GOLDEN") == "1":
        update([case])
    result = run_case(case)
    assert any(is_error(d) for d in result.diagnostics), f"{case.name} is in bad/ but has no errors"
    expected_file = case / "expected.txt"
    expected = expected_file.read_text(encoding="utf-8") if expected_file.exists() else ""
    actual = render(result)
    if actual != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                actual.splitlines(keepends=True),
                f"{case.name}/expected.txt",
                "actual",
            )
        )
        pytest.fail(
            f"diagnostics of {case.name} changed:\n{diff}\n"
            f"If the new output is right, regenerate the expected files with:\n    {UPDATE_COMMAND}",
            pytrace=False,
        )


@pytest.mark.parametrize("case", GOOD, ids=[case.name for case in GOOD])
def test_good_case_has_no_diagnostics(case: Path) -> None:
    result = run_case(case)
    assert result.spec is not None
    assert render(result) == ""


def main(argv: list[str]) -> int:
    if argv != ["--update"]:
        print(f"usage: {UPDATE_COMMAND}", file=sys.stderr)
        return 2
    changed = update(BAD)
    for case in changed:
        print(f"updated {case.relative_to(GOLDEN.parent.parent)}/expected.txt")
    print(f"{len(changed)} of {len(BAD)} golden cases changed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
