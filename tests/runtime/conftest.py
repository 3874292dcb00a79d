"""Fixtures of the runtime tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import launch
from tests.runtime import two_rank_worker


@pytest.fixture(scope="session")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Any]]:
    """rank -> what tests/runtime/two_rank_worker.py found (one torchrun launch of 2 processes for the session)."""
    folder = tmp_path_factory.mktemp("two_ranks")
    done = launch(Path(two_rank_worker.__file__), 2, args=(str(folder),))
    assert done.returncode == 0, done.explain()
    return {rank: json.loads((folder / f"rank{rank}.json").read_text()) for rank in (0, 1)}
