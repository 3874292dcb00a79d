"""User callback classes, called at training events (``[hooks] callbacks``).

The generated script calls :func:`load_callbacks` at the start of ``main()``:
each ``"file.py:Class"`` is imported from the spec's folder and the class is
built with no arguments, on every rank. The loop then calls
:meth:`Callbacks.fire` at each event (``runtime.events``); every callback that
defines the event's method gets one frozen :class:`CallbackContext`.

``user_state`` is one dict per rank, shared by all callbacks of that rank. The
loop snapshots it into every checkpoint (each rank's own, as its RNG states are)
and restores it on resume, before ``on_checkpoint_load`` and ``on_train_start``.

A callback that raises ends the run with exit code HOOKS_ERROR (9): the message
names the callback and the event and shows the traceback from the callback's
method down (the user's code, not the loop's). The loop then takes no further
collective step (the other ranks may not have raised), saves nothing, and leaves
the last published checkpoint as the one a resume loads.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from bridgec.runtime.errors import ExitCode, RunError
from bridgec.runtime.events import EVENTS


class CallbackError(RunError):
    """A callback raised: exit code HOOKS_ERROR, the message names it and shows its traceback."""

    def __init__(self, entry: str, message: str) -> None:
        super().__init__(ExitCode.HOOKS_ERROR, message)
        self.entry = entry
        """The callback that raised, as the spec names it."""


@attrs.frozen(kw_only=True)
class CallbackContext:
    """What a callback's method receives; the same object is passed to every callback of one event."""

    event: str
    """The event's name, e.g. ``on_train_step_end``."""
    step: int
    """on_train_step_start/end: the step being run (1-based). on_eval_*: the step after which it evaluates.
    on_checkpoint_save/load: the checkpoint's step. on_train_start, on_train_end, on_exception: the last step
    completed (0 before the first)."""
    rank: int
    """This process's global rank (callbacks fire on every rank)."""
    holds_loss: bool
    """Whether this rank logs the loss (last pipeline stage, first tensor/context/data rank)."""
    user_state: dict[str, Any]
    """This rank's state for callbacks: mutable, shared by all callbacks, saved in checkpoints, restored on resume."""
    losses: Mapping[str, float] = attrs.field(factory=dict)
    """on_train_step_end: the step's loss components ("lm loss" and the loss function's other metadata), reduced
    over microbatches and data-parallel ranks, the same on every rank. on_eval_end: {"lm loss": the validation loss}."""
    grad_norm: float | None = None
    """on_train_step_end: the global gradient norm before clipping."""
    learning_rate: float | None = None
    """on_train_step_end: the learning rate this step used."""
    skipped: bool | None = None
    """on_train_step_end: the update was skipped (non-finite gradients, or an fp16 loss-scale overflow)."""
    timers: Mapping[str, float] = attrs.field(factory=dict)
    """on_train_step_end: seconds of this step's phases on this rank: data, forward_backward, optimizer, step."""
    checkpoint_dir: Path | None = None
    """on_checkpoint_save/load: the checkpoint folder (an asynchronous save is still being written at
    on_checkpoint_save: it is published later)."""
    error: BaseException | None = None
    """on_exception: what ended the run."""


@attrs.frozen(kw_only=True)
class Callback:
    """One loaded callback: its spec entry, the instance, and the events its class defines."""

    entry: str
    """As the spec writes it: ``file.py:Class``."""
    path: Path
    instance: object
    events: frozenset[str]


