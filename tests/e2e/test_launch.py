"""A script launched with the wrong number of processes stops on every rank with the command to use."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.harness import compile_to, launch

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
    for rank in range(procs):
        assert f"bridgec [rank {rank}]: {message}" in result.stderr
    assert "exitcode  : 4" in result.stderr  # ExitCode.LAUNCH_MISMATCH, reported by torchrun per rank
    # torchrun reports the failed workers with its own traceback; the workers themselves print none.
    assert "]: Traceback" not in result.stderr
