"""Knowledge distillation's loss: KL divergence between teacher and student over vocabulary-parallel logits.

Under tensor parallelism each rank holds a slice of the (padded) vocabulary's
logits, ``[batch, seq, vocabulary / tensor]``. The full vocabulary is never
gathered on one rank: a log-softmax over the split vocabulary needs only two
all-reduces per model (the max and the sum of exponentials, one number per
token), and the per-token divergence one more (each rank's slice of the sum).

Per token, with temperature T, teacher logits t and student logits s:

    p = softmax(t / T), q = softmax(s / T)
    KL(p || q) = sum_v p_v (log p_v - log q_v)

multiplied by T^2, so that the gradient keeps its scale as T changes (Hinton et
al., 2015): d(T^2 KL)/ds_v = T (q_v - p_v). That gradient needs only this rank's
slice of p and q, so backward is local (no collective); the teacher gets none.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import attrs
import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel
from megatron.core.transformer.module import Float16Module

from bridgec.runtime.distill_layers import HiddenStates, layer_loss_sums
from bridgec.runtime.errors import RunError
from bridgec.runtime.loss import LOSS_KEY
from bridgec.runtime.parallel import Layout


def vocab_parallel_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float,
    group: Any = None,
) -> torch.Tensor:
    """T^2 KL(teacher || student) per token, ``[batch, seq]`` in fp32, over logits split by ``group`` (the
    tensor-parallel group; None or a group of one: the whole vocabulary is here).

    Differentiable in ``student_logits`` only; ``teacher_logits`` is treated as a constant.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ"
        )
    return _VocabParallelKL.apply(student_logits, teacher_logits.detach(), temperature, group)


class _VocabParallelKL(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, student: torch.Tensor, teacher: torch.Tensor, temperature: float, group: Any
    ) -> torch.Tensor:
        log_q = _log_softmax(student.float() / temperature, group)
        log_p = _log_softmax(teacher.float() / temperature, group)
        p = log_p.exp()
        divergence = (p * (log_p - log_q)).sum(dim=-1)
        _all_reduce(divergence, dist.ReduceOp.SUM, group)
        ctx.save_for_backward(log_q.exp(), p)
        ctx.temperature = temperature
        ctx.dtype = student.dtype
        return divergence * temperature**2

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        q, p = ctx.saved_tensors
        # d(T^2 KL)/ds = T^2 x (q - p) / T
        grad_student = grad.unsqueeze(-1) * (q - p) * ctx.temperature
        return grad_student.to(ctx.dtype), None, None, None


def _log_softmax(logits: torch.Tensor, group: Any) -> torch.Tensor:
    """log softmax over the last dimension, split over ``group``'s ranks."""
    highest = logits.max(dim=-1, keepdim=True).values
    _all_reduce(highest, dist.ReduceOp.MAX, group)
    shifted = logits - highest
    total = shifted.exp().sum(dim=-1, keepdim=True)
    _all_reduce(total, dist.ReduceOp.SUM, group)
    return shifted - total.log()


def _all_reduce(tensor: torch.Tensor, op: dist.ReduceOp, group: Any) -> None:
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(tensor, op=op, group=group)


