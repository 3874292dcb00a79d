"""One optimizer step over all microbatches, and forward-only evaluation.

The pipeline schedule (none, 1F1B, or interleaved with a virtual pipeline) comes
from megatron-core's ``get_forward_backward_func``; so do gradient reduction
(DDP, ``finalize_model_grads``) and the optimizer. What train_step adds is the
order of decisions: compute the global gradient norm once, skip the update when
it is not finite, clip, step the optimizer, step the schedule.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel
from megatron.core.optimizer.optimizer import ChainedOptimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate
from megatron.core.transformer.module import param_is_not_shared
from megatron.core.utils import get_model_config

from bridgec.runtime.loss import holds_loss_shard, loss_from_sums, loss_sums, metadata_pairs, reduce_metadata
from bridgec.runtime.optim import current_lr
from bridgec.runtime.parallel import collective_device
from bridgec.runtime.profile import phase

ForwardStep = Callable[[Iterator[Any], torch.nn.Module], tuple[torch.Tensor, Callable[..., Any]]]
"""The two-argument forward step megatron-core's schedules call (state already bound)."""

MEGATRON_CLIP_EPSILON = 1e-6
"""megatron-core's clip coefficient is max_norm / (norm + 1e-6) (clip_grads.py)."""


@attrs.frozen(kw_only=True)
class StepResult:
    """What one training step did (the same on every rank)."""

    loss: float
    """The step's loss, reduced over microbatches and data (and context) ranks; NaN when no token counted."""
    grad_norm: float
    learning_rate: float
    skipped: bool
    """No update was applied (non-finite gradients, or an fp16 loss-scale overflow)."""
    loss_scale: float
    """What this step's losses were multiplied by before backward: fp16's dynamic loss scale, else 1."""
    nonfinite: bool
    """The gradients were not finite for a reason other than an fp16 loss-scale overflow."""
    stop_vote: int = 0
    """The largest stop vote of any rank at the end of this step (0: carry on; see runtime.stop.StopCode)."""
    metadata: dict[str, float] = attrs.field(factory=dict)
    """The loss function's other metadata entries (a hook's auxiliary loss, ...), reduced like the loss."""
    forward_backward_seconds: float = 0.0
    """Wall time of the schedule's forward and backward passes (reading batches included) up to the global
    gradient norm, whose value waits for the device: so the time is the device's too."""
    optimizer_seconds: float = 0.0
    """Wall time of clipping, the optimizer, the schedule step and the end-of-step collective."""


@attrs.define
class MetadataKeys:
    """The metadata keys besides the loss that every rank reduces at the end of a step, in one agreed order.

    The end-of-step buffer has three slots per known key (numerator, denominator,
    ranks that had it), so ranks that hold no loss (earlier pipeline stages) take
    part without knowing the values. A key seen for the first time raises a flag
    in that buffer; on that step only, the ranks agree on the new keys and sum
    them in a second collective. The loop keeps one of these for the whole run.
    """

    keys: list[str] = attrs.Factory(list)
    warned: set[str] = attrs.Factory(set)
    """Keys whose values cannot be reduced, already warned about on this rank."""


@attrs.frozen(kw_only=True)
class EvalResult:
    loss: float | None

    @property
    def perplexity(self) -> float | None:
        if self.loss is None:
            return None
        return math.exp(self.loss) if self.loss < 700 else math.inf


def _iterators(data_iterators: Sequence[Iterator[Any] | None]) -> Any:
    # megatron-core expects one iterator without a virtual pipeline and a list with one.
    return list(data_iterators) if len(data_iterators) > 1 else data_iterators[0]


