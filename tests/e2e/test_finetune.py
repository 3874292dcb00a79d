"""[train] mode = "finetune": pretrained weights in, a fresh optimizer and schedule, and a resume that never re-reads them.

Three steps of a real run on CPU (one process each): pretrain 2 steps and export them as an Orbax
checkpoint (bridgec convert megatron-to-orbax); fine-tune from it for 2 of 4 steps (exit_interval),
then move the pretrained checkpoint away and launch again: the second launch resumes from the
fine-tune's own [checkpoint] dir at step 3, which it could not do if it read [init.checkpoint].
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.e2e.harness import HANG_GUARD_SECONDS, compile_to, launch

SPEC = """
[run]
name = "{name}"
seed = 7

[model]
num_layers = 2
hidden_size = 32
num_attention_heads = 4
vocab_size = 128
seq_length = 16
normalization = "rmsnorm"
activation = "swiglu"
position_embedding = "rope"
add_bias_linear = false

[batch]
global_batch_size = 2
micro_batch_size = 2

[train]
iters = {iters}
{train}

[optimizer]
lr = 1e-3
min_lr = 1e-4

[scheduler]
warmup_iters = 1
decay = "cosine"

[checkpoint]
dir = "{name}_ckpt"
save_interval = 2
resume = true
{extra}
"""

FINETUNE = """
[init.checkpoint]
format = "orbax"
path = "pretrained/2/items"
"""


def test_a_finetune_starts_fresh_and_resumes_from_its_own_checkpoints(tmp_path: Path) -> None:
    pre = compile_to(tmp_path, SPEC.format(name="pre", iters=2, train="", extra=""), name="pre.toml", output="pre.py")
    first = launch(pre, 1)
    assert first.returncode == 0, first.explain()
    exported = subprocess.run(
        [sys.executable, "-m", "bridgec.compiler.cli", "convert", "megatron-to-orbax", "pre.py"]
        + ["--checkpoint", "pre_ckpt", "--output", "pretrained"],
        cwd=tmp_path, capture_output=True, text=True, timeout=HANG_GUARD_SECONDS,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stdout + exported.stderr

    spec = SPEC.format(name="ft", iters=4, train='mode = "finetune"\nexit_interval = 2', extra=FINETUNE)
    ft = compile_to(tmp_path, spec, name="ft.toml", output="ft.py")
    assert "Fine-tuning (weights from [init.checkpoint]; optimizer state and schedule fresh at step 0" in ft.read_text()
    started = launch(ft, 1)
    # The worker exits 75 (stopped to resume later); torchrun reports that as its own failure, 1.
    assert started.returncode == 1 and "exit_interval 2 reached; checkpoint saved" in started.stdout, started.explain()
    metrics = [m for m in started.metrics("out/ft", "ft") if m["kind"] == "train"]
    pretrain = [m for m in first.metrics("out/pre", "pre") if m["kind"] == "train"]
    # Step 0, not the pretrained run's step 2: the same warmup learning rate as the pretraining run's first step.
    assert [m["step"] for m in metrics] == [1, 2]
    assert metrics[0]["lr"] == pretrain[0]["lr"]
    # The pretrained weights, not a fresh initialisation: the first fine-tune loss is the pretrained model's.
    assert metrics[0]["loss"] != pretrain[0]["loss"]

    (tmp_path / "pretrained").rename(tmp_path / "moved_away")
    resumed = launch(ft, 1)
    assert resumed.returncode == 0, resumed.explain()
    steps = [m["step"] for m in resumed.metrics("out/ft", "ft") if m["kind"] == "train"]
    assert steps == [1, 2, 3, 4]
