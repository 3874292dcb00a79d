"""Asynchronous saves ([checkpoint] async_save = true): written in the background, published once all ranks wrote.

The same guarantees as the synchronous save (tests/runtime/test_checkpoint.py),
checked under the faults that matter for a background write: the job killed
while the writer runs, and a writer that fails (a full, size-limited folder).
Every launch is a spec compiled by ``bridgec compile`` and run with torchrun;
losses are compared bit for bit.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import attrs
import pytest

from bridgec.runtime import checkpoint_files as files
from bridgec.runtime.errors import ExitCode
from tests.runtime import launch as runs

DP2 = runs.RunSpec(
    procs=2, distributed_optimizer=True, save_interval=2, keep_last=2, resume=True, async_save=True, eval_interval=3
)


def _wait_for_step(folder: Path, step: int, process: object) -> None:
    """Wait (hang guard only) until the metrics file holds ``step``'s training record."""
    deadline = time.monotonic() + runs.HANG_GUARD_SECONDS
    path = folder / "out" / "spec.metrics.jsonl"
    logged = '"kind": "train", '
    while not (
        path.is_file() and any(logged in line and f'"step": {step},' in line for line in path.read_text().splitlines())
    ):
        assert process.poll() is None, f"the launch ended before step {step} was logged"  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, f"hang guard: step {step} was not logged"
        time.sleep(0.2)


@attrs.frozen(kw_only=True)
class Killed:
    folder: Path
    reference: dict[int, float]
    valid: dict[int, float]


@pytest.fixture(scope="module")
def killed_async_dp2(tmp_path_factory: pytest.TempPathFactory) -> Killed:
    """DP2, distributed optimizer, async saves at 2, 4, 6: the writer of step 4 hangs after writing its files;
    training goes on to step 6 (whose save waits for 4's), and the job is killed with SIGKILL."""
    folder = runs.prepare(tmp_path_factory.mktemp("killed_async_dp2"), DP2)
    marker = folder / "writing"
    process = runs.start(folder, background_fault=(4, "pause", marker))
    runs.wait_for(marker, process)
    _wait_for_step(folder, 6, process)
    runs.kill(process)
    return Killed(folder=folder, reference=runs.losses(folder), valid=runs.losses(folder, "valid"))


def test_kill_during_a_background_write_keeps_the_previous_checkpoint(killed_async_dp2: Killed) -> None:
    """Steps 5 and 6 ran while step 4 was being written; after kill -9, iter 2 is the latest and resumes exactly."""
    folder, root = killed_async_dp2.folder, killed_async_dp2.folder / "ckpt"
    partial = root / "iter_0000004.partial"
    assert sorted(killed_async_dp2.reference) == [1, 2, 3, 4, 5, 6]  # training did not wait for the write
    assert (root / "latest").read_text() == "iter_0000002\n"
    assert any(partial.glob("*.distcp")) and not (partial / files.MANIFEST).exists()
    assert not (root / "iter_0000004").exists() and not (root / "iter_0000006").exists()
    assert files.inspect(root).manifest.step == 2

    resumed = runs.launch(folder)
    assert resumed.returncode == 0, resumed.explain()
    assert "resume: continuing from step 2 (16 samples consumed)" in resumed.output
    assert "checkpoint: step 4 staged in" in resumed.output
    assert "checkpoint: saved step 6 to" in resumed.output
    assert runs.losses(folder) == killed_async_dp2.reference  # bit-identical at DP2, every step logged once
    valid = runs.losses(folder, "valid")
    assert sorted(valid) == [3, 6] and valid[3] == killed_async_dp2.valid[3]  # evaluated from the same position
    # keep_last = 2, pruned only after each publish; the dead save's folder is gone.
    assert sorted(p.name for p in root.iterdir()) == ["iter_0000004", "iter_0000006", "latest"]
    assert files.inspect(root).manifest.step == 6


def test_async_resume_at_tp2_is_exact_and_exit_interval_waits_for_the_write(tmp_path: Path) -> None:
    """TP2: a straight async run (saves 2, 4, 6) is the reference; resuming from its step 2 with exit_interval 2
    stops after step 4 with step 4 published, and the losses of steps 3-4 are bit-identical."""
    spec = runs.RunSpec(procs=2, tensor=2, save_interval=2, resume=True, async_save=True)
    folder = runs.prepare(tmp_path, spec)
    straight = runs.launch(folder)
    assert straight.returncode == 0, straight.explain()
    reference = runs.losses(folder)
    assert "(written in the background, published after step 6: 0 steps later; finalized in" in straight.output
    root = folder / "ckpt"
    assert [step for step, _ in files.complete_checkpoints(root)] == [2, 4, 6]

    for name in ("iter_0000004", "iter_0000006"):
        shutil.rmtree(root / name)
    (root / "latest").write_text("iter_0000002\n")
    runs.prepare(folder, attrs.evolve(spec, exit_interval=2))
    stopped = runs.launch(folder)
    assert stopped.code() == ExitCode.STOPPED_TO_RESUME, stopped.explain()
    assert "resume: continuing from step 2" in stopped.output
    assert "stopping after step 4: exit_interval 2 reached; checkpoint saved" in stopped.output
    assert (root / "latest").read_text() == "iter_0000004\n"
    assert files.inspect(root).manifest.step == 4
    assert runs.losses(folder) == {step: loss for step, loss in reference.items() if step <= 4}


def test_a_failing_background_write_stops_every_rank_and_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    """The writer of step 4 runs out of space: both ranks stop with exit 2 naming the folder; iter 2 stays latest."""
    folder = runs.prepare(tmp_path, attrs.evolve(DP2, iters=4, keep_last=1))
    result = runs.launch(folder, background_fault=(4, "disk_full", folder / "unused"))
    assert runs.failed_with(result, ExitCode.CHECKPOINT_ERROR), result.explain()
    partial = folder / "ckpt" / "iter_0000004.partial"
    assert (
        f"writing step 4 to {partial} in the background failed (rank 0: RuntimeError: Worker failure: "
        "[Errno 27] File too large; rank 1: RuntimeError: Worker failure: [Errno 27] File too large); "
        "the previous checkpoint (iter_0000002) is intact"
    ) in result.output
    assert "Traceback" not in result.output
    assert (folder / "ckpt" / "latest").read_text() == "iter_0000002\n"
    assert files.inspect(folder / "ckpt").manifest.step == 2
