"""Parallel setup: torch.distributed from torchrun's environment, megatron-core's
parallel_state with the compiled sizes, seeds and device placement."""

from __future__ import annotations

import datetime
import os
import random

import attrs
import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

from bridgec.runtime.errors import ExitCode, RunError


@attrs.frozen(kw_only=True)
class Layout:
    """Where this process sits in the run. Sizes are the compiled ones; ranks are this process's."""

    device: torch.device
    world_size: int
    rank: int
    tensor: int
    pipeline: int
    virtual_pipeline: int | None
    context: int
    expert: int
    data: int
    tensor_rank: int
    pipeline_rank: int
    context_rank: int
    data_rank: int
    expert_rank: int

    @property
    def is_first_stage(self) -> bool:
        return self.pipeline_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pipeline_rank == self.pipeline - 1

    @property
    def holds_loss(self) -> bool:
        """The rank that logs: last pipeline stage, first tensor, context and data rank."""
        return self.is_last_stage and self.tensor_rank == 0 and self.context_rank == 0 and self.data_rank == 0

    @property
    def num_chunks(self) -> int:
        """Model chunks on this rank (virtual pipeline stages, or 1)."""
        return self.virtual_pipeline or 1


def check_launch(*, compiled_world_size: int, launch_command: str) -> None:
    """Stop before any collective when torchrun started the wrong number of processes.

    Runs on every rank from the environment alone, so a bad launch exits on all
    of them instead of hanging in the first collective.
    """
    if "RANK" not in os.environ or "MASTER_ADDR" not in os.environ:
        raise RunError(
            ExitCode.LAUNCH_MISMATCH,
            f"this script runs under torchrun (it sets RANK, WORLD_SIZE and MASTER_ADDR); launch it with: "
            f"{launch_command}",
            every_rank=True,
        )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != compiled_world_size:
        raise RunError(
            ExitCode.LAUNCH_MISMATCH,
            f"this script was compiled for {compiled_world_size} processes but was launched with "
            f"{launched}; launch it with: {launch_command}",
            every_rank=True,
        )


def initialize(
    *,
    device: str,
    tensor: int,
    pipeline: int,
    virtual_pipeline: int | None = None,
    context: int,
    expert: int,
    seed: int,
    timeout_minutes: float,
) -> Layout:
    """Start torch.distributed (gloo on cpu, nccl on cuda) and megatron's process groups, and seed.

    Seeding follows Megatron-LM (see :func:`stage_seed`): Python, NumPy, torch
    and megatron's tensor-parallel RNG tracker from ``seed + 100 x pipeline
    rank`` (the tracker adds 2718 + tp rank for the model-parallel stream), so
    the same seed gives the same run and pipeline stages draw different dropout
    masks. Portable initialisation draws weights from its own generators, so the
    initial model does not depend on these streams or on the layout.
    """
    timeout = datetime.timedelta(minutes=timeout_minutes)
    if device == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        torch_device = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        torch_device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timeout)
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tensor,
        pipeline_model_parallel_size=pipeline,
        virtual_pipeline_model_parallel_size=virtual_pipeline,
        context_parallel_size=context,
        expert_model_parallel_size=expert,
        distributed_timeout_minutes=max(1, round(timeout_minutes)),
    )
    seeded = stage_seed(seed, parallel_state.get_pipeline_model_parallel_rank())
    random.seed(seeded)
    np.random.seed(seeded)
    torch.manual_seed(seeded)
    model_parallel_cuda_manual_seed(seeded)
    world = dist.get_world_size()
    return Layout(
        device=torch_device,
        world_size=world,
        rank=dist.get_rank(),
        tensor=tensor,
        pipeline=pipeline,
        virtual_pipeline=virtual_pipeline,
        context=context,
        expert=expert,
        data=parallel_state.get_data_parallel_world_size(),
        tensor_rank=parallel_state.get_tensor_model_parallel_rank(),
        pipeline_rank=parallel_state.get_pipeline_model_parallel_rank(),
        context_rank=parallel_state.get_context_parallel_rank(),
        data_rank=parallel_state.get_data_parallel_rank(),
        expert_rank=parallel_state.get_expert_model_parallel_rank(),
    )


def stage_seed(seed: int, pipeline_rank: int) -> int:
    """The seed of one pipeline stage's random streams: ``seed + 100 x pipeline_rank``.

    Megatron-LM's ``_set_random_seed`` (megatron/training/initialize.py) offsets
    the seed this way so that stages holding different layers do not draw the
    same dropout masks; tensor-parallel ranks are told apart inside the stage by
    megatron-core's tracker (+ 2718 + tp rank), data-parallel ranks share the
    stage's seed (Megatron-LM's default, without data_parallel_random_init).
    """
    return seed + 100 * pipeline_rank


def collective_device() -> torch.device:
    """Where tensors handed to this run's collectives must live: the current GPU under NCCL, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shutdown() -> None:
    """Tear down megatron's groups and the default process group."""
    if dist.is_initialized():
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()
