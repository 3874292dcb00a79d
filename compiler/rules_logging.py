"""Rules for [logging] and [profile]: sinks that can be imported, a profiled step range and ranks that exist."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator

from bridgec.compiler import derive
from bridgec.compiler.derive import world_size
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


def rule_peak_positive(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    peak = spec.logging.peak_tflops
    if peak is not None and not peak > 0:
        yield Finding(
            about=(("logging", "peak_tflops"),),
            message=f"$.logging.peak_tflops = {peak:g}: MFU divides by the device's peak, which must be above 0",
            hint="the dense bf16 TFLOP/s of one device (e.g. 989 for an H100 SXM), or remove it",
        )


def rule_profile_steps(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    p = spec.profile
    if p is None:
        return
    iters = spec.train.iters
    if not 1 <= p.start_step <= p.end_step <= iters:
        yield Finding(
            about=(("profile", "start_step"), ("profile", "end_step")),
            message=f"$.profile: steps {p.start_step} to {p.end_step} are not a range of this run's steps "
            f"(1 to train.iters = {iters}, start_step <= end_step)",
            hint="e.g. start_step = 3, end_step = 4 (a few steps after the first, which warms up)",
        )
    world = world_size(spec)
    outside = [rank for rank in p.ranks if not 0 <= rank < world]
    if outside or not p.ranks:
        yield Finding(
            about=(("profile", "ranks"),),
            message=f"$.profile.ranks = {list(p.ranks)}: every rank must be one of this run's 0 to {world - 1} "
            f"(nodes x procs_per_node = {world}), and at least one is needed",
            hint="e.g. ranks = [0]",
        )


def rule_profile_cuda_only(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    p = spec.profile
    if p is None or spec.launch.device == "cuda":
        return
    for key, what in (("memory_snapshot", "CUDA's allocator history"), ("nvtx", "NVTX ranges (for nsys)")):
        if getattr(p, key):
            yield Finding(
                about=(("profile", key), ("launch", "device")),
                message=f'$.profile.{key} = true records {what}, but launch.device = "{spec.launch.device}"',
                hint=f'set device = "cuda" under [launch], or remove {key}',
            )


LOGGING_RULES: tuple[Rule, ...] = (
    rule_sink_package_installed,
    rule_peak_positive,
    rule_profile_steps,
    rule_profile_cuda_only,
)
