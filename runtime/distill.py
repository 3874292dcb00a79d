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

from typing import Any

import torch
import torch.distributed as dist


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
