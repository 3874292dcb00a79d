"""The standard (per-microbatch mean) loss under context parallelism, two ranks each holding half of every sequence.

``python -m torch.distributed.run --nproc-per-node 2 context_loss_worker.py OUT_DIR`` writes rank{r}.json
with the largest differences from the whole-sequence mean: the reported loss, and this rank's loss gradient
after DDP's average over the data x context ranks. The mask leaves the two halves different token counts,
so a rank that divided by its own count would be caught.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from megatron.core import parallel_state

from bridgec.runtime.loss import loss_from_sums, loss_sums, masked_mean_loss, reduce_metadata

SEQUENCE = 8


def case() -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token losses [2, 8] and a mask with 6 real tokens in the first half and 3 in the second."""
    losses = torch.arange(1.0, 2 * SEQUENCE + 1).reshape(2, SEQUENCE) / 4
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 1], [1, 1, 0, 0, 0, 0, 0, 0]], dtype=torch.float32)
    return losses, mask


def differences() -> dict[str, float]:
    losses, mask = case()
    rank = parallel_state.get_context_parallel_rank()
    context = parallel_state.get_context_parallel_world_size()
    whole = (losses * mask).sum() / mask.sum()
    local = losses.chunk(context, dim=1)[rank].clone().requires_grad_(True)
    local_mask = mask.chunk(context, dim=1)[rank]
    loss, metadata = masked_mean_loss(local_mask, local)
    loss.backward()
    # DDP averages gradients over the data x context ranks; this rank's part of that average:
    averaged = local.grad / context
    expected_grad = (mask / mask.sum()).chunk(context, dim=1)[rank]
    total = loss_sums([metadata])
    torch.distributed.all_reduce(total, group=parallel_state.get_context_parallel_group())
    return {
        "reported": abs(loss_from_sums(total) - whole.item()),
        "reduce_metadata": abs(reduce_metadata([metadata]) - whole.item()),
        "grad": float((averaged - expected_grad).abs().max()),
    }


def main(argv: list[str]) -> int:
    from bridgec.runtime import cpu_compat
    from bridgec.runtime.parallel import initialize, shutdown

    cpu_compat.apply()
    layout = initialize(
        device="cpu", tensor=1, pipeline=1, virtual_pipeline=None, context=2, expert=1, seed=0, timeout_minutes=2
    )
    Path(argv[0], f"rank{layout.rank}.json").write_text(json.dumps(differences()))
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
