"""Tiny random Hugging Face models, made locally with transformers (never downloaded), and their specs.

Each family is saved the way ``save_pretrained`` saves it (tied embeddings
without ``lm_head.weight``; ``max_shard_size`` for an index and shards; the
dtype asked for); every weight is moved off its initial value (norms off 1,
biases off 0) so a weight read into the wrong place shows in the logits.
The spec is written by the real ``bridgec import hf`` and compiled by ``bridgec compile``.
"""

from __future__ import annotations

import re
from pathlib import Path

import attrs
import torch
import transformers

from bridgec.compiler.cli import main as bridgec

VOCAB = 300
"""Not a multiple of 128: a spec with megatron's default padding has padded rows."""


@attrs.frozen(kw_only=True)
class Family:
    name: str
    config: transformers.PretrainedConfig
    dtype: torch.dtype = torch.float32
    max_shard_size: str | None = None
    """Set: saved as shards with model.safetensors.index.json."""


def _sizes(**extra: object) -> dict[str, object]:
    return {
        "vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
        **extra,
    }  # fmt: skip


def families() -> list[Family]:
    """Llama 3.1 (llama3 RoPE scaling, sharded), Mistral (bf16), Qwen2 (QKV biases, fp16), Qwen3 (QK norm,
    head_dim 32 != 64 / 4, tied embeddings), Gemma (RMSNorm applying 1 + weight, embeddings x sqrt(64), tanh
    GeGLU, head_dim 24, tied), Qwen3-MoE (4 experts, top 2, softmax before top-k)."""
    llama3 = {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192, "rope_theta": 500000.0,
    }  # fmt: skip
    return [
        Family(
            name="llama",
            config=transformers.LlamaConfig(**_sizes(rope_parameters=llama3, tie_word_embeddings=False)),
            max_shard_size="100KB",
        ),
        Family(
            name="mistral",
            config=transformers.MistralConfig(**_sizes(sliding_window=None, tie_word_embeddings=False)),
            dtype=torch.bfloat16,
        ),
        Family(name="qwen2", config=transformers.Qwen2Config(**_sizes(tie_word_embeddings=False)), dtype=torch.float16),
        Family(name="qwen3", config=transformers.Qwen3Config(**_sizes(head_dim=32, tie_word_embeddings=True))),
        # intermediate_size 128: on PP2 both stages read the tied embedding, which must stay a small share.
        Family(
            name="gemma",
            config=transformers.GemmaConfig(**_sizes(head_dim=24, intermediate_size=128, tie_word_embeddings=True)),
        ),
        Family(
            name="qwen3moe",
            config=transformers.Qwen3MoeConfig(
                **_sizes(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=False)
            ),
        ),
    ]


def save(family: Family, folder: Path, *, seed: int = 0) -> Path:
    """Make the model from its config with every weight moved off its initial value, and save it to ``folder``."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(family.config, dtype=torch.float32)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    model = model.to(family.dtype)
    kwargs = {"max_shard_size": family.max_shard_size} if family.max_shard_size else {}
    model.save_pretrained(folder, **kwargs)
    return folder


def import_and_compile(
    model: Path, spec: Path, *, devices: int, tensor: int = 1, pipeline: int = 1, expert: int = 1, **model_keys: object
) -> Path:
    """``bridgec import hf`` then the layout (and any [model] keys) set, then ``bridgec compile``; the script."""
    assert bridgec(["import", "hf", str(model), "--devices", str(devices), "--device", "cpu", "-o", str(spec)]) == 0
    text = spec.read_text(encoding="utf-8")
    for key, value in model_keys.items():
        text = re.sub(rf"^{key} = .*$", f"{key} = {value}", text, flags=re.M)
    text = text.replace(
        "\n[batch]", f"\n[parallel]\ntensor = {tensor}\npipeline = {pipeline}\nexpert = {expert}\n\n[batch]", 1
    )
    spec.write_text(text, encoding="utf-8")
    script = spec.with_suffix(".py")
    assert bridgec(["compile", str(spec), "-o", str(script)]) == 0
    return script