class Callbacks:
    """Every callback of the run on this rank, in the spec's order, and this rank's ``user_state``."""

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks = tuple(callbacks)
        self.user_state: dict[str, Any] = {}

    def fire(self, event: str, *, step: int, rank: int, holds_loss: bool, **fields: Any) -> None:
        """Call ``event`` on every callback that defines it; RunError(HOOKS_ERROR) when one raises."""
        if event not in EVENTS:
            raise ValueError(f"unknown callback event {event!r}")
        listeners = [callback for callback in self.callbacks if event in callback.events]
        failed = fields.get("error")
        if isinstance(failed, CallbackError):
            # The callback that raised is not told about its own exception; the others are.
            listeners = [callback for callback in listeners if callback.entry != failed.entry]
        if not listeners:
            return
        context = CallbackContext(
            event=event, step=step, rank=rank, holds_loss=holds_loss, user_state=self.user_state, **fields
        )
        for callback in listeners:
            method = getattr(callback.instance, event)
            try:
                method(context)
            except Exception as error:  # noqa: BLE001 - whatever the user's code raises
                raise CallbackError(callback.entry, failure_message(callback, event, step, error)) from None

    def snapshot(self) -> dict[str, Any]:
        """A deep copy of ``user_state`` for a checkpoint: later changes (an asynchronous save) do not leak in."""
        return copy.deepcopy(self.user_state)

    def restore(self, state: Mapping[str, Any]) -> None:
        """Replace ``user_state``'s contents with a checkpoint's (the dict object stays the same)."""
        self.user_state.clear()
        self.user_state.update(state)


def failure_message(callback: Callback, event: str, step: int, error: BaseException) -> str:
    """The callback, the event, the error, and the traceback from the callback's method down."""
    frames = traceback.extract_tb(error.__traceback__)[1:]  # the first frame is Callbacks.fire
    text = str(error).strip()
    lines = [
        f"callback {callback.entry} raised in {event} (step {step}): {type(error).__name__}"
        + (f": {text.splitlines()[0]}" if text else ""),
        "  Traceback (your code, most recent call last):",
        *("  " + line.rstrip("\n") for line in traceback.format_list(frames)),
        f"  {type(error).__name__}" + (f": {text}" if text else ""),
    ]
    return "\n".join(lines)


def load_callbacks(spec_dir: Path, entries: Sequence[str]) -> Callbacks:
    """Import each ``file.py:Class`` (relative to ``spec_dir``) and build the class with no arguments.

    The compiler checked the files and classes; this fails cleanly if one changed
    since (RunError(HOOKS_ERROR), printed once: every rank loads the same files).
    """
    loaded = []
    for entry in entries:
        file, _, name = entry.rpartition(":")
        path = spec_dir / file
        module = _import(path, entry)
        cls = module.__dict__.get(name)
        if not isinstance(cls, type):
            raise RunError(
                ExitCode.HOOKS_ERROR, f"{path}: no class {name!r} (recompile after changing callbacks)", every_rank=True
            )
        try:
            instance = cls()
        except Exception as error:  # noqa: BLE001 - whatever the user's __init__ raises
            callback = Callback(entry=entry, path=path, instance=cls, events=frozenset())
            raise RunError(
                ExitCode.HOOKS_ERROR, failure_message(callback, "__init__", 0, error), every_rank=True
            ) from None
        # Which events the class (or a base class) defines, looked up on the class: an instance attribute
        # named like an event is data, not a handler.
        events = frozenset(event for event in EVENTS if any(event in k.__dict__ for k in cls.__mro__))
        loaded.append(Callback(entry=entry, path=path, instance=instance, events=events))
    return Callbacks(loaded)


def _import(path: Path, entry: str) -> Any:
    # A private module name, so a callbacks file named like a library does not replace it in sys.modules.
    module_name = f"bridgec_callbacks.{path.stem}"
    if module_name in sys.modules and Path(sys.modules[module_name].__file__ or "") == path:
        return sys.modules[module_name]
    if not path.is_file():
        raise RunError(
            ExitCode.HOOKS_ERROR, f"{path}: callbacks file not found (recompile after moving it)", every_rank=True
        )
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise RunError(ExitCode.HOOKS_ERROR, f"{path}: cannot be imported as Python", every_rank=True)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # noqa: BLE001 - whatever the user's module raises on import
        raise RunError(
            ExitCode.HOOKS_ERROR,
            f"{path}: importing the callbacks file for {entry} failed ({type(error).__name__}: {error})",
            every_rank=True,
        ) from None
    sys.modules[module_name] = module
    return module
