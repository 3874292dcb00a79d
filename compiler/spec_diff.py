"""What changing a spec does, before anything runs: ``bridgec diff OLD NEW``.

Four answers, each from the code that decides the value (nothing is recomputed here):
the keys whose effective values differ (defaults filled in, a mesh resolved), the derived
values (``derive`` and ``explain``), the learning-rate curve (the scheduler the generated
script builds, from the plan ``lower`` makes), and whether NEW can resume from OLD's
checkpoints: the same parameters with the same shapes (the parameter table of
``runtime.models.gpt``), the same optimizer, and a layout the checkpoint reshards into.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import attrs

from bridgec.compiler import derive, explain
from bridgec.compiler.lower import Target, TokenizerInfo, lower
from bridgec.compiler.plan import Call, Code, Items, Plan
from bridgec.compiler.spec import Spec
from bridgec.runtime.models import gpt

DISTRIBUTED_OPTIMIZER_SIZES = ("tensor", "pipeline", "virtual_pipeline", "context", "expert")
"""The distributed optimizer's state is saved dp_reshardable: it loads when only the data-parallel size changes
(runtime.checkpoint_checks, which refuses the same at load time)."""


@attrs.frozen(kw_only=True)
class Change:
    key: str
    old: Any
    new: Any


@attrs.frozen(kw_only=True)
class LearningRateChange:
    max_difference: float
    """max |lr_new(k) - lr_old(k)| over the updates both runs make."""
    at_update: int
    """The first update (0-based) where the difference is largest."""
    old_lr: float
    new_lr: float
    compared_updates: int


@attrs.frozen(kw_only=True)
class SpecDiff:
    keys: tuple[Change, ...]
    derived: tuple[Change, ...]
    learning_rate: LearningRateChange
    resume_blockers: tuple[str, ...]
    """Why NEW cannot resume from OLD's checkpoints; empty when it can."""


def diff_specs(
    old: Spec, new: Spec, *, old_tokenizer: TokenizerInfo | None, new_tokenizer: TokenizerInfo | None
) -> SpecDiff:
    return SpecDiff(
        keys=tuple(changed_keys(old, new)),
        derived=tuple(changed_derived(old, new)),
        learning_rate=learning_rate_change(old, new, old_tokenizer, new_tokenizer),
        resume_blockers=tuple(resume_blockers(old, new)),
    )


# -- keys ---------------------------------------------------------------------------------


