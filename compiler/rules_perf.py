"""Validation rules of the performance keys: [recompute], [offload], [overlap], [fusions], [cuda_graph], FP8.

Each key sets one megatron-core field; these rules refuse, before launch, what
megatron-core 0.16.1 would refuse at start-up (its TransformerConfig,
DistributedDataParallelConfig and OptimizerConfig checks, named in each rule)
and what would change nothing (a key whose table is off, a CUDA kernel on the CPU).
"""

from __future__ import annotations

from collections.abc import Iterator

from bridgec.compiler.errors import render_value
from bridgec.compiler.rule_base import Finding, Rule, SpecContext
from bridgec.compiler.spec import Spec

SUPPORTED_RECOMPUTE_MODULES = ("core_attn", "mlp", "layernorm", "moe")
"""recompute_modules bridgec's models have; moe_act needs grouped GEMM, mla_up_proj MLA, shared_experts shared experts."""


def layers_per_stage(spec: Spec) -> int:
    """Transformer layers one pipeline stage holds (megatron-core's num_layers // pipeline size)."""
    return spec.model.num_layers // spec.parallel.pipeline


def rule_recompute_keys_need_granularity(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    r = spec.recompute
    if r.granularity is not None:
        return
    for key, value in (("method", r.method), ("num_layers", r.num_layers), ("modules", r.modules)):
        if value is not None:
            yield Finding(
                about=(("recompute", key),),
                message=f"$.recompute.{key} = {render_value(value)} changes nothing without recompute.granularity",
                hint='set granularity = "full" (method, num_layers) or "selective" (modules) under [recompute], '
                f"or remove {key}",
            )


def rule_recompute_full_needs_method_and_layers(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    """megatron-core: full granularity needs recompute_method and 1 <= recompute_num_layers <= layers per stage."""
    r = spec.recompute
    if r.granularity != "full":
        return
    if r.method is None or r.num_layers is None:
        yield Finding(
            about=(("recompute", "granularity"),),
            message='$.recompute.granularity = "full" needs recompute.method and recompute.num_layers',
            hint='e.g. method = "uniform" and num_layers = 1 under [recompute] (every layer recomputed from its input)',
        )
        return
    most = layers_per_stage(spec)
    if not 1 <= r.num_layers <= most:
        yield Finding(
            about=(("recompute", "num_layers"),),
            message=f"$.recompute.num_layers = {r.num_layers} must be between 1 and the {most} layers one "
            "pipeline stage holds",
            hint=f"num_layers = 1 to {most}",
        )
    if r.modules is not None:
        yield Finding(
            about=(("recompute", "modules"),),
            message='$.recompute.modules is for granularity = "selective"; "full" recomputes whole layers',
            hint='remove modules, or granularity = "selective"',
        )


def rule_recompute_selective_takes_modules(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    """megatron-core: selective recomputes every layer: recompute_num_layers must be None (and method is unused)."""
    r = spec.recompute
    if r.granularity != "selective":
        return
    for key, value in (("method", r.method), ("num_layers", r.num_layers)):
        if value is not None:
            yield Finding(
                about=(("recompute", key),),
                message=f'$.recompute.{key} = {render_value(value)} is for granularity = "full"; '
                '"selective" recomputes its modules in every layer',
                hint=f'remove {key}, or granularity = "full"',
            )


def rule_recompute_modules_supported(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    if spec.recompute.granularity != "selective":
        return  # modules without selective granularity: rule_recompute_keys_need_granularity and the full rule
    modules = spec.recompute.modules or ()
    moe = spec.model.num_experts is not None
    for module in modules:
        if module not in SUPPORTED_RECOMPUTE_MODULES:
            yield Finding(
                about=(("recompute", "modules"),),
                message=f'$.recompute.modules holds "{module}", a module bridgec\'s models do not have '
                "(moe_act needs grouped GEMM experts, mla_up_proj multi-latent attention, shared_experts "
                "shared experts)",
                hint=f"use {', '.join(SUPPORTED_RECOMPUTE_MODULES)}",
            )
        elif module == "moe" and not moe:
            yield Finding(
                about=(("recompute", "modules"), ("model", "num_experts")),
                message='$.recompute.modules holds "moe" but the model has no experts (model.num_experts unset)',
                hint='use "mlp" for the dense MLP',
            )
        elif module == "layernorm" and spec.model.transformer_impl != "transformer_engine":
            yield Finding(
                about=(("recompute", "modules"), ("model", "transformer_impl")),
                message='$.recompute.modules holds "layernorm", which needs model.transformer_impl = '
                '"transformer_engine" (megatron-core 0.16.1\'s output-discarding checkpoint reads Transformer '
                "Engine's FP8 state)",
                hint='use "core_attn" or "mlp", or transformer_impl = "transformer_engine" under [model]',
            )
        elif module == "mlp" and spec.model.add_bias_linear and not moe:
            yield Finding(
                about=(("recompute", "modules"), ("model", "add_bias_linear")),
                message='$.recompute.modules holds "mlp", which needs model.add_bias_linear = false (megatron-core '
                "0.16.1 returns the MLP's output bias parameter through the checkpoint, and its backward pass "
                "then recurses without end)",
                hint='add_bias_linear = false under [model], or use "core_attn"',
            )
        elif module == "mlp" and moe:
            yield Finding(
                about=(("recompute", "modules"), ("model", "num_experts")),
                message='$.recompute.modules holds "mlp", the dense MLP, but every layer of this MoE model has '
                "experts instead",
                hint='use "moe"',
            )


def rule_offload_needs_cuda(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    o = spec.offload
    if spec.launch.device == "cuda":
        return
    for key, on in (("activations", o.activations), ("weights", o.weights), ("optimizer", o.optimizer)):
        if on:
            yield Finding(
                about=(("offload", key), ("launch", "device")),
                message=f'$.offload.{key} = true needs launch.device = "cuda" (it moves tensors from the GPU '
                "to host memory; on the CPU they are already there)",
                hint=f'device = "cuda" under [launch], or remove {key}',
            )


def rule_offload_layers(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    """megatron-core: cpu_offloading_num_layers must be in [0, num_layers); 0 would offload nothing."""
    o = spec.offload
    on = o.activations or o.weights
    if not on:
        if o.num_layers is not None:
            yield Finding(
                about=(("offload", "num_layers"),),
                message=f"$.offload.num_layers = {o.num_layers} changes nothing without offload.activations or "
                "offload.weights",
                hint="activations = true under [offload], or remove num_layers",
            )
        return
    most = spec.model.num_layers - 1
    if o.num_layers is None:
        yield Finding(
            about=(("offload", "activations"), ("offload", "weights")),
            message="$.offload.activations or weights needs offload.num_layers (how many layers are offloaded)",
            hint=f"num_layers = 1 to {most} under [offload]",
        )
    elif not 1 <= o.num_layers <= most:
        yield Finding(
            about=(("offload", "num_layers"),),
            message=f"$.offload.num_layers = {o.num_layers} must be between 1 and model.num_layers - 1 = {most} "
            "(megatron-core offloads fewer layers than the model has)",
            hint=f"num_layers = 1 to {most}",
        )


def rule_offload_excludes(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    """megatron-core refuses CPU offloading with pipeline parallelism, recomputation and CUDA graphs."""
    o = spec.offload
    if not (o.activations or o.weights):
        return
    key = "activations" if o.activations else "weights"
    clashes = (
        (spec.parallel.pipeline > 1, ("parallel", "pipeline"), f"parallel.pipeline = {spec.parallel.pipeline}"),
        (
            spec.recompute.granularity is not None,
            ("recompute", "granularity"),
            f"recompute.granularity = {render_value(spec.recompute.granularity)}",
        ),
        (
            spec.cuda_graph.impl != "none",
            ("cuda_graph", "impl"),
            f"cuda_graph.impl = {render_value(spec.cuda_graph.impl)}",
        ),
    )
    for clash, about, shown in clashes:
        if clash:
            yield Finding(
                about=(("offload", key), about),
                message=f"$.offload.{key} = true cannot run with {shown} (megatron-core's CPU offloading "
                "supports neither pipeline parallelism, recomputation nor CUDA graphs)",
                hint=f"remove {key} under [offload], or change {shown.split(' = ')[0]}",
            )


def rule_optimizer_offload(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    o = spec.offload
    if not o.optimizer:
        if o.optimizer_fraction is not None:
            yield Finding(
                about=(("offload", "optimizer_fraction"),),
                message=f"$.offload.optimizer_fraction = {render_value(o.optimizer_fraction)} changes nothing "
                "without offload.optimizer",
                hint="optimizer = true under [offload], or remove optimizer_fraction",
            )
        return
    if o.optimizer_fraction is not None and not 0.0 < o.optimizer_fraction <= 1.0:
        yield Finding(
            about=(("offload", "optimizer_fraction"),),
            message=f"$.offload.optimizer_fraction = {render_value(o.optimizer_fraction)} must be in (0, 1]",
            hint="e.g. optimizer_fraction = 1.0 (the whole optimizer state on the CPU)",
        )
    if not spec.parallel.distributed_optimizer:
        yield Finding(
            about=(("offload", "optimizer"), ("parallel", "distributed_optimizer")),
            message="$.offload.optimizer = true needs parallel.distributed_optimizer = true (megatron-core's "
            "HybridDeviceOptimizer steps the distributed optimizer's shards)",
            hint="distributed_optimizer = true under [parallel], or remove optimizer",
        )
    if spec.optimizer.semantics != "megatron":
        yield Finding(
            about=(("offload", "optimizer"), ("optimizer", "semantics")),
            message='$.offload.optimizer = true needs optimizer.semantics = "megatron" (it offloads '
            "megatron-core's optimizer; the optax one is bridgec's)",
            hint='semantics = "megatron" under [optimizer], or remove optimizer',
        )


def rule_overlap_param_gather_needs_distributed_optimizer(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    if spec.overlap.param_gather and not spec.parallel.distributed_optimizer:
        yield Finding(
            about=(("overlap", "param_gather"), ("parallel", "distributed_optimizer")),
            message="$.overlap.param_gather = true needs parallel.distributed_optimizer = true (only the "
            "distributed optimizer all-gathers parameters after its step)",
            hint="distributed_optimizer = true under [parallel], or remove param_gather",
        )


def rule_align_param_gather(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    """megatron-core uses align_param_gather only in the interleaved schedule, after overlapped gathers."""
    if not spec.overlap.align_param_gather:
        return
    if not spec.overlap.param_gather or spec.parallel.virtual_pipeline is None:
        yield Finding(
            about=(("overlap", "align_param_gather"),),
            message="$.overlap.align_param_gather = true changes nothing without overlap.param_gather = true and "
            "parallel.virtual_pipeline (it aligns the interleaved schedule's overlapped all-gathers)",
            hint="param_gather = true under [overlap] with a virtual pipeline, or remove align_param_gather",
        )


def rule_bucket_size(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    """megatron-core's DDP uses one bucket (bucket_size None) unless overlap_grad_reduce."""
    size = spec.overlap.bucket_size
    if size is None:
        return
    if not spec.overlap.grad_reduce:
        yield Finding(
            about=(("overlap", "bucket_size"),),
            message=f"$.overlap.bucket_size = {size} changes nothing without overlap.grad_reduce = true "
            "(megatron-core then reduces all gradients as one bucket)",
            hint="grad_reduce = true under [overlap], or remove bucket_size",
        )
    elif size < 1:
        yield Finding(
            about=(("overlap", "bucket_size"),),
            message=f"$.overlap.bucket_size = {size} must be at least 1 (parameters per bucket)",
            hint="e.g. bucket_size = 40000000 (megatron-core's default)",
        )


def rule_tensor_parallel_overlap(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    """TP communication overlap is Transformer Engine's userbuffers, over sequence-parallel regions, on CUDA."""
    if not spec.overlap.tensor_parallel:
        return
    needs = (
        (spec.model.transformer_impl != "transformer_engine", ("model", "transformer_impl"),
         'model.transformer_impl = "transformer_engine"'),
        (spec.launch.device != "cuda", ("launch", "device"), 'launch.device = "cuda"'),
        (not spec.parallel.sequence_parallel, ("parallel", "sequence_parallel"), "parallel.sequence_parallel = true"),
    )  # fmt: skip
    for missing, about, shown in needs:
        if missing:
            yield Finding(
                about=(("overlap", "tensor_parallel"), about),
                message=f"$.overlap.tensor_parallel = true needs {shown} (Transformer Engine overlaps the "
                "sequence-parallel all-gathers and reduce-scatters with its GEMMs, on CUDA)",
                hint=f"set {shown}, or remove tensor_parallel under [overlap]",
            )


FUSION_KEYS = ("bias_dropout", "apply_rope", "cross_entropy", "masked_softmax", "gradient_accumulation")


def rule_fusions_need_cuda(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    if spec.launch.device == "cuda":
        return
    for key in FUSION_KEYS:
        if getattr(spec.fusions, key):
            yield Finding(
                about=(("fusions", key), ("launch", "device")),
                message=f'$.fusions.{key} = true needs launch.device = "cuda" (a fused CUDA kernel)',
                hint=f'device = "cuda" under [launch], or remove {key}',
            )


def rule_fusions_need_transformer_engine(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    """megatron-core 0.16.1 takes these kernels from Transformer Engine."""
    f = spec.fusions
    if spec.model.transformer_impl == "transformer_engine":
        return
    kernels = (
        (f.apply_rope, ("fusions", "apply_rope"), "$.fusions.apply_rope = true"),
        (f.cross_entropy and f.cross_entropy_impl == "te", ("fusions", "cross_entropy_impl"),
         '$.fusions.cross_entropy_impl = "te"'),
    )  # fmt: skip
    for on, about, shown in kernels:
        if on:
            yield Finding(
                about=(about, ("model", "transformer_impl")),
                message=f'{shown} needs model.transformer_impl = "transformer_engine" (the kernel is '
                "Transformer Engine's)",
                hint=f'transformer_impl = "transformer_engine" under [model], or remove {about[1]}',
            )


def rule_fusions_change_something(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    f = spec.fusions
    m = spec.model
    if f.cross_entropy_impl != "native" and not f.cross_entropy:
        yield Finding(
            about=(("fusions", "cross_entropy_impl"),),
            message=f"$.fusions.cross_entropy_impl = {render_value(f.cross_entropy_impl)} changes nothing without "
            "fusions.cross_entropy = true",
            hint="cross_entropy = true under [fusions], or remove cross_entropy_impl",
        )
    if f.cross_entropy and (spec.loss.z_loss_multiplier != 0.0 or m.logits_multiplier != 1.0):
        yield Finding(
            about=(("fusions", "cross_entropy"),),
            message="$.fusions.cross_entropy = true changes nothing: MaxText's loss (loss.z_loss_multiplier, "
            "model.logits_multiplier) replaces megatron-core's cross entropy",
            hint="remove cross_entropy under [fusions]",
        )
    if f.masked_softmax and m.transformer_impl != "local":
        yield Finding(
            about=(("fusions", "masked_softmax"), ("model", "transformer_impl")),
            message=f"$.fusions.masked_softmax = true changes nothing with model.transformer_impl = "
            f"{render_value(m.transformer_impl)}: only the local attention has a separate softmax",
            hint='transformer_impl = "local" under [model], or remove masked_softmax',
        )
    if f.apply_rope and m.position_embedding != "rope":
        yield Finding(
            about=(("fusions", "apply_rope"), ("model", "position_embedding")),
            message='$.fusions.apply_rope = true changes nothing with model.position_embedding = "learned"',
            hint="remove apply_rope under [fusions]",
        )


def rule_cuda_graph(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    g = spec.cuda_graph
    if g.impl == "none":
        if g.scope:
            yield Finding(
                about=(("cuda_graph", "scope"),),
                message=f"$.cuda_graph.scope = {render_value(list(g.scope))} changes nothing with "
                'cuda_graph.impl = "none"',
                hint='impl = "local" or "transformer_engine" under [cuda_graph], or remove scope',
            )
        return
    if spec.launch.device != "cuda":
        yield Finding(
            about=(("cuda_graph", "impl"), ("launch", "device")),
            message=f'$.cuda_graph.impl = {render_value(g.impl)} needs launch.device = "cuda"',
            hint='device = "cuda" under [launch], or remove impl',
        )
    if g.impl == "transformer_engine" and spec.model.transformer_impl != "transformer_engine":
        yield Finding(
            about=(("cuda_graph", "impl"), ("model", "transformer_impl")),
            message='$.cuda_graph.impl = "transformer_engine" needs model.transformer_impl = "transformer_engine"',
            hint='impl = "local", or transformer_impl = "transformer_engine" under [model]',
        )
    yield from _cuda_graph_scope(spec)


def _cuda_graph_scope(spec: Spec) -> Iterator[Finding]:
    """megatron-core's cuda_graph_scope checks (TransformerConfig.__post_init__)."""
    scope = set(spec.cuda_graph.scope)
    about = (("cuda_graph", "scope"),)
    if "full_iteration" in scope and spec.cuda_graph.impl != "local":
        yield Finding(
            about=about,
            message='$.cuda_graph.scope "full_iteration" needs cuda_graph.impl = "local"',
            hint='impl = "local" under [cuda_graph]',
        )
    moe_scopes = sorted(scope & {"moe", "moe_router", "moe_preprocess"})
    if moe_scopes and spec.model.num_experts is None:
        yield Finding(
            about=(*about, ("model", "num_experts")),
            message=f"$.cuda_graph.scope {render_value(moe_scopes)} needs an MoE model (model.num_experts)",
            hint="remove those scopes",
        )
    if {"moe", "moe_router"} <= scope:
        yield Finding(about=about, message='$.cuda_graph.scope cannot hold both "moe" and "moe_router"',
                      hint='keep one of them')  # fmt: skip
    if "moe_preprocess" in scope and "moe_router" not in scope:
        yield Finding(about=about, message='$.cuda_graph.scope "moe_preprocess" needs "moe_router" too',
                      hint='add "moe_router"')  # fmt: skip


def rule_fp8_keys_need_fp8(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    p = spec.precision
    if p.fp8 is not None:
        return
    for key, value, default in (
        ("fp8_param_gather", p.fp8_param_gather, False),
        ("fp8_bf16_first_layers", p.fp8_bf16_first_layers, 0),
        ("fp8_bf16_last_layers", p.fp8_bf16_last_layers, 0),
    ):
        if value != default:
            yield Finding(
                about=(("precision", key),),
                message=f"$.precision.{key} = {render_value(value)} changes nothing without precision.fp8",
                hint=f'fp8 = "tensorwise" (or another recipe) under [precision], or remove {key}',
            )


def rule_fp8_settings(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    """megatron-core: bf16 first/last layers need a recipe other than delayed, within one pipeline stage's layers."""
    p = spec.precision
    if p.fp8 is None:
        return
    bf16_layers = p.fp8_bf16_first_layers or p.fp8_bf16_last_layers
    if bf16_layers and p.fp8 == "delayed":
        yield Finding(
            about=(("precision", "fp8_bf16_first_layers"), ("precision", "fp8_bf16_last_layers")),
            message='$.precision.fp8 = "delayed" cannot keep first or last layers in bf16 (megatron-core: delayed '
            "scaling does not support it)",
            hint='fp8 = "tensorwise", or remove fp8_bf16_first_layers and fp8_bf16_last_layers',
        )
    most = layers_per_stage(spec)
    for key, value in (("fp8_bf16_first_layers", p.fp8_bf16_first_layers),
                       ("fp8_bf16_last_layers", p.fp8_bf16_last_layers)):  # fmt: skip
        if not 0 <= value <= most:
            yield Finding(
                about=(("precision", key),),
                message=f"$.precision.{key} = {value} must be between 0 and the {most} layers one pipeline stage holds",
                hint=f"{key} = 0 to {most}",
            )
    if p.fp8_param_gather and not spec.parallel.distributed_optimizer:
        yield Finding(
            about=(("precision", "fp8_param_gather"), ("parallel", "distributed_optimizer")),
            message="$.precision.fp8_param_gather = true needs parallel.distributed_optimizer = true (the "
            "distributed optimizer all-gathers the FP8 parameters)",
            hint="distributed_optimizer = true under [parallel], or fp8_param_gather = false",
        )


PERF_RULES: tuple[Rule, ...] = (
    rule_recompute_keys_need_granularity,
    rule_recompute_full_needs_method_and_layers,
    rule_recompute_selective_takes_modules,
    rule_recompute_modules_supported,
    rule_offload_needs_cuda,
    rule_offload_layers,
    rule_offload_excludes,
    rule_optimizer_offload,
    rule_overlap_param_gather_needs_distributed_optimizer,
    rule_align_param_gather,
    rule_bucket_size,
    rule_tensor_parallel_overlap,
    rule_fusions_need_cuda,
    rule_fusions_need_transformer_engine,
    rule_fusions_change_something,
    rule_cuda_graph,
    rule_fp8_keys_need_fp8,
    rule_fp8_settings,
)
