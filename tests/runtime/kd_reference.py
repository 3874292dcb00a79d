"""A hand-written full-vocabulary KD loss, the reference for runtime.distill at tensor = 1 and 2."""

from __future__ import annotations

import torch

KD_TEMPERATURE = 2.0


def kd_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Student and teacher logits [2, 5, 16] (spread wide, so the softmax is far from uniform) and token weights."""
    generator = torch.Generator().manual_seed(15)
    student = torch.randn(2, 5, 16, generator=generator) * 4
    teacher = torch.randn(2, 5, 16, generator=generator) * 4 + 1
    weights = torch.rand(2, 5, generator=generator)
    return student, teacher, weights


def reference_kd(
    student: torch.Tensor, teacher: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """T^2 sum_v p_v (log p_v - log q_v) per token in float64 over the whole vocabulary, and the gradient of the
    weighted sum in the student's logits (by autograd)."""
    s = student.double().clone().requires_grad_(True)
    t = teacher.double()
    log_q = s / KD_TEMPERATURE - torch.logsumexp(s / KD_TEMPERATURE, dim=-1, keepdim=True)
    log_p = t / KD_TEMPERATURE - torch.logsumexp(t / KD_TEMPERATURE, dim=-1, keepdim=True)
    divergence = (log_p.exp() * (log_p - log_q)).sum(dim=-1) * KD_TEMPERATURE**2
    (divergence * weights.double()).sum().backward()
    return divergence.detach(), s.grad


def relative_error(value: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """The largest |value - expected| / max(|expected|, 1): the losses here reach ~26, where one float32 step is
    1.9e-6, so a float32 loss is compared with the float64 reference relative to its size (gradients, below 1,
    are compared absolutely)."""
    return ((value.double() - expected).abs() / expected.abs().clamp(min=1.0)).max()
