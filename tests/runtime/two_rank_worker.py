"""Checks that need two gloo ranks in two layouts, in one torchrun launch (tests/runtime/conftest.py: two_ranks).

``python -m torch.distributed.run --nproc-per-node 2 two_rank_worker.py OUT_DIR`` writes rank{r}.json with:

``context`` (context parallel 2): the standard (per-microbatch mean) loss, each rank holding half of every
sequence: the largest differences from the whole-sequence mean of the reported loss and of the gradient that
training applies. The gradient goes the way training goes: megatron-core's forward_backward schedule (which
scales two-value losses by the context size and divides by the number of microbatches), its DDP and
``finalize_model_grads`` (which average over the data x context ranks). The model is one parameter holding the
per-token losses, so the gradient of the whole-sequence mean is known exactly: mask / count. The masks leave the
two halves different token counts, so a rank that divided by its own count would be caught, and differ per
microbatch, so the average over microbatches is checked too.

``stages`` (pipeline parallel 2): what each stage's random streams draw after ``initialize`` (torch, NumPy,
Python, and megatron's model-parallel tracker stream that dropout inside tensor-parallel regions uses).

``sdpa_tp2`` and ``sdpa_pp2``: tests/runtime/sdpa_checks.py's differences between SdpaAttention and
megatron-core's local attention at tensor parallel 2 and pipeline parallel 2.
``kd`` (tensor parallel 2): the largest differences of the vocabulary-parallel KD loss and its gradient from
the full-vocabulary reference of tests/runtime/kd_reference.py, each rank holding half of the vocabulary.
``kd_layers`` (tensor parallel 2): kd_reference.layer_loss_differences, [[distill.layers]]' hidden-state losses of
a two-layer GPTModel split over the two ranks.
"""

from __future__ import annotations

import functools
import json
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.enums import ModelType
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer import TransformerConfig

from bridgec.runtime.loss import loss_from_sums, loss_sums, masked_mean_loss, reduce_metadata

SEQUENCE = 8
MASKS = (
    # microbatch 0: 6 real tokens in the first half, 3 in the second
    torch.tensor([[1, 1, 1, 1, 1, 0, 0, 1], [1, 1, 0, 0, 0, 0, 0, 0]], dtype=torch.float32),
    # microbatch 1: 2 in the first half, 5 in the second
    torch.tensor([[0, 1, 0, 0, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0, 1, 0]], dtype=torch.float32),
)


class PerTokenLosses(torch.nn.Module):
    """A "model" whose output is its parameter: the per-token losses [2, SEQUENCE] of every microbatch.

    Each context rank returns its half of the sequence dimension, as a context-parallel model's
    output holds only that rank's tokens.
    """

    model_type = ModelType.encoder_or_decoder  # what megatron's schedules ask a model chunk

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.losses = torch.nn.Parameter(torch.arange(1.0, 2 * SEQUENCE + 1).reshape(2, SEQUENCE) / 4)

    def set_input_tensor(self, tensor: torch.Tensor | None) -> None:
        """Called by megatron's schedules; a single stage has no input from a previous one."""

    def forward(self) -> torch.Tensor:
        rank = parallel_state.get_context_parallel_rank()
        context = parallel_state.get_context_parallel_world_size()
        return self.losses.chunk(context, dim=1)[rank]


def _local(mask: torch.Tensor) -> torch.Tensor:
    return mask.chunk(parallel_state.get_context_parallel_world_size(), dim=1)[
        parallel_state.get_context_parallel_rank()
    ]


def forward_step(
    data_iterator: Iterator[torch.Tensor], model: torch.nn.Module
) -> tuple[torch.Tensor, functools.partial]:
    mask = next(data_iterator)
    return model(), functools.partial(masked_mean_loss, _local(mask))


