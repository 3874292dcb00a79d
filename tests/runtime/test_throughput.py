"""TFLOP/s and MFU: the runtime's arithmetic on the FLOPs the compiler prints is explain's."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bridgec.compiler import explain
from bridgec.compiler.lower import Target, lower
from bridgec.compiler.plan import Plan, Value
from bridgec.runtime.memory import Memory, device_peak
from bridgec.runtime.metrics import MetricsLog, StepMeasures
from bridgec.runtime.throughput import peak_tflops
from tests.compiler.conftest import front, spec_toml

TARGET = Target(spec_sha256="0" * 64, spec_path="spec.toml", output_name="run.py")


def _constant(plan: Plan, name: str) -> Value:
    return next(c.value for s in plan.sections for c in s.constants if c.name == name)


@pytest.mark.parametrize("tables", [{}, {"model": {"num_experts": 4, "add_bias_linear": False}}])
def test_mfu_is_explains_arithmetic(tables: dict) -> None:
    spec = front(spec_toml(launch={"procs_per_node": 2}, **tables)).spec
    assert spec is not None
    plan = lower(spec, TARGET)
    flops_per_token = _constant(plan, "TRAIN_FLOPS_PER_TOKEN")
    assert flops_per_token == explain.flops(spec).train_per_token
    peak = 989.0
    log = MetricsLog(
        path=Path("unused.jsonl"),
        enabled=False,
        log_interval=1,
        total_iters=1,
        flops_per_token=flops_per_token,
        world_size=_constant(plan, "WORLD_SIZE"),
        peak_tflops=peak,
    )
    tokens = spec.batch.global_batch_size * spec.model.seq_length
    measures = StepMeasures(
        tokens=tokens, seconds=0.25, data_seconds=0.0, consumed_samples=0, consumed_tokens=0, memory=Memory()
    )
    rates = log.rates(measures)
    assert rates.tokens_per_second == tokens / 0.25
    # explain's FLOPs per token x tokens per second, shared by the world, in units of 10^12.
    by_hand = tokens / 0.25 * explain.flops(spec).train_per_token / 2 / 1e12
    assert math.isclose(rates.tflops_per_device, by_hand, rel_tol=1e-12)
    assert rates.mfu is not None
    assert math.isclose(rates.mfu, explain.mfu(tokens / 0.25, spec, peak), rel_tol=1e-12)
    assert math.isclose(rates.mfu, by_hand / peak, rel_tol=1e-12)


def test_peak_table() -> None:
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.0
    assert peak_tflops("NVIDIA H100 80GB HBM3", "fp16") == 989.0  # fp16 tensor cores run at the bf16 peak
    assert peak_tflops("NVIDIA H200", "fp8") == 1979.0
    assert peak_tflops("NVIDIA B200", "bf16") == 2250.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "bf16") == 312.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "fp8") is None  # no fp8 on Ampere
    assert peak_tflops("NVIDIA H100 80GB HBM3", "fp32") is None
    assert peak_tflops("Tesla T4", "bf16") is None


def test_no_peak_on_the_cpu_unless_given() -> None:
    import torch

    assert device_peak(torch.device("cpu"), precision="bf16", override=None) is None
    assert device_peak(torch.device("cpu"), precision="bf16", override=100.0) == 100.0