def clip_gradients(optimizer: ChainedOptimizer, *, max_norm: float, grad_norm: float, epsilon: float) -> float:
    """Scale the main gradients by max_norm / (grad_norm + epsilon) when that is below 1; return the factor.

    epsilon = 1e-6 is megatron-core's rule; 0 is optax's clip_by_global_norm.
    """
    if grad_norm + epsilon <= max_norm:
        return 1.0  # also covers a zero norm with epsilon 0 (a batch without loss tokens)
    coefficient = max_norm / (grad_norm + epsilon)
    for sub in optimizer.chained_optimizers:
        for param in sub.get_parameters():
            if param.grad is not None:
                param.grad.mul_(coefficient)
    return coefficient


def train_step(
    forward_step: ForwardStep,
    data_iterators: Sequence[Iterator[Any] | None],
    model: list[DistributedDataParallel],
    optimizer: ChainedOptimizer,
    scheduler: OptimizerParamScheduler,
    *,
    num_microbatches: int,
    micro_batch_size: int,
    seq_length: int,
    clip_grad: float,
    clip_epsilon: float = MEGATRON_CLIP_EPSILON,
    stop_vote: Callable[[], int] | None = None,
    metadata_keys: MetadataKeys | None = None,
    nvtx: bool = False,
) -> StepResult:
    """Forward and backward over ``num_microbatches``, then (unless skipped) clip and update.

    The step ends with one small all-reduce over every rank that carries both the
    loss sums (reduced as ``runtime.loss`` describes) and each rank's vote on
    whether training should stop (``stop_vote()``, read at that moment), so
    agreeing on a stop costs no extra collective. The loss function's other
    metadata entries travel in it too: pass the same ``metadata_keys`` every step
    (it remembers which keys the buffer carries). The two phases are named ranges
    in a profiler's trace, and NVTX ranges with ``nvtx`` (``runtime.profile``).
    """
    scale_losses(model, optimizer)
    for chunk in model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    loss_scale = float(optimizer.get_loss_scale())
    began = time.perf_counter()
    with phase("forward-backward", nvtx=nvtx):
        forward_backward = get_forward_backward_func()
        forward_data = forward_backward(
            forward_step_func=forward_step,
            data_iterator=_iterators(data_iterators),
            model=model,
            num_microbatches=num_microbatches,
            seq_length=seq_length,
            micro_batch_size=micro_batch_size,
            decoder_seq_length=seq_length,
            forward_only=False,
        )
        learning_rate = current_lr(optimizer)
        overflow = optimizer.prepare_grads()  # fp16: unscales and updates the loss scale
        grad_norm = float(optimizer.get_grad_norm())  # global: every rank gets the same value
    nonfinite = not overflow and not math.isfinite(grad_norm)
    skipped = overflow or nonfinite
    backward_done = time.perf_counter()
    with phase("optimizer", nvtx=nvtx):
        if not skipped:
            if clip_grad > 0.0:
                clip_gradients(optimizer, max_norm=clip_grad, grad_norm=grad_norm, epsilon=clip_epsilon)
            optimizer.step_with_ready_grads()
            scheduler.step(increment=1)
        end = _end_of_step(forward_data, stop_vote() if stop_vote is not None else 0, metadata_keys or MetadataKeys())
    optimizer_done = time.perf_counter()
    return StepResult(
        loss=end.loss,
        grad_norm=grad_norm,
        learning_rate=learning_rate,
        skipped=skipped,
        loss_scale=loss_scale,
        nonfinite=nonfinite,
        stop_vote=end.stop_vote,
        metadata=end.metadata,
        forward_backward_seconds=backward_done - began,
        optimizer_seconds=optimizer_done - backward_done,
    )


