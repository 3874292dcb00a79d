"""``bridgec launch``: torchrun with the workers' own exit code, as a job script needs it.

The launches run the real command line (a subprocess) on scripts compiled by
``bridgec compile`` (tests/runtime/launch.py), with real torchrun workers.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridgec.compiler import launch_cli, torchrun
from bridgec.runtime.errors import ExitCode
from tests.runtime import launch as runs

BRIDGEC = [sys.executable, "-m", "bridgec.compiler.cli"]
GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "good"


def _launch(folder: Path, *options: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*BRIDGEC, "launch", runs.SCRIPT, *options], cwd=folder, env=runs.environment({}),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _finish(process: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    try:
        stdout, stderr = process.communicate(timeout=runs.HANG_GUARD_SECONDS)
    except subprocess.TimeoutExpired:
        runs.kill(process)
        raise AssertionError("hang guard: bridgec launch still running") from None
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _last_exit(folder: Path) -> dict[str, object]:
    return json.loads((folder / "out" / "spec.last_exit.json").read_text())


def test_a_planned_stop_exits_75_without_torchruns_report_and_the_next_launch_finishes(tmp_path: Path) -> None:
    folder = runs.prepare(tmp_path, runs.RunSpec(procs=2, iters=4, exit_interval=2, resume=True))
    stopped = _finish(_launch(folder))
    assert stopped.returncode == ExitCode.STOPPED_TO_RESUME, stopped.stderr
    assert "stopping after step 2: exit_interval 2 reached; checkpoint saved; launch again to resume" in stopped.stdout
    for noise in ("Traceback", "FAILED", "ChildFailedError"):
        assert noise not in stopped.stdout + stopped.stderr
    assert stopped.stderr.endswith(
        "bridgec: run.py exited 75: stopped on purpose after saving; launch again to resume\n"
    )
    assert _last_exit(folder) == {
        "code": 75,
        "step": 2,
        "reason": "stopping after step 2: exit_interval 2 reached; checkpoint saved; launch again to resume",
    }

    done = _finish(_launch(folder))
    assert done.returncode == 0, done.stderr
    assert "resume: continuing from step 2" in done.stdout
    assert _last_exit(folder) == {"code": 0, "step": 4, "reason": "all 4 steps ran"}


def test_sigterm_to_the_launcher_reaches_the_workers_which_save_and_exit_75(tmp_path: Path) -> None:
    """A scheduler's notice (or Ctrl-C) sent to bridgec launch alone: the workers stop after a step, saved."""
    folder = runs.prepare(tmp_path, runs.RunSpec(procs=2, iters=100_000, resume=True))
    process = _launch(folder)
    metrics = folder / "out" / "spec.metrics.jsonl"
    deadline = time.monotonic() + runs.HANG_GUARD_SECONDS
    while not (metrics.is_file() and '"kind": "train"' in metrics.read_text()):  # training has begun
        assert process.poll() is None, _finish(process).stderr
        assert time.monotonic() < deadline, "hang guard: no training step logged"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    stopped = _finish(process)
    assert stopped.returncode == ExitCode.STOPPED_TO_RESUME, stopped.stderr
    assert "received SIGTERM; checkpoint saved" in stopped.stdout
    assert "Traceback" not in stopped.stdout + stopped.stderr
    record = _last_exit(folder)
    assert record["code"] == 75 and isinstance(record["step"], int) and record["step"] >= 1
    assert (folder / "ckpt" / "latest").read_text() == f"iter_{record['step']:07d}\n"


def test_a_problem_the_script_names_keeps_its_code_and_message(tmp_path: Path) -> None:
    folder = runs.prepare(tmp_path, runs.RunSpec(procs=2))
    wrong = _finish(_launch(folder, "--standalone", "--nproc-per-node", "1"))
    assert wrong.returncode == ExitCode.LAUNCH_MISMATCH
    assert "this script was compiled for 2 processes but was launched with 1" in wrong.stderr
    assert "Traceback" not in wrong.stderr and "FAILED" not in wrong.stderr
    assert _last_exit(folder)["code"] == 4


def test_options_that_would_hide_the_workers_output_and_multinode_without_options_are_refused(tmp_path: Path) -> None:
    shutil.copy(GOLDEN / "pipeline_vpp" / "expected_run.py", tmp_path / "run.py")  # 2 nodes x 4 processes
    bare = _finish(_launch(tmp_path))
    assert bare.returncode == 2
    assert (
        "is compiled for 2 nodes x 4 processes; give torchrun's options for this node, e.g. bridgec launch run.py "
        "--nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST_OF_NODE_0:29500"
    ) in bare.stderr
    tee = _finish(_launch(tmp_path, "--nproc-per-node", "8", "--redirects", "3"))
    assert tee.returncode == 2 and "--redirects: bridgec relays the workers' output itself" in tee.stderr


REPORT = """\
run.py FAILED
------------------------------------------------------------
Failures:
[1]:
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 11)
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  rank      : 1 (local_rank: 1)
  exitcode  : {code} (pid: 12)
============================================================
"""


@pytest.mark.parametrize(
    ("report", "record", "expected"),
    [
        ("", None, 0),
        (REPORT.format(code=5), None, 5),  # the first failure, not the rank torchrun then stopped
        (REPORT.format(code=-9), None, 137),  # killed by SIGKILL, as a shell reports it
        ("SignalException: Process 10 got signal: 15\n", {"code": 75}, 75),  # torchrun itself was signalled
        ("SignalException: Process 10 got signal: 15\n", {"code": None}, 1),  # the workers never said
    ],
    ids=["ok", "root-cause", "signal", "record", "killed"],
)
def test_workers_code(report: str, record: dict[str, object] | None, expected: int) -> None:
    finished = torchrun.Finished(returncode=0 if expected == 0 else 1, launcher_output=report)
    assert launch_cli.workers_code(finished, record) == expected


def test_read_launch_finds_the_last_exit_record(tmp_path: Path) -> None:
    folder = runs.prepare(tmp_path, runs.RunSpec())
    assert torchrun.read_launch(folder / "run.py").last_exit == folder / "out" / "spec.last_exit.json"
