"""Callbacks for tests/e2e/test_callbacks.py: a recorder of every event, and one that fails once."""

import json
import os
import random

import torch


class Recorder:
    """Appends every event to events_rank<r>.jsonl and keeps running state in user_state."""

    def _write(self, context, **extra):
        record = {"event": context.event, "step": context.step, "holds_loss": context.holds_loss, **extra}
        with open(f"events_rank{context.rank}.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def on_checkpoint_load(self, context):
        self._write(context, restored=sorted(context.user_state))

    def on_train_start(self, context):
        context.user_state.setdefault("steps", [])
        context.user_state.setdefault("draws", [])
        context.user_state.setdefault("losses", torch.zeros(0, dtype=torch.float64))
        self._write(context)

    def on_train_step_start(self, context):
        self._write(context)

    def on_train_step_end(self, context):
        state = context.user_state
        state["steps"].append(context.step)
        state["draws"].append(random.random())  # the checkpoint's RNG states make this resume exactly too
        loss = torch.tensor([context.losses["lm loss"]], dtype=torch.float64)
        state["losses"] = torch.cat([state["losses"], loss])
        self._write(
            context,
            loss=context.losses["lm loss"],
            grad_norm=context.grad_norm,
            learning_rate=context.learning_rate,
            skipped=context.skipped,
            timers=sorted(context.timers),
        )

    def on_eval_start(self, context):
        self._write(context)

    def on_eval_end(self, context):
        self._write(context, losses=dict(context.losses))

    def on_checkpoint_save(self, context):
        self._write(context, checkpoint=os.path.basename(context.checkpoint_dir))

    def on_exception(self, context):
        self._write(context, error=type(context.error).__name__)

    def on_train_end(self, context):
        self._write(context)
        torch.save(dict(context.user_state), f"user_state_rank{context.rank}.pt")


class FailOnce:
    """Raises at the end of step 3 in a launch that started from step 0 (so the resumed launch runs on)."""

    def on_train_start(self, context):
        self.fresh = context.step == 0

    def on_train_step_end(self, context):
        if self.fresh and context.step == 3:
            check_throughput(context.step)


def check_throughput(step):
    raise ValueError(f"tokens per second fell at step {step}")
