"""Compile specs into a temporary folder and launch them on several processes, as a user would.

Every end-to-end test goes through these two functions: ``compile_to`` runs the
real ``bridgec compile`` (in-process, same code path as the CLI) and ``launch``
runs the script on several ranks with a generous hang guard (never a timing
assertion): forked from the session's warm launcher (tests/warm.py: the ranks
skip torchrun's ~25 CPU seconds of imports), or under ``torchrun`` itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs

from bridgec.compiler.cli import main as bridgec
from tests import warm
from tests.conftest import free_port

BIN = Path(sys.executable).parent
TORCHRUN = BIN / "torchrun"
HANG_GUARD_SECONDS = 600


def compile_to(folder: Path, spec_text: str, *, name: str = "spec.toml", output: str = "run.py") -> Path:
    """Write ``spec_text`` into ``folder`` and compile it; return the script's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(spec_text, encoding="utf-8")
    code = bridgec(["compile", str(folder / name), "-o", str(folder / output)])
    assert code == 0, f"bridgec compile {folder / name} exited {code}"
    return folder / output


@attrs.frozen(kw_only=True)
class Launch:
    returncode: int
    stdout: str
    stderr: str
    folder: Path

    def metrics(self, output_dir: str, spec: str = "spec") -> list[dict[str, Any]]:
        """The records of ``output_dir/<spec>.metrics.jsonl`` (the file is named after the spec)."""
        path = self.folder / output_dir / f"{spec}.metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]

    def train_losses(self, output_dir: str, spec: str = "spec") -> list[float]:
        return [m["loss"] for m in self.metrics(output_dir, spec) if m["kind"] == "train"]

    def explain(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout[-4000:]}\n--- stderr\n{self.stderr[-6000:]}"


def launch(
    script: Path,
    nprocs: int,
    *,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
    torchrun: bool = False,
) -> Launch:
    """Run ``script`` on ``nprocs`` ranks from its folder: forked from the session's warm launcher (tests/warm.py),
    or with ``torchrun`` (``torchrun=True``, or BRIDGEC_TEST_LAUNCHER=torchrun for every launch)."""
    if warm.enabled() and not torchrun:
        done = warm.torchrun(nprocs, [script.name, *args], cwd=script.parent, env=env, timeout=HANG_GUARD_SECONDS)
        return Launch(returncode=done.returncode, stdout=done.stdout, stderr=done.stderr, folder=script.parent)
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    completed = subprocess.run(
        [str(TORCHRUN), "--nproc-per-node", str(nprocs), "--master-port", str(free_port()), script.name, *args],
        cwd=script.parent,
        env=environment,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_SECONDS,
    )
    return Launch(
        returncode=completed.returncode, stdout=completed.stdout, stderr=completed.stderr, folder=script.parent
    )


def copy_example(name: str, folder: Path) -> Path:
    """Copy examples/<name>/spec.toml into ``folder``; return the copy."""
    source = Path(__file__).resolve().parents[2] / "examples" / name / "spec.toml"
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(source, folder / "spec.toml"))
