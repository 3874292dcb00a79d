"""Early stops that every rank agrees on: SIGTERM/SIGINT, exit_interval, wall-clock limits.

A signal handler only records the signal; each rank votes its most urgent stop
code at the end of every step, inside the step's one all-reduce
(``step.train_step``), and all ranks act on the largest vote, so a signal
delivered to some ranks only (or a clock that crosses its limit on one rank
first) still stops all of them after the same step.
"""

from __future__ import annotations

import enum
import signal
from types import FrameType
from typing import Any

import attrs


class StopCode(enum.IntEnum):
    NONE = 0
    EXIT_INTERVAL = 1
    EXIT_DURATION = 2
    SIGINT = 3
    SIGTERM = 4


@attrs.define
class StopSignals:
    """Records SIGTERM/SIGINT while installed; restores the previous handlers on restore()."""

    received: StopCode = StopCode.NONE
    _previous: dict[int, Any] = attrs.field(factory=dict)

    @classmethod
    def install(cls) -> StopSignals:
        signals = cls()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signals._previous[signum] = signal.signal(signum, signals._handle)
        return signals

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        code = StopCode.SIGTERM if signum == signal.SIGTERM else StopCode.SIGINT
        self.received = max(self.received, code)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def describe(code: StopCode, *, exit_interval: int | None, exit_duration_minutes: float | None) -> str:
    return {
        StopCode.EXIT_INTERVAL: f"exit_interval {exit_interval} reached",
        StopCode.EXIT_DURATION: f"exit_duration_minutes {exit_duration_minutes} reached",
        StopCode.SIGINT: "received SIGINT",
        StopCode.SIGTERM: "received SIGTERM",
        StopCode.NONE: "",
    }[code]
