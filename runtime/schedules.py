"""Learning-rate schedules with optax's and MaxText's exact formulas, and the scheduler that applies them.

A schedule is a function of the update count ``k`` (0-based): the ``k``-th
optimizer update uses ``lr(k)``. That is optax's convention (``scale_by_schedule``
reads the schedule, then increments its count), so MaxText's first update runs
at ``lr(0) = 0`` when it warms up from 0.

Each schedule is a small frozen object: calling it gives the value (Python
floats, i.e. float64; optax evaluates the same formulas in float32 unless JAX
runs with x64), and its ``repr`` names it exactly, which is what a checkpoint
stores to catch a resume under a different schedule.

* optax: :func:`constant_schedule`, :func:`linear_schedule`,
  :func:`cosine_decay_schedule`, :func:`warmup_cosine_decay_schedule`,
  :func:`join_schedules` (optax/schedules/_schedule.py and _join.py, optax 0.2.8).
* MaxText: :func:`maxtext_schedule` (``create_learning_rate_schedule`` in
  src/maxtext/utils/maxtext_utils.py), ``cosine`` or ``wsd``, in three historical
  variants (see :data:`MAXTEXT_VARIANTS`).

:class:`CountScheduler` replaces megatron-core's ``OptimizerParamScheduler``
when a spec asks for one of these: it sets every parameter group's ``lr`` from
the schedule at the pre-increment update count, and its weight decay as
megatron's scheduler does. This module needs no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import attrs

MaxTextKind = Literal["cosine", "wsd"]
WsdStyle = Literal["linear", "cosine"]
MaxTextVariant = Literal["2026-02", "2026-01", "2025"]

MAXTEXT_VARIANTS: dict[str, str] = {
    "2026-02": (
        "current (commit 31015aa, 2026-02-05 on): warmup 0 -> lr over W updates (lr * k / W); "
        "cosine pct = (k - W) / (S - W - 1), so update S - 1 runs at the final lr"
    ),
    "2026-01": (
        "commits e886dd2 (2026-01-13, which added WSD) to 31015aa: warmup used W - 1 transition steps "
        "(lr * k / (W - 1), reaching lr one update early); cosine as 2026-02"
    ),
    "2025": (
        "before e886dd2: warmup lr * k / W; cosine pct = (k - W) / (S - W), reaching the final lr only "
        "at S; no WSD (the final fraction was named cosine_learning_rate_final_fraction)"
    ),
}
"""MaxText's three versions of create_learning_rate_schedule, by the month they took effect.
They differ by up to ~0.9% of the peak learning rate at some updates."""


class Schedule(Protocol):
    def __call__(self, count: int) -> float: ...


@attrs.frozen(kw_only=True)
class ConstantSchedule:
    """optax.constant_schedule(value)."""

    value: float

    def __call__(self, count: int) -> float:
        return float(self.value)


@attrs.frozen(kw_only=True)
class LinearSchedule:
    """optax.linear_schedule: polynomial_schedule with power 1.

    ``transition_steps <= 0`` gives the constant ``init_value`` and a negative
    ``transition_begin`` counts as 0, as in optax.
    """

    init_value: float
    end_value: float
    transition_steps: int
    transition_begin: int = 0

    def __call__(self, count: int) -> float:
        if self.transition_steps <= 0:
            return float(self.init_value)
        begin = max(self.transition_begin, 0)
        clipped = min(max(count - begin, 0), self.transition_steps)
        fraction = 1.0 - clipped / self.transition_steps
        # optax's arithmetic order: (init - end) * frac**power + end
        return (self.init_value - self.end_value) * fraction + self.end_value


@attrs.frozen(kw_only=True)
class CosineDecaySchedule:
    """optax.cosine_decay_schedule: init * ((1 - alpha) * (0.5 (1 + cos(pi min(k, D) / D)))**p + alpha)."""

    init_value: float
    decay_steps: int
    alpha: float = 0.0
    exponent: float = 1.0

    def __attrs_post_init__(self) -> None:
        if self.decay_steps <= 0:
            raise ValueError(f"cosine_decay_schedule needs decay_steps > 0 (got {self.decay_steps}), as optax does")

    def __call__(self, count: int) -> float:
        step = min(float(count), float(self.decay_steps))
        cosine = 0.5 * (1.0 + math.cos(math.pi * step / self.decay_steps))
        return self.init_value * ((1.0 - self.alpha) * cosine**self.exponent + self.alpha)


@attrs.frozen(kw_only=True)
class JoinedSchedule:
    """optax.join_schedules: piece ``i`` is read at ``k - boundaries[i - 1]`` from that boundary on.

    Like optax, a boundary beyond the last piece (``len(boundaries) == len(schedules)``) is ignored.
    """

    schedules: tuple[Any, ...]
    boundaries: tuple[int, ...]

    def __attrs_post_init__(self) -> None:
        if not self.schedules:
            raise ValueError("join_schedules needs at least one schedule")

    def __call__(self, count: int) -> float:
        value = self.schedules[0](count)
        for boundary, schedule in zip(self.boundaries, self.schedules[1:]):
            if count >= boundary:
                value = schedule(count - boundary)
        return float(value)


@attrs.frozen(kw_only=True)
class MaxTextCosine:
    """MaxText's ``make_cos_schedule(init_lr, final_lr, len_steps)``: init * a + final * (1 - a), a = (1 + cos(pi pct)) / 2.

    ``pct = k / (len_steps - 1)`` (1.0 when len_steps is 1) since 2026-01;
    ``pct = k / len_steps`` before (``legacy``).
    """

    init_lr: float
    final_lr: float
    len_steps: int
    legacy: bool = False

    def __call__(self, count: int) -> float:
        if self.legacy:
            pct = count / self.len_steps
        else:
            pct = count / (self.len_steps - 1) if self.len_steps > 1 else 1.0
        a = 0.5 * (math.cos(math.pi * pct) + 1.0)
        return self.init_lr * a + self.final_lr * (1.0 - a)


def constant_schedule(value: float) -> ConstantSchedule:
    return ConstantSchedule(value=value)


def linear_schedule(
    init_value: float, end_value: float, transition_steps: int, transition_begin: int = 0
) -> LinearSchedule:
    return LinearSchedule(
        init_value=init_value,
        end_value=end_value,
        transition_steps=transition_steps,
        transition_begin=transition_begin,
    )


def cosine_decay_schedule(
    init_value: float, decay_steps: int, alpha: float = 0.0, exponent: float = 1.0
) -> CosineDecaySchedule:
    return CosineDecaySchedule(init_value=init_value, decay_steps=decay_steps, alpha=alpha, exponent=exponent)


def join_schedules(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> JoinedSchedule:
    return JoinedSchedule(schedules=tuple(schedules), boundaries=tuple(boundaries))


def warmup_cosine_decay_schedule(
    init_value: float,
    peak_value: float,
    warmup_steps: int,
    decay_steps: int,
    end_value: float = 0.0,
    exponent: float = 1.0,
) -> JoinedSchedule:
    """optax.warmup_cosine_decay_schedule: linear init -> peak over warmup_steps, then cosine to end_value.

    ``decay_steps`` counts from 0 and includes the warmup (optax's meaning), so
    it must exceed ``warmup_steps``.
    """
    alpha = 0.0 if peak_value == 0.0 else end_value / peak_value
    return join_schedules(
        [
            linear_schedule(init_value, peak_value, warmup_steps),
            cosine_decay_schedule(peak_value, decay_steps - warmup_steps, alpha=alpha, exponent=exponent),
        ],
        [warmup_steps],
    )


def maxtext_schedule(
    *,
    kind: MaxTextKind,
    learning_rate: float,
    final_fraction: float,
    warmup_steps_fraction: float,
    schedule_steps: int,
    steps: int,
    wsd_decay_steps_fraction: float = 0.1,
    wsd_decay_style: WsdStyle = "linear",
    variant: MaxTextVariant = "2026-02",
) -> JoinedSchedule:
    """MaxText's create_learning_rate_schedule for one config.

    With S = ``schedule_steps`` (learning_rate_schedule_steps, already resolved
    from -1) and W = int(S x warmup_steps_fraction): warmup from 0, then cosine
    (or WSD: constant lr, then a linear or cosine decay over
    int(S x wsd_decay_steps_fraction) updates) to ``learning_rate x
    final_fraction``, then 0 from update S on when ``steps`` > S. Pieces are
    joined with optax.join_schedules exactly as MaxText joins them.
    """
    if variant not in MAXTEXT_VARIANTS:
        raise ValueError(f"unknown MaxText schedule variant {variant!r}; one of {', '.join(MAXTEXT_VARIANTS)}")
    if variant == "2025" and kind != "cosine":
        raise ValueError("MaxText's 2025 schedule has no WSD (added in 2026-01); use variant 2026-01 or 2026-02")
    lr = learning_rate
    final_lr = lr * final_fraction
    warmup = int(schedule_steps * warmup_steps_fraction)
    zero_tail = steps - schedule_steps
    pieces: list[Schedule] = []
    boundaries: list[int] = []
    if variant == "2025":
        # The warmup piece was always present (a constant 0 when W = 0, never read then).
        pieces.append(linear_schedule(0.0, lr, warmup))
        boundaries.append(warmup)
        cosine_steps = schedule_steps - warmup
        # With warmup_steps_fraction = 1 the cosine has no steps: MaxText's piece would divide by zero
        # (NaN in JAX) from update S on, where no update reads it (the zero tail, or the run's end). The
        # scheduler still asks for update S's lr after the last update, so the empty piece is left out.
        if cosine_steps > 0:
            pieces.append(MaxTextCosine(init_lr=lr, final_lr=final_lr, len_steps=cosine_steps, legacy=True))
            boundaries.append(warmup + cosine_steps)
    else:
        if warmup > 0:
            transition = warmup - 1 if variant == "2026-01" else warmup
            pieces.append(linear_schedule(0.0, lr, transition))
            boundaries.append(warmup)
        if kind == "cosine":
            cosine_steps = schedule_steps - warmup
            if cosine_steps > 0:
                pieces.append(MaxTextCosine(init_lr=lr, final_lr=final_lr, len_steps=cosine_steps))
                boundaries.append(warmup + cosine_steps)
        else:
            decay = int(schedule_steps * wsd_decay_steps_fraction)
            stable = schedule_steps - warmup - decay
            if stable > 0:
                pieces.append(constant_schedule(lr))
                boundaries.append(warmup + stable)
            if decay > 0:
                if wsd_decay_style == "linear":
                    pieces.append(linear_schedule(lr, final_lr, decay - 1))
                else:
                    pieces.append(MaxTextCosine(init_lr=lr, final_lr=final_lr, len_steps=decay))
                boundaries.append(warmup + stable + decay)
    if zero_tail > 0:
        pieces.append(constant_schedule(0.0))
        boundaries.append(schedule_steps)
    if not pieces:
        raise ValueError(f"MaxText schedule with learning_rate_schedule_steps = {schedule_steps} has no pieces")
    return join_schedules(pieces, boundaries)


class CountScheduler:
    """Sets each parameter group's ``lr`` to ``schedule(num_steps) x lr_mult`` and its ``weight_decay`` to
    ``weight_decay x wd_mult``; the drop-in for OptimizerParamScheduler.

    ``num_steps`` is the number of updates applied so far, so the update about
    to run uses ``schedule(num_steps)`` (optax's pre-increment count):
    construction applies ``schedule(0)``, and :meth:`step` (called by
    ``train_step`` after each applied update) advances and re-applies.

    Weight decay follows megatron's scheduler (``OptimizerParamScheduler.step``
    sets ``get_wd() x wd_mult`` on every group): megatron-core's parameter groups
    carry ``wd_mult`` 0 for biases and 1-D parameters and leave the decay itself
    to the scheduler, so a scheduler that set only the lr would decay them at
    the full rate. optax semantics' groups carry the same ``wd_mult`` (0 where
    the decay mask excludes a parameter). Re-applied after a checkpoint load,
    which brings back the saved groups' values.
    """

    def __init__(
        self, optimizer: Any, schedule: Callable[[int], float], *, weight_decay: float, num_steps: int = 0
    ) -> None:
        self.optimizer = optimizer
        self.schedule = schedule
        self.weight_decay = weight_decay
        self.num_steps = num_steps
        self._apply()

    def get_lr(self, param_group: dict[str, Any] | None = None) -> float:
        """The learning rate the next update uses for ``param_group`` (lr_mult applied)."""
        multiplier = 1.0 if param_group is None else float(param_group.get("lr_mult", 1.0))
        return float(self.schedule(self.num_steps)) * multiplier

    def get_wd(self, param_group: dict[str, Any]) -> float:
        """The weight decay of ``param_group``: megatron's constant decay times the group's wd_mult."""
        return self.weight_decay * float(param_group.get("wd_mult", 1.0))

    def step(self, increment: int = 1) -> None:
        """Count ``increment`` applied updates and set the learning rate for the next one."""
        self.num_steps += increment
        self._apply()

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.get_lr(group)
            group["weight_decay"] = self.get_wd(group)

    def state_dict(self) -> dict[str, Any]:
        return {"num_steps": self.num_steps, "schedule": repr(self.schedule), "weight_decay": self.weight_decay}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from a saved count. Given a saved schedule different from this one, refuse (ValueError);
        bridgec's checkpoints instead pass this run's schedule and report the change (a longer run may change it)."""
        saved = state_dict.get("schedule")
        if saved is not None and saved != repr(self.schedule):
            raise ValueError(
                "the checkpoint was written with a different learning-rate schedule:\n"
                f"  checkpoint: {saved}\n  this run:   {self.schedule!r}"
            )
        self.num_steps = int(state_dict["num_steps"])
        self._apply()
