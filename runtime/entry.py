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

    A RunError every rank raised alike (``every_rank``) is printed once, by rank 0.

    A failed collective (a peer died, or the distributed timeout expired) exits
    with PEER_FAILED and says so, instead of a wall of stack frames.
    """
    try:
        code = main()
    except RunError as error:
        _ignore_stop_signals()
        if not error.every_rank:
            print(f"bridgec [rank {_rank()}]: {error.message}", file=sys.stderr, flush=True)
        elif _rank() == "0":
            print(f"bridgec: {error.message}", file=sys.stderr, flush=True)
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
