"""The generated script's entry point: run main(), turn known failures into messages and exit codes."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import NoReturn

import torch.distributed as dist

from bridgec.runtime.errors import ExitCode, RunError


def _rank() -> str:
    return os.environ.get("RANK", "0")


def run(main: Callable[[], ExitCode]) -> NoReturn:
    """Call ``main`` and exit with its code; a RunError prints its message (no traceback) and exits with its code.

    A failed collective (a peer died, or the distributed timeout expired) exits
    with PEER_FAILED and says so, instead of a wall of stack frames.
    """
    try:
        code = main()
    except RunError as error:
        print(f"bridgec [rank {_rank()}]: {error.message}", file=sys.stderr, flush=True)
        code = error.code
    except dist.DistBackendError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(
            f"bridgec [rank {_rank()}]: a collective failed ({first_line}); another rank probably died "
            "or the [launch] timeout_minutes expired",
            file=sys.stderr,
            flush=True,
        )
        code = ExitCode.PEER_FAILED
    finally:
        _shutdown()
    sys.exit(int(code))


def _shutdown() -> None:
    from bridgec.runtime.parallel import shutdown

    try:
        shutdown()
    except Exception:  # noqa: BLE001 - best effort on the way out; the exit code already says what happened
        pass
