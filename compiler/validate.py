"""Validate: the rules a loaded :class:`Spec` must meet before anything is derived from it.

Each rule is a small function ``rule_xxx(spec, ctx) -> Iterable[Finding]`` in
:data:`RULES`. A rule says what is wrong, why, and how to fix it, and names the
keys it is about (most relevant first); :func:`validate` turns that into a
:class:`Diagnostic` on the line of the first of those keys the spec writes.
Rules never mutate anything and never touch the disk except through
``ctx.files``, so they are tested with an in-memory file system.

Rules check cheap arithmetic only; they skip what another rule already reports
(a size below 1 is reported once, not again as a failed division).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator

import attrs

from bridgec.compiler.errors import Diagnostic, KeyPath, format_path, render_value, sort_key
from bridgec.compiler.locate import LineIndex
from bridgec.compiler.rule_base import (
    FileView,
    Finding,
    Rule,
    SpecContext,
    data_parallel_size,
    divisors_text,
    microbatches,
    model_parallel,
    multiples_near,
    split_hint,
    world_size,
)
from bridgec.compiler.spec import Spec
from bridgec.compiler.validate_interop import INTEROP_RULES

__all__ = ["RULES", "FileView", "Finding", "SpecContext", "TokenizerSidecar", "parse_tokenizer_sidecar", "validate"]


def validate(spec: Spec, index: LineIndex, context: SpecContext) -> tuple[Diagnostic, ...]:
    """Run every rule; every finding of every rule, sorted by line then path."""
    diagnostics = [_locate(finding, index, context.file) for rule in RULES for finding in rule(spec, context)]
    return tuple(sorted(diagnostics, key=sort_key))


def _locate(finding: Finding, index: LineIndex, filename: str) -> Diagnostic:
    path = next((p for p in finding.about if index.has(p)), finding.about[0])
    return Diagnostic(file=filename, line=index.line_of(path), path=format_path(path), message=finding.message,
                      hint=finding.hint, severity=finding.severity)


# -- parallel layout -------------------------------------------------------------------------


def rule_world_divisible(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    n, p = spec.launch.nodes, spec.launch.procs_per_node
    t, pp, c = spec.parallel.tensor, spec.parallel.pipeline, spec.parallel.context
    if min(n, p, t, pp, c) < 1 or (n * p) % (t * pp * c) == 0:
        return
    world, mp = n * p, t * pp * c
    step = mp // math.gcd(n, mp)  # procs_per_node must be a multiple of this
    procs = -(-p // step) * step
    yield Finding(
        about=(("launch", "procs_per_node"), ("parallel", "tensor"), ("parallel", "pipeline"),
               ("parallel", "context"), ("launch", "nodes")),
        message=(f"world size = launch.nodes x procs_per_node = {n} x {p} = {world} is not divisible by "
                 f"parallel.tensor x pipeline x context = {t} x {pp} x {c} = {mp}, so the ranks do not form "
                 f"whole data-parallel groups"),
        hint=(f"procs_per_node = {procs} (data parallel {n * procs // mp}), or tensor x pipeline x context "
              f"= {divisors_text(world)}"),
    )


def rule_global_batch_divisible(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    dp, g, m = data_parallel_size(spec), spec.batch.global_batch_size, spec.batch.micro_batch_size
    if dp is None or g < 1 or m < 1 or g % (m * dp) == 0:
        return
    yield Finding(
        about=(("batch", "global_batch_size"),),
        message=(f"$.batch.global_batch_size = {g} is not divisible by batch.micro_batch_size x data parallel "
                 f"= {m} x {dp} = {m * dp} (each data-parallel rank runs whole microbatches; data parallel = "
                 f"world size {world_size(spec)} / (tensor x pipeline x context) {model_parallel(spec)})"),
        hint=f"global_batch_size = {multiples_near(g, m * dp)}",
    )


def rule_layers_divisible(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    layers, pp, vpp = spec.model.num_layers, spec.parallel.pipeline, spec.parallel.virtual_pipeline
    if layers < 1 or pp < 1:
        return
    if layers % pp:
        yield Finding(
            about=(("model", "num_layers"), ("parallel", "pipeline")),
            message=(f"$.model.num_layers = {layers} is not divisible by parallel.pipeline = {pp} "
                     f"(each pipeline stage holds the same number of layers)"),
            hint=f"num_layers = {multiples_near(layers, pp)}, or pipeline = {divisors_text(layers)}",
        )
    elif vpp is not None and vpp >= 2 and pp > 1 and layers % (pp * vpp):
        yield Finding(
            about=(("model", "num_layers"), ("parallel", "virtual_pipeline")),
            message=(f"$.model.num_layers = {layers} is not divisible by parallel.pipeline x virtual_pipeline "
                     f"= {pp} x {vpp} = {pp * vpp} (each model chunk holds the same number of layers)"),
            hint=f"num_layers = {multiples_near(layers, pp * vpp)}, or a virtual_pipeline that divides "
                 f"{layers // pp} (the layers per stage)",
        )


def rule_virtual_pipeline(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    vpp, pp = spec.parallel.virtual_pipeline, spec.parallel.pipeline
    if vpp is None:
        return
    about = (("parallel", "virtual_pipeline"),)
    if vpp < 2:
        yield Finding(about=about,
                      message=f"$.parallel.virtual_pipeline = {vpp} must be at least 2 (it is the number of model "
                              f"chunks per pipeline stage; one chunk is the plain pipeline schedule)",
                      hint="remove virtual_pipeline, or set it to 2 or more")
    elif pp == 1:
        yield Finding(about=about,
                      message=f"$.parallel.virtual_pipeline = {vpp} needs parallel.pipeline > 1 (the interleaved "
                              f"schedule splits each pipeline stage into chunks)",
                      hint="set pipeline = 2 or more, or remove virtual_pipeline")
    else:
        count = microbatches(spec)
        if count is not None and pp > 1 and count % pp:
            g, m, dp = spec.batch.global_batch_size, spec.batch.micro_batch_size, data_parallel_size(spec)
            yield Finding(
                about=(("batch", "global_batch_size"), ("parallel", "virtual_pipeline")),
                message=(f"the interleaved pipeline schedule (parallel.virtual_pipeline = {vpp}) needs the number "
                         f"of microbatches to be a multiple of parallel.pipeline = {pp}, but global_batch_size / "
                         f"(micro_batch_size x data parallel) = {g} / ({m} x {dp}) = {count}"),
                hint=f"global_batch_size = {multiples_near(g, m * dp * pp)}",
            )


def rule_heads_divisible_by_tensor(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    t, heads, groups = spec.parallel.tensor, spec.model.num_attention_heads, spec.model.num_query_groups
    if t < 1 or heads < 1:
        return
    if heads % t:
        yield Finding(
            about=(("model", "num_attention_heads"), ("parallel", "tensor")),
            message=(f"$.model.num_attention_heads = {heads} is not divisible by parallel.tensor = {t} "
                     f"(each tensor-parallel rank needs whole heads)"),
            hint=split_hint(heads, t, "heads"),
        )
    if groups is not None and groups >= 1 and groups % t:
        yield Finding(
            about=(("model", "num_query_groups"), ("parallel", "tensor")),
            message=(f"$.model.num_query_groups = {groups} is not divisible by parallel.tensor = {t} "
                     f"(each tensor-parallel rank needs whole key/value groups)"),
            hint=split_hint(groups, t, "query groups"),
        )


def rule_heads_divisible_by_groups(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    heads, groups = spec.model.num_attention_heads, spec.model.num_query_groups
    if groups is None or groups < 1 or heads < 1 or heads % groups == 0:
        return
    yield Finding(
        about=(("model", "num_query_groups"),),
        message=(f"$.model.num_attention_heads = {heads} is not divisible by model.num_query_groups = {groups} "
                 f"(each key/value group serves the same number of query heads)"),
        hint=f"num_query_groups = {divisors_text(heads)}",
    )


def rule_hidden_divisible_by_heads(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    hidden, heads = spec.model.hidden_size, spec.model.num_attention_heads
    if spec.model.head_dim is not None or hidden < 1 or heads < 1 or hidden % heads == 0:
        return
    yield Finding(
        about=(("model", "hidden_size"), ("model", "num_attention_heads")),
        message=(f"$.model.hidden_size = {hidden} is not divisible by model.num_attention_heads = {heads}, so "
                 f"a head has no whole width (head_dim defaults to hidden_size / num_attention_heads)"),
        hint=f"hidden_size = {multiples_near(hidden, heads)}, or set head_dim under [model]",
    )


def rule_sequence_divisible_by_context(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    seq, c = spec.model.seq_length, spec.parallel.context
    if c <= 1 or seq < 1 or seq % (2 * c) == 0:
        return
    yield Finding(
        about=(("model", "seq_length"), ("parallel", "context")),
        message=(f"$.model.seq_length = {seq} is not divisible by 2 x parallel.context = {2 * c} (context "
                 f"parallelism cuts each sequence into 2 x context chunks to balance causal attention)"),
        hint=f"seq_length = {multiples_near(seq, 2 * c)}",
    )


def rule_sequence_parallel_needs_tensor(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    if spec.parallel.sequence_parallel and spec.parallel.tensor == 1:
        yield Finding(
            about=(("parallel", "sequence_parallel"),),
            message=("$.parallel.sequence_parallel = true needs parallel.tensor > 1 (it splits norms and "
                     "dropout along the sequence inside tensor-parallel regions)"),
            hint="set tensor = 2 or more, or remove sequence_parallel",
        )


def rule_experts(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    e, experts, topk = spec.parallel.expert, spec.model.num_experts, spec.model.moe_router_topk
    if experts is None:
        if e > 1:
            yield Finding(about=(("parallel", "expert"),),
                          message=f"$.parallel.expert = {e} needs model.num_experts (expert parallelism splits "
                                  f"the experts of MoE layers, and this model is dense)",
                          hint=f"set num_experts under [model] to a multiple of {e}, or remove expert")
        return
    if experts < 1:
        return
    if e >= 1 and experts % e:
        yield Finding(about=(("model", "num_experts"), ("parallel", "expert")),
                      message=f"$.model.num_experts = {experts} is not divisible by parallel.expert = {e} "
                              f"(each expert-parallel rank holds the same number of experts)",
                      hint=f"num_experts = {multiples_near(experts, e)}, or expert = "
                           f"{divisors_text(experts)}")
    if topk > experts:
        yield Finding(about=(("model", "moe_router_topk"), ("model", "num_experts")),
                      message=f"$.model.moe_router_topk = {topk} is more than model.num_experts = {experts} "
                              f"(a token cannot be routed to more experts than there are)",
                      hint=f"moe_router_topk = {experts} or less")
    if spec.parallel.tensor > 1 and not spec.parallel.sequence_parallel:
        yield Finding(about=(("parallel", "tensor"), ("model", "num_experts")),
                      message=f"MoE layers (model.num_experts = {experts}) with parallel.tensor = "
                              f"{spec.parallel.tensor} need parallel.sequence_parallel = true (megatron-core "
                              f"refuses to train MoE with tensor parallelism but without sequence parallelism)",
                      hint="set sequence_parallel = true under [parallel]")


def rule_experts_without_biases(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    if spec.model.num_experts is None or spec.model.num_experts < 1 or not spec.model.add_bias_linear:
        return
    yield Finding(about=(("model", "add_bias_linear"), ("model", "num_experts")),
                  message=f"MoE layers (model.num_experts = {spec.model.num_experts}) need model.add_bias_linear = "
                          f"false (megatron-core adds expert biases in place, which autograd rejects in the "
                          f"backward pass)",
                  hint="set add_bias_linear = false under [model] (MoE models use no linear biases)")


def rule_expert_fits_data_parallel(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    dp, e, c = data_parallel_size(spec), spec.parallel.expert, spec.parallel.context
    if dp is None or e < 1 or spec.model.num_experts is None or (dp * c) % e == 0:
        return
    yield Finding(
        about=(("parallel", "expert"),),
        message=(f"$.parallel.expert = {e} does not divide data parallel x context = {dp} x {c} = {dp * c} "
                 f"(expert parallelism is carved out of the data- and context-parallel ranks)"),
        hint=f"expert = {divisors_text(dp * c)}",
    )


# -- devices and number formats -----------------------------------------------------------------


def rule_fp8_needs_cuda_and_transformer_engine(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    recipe = spec.precision.fp8
    if recipe is None:
        return
    if spec.launch.device != "cuda":
        yield Finding(about=(("precision", "fp8"),),
                      message=f"$.precision.fp8 = {render_value(recipe)} needs launch.device = \"cuda\" (FP8 runs "
                              f"on GPU tensor cores)",
                      hint='set device = "cuda" under [launch], or remove fp8')
    if spec.model.transformer_impl != "transformer_engine":
        yield Finding(about=(("precision", "fp8"),),
                      message=f"$.precision.fp8 = {render_value(recipe)} needs model.transformer_impl = "
                              f"\"transformer_engine\" (the local layers have no FP8 path)",
                      hint='set transformer_impl = "transformer_engine" under [model], or remove fp8')


def rule_transformer_engine_needs_cuda(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    if spec.model.transformer_impl == "transformer_engine" and spec.launch.device != "cuda":
        yield Finding(about=(("model", "transformer_impl"),),
                      message='$.model.transformer_impl = "transformer_engine" needs launch.device = "cuda" '
                              "(transformer_engine's kernels run only on GPUs)",
                      hint='set device = "cuda" under [launch], or transformer_impl = "local"')


def rule_context_needs_transformer_engine(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    c = spec.parallel.context
    if c > 1 and spec.model.transformer_impl != "transformer_engine":
        yield Finding(about=(("parallel", "context"),),
                      message=f"$.parallel.context = {c} needs model.transformer_impl = \"transformer_engine\" "
                              f"(megatron-core's context parallelism runs through transformer_engine attention)",
                      hint='set transformer_impl = "transformer_engine" under [model] (cuda only), or context = 1')


def rule_fp16_needs_cuda(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    if spec.precision.dtype == "fp16" and spec.launch.device == "cpu":
        yield Finding(about=(("precision", "dtype"),),
                      message='$.precision.dtype = "fp16" is not supported with launch.device = "cpu" '
                              "(PyTorch has no fp16 matrix multiplies on CPU)",
                      hint='dtype = "bf16" or "fp32" on cpu, or device = "cuda"')


# -- schedule and optimizer -------------------------------------------------------------------------


def rule_schedule_lengths(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    s, iters = spec.scheduler, spec.train.iters
    decay_end = s.decay_iters if s.decay_iters is not None else iters
    decay_text = (f"scheduler.decay_iters = {decay_end}" if s.decay_iters is not None
                  else f"train.iters = {decay_end} (where decay ends when scheduler.decay_iters is unset)")
    if s.warmup_iters < 0 or decay_end < 1 or iters < 1:
        return  # reported by rule_counts
    if s.warmup_iters >= decay_end:
        yield Finding(about=(("scheduler", "warmup_iters"),),
                      message=f"$.scheduler.warmup_iters = {s.warmup_iters} must be less than {decay_text}: "
                              f"warmup has to end before the decay does",
                      hint=f"warmup_iters below {decay_end}, e.g. {decay_end // 10}")
    elif s.warmup_iters > iters:
        yield Finding(about=(("scheduler", "warmup_iters"),),
                      message=f"$.scheduler.warmup_iters = {s.warmup_iters} is more than train.iters = {iters}, so "
                              f"training would end during warmup",
                      hint=f"warmup_iters = {iters} or less, e.g. {iters // 10}")
    if s.decay == "wsd" and s.wsd_decay_iters is None:
        yield Finding(about=(("scheduler", "decay"),),
                      message='$.scheduler.decay = "wsd" needs scheduler.wsd_decay_iters (the length of the final '
                              "decay phase)",
                      hint=f"add wsd_decay_iters = {max(1, decay_end // 10)} under [scheduler]")
    elif s.decay == "wsd" and s.wsd_decay_iters is not None and s.wsd_decay_iters > decay_end:
        yield Finding(about=(("scheduler", "wsd_decay_iters"),),
                      message=f"$.scheduler.wsd_decay_iters = {s.wsd_decay_iters} is more than {decay_text}: "
                              f"the final decay phase is part of the decay",
                      hint=f"wsd_decay_iters = {decay_end} or less")


def rule_learning_rates(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    o = spec.optimizer
    if o.lr <= 0:
        yield Finding(about=(("optimizer", "lr"),),
                      message=f"$.optimizer.lr = {render_value(o.lr)} must be greater than 0",
                      hint="lr = 3e-4 is a common start for small GPT models")
    if o.min_lr < 0:
        yield Finding(about=(("optimizer", "min_lr"),),
                      message=f"$.optimizer.min_lr = {render_value(o.min_lr)} must be 0 or more",
                      hint="min_lr = 0.0 decays all the way down")
    elif o.lr > 0 and o.min_lr > o.lr:
        yield Finding(about=(("optimizer", "min_lr"),),
                      message=f"$.optimizer.min_lr = {render_value(o.min_lr)} is more than optimizer.lr = "
                              f"{render_value(o.lr)} (the schedule decays from lr down to min_lr)",
                      hint=f"min_lr = 0.0, or anything up to {render_value(o.lr)}")
    if spec.scheduler.warmup_init_lr < 0:
        yield Finding(about=(("scheduler", "warmup_init_lr"),),
                      message=f"$.scheduler.warmup_init_lr = {render_value(spec.scheduler.warmup_init_lr)} must be "
                              f"0 or more",
                      hint="warmup_init_lr = 0.0 warms up from zero")


def rule_optimizer_settings(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    o = spec.optimizer
    for i, beta in enumerate(o.betas):
        if not 0 <= beta < 1:
            yield Finding(about=(("optimizer", "betas", i), ("optimizer", "betas")),
                          message=f"$.optimizer.betas[{i}] = {render_value(beta)} must be in [0, 1) (it is the decay "
                                  f"rate of Adam's running average of the {('gradient', 'squared gradient')[i]})",
                          hint="betas = [0.9, 0.95] or [0.9, 0.999]")
    if o.eps <= 0:
        yield Finding(about=(("optimizer", "eps"),),
                      message=f"$.optimizer.eps = {render_value(o.eps)} must be greater than 0 (it keeps Adam's "
                              f"update finite where the squared gradient average is 0)",
                      hint="eps = 1e-8")
    if o.weight_decay < 0:
        yield Finding(about=(("optimizer", "weight_decay"),),
                      message=f"$.optimizer.weight_decay = {render_value(o.weight_decay)} must be 0 or more",
                      hint="weight_decay = 0.0 turns it off; 0.1 is common for GPT pretraining")
    if o.clip_grad < 0:
        yield Finding(about=(("optimizer", "clip_grad"),),
                      message=f"$.optimizer.clip_grad = {render_value(o.clip_grad)} must be 0 or more "
                              f"(0 turns clipping off)",
                      hint="clip_grad = 1.0, or 0.0 for no clipping")
    if not 0 <= o.sgd_momentum < 1:
        yield Finding(about=(("optimizer", "sgd_momentum"),),
                      message=f"$.optimizer.sgd_momentum = {render_value(o.sgd_momentum)} must be in [0, 1)",
                      hint="sgd_momentum = 0.9, or 0.0 for plain SGD")


# -- counts, intervals and sizes --------------------------------------------------------------------


def _counts(spec: Spec) -> dict[KeyPath, int | float | None]:
    """Every count, interval and size that must be at least 1 (None: unset, nothing to check)."""
    m, p, b, t, c = spec.model, spec.parallel, spec.batch, spec.train, spec.checkpoint
    return {
        ("launch", "nodes"): spec.launch.nodes, ("launch", "procs_per_node"): spec.launch.procs_per_node,
        ("model", "num_layers"): m.num_layers, ("model", "hidden_size"): m.hidden_size,
        ("model", "num_attention_heads"): m.num_attention_heads, ("model", "num_query_groups"): m.num_query_groups,
        ("model", "head_dim"): m.head_dim, ("model", "ffn_hidden_size"): m.ffn_hidden_size,
        ("model", "vocab_size"): m.vocab_size,
        ("model", "make_vocab_size_divisible_by"): m.make_vocab_size_divisible_by,
        ("model", "seq_length"): m.seq_length, ("model", "num_experts"): m.num_experts,
        ("model", "moe_router_topk"): m.moe_router_topk if m.num_experts is not None else None,
        ("parallel", "tensor"): p.tensor, ("parallel", "pipeline"): p.pipeline, ("parallel", "context"): p.context,
        ("parallel", "expert"): p.expert,
        ("batch", "global_batch_size"): b.global_batch_size, ("batch", "micro_batch_size"): b.micro_batch_size,
        ("train", "iters"): t.iters, ("train", "log_interval"): t.log_interval,
        ("train", "eval_interval"): t.eval_interval,
        ("train", "eval_iters"): t.eval_iters if t.eval_interval is not None else None,
        ("train", "exit_interval"): t.exit_interval,
        ("scheduler", "decay_iters"): spec.scheduler.decay_iters,
        ("scheduler", "wsd_decay_iters"): spec.scheduler.wsd_decay_iters,
        ("checkpoint", "save_interval"): c.save_interval, ("checkpoint", "keep_last"): c.keep_last,
    }


def rule_counts_at_least_one(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    for path, value in _counts(spec).items():
        if value is not None and value < 1:
            yield Finding(about=(path,), message=f"{format_path(path)} = {value} must be at least 1",
                          hint=f"set {path[-1]} to 1 or more")


def rule_amounts_not_negative(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    amounts: dict[KeyPath, int | None] = {
        ("scheduler", "warmup_iters"): spec.scheduler.warmup_iters,
        ("data", "eod_token"): spec.data.eod_token,
    }
    for path, value in amounts.items():
        if value is not None and value < 0:
            yield Finding(about=(path,), message=f"{format_path(path)} = {value} must be 0 or more",
                          hint=f"set {path[-1]} to 0 or more")


def rule_durations_positive(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    durations: dict[KeyPath, float | None] = {
        ("launch", "timeout_minutes"): spec.launch.timeout_minutes,
        ("train", "exit_duration_minutes"): spec.train.exit_duration_minutes,
    }
    for path, value in durations.items():
        if value is not None and value <= 0:
            yield Finding(about=(path,), message=f"{format_path(path)} = {render_value(value)} must be greater than 0",
                          hint=f"{path[-1]} is in minutes, e.g. {path[-1]} = 10.0")


def rule_model_numbers(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    m = spec.model
    if not 0 <= m.dropout < 1:
        yield Finding(about=(("model", "dropout"),),
                      message=f"$.model.dropout = {render_value(m.dropout)} must be in [0, 1) (it is the "
                              f"probability of zeroing an activation)",
                      hint="dropout = 0.0 turns it off; Megatron's default is 0.1")
    if m.norm_epsilon <= 0:
        yield Finding(about=(("model", "norm_epsilon"),),
                      message=f"$.model.norm_epsilon = {render_value(m.norm_epsilon)} must be greater than 0 (it "
                              f"keeps the norm finite for an all-zero input)",
                      hint="norm_epsilon = 1e-5")
    if m.init_method_std <= 0:
        yield Finding(about=(("model", "init_method_std"),),
                      message=f"$.model.init_method_std = {render_value(m.init_method_std)} must be greater than 0",
                      hint="init_method_std = 0.02")
    if m.rotary_base < 1:
        yield Finding(about=(("model", "rotary_base"),),
                      message=f"$.model.rotary_base = {m.rotary_base} must be at least 1",
                      hint="rotary_base = 10000")


def rule_run_identity(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    name, seed = spec.run.name, spec.run.seed
    if not name.strip() or any(c in name for c in "/\\") or name in (".", ".."):
        yield Finding(about=(("run", "name"),),
                      message=f"$.run.name = {render_value(name)} must be a non-empty name without slashes (it "
                              f"names the run's output folder, out/<name>)",
                      hint='name = "quickstart"')
    if not 0 <= seed < 2**31:
        yield Finding(about=(("run", "seed"),),
                      message=f"$.run.seed = {seed} must be in [0, 2^31) (numpy's and megatron-core's seeding "
                              f"need it, with per-rank offsets added, to fit in 32 bits)",
                      hint="seed = 1234")


# -- data -------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class TokenizerSidecar:
    """``prefix.json``, written next to an indexed dataset by ``bridgec data build``."""

    tokenizer: str
    vocab_size: int
    eod: int


def parse_tokenizer_sidecar(text: str) -> TokenizerSidecar | str:
    """The sidecar, or what is wrong with it (in words)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"invalid JSON at line {exc.lineno}: {exc.msg}"
    if not isinstance(data, dict):
        return "it is not a JSON object"
    for key, kind, words in (("tokenizer", str, "a string"), ("vocab_size", int, "an integer"),
                             ("eod", int, "an integer")):
        if key not in data:
            return f"it has no {key!r}"
        if type(data[key]) is not kind:
            return f"{key!r} is not {words}"
    if data["vocab_size"] < 1 or not 0 <= data["eod"] < data["vocab_size"]:
        return f"eod = {data['eod']} is not a token id of vocab_size = {data['vocab_size']}"
    return TokenizerSidecar(tokenizer=data["tokenizer"], vocab_size=data["vocab_size"], eod=data["eod"])


