"""The training loop: steps, logging, evaluation, and (when asked) checkpoints and early stops."""

from __future__ import annotations

import functools
import json
import os
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs
from megatron.core.distributed import DistributedDataParallel
from megatron.core.optimizer.optimizer import ChainedOptimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from bridgec.runtime.callbacks import CallbackError, Callbacks
from bridgec.runtime.checkpoint_files import checkpoint_name, find_latest, read_manifest
from bridgec.runtime.data import MicrobatchIterator, Splits
from bridgec.runtime.entry import peer_failure, peer_failure_message
from bridgec.runtime.errors import ExitCode, RunEnd, RunError
from bridgec.runtime.memory import device_peak, memory
from bridgec.runtime.metrics import LogLevel, MetricsLog, StepMeasures
from bridgec.runtime.outputs import launch_record
from bridgec.runtime.parallel import Layout
from bridgec.runtime.profile import ProfileSettings, StepProfiler
from bridgec.runtime.report import describe_data, end_summary, start_banner
from bridgec.runtime.sinks import Sink, SinkContext, SinkSet
from bridgec.runtime.step import MetadataKeys, evaluate, params_norm, train_step
from bridgec.runtime.stop import StopCode, StopSignals, describe


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
    """How the loop runs; the settings a spec leaves unset keep their defaults (the script does not pass them)."""

    iters: int
    log_interval: int
    eval_interval: int | None = None
    """None: never evaluate."""
    eval_iters: int = 0
    global_batch_size: int
    micro_batch_size: int
    num_microbatches: int
    seq_length: int
    clip_grad: float
    clip_epsilon: float
    on_nonfinite: str
    exit_interval: int | None = None
    exit_duration_minutes: float | None = None
    save_interval: int | None = None
    """None: save only at the end and at an early stop (with a checkpointer)."""
    metrics_path: Path
    spec_path: Path
    """The spec the script was compiled from: the metrics file's first record names it (runtime.outputs)."""
    spec_sha256: str
    run_name: str
    parameters: int
    """The model's parameter count (the compiler's), for the start banner."""
    flops_per_token: int
    """Training FLOPs per token (the compiler's, as ``bridgec explain`` prints them), for TFLOP/s and MFU."""
    precision: str
    """Which column of the peak table MFU uses: fp8, bf16, fp16 or fp32."""
    peak_tflops: float | None = None
    """[logging] peak_tflops; None: the table's peak for this GPU (none on the CPU)."""
    log_level: LogLevel = "info"
    params_norm: bool = False
    """Compute and log the parameters' L2 norm each step (a collective on every rank)."""


@attrs.frozen(kw_only=True)
class Progress:
    """Where training stands after ``step`` steps; a checkpoint stores it next to the state."""

    step: int
    """Steps completed (skipped ones included)."""
    consumed_samples: int
    """Training samples consumed, over all data-parallel ranks: the data position."""
    skipped_steps: int
    """Steps whose update was skipped (non-finite gradients, or an fp16 loss-scale overflow), for the metrics'
    running count."""
    consumed_valid_samples: int = 0
    """Validation samples read by the evaluations so far, over all data-parallel ranks: where the next
    evaluation starts (Megatron-LM's consumed_valid_samples)."""
    user_state: dict[str, Any] | None = None
    """This rank's callbacks' ``user_state`` (a copy taken at the save); None for a run without callbacks, or
    when the checkpoint's could not be restored (another layout)."""


class Checkpointer(Protocol):
    """Saves and restores the whole training state (see bridgec.runtime.checkpoint)."""

    directory: Path

    def load_latest(self) -> Progress | None:
        """Restore the newest complete checkpoint and return its progress, or None if there is none."""

    def save(self, progress: Progress) -> None:
        """Write a complete checkpoint of ``progress.step`` (atomically; an asynchronous one is published later)."""

    def poll(self, step: int) -> None:
        """After each step: publish a background save whose writes all finished (a no-op for synchronous saves)."""

    def finish(self, step: int) -> None:
        """Wait for a background save and publish it (a no-op for synchronous saves)."""


