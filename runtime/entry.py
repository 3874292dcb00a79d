"""The generated script's entry point: run main(), turn known failures into messages and exit codes."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import torch.distributed as dist

from bridgec.runtime.errors import ExitCode, RunEnd, RunError
from bridgec.runtime.outputs import write_last_exit

CRASHED = 1
"""Python's own exit status for an uncaught exception (its traceback says what happened)."""

PEER_FAILURE_MARKERS = (
    "gloo/transport",
    "Connection closed by peer",
    "Connection reset by peer",
    "Timed out waiting",
    "NCCL communicator was aborted",
    "Watchdog caught collective operation timeout",
)
"""Texts of the plain RuntimeErrors torch raises when a collective loses a peer or times out.

torch 2.13's gloo backend raises RuntimeError (not DistBackendError) for a
peer that died ("Connection reset by peer") or a collective that timed out.
"""


def _rank() -> str:
    return os.environ.get("RANK", "0")


def peer_failure(error: BaseException) -> bool:
    """Whether ``error`` is a collective that failed because another rank died or the timeout expired."""
    if isinstance(error, dist.DistError):
        return True
    return isinstance(error, RuntimeError) and any(marker in str(error) for marker in PEER_FAILURE_MARKERS)


def peer_failure_message(error: BaseException) -> str:
    """What to say about a collective that lost a peer (see :func:`peer_failure`)."""
    text = str(error).strip()
    first_line = text.splitlines()[0] if text else type(error).__name__
    return f"a collective failed ({first_line}); another rank probably died or the [launch] timeout_minutes expired"


def run(main: Callable[[], ExitCode | RunEnd], *, last_exit: Path | None = None) -> NoReturn:
    """Call ``main`` and exit with its code; a RunError prints its message (no traceback) and exits with its code.

    A RunError every rank raised alike (``every_rank``) is printed once, by rank 0.
    A failed collective (a peer died, or the distributed timeout expired) exits
    with PEER_FAILED and says so, instead of a wall of stack frames. With
    ``last_exit``, rank 0 records how the launch ended there (code, reason,
    step; ``{"code": null}`` while it runs, so a launch that was killed is not
    mistaken for the previous one). The process ends when its launcher does
    (:func:`exit_with_launcher`).
    """
    exit_with_launcher()
    report = last_exit if last_exit is not None and _rank() == "0" else None
    if report is not None:
        write_last_exit(report, None)
    try:
        ended = main()
        end = ended if isinstance(ended, RunEnd) else RunEnd(code=ended, reason=ended.name.lower(), step=None)
    except RunError as error:
        _ignore_stop_signals()
        if not error.every_rank:
            print(f"bridgec [rank {_rank()}]: {error.message}", file=sys.stderr, flush=True)
        elif _rank() == "0":
            print(f"bridgec: {error.message}", file=sys.stderr, flush=True)
        end = RunEnd(code=error.code, reason=error.message, step=error.step)
    except RuntimeError as error:
        if not peer_failure(error):
            _record_crash(report, error)
            raise
        _ignore_stop_signals()
        message = peer_failure_message(error)
        print(f"bridgec [rank {_rank()}]: {message}", file=sys.stderr, flush=True)
        end = RunEnd(code=ExitCode.PEER_FAILED, reason=message, step=None)
    except BaseException as error:
        _record_crash(report, error)
        raise
    finally:
        _ignore_stop_signals()
        _shutdown()
    if report is not None:
        write_last_exit(report, end)
    sys.exit(int(end.code))


def _record_crash(report: Path | None, error: BaseException) -> None:
    """An error bridgec has no message for (a bug): Python prints its traceback; the record says exit 1."""
    if report is not None:
        text = str(error).strip().splitlines()
        reason = f"crashed: {type(error).__name__}" + (f": {text[0]}" if text else "") + " (traceback on stderr)"
        write_last_exit(report, RunEnd(code=CRASHED, reason=reason, step=None))


PR_SET_PDEATHSIG = 1
"""linux/prctl.h: the signal this process gets when the thread that started it exits."""


def exit_with_launcher() -> None:
    """Have Linux SIGKILL this process when its launcher (torchrun's agent) exits, on Linux; elsewhere nothing.

    torchrun stops its workers when it ends normally or on SIGTERM/SIGINT, but
    killed with SIGKILL (a scheduler's hard kill, the OOM killer, ``timeout -s
    KILL``) it cannot, and a worker stuck in a loop or a collective would run on
    alone at full CPU. Without its agent the run's outcome can no longer be
    reported, and checkpoints are atomic, so the worker ends at once.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    launcher = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        return  # not allowed here (a sandbox): the launcher's own stop is all there is
    if os.getppid() != launcher:  # the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)


def _ignore_stop_signals() -> None:
    # On the way out already: torchrun's SIGTERM to the survivors of a dead rank
    # must not turn the exit code and message just decided into a signal death.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)


def _shutdown() -> None:
    from bridgec.runtime.parallel import shutdown

    try:
        shutdown()
    except Exception:  # noqa: BLE001 - best effort on the way out; the exit code already says what happened
        pass
