"""runtime.callbacks: loading the classes, calling them, and what a failure says (in-process, no launch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridgec.runtime.callbacks import CallbackError, load_callbacks
from bridgec.runtime.errors import ExitCode, RunError
from bridgec.runtime.events import EVENTS

SOURCE = """
class Base:
    def on_train_end(self, context):
        context.user_state["ended"] = context.step


class Counter(Base):
    def __init__(self):
        self.on_eval_end = "data, not a handler"

    def on_train_step_end(self, context):
        context.user_state["last"] = (context.step, context.losses["lm loss"])
        if context.step == 3:
            self._fail(context.step)

    def _fail(self, step):
        raise KeyError(f"step {step}")

    def on_exception(self, context):
        context.user_state["counter heard"] = True


class Listener:
    def on_exception(self, context):
        context.user_state["heard"] = type(context.error).__name__


class Broken:
    def __init__(self):
        raise RuntimeError("no endpoint")
"""


def _write(folder: Path) -> Path:
    (folder / "cbs.py").write_text(SOURCE, encoding="utf-8")
    return folder


def test_events_reach_the_methods_a_class_defines_or_inherits(tmp_path: Path) -> None:
    callbacks = load_callbacks(_write(tmp_path), ["cbs.py:Counter", "cbs.py:Listener"])
    counter, listener = callbacks.callbacks
    assert counter.events == {
        "on_train_step_end",
        "on_train_end",
        "on_exception",
    }  # an attribute named like an event is not one
    assert listener.events == {"on_exception"}
    callbacks.fire("on_train_step_end", step=1, rank=0, holds_loss=True, losses={"lm loss": 2.5})
    callbacks.fire("on_train_end", step=1, rank=0, holds_loss=True)
    callbacks.fire("on_eval_start", step=1, rank=0, holds_loss=True)  # nobody listens: nothing happens
    assert callbacks.user_state == {"last": (1, 2.5), "ended": 1}


def test_a_raising_callback_names_itself_the_event_and_its_own_frames(tmp_path: Path) -> None:
    callbacks = load_callbacks(_write(tmp_path), ["cbs.py:Counter", "cbs.py:Listener"])
    with pytest.raises(CallbackError) as raised:
        callbacks.fire("on_train_step_end", step=3, rank=0, holds_loss=True, losses={"lm loss": 1.0})
    error = raised.value
    assert error.code == ExitCode.HOOKS_ERROR and error.entry == "cbs.py:Counter"
    lines = error.message.splitlines()
    assert lines[0] == "callback cbs.py:Counter raised in on_train_step_end (step 3): KeyError: 'step 3'"
    assert lines[1] == "  Traceback (your code, most recent call last):"
    assert [line.strip() for line in lines[2:] if line.strip().startswith("File")] == [
        f'File "{tmp_path / "cbs.py"}", line 14, in on_train_step_end',
        f'File "{tmp_path / "cbs.py"}", line 17, in _fail',
    ]
    assert lines[-1] == "  KeyError: 'step 3'"
    # The others hear of it; the callback that raised does not.
    callbacks.fire("on_exception", step=3, rank=0, holds_loss=True, error=error)
    assert callbacks.user_state["heard"] == "CallbackError" and "counter heard" not in callbacks.user_state


def test_user_state_snapshots_are_copies_and_restore_keeps_the_dict(tmp_path: Path) -> None:
    callbacks = load_callbacks(_write(tmp_path), ["cbs.py:Counter"])
    state = callbacks.user_state
    state["items"] = [1]
    snapshot = callbacks.snapshot()
    state["items"].append(2)
    assert snapshot == {"items": [1]}
    callbacks.restore(snapshot)
    assert callbacks.user_state is state and state == {"items": [1]}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("gone.py:Counter", "gone.py: callbacks file not found (recompile after moving it)"),
        ("cbs.py:Missing", "cbs.py: no class 'Missing' (recompile after changing callbacks)"),
        ("cbs.py:Broken", "callback cbs.py:Broken raised in __init__ (step 0): RuntimeError: no endpoint"),
    ],
)
def test_loading_fails_with_a_message(tmp_path: Path, entry: str, message: str) -> None:
    with pytest.raises(RunError) as raised:
        load_callbacks(_write(tmp_path), [entry])
    assert raised.value.code == ExitCode.HOOKS_ERROR and raised.value.every_rank
    assert raised.value.message.splitlines()[0].endswith(message)


def test_an_unknown_event_is_a_bug_in_the_loop(tmp_path: Path) -> None:
    callbacks = load_callbacks(_write(tmp_path), ["cbs.py:Counter"])
    with pytest.raises(ValueError, match="unknown callback event 'on_trian_step_end'"):
        callbacks.fire("on_trian_step_end", step=1, rank=0, holds_loss=True)
    assert "on_train_step_end" in EVENTS
