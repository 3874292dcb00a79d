"""Seeding: each pipeline stage has its own random streams, as in Megatron-LM."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
import torch

from bridgec.runtime.parallel import stage_seed
from tests.runtime.two_rank_worker import STAGE_SEED


def test_stage_seed_is_megatron_lms_offset() -> None:
    assert [stage_seed(1234, rank) for rank in range(3)] == [1234, 1334, 1434]


def test_pipeline_stages_draw_from_their_own_seeds(two_ranks: dict[int, dict[str, Any]]) -> None:
    """PP = 2 under torchrun: the stages' torch, NumPy, Python and tensor-parallel tracker streams differ,
    and each is the stream of seed + 100 x pipeline rank (the tracker's model-parallel stream adds 2718 + tp rank)."""
    stages = {two_ranks[rank]["stages"]["pipeline_rank"]: two_ranks[rank]["stages"] for rank in (0, 1)}
    assert sorted(stages) == [0, 1]
    for stream in ("torch", "numpy", "python", "tracker"):
        assert stages[0][stream] != stages[1][stream], f"both stages drew the same {stream} numbers"
    for rank, drawn in stages.items():
        seed = STAGE_SEED + 100 * rank
        torch.manual_seed(seed + 2718)
        assert drawn["tracker"] == pytest.approx(torch.rand(4).tolist(), abs=0), f"stage {rank} tracker"
        torch.manual_seed(seed)
        assert drawn["torch"] == pytest.approx(torch.rand(4).tolist(), abs=0), f"stage {rank} torch"
        assert drawn["numpy"] == pytest.approx(np.random.RandomState(seed).rand(4).tolist(), abs=0)
        python = random.Random(seed)
        assert drawn["python"] == pytest.approx([python.random() for _ in range(4)], abs=0)
