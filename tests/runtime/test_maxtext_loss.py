"""MaxText's loss (cross entropy + z-loss, segmentation mask, token-weighted gradient accumulation) vs its formula in JAX.

The reference restates max_utils.cross_entropy_with_logits and the
accumulation of utils/gradient_accumulation.py (sum of masked xent over
microbatches / max(total weights, 1)) in JAX, float32 as MaxText runs it.
Tolerance 1e-6 on the loss and on every logits gradient.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.e2e.harness import launch
from tests.runtime import maxtext_loss_worker

TOLERANCE = 1e-6
VOCAB = 50
PADDED = 56  # megatron pads; the padded columns hold junk that must not count
MICROBATCHES, BATCH, SEQ = 3, 2, 8


def maxtext_reference(
    logits: list[np.ndarray],
    targets: list[np.ndarray],
    segmentation: list[np.ndarray],
    *,
    z_loss: float,
    multiplier: float,
) -> tuple[float, list[np.ndarray]]:
    """Accumulated MaxText loss over microbatches and its gradient w.r.t. each microbatch's (unpadded) logits."""

    def loss_fn(all_logits: list[jax.Array]) -> jax.Array:
        xent_sum, total_weights = 0.0, 0
        for mb_logits, mb_targets, mb_segmentation in zip(all_logits, targets, segmentation):
            mb_logits = mb_logits * multiplier  # Decoder: logits / sqrt(emb) under normalize_embedding_logits
            one_hot = jax.nn.one_hot(mb_targets, VOCAB)
            logits_sum = jax.scipy.special.logsumexp(mb_logits, axis=-1, keepdims=True)
            xent = -jnp.sum(one_hot * (mb_logits - logits_sum), axis=-1)
            xent = xent + z_loss * jax.lax.square(jnp.squeeze(logits_sum, axis=-1))
            weights = mb_segmentation != 0
            xent_sum = xent_sum + jnp.sum(xent * weights)
            total_weights = total_weights + jnp.sum(weights)
        return xent_sum / jnp.maximum(total_weights, 1)

    value, grads = jax.value_and_grad(loss_fn)([jnp.asarray(x) for x in logits])
    return float(value), [np.asarray(g) for g in grads]


def make_case(*, z_loss: float, multiplier: float, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    logits = [rng.normal(0.0, 3.0, (BATCH, SEQ, VOCAB)).astype(np.float32) for _ in range(MICROBATCHES)]
    targets = [rng.integers(0, VOCAB, (BATCH, SEQ)) for _ in range(MICROBATCHES)]
    # Packed sequences: segment ids, 0 = padding (masked). Microbatches hold different token counts.
    segmentation = [
        np.where(rng.random((BATCH, SEQ)) < 0.25 * (m + 1), 0, 1 + (np.arange(SEQ) >= SEQ // 2))
        for m in range(MICROBATCHES)
    ]
    loss, grads = maxtext_reference(logits, targets, segmentation, z_loss=z_loss, multiplier=multiplier)
    junk = [rng.normal(50.0, 1.0, (BATCH, SEQ, PADDED - VOCAB)).astype(np.float32) for _ in range(MICROBATCHES)]
    padded = lambda arrays, extra: [torch.from_numpy(np.concatenate([a, e], axis=-1)) for a, e in zip(arrays, extra)]  # noqa: E731
    zero_pad = [np.zeros_like(j) for j in junk]
    return {
        "logits": padded(logits, junk),
        "logits_unpadded": [torch.from_numpy(x) for x in logits],
        "labels": [torch.from_numpy(t) for t in targets],
        "masks": [torch.from_numpy((s != 0).astype(np.float32)) for s in segmentation],
        "expected_loss": loss,
        "expected_grads": padded(grads, zero_pad),  # no gradient reaches the padding
        "z_loss_multiplier": z_loss,
        "logits_multiplier": multiplier,
        "vocab_size": VOCAB,
    }


CASES = {
    "z_loss": dict(z_loss=1e-2, multiplier=1.0),
    "z_loss_and_tied_logit_scaling": dict(z_loss=1e-4, multiplier=1.0 / math.sqrt(64)),
    "plain_cross_entropy": dict(z_loss=0.0, multiplier=1.0),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_accumulated_loss_matches_maxtext(megatron_world1: None, name: str) -> None:
    result = maxtext_loss_worker.accumulated_loss(make_case(**CASES[name]))
    assert result["loss_diff"] <= TOLERANCE
    assert result["grad_diff"] <= TOLERANCE


def test_plain_cross_entropy_is_megatron_s(megatron_world1: None) -> None:
    assert maxtext_loss_worker.megatron_agreement(make_case(**CASES["z_loss"])) <= TOLERANCE


def test_maxtext_epsilon_is_invisible_in_float32() -> None:
    """MaxText divides by (weights + 1e-8) without accumulation: in fp32 that is the count itself for every count >= 1."""
    counts = jnp.arange(1, 1_000_001, dtype=jnp.int32)
    xent_sum = jnp.float32(3.7) * counts.astype(jnp.float32)
    with_eps = xent_sum / (counts + 1e-8)
    without = xent_sum / counts
    assert float(jnp.max(jnp.abs(with_eps - without))) == 0.0


def test_no_tokens_gives_zero_not_nan(megatron_world1: None) -> None:
    case = make_case(**CASES["z_loss"])
    from bridgec.runtime.maxtext_loss import maxtext_loss

    loss_sum, count, _ = maxtext_loss(
        torch.zeros(BATCH, SEQ), case["labels"][0], case["logits"][0], z_loss_multiplier=1e-2, vocab_size=VOCAB
    )
    assert loss_sum.item() == 0.0 and count.item() == 0


def test_tensor_parallel_vocab_split_matches(tmp_path: Path) -> None:
    """TP = 2 under torchrun: the padded vocabulary split over two ranks, z-loss and scaling on."""
    case_file = tmp_path / "case.pt"
    torch.save(make_case(**CASES["z_loss_and_tied_logit_scaling"]), case_file)
    done = launch(Path(maxtext_loss_worker.__file__), 2, args=(str(case_file), str(tmp_path)))
    assert done.returncode == 0, done.explain()
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["loss_diff"] <= TOLERANCE and result["grad_diff"] <= TOLERANCE
        assert result["megatron_diff"] <= TOLERANCE
