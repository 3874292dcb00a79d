"""Loss functions and the reduction of their results across microbatches and ranks.

The three patterns megatron-core's schedules accept from a ``loss_func``
(Megatron Bridge's entry-points docs):

1. standard ``(loss, metadata)``: ``loss`` is this microbatch's mean; the schedule
   divides it by the number of microbatches before backward, and DDP averages
   gradients over data-parallel ranks. Reported loss: the mean of the
   microbatch means over microbatches and data-parallel ranks.
2. token-aware ``(loss, num_tokens, metadata)``: ``loss`` is this microbatch's
   *sum* over real tokens. With ``calculate_per_token_loss`` the schedule leaves
   it alone, DDP sums gradients, and ``finalize_model_grads`` divides them by
   the global token count. Reported loss: sum of sums / sum of counts, over
   microbatches and data (and context) parallel ranks.
3. forward-only with ``collect_non_loss_data``: ``loss_func(output,
   non_loss_data=True)`` returns anything; nothing is reduced.

Loss functions put ``[sum, count]`` (pattern 2) or ``[mean, 1]`` (pattern 1)
into the metadata under ``"lm loss"``; the sums are added over microbatches and
ranks and divided once, in :func:`loss_from_sums`. Every other metadata entry
(a loss hook's auxiliary loss, say) is reduced the same way (:func:`metadata_pairs`):
a two-element tensor is a ``[numerator, denominator]`` pair, a number or
one-element tensor ``v`` counts as ``[v, 1]`` (its mean over microbatches and ranks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from bridgec.runtime.parallel import collective_device

LOSS_KEY = "lm loss"


def masked_token_loss(
    loss_mask: torch.Tensor, output_tensor: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Token-aware loss (pattern 2): sum of per-token losses over real tokens, and their count.

    ``output_tensor`` is GPTModel's per-token cross entropy [batch, seq] (it
    returns losses when given labels); ``loss_mask`` is 1 for tokens that count.
    """
    mask = loss_mask.reshape(-1).float()
    losses = output_tensor.float().reshape(-1)
    loss_sum = torch.sum(losses * mask)
    num_tokens = mask.sum().to(torch.int)
    return loss_sum, num_tokens, {LOSS_KEY: torch.stack([loss_sum.detach(), mask.sum()])}


def masked_mean_loss(
    loss_mask: torch.Tensor, output_tensor: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Standard loss (pattern 1): the mean per-token loss of this microbatch.

    With context parallelism each rank holds a slice of every sequence: the
    token count is summed over the context group so the mean is the
    microbatch's, not the slice's, and the reported pair is ``[slice sum /
    count, 1 / context size]``, which sums over the context ranks to
    ``[microbatch mean, 1]``. The loss is returned unscaled: megatron-core's
    schedule multiplies a two-value loss by the context size itself
    (schedules.py ``forward_step_calc_loss``, ``output_tensor *= cp_group_size``),
    which undoes DDP's average over the data x context ranks, so the gradient is
    the whole-sequence mean's.
    """
    mask = loss_mask.reshape(-1).float()
    losses = output_tensor.float().reshape(-1)
    count = mask.sum().detach()
    context = parallel_state.get_context_parallel_world_size() if parallel_state.model_parallel_is_initialized() else 1
    if context > 1:
        dist.all_reduce(count, group=parallel_state.get_context_parallel_group())
    # A microbatch whose tokens are all masked contributes 0, not NaN.
    loss = torch.sum(losses * mask) / torch.clamp(count, min=1.0)
    reported = torch.stack([loss.detach(), torch.full_like(loss, 1.0 / context)])
    return loss, {LOSS_KEY: reported}


def token_outputs(
    loss_mask: torch.Tensor, output_tensor: torch.Tensor, non_loss_data: bool = True
) -> dict[str, torch.Tensor]:
    """Forward-only pattern 3: hand back the model's per-token output and the mask, unreduced.

    megatron-core calls this as ``loss_func(output, non_loss_data=True)`` when the
    schedule runs with ``collect_non_loss_data=True``; whatever it returns is
    collected per microbatch on the last pipeline stage, with no loss processing.
    """
    return {"output": output_tensor.detach(), "loss_mask": loss_mask.detach()}


def loss_sums(forward_data: Sequence[dict[str, Any]], *, key: str = LOSS_KEY) -> torch.Tensor:
    """This rank's ``[numerator, denominator]`` summed over its microbatches (float64; zeros when none)."""
    if not forward_data:
        return torch.zeros(2, dtype=torch.float64, device=collective_device())
    return torch.stack([entry[key].reshape(2).double() for entry in forward_data]).sum(dim=0).to(collective_device())


def loss_from_sums(total: torch.Tensor) -> float:
    """The one division: loss = (sum over microbatches m and data/context ranks r of numerator[m, r]) /
    (sum of denominator[m, r]).

    For token-aware losses the numerator is a token-loss sum and the denominator
    a token count, giving the global per-token mean; for standard losses they are
    a microbatch mean and 1, giving the mean of means. NaN when nothing counted.
    """
    numerator, denominator = total.cpu().tolist()
    return numerator / denominator if denominator > 0 else float("nan")


def metadata_pairs(forward_data: Sequence[dict[str, Any]]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """This rank's ``[numerator, denominator]`` of every metadata key but the loss, summed over its microbatches.

    Returns the pairs (float64, in the order the keys first appear) and, for
    values that are no such pair, the key and what the value is instead.
    """
    pairs: dict[str, torch.Tensor] = {}
    unusable: dict[str, str] = {}
    for entry in forward_data:
        for key, value in entry.items():
            if key == LOSS_KEY or key in unusable:
                continue
            pair = _as_pair(value)
            if pair is None:
                unusable[key] = _what(value)
                pairs.pop(key, None)
            else:
                pairs[key] = pairs[key] + pair if key in pairs else pair
    return pairs, unusable


def _as_pair(value: object) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor) and value.numel() == 2:
        return value.detach().reshape(2).double().cpu()
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return torch.tensor([value.detach().double().item(), 1.0], dtype=torch.float64)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor([float(value), 1.0], dtype=torch.float64)
    return None


def _what(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    article = "an" if type(value).__name__[0] in "aeiou" else "a"
    return f"{article} {type(value).__name__}"


def holds_loss_shard() -> bool:
    """Whether this rank's sums belong in a world-wide total: last pipeline stage, first tensor rank.

    Every tensor-parallel rank of the last stage computes the same loss; counting
    only the first one makes a sum over *all* ranks equal to the sum over the
    data and context parallel ranks that the reduction needs.
    """
    return (
        parallel_state.is_pipeline_last_stage(ignore_virtual=True)
        and parallel_state.get_tensor_model_parallel_rank() == 0
    )


def reduce_metadata(forward_data: Sequence[dict[str, Any]], *, key: str = LOSS_KEY) -> float | None:
    """Reduce the ``[numerator, denominator]`` pairs of a step to one number (see :func:`loss_from_sums`).

    Collective over the data+context parallel group; call it on the last
    pipeline stage only (the others hold no loss and get None). Training steps
    fold the same sums into their one end-of-step collective instead
    (``step.train_step``); evaluation uses this.
    """
    if not parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        return None
    total = loss_sums(forward_data, key=key)
    group = parallel_state.get_data_parallel_group(with_context_parallel=True)
    if dist.get_world_size(group) > 1:
        dist.all_reduce(total, group=group)
    return loss_from_sums(total)
