"""The compiler's front end: spec text -> Spec and every diagnostic (load, then validate).

This is what the commands call before anything else; it reads no files itself
(validation looks at data and hook files through ``context.files``).
"""

from __future__ import annotations

import attrs

from bridgec.compiler.errors import Diagnostic, sort_key
from bridgec.compiler.load import load
from bridgec.compiler.locate import LineIndex
from bridgec.compiler.spec import Spec
from bridgec.compiler.validate import SpecContext, validate


@attrs.frozen
class FrontendResult:
    spec: Spec | None
    """The spec when it loaded (it may still have validation errors: check ``diagnostics``)."""
    index: LineIndex
    """Key path -> line, for diagnostics of later stages."""
    diagnostics: tuple[Diagnostic, ...]
    """Errors and warnings, sorted by line then path."""


def read_spec(text: str, filename: str, context: SpecContext) -> FrontendResult:
    """Load ``text`` (shown as ``filename``) and, when it is a Spec, validate it."""
    loaded = load(text, filename)
    if loaded.spec is None:
        return FrontendResult(None, loaded.index, loaded.diagnostics)
    diagnostics = loaded.diagnostics + validate(loaded.spec, loaded.index, context)
    return FrontendResult(loaded.spec, loaded.index, tuple(sorted(diagnostics, key=sort_key)))
