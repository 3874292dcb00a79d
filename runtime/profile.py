"""[profile]: the PyTorch profiler over a step range on chosen ranks, CUDA memory snapshots, NVTX ranges.

The loop calls :meth:`StepProfiler.before` and :meth:`StepProfiler.after`
around every step; only the listed ranks, and only from ``start_step`` to
``end_step``, do anything. The trace is written with torch's
``tensorboard_trace_handler``: a Chrome-trace JSON per rank, named and placed so
that TensorBoard's profiler plugin finds it too. The phases of a step carry the
ranges ``forward-backward`` and ``optimizer`` (``runtime.step``), which the
trace shows; with NVTX they are NVTX ranges as well, for nsys.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import torch
from megatron.core.utils import configure_nvtx_profiling


@attrs.frozen(kw_only=True)
class ProfileSettings:
    start_step: int
    end_step: int
    ranks: tuple[int, ...]
    dir: Path
    memory_snapshot: bool = False
    nvtx: bool = False


@contextlib.contextmanager
def phase(name: str, *, nvtx: bool) -> Iterator[None]:
    """A named range in the profiler's trace (and in nsys's with ``nvtx``); next to nothing when neither records."""
    with torch.profiler.record_function(name):
        if nvtx:
            torch.cuda.nvtx.range_push(name)
        try:
            yield
        finally:
            if nvtx:
                torch.cuda.nvtx.range_pop()


@attrs.define
class StepProfiler:
    """Profiles steps ``start_step``..``end_step`` on ``settings.ranks``; inert on the other ranks and steps."""

    settings: ProfileSettings | None
    rank: int
    device: torch.device
    _profiler: Any = None

    @property
    def nvtx(self) -> bool:
        return self.settings is not None and self.settings.nvtx

    def start(self) -> None:
        if self.nvtx:
            configure_nvtx_profiling(True)  # megatron-core's own ranges in its pipeline schedules

    def _mine(self) -> bool:
        return self.settings is not None and self.rank in self.settings.ranks

    def before(self, step: int) -> None:
        """Called before step ``step`` (1-based) runs."""
        s = self.settings
        if not self._mine() or s is None or step != s.start_step:
            return
        s.dir.mkdir(parents=True, exist_ok=True)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        if s.memory_snapshot:
            torch.cuda.memory._record_memory_history(max_entries=100_000)
        self._profiler = torch.profiler.profile(
            activities=activities,
            record_shapes=True,
            on_trace_ready=torch.profiler.tensorboard_trace_handler(str(s.dir), worker_name=f"rank{self.rank}"),
        )
        self._profiler.start()

    def after(self, step: int) -> None:
        """Called after step ``step`` ran: the last profiled step writes the trace (and the memory snapshot)."""
        s = self.settings
        if self._profiler is None or s is None or step < s.end_step:
            return
        self.stop()

    def stop(self) -> None:
        """Write what was recorded (also when the run stops inside the range)."""
        if self._profiler is None or self.settings is None:
            return
        profiler, self._profiler = self._profiler, None
        profiler.stop()
        if self.settings.memory_snapshot:
            path = self.settings.dir / f"memory_rank{self.rank}.pickle"
            torch.cuda.memory._dump_snapshot(str(path))
            torch.cuda.memory._record_memory_history(enabled=None)
        print(f"bridgec: profile of rank {self.rank} written to {self.settings.dir}", file=sys.stderr, flush=True)
