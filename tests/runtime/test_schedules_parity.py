"""Every schedule against optax (and MaxText's schedule built from optax, as MaxText builds it), 1,000 updates.

The references run in JAX with x64 on, so the comparison measures the formula,
not float32 rounding (which alone is ~6e-8 relative per operation). The
MaxText references restate create_learning_rate_schedule
(src/maxtext/utils/maxtext_utils.py) for each historical variant with the same
optax calls MaxText makes; the commit each variant comes from is named.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bridgec.runtime import schedules
from bridgec.runtime.schedules import CountScheduler

STEPS = 1000
TOLERANCE = 1e-7


def _relative_error(ours, reference) -> float:
    ours = np.asarray(ours, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    denominator = np.where(reference == 0.0, 1.0, np.abs(reference))
    # Where the reference is exactly 0 (first update, zero tail) ours must be exactly 0 too.
    return float(np.max(np.abs(ours - reference) / denominator))


def _compare(ours, reference_fn, steps: int = STEPS) -> float:
    counts = np.arange(steps)
    with jax.enable_x64(True):
        reference = np.asarray(reference_fn(jnp.arange(steps)), dtype=np.float64)
    mine = [ours(int(k)) for k in counts]
    return _relative_error(mine, reference)


def _maxtext_reference(
    *,
    kind: str,
    lr: float,
    final_fraction: float,
    warmup_fraction: float,
    schedule_steps: int,
    steps: int,
    decay_fraction: float = 0.1,
    decay_style: str = "linear",
    variant: str,
):
    """MaxText's create_learning_rate_schedule, per variant, from optax primitives."""

    def cos(init_lr, final_lr, len_steps, legacy):
        def schedule(step):
            if legacy:  # before e886dd2
                pct = step / len_steps
            else:
                pct = step / (len_steps - 1) if len_steps > 1 else 1.0
            a = 0.5 * (jnp.cos(jnp.pi * pct) + 1)
            return init_lr * a + final_lr * (1 - a)

        return schedule

    final_lr = lr * final_fraction
    warmup = int(schedule_steps * warmup_fraction)
    zero_steps = steps - schedule_steps
    pieces, boundaries = [], []
    if variant == "2025":
        cos_steps = schedule_steps - warmup
        pieces = [optax.linear_schedule(0.0, lr, warmup), cos(lr, final_lr, cos_steps, True)]
        boundaries = [warmup, warmup + cos_steps]
        if zero_steps > 0:
            pieces.append(optax.constant_schedule(0.0))
            boundaries.append(warmup + cos_steps + zero_steps)
        return optax.join_schedules(pieces, boundaries)
    if warmup > 0:
        transition = warmup - 1 if variant == "2026-01" else warmup  # 31015aa restored `warmup`
        pieces.append(optax.linear_schedule(0.0, lr, transition))
        boundaries.append(warmup)
    if kind == "cosine":
        cos_steps = schedule_steps - warmup
        if cos_steps > 0:
            pieces.append(cos(lr, final_lr, cos_steps, False))
            boundaries.append(warmup + cos_steps)
    else:
        decay = int(schedule_steps * decay_fraction)
        stable = schedule_steps - warmup - decay
        if stable > 0:
            pieces.append(optax.constant_schedule(lr))
            boundaries.append(warmup + stable)
        if decay > 0:
            if decay_style == "linear":
                pieces.append(optax.linear_schedule(lr, final_lr, decay - 1))
            else:
                pieces.append(cos(lr, final_lr, decay, False))
            boundaries.append(warmup + stable + decay)
    if zero_steps > 0:
        pieces.append(optax.constant_schedule(0.0))
        boundaries.append(schedule_steps)
    return optax.join_schedules(pieces, boundaries)


