"""Optimizer and learning-rate schedule on megatron-core's OptimizerConfig,
get_megatron_optimizer and OptimizerParamScheduler."""

from __future__ import annotations

from typing import Any

import attrs
import torch
from megatron.core.distributed import DistributedDataParallel
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer.optimizer import ChainedOptimizer
from megatron.core.optimizer.optimizer_config import ParamKey, ParamWithNamePredicate
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler, ParamGroupOverride


def no_decay(name: str, shape_rank: int) -> bool:
    """Megatron's weight-decay exclusions, stated once: biases and 1-D parameters (norm scales)."""
    return name.endswith(".bias") or shape_rank == 1


@attrs.frozen(kw_only=True)
class Adam:
    """Adam with decoupled weight decay (AdamW): megatron-core's "adam"."""

    beta1: float
    beta2: float
    eps: float


@attrs.frozen(kw_only=True)
class Sgd:
    """SGD with momentum: megatron-core's "sgd"."""

    momentum: float


@attrs.frozen(kw_only=True)
class OptimizerSettings:
    """Everything the optimizer needs, resolved by the compiler."""

    rule: Adam | Sgd
    """The update rule and its own hyper-parameters (the other rule's are not passed at all)."""
    lr: float
    min_lr: float = 0.0
    """The floor of megatron's schedule (its parameter groups carry it); unused with a CountScheduler."""
    weight_decay: float
    dtype: str
    distributed_optimizer: bool
    cpu_offload_fraction: float | None = None
    """[offload] optimizer: this fraction of the optimizer state on the CPU (megatron-core's
    optimizer_cpu_offload with optimizer_offload_fraction); None: none."""


@attrs.frozen(kw_only=True)
class ScheduleSettings:
    """The learning-rate schedule, in optimizer steps."""

    warmup_iters: int
    warmup_init_lr: float
    decay: str
    """The spec's [scheduler] decay: constant, linear, cosine or wsd (see MEGATRON_DECAY_STYLES)."""
    decay_iters: int
    wsd_decay_iters: int | None = None
    """wsd only: the length of the final decay."""
    wsd_decay_style: str = "linear"
    """wsd only: the shape of the final decay (megatron-core reads it for wsd alone)."""


MEGATRON_DECAY_STYLES = {"constant": "constant", "linear": "linear", "cosine": "cosine", "wsd": "WSD"}
"""The spec's decay names and megatron-core's: OptimizerParamScheduler accepts only "WSD" in capitals
(optimizer_param_scheduler.py get_lr), and raises at the first step after warmup for anything else."""


def build_optimizer(model: list[DistributedDataParallel], settings: OptimizerSettings) -> ChainedOptimizer:
    """megatron-core's optimizer over the model chunks, with clipping left to train_step.

    Clipping is not handed to megatron (its clip_grad is 0): :func:`bridgec.runtime.step.train_step`
    computes the global norm once, decides on non-finite gradients, then clips (LoopSettings.clip_grad).
    """
    config = OptimizerConfig(
        **_rule(settings.rule),
        lr=settings.lr,
        min_lr=settings.min_lr,
        weight_decay=settings.weight_decay,
        clip_grad=0.0,
        bf16=settings.dtype == "bf16",
        fp16=settings.dtype == "fp16",
        params_dtype=torch_dtype(settings.dtype),
        use_distributed_optimizer=settings.distributed_optimizer,
        optimizer_cpu_offload=settings.cpu_offload_fraction is not None,
        optimizer_offload_fraction=settings.cpu_offload_fraction or 0.0,
    )
    exclusions = ParamKey(
        with_name_predicate=ParamWithNamePredicate(
            name="bias_or_1d", fn=lambda param, name: no_decay(name, param.dim())
        )
    )
    overrides = {exclusions: ParamGroupOverride(wd_mult=0.0)}
    return get_megatron_optimizer(config, model, config_overrides=overrides)


def _rule(rule: Adam | Sgd) -> dict[str, Any]:
    """megatron-core's OptimizerConfig fields for the update rule."""
    match rule:
        case Adam(beta1=beta1, beta2=beta2, eps=eps):
            return {"optimizer": "adam", "adam_beta1": beta1, "adam_beta2": beta2, "adam_eps": eps}
        case Sgd(momentum=momentum):
            return {"optimizer": "sgd", "sgd_momentum": momentum}


def build_scheduler(
    optimizer: ChainedOptimizer, *, lr: float, min_lr: float, weight_decay: float, schedule: ScheduleSettings
) -> OptimizerParamScheduler:
    """OptimizerParamScheduler counted in optimizer steps (train_step advances it by 1).

    Update k uses the learning rate of step count k: the constructor applies
    step 0, and train_step steps it after every applied update.
    """
    return OptimizerParamScheduler(
        optimizer,
        init_lr=schedule.warmup_init_lr,
        max_lr=lr,
        min_lr=min_lr,
        lr_warmup_steps=schedule.warmup_iters,
        lr_decay_steps=schedule.decay_iters,
        lr_decay_style=MEGATRON_DECAY_STYLES[schedule.decay],
        start_wd=weight_decay,
        end_wd=weight_decay,
        wd_incr_steps=schedule.decay_iters,
        wd_incr_style="constant",
        wsd_decay_steps=schedule.wsd_decay_iters,
        lr_wsd_decay_style=schedule.wsd_decay_style,
    )


def current_lr(optimizer: ChainedOptimizer) -> float:
    """The learning rate the next update will use (first parameter group)."""
    return float(optimizer.param_groups[0]["lr"])


def torch_dtype(dtype: str) -> torch.dtype:
    """The torch dtype of a spec's precision.dtype."""
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
