"""Layout parity: the same spec and seed give the same per-step losses whatever the layout.

Portable initialisation draws every weight from (seed, global name), and the
sampler deals the same global batch to every layout, so 1 process, DP=2, TP=2,
PP=2, TP=2 x PP=2, a virtual pipeline on PP=2 and the distributed optimizer
must agree with the single-process run to float32 round-off (1e-5) for 10 steps.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.harness import compile_to, launch

STEPS = 10
TOLERANCE = 1e-5

SPEC = """
[run]
name = "parity"
seed = 7

[launch]
procs_per_node = {procs}

[model]
num_layers = 4
hidden_size = 64
num_attention_heads = 4
num_query_groups = 2
ffn_hidden_size = 96
vocab_size = 256
seq_length = 32
normalization = "rmsnorm"
activation = "swiglu"
position_embedding = "rope"
tie_embeddings = false
add_bias_linear = false

[parallel]
{parallel}

[batch]
global_batch_size = 8
micro_batch_size = 2

[train]
iters = {steps}

[optimizer]
lr = 2e-3
min_lr = 2e-4

[scheduler]
warmup_iters = 2
"""

LAYOUTS = {
    "dp2": (2, ""),
    "tp2": (2, "tensor = 2"),
    "pp2": (2, "pipeline = 2"),
    "tp2_pp2": (4, "tensor = 2\npipeline = 2"),
    "vpp2_pp2": (2, "pipeline = 2\nvirtual_pipeline = 2"),
    "dp2_distributed_optimizer": (2, "distributed_optimizer = true"),
}


def _losses(folder: Path, procs: int, parallel: str) -> list[float]:
    script = compile_to(folder, SPEC.format(procs=procs, parallel=parallel, steps=STEPS))
    result = launch(script, procs)
    assert result.returncode == 0, result.explain()
    losses = result.train_losses("out/parity")
    assert len(losses) == STEPS
    return losses


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> list[float]:
    return _losses(tmp_path_factory.mktemp("single"), 1, "")


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_matches_single_process(layout: str, reference: list[float], tmp_path: Path) -> None:
    procs, parallel = LAYOUTS[layout]
    losses = _losses(tmp_path, procs, parallel)
    differences = [abs(a - b) for a, b in zip(reference, losses)]
    assert max(differences) <= TOLERANCE, f"{layout}: per-step |loss - single process| = {differences}"
    assert reference[-1] < reference[0]  # it trains, so the comparison is not between two constants


MOE_SPEC = """
[run]
name = "moe"

[launch]
procs_per_node = {procs}

[model]
num_layers = 2
hidden_size = 64
num_attention_heads = 4
vocab_size = 128
seq_length = 32
num_experts = 4
moe_router_topk = 2
add_bias_linear = false

[parallel]
expert = {expert}

[batch]
global_batch_size = 8

[train]
iters = 4

[optimizer]
lr = 1e-3
"""


def test_expert_parallel_matches_one_process(tmp_path: Path) -> None:
    """MoE: experts split over 2 expert-parallel ranks (4 processes) train like all experts on one."""
    runs = []
    for procs, expert in ((1, 1), (4, 2)):
        script = compile_to(tmp_path / f"ep{expert}", MOE_SPEC.format(procs=procs, expert=expert))
        result = launch(script, procs)
        assert result.returncode == 0, result.explain()
        runs.append(result.train_losses("out/moe"))
    assert max(abs(a - b) for a, b in zip(*runs)) <= TOLERANCE, runs
