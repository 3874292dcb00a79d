"""The optimizer's parameter groups under each schedule style, and megatron's schedules as the spec names them.

In-process on a one-layer GPT (one gloo rank, tests/conftest.py's megatron_world1), real megatron-core
optimizer and schedulers.
"""

from __future__ import annotations

import math

import pytest
import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer import TransformerConfig

from bridgec.runtime.model import build_model, unwrap
from bridgec.runtime.optim import Adam, OptimizerSettings, ScheduleSettings, build_optimizer, build_scheduler, no_decay
from bridgec.runtime.schedules import CountScheduler, constant_schedule, maxtext_schedule
from tests.runtime.orbax_scripts.megatron_llama import single_process_layout

LR = 0.1
WEIGHT_DECAY = 0.5


def _provider(pre_process: bool, post_process: bool, vp_stage: int | None = None) -> GPTModel:
    config = TransformerConfig(
        num_layers=1, hidden_size=16, num_attention_heads=2, normalization="RMSNorm", add_bias_linear=True,
        use_cpu_initialization=True,
    )  # fmt: skip
    return GPTModel(
        config=config, transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"), vocab_size=32,
        max_sequence_length=8, pre_process=pre_process, post_process=post_process,
    )  # fmt: skip


def _model_and_optimizer(min_lr: float = 0.0) -> tuple[list, object]:
    model = build_model(
        _provider, layout=single_process_layout(), init_scheme="portable", seed=1, init_std=0.02, num_layers=1,
        tied_output=False, dtype="fp32", distributed_optimizer=False,
    )  # fmt: skip
    settings = OptimizerSettings(
        rule=Adam(beta1=0.9, beta2=0.999, eps=1e-8), lr=LR, min_lr=min_lr, weight_decay=WEIGHT_DECAY,
        dtype="fp32", distributed_optimizer=False,
    )  # fmt: skip
    return model, build_optimizer(model, settings)


def _megatron_schedule(
    decay: str, *, warmup: int, decay_iters: int, wsd_decay_iters: int | None = None, wsd_decay_style: str = "linear"
) -> ScheduleSettings:
    return ScheduleSettings(
        warmup_iters=warmup, warmup_init_lr=0.0, decay=decay, decay_iters=decay_iters,
        wsd_decay_iters=wsd_decay_iters, wsd_decay_style=wsd_decay_style,
    )  # fmt: skip


def _scheduler(style: str, optimizer: object) -> object:
    """A constant learning rate LR in each of the spec's [scheduler] styles."""
    if style == "megatron":
        schedule = _megatron_schedule("constant", warmup=0, decay_iters=10)
        return build_scheduler(optimizer, lr=LR, min_lr=0.0, weight_decay=WEIGHT_DECAY, schedule=schedule)
    if style == "maxtext":
        schedule = maxtext_schedule(
            kind="cosine", learning_rate=LR, final_fraction=1.0, warmup_steps_fraction=0.0, schedule_steps=10, steps=10
        )
        return CountScheduler(optimizer, schedule, weight_decay=WEIGHT_DECAY)
    return CountScheduler(optimizer, constant_schedule(LR), weight_decay=WEIGHT_DECAY)


@pytest.mark.parametrize("style", ["megatron", "maxtext", "optax"])
def test_biases_and_norm_scales_are_not_decayed_under_every_schedule_style(megatron_world1: None, style: str) -> None:
    """With zero gradients an AdamW update is the decay alone: decayed weights shrink by 1 - lr x wd, the rest stay."""
    model, optimizer = _model_and_optimizer()
    _scheduler(style, optimizer)
    groups = optimizer.param_groups
    assert {group["wd_mult"] for group in groups} == {0.0, 1.0}
    decays = [(group["wd_mult"], group["weight_decay"]) for group in groups]
    assert all(decay == WEIGHT_DECAY * multiplier for multiplier, decay in decays), (
        f"{style}: (wd_mult, weight_decay) {decays}"
    )
    for chunk in model:
        chunk.zero_grad_buffer()
    named = dict(unwrap(model[0]).named_parameters())
    before = {name: param.detach().clone() for name, param in named.items()}
    optimizer.step()
    kept = [name for name, param in named.items() if no_decay(name, param.dim())]
    assert "decoder.final_layernorm.weight" in kept and "decoder.layers.0.mlp.linear_fc1.bias" in kept
    for name, param in named.items():
        expected = before[name] if name in kept else before[name] * (1.0 - LR * WEIGHT_DECAY)
        assert torch.allclose(param, expected, rtol=0, atol=1e-7), f"{style}: {name}"


def test_wsd_runs_past_warmup_with_megatrons_learning_rate_at_every_step(megatron_world1: None) -> None:
    """decay = "wsd": warmup 3, constant to step 16, cosine to min_lr over the last 8 of 24 steps."""
    _, optimizer = _model_and_optimizer(min_lr=0.01)  # megatron's groups carry min_lr too
    schedule = _megatron_schedule("wsd", warmup=3, decay_iters=24, wsd_decay_iters=8, wsd_decay_style="cosine")
    scheduler = build_scheduler(optimizer, lr=LR, min_lr=0.01, weight_decay=0.0, schedule=schedule)
    seen = []
    for _ in range(26):
        seen.append(optimizer.param_groups[0]["lr"])
        scheduler.step(increment=1)
    assert seen == pytest.approx([wsd_lr(k, lr=LR, min_lr=0.01, warmup=3, total=24, decay=8) for k in range(26)])


def wsd_lr(step: int, *, lr: float, min_lr: float, warmup: int, total: int, decay: int) -> float:
    """Megatron-LM's WSD learning rate after ``step`` updates (warmup from 0, cosine anneal), written out."""
    if step <= warmup:
        return lr * step / warmup
    if step > total:
        return min_lr
    if step <= total - decay:
        return lr
    ratio = (step - (total - decay)) / decay
    return min_lr + (lr - min_lr) * 0.5 * (math.cos(math.pi * ratio) + 1.0)