def _iterators(
    splits_dataset: Any, layout: Layout, settings: LoopSettings, consumed: int
) -> list[Iterator[Any] | None]:
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
    initial: Progress | None = None,
    sinks: Sequence[Sink] = (),
    profile: ProfileSettings | None = None,
    callbacks: Callbacks | None = None,
) -> RunEnd:
    """Run steps until ``settings.iters``, an early stop, or a non-finite stop; return how the launch ended.

    A RunError raised once training began (a non-finite stop, a failed save, a
    lost peer) carries the last step completed.

    With a checkpointer: saves every ``save_interval`` steps, at an early stop and
    at the end (never the step it resumed from again); ``resume`` restores the
    latest checkpoint first, or says that it starts fresh. ``initial`` is where a
    fresh start begins (step 0 by default; the imported step when optimizer state
    came from another framework's checkpoint). ``sinks`` (TensorBoard, W&B,
    MLflow) are opened on the logging rank only; ``profile`` profiles a step range
    ([profile], runtime.profile). ``callbacks`` are called at each event (runtime.callbacks); their
    ``user_state`` goes into every checkpoint and comes back on resume.
    """
    log = MetricsLog(
        path=settings.metrics_path,
        enabled=layout.holds_loss,
        log_interval=settings.log_interval,
        total_iters=settings.iters,
        flops_per_token=settings.flops_per_token,
        world_size=layout.world_size,
        peak_tflops=device_peak(layout.device, precision=settings.precision, override=settings.peak_tflops),
        level=settings.log_level,
        sinks=SinkSet(sinks),
    )
    fresh = initial or Progress(step=0, consumed_samples=0, skipped_steps=0, consumed_valid_samples=0)
    start = _restore(checkpointer if resume else None, log, fresh)
    resumed = start is not fresh  # restored from a checkpoint of this run (not merely started at an imported step)
    fire = functools.partial(_fire, callbacks, layout)
    if callbacks is not None and resumed and checkpointer is not None:
        callbacks.restore(start.user_state or {})
        fire("on_checkpoint_load", step=start.step, checkpoint_dir=checkpointer.directory / checkpoint_name(start.step))
    if start.step > 0 and layout.holds_loss:
        truncate_metrics(settings.metrics_path, after_step=start.step)
    elif layout.holds_loss and settings.metrics_path.is_file():
        # claim_outputs made sure the file is this spec's: an earlier launch that started from scratch too.
        log.message(f"metrics: replacing {settings.metrics_path}, written by an earlier launch of this spec")
    log.open(
        resume=start.step > 0,
        record=launch_record(
            spec=settings.spec_path, metrics=settings.metrics_path, spec_sha256=settings.spec_sha256, step=start.step
        ),
        first_step=start.step,
        sink_context=SinkContext(
            run_name=settings.run_name,
            output_dir=settings.metrics_path.parent,
            config=_flat_spec(settings.spec_path) if layout.holds_loss and sinks else {},
        ),
    )
    log.skipped_total = start.skipped_steps
    step, consumed, valid_consumed = start.step, start.consumed_samples, start.consumed_valid_samples
    if log.enabled:
        log.message(_banner(settings, layout, splits, checkpointer, first_step=step))
    started = time.monotonic()
    fire("on_train_start", step=step)
    if step >= settings.iters:
        # Nothing left to train (a finished run launched again, or iters lowered): evaluate what was loaded, if the
        # spec evaluates, on the samples of the last evaluation (so the result compares with the one logged then,
        # e.g. after a layout change).
        done = (
            f"all {settings.iters} steps were already done"
            if step == settings.iters
            else f"the checkpoint is at step {step}, past train.iters = {settings.iters}"
        )
        if settings.eval_interval is None:
            done += "; nothing to train, and nothing to evaluate ([train] eval_interval is unset)"
            log.message(done)
        else:
            done += "; nothing to train, evaluating what was loaded"
            log.message(done)
            last_window = max(0, valid_consumed - settings.eval_iters * settings.global_batch_size)
            _evaluate(
                forward_step,
                model,
                splits,
                layout,
                settings,
                log,
                step=step,
                consumed=consumed,
                valid_consumed=last_window,
                callbacks=callbacks,
            )
        fire("on_train_end", step=step)
        log.summary(_summary(log, start.step, step, started))
        log.close()
        return RunEnd(code=ExitCode.OK, reason=done, step=step)
    train_iterators = [
        None if it is None else TimedIterator(it) for it in _iterators(splits.train, layout, settings, consumed)
    ]
    signals = StopSignals.install()
    metadata_keys = MetadataKeys()
    profiler = StepProfiler(settings=profile, rank=layout.rank, device=layout.device)
    profiler.start()
    saving = 0.0  # seconds spent saving since the last step's record
    try:
        while step < settings.iters:
            state = TrainState(step=step, consumed_samples=consumed, layout=layout)
            for timed in train_iterators:
                if timed is not None:
                    timed.seconds = 0.0
            fire("on_train_step_start", step=step + 1)
            profiler.before(step + 1)
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
                stop_vote=functools.partial(_stop_vote, signals, settings, step + 1 - start.step, started),
                metadata_keys=metadata_keys,
                nvtx=profiler.nvtx,
            )
            seconds = time.perf_counter() - began
            profiler.after(step + 1)
            measures = _measures(
                optimizer,
                layout,
                settings,
                train_iterators,
                seconds=seconds,
                checkpoint_seconds=saving,
                consumed=consumed + settings.global_batch_size,
            )
            saving = 0.0
            if result.nonfinite and settings.on_nonfinite == "stop":
                good = Progress(
                    step=step,
                    consumed_samples=consumed,
                    skipped_steps=log.skipped_total,
                    consumed_valid_samples=valid_consumed,
                    user_state=_user_state(callbacks),
                )
                log.step(step + 1, result, measures)
                # The gradient norm is global: every rank stops here with the same message.
                message = _nonfinite_stop(
                    checkpointer, good, result.grad_norm, resumed_here=resumed and good.step == start.step
                )
                raise RunError(ExitCode.NONFINITE_STOP, message, every_rank=True)
            step += 1
            consumed += settings.global_batch_size
            log.step(step, result, measures)
            fire(
                "on_train_step_end",
                step=step,
                losses={"lm loss": result.loss, **result.metadata},
                grad_norm=result.grad_norm,
                learning_rate=result.learning_rate,
                skipped=result.skipped,
                timers={
                    "data": measures.data_seconds,
                    "forward_backward": result.forward_backward_seconds,
                    "optimizer": result.optimizer_seconds,
                    "step": seconds,
                },
            )
            if settings.eval_interval and step % settings.eval_interval == 0:
                _evaluate(
                    forward_step,
                    model,
                    splits,
                    layout,
                    settings,
                    log,
                    step=step,
                    consumed=consumed,
                    valid_consumed=valid_consumed,
                    callbacks=callbacks,
                )
                valid_consumed += settings.eval_iters * settings.global_batch_size
            progress = Progress(
                step=step,
                consumed_samples=consumed,
                skipped_steps=log.skipped_total,
                consumed_valid_samples=valid_consumed,
                user_state=_user_state(callbacks),
            )
            if step == settings.iters:
                break
            stop_reason = _stop_reason(StopCode(result.stop_vote), settings)
            if checkpointer is not None:
                checkpointer.poll(step)
            if checkpointer is not None and (
                stop_reason is not None or (settings.save_interval and step % settings.save_interval == 0)
            ):
                saving = _timed_save(checkpointer, progress)
                fire("on_checkpoint_save", step=step, checkpoint_dir=checkpointer.directory / checkpoint_name(step))
            if stop_reason is not None:
                if checkpointer is not None:
                    checkpointer.finish(step)
                stopped = f"stopping after step {step}: {stop_reason}; {_how_to_continue(checkpointer, resume)}"
                fire("on_train_end", step=step)
                log.message(stopped)
                log.summary(_summary(log, start.step, step, started))
                return RunEnd(code=ExitCode.STOPPED_TO_RESUME, reason=stopped, step=step)
        if checkpointer is not None:
            checkpointer.save(
                Progress(
                    step=step,
                    consumed_samples=consumed,
                    skipped_steps=log.skipped_total,
                    consumed_valid_samples=valid_consumed,
                    user_state=_user_state(callbacks),
                )
            )
            checkpointer.finish(step)
            fire("on_checkpoint_save", step=step, checkpoint_dir=checkpointer.directory / checkpoint_name(step))
        fire("on_train_end", step=step)
        log.summary(_summary(log, start.step, step, started))
        return RunEnd(code=ExitCode.OK, reason=f"all {settings.iters} steps ran", step=step)
    except CallbackError as error:
        # No collective from here: the other ranks may not have raised. A save still being written is not
        # published, so the latest published checkpoint stays the one a resume loads.
        _on_exception(fire, step, error)
        raise RunError(error.code, error.message + _last_good(checkpointer), step=step) from None
    except RunError as error:
        _on_exception(fire, step, error)
        raise error.at_step(step) from None
    except RuntimeError as error:
        _on_exception(fire, step, error)
        if not peer_failure(error):
            raise
        raise RunError(ExitCode.PEER_FAILED, peer_failure_message(error), step=step) from None
    finally:
        profiler.stop()
        signals.restore()
        log.close()


