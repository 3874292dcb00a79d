"""Bad Hugging Face folders: a clear error naming the file, tensor or key, exit code 6 (CHECKPOINT_ERROR), no
traceback, nothing loaded. The reader and the folder check run here in-process on real safetensors files; one
launch shows what a training run prints and how it exits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bridgec.compiler.cli import main as bridgec
from bridgec.runtime.errors import ExitCode, RunError
from bridgec.runtime.hf_layout import check_folder
from bridgec.runtime.hf_read import SafetensorsFolder
from bridgec.runtime.models.gpt import GPTConfig
from tests.runtime.hf_models import families, import_and_compile, save
from tests.runtime.launch import failed_with, launch

CONFIG = GPTConfig(
    num_layers=1, hidden=8, heads=2, groups=1, head_dim=4, ffn=12, vocab=16, seq_length=8, layernorm=False,
    gated=True, bias=False, qk_norm=False, tied=True, learned_positions=False,
)  # fmt: skip


def _state(config: GPTConfig) -> dict[str, torch.Tensor]:
    h, d, f = config.hidden, config.head_dim, config.ffn
    layer = "model.layers.0."
    return {
        "model.embed_tokens.weight": torch.zeros(16, h),
        layer + "input_layernorm.weight": torch.ones(h),
        layer + "self_attn.q_proj.weight": torch.zeros(config.heads * d, h),
        layer + "self_attn.k_proj.weight": torch.zeros(d, h),
        layer + "self_attn.v_proj.weight": torch.zeros(d, h),
        layer + "self_attn.o_proj.weight": torch.zeros(h, config.heads * d),
        layer + "post_attention_layernorm.weight": torch.ones(h),
        layer + "mlp.gate_proj.weight": torch.zeros(f, h),
        layer + "mlp.up_proj.weight": torch.zeros(f, h),
        layer + "mlp.down_proj.weight": torch.zeros(h, f),
        "model.norm.weight": torch.ones(h),
    }


def _problems(folder: Path) -> list[str]:
    return check_folder(SafetensorsFolder(folder), CONFIG, vocab_size=16)


def test_a_fitting_folder_has_no_problems(tmp_path: Path) -> None:
    save_file(_state(CONFIG), str(tmp_path / "model.safetensors"))
    assert _problems(tmp_path) == []


def test_wrong_shape_missing_and_unexpected_tensors_are_named(tmp_path: Path) -> None:
    state = _state(CONFIG)
    state["model.layers.0.mlp.up_proj.weight"] = torch.zeros(10, 8)
    del state["model.norm.weight"]
    state["lm_head.weight"] = torch.zeros(16, 8)  # the model ties its output layer to the embedding
    save_file(state, str(tmp_path / "model.safetensors"))
    assert _problems(tmp_path) == [
        "tensor model.layers.0.mlp.up_proj.weight in model.safetensors has shape [10, 8]; this model needs [12, 8]",
        "missing tensor model.norm.weight (shape [8])",
        "tensor lm_head.weight has no place in this model",
    ]


def _error(folder: Path) -> str:
    with pytest.raises(RunError) as raised:
        _problems(folder)
    assert raised.value.code is ExitCode.CHECKPOINT_ERROR
    return raised.value.message


def test_no_weights(tmp_path: Path) -> None:
    assert _error(tmp_path) == (
        f"{tmp_path}: no model.safetensors and no model.safetensors.index.json (a Hugging Face model folder saved "
        "as safetensors)"
    )


def test_truncated_and_corrupt_files(tmp_path: Path) -> None:
    save_file(_state(CONFIG), str(tmp_path / "model.safetensors"))
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert _error(tmp_path).startswith(f"{tmp_path / 'model.safetensors'}: not a readable safetensors file (")
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 64)
    assert _error(tmp_path).startswith(f"{tmp_path / 'model.safetensors'}: not a readable safetensors file (")


def test_index_naming_a_missing_shard_or_a_tensor_its_shard_lacks(tmp_path: Path) -> None:
    state = _state(CONFIG)
    save_file(state, str(tmp_path / "model-1.safetensors"))
    weight_map = dict.fromkeys(state, "model-1.safetensors")
    weight_map["model.norm.weight"] = "model-2.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert _error(tmp_path) == f"{tmp_path / 'model-2.safetensors'}: missing (named by model.safetensors.index.json)"
    (tmp_path / "model.safetensors.index.json").write_text("{not json")
    assert _error(tmp_path).startswith(f"{tmp_path / 'model.safetensors.index.json'}: not a safetensors index")


def test_a_run_from_a_folder_that_does_not_fit_stops_with_code_6(tmp_path: Path) -> None:
    qwen3 = next(f for f in families() if f.name == "qwen3")
    model = save(qwen3, tmp_path / "model")
    import_and_compile(model, tmp_path / "spec.toml", devices=1)
    assert bridgec(["compile", str(tmp_path / "spec.toml"), "-o", str(tmp_path / "run.py")]) == 0
    # Another Qwen3's weights: intermediate_size 128 instead of the spec's 96.
    other = type(qwen3.config)(**{**qwen3.config.to_dict(), "intermediate_size": 128})
    save(type(qwen3)(name="other", config=other), tmp_path / "model_other")
    for path in (tmp_path / "model").glob("*.safetensors"):
        path.unlink()
    for path in (tmp_path / "model_other").glob("*.safetensors"):
        path.rename(tmp_path / "model" / path.name)
    result = launch(tmp_path)
    assert failed_with(result, ExitCode.CHECKPOINT_ERROR), result.explain()
    stderr = result.workers[0][1]
    assert "Traceback" not in stderr, stderr
    assert "does not fit this model; nothing was loaded. 6 difference(s):" in stderr, stderr
    assert "tensor model.layers.0.mlp.gate_proj.weight in model.safetensors has shape [128, 64]; this model " in stderr
