"""The README's "Writing hooks" examples, run as a user copies them, at tensor parallel 2.

The hooks files and [hooks] tables are read from README.md itself, so the
examples there cannot rot. A logits hook written with torch's cross entropy,
which is wrong at tensor > 1, meets a message naming the helper instead.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.e2e.harness import compile_to, launch

README = Path(__file__).resolve().parents[2] / "README.md"

SPEC = """
[run]
name = "hooks"

[launch]
procs_per_node = {procs}

[model]
num_layers = 2
hidden_size = 64
num_attention_heads = 4
vocab_size = 128
seq_length = 32

[parallel]
tensor = {tensor}

[batch]
global_batch_size = 4
micro_batch_size = 2

[train]
iters = 3

[optimizer]
lr = 1e-3
"""

NAIVE = """
import functools

import torch.nn.functional as F

from bridgec.runtime.data import next_batch
from bridgec.runtime.loss import masked_token_loss
from bridgec.runtime.model import unwrap


def naive_forward_step(state, data_iterator, model, return_schedule_plan=False):
    chunk = unwrap(model)
    batch = next_batch(data_iterator, pre_process=chunk.pre_process, post_process=chunk.post_process,
                       device=state.layout.device)
    logits = model(batch.tokens, batch.position_ids, None)
    return logits, functools.partial(naive_loss, batch.loss_mask, batch.labels)


def naive_loss(loss_mask, labels, logits):
    losses = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1), reduction="none")
    return masked_token_loss(loss_mask, losses.view_as(labels))
"""


def _readme_example(name: str) -> tuple[str, str]:
    """The README's hooks file ``name`` and the [hooks] table that follows it."""
    text = README.read_text(encoding="utf-8")
    found = re.search(rf"```python\n(# {re.escape(name)}\n.*?)```\n\n```toml\n(\[hooks\]\n.*?)```", text, re.S)
    assert found is not None, f"README.md lost its {name} example"
    return found[1], found[2]


def _run(folder: Path, hooks_file: str, source: str, hooks_table: str, *, tensor: int, torchrun: bool = False):
    folder.mkdir(parents=True)
    (folder / hooks_file).write_text(source)
    script = compile_to(folder, SPEC.format(procs=tensor, tensor=tensor) + "\n" + hooks_table)
    return launch(script, tensor, torchrun=torchrun)


def _train(result) -> list[dict]:  # noqa: ANN001 - harness.Launch
    return [
        r
        for r in (
            json.loads(line) for line in (result.folder / "out/hooks/spec.metrics.jsonl").read_text().splitlines()
        )
        if r["kind"] == "train"
    ]


def test_the_auxiliary_loss_example_trains_and_logs_its_penalty(tmp_path: Path) -> None:
    source, table = _readme_example("my_hooks.py")
    result = _run(tmp_path / "tp2", "my_hooks.py", source, table, tensor=2)
    assert result.returncode == 0, result.explain()
    records = _train(result)
    assert len(records) == 3 and all(0 < r["metadata"]["penalty"] < r["loss"] for r in records)


def test_the_logits_example_gives_the_same_loss_at_tensor_1_and_2(tmp_path: Path) -> None:
    """vocab_parallel_cross_entropy combines the vocabulary slices: TP=2 computes what TP=1 does."""
    source, table = _readme_example("my_steps.py")
    losses = {}
    for tensor in (1, 2):
        result = _run(tmp_path / f"tp{tensor}", "my_steps.py", source, table, tensor=tensor)
        assert result.returncode == 0, result.explain()
        losses[tensor] = [r["loss"] for r in _train(result)]
    assert losses[2] == pytest.approx(losses[1], rel=1e-5)


def test_a_logits_hook_with_torch_cross_entropy_at_tensor_2_is_told_what_to_use(tmp_path: Path) -> None:
    table = '[hooks]\nfile = "naive.py"\nforward_step = "naive_forward_step"\n'
    result = _run(tmp_path / "naive", "naive.py", NAIVE, table, tensor=2, torchrun=True)  # its failure report
    assert result.returncode != 0 and "exitcode  : 9" in result.stderr
    assert "the loss function naive_forward_step returned from" in result.stderr
    assert "naive.py:20 in naive_loss: losses = F.cross_entropy(" in result.stderr
    assert "compute the loss with megatron.core.tensor_parallel.vocab_parallel_cross_entropy" in result.stderr
    assert 'naive.py", line' not in result.stderr  # no Python traceback of the worker (torchrun prints its own)
