"""[model] from a MaxText config: sizes (with global_parameter_scale), norms, activation, positions, logits, dropout,
experts. What the decoder block decides comes from its row in :mod:`bridgec.compiler.maxtext_blocks`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs

from bridgec.compiler.maxtext_blocks import BLOCKS, INEXPRESSIBLE, DecoderBlock
from bridgec.compiler.maxtext_keys import MOE_KEYS
from bridgec.compiler.maxtext_read import ConfigReader, show

_ACTIVATIONS = {
    ("silu", "linear"): ("swiglu", "none"),
    ("gelu", "linear"): ("geglu", "tanh"),
    ("gelu",): ("gelu", "tanh"),
}
"""mlp_activations -> (activation, gelu_approximation)."""
_MOE_AS_MIXTRAL: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "capacity_factor": ("dropless routing (<= 0); megatron-core's capacity factor has no spec field", lambda v: v <= 0),
    "load_balance_loss_weight": (
        "no load-balancing loss (0); megatron-core's moe_aux_loss_coeff has no spec field",
        lambda v: v == 0,
    ),
    "norm_topk_prob": ("unnormalised top-k weights (false)", lambda v: v is False),
    "first_num_dense_layers": ("every layer MoE (0)", lambda v: v == 0),
    "shared_experts": ("no shared experts (0)", lambda v: v == 0),
    "routed_bias": ("no routing bias (false)", lambda v: v is False),
    "routed_score_func": ("softmax routing ('')", lambda v: v in ("", None)),
    "n_routing_groups": ("no group-limited routing (-1)", lambda v: v == -1),
    "use_random_routing": ("learned routing (false)", lambda v: v is False),
    "interleave_moe_layer_step": ("every layer MoE (1)", lambda v: v == 1),
    "routed_scaling_factor": ("unscaled routing weights (1.0)", lambda v: v == 1.0),
    "moe_expert_input_dim": ("experts on the full hidden size (-1)", lambda v: v == -1),
}
"""MoE keys and the values mixtral's routing has, which megatron-core's MoE defaults reproduce."""


@attrs.frozen(kw_only=True)
class ModelFacts:
    """What the other tables need from [model]."""

    block: DecoderBlock
    layers: int
    """num_layers, after global_parameter_scale."""


def _scales(scale: Any) -> tuple[int, int, int, int] | str:
    """MaxText's get_individual_scales: (emb, heads, mlp, layers) exponents, or the error text."""
    if not isinstance(scale, int) or scale <= 0 or 2 ** int(math.log2(scale)) != scale:
        return (
            "Global parameter scale should be a power of two. If you want finer grained control of the model sizes "
            "then you can explicitly set base_embed_dim, base_num_query_heads, base_num_kv_heads, base_mlp_dim, "
            "base_num_decoder_layers and/or head_dim."
        )
    base, rem = divmod(int(math.log2(scale)), 3)
    heads = base + int(rem > 0)
    return base + int(rem > 1), heads, heads, base


@attrs.frozen(kw_only=True)
class _Dimensions:
    layers: int
    hidden: int
    seq_length: int


def map_model(reader: ConfigReader) -> ModelFacts | None:
    """[model]; None when the decoder block or the scale cannot be mapped (nothing else is then read)."""
    name = reader.get("decoder_block")
    block = BLOCKS.get(name)
    if block is None:
        why = f": {INEXPRESSIBLE[name]}" if name in INEXPRESSIBLE else ""
        reader.refuse("decoder_block", f"decoder_block {name!r} is not mapped{why}; bridgec maps {', '.join(BLOCKS)}")
        return None
    sizes = _dimensions(reader, block)
    if sizes is None:
        return None
    reader.put("model", "normalization", "layernorm" if block.layernorm else "rmsnorm", f"decoder_block {name!r}")
    reader.put(
        "model",
        "norm_epsilon",
        float(reader.get("normalization_layer_epsilon")),
        reader.src("normalization_layer_epsilon"),
    )
    if block.layernorm:
        reader.put("model", "norm_zero_centered", True, f"{name}'s LayerNorm: scale starts at 0, applied as 1 + scale")
    _activation(reader)
    _positions(reader, block, sizes.seq_length)
    _logits(reader, sizes.hidden)
    reader.put(
        "model",
        "add_bias_linear",
        block.biases,
        f"{name} blocks have biases" if block.biases else f"{name} blocks have no biases",
    )
    _dropout(reader)
    _experts(reader, block)
    return ModelFacts(block=block, layers=sizes.layers)


