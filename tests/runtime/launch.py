"""Compile the checkpoint/fault test runs with bridgec, launch them under torchrun, and read what they leave behind.

The one place that knows how a test run is made, and it is made as a user makes
one: :func:`prepare` writes ``spec.toml`` (from a :class:`RunSpec`) and, when the
test injects a fault, the hooks file it names, then runs the real ``bridgec
compile`` into ``run.py``. Checkpoints go to ``folder/ckpt``, metrics to
``folder/out``. Launching again after :func:`prepare` with another RunSpec is a
user editing the spec and recompiling.

Every launch runs with a hang guard (a generous timeout that kills torchrun
and its workers), never a timing assertion. Worker output goes to per-rank log
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
import tomllib
from pathlib import Path
from typing import Any

import attrs
import psutil
import torch

from bridgec.compiler.cli import main as bridgec
from tests import warm

TORCHRUN = Path(sys.executable).parent / "torchrun"
HANG_GUARD_SECONDS = 300
SPEC = "spec.toml"
SCRIPT = "run.py"
HOOKS = "faults.py"
CALLBACKS = "callbacks.py"
PAUSED = "paused_run.py"
_FAILURE = re.compile(r"rank\s*:\s*(\d+) \(local_rank: \d+\)\s*\n\s*exitcode\s*:\s*(-?\d+)")


@attrs.frozen(kw_only=True)
class RunSpec:
    """What the checkpoint and fault tests vary; the rest of the spec is one tiny fixed run (see :meth:`toml`).

    2 layers, 4 heads, vocab 128, sequence 32, global batch 8 in microbatches
    of 2, adam with warmup and cosine decay, dropout 0.1 (so RNG state matters
    for an exact resume), evaluation on 2 batches.
    """

    procs: int = 1
    tensor: int = 1
    pipeline: int = 1
    distributed_optimizer: bool = False
    hidden_size: int = 64
    """Set another value to load a checkpoint of another shape."""
    iters: int = 6
    eval_interval: int | None = None
    exit_interval: int | None = None
    exit_duration_minutes: float | None = None
    on_nonfinite: str = "skip"
    timeout_minutes: float = 2.0
    save_interval: int | None = None
    keep_last: int | None = None
    resume: bool = False
    overwrite: bool | None = None
    async_save: bool | None = None
    hooks: str | None = None
    """Source of a hooks file defining a function named like ``hook``; the spec names it in [hooks]."""
    hook: str = "forward_step"
    """The [hooks] key (forward_step or loss) naming the hooks file's function of that name."""
    callbacks: str | None = None
    """Source of a callbacks file (written as callbacks.py); [hooks] callbacks lists ``callback_classes`` of it."""
    callback_classes: tuple[str, ...] = ()

    def toml(self) -> str:
        tables: dict[str, dict[str, Any]] = {
            "run": {"name": "ckpt", "output_dir": "out"},
            "launch": {"procs_per_node": self.procs, "timeout_minutes": self.timeout_minutes},
            "model": {
                "num_layers": 2, "hidden_size": self.hidden_size, "num_attention_heads": 4, "vocab_size": 128,
                # 128 is a multiple of 64 x tensor 2: the same (unpadded) embedding at TP 1 and TP 2.
                "make_vocab_size_divisible_by": 64, "seq_length": 32, "dropout": 0.1,
            },
            "parallel": {
                "tensor": self.tensor, "pipeline": self.pipeline, "distributed_optimizer": self.distributed_optimizer,
            },
            "batch": {"global_batch_size": 8, "micro_batch_size": 2},
            "train": {
                "iters": self.iters, "eval_interval": self.eval_interval,
                "eval_iters": 2 if self.eval_interval is not None else None,
                "exit_interval": self.exit_interval, "exit_duration_minutes": self.exit_duration_minutes,
                "on_nonfinite": self.on_nonfinite,
            },
            "optimizer": {"name": "adam", "lr": 1e-3, "min_lr": 1e-4},
            "scheduler": {"warmup_iters": 2, "decay": "cosine"},
            "checkpoint": {
                "dir": "ckpt", "save_interval": self.save_interval, "resume": self.resume, "keep_last": self.keep_last,
                "overwrite": self.overwrite, "async_save": self.async_save,
            },
            "hooks": {
                **({"file": HOOKS, self.hook: self.hook} if self.hooks is not None else {}),
                **({"callbacks": [f"{CALLBACKS}:{name}" for name in self.callback_classes]} if self.callbacks else {}),
            },
        }  # fmt: skip
        return "\n".join(_table(name, values) for name, values in tables.items() if values)


