"""runtime.norms: the zero-centred norm's arithmetic against torch's own norms, and which slots it fills.

The whole model (Gemma's RMSNorm, scaled embeddings) is checked against transformers in
tests/runtime/test_hf_import.py; here the LayerNorm form (MaxText's gpt3) and the spec walk, in process.
"""

from __future__ import annotations

import pytest
import torch
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.torch_norm import WrappedTorchNorm

from bridgec.runtime.norms import ZeroCenteredNorm, zero_centered_layer


def _config(normalization: str) -> TransformerConfig:
    return TransformerConfig(
        num_layers=1, hidden_size=8, num_attention_heads=2, normalization=normalization,
        layernorm_zero_centered_gamma=True,
    )  # fmt: skip


@pytest.mark.parametrize("normalization", ["LayerNorm", "RMSNorm"])
def test_applies_one_plus_weight_as_torch_norms_do(normalization: str) -> None:
    norm = ZeroCenteredNorm(_config(normalization), 8, eps=1e-5)
    assert torch.count_nonzero(norm.weight) == 0  # starts at the identity scale
    with torch.no_grad():
        norm.weight.normal_()
        if norm.bias is not None:
            norm.bias.normal_()
    x = torch.randn(3, 8)
    if normalization == "RMSNorm":
        reference = torch.nn.RMSNorm(8, eps=1e-5)
    else:
        reference = torch.nn.LayerNorm(8, eps=1e-5)
        reference.bias.data.copy_(norm.bias)
    reference.weight.data.copy_(1 + norm.weight)
    assert torch.equal(norm(x), reference(x))


def test_every_local_norm_slot_is_swapped() -> None:
    layer = zero_centered_layer(get_gpt_layer_local_spec(qk_layernorm=True, normalization="RMSNorm"))
    attention = layer.submodules.self_attention.submodules
    slots = [layer.submodules.input_layernorm, layer.submodules.pre_mlp_layernorm]
    slots += [attention.q_layernorm, attention.k_layernorm]
    assert slots == [ZeroCenteredNorm] * 4
    assert WrappedTorchNorm not in slots