def _dimensions(reader: ConfigReader, block: DecoderBlock) -> _Dimensions | None:
    """Sizes, scaled by global_parameter_scale as MaxText's get_individual_scales does; GQA; query scaling."""
    scale = reader.get("global_parameter_scale", 1)
    scales = _scales(scale)
    if isinstance(scales, str):
        reader.refuse("global_parameter_scale", scales)
        return None
    emb, heads_scale, mlp_scale, layer_scale = scales

    def scaled(key: str, exponent: int) -> tuple[int, str]:
        value = int(reader.get(key)) * 2**exponent
        arithmetic = f" x 2^{exponent} (global_parameter_scale {scale})" if scale != 1 else ""
        return value, reader.src(key) + arithmetic

    layers, comment = scaled("base_num_decoder_layers", layer_scale)
    reader.put("model", "num_layers", layers, comment)
    hidden, comment = scaled("base_emb_dim", emb)
    reader.put("model", "hidden_size", hidden, comment)
    heads, comment = scaled("base_num_query_heads", heads_scale)
    reader.put("model", "num_attention_heads", heads, comment)
    kv_heads, comment = scaled("base_num_kv_heads", heads_scale)
    if kv_heads < 1 or heads % kv_heads:
        reader.refuse("base_num_kv_heads", f"{heads} query heads are not a multiple of {kv_heads} key/value heads")
    reader.put("model", "num_query_groups", kv_heads, comment)
    reader.put("model", "head_dim", int(reader.get("head_dim")), reader.src("head_dim"))
    qk_norm = bool(reader.get("use_qk_norm"))
    if qk_norm:
        reader.put("model", "qk_layernorm", True, reader.src("use_qk_norm") + ": per-head RMSNorm before RoPE")
    if block.query_scale_in_init:
        why = "skips 1/sqrt(head_dim) under use_qk_norm" if qk_norm else "divides the query kernel by sqrt(head_dim)"
        reader.put(
            "model",
            "query_scaling",
            "none" if qk_norm else "initial_weights",
            f"{block.name} attention does not scale its scores; init_query_w {why}",
        )
    mlp, comment = scaled("base_mlp_dim", mlp_scale)
    reader.put("model", "ffn_hidden_size", mlp, comment)
    reader.put("model", "vocab_size", int(reader.get("vocab_size")), reader.src("vocab_size"))
    reader.put(
        "model", "make_vocab_size_divisible_by", 1, "MaxText does not pad the vocabulary (only to a multiple of TP)"
    )
    seq_length = int(reader.get("max_target_length"))
    reader.put("model", "seq_length", seq_length, reader.src("max_target_length"))
    return _Dimensions(layers=layers, hidden=hidden, seq_length=seq_length)


def _logits(reader: ConfigReader, hidden: int) -> None:
    tied = bool(reader.get("logits_via_embedding"))
    normalize = bool(reader.get("normalize_embedding_logits"))
    reader.put("model", "tie_embeddings", tied, reader.src("logits_via_embedding"))
    if tied:
        reader.caveat(
            "logits_via_embedding: MaxText's attend_on_embedding rounds the embedding table to bfloat16 for the "
            "output projection even in float32 runs (each entry keeps 8 significant bits); megatron-core multiplies "
            "by the table as it is, so tied logits differ from MaxText's by that rounding"
        )
    if tied and normalize:
        reader.put(
            "model",
            "logits_multiplier",
            1.0 / math.sqrt(hidden),
            f"normalize_embedding_logits true: tied logits / sqrt(emb_dim {hidden})",
        )
    elif not tied:
        reader.mark_inactive("normalize_embedding_logits", "only applies to tied logits (logits_via_embedding false)")


def _activation(reader: ConfigReader) -> None:
    activations = tuple(reader.get("mlp_activations") or ())
    mapped = _ACTIVATIONS.get(activations)
    if mapped is None:
        reader.refuse(
            "mlp_activations",
            f"mlp_activations {list(activations)} is not mapped",
            'bridgec maps ["silu", "linear"] (SwiGLU), ["gelu", "linear"] (GeGLU) and ["gelu"]',
        )
        return
    activation, approximation = mapped
    reader.put("model", "activation", activation, reader.src("mlp_activations"))
    if approximation != "none":
        reader.put("model", "gelu_approximation", approximation, "MaxText's gelu is jax.nn.gelu, tanh-approximate")


