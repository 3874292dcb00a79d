"""Model pieces megatron-core's local (pure PyTorch) layers lack: zero-centred norms and scaled input embeddings.

megatron-core's local norm (``WrappedTorchNorm``) refuses
``layernorm_zero_centered_gamma``; only transformer-engine's norm applies
``1 + weight``. :func:`zero_centered_block` puts :class:`ZeroCenteredNorm` in
every norm slot of a local layer spec (the two per layer, the per-head query and
key norms) and in the block's final norm, so Gemma's RMSNorm (``x_normed * (1 + w)``)
and MaxText's gpt3 LayerNorm run on CPU with their stored weights.

:func:`scale_embeddings` multiplies the word embeddings by a constant
(Gemma's ``sqrt(hidden_size)``), which megatron-core's embedding has no option for.
"""

from __future__ import annotations

import dataclasses

import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.torch_norm import WrappedTorchNorm
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

__all__ = ["ZeroCenteredNorm", "scale_embeddings", "zero_centered_block", "zero_centered_layer"]


class ZeroCenteredNorm(torch.nn.Module):
    """LayerNorm or RMSNorm (``config.normalization``) whose scale is stored as ``scale - 1``: applied as ``1 + weight``.

    The weight starts at 0 (the identity scale). Same arguments as megatron-core's
    ``WrappedTorchNorm``; the arithmetic is torch's own norm with the scale ``1 + weight``.
    """

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5, **_: object) -> None:
        super().__init__()
        self.rms = config.normalization == "RMSNorm"
        self.eps = eps
        self.shape = (hidden_size,)
        self.weight = torch.nn.Parameter(torch.zeros(hidden_size, dtype=config.params_dtype))
        self.bias = None if self.rms else torch.nn.Parameter(torch.zeros(hidden_size, dtype=config.params_dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = 1 + self.weight
        if self.rms:
            return torch.nn.functional.rms_norm(x, self.shape, scale, self.eps)
        return torch.nn.functional.layer_norm(x, self.shape, scale, self.bias, self.eps)


def _swap(spec: object) -> object:
    """``spec`` with megatron-core's local norm replaced by ZeroCenteredNorm, recursively through submodules."""
    if spec is WrappedTorchNorm:
        return ZeroCenteredNorm
    if isinstance(spec, ModuleSpec):
        return dataclasses.replace(spec, submodules=_swap(spec.submodules))
    if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        changes = {field.name: _swap(getattr(spec, field.name)) for field in dataclasses.fields(spec)}
        return dataclasses.replace(spec, **changes)
    return spec


def zero_centered_layer(layer_spec: ModuleSpec) -> ModuleSpec:
    """``layer_spec`` with ZeroCenteredNorm wherever it has megatron-core's local norm (layer norms, QK norms)."""
    layer = _swap(layer_spec)
    assert isinstance(layer, ModuleSpec)
    return layer


def zero_centered_block(
    layer_spec: ModuleSpec, *, config: TransformerConfig, vp_stage: int | None
) -> TransformerBlockSubmodules:
    """The decoder block of this pipeline chunk with ``layer_spec``'s layers and every norm zero-centred.

    A layer spec alone leaves the final norm to megatron-core (its local norm);
    the block spec names it. The layer count is megatron-core's for this chunk.
    """
    layer = zero_centered_layer(layer_spec)
    layers = get_num_layers_to_build(config, vp_stage=vp_stage)
    return TransformerBlockSubmodules(layer_specs=[layer] * layers, layer_norm=ZeroCenteredNorm)


def scale_embeddings(model: GPTModel, *, multiplier: float) -> GPTModel:
    """``model`` with its word embeddings multiplied by ``multiplier`` (a first chunk; others have no embedding).

    Applied to the embedding module's output, in its dtype (as transformers' Gemma
    multiplies by ``sqrt(hidden_size)`` cast to the embeddings' dtype).
    """
    if model.pre_process:
        model.embedding.register_forward_hook(
            lambda module, inputs, output: output * torch.tensor(multiplier, dtype=output.dtype)
        )
    return model
