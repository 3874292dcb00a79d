"""Validate: the rules a loaded :class:`Spec` must meet before anything is derived from it.

Each rule is a small function ``rule_xxx(spec, ctx) -> Iterable[Finding]``; the
rules live in modules by concern (``rules_layout``, ``rules_training``,
``rules_files``, ``validate_interop``) and :data:`RULES` collects them all. A
rule says what is wrong, why, and how to fix it, and names the keys it is
about (most relevant first); :func:`validate` turns that into a
:class:`Diagnostic` on the line of the first of those keys the spec writes.
Rules never mutate anything and never touch the disk except through
``ctx.files``, so they are tested with an in-memory file system.

Rules check cheap arithmetic only; they skip what another rule already reports
(a size below 1 is reported once, not again as a failed division).
"""

from __future__ import annotations

from bridgec.compiler.errors import Diagnostic, format_path, sort_key
from bridgec.compiler.locate import LineIndex
from bridgec.compiler.rule_base import FileView, Finding, NotLoaded, Rule, SpecContext
from bridgec.compiler.rules_distill import DISTILL_RULES
from bridgec.compiler.rules_files import FILE_RULES, TokenizerSidecar, parse_tokenizer_sidecar
from bridgec.compiler.rules_layout import LAYOUT_RULES
from bridgec.compiler.rules_logging import LOGGING_RULES
from bridgec.compiler.rules_peft import PEFT_RULES
from bridgec.compiler.rules_perf import PERF_RULES
from bridgec.compiler.rules_training import TRAINING_RULES
from bridgec.compiler.spec import Spec
from bridgec.compiler.validate_interop import INTEROP_RULES

__all__ = ["RULES", "FileView", "Finding", "SpecContext", "TokenizerSidecar", "parse_tokenizer_sidecar", "validate"]

RULES: tuple[Rule, ...] = (
    *LAYOUT_RULES,
    *TRAINING_RULES,
    *PERF_RULES,
    *FILE_RULES,
    *INTEROP_RULES,
    *LOGGING_RULES,
    *PEFT_RULES,
    *DISTILL_RULES,
)
"""Every rule validate runs."""


def validate(spec: Spec, index: LineIndex, context: SpecContext) -> tuple[Diagnostic, ...]:
    """Run every rule; every finding of every rule, sorted by line then path.

    ``spec`` may be partly loaded (load errors elsewhere): a rule that reads a
    field which did not load is skipped (:class:`NotLoaded`), the others run, so
    one pass reports every problem of the fields that did load.
    """
    diagnostics = [_locate(finding, index, context.file) for rule in RULES for finding in _run(rule, spec, context)]
    return tuple(sorted(diagnostics, key=sort_key))


def _run(rule: Rule, spec: Spec, context: SpecContext) -> list[Finding]:
    try:
        return list(rule(spec, context))
    except NotLoaded:
        return []


def _locate(finding: Finding, index: LineIndex, filename: str) -> Diagnostic:
    path = next((p for p in finding.about if index.has(p)), finding.about[0])
    return Diagnostic(
        file=index.file_of(path, filename),
        line=index.line_of(path),
        path=format_path(path),
        message=finding.message,
        hint=finding.hint,
        severity=finding.severity,
    )