def _positions(reader: ConfigReader, block: DecoderBlock, seq_length: int) -> None:
    trainable = reader.get("trainable_position_size", -1)
    if block.learned_positions:
        if trainable <= 0:
            reader.refuse(
                "trainable_position_size",
                f"{block.name} without trainable positions has no position signal here",
                "set trainable_position_size >= max_target_length",
            )
        elif trainable < seq_length:
            reader.refuse("trainable_position_size", f"{trainable} learned positions < max_target_length {seq_length}")
        reader.put("model", "position_embedding", "learned", reader.src("trainable_position_size"))
        reader.skip(("rope_max_timescale",), f"{block.name} blocks use learned positions, not RoPE")
        return
    if trainable > 0:
        reader.refuse(
            "trainable_position_size",
            f"learned positions ({trainable}) on top of RoPE have no Megatron counterpart",
            "set trainable_position_size=-1",
        )
    theta = reader.get("rope_max_timescale")
    reader.put("model", "position_embedding", "rope", f"decoder_block {block.name!r}")
    reader.put(
        "model", "rotary_base", int(theta) if float(theta).is_integer() else theta, reader.src("rope_max_timescale")
    )
    if float(theta) != int(float(theta)):
        reader.refuse("rope_max_timescale", f"rope_max_timescale {theta} is not a whole number; [model] rotary_base is")


def _dropout(reader: ConfigReader) -> None:
    rate = float(reader.get("dropout_rate", 0.0) or 0.0)
    enabled = bool(reader.get("enable_dropout"))
    if enabled and rate > 0:
        reader.refuse(
            "dropout_rate",
            f"dropout_rate {rate} with enable_dropout: MaxText drops whole hidden channels (broadcast over the "
            "sequence) of the embedding, the MLP hidden layer, each layer's output including its residual, and "
            "the final norm's output; megatron-core drops elements of the attention probabilities and of each "
            "branch before the residual add. There is no faithful counterpart",
            "set dropout_rate=0.0 or enable_dropout=false, and add [model] dropout by hand if you want Megatron's",
        )
        return
    why = "enable_dropout false" if not enabled else "dropout_rate 0"
    reader.put("model", "dropout", 0.0, f"MaxText: {why} (megatron-core's own default would be 0.1)")


def _experts(reader: ConfigReader, block: DecoderBlock) -> None:
    experts = int(reader.get("num_experts", 1))
    if experts <= 1:
        reader.skip(MOE_KEYS, "only MoE models (num_experts > 1) read it")
        return
    if not block.experts:
        with_experts = ", ".join(f"{name}'s" for name, row in BLOCKS.items() if row.experts)
        reader.refuse(
            "num_experts", f"MoE with decoder_block {block.name!r} is not mapped; bridgec maps {with_experts}"
        )
    for key, (meaning, matches) in _MOE_AS_MIXTRAL.items():
        value = reader.get(key)
        if key in reader.config and not matches(value):
            reader.refuse(key, f"{key} = {show(value)}: bridgec maps MoE with {meaning}")
    moe_dim = reader.get("base_moe_mlp_dim", -1)
    if moe_dim not in (-1, reader.config.get("base_mlp_dim")):
        reader.refuse(
            "base_moe_mlp_dim",
            f"base_moe_mlp_dim {moe_dim} differs from base_mlp_dim: the spec has no "
            "separate expert MLP width (megatron-core's moe_ffn_hidden_size)",
        )
    reader.skip(("routed_bias_update_rate", "topk_routing_group"), "only DeepSeek-style routing reads it")
    reader.put("model", "num_experts", experts, reader.src("num_experts"))
    topk = int(reader.get("num_experts_per_tok"))
    if topk == 1:
        reader.refuse(
            "num_experts_per_tok",
            "num_experts_per_tok = 1: mixtral's softmax over the one chosen logit weighs its expert by 1; "
            "megatron-core's top-1 routing weighs it by the softmax over every expert (moe_router_pre_softmax, "
            "which it requires for top-1)",
        )
    reader.put("model", "moe_router_topk", topk, reader.src("num_experts_per_tok"))
    reader.caveat(
        "MoE: megatron-core's defaults match MaxText's mixtral routing (top-k of the router logits, then softmax "
        "over the k; dropless; no auxiliary loss). Expert weights are separate parameters in Megatron and one "
        "stacked leaf in MaxText"
    )