def differences() -> dict[str, float]:
    config = TransformerConfig(
        num_layers=1, hidden_size=8, num_attention_heads=1, context_parallel_size=2,
        finalize_model_grads_func=finalize_model_grads,
    )  # fmt: skip
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False)
    model = DistributedDataParallel(config, ddp_config, PerTokenLosses(config))
    model.zero_grad_buffer()
    forward_data = get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter(MASKS),
        model=[model],
        num_microbatches=len(MASKS),
        seq_length=SEQUENCE,
        micro_batch_size=2,
        forward_only=False,
    )
    losses = model.module.losses.detach()
    means = [float((losses * mask).sum() / mask.sum()) for mask in MASKS]
    expected_grad = sum(mask / mask.sum() for mask in MASKS) / len(MASKS)
    grad = model.module.losses.main_grad
    total = loss_sums(forward_data)
    torch.distributed.all_reduce(total, group=parallel_state.get_context_parallel_group())
    return {
        "reported": abs(loss_from_sums(total) - sum(means) / len(means)),
        "reduce_metadata": abs(reduce_metadata(forward_data) - sum(means) / len(means)),
        "grad": float((grad - expected_grad).abs().max()),
        "grad_ratio": float(grad.norm() / expected_grad.norm()),
    }


STAGE_SEED = 1234


def stage_draws() -> dict[str, object]:
    """Numbers each random stream gives right after seeding, and this rank's pipeline stage."""
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    with get_cuda_rng_tracker().fork():  # the model-parallel stream (dropout inside tensor-parallel regions)
        tracker = torch.rand(4).tolist()
    return {
        "pipeline_rank": parallel_state.get_pipeline_model_parallel_rank(),
        "torch": torch.rand(4).tolist(),
        "numpy": np.random.rand(4).tolist(),
        "python": [random.random() for _ in range(4)],
        "tracker": tracker,
    }


def kd_differences() -> dict[str, float]:
    """The vocabulary-parallel KD loss at tensor = 2 against the full-vocabulary reference (tests/runtime/kd_reference)."""
    from kd_reference import KD_TEMPERATURE, kd_case, reference_kd, relative_error  # beside this script, run as a file

    from bridgec.runtime.distill import vocab_parallel_kl

    rank = parallel_state.get_tensor_model_parallel_rank()
    student, teacher, weights = kd_case()
    width = student.shape[-1] // 2
    local = student[..., rank * width : (rank + 1) * width].clone().requires_grad_(True)
    divergence = vocab_parallel_kl(
        local,
        teacher[..., rank * width : (rank + 1) * width],
        temperature=KD_TEMPERATURE,
        group=parallel_state.get_tensor_model_parallel_group(),
    )
    (divergence * weights).sum().backward()
    expected, expected_grad = reference_kd(student, teacher, weights)
    return {
        "loss": float(relative_error(divergence, expected)),
        "grad": float((local.grad.double() - expected_grad[..., rank * width : (rank + 1) * width]).abs().max()),
    }


def main(argv: list[str]) -> int:
    import sdpa_checks  # its sibling: torchrun runs this file with its folder first on sys.path

    from bridgec.runtime import cpu_compat
    from bridgec.runtime.parallel import initialize, shutdown

    cpu_compat.apply()
    results = {}
    layout = initialize(
        device="cpu", tensor=1, pipeline=1, virtual_pipeline=None, context=2, expert=1, seed=0, timeout_minutes=2
    )
    results["context"] = differences()
    parallel_state.destroy_model_parallel()
    initialize(
        device="cpu", tensor=1, pipeline=2, virtual_pipeline=None, context=1, expert=1, seed=STAGE_SEED,
        timeout_minutes=2,
    )  # fmt: skip
    results["stages"] = stage_draws()
    results["sdpa_pp2"] = sdpa_checks.cases()
    parallel_state.destroy_model_parallel()
    initialize(
        device="cpu", tensor=2, pipeline=1, virtual_pipeline=None, context=1, expert=1, seed=0, timeout_minutes=2
    )
    results["sdpa_tp2"] = sdpa_checks.cases()
    results["kd"] = kd_differences()
    from kd_reference import layer_loss_differences  # beside this script, run as a file

    results["kd_layers"] = layer_loss_differences()
    Path(argv[0], f"rank{layout.rank}.json").write_text(json.dumps(results))
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
