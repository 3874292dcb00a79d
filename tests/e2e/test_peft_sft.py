"""[peft] LoRA with packed SFT data and the distributed optimizer (DP2): adapters-only checkpoints, exact resume.

The SFT example (examples/sft-tiny: its tiny Hugging Face Llama, packed chats) with LoRA on every linear and
the distributed optimizer: six steps straight, and the same run stopped after three (exit_interval) and
resumed, must log bit-identical losses; the checkpoint holds the adapters and their optimizer state only.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from bridgec.compiler.cli import main as bridgec
from bridgec.runtime import checkpoint_files as files
from tests.e2e.harness import launch

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sft-tiny"
EXTRA = """
[peft]
method = "lora"
target_modules = ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"]
rank = 8
alpha = 16

[parallel]
distributed_optimizer = true
"""


def _prepare(folder: Path, model: Path, *, exit_interval: int | None) -> Path:
    folder.mkdir()
    for name in ("data", "tokenizer"):
        shutil.copytree(EXAMPLE / name, folder / name)
    (folder / "model").symlink_to(model)
    spec = (EXAMPLE / "spec.toml").read_text(encoding="utf-8")
    spec = spec.replace("iters = 40", "iters = 6").replace("eval_interval = 20", "eval_interval = 3")
    spec = spec.replace('[checkpoint]\ndir = "checkpoints"', '[checkpoint]\ndir = "checkpoints"\nresume = true')
    if exit_interval is not None:
        spec = spec.replace("[train]\n", f"[train]\nexit_interval = {exit_interval}\n")
    (folder / "spec.toml").write_text(spec + EXTRA, encoding="utf-8")
    assert bridgec(["compile", str(folder / "spec.toml"), "-o", str(folder / "run.py")]) == 0
    return folder / "run.py"


def test_lora_on_packed_sft_with_the_distributed_optimizer_resumes_exactly(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE / "make_model.py", tmp_path / "make_model.py")
    made = subprocess.run([sys.executable, "make_model.py"], cwd=tmp_path, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    straight = launch(_prepare(tmp_path / "straight", tmp_path / "model", exit_interval=None), 2)
    assert straight.returncode == 0, straight.explain()
    reference = straight.train_losses("out/sft-tiny")
    assert len(reference) == 6 and reference[-1] < reference[0]

    script = _prepare(tmp_path / "resumed", tmp_path / "model", exit_interval=3)
    stopped = launch(script, 2)
    assert stopped.returncode != 0 and "exit_interval 3 reached" in stopped.stdout, stopped.explain()
    resumed = launch(script, 2)
    assert resumed.returncode == 0, resumed.explain()
    assert "resume: continuing from step 3" in resumed.stdout
    assert resumed.train_losses("out/sft-tiny") == reference  # bit-identical, each step logged once

    names = [entry.key for entry in files.inspect(tmp_path / "resumed" / "checkpoints").tensors]
    weights = [name for name in names if not name.startswith("optimizer.")]
    assert weights and all(name.startswith("peft.") for name in weights), weights  # no base weight is saved
