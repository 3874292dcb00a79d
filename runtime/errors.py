"""Exit codes of a generated training script, and the error that carries one.

A generated script never shows a traceback for a problem the user can fix:
the runtime raises :class:`RunError` with a message and one of these codes,
and the script's entry point prints the message on stderr (every rank, prefixed
with the rank) and exits with the code. The codes are documented in the README.

Under torchrun these are the *workers'* exit codes: torchrun itself exits 1 when
any worker fails. ``bridgec launch`` runs torchrun and exits with the workers'
code; the script also records how each launch ended in ``OUTPUT_DIR/<spec>.last_exit.json``
(:class:`RunEnd`, written by ``entry.run``).
"""

from __future__ import annotations

import enum

import attrs


class ExitCode(enum.IntEnum):
    OK = 0
    """All iterations ran."""
    LAUNCH_MISMATCH = 4
    """torchrun started a different number of processes than the script was compiled for."""
    DATA_ERROR = 5
    """A data file is missing, empty or unreadable."""
    CHECKPOINT_ERROR = 6
    """A checkpoint does not match this run or is damaged; nothing was loaded."""
    NONFINITE_STOP = 7
    """A non-finite loss or gradient with on_nonfinite = "stop"; the last good state was saved."""
    PEER_FAILED = 8
    """Another rank died or a collective timed out."""
    HOOKS_ERROR = 9
    """The hooks file named in the spec is missing, fails to import, or lost the hook function, or a hook raised."""
    WOULD_OVERWRITE = 10
    """Starting would replace another run's files: checkpoints with resume = false, or another spec's metrics."""
    VERSION_MISMATCH = 11
    """The installed bridgec runtime is not the version that generated the script; regenerate it."""
    STOPPED_TO_RESUME = 75
    """Stopped early on purpose (SIGTERM/SIGINT, exit_interval, exit_duration_minutes) after a checkpoint; launch again to resume."""


class RunError(Exception):
    """A problem the user can act on; the message says what and how."""

    def __init__(self, code: ExitCode, message: str, *, every_rank: bool = False, step: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.every_rank = every_rank
        """Every rank raises this same error (a decision they agreed on): it is printed once, by rank 0."""
        self.step = step
        """The last step training completed before the error; None when it happened before training."""

    def at_step(self, step: int) -> RunError:
        """This error with the step it happened after (unless it names one already)."""
        if self.step is not None:
            return self
        return RunError(self.code, self.message, every_rank=self.every_rank, step=step)


@attrs.frozen(kw_only=True)
class RunEnd:
    """How a launch ended: what ``last_exit.json`` records and the script exits with."""

    code: int
    """An :class:`ExitCode`, or 1 for a crash (an uncaught exception)."""
    reason: str
    """In words: "all 40 steps ran", the stop's reason, or the error's message."""
    step: int | None
    """The last step training completed; None when the launch ended before training began."""
