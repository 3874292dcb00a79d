"""Load a user's hook function (forward_step or loss) from the file the spec names."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridgec.runtime.errors import ExitCode, RunError


def load_function(path: Path, name: str) -> Callable[..., Any]:
    """Import ``path`` as a module (by its file stem) and return its top-level function ``name``.

    The compiler already checked with libcst that the function exists with a
    compatible signature; this fails cleanly if the file changed since.
    """
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None or not path.is_file():
        raise RunError(ExitCode.LAUNCH_MISMATCH, f"{path}: hooks file not found (recompile after moving it)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    function = module.__dict__.get(name)
    if not callable(function):
        raise RunError(ExitCode.LAUNCH_MISMATCH, f"{path}: no function {name!r} (recompile after changing hooks)")
    return function