def _table(name: str, values: dict[str, Any]) -> str:
    # json.dumps spells booleans, numbers and plain strings as TOML does.
    lines = [f"{key} = {json.dumps(value)}" for key, value in values.items() if value is not None]
    return f"[{name}]\n" + "\n".join(lines) + "\n"


def prepare(folder: Path, spec: RunSpec) -> Path:
    """Write ``spec`` (and its hooks file) into ``folder`` and compile it to ``folder/run.py``; return ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SPEC).write_text(spec.toml(), encoding="utf-8")
    if spec.hooks is not None:
        (folder / HOOKS).write_text(spec.hooks, encoding="utf-8")
    if spec.callbacks is not None:
        (folder / CALLBACKS).write_text(spec.callbacks, encoding="utf-8")
    code = bridgec(["compile", str(folder / SPEC), "-o", str(folder / SCRIPT)])
    assert code == 0, f"bridgec compile {folder / SPEC} -o {folder / SCRIPT} exited {code}"
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


def command(folder: Path, script: str = SCRIPT) -> list[str]:
    """The script's own launch command (one node, the spec's procs_per_node), with per-rank log files."""
    procs = tomllib.loads((folder / SPEC).read_text(encoding="utf-8"))["launch"]["procs_per_node"]
    return [
        str(TORCHRUN), "--standalone", "--nproc-per-node", str(procs),
        "--log-dir", str(folder / "logs"), "--redirects", "3", script,
    ]  # fmt: skip


def environment(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


_PAUSED_RUN = '''"""Written by tests/runtime/launch.py: run {script} as torchrun would, but stop the save of step {step}
once every rank's tensors are written, before rank 0 publishes it; create {marker} and sleep (the test then
kills the job mid-save). Instruments bridgec's own DistCheckpointer._publish, in this process only."""

import runpy
import time
from pathlib import Path

from bridgec.runtime.checkpoint import DistCheckpointer


def main() -> None:
    publish = DistCheckpointer._publish

    def paused(self, progress, partial, final, *, has_state):
        if progress.step == {step}:
            Path({marker!r}).touch()
            time.sleep(3600)
        return publish(self, progress, partial, final, has_state=has_state)

    DistCheckpointer._publish = paused
    runpy.run_path({script!r}, run_name="__main__")


if __name__ == "__main__":
    main()
'''


_BACKGROUND_FAULT = '''"""Written by tests/runtime/launch.py: run {script} as torchrun would, but make the background writer of
step {step}'s save (the process megatron-core forks for an async save) {what}. Instruments the request
bridgec's DistCheckpointer gets from dist_checkpointing.save, in this process only."""

import resource
import runpy
import signal
import time
from pathlib import Path

from bridgec.runtime import checkpoint


def pause_after_writing(write, *args, **kwargs):
    write(*args, **kwargs)
    Path({marker!r}).touch()
    time.sleep(3600)


def fill_the_disk(write, *args, **kwargs):
    # A folder that is full after 1 KiB: a larger write fails with EFBIG (SIGXFSZ ignored, as a full disk would not kill).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))
    write(*args, **kwargs)


def main() -> None:
    save = checkpoint.dist_checkpointing.save

    def instrumented(state, directory, **options):
        request = save(state, directory, **options)
        if request is not None and directory.endswith("{name}.partial"):
            write = request.async_fn
            request = request._replace(async_fn=lambda *args, **kwargs: {fault}(write, *args, **kwargs))
        return request

    checkpoint.dist_checkpointing.save = instrumented
    runpy.run_path({script!r}, run_name="__main__")


if __name__ == "__main__":
    main()
