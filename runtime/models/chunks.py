"""The inventory of a built megatron-core GPTModel chunk: which table row each of its parameters is.

Portable init, the optax decay groups, Orbax import and export iterate
:func:`pairs`, which also checks that the chunk holds exactly what the table
says it holds (a model the table does not describe stops there, by name).
"""

from __future__ import annotations

import torch
from megatron.core.transformer.identity_op import IdentityOp

from bridgec.runtime.models.gpt import GPTConfig, Parameter, chunk_parameters
from bridgec.runtime.models.lora import PEFT_PREFIX


def config_of(chunk: torch.nn.Module) -> GPTConfig:
    """The inventory's view of an (unwrapped) GPTModel chunk."""
    config = chunk.config  # type: ignore[attr-defined]
    heads = config.num_attention_heads
    layers = list(chunk.decoder.layers) if getattr(chunk, "decoder", None) is not None else []  # type: ignore[union-attr]
    # The transformer_engine layer spec fuses the attention norm into linear_qkv: no module of its own.
    fused_norms = bool(layers) and isinstance(layers[0].input_layernorm, IdentityOp)
    return GPTConfig(
        num_layers=config.num_layers,
        hidden=config.hidden_size,
        heads=heads,
        groups=config.num_query_groups or heads,
        head_dim=config.kv_channels or config.hidden_size // heads,
        ffn=config.ffn_hidden_size,
        vocab=chunk.vocab_size,  # type: ignore[arg-type]
        seq_length=chunk.max_sequence_length,  # type: ignore[arg-type]
        layernorm=config.normalization == "LayerNorm",
        gated=bool(config.gated_linear_unit),
        bias=bool(config.add_bias_linear),
        qkv_bias=bool(config.add_qkv_bias),
        qk_norm=bool(config.qk_layernorm),
        tied=bool(chunk.share_embeddings_and_output_weights),
        learned_positions=chunk.position_embedding_type == "learned_absolute",
        transformer_engine=fused_norms,
        num_experts=config.num_moe_experts,
    )


def layer_numbers(chunk: torch.nn.Module) -> dict[int, int]:
    """Local layer index -> global 1-based layer number for a GPTModel chunk."""
    decoder = getattr(chunk, "decoder", None)
    if decoder is None:
        return {}
    return {index: layer.layer_number for index, layer in enumerate(decoder.layers)}


def chunk_inventory(
    chunk: torch.nn.Module, *, tensor_parallel: int, expert_rank: int = 0, local_experts: int = 0
) -> list[Parameter]:
    """What the table says this chunk holds on this rank (its layers, first/last chunk, expert rank)."""
    config = config_of(chunk)
    numbers = layer_numbers(chunk)
    expert_parallel = config.num_experts // local_experts if config.num_experts and local_experts else 1
    return chunk_parameters(
        config,
        layers=[numbers[index] - 1 for index in sorted(numbers)],
        first=bool(chunk.pre_process),
        last=bool(chunk.post_process),
        tensor=tensor_parallel,
        expert_parallel=expert_parallel,
        expert_rank=expert_rank,
    )


def pairs(
    chunk: torch.nn.Module, *, tensor_parallel: int, expert_rank: int = 0, local_experts: int = 0
) -> list[tuple[Parameter, torch.nn.Parameter]]:
    """Every parameter of the chunk with its table row; ValueError naming the differences when they disagree."""
    listed = {
        p.local_name: p
        for p in chunk_inventory(
            chunk, tensor_parallel=tensor_parallel, expert_rank=expert_rank, local_experts=local_experts
        )
    }
    # [peft] adapters (chunk.peft) have a table of their own: runtime.models.lora, checked by runtime.peft.adapter_pairs.
    held = {name: param for name, param in chunk.named_parameters() if not name.startswith(PEFT_PREFIX)}
    unknown = sorted(set(held) - set(listed))
    absent = sorted(set(listed) - set(held))
    wrong = sorted(name for name in set(held) & set(listed) if tuple(held[name].shape) != listed[name].local_shape)
    if unknown or absent or wrong:
        raise ValueError(
            "the model chunk differs from bridgec's GPT parameter table (runtime/models/gpt.py): "
            f"not in the table {unknown}, missing from the chunk {absent}, other shapes {wrong}"
        )
    return [(listed[name], param) for name, param in held.items()]
