"""The TensorBoard sink: every scalar as an event (``pip install bridgec[tensorboard]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from bridgec.runtime.sinks import Records, SinkContext


@attrs.define
class TensorBoardSink:
    """Writes event files into ``dir`` (torch's SummaryWriter), flushed after each batch so a crash loses little."""

    dir: Path
    name: str = "tensorboard"
    _writer: Any = None

    def open(self, context: SinkContext) -> None:
        from torch.utils.tensorboard import SummaryWriter  # the optional package, imported only when asked for

        self._writer = SummaryWriter(log_dir=str(self.dir))

    def write(self, records: Records) -> None:
        for step, scalars in records:
            for key, value in scalars.items():
                self._writer.add_scalar(key, value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
