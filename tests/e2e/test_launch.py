"""A script launched with the wrong number of processes stops on every rank with the command to use."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e import harness
from tests.e2e.harness import compile_to


def launch(script: Path, procs: int) -> harness.Launch:
    """These tests are about launching: always the real torchrun."""
    return harness.launch(script, procs, torchrun=True)


SPEC = """
[run]
name = "launch"

[launch]
procs_per_node = 2

[model]
num_layers = 2
hidden_size = 32
num_attention_heads = 4
vocab_size = 128
seq_length = 16

[batch]
global_batch_size = 4

[train]
iters = 2

[optimizer]
lr = 1e-3
"""


@pytest.mark.parametrize("procs", [1, 3])
def test_wrong_world_size_exits_with_the_right_command(procs: int, tmp_path: Path) -> None:
    result = launch(compile_to(tmp_path, SPEC), procs)
    assert result.returncode != 0
    message = (
        f"this script was compiled for 2 processes but was launched with {procs}; "
        "launch it with: torchrun --nnodes 1 --nproc-per-node 2 run.py"
    )
    # Every rank finds the same problem; rank 0 says it once.
    assert result.stderr.count(message) == 1 and f"bridgec: {message}" in result.stderr
    assert "exitcode  : 4" in result.stderr  # ExitCode.LAUNCH_MISMATCH, reported by torchrun per rank
    # torchrun reports the failed workers with its own traceback; the workers themselves print none.
    assert "]: Traceback" not in result.stderr


HOOKS = """
import functools

from bridgec.runtime.data import next_batch
from bridgec.runtime.loss import masked_token_loss
from bridgec.runtime.model import unwrap


def my_step(state, data_iterator, model, return_schedule_plan=False):
    chunk = unwrap(model)
    batch = next_batch(data_iterator, pre_process=chunk.pre_process, post_process=chunk.post_process,
                       device=state.layout.device)
    output = model(batch.tokens, batch.position_ids, None, labels=batch.labels)
    return output, functools.partial(masked_token_loss, batch.loss_mask)
"""


def test_a_hooks_file_that_changed_after_compiling_is_a_message(tmp_path: Path) -> None:
    (tmp_path / "my_hooks.py").write_text(HOOKS)
    spec = SPEC.replace("procs_per_node = 2", "procs_per_node = 1") + (
        '\n[hooks]\nfile = "my_hooks.py"\nforward_step = "my_step"\n'
    )
    script = compile_to(tmp_path, spec)
    assert launch(script, 1).returncode == 0
    (tmp_path / "my_hooks.py").write_text(HOOKS.replace("def my_step", "def renamed_step"))
    result = launch(script, 1)
    assert result.returncode != 0
    assert f"bridgec: {tmp_path / 'my_hooks.py'}: no function 'my_step' (recompile after changing hooks)" in (
        result.stderr
    )
    assert "exitcode  : 9" in result.stderr and "]: Traceback" not in result.stderr


def test_running_without_torchrun_says_how_to_launch(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = compile_to(tmp_path, SPEC)
    completed = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert completed.returncode == 4
    assert completed.stderr.strip().endswith(
        "this script runs under torchrun (it sets RANK, WORLD_SIZE and MASTER_ADDR); launch it with: "
        "torchrun --nnodes 1 --nproc-per-node 2 run.py"
    ), completed.stderr
    assert "Traceback" not in completed.stderr
