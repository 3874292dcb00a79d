"""The checkpoint workarounds name megatron-core lines that still read as quoted."""

from __future__ import annotations

import importlib
import inspect

import pytest

from bridgec.runtime import checkpoint_compat

PINS = [(name, pin) for name, pins in checkpoint_compat.PINS.items() for pin in pins]


@pytest.mark.parametrize(("workaround", "pin"), PINS, ids=[f"{name}-{pin.line}" for name, pin in PINS])
def test_each_workaround_names_lines_that_still_exist(workaround: str, pin: checkpoint_compat.Pin) -> None:
    """If a megatron-core upgrade moves or changes a line a workaround answers, this fails and names it."""
    lines = inspect.getsource(importlib.import_module(pin.module)).splitlines()
    line = lines[pin.line - 1]
    assert pin.code in line, (
        f"{pin.module}:{pin.line} is now {line.strip()!r} ({workaround}); check the workaround and update "
        "runtime/checkpoint_compat.py"
    )


def test_every_workaround_is_pinned_and_exists() -> None:
    assert all(callable(getattr(checkpoint_compat, name)) for name in checkpoint_compat.PINS)
    public = {
        name
        for name, value in vars(checkpoint_compat).items()
        if inspect.isfunction(value) and value.__module__ == checkpoint_compat.__name__
    }
    assert public == set(checkpoint_compat.PINS)
