"""The end of a training step: every metadata entry of the loss function is reduced like the loss and logged."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.runtime import launch as runs

AUX_LOSS_HOOK = '''\
import torch


def loss(loss_mask, output_tensor):
    """The generated per-token loss, with more metadata: a [sum, count] pair, a number, and a string."""
    mask = loss_mask.reshape(-1).float()
    loss_sum = torch.sum(output_tensor.float().reshape(-1) * mask)
    count = mask.sum()
    return loss_sum, count.to(torch.int), {
        "lm loss": torch.stack([loss_sum.detach(), count]),
        "aux loss": torch.stack([2 * loss_sum.detach(), count]),
        "tokens": count,
        "note": "not a number",
    }
'''


@pytest.mark.parametrize("layout", [{"procs": 2}, {"procs": 2, "pipeline": 2}], ids=["dp2", "pp2"])
def test_loss_hook_metadata_is_reduced_like_the_loss_logged_and_a_bad_value_warned_once(
    tmp_path: Path, layout: dict[str, int]
) -> None:
    """2 microbatches per rank; data parallel 2, or pipeline 2 (the first stage holds no loss but joins the sums)."""
    folder = runs.prepare(tmp_path, runs.RunSpec(iters=3, hooks=AUX_LOSS_HOOK, hook="loss", **layout))
    result = runs.launch(folder)
    assert result.returncode == 0, result.explain()
    records = [r for r in runs.metrics(folder) if r["kind"] == "train"]
    assert [r["step"] for r in records] == [1, 2, 3]
    for record in records:
        # [2 x sum, count] summed over microbatches and ranks, divided once: exactly twice the loss.
        assert record["metadata"] == {"aux loss": 2 * record["loss"], "tokens": 64.0}  # micro 2 x sequence 32
    assert f"| aux loss {2 * records[0]['loss']:.6g} | tokens 64 |" in result.output
    warning = (
        "bridgec: warning: the loss function's metadata 'note' is a str, not a [numerator, denominator] "
        "tensor or a number; it is not reduced or logged"
    )
    assert result.output.count(warning) == 1
    assert "Traceback" not in result.output
