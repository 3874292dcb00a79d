"""The MaxText decoder blocks ``bridgec import maxtext`` maps, and what each one decides about the model.

One row per ``decoder_block`` value: a block MaxText adds is one new row here,
not a string in several tuples. The MaxText code each fact follows is named
(commit e591f30).
"""

from __future__ import annotations

import attrs


@attrs.frozen(kw_only=True)
class DecoderBlock:
    name: str
    """MaxText's decoder_block value."""
    layernorm: bool
    """LayerNorm with a zero-centred scale (applied as 1 + scale); otherwise RMSNorm."""
    learned_positions: bool
    """Trainable position embeddings (trainable_position_size); otherwise RoPE (rope_max_timescale)."""
    biases: bool
    """The linear layers have biases."""
    query_scale_in_init: bool
    """attentions.py init_query_w: the block passes no query_pre_attn_scalar, so 1/sqrt(head_dim) goes into the
    query kernel's init instead of the scores (and nowhere at all under use_qk_norm)."""
    experts: bool
    """MoE layers with mixtral's routing are mapped for this block."""
    param_paths: bool
    """bridgec.runtime.models.gpt maps its MaxText parameter paths (adamw_mask's regexes need them)."""


def _rope_block(name: str, *, query_scale_in_init: bool, experts: bool = False, param_paths: bool) -> DecoderBlock:
    return DecoderBlock(
        name=name,
        layernorm=False,
        learned_positions=False,
        biases=False,
        query_scale_in_init=query_scale_in_init,
        experts=experts,
        param_paths=param_paths,
    )


BLOCKS: dict[str, DecoderBlock] = {
    block.name: block
    for block in (
        _rope_block("llama2", query_scale_in_init=True, param_paths=True),
        _rope_block("mistral", query_scale_in_init=True, param_paths=True),
        _rope_block("qwen3", query_scale_in_init=False, param_paths=True),
        _rope_block("mixtral", query_scale_in_init=True, experts=True, param_paths=True),
        _rope_block("gemma", query_scale_in_init=True, param_paths=False),
        DecoderBlock(
            name="gpt3",
            layernorm=True,
            learned_positions=True,
            biases=True,
            query_scale_in_init=False,
            experts=False,
            param_paths=False,
        ),
    )
}
"""Every mapped block, in the order messages list them."""

WITH_PARAM_PATHS = tuple(name for name, block in BLOCKS.items() if block.param_paths)
"""The blocks whose MaxText parameter paths are mapped (an adamw_mask needs one of them)."""

INEXPRESSIBLE: dict[str, str] = {
    "gemma2": (
        "its sandwich norms (post_self_attention_norm and post_ffw_norm on each branch's output, models/gemma2.py) "
        "and its attention logit soft-capping (attn_logits_soft_cap) have no counterpart in megatron-core 0.16.1: "
        "TransformerLayer has only pre-branch norms (input_layernorm, pre_mlp_layernorm) and its attention no "
        "soft cap"
    ),
}
"""Blocks megatron-core cannot express, with what it lacks (the refusal names it rather than approximating)."""
