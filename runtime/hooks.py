"""The user's hook functions (forward_step, loss), loaded from the file the spec names.

A generated script binds each hook at import time to a :class:`Hook` and calls
``load()`` at the start of ``main()``, inside ``entry.run``: a hooks file that
moved, no longer parses, fails on import or lost the function becomes a
message and exit code HOOKS_ERROR, not a traceback.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
        return self.load()(*args, **kwargs)


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
        raise RunError(ExitCode.HOOKS_ERROR, f"{path}: hooks file not found (recompile after moving it)", every_rank=True)
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise RunError(ExitCode.HOOKS_ERROR, f"{path}: cannot be imported as Python", every_rank=True)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # noqa: BLE001 - whatever the user's module raises on import
        raise RunError(
            ExitCode.HOOKS_ERROR, f"{path}: importing the hooks file failed ({type(error).__name__}: {error})",
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
            f"the loss hook returned {got}; with [loss] reduction = \"{reduction}\" it must return {shape}",
        )
    metadata = result[-1]
    if not isinstance(metadata, dict) or LOSS_KEY not in metadata:
        raise RunError(
            ExitCode.HOOKS_ERROR,
            f"the loss hook's metadata must be a dict with {LOSS_KEY!r}: torch.stack([numerator, denominator]) "
            "(see bridgec.runtime.loss)",
        )
    return result
