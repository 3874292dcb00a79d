"""Rules for [peft]: what the adapters target, their sizes, and what they start from."""

from __future__ import annotations

import os
from collections.abc import Iterator

from bridgec.compiler import derive
from bridgec.compiler.errors import render_value
from bridgec.compiler.rule_base import Finding, Rule, SpecContext
from bridgec.compiler.spec import Spec
from bridgec.runtime.models import lora

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
"""What a Hugging Face PEFT adapter folder holds (peft's save_pretrained)."""


def rule_peft_module_types(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    if spec.peft is None or spec.model.transformer_impl != "transformer_engine":
        return
    yield Finding(
        about=(("peft", "method"), ("model", "transformer_impl")),
        message='[peft] with model.transformer_impl = "transformer_engine": adapters wrap megatron-core\'s local '
        "ColumnParallelLinear and RowParallelLinear, and transformer_engine's fused linears are another module type "
        "that has no adapter",
        hint='transformer_impl = "local"',
    )


def rule_peft_targets(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    if spec.peft is None or spec.model.transformer_impl == "transformer_engine":
        return
    config = derive.gpt_config(spec)
    selected, unmatched = lora.select(config, spec.peft.target_modules)
    names = ", ".join(target.name for target in lora.available(config))
    experts = " (an MoE layer's experts have no adapter)" if config.num_experts is not None else ""
    for pattern in unmatched:
        yield Finding(
            about=(("peft", "target_modules"),),
            message=f"$.peft.target_modules: {render_value(pattern)} matches no module of this model; the modules "
            f"that take an adapter are {names}{experts}, in each of its {config.num_layers} layers",
            hint="a name from that list, or a pattern over the global path such as decoder.layers.0.*.linear_qkv",
        )
    for overlap in lora.overlaps(selected):
        yield Finding(
            about=(("peft", "target_modules"),),
            message=f"$.peft.target_modules adapts {overlap}: the fused module's adapter already covers the "
            "projection, so its rows would get two adapters",
            hint="the fused name (linear_qkv, linear_fc1) or its projections (linear_q, linear_k, linear_v; "
            "linear_fc1_gate, linear_fc1_up), not both",
        )


def rule_peft_sizes(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    peft = spec.peft
    if peft is None:
        return
    if peft.rank < 1:
        yield Finding(
            about=(("peft", "rank"),),
            message=f"$.peft.rank = {peft.rank}: an adapter needs rank 1 or more",
            hint="8 or 16 are common",
        )
    elif spec.model.transformer_impl != "transformer_engine":
        config = derive.gpt_config(spec)
        selected, _ = lora.select(config, peft.target_modules)
        small = lora.too_small(config, selected, peft.rank)
        if small:
            yield Finding(
                about=(("peft", "rank"),),
                message=f"$.peft.rank = {peft.rank} is larger than {', '.join(small)}: "
                "the adapter of a layer can have at most its smaller dimension as rank",
                hint=f"rank = {min(min(t.rows(config), t.columns(config)) for t in {s.target for s in selected})} "
                "or less, or leave those modules out of target_modules",
            )
    if not peft.alpha > 0:
        yield Finding(
            about=(("peft", "alpha"),),
            message=f"$.peft.alpha = {render_value(peft.alpha)}: the update is scaled by alpha / rank, so alpha must "
            "be positive",
            hint="alpha = 2 x rank is common",
        )
    if not 0 <= peft.dropout < 1:
        yield Finding(
            about=(("peft", "dropout"),),
            message=f"$.peft.dropout = {render_value(peft.dropout)} is not a probability below 1",
            hint="0 (no dropout) up to e.g. 0.1",
        )


def rule_peft_adapter(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    peft = spec.peft
    if peft is None or peft.adapter is None:
        return
    init = spec.init.checkpoint
    if init is None or init.format != "huggingface":
        yield Finding(
            about=(("peft", "adapter"),),
            message=f"$.peft.adapter = {render_value(peft.adapter)} is a Hugging Face PEFT adapter, which is "
            'trained on a Hugging Face base model, and the spec has no [init.checkpoint] format = "huggingface"',
            hint='an [init.checkpoint] table with format = "huggingface" and the base model\'s folder',
        )
    if not ctx.require_data:
        return
    missing = [name for name in ADAPTER_FILES if not ctx.files.exists(ctx.resolve(peft.adapter) / name)]
    if missing:
        relative = "" if os.path.isabs(peft.adapter) else " (paths are relative to the spec's folder)"
        yield Finding(
            about=(("peft", "adapter"),),
            message=f"$.peft.adapter = {render_value(peft.adapter)} has no {' or '.join(missing)}{relative}",
            hint="point it at the folder peft's save_pretrained (or bridgec convert --to hf-peft) wrote",
        )


def rule_peft_start(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    init = spec.init.checkpoint
    if spec.peft is None or init is None:
        return
    if init.format == "megatron":
        yield Finding(
            about=(("init", "checkpoint", "format"), ("peft", "method")),
            message='$.init.checkpoint.format = "megatron" with [peft]: the Megatron-LM loader reads every tensor of '
            "the model, the adapters included, which that checkpoint does not have (not supported yet)",
            hint='convert the checkpoint to a Hugging Face folder and use format = "huggingface", or drop [peft]',
        )
    if not init.optimizer_state:
        return
    yield Finding(
        about=(("init", "checkpoint", "optimizer_state"), ("peft", "method")),
        message="$.init.checkpoint.optimizer_state = true with [peft]: the checkpoint's optimizer state is for its "
        "full weights, which [peft] freezes, and holds nothing for the new adapters",
        hint="optimizer_state = false: the adapters' optimizer starts fresh",
    )


PEFT_RULES: tuple[Rule, ...] = (
    rule_peft_start,
    rule_peft_module_types,
    rule_peft_targets,
    rule_peft_sizes,
    rule_peft_adapter,
)
