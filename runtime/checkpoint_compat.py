"""Where megatron-core 0.16.1's checkpointing needs help, each answer pinned to the lines it answers.

Checkpoints go through megatron-core's own sharded state dicts
(:mod:`bridgec.runtime.checkpoint`); without Apex or Transformer Engine (so on
every CPU run) a few of its paths assume state it does not have, or restore
the wrong value. Each function here names the megatron-core lines it answers in
:data:`PINS`; ``tests/runtime/test_checkpoint_compat.py`` checks that those
lines still read as quoted, so a megatron-core upgrade that changes them fails
loudly (as :mod:`bridgec.runtime.cpu_compat` does for its CUDA substitutions).
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
from megatron.core.optimizer.optimizer import ChainedOptimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from bridgec.runtime.errors import ExitCode, RunError


@attrs.frozen(kw_only=True)
class Pin:
    """A megatron-core 0.16.1 source line a workaround answers: ``line: code`` of ``module``."""

    module: str
    line: int
    code: str


PINS: dict[str, tuple[Pin, ...]] = {
    "require_state_initialisers": (
        Pin(
            module="megatron.core.optimizer.optimizer", line=791, code="self.init_state_fn(self.optimizer, self.config)"
        ),
    ),
    "allocate_optimizer_state": (
        Pin(
            module="megatron.core.optimizer.distrib_optimizer",
            line=641,
            code='steps = list(set([s["step"].item() for s in inner_state_dict["state"].values()]))',
        ),
        Pin(module="megatron.core.optimizer.distrib_optimizer", line=642, code="assert len(steps) == 1"),
    ),
    "restore_distributed_steps": (
        Pin(
            module="megatron.core.optimizer.distrib_optimizer",
            line=821,
            code="step = torch.tensor(steps[0], dtype=torch.float)",
        ),
        Pin(module="megatron.core.optimizer.distrib_optimizer", line=825, code='s["step"] = step'),
        Pin(
            module="megatron.core.optimizer.distrib_optimizer",
            line=938,
            code='dst_tensors = {"param": main_param, **optim_state}',
        ),
        Pin(module="megatron.core.optimizer.distrib_optimizer", line=940, code="dst_tensors[key].copy_(tensors[key])"),
    ),
    "restore_schedule": (
        Pin(module="megatron.core.optimizer_param_scheduler", line=384, code="self.step(increment=num_steps)"),
    ),
}
"""Workaround -> the lines it answers."""


def require_state_initialisers(optimizer: ChainedOptimizer) -> None:
    """RunError when an optimizer cannot be checkpointed: the load path calls its ``init_state_fn``."""
    for sub in optimizer.chained_optimizers:
        if sub.init_state_fn is None:
            raise RunError(
                ExitCode.CHECKPOINT_ERROR,
                f"megatron-core cannot checkpoint the {type(sub.optimizer).__name__} optimizer "
                "(it has no state initialiser); use adam, or remove [checkpoint] dir",
            )


def allocate_optimizer_state(optimizer: ChainedOptimizer) -> None:
    """Give a fresh distributed optimizer its state tensors before loading into them.

    Without Apex/TE, building a distributed optimizer's state dict asserts that
    every parameter has one ``step`` (the pinned lines), which a fresh optimizer
    has not; its own load_state_dict allocates the state from param groups with a step.
    """
    for sub in optimizer.chained_optimizers:
        if isinstance(sub, DistributedOptimizer) and len(sub.optimizer.state) == 0:
            groups = []
            for group in sub.optimizer.state_dict()["param_groups"]:
                groups.append({**{k: v for k, v in group.items() if k != "params"}, "step": 0})
            sub.load_state_dict({"optimizer": {"param_groups": groups}})


def restore_distributed_steps(optimizer: ChainedOptimizer, loaded: Any) -> None:
    """Give torch Adam's per-parameter ``step`` of a distributed optimizer the checkpoint's value, one tensor each.

    Without TE/Apex megatron-core gets this wrong twice: the copy into the
    optimizer's state (distrib_optimizer.py:938-940) puts the pre-load ``step``
    over the loaded one, and :821-825 hands one shared step tensor to every
    parameter, which torch Adam then increments once per parameter. Either would
    change Adam's bias correction after a resume. (TE/Apex Adam keep no per-parameter step.)
    """
    subs = optimizer.chained_optimizers
    parts = [loaded] if len(subs) == 1 else [loaded[index] for index in range(len(subs))]
    for sub, part in zip(subs, parts):
        if not isinstance(sub, DistributedOptimizer):
            continue
        steps = {group["step"] for group in part["optimizer"]["param_groups"] if "step" in group}
        if len(steps) != 1:
            continue
        step = float(steps.pop())
        for state in sub.optimizer.state.values():
            if "step" in state:
                state["step"] = torch.tensor(step, dtype=state["step"].dtype, device=state["step"].device)


def restore_schedule(scheduler: OptimizerParamScheduler, current: dict[str, Any], num_steps: int) -> None:
    """Load the schedule's ``current`` settings at the saved step count.

    megatron's OptimizerParamScheduler.load_state_dict *adds* the saved count to
    its own (it calls ``step(increment=num_steps)``); a schedule already moved
    (e.g. to an imported update count) would count twice. Start from zero so the
    saved count is the count.
    """
    scheduler.num_steps = 0
    scheduler.load_state_dict({**current, "num_steps": num_steps})
