"""The committed examples are fresh: each generated script is what its spec compiles to today."""

from __future__ import annotations

from pathlib import Path

from bridgec.compiler.cli import main as bridgec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_examples_are_fresh() -> None:
    assert bridgec(["check", "--all", str(EXAMPLES)]) == 0, (
        "an example is stale; regenerate it with: bridgec compile examples/<name>/spec.toml -o examples/<name>/run.py"
    )


def test_every_example_has_its_script() -> None:
    for spec in sorted(EXAMPLES.glob("*/spec.toml")):
        assert (spec.parent / "run.py").is_file(), f"{spec.parent.name}: run.py missing"
