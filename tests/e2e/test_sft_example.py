"""examples/sft-tiny: the README's SFT demo makes its tiny Hugging Face model, rebuilds its packed chat data,
compiles, and fine-tunes from those weights under torchrun (DP2)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bridgec.compiler.cli import main as bridgec
from tests.e2e.harness import launch

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sft-tiny"


def test_the_sft_example_trains_on_packed_chats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("spec.toml", "chat.jsonl", "tokenizer", "make_model.py"):
        source = EXAMPLE / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / name)
    made = subprocess.run([sys.executable, "make_model.py"], cwd=tmp_path, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "model" / "model.safetensors").is_file()
    build = [
        "data",
        "build",
        "--sft",
        "--input",
        str(tmp_path / "chat.jsonl"),
        "--tokenizer",
        str(tmp_path / "tokenizer"),
    ]
    assert bridgec([*build, "--output", str(tmp_path / "data" / "chat"), "--pack", "64"]) == 0
    assert "200 samples packed into" in capsys.readouterr().out
    # The committed dataset is what the committed inputs build.
    for suffix in (".bin", ".idx", ".loss_mask.bin", ".loss_mask.idx", ".json"):
        built, committed = tmp_path / "data" / f"chat{suffix}", EXAMPLE / "data" / f"chat{suffix}"
        assert built.read_bytes() == committed.read_bytes(), suffix
    assert bridgec(["compile", str(tmp_path / "spec.toml"), "-o", str(tmp_path / "run.py")]) == 0
    result = launch(tmp_path / "run.py", 2)
    assert result.returncode == 0, result.explain()
    assert "packed into 78 sequences" in result.stdout
    losses = result.train_losses("out/sft-tiny")
    assert len(losses) == 40 and losses[-1] < losses[0] - 2.0, losses
    valid = [m["loss"] for m in result.metrics("out/sft-tiny") if m["kind"] == "valid"]
    assert len(valid) == 2 and valid[1] < valid[0]
