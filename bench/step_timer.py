"""Run a training script with timers on the phases of each step; both sides of the overhead benchmark run under it.

    torchrun --nproc-per-node N bench/step_timer.py OUT.json SCRIPT [ARGS ...]

Before SCRIPT runs (as ``__main__``, in this process), megatron-core's
``forward_backward_no_pipelining`` (what ``get_forward_backward_func`` returns
without a pipeline) and ``ChainedOptimizer``'s ``prepare_grads``,
``get_grad_norm`` and ``step_with_ready_grads`` are wrapped with
``time.perf_counter`` timers. ``ChainedOptimizer.step()`` (what a hand-written
loop calls) runs those three itself, and bridgec's runtime calls them one by
one, so the same timers see the same work on both sides, and neither script
knows it is measured. This wrapping is the benchmark's own instrument; nothing
in bridgec does it.

A step starts when its training forward/backward starts (forward-only
evaluation is not counted), so a step's time is the whole loop iteration: data
is read inside forward/backward, everything else the loop does (zeroing
gradients, clipping, the schedule, the loss all-reduce, logging) is the host
time outside forward/backward and the optimizer step. Rank 0 writes OUT.json:
the start of each step (wall clock, and this process's CPU time: on a shared
machine the CPU seconds a step costs move far less than its wall time), its
forward/backward and optimizer seconds, the
parameter count and the batch shape (so the benchmark can check that both sides
do the same work).
"""

from __future__ import annotations

import functools
import json
import os
import runpy
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from megatron.core.optimizer.optimizer import ChainedOptimizer
from megatron.core.pipeline_parallel import schedules

starts: list[float] = []
cpu_starts: list[float] = []
forward_backward_seconds: list[float] = []
optimizer_seconds: list[float] = []
facts: dict[str, Any] = {}


def _timed_forward_backward(inner: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(inner)
    def timed(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("forward_only"):
            return inner(*args, **kwargs)
        began = time.perf_counter()
        if not starts:
            facts["parameters"] = sum(p.numel() for chunk in kwargs["model"] for p in chunk.parameters())
            facts["batch"] = {key: kwargs[key] for key in ("num_microbatches", "micro_batch_size", "seq_length")}
        starts.append(began)
        cpu_starts.append(time.process_time())
        optimizer_seconds.append(0.0)
        result = inner(*args, **kwargs)
        forward_backward_seconds.append(time.perf_counter() - began)
        return result

    return timed


def _timed_optimizer(inner: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(inner)
    def timed(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        result = inner(*args, **kwargs)
        if optimizer_seconds:
            optimizer_seconds[-1] += time.perf_counter() - began
        return result

    return timed


def main() -> None:
    out, script, *args = sys.argv[1:]
    schedules.forward_backward_no_pipelining = _timed_forward_backward(schedules.forward_backward_no_pipelining)
    for name in ("prepare_grads", "get_grad_norm", "step_with_ready_grads"):
        setattr(ChainedOptimizer, name, _timed_optimizer(getattr(ChainedOptimizer, name)))
    sys.argv = [script, *args]
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        if os.environ.get("RANK", "0") == "0":
            Path(out).write_text(
                json.dumps(
                    {
                        "starts": starts,
                        "cpu_starts": cpu_starts,
                        "forward_backward": forward_backward_seconds,
                        "optimizer": optimizer_seconds,
                        **facts,
                    }
                )
            )


if __name__ == "__main__":
    main()
