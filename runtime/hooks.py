"""The user's hook functions (forward_step, loss), loaded from the file the spec names.

A generated script binds each hook at import time to a :class:`Hook` and calls
``load()`` at the start of ``main()``, inside ``entry.run``: a hooks file that
moved, no longer parses, fails on import or lost the function becomes a
message and exit code HOOKS_ERROR, not a traceback. So does an exception raised
inside a hook (or inside the loss function a forward_step hook returns): the
message names the hook's lines it went through.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from megatron.core import parallel_state

from bridgec.runtime.entry import peer_failure
from bridgec.runtime.errors import ExitCode, RunError
from bridgec.runtime.loss import LOSS_KEY


class Hook:
    """A top-level function of a hooks file, loaded on :meth:`load` (or on first call)."""

    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self.name = name
        self._function: Callable[..., Any] | None = None

    def load(self) -> Callable[..., Any]:
        """Import the file (once) and return the function; RunError(HOOKS_ERROR) when that fails."""
        if self._function is None:
            self._function = load_function(self.path, self.name)
        return self._function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = guarded(self.path, self.name, self.load(), *args, **kwargs)
        if isinstance(result, tuple) and len(result) == 2 and callable(result[1]):
            # A forward_step's loss function: megatron-core calls it later, outside this call.
            label = f"the loss function {self.name} returned"
            return result[0], functools.partial(guarded, self.path, label, result[1])
        return result


def guarded(path: Path, name: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a function of the hooks file; an exception in it becomes RunError(HOOKS_ERROR) naming its line.

    A RunError or a lost peer passes through (they have their own messages).
    Under tensor parallelism the message also says how logits are split,
    the usual reason a hook that works at tensor = 1 breaks at tensor = 2.
    """
    try:
        return function(*args, **kwargs)
    except RunError:
        raise
    except Exception as error:  # noqa: BLE001 - whatever the user's code raises
        if peer_failure(error):
            raise
        raise RunError(ExitCode.HOOKS_ERROR, _failure(path, name, error)) from None


def _failure(path: Path, name: str, error: Exception) -> str:
    text = str(error).strip().splitlines()
    where = [frame for frame in traceback.extract_tb(error.__traceback__) if _same_file(frame.filename, path)]
    lines = [f"{path.name}:{frame.lineno} in {frame.name}: {(frame.line or '').strip()}" for frame in where]
    message = f"{name} from {path} failed: {type(error).__name__}" + (f": {text[0]}" if text else "")
    if lines:
        message += "\n  " + "\n  ".join(lines)
    tensor = (
        parallel_state.get_tensor_model_parallel_world_size() if parallel_state.model_parallel_is_initialized() else 1
    )
    if tensor > 1:
        message += (
            f"\n  with tensor = {tensor} the logits a model returns without labels are split over the vocabulary "
            f"(each rank holds 1/{tensor} of the columns): compute the loss with "
            "megatron.core.tensor_parallel.vocab_parallel_cross_entropy(logits, labels), not torch's cross entropy "
            "(README: Writing hooks)"
        )
    return message


def _same_file(filename: str, path: Path) -> bool:
    try:
        return Path(filename).resolve() == path.resolve()
    except OSError:
        return False


def load_function(path: Path, name: str) -> Callable[..., Any]:
    """Import ``path`` as module ``bridgec_hooks.<stem>`` and return its top-level function ``name``.

    The compiler already checked with libcst that the function exists with a
    compatible signature; this fails cleanly if the file changed since (every
    rank loads the same file, so the message is printed once). The
    private module name keeps a hooks file called, say, ``random.py`` from
    shadowing the standard library.
    """
    module_name = f"bridgec_hooks.{path.stem}"
    if not path.is_file():
        raise RunError(
            ExitCode.HOOKS_ERROR, f"{path}: hooks file not found (recompile after moving it)", every_rank=True
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
            f"{path}: importing the hooks file failed ({type(error).__name__}: {error})",
            every_rank=True,
        ) from None
    sys.modules[module_name] = module
    function = module.__dict__.get(name)
    if not callable(function):
        raise RunError(
            ExitCode.HOOKS_ERROR, f"{path}: no function {name!r} (recompile after changing hooks)", every_rank=True
        )
    return function


def checked_loss(
    function: Callable[..., Any], loss_mask: Any, output_tensor: Any, *, token_aware: bool
) -> tuple[Any, ...]:
    """Call the user's loss function and check it returns what the spec's loss reduction expects.

    reduction = "per_token" (token_aware) needs ``(loss_sum, num_tokens, metadata)``:
    megatron-core then sums gradients and divides by the global token count; a
    ``(loss, metadata)`` pair there would leave gradients scaled by the
    data-parallel size. "per_microbatch" needs ``(loss_mean, metadata)``. The
    metadata carries ``{"lm loss": torch.stack([numerator, denominator])}``
    (runtime.loss), which the step's reduction adds up; every other entry is
    reduced the same way and logged (runtime.loss.metadata_pairs).
    """
    result = function(loss_mask, output_tensor)
    shape = "(loss_sum, num_tokens, metadata)" if token_aware else "(loss_mean, metadata)"
    size = 3 if token_aware else 2
    reduction = "per_token" if token_aware else "per_microbatch"
    if not isinstance(result, tuple) or len(result) != size:
        got = f"a {len(result)}-tuple" if isinstance(result, tuple) else type(result).__name__
        raise RunError(
            ExitCode.HOOKS_ERROR,
            f'the loss hook returned {got}; with [loss] reduction = "{reduction}" it must return {shape}',
        )
    metadata = result[-1]
    if not isinstance(metadata, dict) or LOSS_KEY not in metadata:
        raise RunError(
            ExitCode.HOOKS_ERROR,
            f"the loss hook's metadata must be a dict with {LOSS_KEY!r}: torch.stack([numerator, denominator]) "
            "(see bridgec.runtime.loss)",
        )
    return result
