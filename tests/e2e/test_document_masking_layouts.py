"""[data] document_masking at DP2, TP2 and PP2 gives the single-process losses (the generated script, torchrun).

tests/runtime/test_document_masking.py shows on one rank that a masked sample trains exactly as its documents
run alone; here the generated script carries the mask through data parallelism, tensor-parallel attention
heads and both pipeline stages (each reads it with its batch), so every layout must agree with the
single-process run to float32 round-off. (That the mask changes the losses at all is checked in-process.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.harness import compile_to, launch

STEPS = 3
TOLERANCE = 1e-5

SPEC = """
[run]
name = "masking"
seed = 7

[launch]
procs_per_node = {procs}

[model]
num_layers = 2
hidden_size = 64
num_attention_heads = 4
vocab_size = 256
seq_length = 64
position_embedding = "rope"

[parallel]
{parallel}

[batch]
global_batch_size = 8
micro_batch_size = 2

[train]
iters = {steps}

[optimizer]
lr = 2e-3

[data]
document_masking = true
eod_mask_loss = true
"""


def _losses(folder: Path, procs: int, parallel: str) -> list[float]:
    text = SPEC.format(procs=procs, parallel=parallel, steps=STEPS)
    script = compile_to(folder, text)
    result = launch(script, procs)
    assert result.returncode == 0, result.explain()
    losses = result.train_losses("out/masking")
    assert len(losses) == STEPS
    return losses


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> list[float]:
    return _losses(tmp_path_factory.mktemp("one"), 1, "")


@pytest.mark.parametrize(
    ("procs", "parallel"), [(2, ""), (2, "tensor = 2"), (2, "pipeline = 2")], ids=["dp2", "tp2", "pp2"]
)
def test_every_layout_agrees_with_one_process(
    reference: list[float], tmp_path: Path, procs: int, parallel: str
) -> None:
    losses = _losses(tmp_path, procs, parallel)
    assert max(abs(a - b) for a, b in zip(reference, losses)) <= TOLERANCE, (reference, losses)
