"""Training logs: a console line, a JSON-lines file with every step, and the [logging] sinks.

Only the rank that holds the reduced loss writes (last pipeline stage, first
tensor/context/data rank); the others stay silent, so a log reads like a
single-process run's whatever the layout. The JSON-lines file is written first
and always; the sinks (``runtime.sinks``: TensorBoard, W&B, MLflow) get the same
numbers under Megatron Bridge's names (:func:`train_scalars`), and one that
fails is dropped without touching the file.
"""

from __future__ import annotations

import datetime
import json
import math
import sys
import time
from pathlib import Path
from typing import IO, Any, Literal

import attrs

from bridgec.runtime.memory import Memory
from bridgec.runtime.sinks import SinkContext, SinkSet
from bridgec.runtime.step import EvalResult, StepResult
from bridgec.runtime.throughput import model_tflops_per_device

LogLevel = Literal["debug", "info", "quiet"]


def _number(value: float | None) -> float | str | None:
    # JSON has no NaN/Infinity; keep them readable and parseable as strings.
    if value is None or math.isfinite(value):
        return value
    return str(value)


@attrs.frozen(kw_only=True)
class StepMeasures:
    """What the loop measured around one step, besides the step's own result."""

    tokens: int
    """Tokens the step processed (global batch x sequence length)."""
    seconds: float
    """The training step alone."""
    data_seconds: float
    """Spent reading batches inside the step (the data iterators' time; part of forward-backward)."""
    checkpoint_seconds: float = 0.0
    """Spent saving a checkpoint since the previous step's record."""
    consumed_samples: int
    """Training samples consumed after this step, over all data-parallel ranks."""
    consumed_tokens: int
    """Their tokens (samples x sequence length)."""
    params_norm: float | None = None
    """None: [logging] params_norm is off."""
    memory: Memory


@attrs.frozen(kw_only=True)
class Rates:
    """Throughput of a step: tokens/s, model TFLOP/s per device and MFU (None without a peak)."""

    tokens_per_second: float
    tflops_per_device: float
    mfu: float | None


def train_scalars(result: StepResult, measures: StepMeasures, rates: Rates, *, skipped_total: int) -> dict[str, float]:
    """A training step's numbers under Megatron Bridge's TensorBoard/W&B names (timers in seconds, as Megatron)."""
    scalars = {
        "lm loss": result.loss,
        **result.metadata,
        "learning-rate": result.learning_rate,
        "grad-norm": result.grad_norm,
        "loss-scale": result.loss_scale,
        "skipped-iterations": float(skipped_total),
        "iteration-time": measures.seconds,
        "throughput/tokens-per-sec": rates.tokens_per_second,
        "throughput/tflops-per-device": rates.tflops_per_device,
        "batch-generator-time": measures.data_seconds,
        "forward-backward-time": result.forward_backward_seconds,
        "optimizer-time": result.optimizer_seconds,
        "save-checkpoint-time": measures.checkpoint_seconds,
        "consumed-samples": float(measures.consumed_samples),
        "consumed-tokens": float(measures.consumed_tokens),
    }
    if measures.params_norm is not None:
        scalars["params-norm"] = measures.params_norm
    if rates.mfu is not None:
        scalars["throughput/mfu"] = rates.mfu
    scalars.update(
        {f"mem-{key.replace('_', '-')}-bytes": float(value) for key, value in measures.memory.fields().items()}
    )
    return scalars


def eval_scalars(result: EvalResult) -> dict[str, float]:
    """An evaluation under Megatron's names ("lm loss validation", "lm loss validation ppl")."""
    if result.loss is None:
        return {}
    scalars = {"lm loss validation": result.loss}
    if result.perplexity is not None:
        scalars["lm loss validation ppl"] = result.perplexity
    return scalars


