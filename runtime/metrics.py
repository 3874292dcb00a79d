"""Training logs: a human line every log_interval and a JSON-lines file with every step.

Only the rank that holds the reduced loss writes (last pipeline stage, first
tensor/context/data rank); the others stay silent, so a log reads like a
single-process run's whatever the layout.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import IO, Any

import attrs

from bridgec.runtime.step import EvalResult, StepResult


def _number(value: float | None) -> float | str | None:
    # JSON has no NaN/Infinity; keep them readable and parseable as strings.
    if value is None or math.isfinite(value):
        return value
    return str(value)


@attrs.define(kw_only=True)
class MetricsLog:
    """Writes metrics for the rank that holds the loss; a no-op elsewhere."""

    path: Path
    enabled: bool
    log_interval: int
    total_iters: int
    stream: IO[str] = sys.stdout
    skipped_total: int = 0
    last_loss: float | None = None
    last_valid_loss: float | None = None
    _file: IO[str] | None = None
    _opened: float = 0.0

    def open(self, *, resume: bool, record: dict[str, Any]) -> None:
        """Open the JSON-lines file (appending on resume, fresh otherwise) and write this launch's ``record``."""
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a" if resume else "w", encoding="utf-8")
        self._opened = time.monotonic()
        self._write(record)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write(self, record: dict[str, Any]) -> None:
        assert self._file is not None, "MetricsLog.open() first"
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()

    def step(self, step: int, result: StepResult, *, tokens: int, seconds: float) -> None:
        """Record step ``step`` (1-based) that processed ``tokens`` tokens in ``seconds``.

        ``ms_per_step`` is the training step alone; ``elapsed_s`` (seconds since the
        log opened, on this launch) also covers logging, evaluation and checkpoints.
        """
        self.skipped_total += int(result.skipped)
        self.last_loss = result.loss
        if not self.enabled:
            return
        tokens_per_second = tokens / seconds if seconds > 0 else 0.0
        extra = {"metadata": {key: _number(value) for key, value in result.metadata.items()}} if result.metadata else {}
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
                "tokens": tokens,
                "tokens_per_second": tokens_per_second,
                "ms_per_step": seconds * 1000.0,
                "elapsed_s": time.monotonic() - self._opened,
            }
        )
        if step % self.log_interval == 0 or step == self.total_iters:
            loss = f"{result.loss:.6f}" + "".join(f" | {key} {value:.6g}" for key, value in result.metadata.items())
            # Only fp16 scales its losses; the other dtypes' scale is always 1 and not worth a column.
            scale = f" | loss scale {result.loss_scale:g}" if result.loss_scale != 1.0 else ""
            print(
                f"{self._at(step)} | loss {loss} | lr {result.learning_rate:.3e} | "
                f"grad norm {result.grad_norm:.4f} | {tokens_per_second:,.0f} tokens/s | "
                f"{seconds * 1000.0:.1f} ms/step | skipped {self.skipped_total}{scale}",
                file=self.stream,
                flush=True,
            )

    def evaluation(self, step: int, result: EvalResult) -> None:
        self.last_valid_loss = result.loss
        if not self.enabled:
            return
        self._write(
            {"kind": "valid", "step": step, "loss": _number(result.loss), "perplexity": _number(result.perplexity)}
        )
        print(
            f"{self._at(step)} | validation loss {result.loss:.6f} | perplexity {result.perplexity:.3f}",
            file=self.stream,
            flush=True,
        )

    def _at(self, step: int) -> str:
        """``step      3/40``; a checkpoint past train.iters (iters lowered since) is not shown as 3/2."""
        if step <= self.total_iters:
            return f"step {step:>6}/{self.total_iters}"
        return f"step {step:>6} (past train.iters = {self.total_iters})"

    def message(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream, flush=True)
