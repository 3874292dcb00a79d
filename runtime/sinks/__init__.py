"""Metrics sinks: where the logging rank sends each step's scalars besides the console and the JSON-lines file.

A sink is one module here (``tensorboard``, ``wandb``, ``mlflow``) with a class
that has ``name``, ``open(context)``, ``write(step, scalars)`` and ``close()``
(torchtitan's BaseLogger). The generated script lists the sinks its spec's
[logging] names and passes them to ``loop.train``, which opens them on the
logging rank only. :class:`SinkSet` (torchtitan's LoggerContainer) guards each:
a sink that raises (a read-only folder, a server that went away) is disabled
with one warning and training goes on; the JSON-lines file, written by
``runtime.metrics`` before any sink, keeps every record.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

import attrs


@attrs.frozen(kw_only=True)
class SinkContext:
    """What a sink may name its run after and where it may write."""

    run_name: str
    output_dir: Path
    """The run's output folder (where the metrics file is)."""
    config: Mapping[str, Any]
    """The spec's settings as flat ``table.key`` -> value, for a tracker's run configuration / parameters."""


class Sink(Protocol):
    name: str

    def open(self, context: SinkContext) -> None: ...

    def write(self, step: int, scalars: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


@attrs.define
class SinkSet:
    """The configured sinks, each disabled at its first failure (one warning on ``stream``), never stopping a run."""

    sinks: Sequence[Sink] = ()
    stream: IO[str] = sys.stderr
    live: list[Sink] = attrs.Factory(list)

    def open(self, context: SinkContext) -> None:
        self.live = []
        for sink in self.sinks:
            if self._guarded(sink, "opening", lambda sink=sink: sink.open(context)):
                self.live.append(sink)

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        for sink in list(self.live):
            if not self._guarded(sink, f"writing step {step}", lambda sink=sink: sink.write(step, scalars)):
                self.live.remove(sink)
                self._close_quietly(sink)

    def close(self) -> None:
        for sink in self.live:
            self._guarded(sink, "closing", sink.close)
        self.live = []

    def _guarded(self, sink: Sink, action: str, call: Callable[[], None]) -> bool:
        try:
            call()
        except Exception as error:  # any failure of a tracker must not stop training
            print(
                f"bridgec: warning: the {sink.name} sink failed {action} ({type(error).__name__}: "
                f"{_first_line(error)}); it is disabled for the rest of this launch, the metrics file keeps every record",
                file=self.stream,
                flush=True,
            )
            return False
        return True

    @staticmethod
    def _close_quietly(sink: Sink) -> None:
        try:
            sink.close()
        except Exception:  # already warned about this sink; its close may fail the same way
            pass


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no message"