@attrs.define(kw_only=True)
class MetricsLog:
    """Writes metrics for the rank that holds the loss; a no-op elsewhere."""

    path: Path
    enabled: bool
    log_interval: int
    total_iters: int
    flops_per_token: int
    """Training FLOPs per token (the compiler's, ``bridgec explain``)."""
    world_size: int
    peak_tflops: float | None = None
    """One device's peak for MFU; None: no MFU (CPU, or a GPU the table lacks)."""
    level: LogLevel = "info"
    sinks: SinkSet = attrs.Factory(SinkSet)
    stream: IO[str] = sys.stdout
    skipped_total: int = 0
    last_loss: float | None = None
    last_valid_loss: float | None = None
    _file: IO[str] | None = None
    _opened: float = 0.0
    _first_step: int = 0

    def open(self, *, resume: bool, record: dict[str, Any], first_step: int, sink_context: SinkContext) -> None:
        """Open the JSON-lines file (appending on resume, fresh otherwise), write this launch's ``record``, and
        open the sinks."""
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a" if resume else "w", encoding="utf-8")
        self._first_step = first_step
        self._write(record)
        self.sinks.open(sink_context)
        self._opened = time.monotonic()  # after the sinks: a tracker's start-up is not the first step's pace

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self.sinks.close()

    def _write(self, record: dict[str, Any]) -> None:
        assert self._file is not None, "MetricsLog.open() first"
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()

    def rates(self, measures: StepMeasures) -> Rates:
        tokens_per_second = measures.tokens / measures.seconds if measures.seconds > 0 else 0.0
        tflops = model_tflops_per_device(
            tokens_per_second, flops_per_token=self.flops_per_token, world_size=self.world_size
        )
        return Rates(
            tokens_per_second=tokens_per_second,
            tflops_per_device=tflops,
            mfu=tflops / self.peak_tflops if self.peak_tflops else None,
        )

    def step(self, step: int, result: StepResult, measures: StepMeasures) -> None:
        """Record step ``step`` (1-based).

        ``ms_per_step`` is the training step alone; ``elapsed_s`` (seconds since the
        log opened, on this launch) also covers logging, evaluation and checkpoints.
        """
        self.skipped_total += int(result.skipped)
        self.last_loss = result.loss
        if not self.enabled:
            return
        rates = self.rates(measures)
        elapsed = time.monotonic() - self._opened
        extra: dict[str, Any] = {}
        if result.metadata:
            extra["metadata"] = {key: _number(value) for key, value in result.metadata.items()}
        if measures.params_norm is not None:
            extra["params_norm"] = _number(measures.params_norm)
        if rates.mfu is not None:
            extra["mfu"] = rates.mfu
        self._write(
            {
                **extra,
                "kind": "train",
                "step": step,
                "loss": _number(result.loss),
                "lr": result.learning_rate,
                "grad_norm": _number(result.grad_norm),
                "skipped": result.skipped,
                "skipped_total": self.skipped_total,
                "loss_scale": result.loss_scale,
                "tokens": measures.tokens,
                "tokens_per_second": rates.tokens_per_second,
                "tflops_per_device": rates.tflops_per_device,
                "ms_per_step": measures.seconds * 1000.0,
                "elapsed_s": elapsed,
                "consumed_samples": measures.consumed_samples,
                "consumed_tokens": measures.consumed_tokens,
                "memory_bytes": measures.memory.fields(),
                "timers_s": {
                    "data": measures.data_seconds,
                    "forward_backward": result.forward_backward_seconds,
                    "optimizer": result.optimizer_seconds,
                    "save_checkpoint": measures.checkpoint_seconds,
                },
            }
        )
        self.sinks.write(step, train_scalars(result, measures, rates, skipped_total=self.skipped_total))
        if self._shows(step):
            self._print(self._line(step, result, measures, rates, elapsed))

    def _shows(self, step: int) -> bool:
        """debug: every step; quiet: none; info: every log_interval steps and the last."""
        if self.level == "debug":
            return True
        if self.level == "quiet":
            return False
        return step % self.log_interval == 0 or step == self.total_iters

    def _line(self, step: int, result: StepResult, measures: StepMeasures, rates: Rates, elapsed: float) -> str:
        loss = f"{result.loss:.6f}" + "".join(f" | {key} {value:.6g}" for key, value in result.metadata.items())
        # Only fp16 scales its losses; the other dtypes' scale is always 1 and not worth a column.
        scale = f" | loss scale {result.loss_scale:g}" if result.loss_scale != 1.0 else ""
        mfu = f" | MFU {rates.mfu:.1%}" if rates.mfu is not None else ""
        line = (
            f"{self._at(step)} | loss {loss} | lr {result.learning_rate:.3e} | "
            f"grad norm {result.grad_norm:.4f} | {rates.tokens_per_second:,.0f} tokens/s | "
            f"{rates.tflops_per_device:.3g} TFLOP/s/device{mfu} | "
            f"{measures.seconds * 1000.0:.1f} ms/step | skipped {self.skipped_total}{scale}"
            f"{self._eta(step, elapsed)}"
        )
        if self.level == "debug":
            timers = (
                f"data {measures.data_seconds * 1000:.1f}, forward-backward {result.forward_backward_seconds * 1000:.1f}, "
                f"optimizer {result.optimizer_seconds * 1000:.1f}, save {measures.checkpoint_seconds * 1000:.1f} ms"
            )
            memory = ", ".join(f"{key} {value / 2**20:,.0f} MiB" for key, value in measures.memory.fields().items())
            params = f" | params norm {measures.params_norm:.4f}" if measures.params_norm is not None else ""
            line += f"\n    timers: {timers} | memory: {memory}{params}"
        return line

    def _eta(self, step: int, elapsed: float) -> str:
        """`` | ETA 0:01:05``: the rest of train.iters at this launch's mean pace (evaluations and saves included)."""
        done = step - self._first_step
        remaining = self.total_iters - step
        if done <= 0 or remaining <= 0:
            return ""
        return f" | ETA {datetime.timedelta(seconds=round(elapsed / done * remaining))}"

    def evaluation(self, step: int, result: EvalResult) -> None:
        self.last_valid_loss = result.loss
        if not self.enabled:
            return
        self._write(
            {"kind": "valid", "step": step, "loss": _number(result.loss), "perplexity": _number(result.perplexity)}
        )
        self.sinks.write(step, eval_scalars(result))
        if self.level != "quiet":
            self._print(f"{self._at(step)} | validation loss {result.loss:.6f} | perplexity {result.perplexity:.3f}")

    def _at(self, step: int) -> str:
        """``step      3/40``; a checkpoint past train.iters (iters lowered since) is not shown as 3/2."""
        if step <= self.total_iters:
            return f"step {step:>6}/{self.total_iters}"
        return f"step {step:>6} (past train.iters = {self.total_iters})"

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def message(self, text: str) -> None:
        """A note about the run (banner, resume, stop); quiet mode keeps only the end summary (:meth:`summary`)."""
        if self.enabled and self.level != "quiet":
            self._print(text)

    def summary(self, text: str) -> None:
        if self.enabled:
            self._print(text)
