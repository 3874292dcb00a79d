"""Metrics sinks: where the logging rank sends each step's scalars besides the console and the JSON-lines file.

A sink is one module here (``tensorboard``, ``wandb``, ``mlflow``) with a class
that has ``name``, ``open(context)``, ``write(records)`` and ``close()``
(torchtitan's BaseLogger). The generated script lists the sinks its spec's
[logging] names and passes them to ``loop.train``, which opens them on the
logging rank only. :class:`SinkSet` (torchtitan's LoggerContainer) guards each:
a sink that raises (a read-only folder, a server that went away) is disabled
with one warning and training goes on; the JSON-lines file, written by
``runtime.metrics`` before any sink, keeps every record.

Sinks are opened in the training thread (a failure to start shows at once) but
written by one background thread: a step only queues its scalars. The thread
writes what arrived over :data:`WRITE_EVERY_SECONDS` in one batch: measured on
this project's CPU machine, an MLflow sqlite write of one step's ~20 scalars
costs 6.4 ms of CPU and 1.6 ms per step in batches of ten; W&B 1.5 against 0.4 ms;
a TensorBoard write 0.6 ms (bench/logging_bench.py measures the whole).
"""

from __future__ import annotations

import functools
import queue
import sys
import threading
import time
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


WRITE_EVERY_SECONDS = 5.0
"""How long the writer thread gathers records before writing them (dashboards lag by at most this)."""

Records = Sequence[tuple[int, Mapping[str, float]]]
"""(step, scalars) pairs in step order."""


class Sink(Protocol):
    name: str

    def open(self, context: SinkContext) -> None: ...

    def write(self, records: Records) -> None: ...

    def close(self) -> None: ...


@attrs.define
class SinkSet:
    """The configured sinks, each disabled at its first failure (one warning on ``stream``), never stopping a run."""

    sinks: Sequence[Sink] = ()
    stream: IO[str] = sys.stderr
    live: list[Sink] = attrs.Factory(list)
    _queue: queue.SimpleQueue[tuple[int, Mapping[str, float]] | None] = attrs.Factory(queue.SimpleQueue)
    """Steps' scalars for the writer thread; None tells it to stop."""
    _writer: threading.Thread | None = None

    def open(self, context: SinkContext) -> None:
        self.live = [
            sink for sink in self.sinks if self._guarded(sink, "opening", functools.partial(sink.open, context))
        ]
        if self.live:
            self._writer = threading.Thread(target=self._write_queued, name="bridgec-sinks", daemon=True)
            self._writer.start()

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        """Queue a step's scalars for the sinks (returns at once)."""
        if self._writer is not None:
            self._queue.put((step, dict(scalars)))

    def close(self) -> None:
        """Write what is queued, then close every sink still working."""
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
            self._writer = None
        for sink in self.live:
            self._guarded(sink, "closing", sink.close)
        self.live = []

    def _write_queued(self) -> None:
        """The background thread: write what arrives over WRITE_EVERY_SECONDS at once, until close() says stop."""
        while True:
            batch = [self._queue.get()]
            deadline = time.monotonic() + WRITE_EVERY_SECONDS
            while batch[-1] is not None and (left := deadline - time.monotonic()) > 0:
                try:
                    batch.append(self._queue.get(timeout=left))
                except queue.Empty:
                    break
            records = [item for item in batch if item is not None]
            if records:
                steps = f"step {records[0][0]}" + (f"-{records[-1][0]}" if len(records) > 1 else "")
                for sink in list(self.live):
                    if not self._guarded(sink, f"writing {steps}", functools.partial(sink.write, records)):
                        self.live.remove(sink)
                        self._close_quietly(sink)
            if len(records) < len(batch):
                return

    def _guarded(self, sink: Sink, action: str, call: Callable[[], None]) -> bool:
        try:
            call()
        except Exception as error:  # any failure of a tracker must not stop training
            print(
                f"bridgec: warning: the {sink.name} sink failed {action} ({_describe(error)}); it is disabled for "
                "the rest of this launch, the metrics file keeps every record",
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


def _describe(error: BaseException) -> str:
    """``Type: first line``, and the root cause's too: a tracker's own exception often wraps the useful one."""
    root = error
    while (inner := root.__cause__ or root.__context__) is not None:
        root = inner
    described = f"{type(error).__name__}: {_first_line(error)}"
    if root is not error:
        described += f"; caused by {type(root).__name__}: {_first_line(root)}"
    return described
