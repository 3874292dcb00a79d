"""Loss pattern 3: forward-only collection returns unreduced per-token outputs on the last stage.

The same first global batch collected at PP=1 and at PP=2 gives the same
per-token losses: the pipeline moves activations, not results.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests import warm
from tests.e2e.harness import compile_to

SPEC = """
[run]
name = "collect"
[launch]
procs_per_node = {procs}
[model]
num_layers = 2
hidden_size = 32
num_attention_heads = 4
vocab_size = 128
seq_length = 16
[parallel]
pipeline = {pipeline}
[batch]
global_batch_size = 4
micro_batch_size = 2
[train]
iters = 2
[optimizer]
lr = 1e-3
"""
SCRIPT = Path(__file__).parent / "scripts" / "collect_outputs.py"


def _collect(folder: Path, procs: int, pipeline: int) -> list[list[float]]:
    script = compile_to(folder, SPEC.format(procs=procs, pipeline=pipeline))
    out = folder / "collected.json"
    completed = warm.torchrun(procs, [str(SCRIPT), str(script), str(out)], cwd=folder)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(out.read_text())["microbatches"]


def test_collected_outputs_are_unreduced_and_layout_independent(tmp_path: Path) -> None:
    single = _collect(tmp_path / "pp1", 1, 1)
    piped = _collect(tmp_path / "pp2", 2, 2)
    assert len(single) == 2 and all(len(row) == 2 * 16 for row in single)  # per token, per microbatch
    for a, b in zip(single, piped):
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5
