"""The training loop: steps, logging, evaluation, and (when asked) checkpoints and early stops."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import attrs
from megatron.core.distributed import DistributedDataParallel
from megatron.core.optimizer.optimizer import ChainedOptimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from bridgec.runtime.data import MicrobatchIterator, Splits
from bridgec.runtime.errors import ExitCode, RunError
from bridgec.runtime.metrics import MetricsLog
from bridgec.runtime.parallel import Layout
from bridgec.runtime.stop import StopCode, StopSignals, agree, describe
from bridgec.runtime.step import evaluate, train_step


@attrs.frozen(kw_only=True)
class TrainState:
    """What a forward_step may know about where training is (Megatron Bridge's ``state`` argument)."""

    step: int
    """Steps completed before this one."""
    consumed_samples: int
    """Training samples consumed before this step, over all data-parallel ranks."""
    layout: Layout


UserForwardStep = Callable[..., Any]
"""(state, data_iterator, model, return_schedule_plan=False) -> (output, loss_func)."""


@attrs.frozen(kw_only=True)
class LoopSettings:
    iters: int
    log_interval: int
    eval_interval: int | None
    eval_iters: int
    global_batch_size: int
    micro_batch_size: int
    num_microbatches: int
    seq_length: int
    clip_grad: float
    clip_epsilon: float
    on_nonfinite: str
    exit_interval: int | None
    exit_duration_minutes: float | None
    save_interval: int | None
    metrics_path: Path


class Checkpointer(Protocol):
    """Saves and restores the whole training state (see bridgec.runtime.checkpoint)."""

    def load_latest(self) -> tuple[int, int] | None:
        """Restore the newest complete checkpoint; return (step, consumed_samples), or None if there is none."""

    def save(self, *, step: int, consumed_samples: int) -> None:
        """Write a complete checkpoint of step ``step`` (atomically)."""


def _iterators(splits_dataset: Any, layout: Layout, settings: LoopSettings, consumed: int) -> list[Iterator[Any] | None]:
    if splits_dataset is None or not (layout.is_first_stage or layout.is_last_stage):
        return [None] * layout.num_chunks
    return [
        MicrobatchIterator(
            splits_dataset,
            micro_batch_size=settings.micro_batch_size,
            data_parallel_size=layout.data,
            data_rank=layout.data_rank,
            consumed=consumed,
        )
        for _ in range(layout.num_chunks)
    ]


def train(
    forward_step: UserForwardStep,
    *,
    model: list[DistributedDataParallel],
    optimizer: ChainedOptimizer,
    scheduler: OptimizerParamScheduler,
    splits: Splits,
    layout: Layout,
    settings: LoopSettings,
    checkpointer: Checkpointer | None = None,
    resume: bool = False,
) -> ExitCode:
    """Run steps until ``settings.iters``, an early stop, or a non-finite stop; return the exit code."""
    log = MetricsLog(
        path=settings.metrics_path,
        enabled=layout.holds_loss,
        log_interval=settings.log_interval,
        total_iters=settings.iters,
    )
    start_step, consumed = 0, 0
    if checkpointer is not None and resume:
        restored = checkpointer.load_latest()
        if restored is None:
            log.message("resume: no checkpoint found, starting fresh")
        else:
            start_step, consumed = restored
            log.message(f"resume: continuing from step {start_step} ({consumed} samples consumed)")
    log.open(resume=start_step > 0)
    train_iterators = _iterators(splits.train, layout, settings, consumed)
    signals = StopSignals.install()
    started = time.monotonic()
    tokens_per_step = settings.global_batch_size * settings.seq_length
    step = start_step
    try:
        while step < settings.iters:
            state = TrainState(step=step, consumed_samples=consumed, layout=layout)
            began = time.perf_counter()
            result = train_step(
                functools.partial(forward_step, state),
                train_iterators,
                model,
                optimizer,
                scheduler,
                num_microbatches=settings.num_microbatches,
                micro_batch_size=settings.micro_batch_size,
                seq_length=settings.seq_length,
                clip_grad=settings.clip_grad,
                clip_epsilon=settings.clip_epsilon,
            )
            seconds = time.perf_counter() - began
            if result.nonfinite and settings.on_nonfinite == "stop":
                message = (
                    f"step {step + 1}: non-finite gradient norm ({result.grad_norm}); stopped without applying it"
                )
                if checkpointer is not None:
                    checkpointer.save(step=step, consumed_samples=consumed)
                    message += f"; the last good state (step {step}) is saved"
                raise RunError(ExitCode.NONFINITE_STOP, message)
            step += 1
            consumed += settings.global_batch_size
            log.step(step, result, tokens=tokens_per_step, seconds=seconds)
            if settings.eval_interval and step % settings.eval_interval == 0 and splits.valid is not None:
                evaluation = evaluate(
                    functools.partial(forward_step, TrainState(step=step, consumed_samples=consumed, layout=layout)),
                    _iterators(splits.valid, layout, settings, 0),
                    model,
                    num_batches=settings.eval_iters,
                    num_microbatches=settings.num_microbatches,
                    micro_batch_size=settings.micro_batch_size,
                    seq_length=settings.seq_length,
                )
                log.evaluation(step, evaluation)
            if step == settings.iters:
                break
            stop_reason = _early_stop(signals, settings, step - start_step, started)
            if checkpointer is not None and (
                stop_reason is not None or (settings.save_interval and step % settings.save_interval == 0)
            ):
                checkpointer.save(step=step, consumed_samples=consumed)
            if stop_reason is not None:
                saved = "checkpoint saved" if checkpointer is not None else "no [checkpoint] dir, nothing saved"
                log.message(f"stopping after step {step}: {stop_reason}; {saved}; launch again to resume")
                return ExitCode.STOPPED_TO_RESUME
        if checkpointer is not None:
            checkpointer.save(step=step, consumed_samples=consumed)
        return ExitCode.OK
    finally:
        signals.restore()
        log.close()


def _early_stop(signals: StopSignals, settings: LoopSettings, steps_this_launch: int, started: float) -> str | None:
    """Why this launch should stop now, agreed by every rank (a collective), or None."""
    local = signals.received
    if settings.exit_interval is not None and steps_this_launch >= settings.exit_interval:
        local = max(local, StopCode.EXIT_INTERVAL)
    minutes = (time.monotonic() - started) / 60.0
    if settings.exit_duration_minutes is not None and minutes >= settings.exit_duration_minutes:
        local = max(local, StopCode.EXIT_DURATION)
    code = agree(local)
    if code == StopCode.NONE:
        return None
    return describe(code, exit_interval=settings.exit_interval, exit_duration_minutes=settings.exit_duration_minutes)
