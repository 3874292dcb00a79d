"""The MaxText configs the import tests read: the project's own fixtures, and MaxText's files when they are here.

tests/fixtures/maxtext holds a base config with the keys the import reads (at
the values MaxText's base.yml gives them) and a model file for each decoder
block, so the suite passes in any clone. MaxText's own configs (all of base.yml,
every model file) sit beside the checkout in ../shared/maxtext where the project
keeps them; every test runs against those too when that folder exists, and is
skipped with the reason otherwise.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "maxtext"
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "maxtext"
SHARED_ABSENT = (
    f"MaxText's own configs are not beside this checkout ({SHARED} does not exist): the checks against the real "
    "files are skipped; the fixtures in tests/fixtures/maxtext run the same tests"
)


@attrs.frozen
class ConfigFolder:
    """A MaxText configs folder: base.yml and models/<name>.yml."""

    name: str
    folder: Path

    @property
    def base(self) -> Path:
        return self.folder / "base.yml"

    def base_text(self) -> str:
        return self.base.read_text()

    def models(self) -> list[str]:
        return sorted(path.stem for path in (self.folder / "models").glob("*.yml"))

    def model_text(self, model: str) -> str:
        return (self.folder / "models" / f"{model}.yml").read_text()

    @property
    def is_maxtext_s_own(self) -> bool:
        return self.folder == SHARED


FIXTURE_CONFIGS = ConfigFolder("fixtures", FIXTURES)
SHARED_CONFIGS = ConfigFolder("shared", SHARED)
_SKIP_WITHOUT_SHARED = pytest.mark.skipif(not SHARED.is_dir(), reason=SHARED_ABSENT)

FOLDERS = [
    pytest.param(FIXTURE_CONFIGS, id="fixtures"),
    pytest.param(SHARED_CONFIGS, id="shared", marks=_SKIP_WITHOUT_SHARED),
]
"""Parametrize a test's ``configs`` argument with these: it runs on the fixtures, and on MaxText's files if here."""


def model_cases(models: list[str] | None = None) -> list[object]:
    """(configs, model) parameters: every model file of each folder, or ``models`` in each (one skipped case per
    absent folder, so collection never reads a folder that is not there)."""
    cases: list[object] = []
    for configs in (FIXTURE_CONFIGS, SHARED_CONFIGS):
        if not configs.folder.is_dir():
            cases.append(pytest.param(configs, None, id=f"{configs.name}-absent", marks=_SKIP_WITHOUT_SHARED))
            continue
        cases += [pytest.param(configs, model, id=f"{configs.name}-{model}") for model in models or configs.models()]
    return cases