def _fire(callbacks: Callbacks | None, layout: Layout, event: str, **fields: Any) -> None:
    if callbacks is not None:
        callbacks.fire(event, rank=layout.rank, holds_loss=layout.holds_loss, **fields)


def _user_state(callbacks: Callbacks | None) -> dict[str, Any] | None:
    return None if callbacks is None else callbacks.snapshot()


def _on_exception(fire: Callable[..., None], step: int, error: BaseException) -> None:
    """Tell the callbacks the run is ending on ``error``; one that raises now only adds to the message printed."""
    try:
        fire("on_exception", step=step, error=error)
    except CallbackError as failed:
        print(
            f"bridgec [rank {os.environ.get('RANK', '0')}]: while stopping: {failed.message}",
            file=sys.stderr,
            flush=True,
        )


def _last_good(checkpointer: Checkpointer | None) -> str:
    """Where a resume starts after a callback stopped the run (read from the folder: no collective)."""
    if checkpointer is None:
        return "\n  no [checkpoint] dir: nothing was saved"
    latest = find_latest(checkpointer.directory)
    if latest is None:
        return f"\n  no checkpoint was published in {checkpointer.directory}; launching again starts over"
    return (
        f"\n  the last good checkpoint, step {read_manifest(latest).step} ({latest}), is untouched; "
        "fix the callback and launch again with resume = true to continue from it"
    )