def params_norm(optimizer: ChainedOptimizer) -> float:
    """The L2 norm of every parameter, counted once (Megatron's params-norm): a collective on every rank.

    Reads the optimizer's (main, fp32) parameters as megatron-core's get_grad_norm
    reads their gradients: tensor-parallel duplicates and the shared output
    embedding are left out, and each sub-optimizer's squares are summed over its
    gradient-statistics group (model-parallel ranks, and data ranks when the
    distributed optimizer shards the parameters).
    """
    total = 0.0
    for sub in optimizer.chained_optimizers:
        square = torch.zeros(1, dtype=torch.float64, device=collective_device())
        for param in sub.get_parameters():
            if param_is_not_shared(param) and param_is_not_tensor_parallel_duplicate(param):
                square += param.detach().double().square().sum().to(square.device)
        group = sub.get_grad_stats_parallel_group()
        if dist.is_initialized() and dist.get_world_size(group) > 1:
            dist.all_reduce(square, group=group)
        total += float(square.item())
    return math.sqrt(total)


def scale_losses(model: list[DistributedDataParallel], optimizer: ChainedOptimizer) -> None:
    """Have megatron's schedules multiply each microbatch's loss by the optimizer's loss scale before backward.

    Megatron-LM's train() sets ``config.grad_scale_func = optimizer.scale_loss``
    (schedules.py backward_step applies it to the last stage's output). Without
    it an fp16 run's gradients are never scaled, yet the optimizer still divides
    them by its loss scale (2^32 at first): every update is ~2^-32 too small
    and no overflow ever lowers the scale. For fp32 and bf16 the scale is 1.
    """
    for chunk in model:
        get_model_config(chunk).grad_scale_func = optimizer.scale_loss


STOP_VOTE_SLOTS = 8
"""Room for stop codes 0..7 in the end-of-step buffer (runtime.stop.StopCode uses 0..4)."""
_NEW_KEYS = 2 + STOP_VOTE_SLOTS
"""The slot that counts ranks which saw a metadata key no rank had reduced before."""
_KEY_SLOTS = _NEW_KEYS + 1
"""Where the known metadata keys' (numerator, denominator, ranks that had it) triples start."""


@attrs.frozen(kw_only=True)
class _StepEnd:
    loss: float
    stop_vote: int
    metadata: dict[str, float]


def _end_of_step(forward_data: Sequence[Any], vote: int, known: MetadataKeys) -> _StepEnd:
    """The step's one collective: loss sums and metadata sums (from the ranks that hold a loss shard) and one-hot
    stop votes, summed over all ranks. Returns the step's loss and metadata (on every rank) and the largest vote."""
    holds = holds_loss_shard()
    pairs, unusable = metadata_pairs(forward_data) if holds else ({}, {})
    _warn_once(unusable, known)
    new = [key for key in pairs if key not in known.keys]
    buffer = torch.zeros(_KEY_SLOTS + 3 * len(known.keys), dtype=torch.float64, device=collective_device())
    if holds:
        buffer[:2] = loss_sums(forward_data)
        buffer[_KEY_SLOTS:] = _triples(pairs, known.keys)
    buffer[_NEW_KEYS] = 1.0 if new else 0.0
    buffer[2 + vote] = 1.0
    _sum_over_ranks(buffer)
    buffer = buffer.cpu()
    votes = buffer[2:_NEW_KEYS].tolist()
    triples = buffer[_KEY_SLOTS:]
    if buffer[_NEW_KEYS] > 0:  # some rank saw a new key: agree on it, then sum it (this step only)
        added = _agree_on_new_keys(new)
        known.keys += added
        extra = _triples(pairs, added).to(collective_device())
        _sum_over_ranks(extra)
        triples = torch.cat([triples, extra.cpu()])
    metadata = {
        key: loss_from_sums(triples[3 * index : 3 * index + 2])
        for index, key in enumerate(known.keys)
        if triples[3 * index + 2] > 0  # no rank had it this step
    }
    return _StepEnd(
        loss=loss_from_sums(buffer[:2]),
        stop_vote=max(code for code, count in enumerate(votes) if count > 0),
        metadata=metadata,
    )


