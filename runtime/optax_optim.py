"""optax.adamw's exact update as a torch optimizer, inside megatron-core's optimizer wrappers.

``optax.adamw(lr, b1, b2, eps, eps_root, weight_decay, mask)`` is
``chain(scale_by_adam, add_decayed_weights, scale_by_learning_rate)``. For the
update with count ``t = count + 1`` (optax 0.2.8, transform.py / tree_utils):

    m = (1 - b1) g + b1 m              v = (1 - b2) g^2 + b2 v
    m^ = m / (1 - b1^t)                v^ = v / (1 - b2^t)
    u = m^ / (sqrt(v^ + eps_root) + eps)      # eps_root inside the root, after bias correction
    u = u + wd * theta                  # only where the mask says decay
    theta = theta + (-lr(count)) * u    # the schedule read before count increments

torch's AdamW has no eps_root and decays by ``theta *= 1 - lr wd`` before the
Adam step (the same algebra only when eps_root = 0). :class:`OptaxAdamW` does
the arithmetic above in optax's order, elementwise in fp32. The learning rate is
the group's ``lr``, which :class:`bridgec.runtime.schedules.CountScheduler`
sets from the schedule at the pre-increment count.

:func:`build_optax_optimizer` builds the same wrapper stack megatron-core's
``get_megatron_optimizer`` builds (FP32Optimizer, Float16OptimizerWithFloat16Params
for bf16/fp16, DistributedOptimizer when sharded; a second optimizer for expert
parameters) around OptaxAdamW, constructed explicitly. Weight decay follows
MaxText's ``adamw_mask`` (:mod:`bridgec.runtime.decay_mask`), not Megatron's
bias/1-D rule. Clipping stays in ``train_step``: pass ``clip_epsilon=0.0`` there
for optax.clip_by_global_norm (``g * max / ||g||`` when ``||g|| >= max``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel
from megatron.core.optimizer import OptimizerConfig
from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
from megatron.core.optimizer.grad_scaler import DynamicGradScaler
from megatron.core.optimizer.optimizer import (
    ChainedOptimizer,
    Float16OptimizerWithFloat16Params,
    FP32Optimizer,
    MegatronOptimizer,
)
from megatron.core.process_groups_config import ProcessGroupCollection

from bridgec.runtime.decay_mask import PathStyle, check_patterns, decide
from bridgec.runtime.model import unwrap
from bridgec.runtime.models.chunks import config_of, pairs
from bridgec.runtime.optim import torch_dtype


class OptaxAdamW(torch.optim.AdamW):
    """optax.adamw's update (see the module docstring); groups carry ``eps_root`` and their own ``weight_decay``.

    It subclasses torch's AdamW only to keep AdamW's state layout (``step``,
    ``exp_avg``, ``exp_avg_sq`` per parameter), which megatron-core's
    DistributedOptimizer requires for its checkpoints; ``step`` is its own.
    The count is also mirrored in each group's ``"step"``, which is where
    megatron-core saves it when transformer-engine or apex is installed.
    """

    def __init__(
        self,
        params: Any,
        *,
        lr: float,
        betas: tuple[float, float],
        eps: float,
        eps_root: float,
        weight_decay: float,
    ) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=False, fused=False)
        self.defaults["eps_root"] = eps_root
        for group in self.param_groups:
            group.setdefault("eps_root", eps_root)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # noqa: D102 - the module docstring gives the math
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, eps_root, decay = group["lr"], group["eps"], group["eps_root"], group["weight_decay"]
            count = None
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                if "step" not in state:  # fresh, or loaded from a checkpoint that kept the count in the group
                    state["step"] = torch.tensor(float(group.get("step", 0)), dtype=torch.float32)
                grad = param.grad
                state["step"] += 1
                count = state["step"]
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad * (1.0 - beta1))
                exp_avg_sq.mul_(beta2).add_(grad.square().mul_(1.0 - beta2))
                # Bias corrections in fp32, like optax's `1 - decay**count` on an int32 count.
                mu_hat = exp_avg / (1.0 - torch.pow(beta1, count.to(param.device)))
                nu_hat = exp_avg_sq / (1.0 - torch.pow(beta2, count.to(param.device)))
                update = mu_hat.div_(nu_hat.add_(eps_root).sqrt_().add_(eps))
                if decay != 0.0:
                    update.add_(param * decay)
                param.add_(update.mul_(-lr))
            if count is not None:
                group["step"] = int(count.item())
        return loss


def _decay_groups(
    model_chunks: Sequence[DistributedDataParallel],
    *,
    lr: float,
    weight_decay: float,
    decay_exclude: Sequence[str],
    scan_layers: bool,
    path_style: PathStyle,
    keep_empty: bool,
) -> dict[bool, list[dict[str, Any]]]:
    """Parameter groups per expert-parallel flag: [decayed, not decayed], in that order.

    With ``keep_empty`` every rank builds both groups (possibly empty), which the
    distributed optimizer's checkpoints need (it aligns groups across ranks).
    Otherwise an empty group is left out, as megatron-core's own parameter groups
    never are empty: its mixed-precision optimizer cannot load a checkpoint whose
    saving rank had one (dist_checkpointing keeps the empty fp32 list in the common
    state, and merging it with the sharded lists fails: "Cannot merge two lists").
    """
    params: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    check_patterns(decay_exclude)
    tensor = parallel_state.get_tensor_model_parallel_world_size()
    expert_parallel = parallel_state.get_expert_model_parallel_world_size()
    for chunk in model_chunks:
        model = unwrap(chunk)
        config = config_of(model)
        local_experts = (config.num_experts or 0) // expert_parallel
        for parameter, param in pairs(
            model,
            tensor_parallel=tensor,
            expert_rank=parallel_state.get_expert_model_parallel_rank(),
            local_experts=local_experts,
        ):
            if not param.requires_grad:
                continue
            decays = decide(parameter, decay_exclude, config=config, scan_layers=scan_layers, style=path_style).decays
            expert = not getattr(param, "allreduce", True)
            params.setdefault((expert, decays), []).append(param)
    groups: dict[bool, list[dict[str, Any]]] = {}
    for expert in (False, True):
        if not any(key[0] == expert for key in params):
            continue
        groups[expert] = [
            {
                "params": params.get((expert, decays), []),
                "weight_decay": weight_decay if decays else 0.0,
                "wd_mult": 1.0 if decays else 0.0,
                "lr_mult": 1.0,
                "is_expert_parallel": expert,
                "default_config": True,
                "is_decoupled_lr": False,
                "max_lr": lr,
                "min_lr": 0.0,
            }
            for decays in (True, False)
            if keep_empty or (expert, decays) in params
        ]
    return groups


def build_optax_optimizer(
    model_chunks: Sequence[DistributedDataParallel],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    eps_root: float,
    weight_decay: float,
    decay_exclude: Sequence[str],
    gated_mlp: bool,
    scan_layers: bool,
    tied_output: bool,
    path_style: PathStyle,
    dtype: str,
    distributed_optimizer: bool,
) -> ChainedOptimizer:
    """OptaxAdamW over the model chunks in megatron-core's wrappers; clipping is left to train_step.

    ``lr`` is only the initial group value (the scheduler sets it before the
    first update). ``decay_exclude`` are MaxText adamw_mask regexes over MaxText
    paths spelled as ``path_style`` says, with ``scan_layers`` and the model
    (its parameter table, runtime.models) deciding which paths a parameter
    stands for; a pattern that splits a fused parameter raises
    :class:`bridgec.runtime.decay_mask.DecayMaskError`. ``gated_mlp`` and
    ``tied_output`` must describe the model: they are checked against it.
    """
    config = OptimizerConfig(
        optimizer="adam",
        lr=lr,
        min_lr=0.0,
        weight_decay=weight_decay,
        adam_beta1=beta1,
        adam_beta2=beta2,
        adam_eps=eps,
        clip_grad=0.0,
        bf16=dtype == "bf16",
        fp16=dtype == "fp16",
        params_dtype=torch_dtype(dtype),
        use_distributed_optimizer=distributed_optimizer,
    )
    for chunk in model_chunks:
        model = config_of(unwrap(chunk))
        if (model.gated, model.tied) != (gated_mlp, tied_output):
            raise ValueError(
                f"build_optax_optimizer: gated_mlp={gated_mlp}, tied_output={tied_output}, but the model has "
                f"gated={model.gated}, tied={model.tied}"
            )
    groups = _decay_groups(
        model_chunks,
        lr=lr,
        weight_decay=weight_decay,
        decay_exclude=decay_exclude,
        scan_layers=scan_layers,
        path_style=path_style,
        keep_empty=distributed_optimizer,
    )
    process_groups = ProcessGroupCollection.setup_process_groups_for_optimizer(None, list(model_chunks), True)
    optimizers = []
    for expert, param_groups in groups.items():
        if expert:
            buffers = {i: chunk.expert_parallel_buffers for i, chunk in enumerate(model_chunks)}
            data_group = process_groups["intra_expt_dp_group"]
            data_group_gloo = process_groups["intra_expt_dp_group_gloo"]
            stats_group = process_groups["expt_tp_pp_group"]
        else:
            buffers = {i: chunk.buffers for i, chunk in enumerate(model_chunks)}
            data_group = process_groups["intra_dp_cp_group"]
            data_group_gloo = process_groups["intra_dp_cp_group_gloo"]
            stats_group = process_groups["mp_group"]
        inner = OptaxAdamW(
            param_groups, lr=lr, betas=(beta1, beta2), eps=eps, eps_root=eps_root, weight_decay=weight_decay
        )
        optimizers.append(
            _wrap(
                inner,
                config,
                model_chunks=list(model_chunks),
                buffers=buffers,
                data_group=data_group,
                data_group_gloo=data_group_gloo,
                stats_group=stats_group,
                intra_dist_opt_group=process_groups["intra_dist_opt_group"],
                group_index=torch.distributed.get_rank(stats_group),
            )
        )
    return ChainedOptimizer(optimizers)


def _init_state(optimizer: torch.optim.Optimizer, config: OptimizerConfig | None = None) -> None:
    """Zero moments for every parameter (megatron-core calls this before a sharded checkpoint load)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state[param]
            if len(state) == 0:
                state["step"] = torch.tensor(float(group.get("step", 0)), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(param.data)
                state["exp_avg_sq"] = torch.zeros_like(param.data)


def _wrap(
    inner: OptaxAdamW,
    config: OptimizerConfig,
    *,
    model_chunks: list[DistributedDataParallel],
    buffers: dict[int, Any],
    data_group: Any,
    data_group_gloo: Any,
    stats_group: Any,
    intra_dist_opt_group: Any,
    group_index: int,
) -> MegatronOptimizer:
    """The wrapper megatron-core's _get_megatron_optimizer_based_on_param_groups picks for this config."""
    wrapped: MegatronOptimizer
    if config.fp16 or config.bf16 or config.use_distributed_optimizer:
        scaler = None
        if config.fp16:
            scaler = DynamicGradScaler(
                initial_scale=config.initial_loss_scale,
                min_scale=config.min_loss_scale,
                growth_factor=2.0,
                backoff_factor=0.5,
                growth_interval=config.loss_scale_window,
                hysteresis=config.hysteresis,
            )
        if config.use_distributed_optimizer:
            wrapped = DistributedOptimizer(
                inner,
                config,
                scaler,
                _init_state,
                model_chunks=model_chunks,
                per_model_buffers=buffers,
                data_parallel_group=data_group,
                data_parallel_group_gloo=data_group_gloo,
                data_parallel_group_idx=group_index,
                distributed_optimizer_instance_id=0,
            )
            # megatron-core sets these attributes after construction too (optimizer/__init__.py).
            wrapped.grad_stats_parallel_group = intra_dist_opt_group
        else:
            wrapped = Float16OptimizerWithFloat16Params(inner, config, scaler, _init_state)
            wrapped.grad_stats_parallel_group = stats_group
    else:
        wrapped = FP32Optimizer(inner, config, _init_state)
        wrapped.grad_stats_parallel_group = stats_group
    wrapped.tp_group = parallel_state.get_tensor_model_parallel_group()
    return wrapped
