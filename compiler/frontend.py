"""The compiler's front end: spec text -> Spec and every diagnostic (load, then validate).

This is what the commands call before anything else; it reads no files itself
(validation looks at data and hook files through ``context.files``).
"""

from __future__ import annotations

import attrs

from bridgec.compiler.errors import Diagnostic, sort_key
from bridgec.compiler.load import load
from bridgec.compiler.locate import LineIndex
from bridgec.compiler.mesh import MeshError, key_path
from bridgec.compiler.mesh import resolve as resolve_mesh
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
    """Load ``text`` (shown as ``filename``), resolve a JAX mesh to sizes, and validate.

    The returned spec carries the resolved ``[parallel]`` sizes. When the mesh
    itself is wrong, its problems are reported and the layout rules are not
    run (they would only repeat the mesh's problem in other words).
    """
    loaded = load(text, filename)
    if loaded.spec is None:
        return FrontendResult(None, loaded.index, loaded.diagnostics)
    spec, mesh_errors = resolve_mesh(loaded.spec, loaded.index.has)
    if mesh_errors:
        diagnostics = loaded.diagnostics + tuple(_mesh_diagnostic(e, loaded.index, filename) for e in mesh_errors)
        return FrontendResult(loaded.spec, loaded.index, tuple(sorted(diagnostics, key=sort_key)))
    diagnostics = loaded.diagnostics + validate(spec, loaded.index, context)
    return FrontendResult(spec, loaded.index, tuple(sorted(diagnostics, key=sort_key)))


def _mesh_diagnostic(error: MeshError, index: LineIndex, filename: str) -> Diagnostic:
    return Diagnostic(
        file=filename, line=index.line_of(key_path(error.path)), path=error.path, message=error.message, hint=error.hint
    )