OPTAX_CASES = {
    "linear": (
        schedules.linear_schedule(1e-4, 3e-3, 700, transition_begin=50),
        optax.linear_schedule(1e-4, 3e-3, 700, transition_begin=50),
    ),
    "linear_zero_steps": (schedules.linear_schedule(2e-3, 0.0, 0), optax.linear_schedule(2e-3, 0.0, 0)),
    "cosine_decay": (
        schedules.cosine_decay_schedule(3e-4, 800, alpha=0.1, exponent=1.5),
        optax.cosine_decay_schedule(3e-4, 800, alpha=0.1, exponent=1.5),
    ),
    "warmup_cosine_decay": (
        schedules.warmup_cosine_decay_schedule(0.0, 3e-4, 100, 900, end_value=3e-5),
        optax.warmup_cosine_decay_schedule(0.0, 3e-4, 100, 900, end_value=3e-5),
    ),
    "join_schedules": (
        schedules.join_schedules(
            [
                schedules.linear_schedule(0.0, 1e-3, 100),
                schedules.constant_schedule(1e-3),
                schedules.cosine_decay_schedule(1e-3, 400, alpha=0.05),
            ],
            [100, 500],
        ),
        optax.join_schedules(
            [
                optax.linear_schedule(0.0, 1e-3, 100),
                optax.constant_schedule(1e-3),
                optax.cosine_decay_schedule(1e-3, 400, alpha=0.05),
            ],
            [100, 500],
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(OPTAX_CASES))
def test_optax_schedules_match_optax_at_every_update(name: str) -> None:
    ours, reference = OPTAX_CASES[name]
    assert _compare(ours, reference) <= TOLERANCE


MAXTEXT_CASES = [
    # (kind, variant, schedule_steps, decay_style): steps is always 1,000, so S < 1,000 adds the zero tail.
    ("cosine", "2026-02", 1000, "linear"),
    ("cosine", "2026-02", 800, "linear"),
    ("cosine", "2026-01", 800, "linear"),
    ("cosine", "2025", 800, "linear"),
    ("cosine", "2025", 1000, "linear"),
    ("wsd", "2026-02", 900, "linear"),
    ("wsd", "2026-02", 900, "cosine"),
    ("wsd", "2026-01", 1000, "linear"),
    ("wsd", "2026-01", 900, "cosine"),
]


@pytest.mark.parametrize(("kind", "variant", "schedule_steps", "style"), MAXTEXT_CASES)
def test_maxtext_schedules_match_maxtext_at_every_update(
    kind: str, variant: str, schedule_steps: int, style: str
) -> None:
    settings = dict(
        kind=kind,
        final_fraction=0.1,
        warmup_fraction=0.1,
        schedule_steps=schedule_steps,
        steps=STEPS,
        decay_fraction=0.2,
        decay_style=style,
        variant=variant,
    )
    reference = _maxtext_reference(lr=3e-4, **settings)
    ours = schedules.maxtext_schedule(
        kind=kind,
        learning_rate=3e-4,
        final_fraction=0.1,
        warmup_steps_fraction=0.1,
        schedule_steps=schedule_steps,
        steps=STEPS,
        wsd_decay_steps_fraction=0.2,
        wsd_decay_style=style,
        variant=variant,
    )
    assert _compare(ours, reference) <= TOLERANCE
    assert ours(0) == 0.0, "MaxText's first update runs at lr 0"
    if schedule_steps < STEPS:
        assert all(ours(k) == 0.0 for k in range(schedule_steps, STEPS)), "zero tail after learning_rate_schedule_steps"


@pytest.mark.parametrize(("schedule_steps", "steps"), [(100, 100), (80, 100)])
def test_maxtext_2025_with_all_warmup_matches_maxtext_and_stays_finite(schedule_steps: int, steps: int) -> None:
    """warmup_steps_fraction = 1: the 2025 cosine piece has no steps (it used to divide by zero)."""
    settings = dict(kind="cosine", final_fraction=0.1, schedule_steps=schedule_steps, steps=steps, variant="2025")
    reference = _maxtext_reference(lr=3e-4, warmup_fraction=1.0, **settings)
    ours = schedules.maxtext_schedule(learning_rate=3e-4, warmup_steps_fraction=1.0, **settings)
    assert _compare(ours, reference, steps) <= TOLERANCE
    assert np.isfinite(ours(steps))  # CountScheduler reads the lr of update `steps` after the last update


@pytest.mark.parametrize("variant", ["2026-02", "2026-01", "2025"])
@pytest.mark.parametrize("kind", ["cosine", "wsd"])
def test_every_maxtext_schedule_is_finite_at_every_count_the_scheduler_reads(kind: str, variant: str) -> None:
    if kind == "wsd" and variant == "2025":
        return  # no WSD in 2025 (test_wsd_did_not_exist_in_2025)
    for warmup in (0.0, 0.1, 0.5, 1.0):
        for decay in (0.0, 0.1, 0.5, 1.0 - warmup):
            for schedule_steps in (1, 2, 3, 10):
                for steps in (schedule_steps, schedule_steps + 2):
                    ours = schedules.maxtext_schedule(
                        kind=kind,
                        learning_rate=1.0,
                        final_fraction=0.1,
                        warmup_steps_fraction=warmup,
                        schedule_steps=schedule_steps,
                        steps=steps,
                        wsd_decay_steps_fraction=decay,
                        variant=variant,
                    )
                    values = [ours(count) for count in range(steps + 1)]
                    assert all(np.isfinite(values)), (warmup, decay, schedule_steps, steps, values)


def test_maxtext_variants_differ_where_the_history_says() -> None:
    common = dict(
        kind="cosine", learning_rate=1.0, final_fraction=0.1, warmup_steps_fraction=0.1, schedule_steps=100, steps=100
    )
    current = schedules.maxtext_schedule(variant="2026-02", **common)
    january = schedules.maxtext_schedule(variant="2026-01", **common)
    legacy = schedules.maxtext_schedule(variant="2025", **common)
    assert current(9) == pytest.approx(0.9) and january(9) == pytest.approx(1.0)  # W - 1 transition steps
    assert current(99) == pytest.approx(0.1) and legacy(99) > 0.1  # legacy reaches the final lr only at S
    largest = max(abs(current(k) - legacy(k)) for k in range(100))
    assert 0.005 < largest < 0.01  # "up to ~0.9% of peak"


def test_wsd_did_not_exist_in_2025() -> None:
    with pytest.raises(ValueError, match="no WSD"):
        schedules.maxtext_schedule(
            kind="wsd",
            learning_rate=1.0,
            final_fraction=0.1,
            warmup_steps_fraction=0.1,
            schedule_steps=100,
            steps=100,
            variant="2025",
        )


class _Groups:
    """Anything with param_groups is enough for the scheduler (megatron's ChainedOptimizer has them)."""

    def __init__(self) -> None:
        self.param_groups = [{"lr": 123.0}, {"lr": 123.0, "lr_mult": 0.5}]


def test_scheduler_applies_the_pre_increment_count() -> None:
    schedule = schedules.linear_schedule(0.0, 1.0, 10)
    groups = _Groups()
    scheduler = CountScheduler(groups, schedule, weight_decay=0.1)
    seen = []
    for _ in range(3):
        seen.append(groups.param_groups[0]["lr"])  # what update k runs with
        scheduler.step(increment=1)
    assert seen == pytest.approx([0.0, 0.1, 0.2], abs=1e-15)
    assert groups.param_groups[1]["lr"] == pytest.approx(0.15)


def test_scheduler_state_round_trip_and_mismatch() -> None:
    schedule = schedules.linear_schedule(0.0, 1.0, 10)
    scheduler = CountScheduler(_Groups(), schedule, weight_decay=0.1)
    scheduler.step(4)
    state = scheduler.state_dict()
    restored = CountScheduler(_Groups(), schedule, weight_decay=0.1)
    restored.load_state_dict(state)
    assert restored.num_steps == 4 and restored.optimizer.param_groups[0]["lr"] == pytest.approx(0.4)
    other = CountScheduler(_Groups(), schedules.linear_schedule(0.0, 2.0, 10), weight_decay=0.1)
    with pytest.raises(ValueError, match="different learning-rate schedule"):
        other.load_state_dict(state)
