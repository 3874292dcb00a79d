"""Throughput, model FLOP/s, MFU and memory: the numbers a step's record adds to its loss.

The FLOPs per token come from the compiler (``explain.flops``, printed in the
script with their arithmetic); :func:`model_tflops_per_device` and :func:`mfu`
are the one place they turn into rates, and ``bridgec explain`` uses them too
(so this module imports nothing heavy: the compiler loads it).
"""

from __future__ import annotations

import math

PEAK_TFLOPS: dict[tuple[str, str], float] = {
    ("A100", "bf16"): 312.0,
    ("H100", "bf16"): 989.0,
    ("H100", "fp8"): 1979.0,
    ("H200", "bf16"): 989.0,
    ("H200", "fp8"): 1979.0,
    ("B200", "bf16"): 2250.0,
    ("B200", "fp8"): 4500.0,
}
"""Dense (no sparsity) tensor-core peaks per device in TFLOP/s from the vendor's datasheets (SXM parts).
fp16 runs use the bf16 column (the same peak); A100 has no fp8; fp32 has no entry (set [logging] peak_tflops)."""


def peak_tflops(device_name: str, precision: str) -> float | None:
    """The table's peak for a device whose name contains a listed GPU ("NVIDIA H100 80GB HBM3"), or None."""
    column = "bf16" if precision == "fp16" else precision
    for (gpu, listed), peak in PEAK_TFLOPS.items():
        if listed == column and gpu in device_name.upper():
            return peak
    return None


def model_tflops_per_device(tokens_per_second: float, *, flops_per_token: int, world_size: int) -> float:
    """Achieved model TFLOP/s of one device: training FLOPs per token x tokens/s, shared by all devices."""
    return tokens_per_second * flops_per_token / world_size / 1e12


def mfu(tokens_per_second: float, *, flops_per_token: int, world_size: int, peak: float | None) -> float:
    """Model FLOPs utilisation: achieved TFLOP/s per device over ``peak`` TFLOP/s (NaN without a peak)."""
    if peak is None or peak <= 0:
        return math.nan
    return model_tflops_per_device(tokens_per_second, flops_per_token=flops_per_token, world_size=world_size) / peak
