"""The compiler's front end: spec text -> Spec and every diagnostic (load, then validate).

This is what the commands call before anything else; it reads no files itself
(validation looks at data and hook files through ``context.files``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs

from bridgec.compiler.compose import Override, compose
from bridgec.compiler.errors import Diagnostic, sort_key
from bridgec.compiler.load import load_tables
from bridgec.compiler.locate import LineIndex
from bridgec.compiler.mesh import MeshError, key_path
from bridgec.compiler.mesh import resolve as resolve_mesh
from bridgec.compiler.rule_base import NotLoaded
from bridgec.compiler.rules_files import TokenizerSidecar, read_sidecar
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
    sha256: str = ""
    """The spec's identity (compose.Composed.sha256): its file's sha256, or that of its bases and overrides too."""


def read_spec(text: str, filename: str, context: SpecContext, overrides: Sequence[Override] = ()) -> FrontendResult:
    """Load ``text`` (shown as ``filename``) with the bases it extends and ``overrides``, resolve a JAX mesh to
    sizes, and validate.

    The returned spec carries the resolved ``[parallel]`` sizes. When the mesh
    itself is wrong, its problems are reported and the layout rules are not
    run (they would only repeat the mesh's problem in other words).
    """
    composed = compose(text, filename, context.spec_dir, context.files, overrides)
    if composed.raw is None:
        return FrontendResult(None, composed.index, composed.diagnostics, composed.sha256)
    loaded = load_tables(composed.raw, composed.index, filename)
    if loaded.spec is None:
        # All problems at once: the cross-field rules still check every field that did load.
        found = _check_partial(loaded.partial, loaded.index, filename, context) if loaded.partial else ()
        diagnostics = _vocab_from_data(loaded.diagnostics, loaded.partial, context) + found
        return FrontendResult(None, loaded.index, tuple(sorted(diagnostics, key=sort_key)), composed.sha256)
    spec, mesh_errors = resolve_mesh(loaded.spec, loaded.index.has)
    if mesh_errors:
        diagnostics = loaded.diagnostics + tuple(_mesh_diagnostic(e, loaded.index, filename) for e in mesh_errors)
        return FrontendResult(loaded.spec, loaded.index, tuple(sorted(diagnostics, key=sort_key)), composed.sha256)
    found = validate(spec, loaded.index, context)
    if spec.parallel.mesh is not None:
        found = tuple(_through_mesh(d) for d in found)
    diagnostics = loaded.diagnostics + found
    return FrontendResult(spec, loaded.index, tuple(sorted(diagnostics, key=sort_key)), composed.sha256)


def _check_partial(partial: Spec, index: LineIndex, filename: str, context: SpecContext) -> tuple[Diagnostic, ...]:
    """The rules on a partly loaded spec (see validate); nothing when its mesh cannot be resolved without them."""
    try:
        spec, mesh_errors = resolve_mesh(partial, index.has)
    except NotLoaded:
        return ()
    if mesh_errors:
        return tuple(_mesh_diagnostic(e, index, filename) for e in mesh_errors)
    found = validate(spec, index, context)
    return tuple(_through_mesh(d) for d in found) if spec.parallel.mesh is not None else found


def _vocab_from_data(
    diagnostics: tuple[Diagnostic, ...], partial: Spec | None, context: SpecContext
) -> tuple[Diagnostic, ...]:
    """A missing vocab_size's hint gives the value the data's tokenizer file (PREFIX.json) knows, when there is one."""
    missing = [d for d in diagnostics if d.path == "$.model.vocab_size" and d.message.startswith("missing required")]
    if not missing or partial is None:
        return diagnostics
    try:
        if partial.data.kind != "indexed" or not partial.data.sources:
            return diagnostics
        prefix = partial.data.sources[0].prefix
        sidecar = read_sidecar(context, prefix)
    except NotLoaded:
        return diagnostics
    if not isinstance(sidecar, TokenizerSidecar):
        return diagnostics
    hint = (
        f"add vocab_size = {sidecar.vocab_size} under [model] (the vocabulary of {prefix}.json, the data's tokenizer)"
    )
    return tuple(attrs.evolve(d, hint=hint) if d in missing else d for d in diagnostics)


MESH_AXES_OF = {
    "tensor": "the mesh's tensor x tensor_sequence",
    "pipeline": "the mesh's stage axis",
    "context": "the mesh's context x context_usp_ulysses",
    "expert": "the mesh's expert axis",
    "sequence_parallel": "on when the mesh's tensor_sequence axis is above 1",
    "distributed_optimizer": "on when the mesh's fsdp axis is above 1",
}
"""Each ``[parallel]`` size a mesh decides, and the mesh axis that sets it."""

_MENTIONS = re.compile(r"parallel\.(" + "|".join(MESH_AXES_OF) + r")\b")


def _through_mesh(diagnostic: Diagnostic) -> Diagnostic:
    """A layout diagnostic in a mesh spec says which mesh axis to change: the ``[parallel]`` size it names is not written.

    Hints like "tensor = 2" would otherwise ask for a key the mesh forbids.
    """
    named = dict.fromkeys(_MENTIONS.findall(f"{diagnostic.path} {diagnostic.message}"))
    if not named:
        return diagnostic
    axes = ", ".join(f"parallel.{key} is {MESH_AXES_OF[key]}" for key in named)
    note = f"with a mesh, {axes}: change it there"
    return attrs.evolve(diagnostic, hint=f"{diagnostic.hint}; {note}" if diagnostic.hint else note)


def _mesh_diagnostic(error: MeshError, index: LineIndex, filename: str) -> Diagnostic:
    path = key_path(error.path)
    file, line = index.file_of(path, filename), index.line_of(path)
    return Diagnostic(file=file, line=line, path=error.path, message=error.message, hint=error.hint)
