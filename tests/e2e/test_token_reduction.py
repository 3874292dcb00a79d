"""Token-aware reduction: a step's loss is the mean over real tokens of the whole global batch.

The data is a small text built with `bridgec data build`; end-of-document
tokens are masked out of the loss (eod_mask_loss), so microbatches hold
different numbers of real tokens. The logged step-1 loss must equal an
independent computation over the whole global batch at once, and DP=2 must log
the same losses as DP=1 for the same global batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridgec.compiler.cli import main as bridgec
from tests import warm
from tests.e2e.harness import compile_to, launch

DATA = Path(__file__).parent / "data" / "tiny.jsonl"
STEPS = 3

SPEC = """
[run]
name = "tokens"
seed = 11

[launch]
procs_per_node = {procs}

[model]
num_layers = 2
hidden_size = 32
num_attention_heads = 4
vocab_size = 257
seq_length = 64

[batch]
global_batch_size = 8
micro_batch_size = 2

[train]
iters = {steps}

[optimizer]
lr = 1e-3

[data]
kind = "indexed"
eod_mask_loss = true

[[data.sources]]
prefix = "data/tiny"

[loss]
reduction = "{reduction}"
"""


def _build(folder: Path) -> None:
    assert bridgec(["data", "build", "--input", str(DATA), "--output", str(folder / "data" / "tiny")]) == 0


def _run(folder: Path, procs: int, reduction: str = "per_token") -> list[float]:
    _build(folder)
    script = compile_to(folder, SPEC.format(procs=procs, steps=STEPS, reduction=reduction))
    result = launch(script, procs)
    assert result.returncode == 0, result.explain()
    return result.train_losses("out/tokens")


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[float]]:
    folder = tmp_path_factory.mktemp("dp1")
    return folder, _run(folder, 1)


def test_step_loss_is_the_mean_over_real_tokens(single: tuple[Path, list[float]]) -> None:
    folder, losses = single
    reference = warm.torchrun(
        1, [str(Path(__file__).parent / "scripts" / "reference_loss.py"), str(folder / "run.py")], cwd=folder
    )
    assert reference.returncode == 0, reference.stderr[-4000:]
    expected = json.loads(reference.stdout.strip().splitlines()[-1])
    assert expected["masked"] > 0  # the batch really has masked tokens
    assert losses[0] == pytest.approx(expected["loss"], abs=1e-6)


def test_data_parallel_two_gives_the_same_losses(single: tuple[Path, list[float]], tmp_path: Path) -> None:
    _, losses = single
    assert _run(tmp_path, 2) == pytest.approx(losses, abs=1e-6)
