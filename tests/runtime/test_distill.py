"""runtime.distill: the vocabulary-parallel KD loss against the full-vocabulary reference (tests/runtime/kd_reference)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from bridgec.runtime.distill import masked_kd_loss, vocab_parallel_kl
from tests.runtime.kd_reference import KD_TEMPERATURE, kd_case, reference_kd, relative_error


def test_kd_loss_and_gradient_match_the_reference_at_tensor_1() -> None:
    student, teacher, weights = kd_case()
    student.requires_grad_(True)
    divergence = vocab_parallel_kl(student, teacher, temperature=KD_TEMPERATURE)
    (divergence * weights).sum().backward()
    expected, expected_grad = reference_kd(student.detach(), teacher, weights)
    assert relative_error(divergence, expected) <= 1e-6
    assert (student.grad.double() - expected_grad).abs().max() <= 1e-6


def test_kd_loss_and_gradient_match_the_reference_at_tensor_2(two_ranks: dict[int, dict[str, Any]]) -> None:
    for rank in (0, 1):
        assert two_ranks[rank]["kd"]["loss"] <= 1e-6, two_ranks[rank]["kd"]
        assert two_ranks[rank]["kd"]["grad"] <= 1e-6, two_ranks[rank]["kd"]


def test_kd_loss_is_zero_for_a_student_that_matches_and_the_teacher_gets_no_gradient() -> None:
    _, teacher, _ = kd_case()
    teacher.requires_grad_(True)
    student = teacher.detach().clone().requires_grad_(True)
    divergence = vocab_parallel_kl(student, teacher, temperature=1.0)
    divergence.sum().backward()
    assert divergence.abs().max() <= 1e-6
    assert student.grad.abs().max() <= 1e-6
    assert teacher.grad is None


def test_kd_loss_is_weighted_by_tokens_like_the_lm_loss() -> None:
    divergence = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 0, 1], [0, 0, 1]])
    total, count = masked_kd_loss(mask, divergence)
    assert (total.item(), count.item()) == (10.0, 3.0)


@pytest.mark.parametrize(
    ("temperature", "teacher_shape", "message"),
    [
        (0.0, (2, 5, 16), "temperature must be positive, got 0.0"),
        (1.0, (2, 5, 8), "student logits (2, 5, 16) and teacher logits (2, 5, 8) differ"),
    ],
)
def test_kd_loss_refuses_bad_input(temperature: float, teacher_shape: tuple[int, ...], message: str) -> None:
    student, _, _ = kd_case()
    with pytest.raises(ValueError) as error:
        vocab_parallel_kl(student, torch.zeros(teacher_shape), temperature=temperature)
    assert str(error.value) == message
