"""A run's claim on the files it writes: it never replaces another run's checkpoints or metrics.

The generated script calls :func:`claim_outputs` on every rank right after the
process group is up, before the model is built:

- a fresh start (``[checkpoint] resume = false``) over a checkpoint folder that
  already holds checkpoints is refused (exit WOULD_OVERWRITE), naming them and
  the three ways out; with ``overwrite = true`` they are deleted first, and the
  run says so;
- the metrics file is named after the spec by the compiler (specs that share a
  run name or an output folder write their own), and its first record names
  the spec that started it: a launch of another spec that would write into it
  is refused the same way.

:func:`write_last_exit` records how a launch ended (``<spec>.last_exit.json``), for
``bridgec launch`` and for job scripts that decide whether to launch again.

Rank 0 looks at the disk (the shared file system checkpoints need anyway) and
sends its verdict to every rank, so all of them stop, or go on, together.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import torch.distributed as dist

from bridgec.runtime import checkpoint_files as files
from bridgec.runtime.errors import ExitCode, RunEnd, RunError
from bridgec.runtime.parallel import collective_device

LAUNCH_RECORD = "launch"
"""``kind`` of the metrics record each launch writes first: the spec it runs and the step it starts at."""


def spec_identity(spec: Path, metrics: Path) -> str:
    """The spec as seen from the metrics file's folder: what tells two runs writing into one folder apart."""
    return Path(os.path.relpath(spec.resolve(), metrics.resolve().parent)).as_posix()


def launch_record(*, spec: Path, metrics: Path, spec_sha256: str, step: int) -> dict[str, object]:
    return {"kind": LAUNCH_RECORD, "spec": spec_identity(spec, metrics), "spec_sha256": spec_sha256, "step": step}


def claim_outputs(
    *, spec: Path, metrics: Path, checkpoint_dir: Path | None = None, resume: bool = False, overwrite: bool = False
) -> None:
    """Refuse (RunError WOULD_OVERWRITE on every rank) to start where this run would destroy another's files.

    ``spec`` is the spec file the script was compiled from, ``metrics`` the metrics
    file, ``checkpoint_dir`` the [checkpoint] dir (None without checkpoints).
    Collective: every rank calls it with the same arguments.
    """
    verdict: list[str | None] = [None]
    if dist.get_rank() == 0:
        verdict[0] = _metrics_problem(spec, metrics) or _checkpoint_problem(checkpoint_dir, resume, overwrite)
    dist.broadcast_object_list(verdict, src=0, device=collective_device())
    if verdict[0] is not None:
        raise RunError(ExitCode.WOULD_OVERWRITE, verdict[0], every_rank=True)


def _metrics_problem(spec: Path, metrics: Path) -> str | None:
    owner = _first_spec(metrics)
    mine = spec_identity(spec, metrics)
    if owner is None or owner == mine:
        return None
    return (
        f"{metrics} holds the metrics of another run (the spec {owner}, as seen from its folder); this spec "
        f"({mine}) would write into it. Nothing was changed. Set [run] output_dir to a folder of this run's own "
        "and recompile"
    )


def _first_spec(metrics: Path) -> str | None:
    """The spec named by the metrics file's first record (None: no file, or one written before launch records)."""
    try:
        with metrics.open(encoding="utf-8") as handle:
            record = json.loads(handle.readline())
    except (OSError, ValueError):
        return None
    if isinstance(record, dict) and record.get("kind") == LAUNCH_RECORD and isinstance(record.get("spec"), str):
        return record["spec"]
    return None


def _checkpoint_problem(directory: Path | None, resume: bool, overwrite: bool) -> str | None:
    if directory is None or resume:
        return None
    directory = directory.resolve()
    found = [path for _, path in files.complete_checkpoints(directory)]
    if not found:
        return None
    names = _names(found)
    if overwrite:
        for path in found:
            shutil.rmtree(path)
        (directory / files.POINTER).unlink(missing_ok=True)
        print(
            f"checkpoint: overwrite = true: deleted {len(found)} checkpoint(s) of an earlier run ({names}) "
            f"in {directory}",
            flush=True,
        )
        return None
    try:
        latest = files.find_latest(directory) or found[-1]
    except RunError:
        latest = found[-1]  # a damaged pointer: name the newest complete one
    step = int(latest.name.removeprefix("iter_"))
    return (
        f"{directory} holds {len(found)} checkpoint(s) ({names}; latest {latest.name}), and [checkpoint] resume = "
        f"false: starting fresh would overwrite them. Nothing was changed. Either set resume = true under "
        f"[checkpoint] to continue from step {step}, or give this run another [checkpoint] dir, or set overwrite = "
        f"true under [checkpoint] to delete them and start fresh; then recompile"
    )


def _names(paths: list[Path]) -> str:
    names = [path.name for path in paths]
    return ", ".join(names if len(names) <= 6 else [*names[:3], "...", *names[-2:]])


RUNNING = "running (if this stays, the launch was killed before it could record how it ended)"


def write_last_exit(path: Path, end: RunEnd | None) -> None:
    """Record how this launch ended (``end``), or that it is running (None); atomically, never half-written.

    ``{"code": 75, "reason": "...", "step": 120}``; a scheduler's job script reads it
    to launch again after a planned stop (75) and not after a failure.
    """
    record = (
        {"code": None, "reason": RUNNING, "step": None}
        if end is None
        else {"code": end.code, "reason": end.reason, "step": end.step}
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        files.write_atomic(path, json.dumps(record, indent=2) + "\n")
    except OSError as error:
        # The run itself is not at stake: say so and carry on (its exit code still tells what happened).
        print(f"bridgec: cannot write {path} ({error.strerror or error})", file=sys.stderr, flush=True)
