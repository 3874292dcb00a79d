"""The training events a callback class may handle: one list, read by the compiler's check and by the loop.

Megatron Bridge's names (megatron/bridge/training/callbacks.py) where it has the
event; bridgec keeps a subset and adds two, for these reasons:

- on_eval_step_start/end are left out: an evaluation here is one call of
  megatron-core's forward-only schedule per batch inside ``runtime.step.evaluate``,
  and nothing a callback could do between those batches changes the result.
- on_test_* are left out: a run has no test-split evaluation to fire them.
- on_data_init_start is left out: the datasets are built before the loop starts,
  inside ``build()``, which bridgec convert also calls.
- on_checkpoint_load (after a resume restored a checkpoint) and on_exception
  (the loop is ending on an error) are added: the issue asks for both, and they
  are where a callback learns that its ``user_state`` came back or that the run
  is stopping.

This module imports nothing heavy, so the compiler reads it without torch.
"""

from __future__ import annotations

EVENTS: tuple[str, ...] = (
    "on_train_start",
    "on_train_step_start",
    "on_train_step_end",
    "on_train_end",
    "on_eval_start",
    "on_eval_end",
    "on_checkpoint_save",
    "on_checkpoint_load",
    "on_exception",
)
"""Every event, in the order a run first meets them (on_checkpoint_load comes before on_train_start)."""
