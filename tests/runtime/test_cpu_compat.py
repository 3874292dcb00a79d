"""The CPU substitutions: each names a megatron-core line that still exists, and each works."""

from __future__ import annotations

import importlib
import inspect

import pytest
import torch

from bridgec.runtime import cpu_compat


@pytest.mark.parametrize("substitution", cpu_compat.SCOPED_MODULES, ids=lambda s: s.module)
def test_each_substitution_names_a_line_that_still_uses_cuda(substitution: cpu_compat.Substitution) -> None:
    """If a megatron-core upgrade moves or removes a CUDA call, this fails and names it."""
    module = importlib.import_module(substitution.module)
    lines = inspect.getsource(module).splitlines()
    for answer in substitution.answers:
        number, _, code = answer.partition(": ")
        line = lines[int(number) - 1]
        assert code.strip().rstrip(",") in line, (
            f"{substitution.module}:{number} is now {line.strip()!r}; update runtime/cpu_compat.py"
        )
        assert "cuda" in line


def test_apply_redirects_cuda_devices_in_scoped_modules() -> None:
    cpu_compat.apply()
    schedules = importlib.import_module("megatron.core.pipeline_parallel.schedules")
    tensor = schedules.torch.zeros([], dtype=torch.int, device="cuda")
    assert tensor.device.type == "cpu"
    assert schedules.torch.cuda.current_device() == torch.device("cpu")
    schedules.torch.cuda.synchronize()  # a no-op, not an error
    assert schedules.torch.float32 is torch.float32  # everything else is the real torch


def test_apply_is_idempotent_and_reported() -> None:
    cpu_compat.apply()
    cpu_compat.apply()
    assert cpu_compat.applied()


def test_tensor_type_names_cpu_tensors_like_cuda_ones() -> None:
    cpu_compat.apply()
    assert torch.zeros(1).type() == "torch.cuda.FloatTensor"
    assert torch.zeros(1, dtype=torch.bfloat16).type() == "torch.cuda.BFloat16Tensor"
    converted = torch.zeros(1).type(torch.float64)  # conversions still work
    assert converted.dtype == torch.float64


def test_tensor_cuda_keeps_cpu_tensors_in_place() -> None:
    cpu_compat.apply()
    tensor = torch.ones(2)
    assert tensor.cuda() is tensor


def test_rng_tracker_forks_on_the_cpu_generator() -> None:
    """The model-parallel stream is separate from the default one and is restored after a fork."""
    cpu_compat.apply()
    from megatron.core.tensor_parallel import random

    tracker = random.CudaRNGStatesTracker()
    torch.manual_seed(0)
    tracker.add("model-parallel-rng", 123)
    before = torch.get_rng_state()
    with tracker.fork("model-parallel-rng"):
        inside = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(123)
    assert torch.equal(inside, torch.rand(3))


def test_forks_that_draw_random_numbers_do_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    """Dropout inside a fork moves the (single) CPU generator; megatron's warning about it is noise on CPU."""
    cpu_compat.apply()
    from megatron.core.tensor_parallel import random

    tracker = random.CudaRNGStatesTracker()
    tracker.add("model-parallel-rng", 321)
    with caplog.at_level("WARNING"), tracker.fork("model-parallel-rng"):
        torch.rand(2)
    assert "CPU RNG state changed" not in caplog.text


def test_fp16_loss_scaler_lives_on_the_cpu() -> None:
    """megatron's dynamic loss scaler (fp16) builds, backs off, grows and reloads its state on the CPU."""
    cpu_compat.apply()
    from megatron.core.optimizer.grad_scaler import DynamicGradScaler

    scaler = DynamicGradScaler(
        initial_scale=2.0**32, min_scale=1.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=2, hysteresis=1
    )
    assert scaler.scale.device.type == "cpu" and scaler.scale.item() == 2.0**32
    scaler.update(True)  # an overflow halves the scale (hysteresis 1)
    assert scaler.scale.item() == 2.0**31
    scaler.update(False)
    scaler.update(False)  # growth_interval clean steps double it
    assert scaler.scale.item() == 2.0**32
    scaler.update(True)
    restored = DynamicGradScaler(
        initial_scale=2.0**32, min_scale=1.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=2, hysteresis=1
    )
    restored.load_state_dict(scaler.state_dict())
    assert restored.scale.device.type == "cpu" and restored.scale.item() == 2.0**31
