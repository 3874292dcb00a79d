"""Core attention over torch's fused scaled_dot_product_attention: ``[model] transformer_impl = "torch"``.

megatron-core's local core attention (``DotProductAttention``) materialises the
``[batch, heads, seq, seq]`` score matrix with ``baddbmm``, a softmax and a
``bmm``. :class:`SdpaAttention` computes the same function with
``torch.nn.functional.scaled_dot_product_attention``, which picks a fused kernel
(flash or memory-efficient on CUDA, a fused CPU kernel) where one applies. It
keeps megatron-core's arguments and layout, so :func:`sdpa_layer` can put it in
the core-attention slot of the local layer spec and everything else (projections,
norms, MLP, tensor-parallel splits, checkpoints) stays megatron-core's.

What it covers, as the local attention does: causal masking, grouped-query
attention, the softmax scale (megatron's ``1/sqrt(head_dim)`` or
``TransformerConfig.softmax_scale``), attention dropout drawn from megatron's
tensor-parallel RNG tracker, and an explicit boolean mask in megatron's
convention (``True`` = masked), which is what document masking and SFT packing
give the local path.
"""

from __future__ import annotations

import dataclasses

import torch
from megatron.core import tensor_parallel
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.spec_utils import ModuleSpec

__all__ = ["SdpaAttention", "sdpa_layer"]


class SdpaAttention(DotProductAttention):
    """megatron-core's local core attention, computed by ``scaled_dot_product_attention``.

    Same constructor (so the same head split over tensor-parallel ranks and the
    same softmax scale) and the same inputs and output: query ``[sq, b, np, hn]``,
    key and value ``[sk, b, ng, hn]``, context ``[sq, b, np x hn]``.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        # What the local attention does that SDPA cannot: refused when the model is built, not mid-run.
        if self.config.softmax_type != "vanilla":
            raise ValueError(f"SdpaAttention: softmax_type {self.config.softmax_type!r} is not supported")
        if self.scale_mask_softmax.window_size is not None:
            raise ValueError("SdpaAttention: sliding-window attention is not supported")
        self.dropout_p = self.attention_dropout.p

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params: object | None = None,
    ) -> torch.Tensor:
        if attention_bias is not None or packed_seq_params is not None:
            raise ValueError("SdpaAttention: attention_bias and packed_seq_params are not supported")
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, hn]
        mask_type = self.attn_mask_type if attn_mask_type is None else attn_mask_type
        # An explicit mask replaces the causal one, as in megatron's FusedScaleMaskSoftmax; torch's boolean
        # mask is True where attention is allowed, megatron's True where it is masked.
        mask = None if attention_mask is None else ~attention_mask
        causal = mask is None and mask_type == AttnMaskType.causal and q.size(2) > 1
        dropout = self.dropout_p if self.training else 0.0
        # Dropout draws from the tracker's stream, as the local attention's does (distinct per tensor rank).
        with tensor_parallel.get_cuda_rng_tracker().fork():
            context = torch.nn.functional.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                dropout_p=dropout,
                is_causal=causal,
                scale=self.softmax_scale,
                enable_gqa=k.size(1) != q.size(1),
            )
        sq, b = query.size(0), query.size(1)
        return context.permute(2, 0, 1, 3).reshape(sq, b, self.hidden_size_per_partition)


def _swap(spec: object) -> object:
    """``spec`` with DotProductAttention replaced by SdpaAttention, recursively through submodules."""
    if spec is DotProductAttention:
        return SdpaAttention
    if isinstance(spec, ModuleSpec):
        return dataclasses.replace(spec, module=_swap(spec.module), submodules=_swap(spec.submodules))
    if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        changes = {field.name: _swap(getattr(spec, field.name)) for field in dataclasses.fields(spec)}
        return dataclasses.replace(spec, **changes)
    return spec


def sdpa_layer(layer_spec: ModuleSpec) -> ModuleSpec:
    """``layer_spec`` (megatron-core's local one) with SdpaAttention in its core-attention slot."""
    layer = _swap(layer_spec)
    assert isinstance(layer, ModuleSpec)
    return layer