class TimedIterator:
    """Passes ``inner``'s items on and adds the time each ``next()`` took to ``seconds`` (the data timer)."""

    def __init__(self, inner: Iterator[Any]) -> None:
        self.inner = inner
        self.seconds = 0.0

    def __iter__(self) -> TimedIterator:
        return self

    def __next__(self) -> Any:
        began = time.perf_counter()
        try:
            return next(self.inner)
        finally:
            self.seconds += time.perf_counter() - began


def _measures(
    optimizer: ChainedOptimizer,
    layout: Layout,
    settings: LoopSettings,
    iterators: Sequence[TimedIterator | None],
    *,
    seconds: float,
    checkpoint_seconds: float,
    consumed: int,
) -> StepMeasures:
    """What the loop measured around a step; the parameters' norm is a collective, taken on every rank."""
    return StepMeasures(
        tokens=settings.global_batch_size * settings.seq_length,
        seconds=seconds,
        data_seconds=sum(it.seconds for it in iterators if it is not None),
        checkpoint_seconds=checkpoint_seconds,
        consumed_samples=consumed,
        consumed_tokens=consumed * settings.seq_length,
        params_norm=params_norm(optimizer) if settings.params_norm else None,
        memory=memory(layout.device),
    )


def _timed_save(checkpointer: Checkpointer, progress: Progress) -> float:
    began = time.perf_counter()
    checkpointer.save(progress)
    return time.perf_counter() - began


def _flat_spec(path: Path) -> dict[str, object]:
    """The spec as ``table.key`` -> value: the run configuration W&B and MLflow show next to the curves."""
    flat: dict[str, object] = {}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else key, inner)
        else:
            flat[prefix] = value

    try:
        walk("", tomllib.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}  # the trackers then show no configuration; the run does not depend on it
    return flat


def _banner(
    settings: LoopSettings, layout: Layout, splits: Splits, checkpointer: Checkpointer | None, *, first_step: int
) -> str:
    outputs = [("metrics", settings.metrics_path)]
    if checkpointer is not None:
        outputs.append(("checkpoints", checkpointer.directory))
    return start_banner(
        run_name=settings.run_name,
        spec=settings.spec_path,
        parameters=settings.parameters,
        layout=layout,
        data=describe_data(
            splits.train, samples=settings.iters * settings.global_batch_size, seq_length=settings.seq_length
        ),
        first_step=first_step,
        iters=settings.iters,
        global_batch_size=settings.global_batch_size,
        outputs=outputs,
    )


def _summary(log: MetricsLog, first_step: int, last_step: int, started: float) -> str:
    return end_summary(
        first_step=first_step,
        last_step=last_step,
        seconds=time.monotonic() - started,
        loss=log.last_loss,
        valid_loss=log.last_valid_loss,
    )


