"""The torch side of the MaxText loss tests, in-process (TP = 1) or under torchrun (TP = 2, vocab split).

``python -m torch.distributed.run --nproc-per-node 2 maxtext_loss_worker.py CASE.pt OUT_DIR``
writes rank{r}.json with the largest differences against the case's expectations.
No JAX here.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

from bridgec.runtime.loss import reduce_metadata
from bridgec.runtime.maxtext_loss import maxtext_loss, maxtext_token_losses


def _slice(full: torch.Tensor) -> torch.Tensor:
    """This tensor-parallel rank's share of the (padded) vocabulary, the last dimension."""
    world = parallel_state.get_tensor_model_parallel_world_size()
    rank = parallel_state.get_tensor_model_parallel_rank()
    return full.chunk(world, dim=-1)[rank].contiguous()


def accumulated_loss(case: dict[str, Any]) -> dict[str, float]:
    """GA over the case's microbatches with maxtext_loss; largest |diff| of loss and logits gradients vs expected."""
    logits = [_slice(full).clone().requires_grad_(True) for full in case["logits"]]
    sums, counts, metadata = [], [], []
    for mb_logits, labels, mask in zip(logits, case["labels"], case["masks"]):
        loss_func = functools.partial(
            maxtext_loss,
            mask,
            labels,
            z_loss_multiplier=case["z_loss_multiplier"],
            vocab_size=case["vocab_size"],
            logits_multiplier=case["logits_multiplier"],
        )
        loss_sum, count, meta = loss_func(mb_logits)
        sums.append(loss_sum)
        counts.append(count)
        metadata.append(meta)
    # What megatron does with calculate_per_token_loss: backward on the sums, gradients / global token count.
    total_tokens = torch.stack(counts).sum()
    (torch.stack(sums).sum() / total_tokens).backward()
    reported = reduce_metadata(metadata)
    grad_diff = max(
        float((mb.grad - _slice(expected)).abs().max()) for mb, expected in zip(logits, case["expected_grads"])
    )
    return {"loss_diff": abs(reported - case["expected_loss"]), "grad_diff": grad_diff}


def megatron_agreement(case: dict[str, Any]) -> float:
    """With z = 0, multiplier 1 and no padding, per-token losses equal megatron's vocab_parallel_cross_entropy.

    Returns the largest relative difference (the two sum in different orders: an ulp of a loss near 8 is 9.5e-7).
    """
    worst = 0.0
    for full, labels in zip(case["logits_unpadded"], case["labels"]):
        ours, _ = maxtext_token_losses(_slice(full), labels, z_loss_multiplier=0.0, vocab_size=full.shape[-1])
        theirs = vocab_parallel_cross_entropy(_slice(full).clone(), labels)
        worst = max(worst, float(((ours - theirs).abs() / theirs.abs().clamp(min=1.0)).max()))
    return worst


def main(argv: list[str]) -> int:
    from bridgec.runtime import cpu_compat
    from bridgec.runtime.parallel import initialize, shutdown

    cpu_compat.apply()
    layout = initialize(
        device="cpu", tensor=2, pipeline=1, virtual_pipeline=None, context=1, expert=1, seed=0, timeout_minutes=2
    )
    case = torch.load(argv[0])
    result = accumulated_loss(case) | {"megatron_diff": megatron_agreement(case)}
    Path(argv[1], f"rank{layout.rank}.json").write_text(json.dumps(result))
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
