"""bridgec convert hf-to-megatron and megatron-to-hf as a user runs them: HF -> bridgec checkpoint -> HF is
bit-exact in bf16 and fp32, and transformers loads the export and generates from it. One process: the
tensor-parallel split and its inverse are tests/runtime/test_hf_layout.py's (a launch of two costs twice)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
import transformers
from safetensors import safe_open

from tests.runtime.hf_models import families, import_and_compile, save

BRIDGEC = [sys.executable, "-m", "bridgec.compiler.cli"]
REPO = Path(__file__).resolve().parents[2]


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    )
    found: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(folder / file), framework="pt") as handle:
            found.update({name: handle.get_tensor(name) for name in handle.keys()})  # noqa: SIM118
    return found


def _bridgec(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BRIDGEC, *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_round_trip_is_bit_exact_and_transformers_loads_it(tmp_path: Path) -> None:
    # Mistral saved in bf16: the bf16 export is the source bit for bit, the fp32 one its exact
    # upcast (an fp32 source round-trips through the same code: its values are what the fp32 export writes).
    chosen = next(f for f in families() if f.name == "mistral")
    source = save(chosen, tmp_path / "source")
    (source / "tokenizer_config.json").write_text('{"model_max_length": 64}')  # travels with the export
    script = import_and_compile(source, tmp_path / "spec.toml", devices=1)
    converted = _bridgec("convert", "hf-to-megatron", script, "--output", tmp_path / "ckpt")
    assert converted.returncode == 0, converted.stdout + converted.stderr
    before = _tensors(source)
    for dtype, torch_dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        out = tmp_path / f"out-{dtype}"
        exported = _bridgec(
            "convert", "megatron-to-hf", script, "--checkpoint", tmp_path / "ckpt", "--output", out, "--dtype", dtype
        )
        assert exported.returncode == 0, exported.stdout + exported.stderr
        after = _tensors(out)
        assert sorted(before) == sorted(after)
        for name, value in before.items():
            assert after[name].dtype == torch_dtype and torch.equal(after[name], value.to(torch_dtype)), name
        assert (out / "tokenizer_config.json").read_text() == '{"model_max_length": 64}'
        assert json.loads((out / "config.json").read_text())["dtype"] == {"bf16": "bfloat16", "fp32": "float32"}[dtype]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []  # no partial folder left

    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out-fp32")
    generated = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, 7)

    again = _bridgec(
        "convert", "megatron-to-hf", script, "--checkpoint", tmp_path / "ckpt", "--output", tmp_path / "out-fp32"
    )
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr


def test_gemma_round_trip_is_bit_exact(tmp_path: Path) -> None:
    """Gemma's zero-centred norm weights go through as stored (the layer applies 1 + weight): fp32 in, fp32 out."""
    chosen = next(f for f in families() if f.name == "gemma")
    source = save(chosen, tmp_path / "source")
    script = import_and_compile(source, tmp_path / "spec.toml", devices=1)
    converted = _bridgec("convert", "hf-to-megatron", script, "--output", tmp_path / "ckpt")
    assert converted.returncode == 0, converted.stdout + converted.stderr
    out = tmp_path / "out"
    exported = _bridgec("convert", "megatron-to-hf", script, "--checkpoint", tmp_path / "ckpt", "--output", out)
    assert exported.returncode == 0, exported.stdout + exported.stderr
    before, after = _tensors(source), _tensors(out)
    assert sorted(before) == sorted(after) and "lm_head.weight" not in after  # tied
    for name, value in before.items():
        assert after[name].dtype == torch.float32 and torch.equal(after[name], value), name
