"""`bridgec import hf`: a Hugging Face config.json to a spec that validates and compiles, or a refusal naming
the key. The configs are what transformers 5 writes (``rope_parameters``) and what 4.x wrote (``rope_theta``
and ``rope_scaling``); the weights' side is tests/runtime/test_hf_import.py."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from bridgec.compiler.hf import import_hf

BRIDGEC = [sys.executable, "-m", "bridgec.compiler.cli"]

LLAMA: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 1,
    "dtype": "bfloat16", "eos_token_id": 2, "head_dim": 128, "hidden_act": "silu", "hidden_size": 4096,
    "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 131072, "mlp_bias": False,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_parameters": {
        "factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0, "original_max_position_embeddings": 8192,
        "rope_theta": 500000.0, "rope_type": "llama3",
    },
    "tie_word_embeddings": False, "transformers_version": "5.24.0", "use_cache": True, "vocab_size": 128256,
}  # fmt: skip
QWEN3: dict[str, Any] = {
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "head_dim": 128,
    "hidden_act": "silu", "hidden_size": 1024, "intermediate_size": 3072, "max_position_embeddings": 40960,
    "max_window_layers": 28, "model_type": "qwen3", "num_attention_heads": 16, "num_hidden_layers": 28,
    "num_key_value_heads": 8, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000,
    "sliding_window": None, "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_cache": True,
    "use_sliding_window": False, "vocab_size": 151936,
}  # fmt: skip

GEMMA: dict[str, Any] = {
    "architectures": ["GemmaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 2,
    "eos_token_id": 1, "head_dim": 256, "hidden_act": "gelu", "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 3072, "initializer_range": 0.02, "intermediate_size": 24576, "max_position_embeddings": 8192,
    "model_type": "gemma", "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 16,
    "pad_token_id": 0, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 10000.0,
    "torch_dtype": "bfloat16", "transformers_version": "4.38.0.dev0", "use_cache": True, "vocab_size": 256000,
}  # fmt: skip
"""Gemma 7B's config.json as released (transformers 4.x keys; head_dim 256, not 3072 / 16)."""


def _import(config: dict[str, Any], **kwargs: Any) -> Any:
    return import_hf(json.dumps(config), folder="model", devices=8, **kwargs)


def test_llama31_maps_every_value_with_its_key() -> None:
    result = _import(LLAMA, tokenizer_files=["tokenizer.json"])
    assert result.errors == ()
    spec = tomllib.loads(result.toml)
    model = spec["model"]
    assert model["num_query_groups"] == 8 and model["ffn_hidden_size"] == 14336 and model["rotary_base"] == 500000
    assert model["rope_scaling_factor"] == 8.0 and model["tie_embeddings"] is False and "head_dim" not in model
    assert model["make_vocab_size_divisible_by"] == 128 and model["seq_length"] == 4096
    assert spec["init"]["checkpoint"] == {"format": "huggingface", "path": "model"}
    assert spec["precision"]["dtype"] == "bf16" and spec["launch"]["procs_per_node"] == 8
    assert "rotary_base = 500000  # rope_parameters.rope_theta" in result.toml
    assert "num_query_groups = 8  # num_key_value_heads" in result.toml
    assert "# tokenizer: model  (tokenizer.json; build data with: bridgec data build --tokenizer model ...)" in (
        result.toml
    )
    assert "#   - initializer_range = 0.02: the weights come from the folder" in result.toml


def test_device_picks_the_layers_and_the_dtype() -> None:
    """cuda gets Transformer Engine's fused layers and the stored bf16; cpu megatron-core's local layers in fp32."""
    cuda = tomllib.loads(_import(LLAMA).toml)
    assert cuda["model"]["transformer_impl"] == "transformer_engine" and cuda["precision"]["dtype"] == "bf16"
    cpu = tomllib.loads(_import(LLAMA, device="cpu").toml)
    assert "transformer_impl" not in cpu["model"] and cpu["precision"]["dtype"] == "fp32"


def test_qwen3_head_dim_qk_norm_tied_and_transformers4_rope_keys() -> None:
    result = _import(QWEN3)
    model = tomllib.loads(result.toml)["model"]
    assert model["head_dim"] == 128 and model["qk_layernorm"] is True and model["tie_embeddings"] is True
    assert model["rotary_base"] == 1000000 and "rope_scaling_factor" not in model
    assert "rotary_base = 1000000  # rope_theta" in result.toml


def test_qwen3_moe_experts_router_and_width() -> None:
    config = {
        **QWEN3, "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "num_experts": 128,
        "num_experts_per_tok": 8, "moe_intermediate_size": 768, "norm_topk_prob": True, "decoder_sparse_step": 1,
        "mlp_only_layers": [], "router_aux_loss_coef": 0.001, "output_router_logits": False,
    }  # fmt: skip
    result = _import(config)
    model = tomllib.loads(result.toml)["model"]
    assert model["num_experts"] == 128 and model["moe_router_topk"] == 8 and model["ffn_hidden_size"] == 768
    assert model["qk_layernorm"] is True and "moe_router_pre_softmax" not in model  # renormalised top-k: the default
    assert "router_aux_loss_coef = 0.001: transformers adds the load-balancing loss" in result.notes[0]
    unnormalised = tomllib.loads(_import({**config, "norm_topk_prob": False}).toml)["model"]
    assert unnormalised["moe_router_pre_softmax"] is True
    dense_layers = _import({**config, "mlp_only_layers": [0]})
    assert dense_layers.toml is None and dense_layers.errors[0].key == "mlp_only_layers"