def rule_data_sources_match_kind(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    kind, count = spec.data.kind, len(spec.data.sources)
    if kind == "indexed" and count == 0:
        yield Finding(about=(("data", "kind"),),
                      message='$.data.kind = "indexed" needs at least one [[data.sources]] table (it names the '
                              ".bin/.idx files to read)",
                      hint='add [[data.sources]] with prefix = "path/to/tokens" (the files\' path without .bin/.idx)')
    if kind == "mock" and count > 0:
        yield Finding(about=(("data", "sources"), ("data", "kind")),
                      message=f"$.data.sources has {count} entr{'y' if count == 1 else 'ies'}, but data.kind = "
                              f"\"mock\" reads no files (mock data is synthetic)",
                      hint='set kind = "indexed" under [data], or remove the [[data.sources]] tables')


def rule_data_files_exist(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    if spec.data.kind != "indexed":
        return
    for i, source in enumerate(spec.data.sources):
        missing = [source.prefix + ext for ext in (".bin", ".idx")
                   if not ctx.files.exists(ctx.resolve(source.prefix + ext))]
        if not missing:
            continue
        relative = "" if os.path.isabs(source.prefix) else " (paths are relative to the spec's folder)"
        verb = "does" if len(missing) == 1 else "do"
        stem, ext = os.path.splitext(source.prefix)
        yield Finding(
            about=(("data", "sources", i, "prefix"),),
            message=(f"$.data.sources[{i}].prefix = {render_value(source.prefix)}: {' and '.join(missing)} "
                     f"{verb} not exist{relative}"),
            hint=(f"leave out the extension: prefix = {render_value(stem)}" if ext in (".bin", ".idx")
                  else "fix the prefix, or build the files with `bridgec data build`"),
        )


def rule_source_weights_positive(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    for i, source in enumerate(spec.data.sources):
        if source.weight <= 0:
            yield Finding(about=(("data", "sources", i, "weight"),),
                          message=f"$.data.sources[{i}].weight = {render_value(source.weight)} must be greater than 0 "
                                  f"(weights are shares of the blend, normalised over all sources)",
                          hint="weight = 1.0, or remove the source")


def rule_split(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    split, about = spec.data.split, (("data", "split"),)
    shown = render_value(split)
    if any(share < 0 for share in split):
        yield Finding(about=about, message=f"$.data.split = {shown} must be three shares of 0 or more "
                                           f"(train, validation, test)",
                      hint="split = [98.0, 1.0, 1.0]")
    elif split[0] <= 0:
        yield Finding(about=about, message=f"$.data.split = {shown} leaves no training data (the first share is "
                                           f"the training share)",
                      hint="split = [98.0, 1.0, 1.0]")
    elif spec.train.eval_interval is not None and split[1] <= 0:
        yield Finding(about=about + (("train", "eval_interval"),),
                      message=f"$.data.split = {shown} leaves no validation data, but train.eval_interval = "
                              f"{spec.train.eval_interval} evaluates on it",
                      hint="give validation a share, as in split = [98.0, 1.0, 1.0], or remove eval_interval")


def rule_eod_token_in_vocab(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    eod, vocab = spec.data.eod_token, spec.model.vocab_size
    if eod is not None and vocab >= 1 and eod >= vocab:
        yield Finding(about=(("data", "eod_token"),),
                      message=f"$.data.eod_token = {eod} is not a token id of model.vocab_size = {vocab} (ids run "
                              f"from 0 to {vocab - 1})",
                      hint=f"eod_token = {vocab - 1} or less, or a larger vocab_size")


def rule_tokenizer_sidecar(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    data = spec.data
    if data.kind != "indexed" or not data.sources:
        return
    prefix = data.sources[0].prefix
    if not all(ctx.files.exists(ctx.resolve(prefix + ext)) for ext in (".bin", ".idx")):
        return  # rule_data_files_exist reports it; a missing dataset has no tokenizer file either
    name, about = prefix + ".json", (("data", "sources", 0, "prefix"),)
    if not ctx.files.exists(ctx.resolve(name)):
        if data.eod_token is None:
            yield Finding(about=(("data", "eod_token"),) + about,
                          message=f"$.data.eod_token is not set, and there is no tokenizer file {name} next to the "
                                  f"first source to read it from",
                          hint=f"set eod_token under [data] to your tokenizer's end-of-document id, or rebuild the "
                               f"data with `bridgec data build`, which writes {name}")
        return
    sidecar = _read_sidecar(ctx, name)
    if isinstance(sidecar, str):
        yield Finding(about=about, message=f"{name} is not a tokenizer file bridgec can read: {sidecar}",
                      hint="rebuild the data with `bridgec data build`, or delete the file and set eod_token "
                           "under [data]")
        return
    if spec.model.vocab_size < sidecar.vocab_size:
        yield Finding(about=(("model", "vocab_size"),),
                      message=f"$.model.vocab_size = {spec.model.vocab_size} is smaller than the vocabulary of the "
                              f"data's tokenizer, {sidecar.vocab_size} ({name}), so some token ids would fall outside "
                              f"the embedding",
                      hint=f"vocab_size = {sidecar.vocab_size}")
    if data.eod_token is not None and data.eod_token != sidecar.eod:
        yield Finding(about=(("data", "eod_token"),), severity="warning",
                      message=f"$.data.eod_token = {data.eod_token} differs from the end-of-document id of the "
                              f"data's tokenizer, {sidecar.eod} ({name})",
                      hint=f"remove eod_token to use {sidecar.eod}")


def _read_sidecar(ctx: SpecContext, name: str) -> TokenizerSidecar | str:
    try:
        return parse_tokenizer_sidecar(ctx.files.read_text(ctx.resolve(name)))
    except UnicodeDecodeError:
        return "it is not UTF-8 text"
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or type(exc).__name__})"


# -- checkpoints ----------------------------------------------------------------------------------


def rule_checkpoint_needs_dir(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    c = spec.checkpoint
    if c.dir is not None:
        return
    used: dict[KeyPath, object] = {("checkpoint", "save_interval"): c.save_interval,
                                   ("checkpoint", "resume"): c.resume or None,
                                   ("checkpoint", "keep_last"): c.keep_last}
    for path, value in used.items():
        if value is not None:
            yield Finding(about=(path,),
                          message=f"{format_path(path)} = {render_value(value)} needs checkpoint.dir (the folder "
                                  f"checkpoints are saved in and resumed from)",
                          hint='add dir = "checkpoints" under [checkpoint]')


def rule_checkpoints_need_adam(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    if spec.checkpoint.dir is not None and spec.optimizer.name != "adam":
        yield Finding(about=(("checkpoint", "dir"), ("optimizer", "name")),
                      message=f'$.checkpoint.dir is set, but optimizer.name = "{spec.optimizer.name}": megatron-core '
                              f"0.16 cannot checkpoint its SGD optimizer (it has no state initialiser to load into)",
                      hint='use name = "adam" under [optimizer], or remove [checkpoint] dir')
    init = spec.init.checkpoint
    if init is not None and init.optimizer_state and spec.optimizer.name != "adam":
        yield Finding(about=(("init", "checkpoint", "optimizer_state"), ("optimizer", "name")),
                      message=f"$.init.checkpoint.optimizer_state = true loads Adam moments, but optimizer.name = "
                              f'"{spec.optimizer.name}"',
                      hint='use name = "adam" under [optimizer], or set optimizer_state = false')


def rule_stopping_saves_a_checkpoint(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    if spec.checkpoint.dir is not None:
        return
    t = spec.train
    stops: dict[KeyPath, object] = {("train", "exit_interval"): t.exit_interval,
                                    ("train", "exit_duration_minutes"): t.exit_duration_minutes,
                                    ("train", "on_nonfinite"): "stop" if t.on_nonfinite == "stop" else None}
    for path, value in stops.items():
        if value is not None:
            yield Finding(about=(path,), severity="warning",
                          message=f"{format_path(path)} = {render_value(value)} saves a checkpoint before stopping, "
                                  f"but checkpoint.dir is not set: nothing is saved and the run cannot resume",
                          hint='add dir = "checkpoints" under [checkpoint]')


def rule_init_checkpoint_exists(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    checkpoint = spec.init.checkpoint
    if checkpoint is None or ctx.files.exists(ctx.resolve(checkpoint.path)):
        return
    relative = "" if os.path.isabs(checkpoint.path) else " (paths are relative to the spec's folder)"
    yield Finding(about=(("init", "checkpoint", "path"),),
                  message=f"$.init.checkpoint.path = {render_value(checkpoint.path)} does not exist{relative}",
                  hint="point it at the checkpoint's item folder, e.g. ckpt/1000/items")


# -- hooks ----------------------------------------------------------------------------------------


def _named_hooks(spec: Spec) -> dict[str, str]:
    """[hooks] key -> function name, for the hooks the spec names."""
    named = {"forward_step": spec.hooks.forward_step, "loss": spec.hooks.loss}
    return {key: name for key, name in named.items() if name is not None}


def rule_hooks_need_file(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    if spec.hooks.file is not None:
        return
    for key, name in _named_hooks(spec).items():
        yield Finding(about=(("hooks", key),),
                      message=f"$.hooks.{key} = {render_value(name)} needs hooks.file (the Python file that "
                              f"defines it)",
                      hint='add file = "hooks.py" under [hooks]')


def rule_hook_functions(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    file, named = spec.hooks.file, _named_hooks(spec)
    if file is None:
        return
    about, shown = (("hooks", "file"),), f"$.hooks.file = {render_value(file)}"
    if not named:
        yield Finding(about=about, severity="warning",
                      message=f"{shown} is not used: neither hooks.forward_step nor hooks.loss names a function in it",
                      hint='name one, as forward_step = "my_forward_step", or remove file')
        return
    if not ctx.files.exists(ctx.resolve(file)):
        relative = "" if os.path.isabs(file) else " (paths are relative to the spec's folder)"
        yield Finding(about=about, message=f"{shown} does not exist{relative}", hint="create it, or fix the path")
        return
    # libcst takes a noticeable part of a second to import: only specs that name a hook file pay for it.
    from bridgec.compiler import hooks

    try:
        parsed = hooks.read_hook_file(ctx.files.read_text(ctx.resolve(file)))
    except UnicodeDecodeError:
        yield Finding(about=about, message=f"{shown} is not UTF-8 text", hint="save it as UTF-8")
        return
    except OSError as exc:
        yield Finding(about=about, message=f"{shown} cannot be read ({exc.strerror or type(exc).__name__})",
                      hint="check the file's permissions")
        return
    if isinstance(parsed, hooks.Unparsable):
        where = file if parsed.line is None else f"{file}:{parsed.line}:{parsed.column}"
        yield Finding(about=about, message=f"{shown} is not valid Python: {where}: {parsed.message}",
                      hint=f"fix line {parsed.line} of {file}" if parsed.line else f"fix {file}")
        return
    for key, name in named.items():
        signature = hooks.SIGNATURES[key]
        found = hooks.find_hook(parsed, name, signature)
        hook, shown = (("hooks", key),), f"$.hooks.{key} = {render_value(name)}"
        if isinstance(found, hooks.NotFound):
            yield Finding(about=hook, message=f"{shown} is not a top-level function of {file}",
                          hint=f"did you mean {found.suggestion!r}?" if found.suggestion
                          else f"define def {name}({signature.render()}) at the top level of {file}")
        elif isinstance(found, hooks.BadSignature):
            function = found.function
            yield Finding(about=hook,
                          message=f"{shown}: {function.render()} at {file}:{function.line} {found.problem}",
                          hint=f"define it as def {name}({signature.render()})")


# -- settings that do nothing -----------------------------------------------------------------------


def rule_unused_settings(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    m, o, s = spec.model, spec.optimizer, spec.scheduler
    checks: tuple[tuple[KeyPath, object, bool, str, str], ...] = (
        (("model", "rotary_base"), m, m.position_embedding != "rope", 'position_embedding = "rope"',
         'remove it, or set position_embedding = "rope"'),
        (("model", "moe_router_topk"), m, m.num_experts is None, "num_experts (an MoE model)",
         "remove it, or set num_experts"),
        (("optimizer", "sgd_momentum"), o, o.name != "sgd", 'name = "sgd"', "remove it"),
        (("optimizer", "betas"), o, o.name != "adam", 'name = "adam"', "remove it"),
        (("optimizer", "eps"), o, o.name != "adam", 'name = "adam"', "remove it"),
        (("scheduler", "wsd_decay_iters"), s, s.decay != "wsd", 'decay = "wsd"', 'remove it, or set decay = "wsd"'),
        (("scheduler", "wsd_decay_style"), s, s.decay != "wsd", 'decay = "wsd"', 'remove it, or set decay = "wsd"'),
        (("scheduler", "warmup_init_lr"), s, s.warmup_iters == 0, "warmup_iters > 0",
         "remove it, or set warmup_iters"),
        (("train", "eval_iters"), spec.train, spec.train.eval_interval is None, "eval_interval",
         "remove it, or set eval_interval"),
    )
    for path, section, unused, needs, hint in checks:
        name = str(path[-1])
        value = getattr(section, name)
        if unused and value != attrs.fields_dict(type(section))[name].default:
            yield Finding(about=(path,), severity="warning",
                          message=f"{format_path(path)} = {render_value(value)} has no effect: it is only used "
                                  f"with {needs}",
                          hint=hint)


RULES: tuple[Rule, ...] = (
    rule_world_divisible,
    rule_global_batch_divisible,
    rule_layers_divisible,
    rule_virtual_pipeline,
    rule_heads_divisible_by_tensor,
    rule_heads_divisible_by_groups,
    rule_hidden_divisible_by_heads,
    rule_sequence_divisible_by_context,
    rule_sequence_parallel_needs_tensor,
    rule_experts,
    rule_experts_without_biases,
    rule_expert_fits_data_parallel,
    rule_fp8_needs_cuda_and_transformer_engine,
    rule_transformer_engine_needs_cuda,
    rule_context_needs_transformer_engine,
    rule_fp16_needs_cuda,
    rule_schedule_lengths,
    rule_learning_rates,
    rule_optimizer_settings,
    rule_counts_at_least_one,
    rule_amounts_not_negative,
    rule_durations_positive,
    rule_model_numbers,
    rule_run_identity,
    rule_data_sources_match_kind,
    rule_data_files_exist,
    rule_source_weights_positive,
    rule_split,
    rule_eod_token_in_vocab,
    rule_tokenizer_sidecar,
    rule_checkpoint_needs_dir,
    rule_checkpoints_need_adam,
    rule_stopping_saves_a_checkpoint,
    rule_init_checkpoint_exists,
    rule_hooks_need_file,
    rule_hook_functions,
    rule_unused_settings,
    *INTEROP_RULES,
)
"""Every rule validate runs, in the order the spec's tables are usually read."""
