"""Distillation's intermediate layer pairs: losses between a student layer's and a teacher layer's hidden states.

The hidden states are the output of a megatron-core TransformerLayer, ``[seq, batch, hidden]``,
caught by a forward hook while the model runs (capturing_layers). Per token:

    cosine: 1 - s.t / (|s| |t|)        (ModelOpt's default for hidden states)
    mse:    mean over hidden of (s - t)^2

Each is weighted by the loss mask and summed over the tokens, like the LM loss; the step divides every part
once by the global token count.

Without sequence parallelism (refused at compile time with layer pairs) the hidden states between layers are
whole on every tensor-parallel rank, so each rank computes the same loss and the same gradient of it, as it does
for the cross entropy: no collective. The teacher's states are constants (it runs under no_grad).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator
from typing import Any

import attrs
import torch


@attrs.frozen(kw_only=True)
class LayerPair:
    """One [[distill.layers]] entry: layers are 0-based over the whole model."""

    student: int
    teacher: int
    loss: str
    """cosine or mse."""
    scale: float

    @property
    def key(self) -> str:
        """The metrics' name of this pair's loss (per token, unscaled)."""
        return f"layer {self.student}-{self.teacher} {self.loss} loss"


def layer_pairs(rows: Iterable[tuple[int, int, str, float]]) -> tuple[LayerPair, ...]:
    """The script's KD_LAYER_PAIRS rows, (student layer, teacher layer, loss, scale), as LayerPairs."""
    return tuple(LayerPair(student=s, teacher=t, loss=loss, scale=scale) for s, t, loss, scale in rows)


@contextlib.contextmanager
def capturing_layers(model: torch.nn.Module, indices: Iterable[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Inside: each TransformerLayer of ``model`` (an unwrapped GPTModel chunk) whose 0-based global index is in
    ``indices`` writes its output hidden states into the dict yielded, under its index. Layers this chunk does not
    hold are skipped (under pipeline parallelism only the last stage's chunk reads them).

    The hooks live for the one forward inside, so a second forward of the same layer (activation recompute,
    refused with layer pairs at compile time) cannot replace the tensor in the autograd graph.
    """
    wanted = set(indices)
    captured: dict[int, torch.Tensor] = {}
    handles = [
        layer.register_forward_hook(functools.partial(_keep, captured, layer.layer_number - 1))
        for layer in model.decoder.layers
        if layer.layer_number - 1 in wanted  # megatron-core's layer_number: 1-based, offset by the stage
    ]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _keep(captured: dict[int, torch.Tensor], index: int, module: Any, args: Any, output: Any) -> None:
    # TransformerLayer.forward returns (hidden_states, context).
    captured[index] = output[0] if isinstance(output, tuple) else output


def hidden_state_loss(student: torch.Tensor, teacher: torch.Tensor, *, loss: str) -> torch.Tensor:
    """The per-token loss ``[seq, batch]`` in fp32 of hidden states ``[seq, batch, hidden]``; differentiable in
    ``student`` only."""
    if student.shape != teacher.shape:
        raise ValueError(f"student hidden states {tuple(student.shape)} and teacher's {tuple(teacher.shape)} differ")
    s, t = student.float(), teacher.detach().float()
    match loss:
        case "cosine":
            return 1.0 - (s * t).sum(dim=-1) / (s.norm(dim=-1) * t.norm(dim=-1)).clamp(min=1e-8)
        case "mse":
            return (s - t).square().mean(dim=-1)
        case _:
            raise ValueError(f"unknown layer loss {loss!r} (cosine or mse)")


@attrs.frozen(kw_only=True)
class HiddenStates:
    """What one microbatch's layer losses read: the pairs and the states each model's hooks caught."""

    pairs: tuple[LayerPair, ...]
    student: dict[int, torch.Tensor]
    teacher: dict[int, torch.Tensor]


def layer_loss_sums(loss_mask: torch.Tensor, states: HiddenStates) -> dict[str, torch.Tensor]:
    """Each pair's loss summed over the counted tokens (unscaled), by its metrics key.

    The loss mask is ``[batch, seq]``, the hidden states ``[seq, batch, hidden]``: the per-token loss is transposed
    to the mask's order before the two are multiplied.
    """
    sums = {}
    for pair in states.pairs:
        for model, index, held in (
            ("student", pair.student, states.student),
            ("teacher", pair.teacher, states.teacher),
        ):
            if index not in held:
                raise ValueError(
                    f"the {model}'s layer {index} was not caught in this forward (layers caught: {sorted(held)})"
                )
        per_token = hidden_state_loss(states.student[pair.student], states.teacher[pair.teacher], loss=pair.loss)
        sums[pair.key] = (per_token.transpose(0, 1) * loss_mask.float()).sum()
    return sums
