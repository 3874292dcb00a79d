"""Rules for [logging]: a sink the spec names must be importable where the script is compiled."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator

from bridgec.compiler import derive
from bridgec.compiler.rule_base import Finding, Rule, SpecContext
from bridgec.compiler.spec import Spec


def rule_sink_package_installed(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    """A sink whose package is missing would only fail at the first step of a launch; say so at compile time.

    The script is usually compiled in the environment it runs in (bridgec and its
    runtime are one package), so this is where the missing install shows first.
    """
    for sink in derive.sinks(spec):
        if importlib.util.find_spec(sink) is None:
            yield Finding(
                about=(("logging", sink),),
                message=f"[logging.{sink}] needs the {sink} package, which this Python ({sys.executable}) "
                "cannot import",
                hint=f"pip install 'bridgec[{sink}]' (or remove [logging.{sink}])",
            )


LOGGING_RULES: tuple[Rule, ...] = (rule_sink_package_installed,)
