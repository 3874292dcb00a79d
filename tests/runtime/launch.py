"""Build and launch the checkpoint/fault test runs under torchrun, and read what they leave behind.

The one place that knows how a test run is made. Today: a copy of
``checkpoint_scripts/train.py`` driven by environment knobs (see its docstring).
When the compiler emits scripts, :func:`prepare` compiles a spec into the folder
instead and the knobs become spec values; the tests stay as they are.

Every launch runs with a hang guard (a generous timeout that kills the whole
process group), never a timing assertion. Worker output goes to per-rank log
files (torchrun ``--redirects 3``) so a test can tell a worker's traceback from
torchrun's own report, which always ends in a traceback when a worker fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import torch

SCRIPT = Path(__file__).resolve().parent / "checkpoint_scripts" / "train.py"
TORCHRUN = Path(sys.executable).parent / "torchrun"
HANG_GUARD_SECONDS = 300
KNOBS = (
    "TP", "PP", "VPP", "DISTOPT", "ITERS", "SAVE_INTERVAL", "KEEP_LAST", "EXIT_INTERVAL", "RESUME", "ON_NONFINITE",
    "EVAL_INTERVAL", "HIDDEN", "LAYERS", "NAN_STEP", "SIGTERM_STEP", "DIE_STEP", "DIE_RANK", "TIMEOUT_MINUTES",
    "BRIDGEC_TEST_PAUSE_SAVE",
)
_FAILURE = re.compile(r"rank\s*:\s*(\d+) \(local_rank: \d+\)\s*\n\s*exitcode\s*:\s*(-?\d+)")


def prepare(folder: Path) -> Path:
    """A run folder holding the script; its checkpoints go to ``folder/ckpt``, metrics to ``folder/out``."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(SCRIPT, folder / "train.py")
    return folder


@attrs.frozen(kw_only=True)
class Launch:
    folder: Path
    returncode: int
    """torchrun's own exit status (1 whenever a worker failed)."""
    exit_codes: dict[int, int]
    """Each rank's exit status, from torchrun's failure report (0 for ranks it does not list)."""
    launcher_output: str
    workers: dict[int, tuple[str, str]]
    """rank -> (stdout, stderr) of the worker."""

    @property
    def output(self) -> str:
        """Everything the workers printed, rank by rank."""
        return "\n".join(out + err for _, (out, err) in sorted(self.workers.items()))

    def code(self, rank: int = 0) -> int:
        return self.exit_codes.get(rank, 0)

    def explain(self) -> str:
        return (
            f"torchrun exit {self.returncode}, worker exits {self.exit_codes}\n--- workers\n{self.output[-6000:]}"
            f"\n--- torchrun\n{self.launcher_output[-3000:]}"
        )


def command(nproc: int, folder: Path) -> list[str]:
    return [
        str(TORCHRUN), "--standalone", "--nproc-per-node", str(nproc),
        "--log-dir", str(folder / "logs"), "--redirects", "3", "train.py",
    ]  # fmt: skip


def environment(knobs: dict[str, Any]) -> dict[str, str]:
    base = {key: value for key, value in os.environ.items() if key not in KNOBS}
    return {**base, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **{k: str(v) for k, v in knobs.items()}}


def launch(folder: Path, nproc: int, **knobs: Any) -> Launch:
    """Run the script in ``folder`` with ``nproc`` processes and the given knobs; wait for it to end."""
    process = start(folder, nproc, **knobs)
    try:
        output, _ = process.communicate(timeout=HANG_GUARD_SECONDS)
    except subprocess.TimeoutExpired:
        kill(process)
        raise AssertionError(f"hang guard: {folder} still running after {HANG_GUARD_SECONDS} s") from None
    return finished(folder, process.returncode, output)


def start(folder: Path, nproc: int, **knobs: Any) -> subprocess.Popen[str]:
    """Start a launch in its own process group (so a test can kill all of it) and return at once."""
    shutil.rmtree(folder / "logs", ignore_errors=True)
    return subprocess.Popen(
        command(nproc, folder), cwd=folder, env=environment(knobs), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


def kill(process: subprocess.Popen[str]) -> None:
    """SIGKILL torchrun and every worker (the whole process group): a machine that loses power."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.communicate()


def wait_for(path: Path, process: subprocess.Popen[str]) -> None:
    """Wait (hang guard only) until ``path`` exists; fail if the launch ends first."""
    deadline = time.monotonic() + HANG_GUARD_SECONDS
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"the launch ended (exit {process.returncode}) before {path} appeared")
        if time.monotonic() > deadline:
            kill(process)
            raise AssertionError(f"hang guard: {path} did not appear")
        time.sleep(0.2)


def finished(folder: Path, returncode: int, output: str) -> Launch:
    workers = {}
    for stderr in sorted((folder / "logs").glob("**/attempt_*/*/stderr.log")):
        rank = int(stderr.parent.name)
        stdout = stderr.with_name("stdout.log")
        workers[rank] = (stdout.read_text(errors="replace") if stdout.exists() else "", stderr.read_text(errors="replace"))
    codes = {int(rank): int(code) for rank, code in _FAILURE.findall(output)}
    return Launch(folder=folder, returncode=returncode, exit_codes=codes, launcher_output=output, workers=workers)


def failed_with(result: Launch, code: int) -> bool:
    """Every worker exited with ``code``, or was stopped by torchrun (SIGTERM) after one did."""
    codes = set(result.exit_codes.values())
    return code in codes and codes <= {code, -signal.SIGTERM}


def metrics(folder: Path) -> list[dict[str, Any]]:
    path = folder / "out" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def losses(folder: Path, kind: str = "train") -> dict[int, Any]:
    """step -> loss of the records of ``kind`` (train or valid)."""
    return {record["step"]: record["loss"] for record in metrics(folder) if record["kind"] == kind}


def copy_checkpoint(source: Path, folder: Path, name: str) -> None:
    """Put checkpoint ``source/ckpt/name`` into ``folder/ckpt`` as the latest one."""
    target = folder / "ckpt"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source / "ckpt" / name, target / name)
    (target / "latest").write_text(name + "\n", encoding="utf-8")


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Every entry of a torch_dist checkpoint folder (sharded ones by key, then common.pt's), in this process."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    target = path.parent / (path.name + ".pt")
    dcp_to_torch_save(str(path), str(target))
    try:
        sharded = torch.load(target, weights_only=False)
    finally:
        target.unlink()
    return {**sharded, **torch.load(path / "common.pt", weights_only=False)}
