"""[model] transformer_impl = "torch": SdpaAttention computes megatron-core's local attention (fp32 losses to 1e-6).

The same GPTModel (grouped-query attention, RoPE) with each core attention and the same weights: the summed
loss and every gradient after one forward and backward through megatron-core's schedule, for plain causal
attention, a block-diagonal document mask (what document_masking and packing give the local path) and a
softmax scale of the config's. In-process at TP1; at TP2 (heads and groups split over ranks) and PP2 (a mask
read by both stages, gradients through the stage boundary) in the session's two-rank launch
(tests/runtime/two_rank_worker.py).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.runtime import sdpa_checks

TOLERANCE = 1e-6
"""On the mean token loss."""
GRAD_TOLERANCE = 5e-6
"""On each gradient relative to its largest entry: float32 round-off of two summation orders, seen up to 1.01e-6
(first pipeline stage, after backpropagating through the second)."""


def _assert_close(cases: dict[str, dict[str, float]]) -> None:
    assert set(cases) == {"causal", "documents", "softmax_scale"}
    for name, found in cases.items():
        assert found["loss"] <= TOLERANCE * max(1.0, found["loss_value"]), (name, found)
        assert found["grad"] <= GRAD_TOLERANCE, (name, found)
    # The mask and the scale change the function: a check that ignored them could not pass all three.
    values = [cases[name]["loss_value"] for name in ("causal", "documents", "softmax_scale")]
    assert len({round(v, 4) for v in values}) == 3, values


def test_sdpa_equals_local_attention_at_tp1(megatron_world1: None) -> None:
    _assert_close(sdpa_checks.cases())


def test_sdpa_dropout_draws_from_the_tracker_and_stops_in_eval(megatron_world1: None) -> None:
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    local, sdpa = sdpa_checks.models(sdpa_checks.config(attention_dropout=0.5))
    item = sdpa_checks.batch()

    def loss(model: torch.nn.Module) -> float:
        return float(model(item["tokens"], item["position_ids"], None, labels=item["labels"]).detach().sum())

    model_parallel_cuda_manual_seed(3)
    first = loss(sdpa)
    model_parallel_cuda_manual_seed(3)
    assert loss(sdpa) == first  # the tracker's seed fixes the dropout mask
    assert loss(sdpa) != first  # and the tracker's stream moves on
    local.eval(), sdpa.eval()
    assert abs(loss(sdpa) - loss(local)) <= TOLERANCE * abs(loss(local))  # no dropout outside training
    assert abs(first - loss(sdpa)) > 1e-3


@pytest.mark.parametrize("layout", ["sdpa_tp2", "sdpa_pp2"])
def test_sdpa_equals_local_attention_across_ranks(two_ranks: dict[int, dict[str, Any]], layout: str) -> None:
    for rank in (0, 1):
        _assert_close_on_rank(two_ranks[rank][layout], last_stage=layout == "sdpa_tp2" or rank == 1)


def _assert_close_on_rank(cases: dict[str, dict[str, float]], *, last_stage: bool) -> None:
    if last_stage:
        _assert_close(cases)
        return
    # The first pipeline stage reports no loss; its gradients came back through the stage boundary.
    for name, found in cases.items():
        assert found["grad"] <= GRAD_TOLERANCE, (name, found)