def test_qwen2_gets_qkv_biases() -> None:
    result = _import({**QWEN3, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "head_dim": None})
    model = tomllib.loads(result.toml)["model"]
    assert model["add_qkv_bias"] is True and model["add_bias_linear"] is False and "qk_layernorm" not in model


def test_gemma_zero_centred_norm_scaled_embeddings_and_tanh_geglu() -> None:
    result = _import(GEMMA)
    assert result.errors == ()
    model = tomllib.loads(result.toml)["model"]
    assert model["norm_zero_centered"] is True and model["normalization"] == "rmsnorm"
    assert model["activation"] == "geglu" and model["gelu_approximation"] == "tanh"
    assert model["embedding_multiplier"] == 3072**0.5 and model["head_dim"] == 256
    assert model["tie_embeddings"] is True and model["add_bias_linear"] is False and model["num_query_groups"] == 16
    assert "embedding_multiplier = 55.42562584220407  # sqrt(hidden_size = 3072)" in result.toml
    assert 'activation = "geglu"  # hidden_activation = gelu_pytorch_tanh' in result.toml
    # transformers 5 writes hidden_act only; its "gelu" in the released folders means tanh GELU too.
    untied = {key: value for key, value in GEMMA.items() if key not in ("hidden_activation", "tie_word_embeddings")}
    legacy = tomllib.loads(_import(untied).toml)["model"]
    assert legacy["gelu_approximation"] == "tanh" and legacy["tie_embeddings"] is True  # Gemma's default: tied


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_activation": "relu"}, "hidden_activation = 'relu': Gemma's gated MLP maps to geglu with tanh GELU"),
        ({"use_bidirectional_attention": True}, "use_bidirectional_attention = true: bridgec trains causal models"),
        ({"attention_bias": True}, "attention_bias = true puts biases on q/k/v and o_proj"),
    ],
)
def test_gemma_refusals_name_the_key(change: dict[str, Any], message: str) -> None:
    result = _import({**GEMMA, **change})
    assert result.toml is None
    assert any(problem.message.startswith(message) for problem in result.errors), result.errors


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"architectures": ["GPT2LMHeadModel"]},
            "architecture 'GPT2LMHeadModel' is not one bridgec maps",
        ),
        ({"hidden_act": "gelu"}, "hidden_act = 'gelu': the gated MLP maps to swiglu only with silu"),
        (
            {"rope_parameters": {**LLAMA["rope_parameters"], "rope_type": "yarn"}},
            "rope_parameters type 'yarn': megatron-core applies only llama3 RoPE scaling",
        ),
        (
            {"rope_parameters": {**LLAMA["rope_parameters"], "high_freq_factor": 2.0}},
            "rope_parameters.high_freq_factor = 2.0: megatron-core's llama3 scaling fixes it at 4.0",
        ),
        ({"attention_bias": True}, "attention_bias = true puts biases on q/k/v and o_proj"),
        ({"mlp_bias": True}, "mlp_bias = true: megatron-core gives every linear layer a bias or none"),
        ({"num_hidden_layers": None}, "num_hidden_layers = None: expected an integer"),
        ({"sliding_window": 1024}, "sliding_window = 1024 is shorter than the training seq_length"),
    ],
)
def test_what_cannot_be_reproduced_is_refused_by_name(change: dict[str, Any], message: str) -> None:
    result = _import({**LLAMA, **change})
    assert result.toml is None
    assert any(problem.message.startswith(message) for problem in result.errors), result.errors


def test_a_missing_key_is_named() -> None:
    config = {key: value for key, value in LLAMA.items() if key != "intermediate_size"}
    result = _import(config)
    assert result.toml is None
    assert [p.message for p in result.errors] == ["no 'intermediate_size': the model's shape needs it"]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BRIDGEC, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _word_level_tokenizer(path: Path, size: int) -> None:
    """A real tokenizer.json of ``size`` ids (the last is the end-of-text token) made with the tokenizers library."""
    from tokenizers import Tokenizer, models

    vocab = {f"w{i}": i for i in range(size - 1)} | {"<|endoftext|>": size - 1}
    Tokenizer(models.WordLevel(vocab, unk_token="w0")).save(str(path))


def test_command_writes_a_spec_that_validates_and_compiles(tmp_path: Path) -> None:
    (tmp_path / "models" / "qwen3").mkdir(parents=True)
    (tmp_path / "models" / "qwen3" / "config.json").write_text(json.dumps(QWEN3))
    _word_level_tokenizer(tmp_path / "models" / "qwen3" / "tokenizer.json", size=100)
    (tmp_path / "runs").mkdir()
    done = _run("import", "hf", "models/qwen3", "--devices", "8", "-o", "runs/spec.toml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "runs" / "spec.toml").read_text()
    assert 'path = "../models/qwen3"' in text and str(tmp_path) not in text
    assert 'tokenizer = "../models/qwen3"' in text  # vocab_size and the eod id are checked against it
    assert _run("compile", "runs/spec.toml", "-o", "runs/run.py", cwd=tmp_path).returncode == 0
    assert "load_hf_weights(" in (tmp_path / "runs" / "run.py").read_text()


def test_command_refuses_without_writing_or_traceback(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({**LLAMA, "architectures": ["FalconForCausalLM"]}))
    done = _run("import", "hf", "m", "--devices", "1", "-o", "spec.toml", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "m/config.json: architectures: architecture 'FalconForCausalLM' is not one bridgec maps" in (done.stderr)
    assert not (tmp_path / "spec.toml").exists()
    missing = _run("import", "hf", "nowhere", "--devices", "1", "-o", "spec.toml", cwd=tmp_path)
    assert missing.returncode == 2 and "nowhere/config.json: no such file (Hugging Face config)" in missing.stderr
