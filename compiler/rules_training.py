"""Rules for the optimizer and schedule, counts and intervals, and settings that would do nothing."""

from __future__ import annotations

from collections.abc import Iterator

import attrs

from bridgec.compiler.errors import KeyPath, format_path, render_value
from bridgec.compiler.rule_base import (
    Finding,
    Rule,
    SpecContext,
)
from bridgec.compiler.spec import Spec

# -- schedule and optimizer -------------------------------------------------------------------------


def rule_schedule_lengths(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    s, iters = spec.scheduler, spec.train.iters
    decay_end = s.decay_iters if s.decay_iters is not None else iters
    decay_text = (
        f"scheduler.decay_iters = {decay_end}"
        if s.decay_iters is not None
        else f"train.iters = {decay_end} (where decay ends when scheduler.decay_iters is unset)"
    )
    if s.warmup_iters < 0 or decay_end < 1 or iters < 1:
        return  # reported by rule_counts
    if s.warmup_iters >= decay_end:
        yield Finding(
            about=(("scheduler", "warmup_iters"),),
            message=f"$.scheduler.warmup_iters = {s.warmup_iters} must be less than {decay_text}: "
            f"warmup has to end before the decay does",
            hint=f"warmup_iters below {decay_end}, e.g. {decay_end // 10}",
        )
    elif s.warmup_iters > iters:
        yield Finding(
            about=(("scheduler", "warmup_iters"),),
            message=f"$.scheduler.warmup_iters = {s.warmup_iters} is more than train.iters = {iters}, so "
            f"training would end during warmup",
            hint=f"warmup_iters = {iters} or less, e.g. {iters // 10}",
        )
    if s.decay == "wsd" and s.wsd_decay_iters is None:
        yield Finding(
            about=(("scheduler", "decay"),),
            message='$.scheduler.decay = "wsd" needs scheduler.wsd_decay_iters (the length of the final decay phase)',
            hint=f"add wsd_decay_iters = {max(1, decay_end // 10)} under [scheduler]",
        )
    elif s.decay == "wsd" and s.wsd_decay_iters is not None and s.wsd_decay_iters > decay_end:
        yield Finding(
            about=(("scheduler", "wsd_decay_iters"),),
            message=f"$.scheduler.wsd_decay_iters = {s.wsd_decay_iters} is more than {decay_text}: "
            f"the final decay phase is part of the decay",
            hint=f"wsd_decay_iters = {decay_end} or less",
        )


def rule_learning_rates(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    o = spec.optimizer
    if o.lr <= 0:
        yield Finding(
            about=(("optimizer", "lr"),),
            message=f"$.optimizer.lr = {render_value(o.lr)} must be greater than 0",
            hint="lr = 3e-4 is a common start for small GPT models",
        )
    if o.min_lr < 0:
        yield Finding(
            about=(("optimizer", "min_lr"),),
            message=f"$.optimizer.min_lr = {render_value(o.min_lr)} must be 0 or more",
            hint="min_lr = 0.0 decays all the way down",
        )
    elif o.lr > 0 and o.min_lr > o.lr:
        yield Finding(
            about=(("optimizer", "min_lr"),),
            message=f"$.optimizer.min_lr = {render_value(o.min_lr)} is more than optimizer.lr = "
            f"{render_value(o.lr)} (the schedule decays from lr down to min_lr)",
            hint=f"min_lr = 0.0, or anything up to {render_value(o.lr)}",
        )
    if spec.scheduler.warmup_init_lr < 0:
        yield Finding(
            about=(("scheduler", "warmup_init_lr"),),
            message=f"$.scheduler.warmup_init_lr = {render_value(spec.scheduler.warmup_init_lr)} must be 0 or more",
            hint="warmup_init_lr = 0.0 warms up from zero",
        )
    elif o.lr > 0 and spec.scheduler.warmup_init_lr > o.lr:
        yield Finding(
            about=(("scheduler", "warmup_init_lr"),),
            message=f"$.scheduler.warmup_init_lr = {render_value(spec.scheduler.warmup_init_lr)} is more "
            f"than optimizer.lr = {render_value(o.lr)} (warmup rises from warmup_init_lr to lr)",
            hint=f"warmup_init_lr = 0.0, or anything up to {render_value(o.lr)}",
        )


def rule_optimizer_settings(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    o = spec.optimizer
    for i, beta in enumerate(o.betas):
        if not 0 <= beta < 1:
            yield Finding(
                about=(("optimizer", "betas", i), ("optimizer", "betas")),
                message=f"$.optimizer.betas[{i}] = {render_value(beta)} must be in [0, 1) (it is the decay "
                f"rate of Adam's running average of the {('gradient', 'squared gradient')[i]})",
                hint="betas = [0.9, 0.95] or [0.9, 0.999]",
            )
    if o.eps <= 0:
        yield Finding(
            about=(("optimizer", "eps"),),
            message=f"$.optimizer.eps = {render_value(o.eps)} must be greater than 0 (it keeps Adam's "
            f"update finite where the squared gradient average is 0)",
            hint="eps = 1e-8",
        )
    if o.weight_decay < 0:
        yield Finding(
            about=(("optimizer", "weight_decay"),),
            message=f"$.optimizer.weight_decay = {render_value(o.weight_decay)} must be 0 or more",
            hint="weight_decay = 0.0 turns it off; 0.1 is common for GPT pretraining",
        )
    if o.clip_grad < 0:
        yield Finding(
            about=(("optimizer", "clip_grad"),),
            message=f"$.optimizer.clip_grad = {render_value(o.clip_grad)} must be 0 or more (0 turns clipping off)",
            hint="clip_grad = 1.0, or 0.0 for no clipping",
        )
    if not 0 <= o.sgd_momentum < 1:
        yield Finding(
            about=(("optimizer", "sgd_momentum"),),
            message=f"$.optimizer.sgd_momentum = {render_value(o.sgd_momentum)} must be in [0, 1)",
            hint="sgd_momentum = 0.9, or 0.0 for plain SGD",
        )


def rule_distributed_optimizer_needs_adam(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    name = spec.optimizer.name
    if spec.parallel.distributed_optimizer and name != "adam":
        yield Finding(
            about=(("optimizer", "name"), ("parallel", "distributed_optimizer")),
            message=f'$.optimizer.name = "{name}" cannot run with parallel.distributed_optimizer = true '
            f"(megatron-core's distributed optimizer shards Adam's state and supports only Adam)",
            hint='use name = "adam" under [optimizer], or set distributed_optimizer = false',
        )


# -- counts, intervals and sizes --------------------------------------------------------------------


def _counts(spec: Spec) -> dict[KeyPath, int | float | None]:
    """Every count, interval and size that must be at least 1 (None: unset, nothing to check)."""
    m, p, b, t, c = spec.model, spec.parallel, spec.batch, spec.train, spec.checkpoint
    return {
        ("launch", "nodes"): spec.launch.nodes,
        ("launch", "procs_per_node"): spec.launch.procs_per_node,
        ("model", "num_layers"): m.num_layers,
        ("model", "hidden_size"): m.hidden_size,
        ("model", "num_attention_heads"): m.num_attention_heads,
        ("model", "num_query_groups"): m.num_query_groups,
        ("model", "head_dim"): m.head_dim,
        ("model", "ffn_hidden_size"): m.ffn_hidden_size,
        ("model", "vocab_size"): m.vocab_size,
        ("model", "make_vocab_size_divisible_by"): m.make_vocab_size_divisible_by,
        ("model", "seq_length"): m.seq_length,
        ("model", "num_experts"): m.num_experts,
        ("model", "moe_router_topk"): m.moe_router_topk if m.num_experts is not None else None,
        ("parallel", "tensor"): p.tensor,
        ("parallel", "pipeline"): p.pipeline,
        ("parallel", "context"): p.context,
        ("parallel", "expert"): p.expert,
        ("batch", "global_batch_size"): b.global_batch_size,
        ("batch", "micro_batch_size"): b.micro_batch_size,
        ("train", "iters"): t.iters,
        ("train", "log_interval"): t.log_interval,
        ("train", "eval_interval"): t.eval_interval,
        ("train", "eval_iters"): t.eval_iters if t.eval_interval is not None else None,
        ("train", "exit_interval"): t.exit_interval,
        ("scheduler", "decay_iters"): spec.scheduler.decay_iters,
        ("scheduler", "wsd_decay_iters"): spec.scheduler.wsd_decay_iters,
        ("checkpoint", "save_interval"): c.save_interval,
        ("checkpoint", "keep_last"): c.keep_last,
    }


def rule_counts_at_least_one(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    for path, value in _counts(spec).items():
        if value is not None and value < 1:
            yield Finding(
                about=(path,),
                message=f"{format_path(path)} = {value} must be at least 1",
                hint=f"set {path[-1]} to 1 or more",
            )


def rule_amounts_not_negative(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    amounts: dict[KeyPath, int | None] = {
        ("scheduler", "warmup_iters"): spec.scheduler.warmup_iters,
        ("data", "eod_token"): spec.data.eod_token,
    }
    for path, value in amounts.items():
        if value is not None and value < 0:
            yield Finding(
                about=(path,),
                message=f"{format_path(path)} = {value} must be 0 or more",
                hint=f"set {path[-1]} to 0 or more",
            )


def rule_evaluation_runs(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    t = spec.train
    if t.eval_interval is not None and 1 <= t.iters < t.eval_interval:
        yield Finding(
            about=(("train", "eval_interval"),),
            severity="warning",
            message=f"$.train.eval_interval = {t.eval_interval} is more than train.iters = {t.iters}, so no "
            f"evaluation runs (one runs after every eval_interval-th step)",
            hint=f"eval_interval = {t.iters} or less, or remove eval_interval and eval_iters",
        )


def rule_durations_positive(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    durations: dict[KeyPath, float | None] = {
        ("launch", "timeout_minutes"): spec.launch.timeout_minutes,
        ("train", "exit_duration_minutes"): spec.train.exit_duration_minutes,
    }
    for path, value in durations.items():
        if value is not None and value <= 0:
            yield Finding(
                about=(path,),
                message=f"{format_path(path)} = {render_value(value)} must be greater than 0",
                hint=f"{path[-1]} is in minutes, e.g. {path[-1]} = 10.0",
            )


def rule_model_numbers(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    m = spec.model
    if not 0 <= m.dropout < 1:
        yield Finding(
            about=(("model", "dropout"),),
            message=f"$.model.dropout = {render_value(m.dropout)} must be in [0, 1) (it is the "
            f"probability of zeroing an activation)",
            hint="dropout = 0.0 turns it off; Megatron's default is 0.1",
        )
    if m.norm_epsilon <= 0:
        yield Finding(
            about=(("model", "norm_epsilon"),),
            message=f"$.model.norm_epsilon = {render_value(m.norm_epsilon)} must be greater than 0 (it "
            f"keeps the norm finite for an all-zero input)",
            hint="norm_epsilon = 1e-5",
        )
    if m.init_method_std <= 0:
        yield Finding(
            about=(("model", "init_method_std"),),
            message=f"$.model.init_method_std = {render_value(m.init_method_std)} must be greater than 0",
            hint="init_method_std = 0.02",
        )
    if m.rotary_base < 1:
        yield Finding(
            about=(("model", "rotary_base"),),
            message=f"$.model.rotary_base = {m.rotary_base} must be at least 1",
            hint="rotary_base = 10000",
        )


def rule_run_identity(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    name, seed = spec.run.name, spec.run.seed
    if not name.strip() or any(c in name for c in "/\\") or name in (".", ".."):
        yield Finding(
            about=(("run", "name"),),
            message=f"$.run.name = {render_value(name)} must be a non-empty name without slashes (it "
            f"names the run's output folder, out/<name>)",
            hint='name = "quickstart"',
        )
    if not 0 <= seed < 2**31:
        yield Finding(
            about=(("run", "seed"),),
            message=f"$.run.seed = {seed} must be in [0, 2^31) (numpy's and megatron-core's seeding "
            f"need it, with per-rank offsets added, to fit in 32 bits)",
            hint="seed = 1234",
        )


# -- settings that do nothing -----------------------------------------------------------------------


def rule_unused_settings(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    m, o, s = spec.model, spec.optimizer, spec.scheduler
    checks: tuple[tuple[KeyPath, object, bool, str, str], ...] = (
        (
            ("model", "rotary_base"),
            m,
            m.position_embedding != "rope",
            'position_embedding = "rope"',
            'remove it, or set position_embedding = "rope"',
        ),
        (
            ("model", "moe_router_topk"),
            m,
            m.num_experts is None,
            "num_experts (an MoE model)",
            "remove it, or set num_experts",
        ),
        (("optimizer", "sgd_momentum"), o, o.name != "sgd", 'name = "sgd"', "remove it"),
        (("optimizer", "betas"), o, o.name != "adam", 'name = "adam"', "remove it"),
        (("optimizer", "eps"), o, o.name != "adam", 'name = "adam"', "remove it"),
        (("scheduler", "wsd_decay_iters"), s, s.decay != "wsd", 'decay = "wsd"', 'remove it, or set decay = "wsd"'),
        (("scheduler", "wsd_decay_style"), s, s.decay != "wsd", 'decay = "wsd"', 'remove it, or set decay = "wsd"'),
        (("scheduler", "warmup_init_lr"), s, s.warmup_iters == 0, "warmup_iters > 0", "remove it, or set warmup_iters"),
        (
            ("train", "eval_iters"),
            spec.train,
            spec.train.eval_interval is None,
            "eval_interval",
            "remove it, or set eval_interval",
        ),
        (
            ("optimizer", "min_lr"),
            o,
            s.style != "megatron",
            'scheduler.style = "megatron"',
            "remove it (the MaxText and optax schedules say where they end)",
        ),
    )
    for path, section, unused, needs, hint in checks:
        name = str(path[-1])
        value = getattr(section, name)
        if unused and value != attrs.fields_dict(type(section))[name].default:
            yield Finding(
                about=(path,),
                severity="warning",
                message=f"{format_path(path)} = {render_value(value)} has no effect: it is only used with {needs}",
                hint=hint,
            )


def rule_document_masking_layout(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    if spec.data.document_masking:
        yield from _block_diagonal_layout(spec, "document_masking")
    if spec.data.packing:
        yield from _block_diagonal_layout(spec, "packing")


def _block_diagonal_layout(spec: Spec, key: str) -> Iterator[Finding]:
    """document_masking and packing both give megatron-core's local attention a block-diagonal mask."""
    about = ("data", key)
    if key == "packing" and spec.data.kind != "sft":
        yield Finding(
            about=(about, ("data", "kind")),
            message=f'$.data.packing = true packs SFT samples, but data.kind = "{spec.data.kind}": pretraining '
            "documents already fill their sequences back to back",
            hint='kind = "sft", or document_masking = true to keep pretraining documents apart',
        )
    if key == "document_masking" and spec.data.kind == "sft":
        yield Finding(
            about=(about, ("data", "kind")),
            message='$.data.document_masking = true has no effect with data.kind = "sft": each SFT sample is '
            "alone in its sequence, or kept apart from the others by packing",
            hint="remove document_masking (packing = true packs SFT samples and keeps them apart)",
        )
    if spec.model.transformer_impl == "transformer_engine" and key == "document_masking":
        yield Finding(
            about=(about, ("model", "transformer_impl")),
            message='$.data.document_masking = true needs model.transformer_impl = "local" or "torch": bridgec '
            "gives the block-diagonal mask to megatron-core's local attention (or torch's "
            "scaled_dot_product_attention); Transformer Engine's fused attention would need THD offsets at every "
            "end of document, which bridgec builds for packed SFT samples only",
            hint='transformer_impl = "local" or "torch" under [model], or remove document_masking',
        )
    if spec.model.transformer_impl == "transformer_engine" and key == "packing":
        yield from _thd_layout(spec)
    p = spec.parallel
    if p.pipeline > 2 or p.virtual_pipeline is not None:
        shown = f"parallel.pipeline = {p.pipeline}" + (
            f" with virtual_pipeline = {p.virtual_pipeline}" if p.virtual_pipeline is not None else ""
        )
        yield Finding(
            about=(about, ("parallel", "pipeline"), ("parallel", "virtual_pipeline")),
            message=f"$.data.{key} = true with {shown}: model chunks in the middle of the pipeline "
            "read no data, so they would not see where documents end (only the first and last stage do)",
            hint=f"pipeline = 2 or less and no virtual_pipeline, or remove {key}",
        )


def _thd_layout(spec: Spec) -> Iterator[Finding]:
    """Packed samples reach Transformer Engine as one THD sequence per microbatch, without context parallelism."""
    if spec.batch.micro_batch_size != 1:
        yield Finding(
            about=(("batch", "micro_batch_size"), ("data", "packing"), ("model", "transformer_impl")),
            message=f"$.batch.micro_batch_size = {spec.batch.micro_batch_size} with data.packing = true on "
            "Transformer Engine: each microbatch is one packed sequence in THD format (its samples' offsets "
            "are the batch), so it holds exactly one",
            hint="micro_batch_size = 1 (packing already fills each sequence with several samples)",
        )
    if spec.parallel.context > 1:
        yield Finding(
            about=(("parallel", "context"), ("data", "packing")),
            message=f"$.parallel.context = {spec.parallel.context} with data.packing = true on Transformer Engine: "
            "splitting packed THD sequences across context-parallel ranks (each sample padded and cut into "
            "2 x context chunks) is not built in bridgec",
            hint="context = 1, or remove packing",
        )


def rule_finetune_start(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    if spec.train.mode != "finetune":
        return
    init = spec.init.checkpoint
    if init is None:
        yield Finding(
            about=(("train", "mode"),),
            message='$.train.mode = "finetune" needs pretrained weights to start from, and the spec has no '
            "[init.checkpoint]",
            hint='an [init.checkpoint] table with the format and path of the pretrained checkpoint, or mode = "pretrain"',
        )
    elif init.optimizer_state:
        yield Finding(
            about=(("init", "checkpoint", "optimizer_state"), ("train", "mode")),
            message='$.init.checkpoint.optimizer_state = true with train.mode = "finetune": a fine-tune starts its '
            "optimizer state and learning-rate schedule fresh at step 0, so the pretraining run's would be ignored",
            hint='optimizer_state = false, or mode = "pretrain" to continue the pretraining run itself',
        )


TRAINING_RULES: tuple[Rule, ...] = (
    rule_finetune_start,
    rule_document_masking_layout,
    rule_schedule_lengths,
    rule_learning_rates,
    rule_optimizer_settings,
    rule_distributed_optimizer_needs_adam,
    rule_counts_at_least_one,
    rule_amounts_not_negative,
    rule_evaluation_runs,
    rule_durations_positive,
    rule_model_numbers,
    rule_run_identity,
    rule_unused_settings,
)
