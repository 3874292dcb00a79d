"""A hand-written full-vocabulary KD loss, the reference for runtime.distill at tensor = 1 and 2."""

from __future__ import annotations

import torch

KD_TEMPERATURE = 2.0


def kd_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Student and teacher logits [2, 5, 16] (spread wide, so the softmax is far from uniform) and token weights."""
    generator = torch.Generator().manual_seed(15)
    student = torch.randn(2, 5, 16, generator=generator) * 4
    teacher = torch.randn(2, 5, 16, generator=generator) * 4 + 1
    weights = torch.rand(2, 5, generator=generator)
    return student, teacher, weights


def reference_kd(
    student: torch.Tensor, teacher: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """T^2 sum_v p_v (log p_v - log q_v) per token in float64 over the whole vocabulary, and the gradient of the
    weighted sum in the student's logits (by autograd)."""
    s = student.double().clone().requires_grad_(True)
    t = teacher.double()
    log_q = s / KD_TEMPERATURE - torch.logsumexp(s / KD_TEMPERATURE, dim=-1, keepdim=True)
    log_p = t / KD_TEMPERATURE - torch.logsumexp(t / KD_TEMPERATURE, dim=-1, keepdim=True)
    divergence = (log_p.exp() * (log_p - log_q)).sum(dim=-1) * KD_TEMPERATURE**2
    (divergence * weights.double()).sum().backward()
    return divergence.detach(), s.grad


def relative_error(value: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """The largest |value - expected| / max(|expected|, 1): the losses here reach ~26, where one float32 step is
    1.9e-6, so a float32 loss is compared with the float64 reference relative to its size (gradients, below 1,
    are compared absolutely)."""
    return ((value.double() - expected).abs() / expected.abs().clamp(min=1.0)).max()


def reference_layer_loss(
    student: torch.Tensor, teacher: torch.Tensor, weights: torch.Tensor, loss: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer pair's loss in float64 on hidden states ``[seq, batch, hidden]``, weighted by ``weights``
    ``[batch, seq]`` and summed, and its gradient in the student's states (by autograd). Per token, cosine:
    1 - s.t / (|s| |t|); mse: sum over hidden of (s - t)^2, divided by the width."""
    s = student.double().clone().requires_grad_(True)
    t = teacher.double()
    if loss == "cosine":
        per_token = 1 - (s * t).sum(-1) / ((s * s).sum(-1).sqrt() * (t * t).sum(-1).sqrt())
    else:
        per_token = ((s - t) ** 2).sum(-1) / s.shape[-1]
    total = (per_token.transpose(0, 1) * weights.double()).sum()
    total.backward()
    return total.detach(), s.grad


def layer_loss_differences() -> dict[str, float | bool]:
    """Both layer losses of a two-layer GPTModel's layer 0 (on the current tensor-parallel layout) against a fixed
    teacher state, as a distilling forward_step computes them: the state caught by runtime.distill_layers'
    capturing_layers, the sums by layer_loss_sums. Returned: each loss's relative difference from the float64
    reference and its gradient's in the caught state (relative_error), and whether the gradient reached layer
    0's weights and left layer 1's alone (the hook caught layer 0's output, in the graph). The model recomputes its
    core attention (recompute granularity "selective", which [[distill.layers]] allows)."""
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig

    from bridgec.runtime.distill_layers import HiddenStates, LayerPair, capturing_layers, layer_loss_sums

    config = TransformerConfig(
        num_layers=2, hidden_size=16, num_attention_heads=4, use_cpu_initialization=True, hidden_dropout=0.0,
        attention_dropout=0.0, tensor_model_parallel_size=parallel_state.get_tensor_model_parallel_world_size(),
        recompute_granularity="selective",  # core attention recomputed in backward: the layer's output is not
    )  # fmt: skip
    torch.manual_seed(5)
    model = GPTModel(
        config=config, transformer_layer_spec=get_gpt_layer_local_spec(), vocab_size=32, max_sequence_length=8,
        position_embedding_type="rope",
    )  # fmt: skip
    generator = torch.Generator().manual_seed(16)
    tokens = torch.randint(0, 32, (2, 8), generator=generator)
    teacher = torch.randn(8, 2, 16, generator=generator)
    weights = torch.rand(2, 8, generator=generator)
    pairs = tuple(LayerPair(student=0, teacher=7, loss=loss, scale=1.0) for loss in ("cosine", "mse"))
    with capturing_layers(model, [0]) as caught:
        model(tokens, torch.arange(8).repeat(2, 1), None)
    state = caught[0]
    state.retain_grad()
    sums = layer_loss_sums(weights, HiddenStates(pairs=pairs, student=caught, teacher={7: teacher}))
    results: dict[str, float | bool] = {}
    for pair in pairs:
        state.grad = None
        sums[pair.key].backward(retain_graph=True)
        expected, expected_grad = reference_layer_loss(state.detach(), teacher, weights, pair.loss)
        results[f"{pair.loss} loss"] = float(relative_error(sums[pair.key].detach(), expected))
        # Relative, as the losses: cosine's gradient goes as 1 / |s|, and the states of a freshly drawn model are
        # small (|s| ~ 0.1), so its entries reach ~10, where one float32 step is ~1e-6.
        results[f"{pair.loss} grad"] = float(relative_error(state.grad, expected_grad))
    first, second = model.decoder.layers
    results["layer 0 weights reached"] = all(p.grad is not None and p.grad.abs().sum() > 0 for p in first.parameters())
    results["layer 1 weights untouched"] = all(p.grad is None for p in second.parameters())
    return results
