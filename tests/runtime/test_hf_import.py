"""[init.checkpoint] format = "huggingface" against real transformers: logits and loss at TP1, TP2, PP2 and
(MoE) EP2, the bytes each rank reads, and the compiled script's own step-1 loss.

Six tiny families (tests/runtime/hf_models.py: Llama 3.1 with llama3 RoPE scaling saved as shards, Mistral in
bf16, Qwen2 with QKV biases in fp16, Qwen3 with QK norm, head_dim != hidden / heads and tied embeddings,
Gemma with its 1 + weight RMSNorm, scaled embeddings and tanh GeGLU, Qwen3-MoE), written by ``bridgec import hf`` and compiled; one torchrun launch per layout checks them all
(tests/runtime/hf_parity_worker.py). The Llama spec keeps megatron's default vocabulary padding (300 -> 384
rows): its real columns must match and its padded ones be zero.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import warm
from tests.runtime.hf_models import families, import_and_compile, save
from tests.runtime.launch import HANG_GUARD_SECONDS

LAYOUTS = {"tp1": (1, 1, 1), "tp2": (2, 1, 1), "pp2": (1, 2, 1), "ep2": (1, 1, 2)}
"""tensor, pipeline, expert; ep2 (2 processes, one expert-parallel group) runs the MoE family only, and tp2 all
but it (megatron-core trains MoE under tensor parallelism only with sequence parallelism, which needs
transformer_engine: not on CPU)."""


def _runs(name: str, layout: str) -> bool:
    return (name == "qwen3moe") == (layout == "ep2") or layout in ("tp1", "pp2")


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {family.name: save(family, root / family.name) for family in families()}


STEP1 = {"iters": 1, "warmup_iters": 0, "global_batch_size": 2, "micro_batch_size": 2}
"""One training step of the Mistral script (no padded vocabulary rows) for the step-1 loss check."""


def _launch(models: dict[str, Path], root: Path, layout: str) -> dict[int, dict[str, dict[str, float]]]:
    tensor, pipeline, expert = LAYOUTS[layout]
    procs = max(tensor * pipeline, expert)
    pairs = []
    for name, folder in models.items():
        if not _runs(name, layout):
            continue
        padding = {"make_vocab_size_divisible_by": 128} if name == "llama" else {}
        spec = root / f"{name}_{layout}.toml"
        script = import_and_compile(
            folder, spec, devices=procs, tensor=tensor, pipeline=pipeline, expert=expert, **padding
        )
        pairs.append(f"{script}:{folder}")
    if layout == "tp1":
        step1 = import_and_compile(models["mistral"], root / "step1.toml", devices=1, **STEP1)
        pairs.append(f"{step1}:{models['mistral']}")
    out = root / f"out_{layout}"
    worker = ["-m", "tests.runtime.hf_parity_worker", str(out), *pairs]
    done = warm.torchrun(procs, worker, cwd=REPO, timeout=HANG_GUARD_SECONDS)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return {rank: json.loads((out / f"rank{rank}.json").read_text()) for rank in range(procs)}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_logits_and_loss_match_transformers(models: dict[str, Path], tmp_path: Path, layout: str) -> None:
    ranks = _launch(models, tmp_path, layout)
    logits_rank = max(ranks) if layout == "pp2" else 0
    names = [name for name in models if f"{name}_{layout}" in ranks[0]]
    assert names == [name for name in models if _runs(name, layout)]
    for name in names:
        found = ranks[logits_rank][f"{name}_{layout}"]
        assert found["logits_diff"] <= 1e-4, (name, found)
        assert found["logits_scale"] > 1.0, (name, found)  # real logits, not zeros on both sides
        assert found["padded_logits_max"] == 0.0, (name, found)
        if found["padded_vocab"] == 300:  # padded rows take part in megatron's softmax: another loss
            assert abs(found["loss"] - found["hf_loss"]) <= 1e-5, (name, found)
    if layout in ("tp2", "pp2"):
        # Each rank reads its own half of the weights (plus what both halves need: norms; on PP2 a tied
        # embedding is read by the first stage for the embedding and by the last for the output layer).
        for name in names:
            for rank, results in ranks.items():
                found = results[f"{name}_{layout}"]
                assert 0.4 <= found["bytes_read"] / found["file_bytes"] <= 0.6, (name, rank, found)
    if layout == "tp1":
        _check_step1_loss(root=tmp_path, expected=ranks[0]["step1"]["hf_first_batch_loss"])
    if layout == "ep2":
        # Each expert-parallel rank reads the shared weights and its own half of the experts.
        for rank, results in ranks.items():
            found = results["qwen3moe_ep2"]
            assert 0.5 < found["bytes_read"] / found["file_bytes"] < 0.9, (rank, found)
    if layout == "tp1":
        for name in models:
            found = ranks[0][f"{name}_{layout}"]
            assert found["bytes_read"] == found["file_bytes"], (name, found)


def _check_step1_loss(*, root: Path, expected: float) -> None:
    """The compiled script's own step 1 (its data, its forward step and loss) reports transformers' loss."""
    done = warm.torchrun(1, ["step1.py"], cwd=root, timeout=HANG_GUARD_SECONDS)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = [json.loads(line) for line in next(root.glob("out/**/step1.metrics.jsonl")).read_text().splitlines()]
    first = next(line for line in metrics if line.get("step") == 1)
    assert abs(first["loss"] - expected) <= 1e-5, (first, expected)
