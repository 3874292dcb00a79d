"""The README's spec reference is generated from spec.py and must match it."""

from __future__ import annotations

from pathlib import Path

from bridgec.compiler.specdoc import END, START, markdown, spec_source, tables

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_spec_reference_is_current() -> None:
    readme = README.read_text(encoding="utf-8")
    current = readme[readme.index(START) : readme.index(END) + len(END)]
    assert current == markdown(spec_source()), (
        "the README's spec reference is stale; run: .venv/bin/python -m bridgec.compiler.specdoc --write README.md"
    )


def test_every_field_is_documented() -> None:
    undocumented = [f"{t.title}.{f.key}" for t in tables(spec_source()) for f in t.fields if not f.doc]
    assert undocumented == []
