"""runtime.distill: the vocabulary-parallel KD loss against the full-vocabulary reference (tests/runtime/kd_reference)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from bridgec.runtime.distill import distill_loss, distill_loss_parts, freeze_teacher, masked_kd_loss, vocab_parallel_kl
from bridgec.runtime.distill_layers import HiddenStates, LayerPair, hidden_state_loss, layer_loss_sums
from bridgec.runtime.parallel import Layout
from tests.runtime.kd_reference import KD_TEMPERATURE, kd_case, layer_loss_differences, reference_kd, relative_error


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


LAYER_CHECKS = {
    "cosine loss": 1e-6,
    "cosine grad": 1e-6,
    "mse loss": 1e-6,
    "mse grad": 1e-6,
    "layer 0 weights reached": True,
    "layer 1 weights untouched": True,
}
"""What kd_reference.layer_loss_differences must find: bounds on the differences, and the two gradient facts."""


def _layer_checks_pass(found: dict[str, float | bool]) -> bool:
    return set(found) == set(LAYER_CHECKS) and all(
        found[key] is bound if isinstance(bound, bool) else found[key] <= bound for key, bound in LAYER_CHECKS.items()
    )


def test_layer_losses_and_gradients_match_the_reference_at_tensor_1(megatron_world1: None) -> None:
    found = layer_loss_differences()
    assert _layer_checks_pass(found), found


def test_layer_losses_and_gradients_match_the_reference_at_tensor_2(two_ranks: dict[int, dict[str, Any]]) -> None:
    for rank in (0, 1):
        assert _layer_checks_pass(two_ranks[rank]["kd_layers"]), two_ranks[rank]["kd_layers"]


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


def _logits(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 3.0 * torch.randn(2, 5, 16, generator=generator)


def test_distill_loss_parts_match_their_references_though_the_cross_entropy_overwrites_its_input(
    megatron_world1: None,
) -> None:
    """megatron-core's vocab_parallel_cross_entropy turns fp32 logits into their softmax in place: the KL part must
    read them before it does."""
    student, teacher = _logits(1).requires_grad_(True), _logits(2)
    labels = torch.randint(0, 16, (2, 5), generator=torch.Generator().manual_seed(3))
    loss_mask = torch.ones(2, 5)
    loss_mask[1, 3:] = 0
    expected_kd = (vocab_parallel_kl(student.detach().clone(), teacher, temperature=2.0) * loss_mask).sum()
    expected_ce = torch.nn.functional.cross_entropy(
        student.detach().reshape(-1, 16), labels.reshape(-1), reduction="none"
    )
    expected_ce = (expected_ce * loss_mask.reshape(-1)).sum()
    logits = student * 1.0  # the output layer's result: a non-leaf the loss may overwrite
    parts = distill_loss_parts(
        loss_mask, labels, teacher, logits, temperature=2.0, kd_loss_scale=0.5, skip_lm_loss=False
    )
    assert parts.count == 8
    assert torch.allclose(parts.kd, expected_kd, rtol=1e-6), (parts.kd, expected_kd)
    assert torch.allclose(parts.ce, expected_ce, rtol=1e-6), (parts.ce, expected_ce)
    assert torch.allclose(parts.total, expected_ce + 0.5 * expected_kd, rtol=1e-6)
    skipped = distill_loss_parts(
        loss_mask, labels, teacher, student * 1.0, temperature=2.0, kd_loss_scale=0.5, skip_lm_loss=True
    )
    assert torch.allclose(skipped.total, 0.5 * expected_kd, rtol=1e-6)


def test_a_frozen_teacher_takes_no_gradient(megatron_world1: None) -> None:
    teacher = torch.nn.Linear(8, 16)
    layout = Layout(
        device=torch.device("cpu"), world_size=1, rank=0, tensor=1, pipeline=1, virtual_pipeline=None, context=1,
        expert=1, data=1, tensor_rank=0, pipeline_rank=0, context_rank=0, data_rank=0, expert_rank=0,
    )  # fmt: skip
    frozen = freeze_teacher(teacher, layout=layout, dtype="fp32")
    assert not frozen.training
    assert not any(param.requires_grad for param in frozen.parameters())
    student = torch.nn.Linear(8, 16)
    inputs = torch.randn(2, 5, 8)
    with torch.no_grad():
        teacher_logits = frozen(inputs)
    loss, _, metadata = distill_loss(
        torch.ones(2, 5),
        torch.zeros(2, 5, dtype=torch.long),
        teacher_logits,
        student(inputs),
        temperature=1.0,
        kd_loss_scale=1.0,
        skip_lm_loss=False,
    )
    loss.backward()
    assert all(param.grad is None for param in frozen.parameters())
    assert all(param.grad is not None for param in student.parameters())
    assert set(metadata) == {"lm loss", "kd loss", "ce loss"}


def test_layer_losses_refuse_states_that_do_not_pair() -> None:
    state = torch.zeros(4, 2, 8)
    with pytest.raises(ValueError) as error:
        hidden_state_loss(state, torch.zeros(4, 2, 16), loss="cosine")
    assert str(error.value) == "student hidden states (4, 2, 8) and teacher's (4, 2, 16) differ"
    with pytest.raises(ValueError) as error:
        hidden_state_loss(state, state, loss="kl")
    assert str(error.value) == "unknown layer loss 'kl' (cosine or mse)"
    pairs = (LayerPair(student=3, teacher=1, loss="mse", scale=1.0),)
    with pytest.raises(ValueError) as error:
        layer_loss_sums(torch.ones(2, 4), HiddenStates(pairs=pairs, student={2: state}, teacher={1: state}))
    assert str(error.value) == "the student's layer 3 was not caught in this forward (layers caught: [2])"