def masked_kd_loss(loss_mask: torch.Tensor, divergence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The divergence summed over the tokens that count, and their number: the same weighting as the LM loss
    (runtime.loss.masked_token_loss), so the step divides both by the global token count once."""
    mask = loss_mask.reshape(-1).float()
    return (divergence.reshape(-1) * mask).sum(), mask.sum()


KD_LOSS_KEY = "kd loss"
"""The metrics' name of the KL part: T^2 KL summed over the counted tokens, per token."""
CE_LOSS_KEY = "ce loss"
"""The metrics' name of the student's cross entropy against the labels, per token (logged even when skipped)."""


@attrs.frozen(kw_only=True)
class DistillLoss:
    """The parts of one microbatch's distillation loss, each summed over its counted tokens."""

    total: torch.Tensor
    """kd_loss_scale x KL (+ cross entropy) (+ each layer pair's scale x its loss): what backward differentiates."""
    kd: torch.Tensor
    ce: torch.Tensor
    count: torch.Tensor
    layers: dict[str, torch.Tensor] = attrs.field(factory=dict)
    """Each [[distill.layers]] pair's loss, unscaled, by its metrics key (runtime.distill_layers)."""


def distill_loss_parts(
    loss_mask: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor,
    logits: torch.Tensor,
    *,
    temperature: float,
    kd_loss_scale: float,
    skip_lm_loss: bool,
    group: Any = None,
    hidden: HiddenStates | None = None,
) -> DistillLoss:
    """The KL and cross-entropy sums of one microbatch, over ``group``'s split of the vocabulary, and the layer
    pairs' sums when ``hidden`` holds their states."""
    # The KL first: megatron-core's vocab_parallel_cross_entropy overwrites its input with the softmax in place,
    # and logits.float() of fp32 logits is the logits themselves.
    kd, _ = masked_kd_loss(loss_mask, vocab_parallel_kl(logits, teacher_logits, temperature=temperature, group=group))
    ce, count = masked_kd_loss(loss_mask, tensor_parallel.vocab_parallel_cross_entropy(logits.float(), labels))
    total = kd_loss_scale * kd if skip_lm_loss else ce + kd_loss_scale * kd
    layers: dict[str, torch.Tensor] = {}
    if hidden is not None:
        layers = layer_loss_sums(loss_mask, hidden)
        for pair in hidden.pairs:
            total = total + pair.scale * layers[pair.key]
    return DistillLoss(total=total, kd=kd, ce=ce, count=count, layers=layers)


def distill_loss(
    loss_mask: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor,
    logits: torch.Tensor,
    *,
    temperature: float,
    kd_loss_scale: float,
    skip_lm_loss: bool,
    hidden: HiddenStates | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """megatron-core's token-aware loss function of a distilling forward_step: (loss sum, token count, metadata).

    Like runtime.loss.masked_token_loss, sums over the counted tokens that the step divides once by the global
    count; the metadata carries the total as the loss and its parts by name (the KL, the cross entropy and each
    layer pair's loss, hidden: the [[distill.layers]] pairs and their caught states).
    """
    parts = distill_loss_parts(
        loss_mask,
        labels,
        teacher_logits,
        logits,
        temperature=temperature,
        kd_loss_scale=kd_loss_scale,
        skip_lm_loss=skip_lm_loss,
        group=parallel_state.get_tensor_model_parallel_group(),
        hidden=hidden,
    )
    return (
        parts.total,
        parts.count.to(torch.int),
        {
            LOSS_KEY: torch.stack([parts.total.detach(), parts.count]),
            KD_LOSS_KEY: torch.stack([parts.kd.detach(), parts.count]),
            CE_LOSS_KEY: torch.stack([parts.ce.detach(), parts.count]),
            **{key: torch.stack([value.detach(), parts.count]) for key, value in parts.layers.items()},
        },
    )


def freeze_teacher(chunk: torch.nn.Module, *, layout: Layout, dtype: str) -> torch.nn.Module:
    """The teacher as it runs: on this rank's device, cast like the student, no gradients, eval mode.

    It stays outside DDP, the optimizer and the checkpointer (the script keeps it apart from Built), so it takes
    no gradient buffer, no optimizer state and no room in checkpoints.
    """
    if layout.device.type == "cuda":
        chunk = chunk.cuda(layout.device)
    if dtype in ("bf16", "fp16"):
        chunk = Float16Module(chunk.config, chunk)
    chunk.requires_grad_(False)
    chunk.eval()
    return chunk


@contextlib.contextmanager
def naming_the_teacher() -> Iterator[None]:
    """A RunError of the loaders inside (the student's own: Orbax, Megatron-LM, bridgec) names the teacher.

    Those loaders speak of "this model" and "this run"; in a distillation's script the model they load is the
    teacher, whose shape is [distill.teacher]'s. The code and every_rank stay the loader's (CHECKPOINT_ERROR: exit 6).
    """
    try:
        yield
    except RunError as error:
        raise RunError(
            error.code,
            "loading the teacher's weights failed ([distill.teacher]; below, 'this model' and 'this run' mean the "
            f"teacher):\n{error.message}",
            every_rank=error.every_rank,
            step=error.step,
        ) from None
