"""Loss functions and the one place their results are reduced."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from bridgec.runtime.loss import LOSS_KEY, masked_mean_loss, masked_token_loss, metadata_pairs, reduce_metadata


def test_token_loss_sums_real_tokens_and_counts_them() -> None:
    losses = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    loss_sum, count, metadata = masked_token_loss(mask, losses)
    assert loss_sum.item() == 7.0
    assert count.item() == 3
    assert metadata[LOSS_KEY].tolist() == [7.0, 3.0]


def test_mean_loss_is_the_microbatch_mean_and_zero_when_all_masked() -> None:
    losses = torch.tensor([[1.0, 2.0, 3.0]])
    loss, metadata = masked_mean_loss(torch.tensor([[1.0, 0.0, 1.0]]), losses)
    assert loss.item() == 2.0
    assert metadata[LOSS_KEY].tolist() == [2.0, 1.0]
    empty, _ = masked_mean_loss(torch.zeros(1, 3), losses)
    assert empty.item() == 0.0


def test_metadata_pairs_sum_every_other_key_over_microbatches_and_name_what_they_cannot() -> None:
    first = {
        LOSS_KEY: torch.tensor([1.0, 2.0]),
        "aux": torch.tensor([3.0, 4.0]),
        "n": torch.tensor(5.0),
        "x": 0.5,
        "flag": True,
        "note": "text",
        "wide": torch.zeros(3),
    }
    second = {LOSS_KEY: torch.tensor([1.0, 2.0]), "aux": torch.tensor([1.0, 1.0]), "n": 7, "x": 1.5}
    pairs, unusable = metadata_pairs([first, second])
    assert {key: pair.tolist() for key, pair in pairs.items()} == {
        "aux": [4.0, 5.0],
        "n": [12.0, 2.0],
        "x": [2.0, 2.0],
    }  # a number v counts as [v, 1]
    assert unusable == {"flag": "a bool", "note": "a str", "wide": "a tensor of shape (3,)"}


def test_reduce_divides_once_over_all_microbatches(megatron_world1: None) -> None:
    """Token-aware: sum of sums / sum of counts, not the mean of per-microbatch means."""
    mask_a = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    mask_b = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    a = masked_token_loss(mask_a, torch.full((1, 4), 2.0))[2]
    b = masked_token_loss(mask_b, torch.full((1, 4), 7.0))[2]
    assert reduce_metadata([a, b]) == pytest.approx((8.0 + 7.0) / 5.0)
    mean_a = masked_mean_loss(mask_a, torch.full((1, 4), 2.0))[1]
    mean_b = masked_mean_loss(mask_b, torch.full((1, 4), 7.0))[1]
    assert reduce_metadata([mean_a, mean_b]) == pytest.approx((2.0 + 7.0) / 2.0)


def test_mean_loss_under_context_parallelism_is_the_whole_sequence_mean(two_ranks: dict[int, dict[str, Any]]) -> None:
    """CP = 2 under torchrun, through megatron's schedule and DDP: each rank holds half of every sequence
    (halves with different token counts); the gradient is the whole-sequence mean's, not CP times it."""
    expected = {"reported": 0.0, "reduce_metadata": 0.0, "grad": 0.0, "grad_ratio": 1.0}
    for rank in (0, 1):
        assert two_ranks[rank]["context"] == pytest.approx(expected, abs=1e-6), f"rank {rank}"