def _flatten(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """Tables and arrays of tables open up; any other value (a mesh's dict too) is one leaf."""
    if attrs.has(type(value)):
        for field in attrs.fields(type(value)):
            yield from _flatten(getattr(value, field.name), f"{prefix}.{field.name}" if prefix else field.name)
    elif isinstance(value, tuple) and value and all(attrs.has(type(item)) for item in value):
        for index, item in enumerate(value):
            yield from _flatten(item, f"{prefix}[{index}]")
    else:
        yield prefix, list(value) if isinstance(value, tuple) else value


def effective_values(spec: Spec) -> dict[str, Any]:
    """Every key of ``spec`` with its effective value (defaults included), by dotted path."""
    return dict(_flatten(spec, ""))


def changed_keys(old: Spec, new: Spec) -> Iterator[Change]:
    before, after = effective_values(old), effective_values(new)
    for key in [*before, *[k for k in after if k not in before]]:
        if before.get(key) != after.get(key):
            yield Change(key=key, old=before.get(key), new=after.get(key))


# -- derived values -------------------------------------------------------------------------

DERIVED: tuple[tuple[str, Callable[[Spec], float], Callable[[float], str]], ...] = (
    ("world size", derive.world_size, "{:,}".format),
    ("data parallel", derive.data_parallel, "{:,}".format),
    ("microbatches per step", derive.microbatches, "{:,}".format),
    ("tokens per step", derive.tokens_per_step, "{:,}".format),
    ("parameters", lambda spec: explain.parameter_counts(spec).total, "{:,}".format),
    ("memory per GPU (estimate)", lambda spec: explain.memory(spec).total, explain.human_bytes),
)
"""Each derived value a diff reports: its name, the function that decides it, how it is shown."""


def changed_derived(old: Spec, new: Spec) -> Iterator[Change]:
    for name, value, shown in DERIVED:
        before, after = value(old), value(new)
        if before != after:
            yield Change(key=name, old=shown(before), new=shown(after))


# -- the learning-rate curve -----------------------------------------------------------------


class _ParamGroups:
    """What a scheduler sets the learning rate of: the optimizer's parameter groups (one, without multipliers)."""

    def __init__(self) -> None:
        self.param_groups: list[dict[str, Any]] = [{}]


def learning_rate_curve(spec: Spec, tokenizer: TokenizerInfo | None) -> Callable[[int], float]:
    """The learning rate of update k (0-based) of the script compiled from ``spec``: its own scheduler, built
    from the plan's scheduler call (megatron-core's OptimizerParamScheduler or bridgec's CountScheduler)."""
    plan = lower(spec, Target(spec_sha256="", spec_path="spec.toml", output_name="run.py", tokenizer=tokenizer))
    scheduler = _evaluate(plan.main.scheduler, _namespace(plan))

    def lr(update: int) -> float:
        scheduler.num_steps = update
        return float(scheduler.get_lr({}))

    return lr


def _namespace(plan: Plan) -> dict[str, Any]:
    names: dict[str, Any] = {c.name: c.value for section in plan.sections for c in section.constants}
    names["optimizer"] = _ParamGroups()
    if plan.schedule_function is not None:
        names["learning_rate_schedule()"] = _evaluate(plan.schedule_function, names)
    return names


def _functions() -> dict[str, Callable[..., Any]]:
    from bridgec.runtime import optim, schedules

    public = {name: getattr(schedules, name) for name in dir(schedules) if not name.startswith("_")}
    return {**public, "ScheduleSettings": optim.ScheduleSettings, "build_scheduler": optim.build_scheduler}


def _evaluate(node: Any, names: dict[str, Any]) -> Any:
    """A plan call, with the script's constants for the names it passes."""
    if isinstance(node, Call):
        function = _functions()[node.function]
        positional = [_evaluate(a.value, names) for a in node.arguments if a.name is None]
        keywords = {a.name: _evaluate(a.value, names) for a in node.arguments if a.name is not None}
        return function(*positional, **keywords)
    if isinstance(node, Code):
        return names[node.text]
    if isinstance(node, Items):
        return [_evaluate(item, names) for item in node.items]
    return node


def learning_rate_change(
    old: Spec, new: Spec, old_tokenizer: TokenizerInfo | None, new_tokenizer: TokenizerInfo | None
) -> LearningRateChange:
    before, after = learning_rate_curve(old, old_tokenizer), learning_rate_curve(new, new_tokenizer)
    updates = min(old.train.iters, new.train.iters)
    worst, at = -1.0, 0
    for update in range(updates):
        difference = abs(after(update) - before(update))
        if difference > worst:
            worst, at = difference, update
    return LearningRateChange(
        max_difference=max(worst, 0.0),
        at_update=at,
        old_lr=before(at),
        new_lr=after(at),
        compared_updates=updates,
    )


# -- resuming ------------------------------------------------------------------------------------


def _shapes(spec: Spec) -> dict[str, tuple[int, ...]]:
    return {p.name: p.shape for p in gpt.parameters(derive.gpt_config(spec))}


def resume_blockers(old: Spec, new: Spec) -> Iterator[str]:
    """What keeps NEW from loading OLD's checkpoints (what the runtime would refuse at load time)."""
    before, after = _shapes(old), _shapes(new)
    for name in before:
        if name not in after:
            yield f"parameter {name} {_shape(before[name])}: in OLD's checkpoints, not in NEW's model"
        elif before[name] != after[name]:
            yield f"parameter {name}: OLD {_shape(before[name])}, NEW {_shape(after[name])}"
    for name in after:
        if name not in before:
            yield f"parameter {name} {_shape(after[name])}: in NEW's model, not in OLD's checkpoints"
    if old.precision.dtype != new.precision.dtype:
        yield f"precision.dtype: OLD {old.precision.dtype}, NEW {new.precision.dtype} (the parameters' dtype)"
    if old.optimizer.name != new.optimizer.name:
        yield f"optimizer.name: OLD {old.optimizer.name}, NEW {new.optimizer.name} (different optimizer state)"
    if old.parallel.distributed_optimizer != new.parallel.distributed_optimizer:
        yield (
            f"parallel.distributed_optimizer: OLD {_toml(old.parallel.distributed_optimizer)}, NEW "
            f"{_toml(new.parallel.distributed_optimizer)} (the optimizer state is saved differently)"
        )
    elif old.parallel.distributed_optimizer:
        for size in DISTRIBUTED_OPTIMIZER_SIZES:
            before_size, after_size = getattr(old.parallel, size), getattr(new.parallel, size)
            if before_size != after_size:
                yield (
                    f"parallel.{size}: OLD {before_size}, NEW {after_size}; distributed-optimizer state only "
                    "loads when just the data-parallel size changes"
                )


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(n) for n in shape) + "]"


def _toml(value: bool) -> str:
    return "true" if value else "false"


# -- the report --------------------------------------------------------------------------------


def _value(value: Any) -> str:
    from bridgec.compiler.errors import render_value

    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "unset" if value is None else render_value(value)


SHOWN_BLOCKERS = 12
"""A deeper model blocks once per parameter of every new layer: the first ones say enough."""


def report_text(diff: SpecDiff, old_name: str, new_name: str) -> str:
    lines = [f"{old_name} -> {new_name}", "", "Changed keys"]
    lines += [f"  {c.key}: {_value(c.old)} -> {_value(c.new)}" for c in diff.keys] or ["  none"]
    lines += ["", "Derived values"]
    lines += [f"  {c.key}: {c.old} -> {c.new}" for c in diff.derived] or ["  unchanged"]
    lr = diff.learning_rate
    lines += ["", f"Learning rate (over the {lr.compared_updates} updates both make)"]
    if lr.max_difference == 0.0:
        lines.append("  the same at every update")
    else:
        lines.append(
            f"  largest difference {lr.max_difference:.6g} at update {lr.at_update} (0-based): "
            f"{lr.old_lr:.6g} -> {lr.new_lr:.6g}"
        )
    lines += ["", "Resume"]
    if diff.resume_blockers:
        lines.append(f"  NEW cannot resume from OLD's checkpoints ({len(diff.resume_blockers)} reason(s)):")
        lines += [f"  - {reason}" for reason in diff.resume_blockers[:SHOWN_BLOCKERS]]
        if len(diff.resume_blockers) > SHOWN_BLOCKERS:
            lines.append(f"  - ... and {len(diff.resume_blockers) - SHOWN_BLOCKERS} more")
    else:
        lines.append("  NEW can resume from OLD's checkpoints (same parameters and shapes, a layout they load into)")
    return "\n".join(lines) + "\n"
