"""Names of the same parameter in megatron-core's GPTModel and in a MaxText decoder.

One table, used by the optax-semantics weight-decay mask (regexes written
against MaxText paths, as MaxText's ``adamw_mask`` is) and by Orbax checkpoint
import/export. Megatron names are the layout-independent global names of
:mod:`bridgec.runtime.init` (``decoder.layers.{global index}.…``); MaxText
paths are '/'-joined Flax key paths under ``params``.

A Megatron parameter may fuse several MaxText leaves (``linear_qkv`` holds
query, key and value; a gated ``linear_fc1`` holds ``wi_0`` and ``wi_1``), so a
name maps to a tuple of paths. Only the Llama-family decoder layout
(llama2/llama3/mistral/qwen3-style blocks: RMSNorm, RoPE, no biases, optional
SwiGLU and untied logits) is covered; anything else raises KeyError with the
name, and callers turn that into a message naming what is unsupported.
"""

from __future__ import annotations

import re

_LAYER = re.compile(r"^decoder\.layers\.(?P<index>\d+)\.(?P<rest>.+)$")

# Per-layer leaves: megatron suffix -> MaxText leaves below decoder/layers[_i]/.
_LAYER_LEAVES: dict[str, tuple[str, ...]] = {
    "input_layernorm.weight": ("pre_self_attention_layer_norm/scale",),
    "self_attention.linear_qkv.layer_norm_weight": ("pre_self_attention_layer_norm/scale",),
    "self_attention.linear_qkv.weight": (
        "self_attention/query/kernel",
        "self_attention/key/kernel",
        "self_attention/value/kernel",
    ),
    "self_attention.linear_proj.weight": ("self_attention/out/kernel",),
    "self_attention.q_layernorm.weight": ("self_attention/query_norm/scale",),
    "self_attention.k_layernorm.weight": ("self_attention/key_norm/scale",),
    "pre_mlp_layernorm.weight": ("post_self_attention_layer_norm/scale",),
    "mlp.linear_fc1.layer_norm_weight": ("post_self_attention_layer_norm/scale",),
    "mlp.linear_fc2.weight": ("mlp/wo/kernel",),
}
_GATED_FC1 = ("mlp/wi_0/kernel", "mlp/wi_1/kernel")
_PLAIN_FC1 = ("mlp/wi/kernel",)

_TOP_LEAVES: dict[str, tuple[str, ...]] = {
    "embedding.word_embeddings.weight": ("params/token_embedder/embedding",),
    "decoder.final_layernorm.weight": ("params/decoder/decoder_norm/scale",),
    "output_layer.weight": ("params/decoder/logits_dense/kernel",),
}


def maxtext_paths(megatron_name: str, *, gated_mlp: bool, scanned: bool) -> tuple[str, ...]:
    """MaxText key paths of the leaves a Megatron global parameter name holds.

    ``scanned`` (MaxText ``scan_layers``): layers share one stacked leaf,
    ``params/decoder/layers/...``; otherwise each layer has ``params/decoder/layers_{i}/...``.
    """
    if megatron_name in _TOP_LEAVES:
        return _TOP_LEAVES[megatron_name]
    match = _LAYER.match(megatron_name)
    if match is None:
        raise KeyError(f"{megatron_name}: no MaxText counterpart in the Llama-family layout")
    rest = match["rest"]
    if rest == "mlp.linear_fc1.weight":
        leaves = _GATED_FC1 if gated_mlp else _PLAIN_FC1
    elif rest in _LAYER_LEAVES:
        leaves = _LAYER_LEAVES[rest]
    else:
        raise KeyError(f"{megatron_name}: no MaxText counterpart in the Llama-family layout")
    layers = "params/decoder/layers" if scanned else f"params/decoder/layers_{match['index']}"
    return tuple(f"{layers}/{leaf}" for leaf in leaves)


def layer_index(megatron_name: str) -> int | None:
    """The global layer index of a per-layer parameter, None for embedding/final norm/output."""
    match = _LAYER.match(megatron_name)
    return int(match["index"]) if match else None
