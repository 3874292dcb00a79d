"""The generated script's entry point: run main(), turn known failures into messages and exit codes."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import NoReturn

import torch.distributed as dist

from bridgec.runtime.errors import ExitCode, RunError

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


def run(main: Callable[[], ExitCode]) -> NoReturn:
    """Call ``main`` and exit with its code; a RunError prints its message (no traceback) and exits with its code.

    A failed collective (a peer died, or the distributed timeout expired) exits
    with PEER_FAILED and says so, instead of a wall of stack frames. The
    process ends when its launcher does (:func:`exit_with_launcher`).
    """
    exit_with_launcher()
    try:
        code = main()
    except RunError as error:
        _ignore_stop_signals()
        print(f"bridgec [rank {_rank()}]: {error.message}", file=sys.stderr, flush=True)
        code = error.code
    except RuntimeError as error:
        if not peer_failure(error):
            raise
        _ignore_stop_signals()
        text = str(error).strip()
        first_line = text.splitlines()[0] if text else type(error).__name__
        print(
            f"bridgec [rank {_rank()}]: a collective failed ({first_line}); another rank probably died "
            "or the [launch] timeout_minutes expired",
            file=sys.stderr,
            flush=True,
        )
        code = ExitCode.PEER_FAILED
    finally:
        _ignore_stop_signals()
        _shutdown()
    sys.exit(int(code))


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