def _triples(pairs: dict[str, torch.Tensor], keys: Sequence[str]) -> torch.Tensor:
    """(numerator, denominator, 1) for each of ``keys`` this rank has, zeros for the others."""
    triples = torch.zeros(3 * len(keys), dtype=torch.float64)
    for index, key in enumerate(keys):
        if key in pairs:
            triples[3 * index : 3 * index + 2] = pairs[key]
            triples[3 * index + 2] = 1.0
    return triples


def _sum_over_ranks(buffer: torch.Tensor) -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(buffer)


def _agree_on_new_keys(new: list[str]) -> list[str]:
    """Every rank's new keys, in rank order then first appearance: the same list on every rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return list(new)
    gathered: list[list[str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, new)
    return list(dict.fromkeys(key for keys in gathered for key in keys or []))


def _warn_once(unusable: dict[str, str], known: MetadataKeys) -> None:
    """One warning per key whose value cannot be reduced, from the rank that logs (the first data rank)."""
    fresh = {key: what for key, what in unusable.items() if key not in known.warned}
    known.warned.update(fresh)
    if not fresh or parallel_state.get_data_parallel_rank(with_context_parallel=True) != 0:
        return
    for key, what in fresh.items():
        print(
            f"bridgec: warning: the loss function's metadata {key!r} is {what}, not a [numerator, denominator] "
            "tensor or a number; it is not reduced or logged",
            file=sys.stderr,
            flush=True,
        )


@torch.no_grad()
def _forward_only(
    forward_step: ForwardStep,
    data_iterators: Sequence[Iterator[Any] | None],
    model: list[DistributedDataParallel],
    *,
    num_batches: int,
    num_microbatches: int,
    micro_batch_size: int,
    seq_length: int,
    collect_non_loss_data: bool,
) -> list[Any]:
    """``num_batches`` forward-only schedules in eval mode; what the last stage's loss functions returned."""
    for chunk in model:
        chunk.eval()
    forward_backward = get_forward_backward_func()
    outputs: list[Any] = []
    try:
        for _ in range(num_batches):
            outputs += forward_backward(
                forward_step_func=forward_step,
                data_iterator=_iterators(data_iterators),
                model=model,
                num_microbatches=num_microbatches,
                seq_length=seq_length,
                micro_batch_size=micro_batch_size,
                decoder_seq_length=seq_length,
                forward_only=True,
                collect_non_loss_data=collect_non_loss_data,
            )
    finally:
        for chunk in model:
            chunk.train()
    return outputs


def evaluate(
    forward_step: ForwardStep,
    data_iterators: Sequence[Iterator[Any] | None],
    model: list[DistributedDataParallel],
    *,
    num_batches: int,
    num_microbatches: int,
    micro_batch_size: int,
    seq_length: int,
) -> EvalResult:
    """Forward-only over ``num_batches`` global batches, reduced like the training loss."""
    forward_data = _forward_only(
        forward_step,
        data_iterators,
        model,
        num_batches=num_batches,
        num_microbatches=num_microbatches,
        micro_batch_size=micro_batch_size,
        seq_length=seq_length,
        collect_non_loss_data=False,
    )
    return EvalResult(loss=reduce_metadata(forward_data))


def collect_non_loss_data(
    forward_step: ForwardStep,
    data_iterators: Sequence[Iterator[Any] | None],
    model: list[DistributedDataParallel],
    *,
    num_microbatches: int,
    micro_batch_size: int,
    seq_length: int,
) -> list[Any]:
    """Forward-only over one global batch, returning what the loss function hands back per microbatch.

    The forward step's loss function is called as ``loss_func(output,
    non_loss_data=True)`` (pattern 3, e.g. ``runtime.loss.token_outputs``); nothing
    is reduced. Only the last pipeline stage gets the list; other stages get [].
    """
    return _forward_only(
        forward_step,
        data_iterators,
        model,
        num_batches=1,
        num_microbatches=num_microbatches,
        micro_batch_size=micro_batch_size,
        seq_length=seq_length,
        collect_non_loss_data=True,
    )