def _how_to_continue(checkpointer: Checkpointer | None, resume: bool) -> str:
    if checkpointer is None:
        # Without a checkpoint folder nothing can be resumed: saying "launch again to resume" would be false.
        return "no [checkpoint] dir, so nothing was saved: launching again starts over from step 0"
    if resume:
        return "checkpoint saved; launch again to resume"
    # A fresh start would refuse the folder that now holds this checkpoint (runtime.outputs).
    return "checkpoint saved; set resume = true under [checkpoint], recompile and launch again to resume"


def _restore(checkpointer: Checkpointer | None, log: MetricsLog, fresh: Progress) -> Progress:
    """Where this launch starts: the latest checkpoint's progress, or ``fresh``."""
    if checkpointer is None:
        return fresh
    restored = checkpointer.load_latest()
    if restored is None:
        log.message("resume: no checkpoint found, starting fresh")
        return fresh
    log.message(f"resume: continuing from step {restored.step} ({restored.consumed_samples} samples consumed)")
    return restored


def _nonfinite_stop(checkpointer: Checkpointer | None, good: Progress, grad_norm: float, *, resumed_here: bool) -> str:
    """Save the state before the bad step (unless it is the checkpoint just loaded) and say what happened."""
    message = (
        f"step {good.step + 1}: non-finite gradient norm ({grad_norm}); stopped without applying it "
        '(on_nonfinite = "stop")'
    )
    if checkpointer is None:
        return message + "; no [checkpoint] dir, nothing saved"
    if resumed_here:
        return message + f"; the last good state (step {good.step}) is the checkpoint this run resumed from"
    checkpointer.save(good)
    checkpointer.finish(good.step)
    return message + f"; the last good state (step {good.step}) is saved"


def _evaluate(
    forward_step: UserForwardStep,
    model: list[DistributedDataParallel],
    splits: Splits,
    layout: Layout,
    settings: LoopSettings,
    log: MetricsLog,
    *,
    step: int,
    consumed: int,
    valid_consumed: int,
    callbacks: Callbacks | None,
) -> None:
    """Evaluate on the ``eval_iters`` global batches of the validation split that start at ``valid_consumed``.

    Successive evaluations read successive batches, as Megatron-LM's validation
    iterator does; past the end of the split they start again from its beginning
    (the split holds at least one window per evaluation the spec asks for, so
    only a resume with a shorter eval_interval gets there).
    """
    if splits.valid is None or settings.eval_iters == 0:
        return
    _fire(callbacks, layout, "on_eval_start", step=step)
    window = settings.eval_iters * settings.global_batch_size
    whole_windows = max(1, len(splits.valid) // window) * window
    evaluation = evaluate(
        functools.partial(forward_step, TrainState(step=step, consumed_samples=consumed, layout=layout)),
        _iterators(splits.valid, layout, settings, valid_consumed % whole_windows),
        model,
        num_batches=settings.eval_iters,
        num_microbatches=settings.num_microbatches,
        micro_batch_size=settings.micro_batch_size,
        seq_length=settings.seq_length,
    )
    log.evaluation(step, evaluation)
    losses = {} if evaluation.loss is None else {"lm loss": evaluation.loss}
    _fire(callbacks, layout, "on_eval_end", step=step, losses=losses)


def truncate_metrics(path: Path, *, after_step: int) -> None:
    """Drop the records of steps after ``after_step``: a resumed run writes them again.

    A run killed after its last checkpoint logged steps that the resumed run
    repeats; without this the file would hold those steps twice. Rewritten
    through a temporary file so a crash here cannot lose the earlier records.
    """
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            record_step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by the kill
        if record_step <= after_step:
            kept.append(line if line.endswith("\n") else line + "\n")
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("".join(kept), encoding="utf-8")
    os.replace(temporary, path)


def _stop_vote(signals: StopSignals, settings: LoopSettings, steps_this_launch: int, started: float) -> int:
    """This rank's vote at the end of a step: the most urgent reason it sees to stop, or NONE.

    Cast inside train_step's end-of-step collective, so every rank learns the
    largest vote without a collective of its own.
    """
    local = signals.received
    if settings.exit_interval is not None and steps_this_launch >= settings.exit_interval:
        local = max(local, StopCode.EXIT_INTERVAL)
    minutes = (time.monotonic() - started) / 60.0
    if settings.exit_duration_minutes is not None and minutes >= settings.exit_duration_minutes:
        local = max(local, StopCode.EXIT_DURATION)
    return int(local)


def _stop_reason(code: StopCode, settings: LoopSettings) -> str | None:
    if code == StopCode.NONE:
        return None
    return describe(code, exit_interval=settings.exit_interval, exit_duration_minutes=settings.exit_duration_minutes)
