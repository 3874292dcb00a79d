"""MaxText's cross entropy with z-loss, on megatron-core's vocab-parallel logits, token-weighted.

MaxText (max_utils.cross_entropy_with_logits, trainers/pre_train/train.py) per token:

    lse  = logsumexp(logits)
    loss = lse - logits[target] + z_loss_multiplier * lse^2      # the z term is part of the loss
    masked by targets_segmentation != 0

and with gradient accumulation (utils/gradient_accumulation.py) the masked sums
of all microbatches are added before one division by the total count:
``sum(loss) / max(sum(mask), 1)``, gradients likewise. That is megatron-core's
token-aware loss pattern (``calculate_per_token_loss``): :func:`maxtext_loss`
returns ``(loss_sum, num_tokens, metadata)`` and ``finalize_model_grads`` divides
the gradients by the global token count; :func:`bridgec.runtime.loss.reduce_metadata`
divides the reported loss once.

Without gradient accumulation MaxText divides by ``sum(mask) + 1e-8`` instead.
In float32 that is the same number for any count >= 1 (``n + 1e-8`` rounds to
``n``: 1e-8 is below half an ulp of 1.0, 5.96e-8), so it changes nothing
measurable; with no token at all MaxText's loss is 0 and so is the sum here.

Logits come from GPTModel called without labels: [batch, seq, vocab / TP], the
vocabulary split over tensor-parallel ranks like
``megatron.core.tensor_parallel.vocab_parallel_cross_entropy`` expects. Columns
past ``vocab_size`` (megatron's vocabulary padding) are not part of MaxText's
vocabulary and are left out of the log-sum-exp. ``logits_multiplier`` applies
MaxText's ``normalize_embedding_logits`` (1/sqrt(emb_dim) on tied logits),
which megatron-core's output layer lacks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel import reduce_from_tensor_model_parallel_region
from megatron.core.tensor_parallel.utils import VocabUtility

from bridgec.runtime.loss import LOSS_KEY

Z_LOSS_KEY = "z loss"
"""Metadata key of the z-loss part ([sum, count]), for logging like MaxText's ``z_loss`` metric."""


def maxtext_token_losses(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    z_loss_multiplier: float,
    vocab_size: int,
    logits_multiplier: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token (loss including z-loss, z-loss) in fp32, both shaped like ``labels``.

    ``logits`` [..., vocab / TP] is this tensor-parallel rank's slice; the
    result is the same on every rank of the group, and gradients reach each
    rank's slice (the reductions are megatron's all-reduce-forward,
    identity-backward mapping).
    """
    scaled = logits.float()
    if logits_multiplier != 1.0:
        scaled = scaled * logits_multiplier
    world = parallel_state.get_tensor_model_parallel_world_size()
    rank = parallel_state.get_tensor_model_parallel_rank()
    partition = scaled.shape[-1]
    start, end = VocabUtility.vocab_range_from_per_partition_vocab_size(partition, rank, world)
    if end > vocab_size:
        column = torch.arange(start, end, device=scaled.device)
        scaled = scaled.masked_fill(column >= vocab_size, float("-inf"))
    # The shift only keeps exp() in range; the log-sum-exp does not depend on it, so it takes no gradient.
    shift = scaled.detach().max(dim=-1).values
    if world > 1:
        dist.all_reduce(shift, op=dist.ReduceOp.MAX, group=parallel_state.get_tensor_model_parallel_group())
    sum_exp = torch.exp(scaled - shift.unsqueeze(-1)).sum(dim=-1)
    sum_exp = reduce_from_tensor_model_parallel_region(sum_exp)
    log_z = torch.log(sum_exp) + shift
    in_range = (labels >= start) & (labels < end)
    local = (labels - start).clamp(0, partition - 1)
    target = torch.gather(scaled, -1, local.unsqueeze(-1)).squeeze(-1)
    target = reduce_from_tensor_model_parallel_region(torch.where(in_range, target, torch.zeros_like(target)))
    z_loss = z_loss_multiplier * torch.square(log_z)
    return log_z - target + z_loss, z_loss


def maxtext_loss(
    loss_mask: torch.Tensor,
    labels: torch.Tensor,
    logits: torch.Tensor,
    *,
    z_loss_multiplier: float,
    vocab_size: int,
    logits_multiplier: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Token-aware loss (runtime/loss.py pattern 2): masked sum of MaxText's per-token loss, and the token count.

    Bind ``loss_mask`` and ``labels`` with functools.partial in forward_step;
    megatron's schedule passes the logits. ``loss_mask`` is 1 where the target
    counts (MaxText: ``targets_segmentation != 0``).
    """
    losses, z_losses = maxtext_token_losses(
        logits,
        labels,
        z_loss_multiplier=z_loss_multiplier,
        vocab_size=vocab_size,
        logits_multiplier=logits_multiplier,
    )
    mask = loss_mask.reshape(-1).float()
    loss_sum = torch.sum(losses.reshape(-1) * mask)
    z_sum = torch.sum(z_losses.detach().reshape(-1) * mask)
    count = mask.sum()
    metadata = {
        LOSS_KEY: torch.stack([loss_sum.detach(), count]),
        Z_LOSS_KEY: torch.stack([z_sum, count]),
    }
    return loss_sum, count.to(torch.int), metadata
