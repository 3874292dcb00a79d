"""Portable init: shards cut like megatron-core's, names independent of the layout."""

from __future__ import annotations

import math

import pytest
import torch
from megatron.core.tensor_parallel.layers import _initialize_affine_weight_cpu

from bridgec.runtime.init import draw, name_seed, shard
from bridgec.runtime.models.gpt import Init


@pytest.mark.parametrize(("dim", "stride"), [(0, 1), (1, 1), (0, 2)])
@pytest.mark.parametrize("tp", [2, 4])
def test_shard_matches_megatrons_master_weight_split(dim: int, stride: int, tp: int) -> None:
    full = torch.randn(16, 8) if dim == 0 else torch.randn(8, 16)
    for rank in range(tp):
        local_shape = list(full.shape)
        local_shape[dim] //= tp
        expected = torch.empty(local_shape)
        _initialize_affine_weight_cpu(
            expected,
            full.shape[0],
            full.shape[1],
            local_shape[dim],
            dim,
            lambda w: w.copy_(full),
            stride=stride,
            rank=rank,
            world_size=tp,
            skip_set_tensor_parallel_attributes=True,
        )
        assert torch.equal(shard(full, axis=dim, stride=stride, tensor_parallel=tp, tensor_rank=rank), expected)


def test_name_seed_is_stable_and_distinct() -> None:
    assert name_seed(1234, "a") == name_seed(1234, "a")
    assert name_seed(1234, "a") != name_seed(1234, "b")
    assert name_seed(1234, "a") != name_seed(1235, "a")
    # A fixed value guards against an accidental change of the derivation (it would change every run's weights).
    assert name_seed(1234, "embedding.word_embeddings.weight") == 3877896466349321544


def test_draw_follows_megatrons_init_rules() -> None:
    ones = draw(Init.ONE, "decoder.layers.0.input_layernorm.weight", (64,), seed=1, std=0.02, num_layers=4)
    assert torch.equal(ones, torch.ones(64))
    zeros = draw(Init.ZERO, "decoder.layers.0.mlp.linear_fc1.bias", (64,), seed=1, std=0.02, num_layers=4)
    assert torch.equal(zeros, torch.zeros(64))
    weight = draw(Init.NORMAL, "decoder.layers.0.mlp.linear_fc1.weight", (512, 512), seed=1, std=0.02, num_layers=4)
    assert weight.std().item() == pytest.approx(0.02, rel=0.02)
    scaled = draw(
        Init.SCALED_NORMAL, "decoder.layers.0.mlp.linear_fc2.weight", (512, 512), seed=1, std=0.02, num_layers=4
    )
    assert scaled.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.02)
    again = draw(Init.NORMAL, "decoder.layers.0.mlp.linear_fc1.weight", (512, 512), seed=1, std=0.02, num_layers=4)
    assert torch.equal(weight, again)


def test_zero_centred_norm_scales_start_at_zero() -> None:
    """With layernorm_zero_centered_gamma the layer applies 1 + weight: a scale of 1 is stored as 0."""
    stored = draw(
        Init.ONE,
        "decoder.layers.0.input_layernorm.weight",
        (8,),
        seed=1,
        std=0.02,
        num_layers=2,
        zero_centered_norms=True,
    )
    assert torch.equal(stored, torch.zeros(8))
