"""Accepted by the compiler implies runs: a fixed sample of generated specs, each validated, compiled and run.

The specs come from ``tests/e2e/specgen.py`` (seeded); ``tests/e2e/sweep.py``
compiles them and runs every accepted one for 2 steps (all launches from one
warm Python, ``tests/e2e/forkrun.py``). A failure prints its seed, its spec and
the ranks' output, and the command that replays it. A larger sweep:
``.venv/bin/python -m tests.e2e.sweep --seeds 0-199``.
"""

from __future__ import annotations

from pathlib import Path

from tests.e2e.sweep import sweep

SEEDS = range(0, 32)
"""About a minute and a half on 2 cores; the sweep command runs more."""


def test_every_accepted_spec_runs_as_it_says(tmp_path: Path) -> None:
    outcomes = sweep(SEEDS, tmp_path)
    failed = [outcome for outcome in outcomes if outcome.status == "failed"]
    assert not failed, "\n\n".join(outcome.report for outcome in failed)
    ran = sum(outcome.status == "ran" for outcome in outcomes)
    # The sample is meant to run: most draws are valid specs (the rest check that refusals are clean).
    assert ran >= len(SEEDS) // 2, f"only {ran} of {len(SEEDS)} generated specs were accepted"
