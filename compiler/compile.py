"""compile: spec text -> generated script text, through every stage. Pure but for a file view.

load -> validate (``frontend.read_spec``) -> lower -> render -> verify. The
caller (the CLI) reads the spec and hands in a read-only view of the file
system for the checks that need one (data files exist, hooks parse, the
tokenizer sidecar); nothing here writes anything.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from pathlib import Path

import attrs

from bridgec.compiler.compose import Override
from bridgec.compiler.errors import Diagnostic, is_error
from bridgec.compiler.frontend import read_spec
from bridgec.compiler.jobs import JobFile, job_files
from bridgec.compiler.lower import Target, TokenizerInfo, lower
from bridgec.compiler.render import render
from bridgec.compiler.rules_files import tokenizer_facts
from bridgec.compiler.spec import Spec
from bridgec.compiler.validate import FileView, SpecContext, parse_tokenizer_sidecar
from bridgec.compiler.verify import verify
from bridgec.runtime.tokenizer import TokenizerFacts


class InternalError(Exception):
    """The compiler produced something it should not have (a bug in bridgec, not in the spec)."""


@attrs.frozen(kw_only=True)
class CompileResult:
    source: str | None
    """The script, or None when the spec has errors."""
    diagnostics: tuple[Diagnostic, ...]
    spec: Spec | None
    job_files: tuple[JobFile, ...] = ()
    """The scheduler's files ([launch] scheduler), written beside the script."""


def relative_spec_path(spec_path: Path, output_path: Path) -> str:
    """The spec as seen from the output file's folder, '/'-separated (no absolute paths in output)."""
    relative = os.path.relpath(spec_path.resolve(), output_path.resolve().parent)
    return posixpath.join(*relative.split(os.sep))


def tokenizer_info(spec: Spec, context: SpecContext) -> TokenizerInfo | None:
    """data.tokenizer's facts, else the tokenizer sidecar of the first indexed source (prefix.json), when there is one."""
    facts = tokenizer_facts(spec, context)
    if isinstance(facts, TokenizerFacts):
        return TokenizerInfo(
            name=facts.kind,
            vocab_size=facts.vocab_size,
            eod=facts.eod,
            origin=f"data.tokenizer = {spec.data.tokenizer}",
        )
    spec_dir, files = context.spec_dir, context.files
    if spec.data.kind == "mock" or not spec.data.sources:
        return None
    sidecar = spec_dir / (spec.data.sources[0].prefix + ".json")
    if not files.exists(sidecar):
        return None
    parsed = parse_tokenizer_sidecar(files.read_text(sidecar))
    if isinstance(parsed, str):
        return None  # validation already reported what is wrong with it
    return TokenizerInfo(name=parsed.tokenizer, vocab_size=parsed.vocab_size, eod=parsed.eod)


def compile_spec(
    text: str,
    *,
    spec_name: str,
    spec_path: Path,
    output_path: Path,
    files: FileView,
    require_data: bool = True,
    overrides: Sequence[Override] = (),
    ejected: bool = False,
) -> CompileResult:
    """Compile the spec ``text`` (read from ``spec_path``, shown as ``spec_name``) for ``output_path``.

    ``require_data=False`` (``bridgec check``) regenerates without the data files and
    checkpoints the run will read; the script depends only on committed files.
    """
    spec_dir = spec_path.resolve().parent
    context = SpecContext(file=spec_name, spec_dir=spec_dir, files=files, require_data=require_data)
    front = read_spec(text, spec_name, context, overrides)
    if front.spec is None or any(is_error(d) for d in front.diagnostics):
        return CompileResult(source=None, diagnostics=front.diagnostics, spec=front.spec)
    target = Target(
        spec_sha256=front.sha256,
        spec_path=relative_spec_path(spec_path, output_path),
        output_name=output_path.name,
        tokenizer=tokenizer_info(front.spec, context),
        overrides=tuple(override.text for override in overrides),
        ejected=ejected,
    )
    plan = lower(front.spec, target)
    source = render(plan)
    problems = verify(source, plan.user_strings)
    if problems:
        raise InternalError("; ".join(problems))
    return CompileResult(
        source=source, diagnostics=front.diagnostics, spec=front.spec, job_files=job_files(front.spec, target)
    )
