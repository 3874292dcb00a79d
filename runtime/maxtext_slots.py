"""Where megatron-core's optimizers keep fp32 main weights and Adam state, for MaxText import and export.

megatron-core 0.16's FP32Optimizer, Float16OptimizerWithFloat16Params and
DistributedOptimizer (inside a ChainedOptimizer or not) each hold a model
parameter's main copy and Adam moments somewhere else; :func:`main_slots` finds
them, :func:`set_megatron_adam_state` fills them.
"""

from __future__ import annotations

import attrs
import torch

from bridgec.runtime.errors import ExitCode, RunError


@attrs.frozen(kw_only=True)
class MainSlot:
    """The optimizer's main (fp32) parameter for one model parameter, and which flat range of it that is.

    ``start:end`` indexes the flattened model parameter; it is the whole of it
    except under the distributed optimizer, which holds this data-parallel rank's
    range only. ``inner`` is the torch optimizer whose ``state[main]`` holds Adam's moments.
    """

    main: torch.Tensor
    start: int
    end: int
    inner: torch.optim.Optimizer
    separate: bool
    """main is a copy (mixed precision) rather than the model parameter or a view of it."""


def main_slots(optimizer: object) -> dict[torch.nn.Parameter, MainSlot]:
    """Model parameter -> main parameter slot, for megatron-core 0.16's FP32Optimizer,
    Float16OptimizerWithFloat16Params and DistributedOptimizer (inside a ChainedOptimizer or not)."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
    from megatron.core.optimizer.optimizer import ChainedOptimizer, Float16OptimizerWithFloat16Params, FP32Optimizer

    subs = optimizer.chained_optimizers if isinstance(optimizer, ChainedOptimizer) else [optimizer]
    slots: dict[torch.nn.Parameter, MainSlot] = {}
    for sub in subs:
        inner = sub.optimizer
        if isinstance(sub, DistributedOptimizer):
            pairs = [
                (model_groups, shard_groups, separate)
                for model_groups, shard_groups, separate in (
                    (sub.model_float16_groups, sub.shard_fp32_from_float16_groups, True),
                    (sub.model_fp32_groups, sub.shard_fp32_groups, False),
                )
            ]
            for model_groups, shard_groups, separate in pairs:
                for model_group, shard_group in zip(model_groups, shard_groups):
                    for param, main in zip(model_group, shard_group):
                        span = sub._get_model_param_range_map(param)["param"]
                        slots[param] = MainSlot(
                            main=main, start=span.start, end=span.end, inner=inner, separate=separate
                        )
        elif isinstance(sub, Float16OptimizerWithFloat16Params):
            for model_group, main_group in zip(sub.float16_groups, sub.fp32_from_float16_groups):
                for param, main in zip(model_group, main_group):
                    slots[param] = MainSlot(main=main, start=0, end=param.numel(), inner=inner, separate=True)
            for group in sub.fp32_from_fp32_groups:
                for param in group:
                    slots[param] = MainSlot(main=param, start=0, end=param.numel(), inner=inner, separate=False)
        elif isinstance(sub, FP32Optimizer):
            for group in inner.param_groups:
                for param in group["params"]:
                    slots[param] = MainSlot(main=param, start=0, end=param.numel(), inner=inner, separate=False)
        else:
            raise TypeError(f"unsupported megatron optimizer {type(sub).__name__}")
    return slots


def flat_part(value: torch.Tensor, slot: MainSlot) -> torch.Tensor:
    return value.reshape(-1)[slot.start : slot.end].view_as(slot.main)


@attrs.frozen(kw_only=True)
class AdamState:
    """Adam's state for this rank's parameters, in torch's convention (exp_avg, exp_avg_sq, step).

    ``moments[param]`` holds ``exp_avg`` and ``exp_avg_sq`` as fp32 tensors of the
    parameter's local shape (this TP shard, every data-parallel rank the whole of it).
    """

    step: int
    moments: dict[torch.nn.Parameter, dict[str, torch.Tensor]]


def set_megatron_adam_state(optimizer: object, state: AdamState) -> None:
    """Put Adam moments and the step count into a megatron-core optimizer built by ``optim.build_optimizer``.

    megatron keeps Adam's state on its main parameters: ``inner.state[main] =
    {"step", "exp_avg", "exp_avg_sq"}`` (torch.optim.AdamW on CPU; the step is a
    float32 tensor, and bias correction uses step + 1 on the next update, as optax
    does with count + 1). Under the distributed optimizer a rank's main parameter
    is its range of the flattened parameter, so only that range is kept.
    """
    slots = main_slots(optimizer)
    missing = [slot for param, slot in slots.items() if param not in state.moments]
    if missing:
        raise RunError(
            ExitCode.CHECKPOINT_ERROR,
            f"Adam state covers {len(state.moments)} parameters but the optimizer holds {len(slots)}",
        )
    for param, slot in slots.items():
        moments = state.moments[param]
        slot.inner.state[slot.main] = {
            "step": torch.tensor(float(state.step), dtype=torch.float32),
            "exp_avg": flat_part(moments["exp_avg"], slot).to(slot.main.dtype).clone(),
            "exp_avg_sq": flat_part(moments["exp_avg_sq"], slot).to(slot.main.dtype).clone(),
        }
    for group in (g for slot in slots.values() for g in slot.inner.param_groups):
        if "step" in group:  # apex FusedAdam keeps the step per group
            group["step"] = state.step