'''

BACKGROUND_FAULTS = {
    "pause": ("pause_after_writing", "write its files, then create the marker and sleep (the test kills the job)"),
    "disk_full": ("fill_the_disk", "write into a size-limited folder (RLIMIT_FSIZE 1 KiB): the write fails"),
}


def background_fault_script(folder: Path, step: int, fault: str, marker: Path) -> str:
    """Write the wrapper that breaks the background write of ``step`` (see _BACKGROUND_FAULT); return its name."""
    function, what = BACKGROUND_FAULTS[fault]
    text = _BACKGROUND_FAULT.format(
        script=str(folder / SCRIPT), step=step, name=f"iter_{step:07d}", fault=function, what=what, marker=str(marker)
    )
    (folder / PAUSED).write_text(text, encoding="utf-8")
    return PAUSED


def paused_script(folder: Path, step: int, marker: Path) -> str:
    """Write the wrapper that pauses the save of ``step`` (see _PAUSED_RUN); return its name in ``folder``."""
    text = _PAUSED_RUN.format(script=str(folder / SCRIPT), step=step, marker=str(marker))
    (folder / PAUSED).write_text(text, encoding="utf-8")
    return PAUSED


def launch(
    folder: Path,
    *,
    pause_save: tuple[int, Path] | None = None,
    background_fault: tuple[int, str, Path] | None = None,
) -> Launch:
    """Run the script compiled in ``folder``; wait for it to end. See :func:`start` for the faults.

    The ranks are forked from the session's warm launcher (tests/warm.py), which stops the others once one
    fails, as torchrun does; BRIDGEC_TEST_LAUNCHER=torchrun runs torchrun itself. A launch that a test kills
    goes through :func:`start` (always torchrun).
    """
    if warm.enabled():
        return _warm_launch(folder, pause_save=pause_save, background_fault=background_fault)
    process = start(folder, pause_save=pause_save, background_fault=background_fault)
    try:
        output, _ = process.communicate(timeout=HANG_GUARD_SECONDS)
    except subprocess.TimeoutExpired:
        kill(process)
        raise AssertionError(f"hang guard: {folder} still running after {HANG_GUARD_SECONDS} s") from None
    return finished(folder, process.returncode, output)


def _warm_launch(
    folder: Path, *, pause_save: tuple[int, Path] | None, background_fault: tuple[int, str, Path] | None
) -> Launch:
    shutil.rmtree(folder / "logs", ignore_errors=True)
    script = _script(folder, pause_save, background_fault)
    procs = tomllib.loads((folder / SPEC).read_text(encoding="utf-8"))["launch"]["procs_per_node"]
    ran = warm.run(procs, cwd=folder, log_dir=folder / "logs", script=folder / script, env={}, guard=HANG_GUARD_SECONDS)
    assert not ran.hung, f"hang guard: {folder} still running after {HANG_GUARD_SECONDS} s"
    # As torchrun's failure report: only the ranks that did not exit 0.
    failed = {rank: code for rank, code in ran.codes.items() if code != 0}
    summary = f"warm launcher (tests/warm.py): exit codes {ran.codes}"
    return Launch(
        folder=folder, returncode=ran.returncode, exit_codes=failed, launcher_output=summary, workers=ran.outputs
    )


def _script(folder: Path, pause_save: tuple[int, Path] | None, background_fault: tuple[int, str, Path] | None) -> str:
    if pause_save is not None:
        return paused_script(folder, *pause_save)
    if background_fault is not None:
        return background_fault_script(folder, *background_fault)
    return SCRIPT


def start(
    folder: Path,
    *,
    pause_save: tuple[int, Path] | None = None,
    background_fault: tuple[int, str, Path] | None = None,
) -> subprocess.Popen[str]:
    """Start a launch and return at once (:func:`kill` ends it, workers included).

    ``pause_save=(step, marker)``: the save of ``step`` stops once its tensors are
    written, before it is published, and creates ``marker``: torchrun starts a
    wrapper (:func:`paused_script`) that instruments bridgec's save and runs the script.
    ``background_fault=(step, fault, marker)``: with async_save, the background
    writer of ``step``'s save pauses or fails (:data:`BACKGROUND_FAULTS`).
    """
    shutil.rmtree(folder / "logs", ignore_errors=True)
    script = _script(folder, pause_save, background_fault)
    return subprocess.Popen(
        command(folder, script), cwd=folder, env=environment({}), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


def kill(process: subprocess.Popen[str]) -> None:
    """SIGKILL torchrun and every worker: a machine that loses power.

    torchrun starts each worker in a session of its own (torch's
    SubprocessHandler passes start_new_session=True), so killing torchrun's
    process group would leave the workers running; they are found as its
    children first, and torchrun dies before it can react to a dead worker.
    """
    try:
        launcher = psutil.Process(process.pid)
        targets = [launcher, *launcher.children(recursive=True)]
    except psutil.NoSuchProcess:
        targets = []
    for target in targets:
        try:
            target.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(targets[1:], timeout=30)
    assert not alive, f"workers {[worker.pid for worker in alive]} survived SIGKILL"
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
        workers[rank] = (
            stdout.read_text(errors="replace") if stdout.exists() else "",
            stderr.read_text(errors="replace"),
        )
    codes = {int(rank): int(code) for rank, code in _FAILURE.findall(output)}
    return Launch(folder=folder, returncode=returncode, exit_codes=codes, launcher_output=output, workers=workers)


def failed_with(result: Launch, code: int) -> bool:
    """Every worker exited with ``code``, or was stopped by torchrun (SIGTERM) after one did."""
    codes = set(result.exit_codes.values())
    return code in codes and codes <= {code, -signal.SIGTERM}


def metrics(folder: Path) -> list[dict[str, Any]]:
    path = folder / "out" / "spec.metrics.jsonl"
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
