"""Lower a Spec to the script's choices and its model, data and forward-step code.

:mod:`bridgec.compiler.lower` resolves the numbers (the constants); this module
and :mod:`bridgec.compiler.lower_main` decide the structure the templates
print. Every enumerated spec value is turned into its
:mod:`bridgec.compiler.choices` member once (:class:`Choices`) and dispatched by
a ``match`` ending in ``assert_never`` (or a table keyed by every member), so a
value nobody handles stops the compiler instead of falling into an ``else``.
"""

from __future__ import annotations

import enum
from typing import assert_never

import attrs

from bridgec.compiler import choices as c
from bridgec.compiler import derive
from bridgec.compiler.choices import choice
from bridgec.compiler.plan import Argument, Call, Code, ForwardPlan, Items, ModelPlan, Value
from bridgec.compiler.render import py_literal
from bridgec.compiler.spec import Spec


class LossSource(enum.Enum):
    """Where each microbatch's loss comes from."""

    TOKEN = "token"
    """masked_token_loss: (sum, count), divided once by the global token count."""
    MEAN = "mean"
    """masked_mean_loss: the microbatch's mean, averaged over microbatches and data ranks."""
    MAXTEXT = "maxtext"
    """MaxText's cross entropy on the logits (z-loss, logits multiplier)."""
    HOOK_LOSS = "hook_loss"
    """The user's loss function."""
    HOOK_FORWARD_STEP = "hook_forward_step"
    """The user's forward_step, loss and all."""
    DISTILL = "distill"
    """runtime.distill's distill_loss: kd_loss_scale x KL to the frozen teacher (+ the cross entropy), per token."""


@attrs.frozen(kw_only=True)
class Choices:
    """Every enumerated spec value the script's structure depends on, as members."""

    device: c.Device
    normalization: c.Normalization
    activation: c.Activation
    gelu_approximation: c.GeluApproximation
    query_scaling: c.QueryScaling
    position_embedding: c.PositionEmbedding
    transformer_impl: c.TransformerImpl
    optimizer: c.OptimizerName
    semantics: c.OptimizerSemantics
    scheduler: c.SchedulerStyle
    decay: c.Decay
    maxtext_kind: c.MaxTextScheduleKind | None
    dtype: c.DType
    fp8: c.Fp8Recipe | None
    data: c.DataKind
    loss: c.LossKind
    reduction: c.Reduction
    checkpoint_format: c.CheckpointFormat | None
    """[init.checkpoint] format (None: no [init.checkpoint])."""
    optimizer_state: bool
    """[init.checkpoint] optimizer_state (orbax: the opt_state of a one-member layout; megatron: Megatron-LM's)."""
    loss_source: LossSource


def choices_of(spec: Spec) -> Choices:
    m = spec.model
    s = spec.scheduler
    init = spec.init.checkpoint
    if init is not None:
        _maxtext_layout(choice(c.CheckpointLayout, init.layout))
    return Choices(
        device=choice(c.Device, spec.launch.device),
        normalization=choice(c.Normalization, m.normalization),
        activation=choice(c.Activation, m.activation),
        gelu_approximation=choice(c.GeluApproximation, m.gelu_approximation),
        query_scaling=choice(c.QueryScaling, m.query_scaling),
        position_embedding=choice(c.PositionEmbedding, m.position_embedding),
        transformer_impl=choice(c.TransformerImpl, m.transformer_impl),
        optimizer=choice(c.OptimizerName, spec.optimizer.name),
        semantics=choice(c.OptimizerSemantics, spec.optimizer.semantics),
        scheduler=choice(c.SchedulerStyle, s.style),
        decay=choice(c.Decay, s.decay),
        maxtext_kind=choice(c.MaxTextScheduleKind, s.maxtext.kind) if s.maxtext is not None else None,
        dtype=choice(c.DType, spec.precision.dtype),
        fp8=choice(c.Fp8Recipe, spec.precision.fp8) if spec.precision.fp8 is not None else None,
        data=choice(c.DataKind, spec.data.kind),
        loss=choice(c.LossKind, spec.loss.kind),
        reduction=choice(c.Reduction, spec.loss.reduction),
        checkpoint_format=choice(c.CheckpointFormat, init.format) if init is not None else None,
        optimizer_state=init is not None and init.optimizer_state,
        loss_source=_loss_source(spec, choice(c.LossKind, spec.loss.kind)),
    )


def _maxtext_layout(layout: c.CheckpointLayout) -> None:
    """The one Orbax layout [init.checkpoint] reads (load_maxtext_weights)."""
    match layout:
        case c.CheckpointLayout.MAXTEXT:
            pass
        case _:
            assert_never(layout)


SCORES_SCALED = c.table(
    c.QueryScaling,
    {
        c.QueryScaling.ATTENTION: True,
        c.QueryScaling.INITIAL_WEIGHTS: False,
        c.QueryScaling.NONE: False,
    },
)
"""Whether megatron-core scales attention scores by 1/sqrt(head_dim) (its default softmax scale)."""

WSD = c.table(c.Decay, {c.Decay.CONSTANT: False, c.Decay.LINEAR: False, c.Decay.COSINE: False, c.Decay.WSD: True})
"""megatron's decay styles that take the two WSD settings."""

MAXTEXT_WSD = c.table(c.MaxTextScheduleKind, {c.MaxTextScheduleKind.COSINE: False, c.MaxTextScheduleKind.WSD: True})

LOSS_SCALE_SKIPS = c.table(c.DType, {c.DType.FP32: False, c.DType.BF16: False, c.DType.FP16: True})
"""fp16 scales the loss dynamically: an overflow skips the step."""


def optax_semantics(ch: Choices) -> bool:
    match ch.semantics:
        case c.OptimizerSemantics.OPTAX:
            return True
        case c.OptimizerSemantics.MEGATRON:
            return False
        case _:
            assert_never(ch.semantics)


def indexed(ch: Choices) -> bool:
    """The data are files named by [[data.sources]] (pretraining blends or one SFT dataset)."""
    match ch.data:
        case c.DataKind.INDEXED | c.DataKind.SFT:
            return True
        case c.DataKind.MOCK:
            return False
        case _:
            assert_never(ch.data)


def maxtext_loss(spec: Spec) -> bool:
    """MaxText's loss is needed: a z-loss or a logits multiplier (megatron-core's loss has neither)."""
    return spec.loss.z_loss_multiplier != 0.0 or spec.model.logits_multiplier != 1.0


def _loss_source(spec: Spec, kind: c.LossKind) -> LossSource:
    """Validation makes the hooks and MaxText's loss exclusive."""
    match kind:
        case c.LossKind.CROSS_ENTROPY:
            pass
        case _:
            assert_never(kind)
    if spec.hooks.file is not None and spec.hooks.forward_step is not None:
        return LossSource.HOOK_FORWARD_STEP
    if spec.hooks.file is not None and spec.hooks.loss is not None:
        return LossSource.HOOK_LOSS
    if maxtext_loss(spec):
        return LossSource.MAXTEXT
    if spec.distill is not None:  # validation keeps it to per-token cross entropy
        return LossSource.DISTILL
    reduction = choice(c.Reduction, spec.loss.reduction)
    match reduction:
        case c.Reduction.PER_TOKEN:
            return LossSource.TOKEN
        case c.Reduction.PER_MICROBATCH:
            return LossSource.MEAN
        case _:
            assert_never(reduction)


def arg(name: str | None, value: Code | Call | Items | Value, comment: str | None = None) -> Argument:
    return Argument(name=name, value=value, comment=comment)


def names(*pairs: tuple[str, str]) -> tuple[Argument, ...]:
    """Arguments passed as names of the script: ``key=NAME``."""
    return tuple(arg(key, Code(text=name)) for key, name in pairs)


# --------------------------------------------------------------------------------------------
# The model.


def activation_function(ch: Choices) -> str | None:
    """The activation_func as source; None for exact GELU, megatron-core's default."""
    match ch.activation:
        case c.Activation.SWIGLU:
            return "F.silu"
        case c.Activation.GELU | c.Activation.GEGLU:
            match ch.gelu_approximation:
                case c.GeluApproximation.TANH:
                    return "gelu_tanh"
                case c.GeluApproximation.NONE:
                    return None if ch.activation is c.Activation.GELU else "F.gelu"
                case _:
                    assert_never(ch.gelu_approximation)
        case _:
            assert_never(ch.activation)


NORMALIZATION = c.table(c.Normalization, {c.Normalization.LAYERNORM: "LayerNorm", c.Normalization.RMSNORM: "RMSNorm"})
"""megatron-core's spelling."""

POSITION_EMBEDDING = c.table(
    c.PositionEmbedding, {c.PositionEmbedding.LEARNED: "learned_absolute", c.PositionEmbedding.ROPE: "rope"}
)

PARAMS_DTYPE = c.table(
    c.DType, {c.DType.FP32: "torch.float32", c.DType.BF16: "torch.bfloat16", c.DType.FP16: "torch.float16"}
)


def _precision_arguments(spec: Spec, ch: Choices) -> tuple[Argument, ...]:
    match ch.dtype:
        case c.DType.FP32:
            flags: tuple[Argument, ...] = ()
        case c.DType.BF16:
            flags = (arg("bf16", True),)
        case c.DType.FP16:
            flags = (arg("fp16", True),)
        case _:
            assert_never(ch.dtype)
    dtype = Code(text=PARAMS_DTYPE[ch.dtype])
    return (*flags, arg("params_dtype", dtype), arg("pipeline_dtype", dtype), *_fp8_arguments(spec, ch))


def _fp8_arguments(spec: Spec, ch: Choices) -> tuple[Argument, ...]:
    p = spec.precision
    match ch.fp8:
        case None:
            return ()
        case c.Fp8Recipe.MXFP8:
            fp8 = arg("fp8", "e4m3", "MX block scaling is e4m3 both ways")
        case c.Fp8Recipe.DELAYED | c.Fp8Recipe.TENSORWISE | c.Fp8Recipe.BLOCKWISE:
            fp8 = arg("fp8", "hybrid", "e4m3 forward, e5m2 gradients")
        case _:
            assert_never(ch.fp8)
    bf16_layers = (
        (
            arg("first_last_layers_bf16", True, "precision.fp8_bf16_first_layers / fp8_bf16_last_layers"),
            arg("num_layers_at_start_in_bf16", p.fp8_bf16_first_layers),
            arg("num_layers_at_end_in_bf16", p.fp8_bf16_last_layers),
        )
        if p.fp8_bf16_first_layers or p.fp8_bf16_last_layers
        else ()
    )
    param = (
        (arg("fp8_param", True, "precision.fp8_param_gather: parameters kept in FP8"),) if p.fp8_param_gather else ()
    )
    return (fp8, arg("fp8_recipe", Code(text="FP8_RECIPE")), *param, *bf16_layers)


def _list(items: tuple[str, ...]) -> Code:
    """A list literal: megatron-core checks these fields with isinstance(value, list)."""
    return Code(text="[" + ", ".join(py_literal(item) for item in items) + "]")


def _recompute_arguments(spec: Spec) -> tuple[Argument, ...]:
    r = spec.recompute
    if r.granularity is None:
        return ()
    granularity = choice(c.RecomputeGranularity, r.granularity)
    match granularity:
        case c.RecomputeGranularity.SELECTIVE:
            modules = () if r.modules is None else (arg("recompute_modules", _list(r.modules)),)
            return (arg("recompute_granularity", "selective", "[recompute]"), *modules)
        case c.RecomputeGranularity.FULL:
            assert r.method is not None, "validation requires a method with full recomputation"
            return (
                arg("recompute_granularity", "full", "[recompute]"),
                arg("recompute_method", choice(c.RecomputeMethod, r.method).value),
                arg("recompute_num_layers", r.num_layers),
            )
        case _:
            assert_never(granularity)


def _offload_arguments(spec: Spec) -> tuple[Argument, ...]:
    o = spec.offload
    if not (o.activations or o.weights):
        return ()
    return (
        arg("cpu_offloading", True, "[offload]"),
        arg("cpu_offloading_num_layers", o.num_layers),
        arg("cpu_offloading_activations", o.activations),
        arg("cpu_offloading_weights", o.weights),
    )


def _fusion_arguments(spec: Spec) -> tuple[Argument, ...]:
    f = spec.fusions
    flags = (
        ("bias_dropout_fusion", f.bias_dropout),
        ("apply_rope_fusion", f.apply_rope),
        ("masked_softmax_fusion", f.masked_softmax),
        ("gradient_accumulation_fusion", f.gradient_accumulation),
        ("cross_entropy_loss_fusion", f.cross_entropy),
    )
    chosen = tuple(arg(name, True, "[fusions]") for name, on in flags if on)
    if f.cross_entropy:
        chosen += (arg("cross_entropy_fusion_impl", f.cross_entropy_impl),)
    return chosen


def _overlap_and_graph_arguments(spec: Spec) -> tuple[Argument, ...]:
    g = spec.cuda_graph
    tp = (arg("tp_comm_overlap", True, "overlap.tensor_parallel"),) if spec.overlap.tensor_parallel else ()
    impl = choice(c.CudaGraphImpl, g.impl)
    match impl:
        case c.CudaGraphImpl.NONE:
            return tp
        case c.CudaGraphImpl.LOCAL | c.CudaGraphImpl.TRANSFORMER_ENGINE:
            scope = _list(tuple(choice(c.CudaGraphScope, item).value for item in g.scope))
            return (
                *tp,
                arg("cuda_graph_impl", impl.value, "[cuda_graph]"),
                arg("cuda_graph_scope", scope, "empty: whole layers"),
            )
        case _:
            assert_never(impl)


def performance_arguments(spec: Spec) -> tuple[Argument, ...]:
    """TransformerConfig fields of [recompute], [offload], [fusions], [cuda_graph] and overlap.tensor_parallel."""
    return (
        *_recompute_arguments(spec),
        *_offload_arguments(spec),
        *_fusion_arguments(spec),
        *_overlap_and_graph_arguments(spec),
    )


def _moe_arguments(spec: Spec, ch: Choices) -> tuple[Argument, ...]:
    if spec.model.num_experts is None:
        return ()
    match ch.device:
        case c.Device.CPU:
            dispatcher = arg(
                "moe_token_dispatcher_type", "allgather", "the all-to-all dispatcher's split bookkeeping assumes CUDA"
            )
        case c.Device.CUDA:
            dispatcher = arg("moe_token_dispatcher_type", "alltoall")
        case _:
            assert_never(ch.device)
    pre_softmax: tuple[Argument, ...] = ()
    if spec.model.moe_router_topk == 1:
        pre_softmax = (arg("moe_router_pre_softmax", True, "megatron-core requires it for top-1 routing"),)
    elif spec.model.moe_router_pre_softmax:
        pre_softmax = (arg("moe_router_pre_softmax", True, "softmax over all experts, top-k not renormalised"),)
    return (
        *names(("num_moe_experts", "NUM_EXPERTS"), ("moe_router_topk", "MOE_ROUTER_TOPK")),
        *pre_softmax,
        *names(("expert_model_parallel_size", "EXPERT_PARALLEL")),
        dispatcher,
    )


def _query_scaling_arguments(ch: Choices) -> tuple[Argument, ...]:
    match ch.query_scaling:
        case c.QueryScaling.ATTENTION:
            return ()
        case c.QueryScaling.INITIAL_WEIGHTS | c.QueryScaling.NONE:
            return (arg("softmax_scale", 1.0, "1/sqrt(head_dim) lives in the query weights, as MaxText's block does"),)
        case _:
            assert_never(ch.query_scaling)


def _device_arguments(spec: Spec, ch: Choices) -> tuple[tuple[Argument, ...], tuple[Argument, ...]]:
    """TransformerConfig arguments the CPU needs: (after init_method_std, at the end)."""
    match ch.device:
        case c.Device.CPU:
            sync = (arg("batch_p2p_sync", False, "no CUDA streams to synchronise on the CPU"),)
            return (arg("use_cpu_initialization", True),), sync if spec.parallel.pipeline > 1 else ()
        case c.Device.CUDA:
            return (), ()
        case _:
            assert_never(ch.device)


def _transformer_config(spec: Spec, ch: Choices) -> Call:
    m = spec.model
    activation = activation_function(ch)
    initialization, p2p_sync = _device_arguments(spec, ch)
    virtual = (
        ()
        if spec.parallel.virtual_pipeline is None
        else (
            arg("virtual_pipeline_model_parallel_size", Code(text="VIRTUAL_PIPELINE")),
            arg("batch_p2p_comm", False, "send/recv keep the directions apart where a stage's neighbours are one rank"),
            arg("overlap_p2p_comm", True),
        )
    )
    per_token = (
        (
            arg(
                "calculate_per_token_loss",
                True,
                "gradients are divided by the global token count in finalize_model_grads",
            ),
        )
        if _token_aware(ch)
        else ()
    )
    return Call(
        function="TransformerConfig",
        arguments=(
            *names(
                ("num_layers", "NUM_LAYERS"),
                ("hidden_size", "HIDDEN_SIZE"),
                ("num_attention_heads", "NUM_ATTENTION_HEADS"),
                ("num_query_groups", "NUM_QUERY_GROUPS"),
                ("kv_channels", "HEAD_DIM"),
                ("ffn_hidden_size", "FFN_HIDDEN_SIZE"),
            ),
            arg("normalization", NORMALIZATION[ch.normalization]),
            arg("layernorm_epsilon", Code(text="NORM_EPSILON")),
            *(
                (arg("layernorm_zero_centered_gamma", True, "norm scales stored as (scale - 1), applied as 1 + scale"),)
                if m.norm_zero_centered
                else ()
            ),
            *((arg("gated_linear_unit", True, "linear_fc1 holds [gate; up]"),) if derive.gated_mlp(spec) else ()),
            *(() if activation is None else (arg("activation_func", Code(text=activation)),)),
            *(
                (arg("qk_layernorm", True, "queries and keys normalised per head before RoPE"),)
                if m.qk_layernorm
                else ()
            ),
            *_query_scaling_arguments(ch),
            arg("add_bias_linear", m.add_bias_linear),
            *((arg("add_qkv_bias", True, "query/key/value projection biases only"),) if m.add_qkv_bias else ()),
            *names(
                ("hidden_dropout", "DROPOUT"), ("attention_dropout", "DROPOUT"), ("init_method_std", "INIT_METHOD_STD")
            ),
            *initialization,
            *names(
                ("tensor_model_parallel_size", "TENSOR_PARALLEL"), ("pipeline_model_parallel_size", "PIPELINE_PARALLEL")
            ),
            *virtual,
            *names(("context_parallel_size", "CONTEXT_PARALLEL"), ("sequence_parallel", "SEQUENCE_PARALLEL")),
            *_moe_arguments(spec, ch),
            *_precision_arguments(spec, ch),
            *performance_arguments(spec),
            *per_token,
            *p2p_sync,
            arg("finalize_model_grads_func", Code(text="finalize_model_grads")),
        ),
    )


def layer_spec_function(ch: Choices) -> str:
    match ch.transformer_impl:
        case c.TransformerImpl.LOCAL | c.TransformerImpl.TORCH:
            return "get_gpt_layer_local_spec"
        case c.TransformerImpl.TRANSFORMER_ENGINE:
            return "get_gpt_layer_with_transformer_engine_spec"
        case _:
            assert_never(ch.transformer_impl)


def _layer_spec(spec: Spec, ch: Choices) -> Call:
    experts = () if spec.model.num_experts is None else names(("num_experts", "NUM_EXPERTS"))
    match ch.transformer_impl:
        case c.TransformerImpl.LOCAL | c.TransformerImpl.TORCH:
            rest = (
                *((arg("qk_layernorm", True),) if spec.model.qk_layernorm else ()),
                arg("normalization", NORMALIZATION[ch.normalization]),
            )
        case c.TransformerImpl.TRANSFORMER_ENGINE:
            rest = (arg("qk_layernorm", spec.model.qk_layernorm),)
        case _:
            assert_never(ch.transformer_impl)
    layer = Call(function=layer_spec_function(ch), arguments=(*experts, *rest))
    if sdpa_attention(ch):
        return Call(function="sdpa_layer", arguments=(arg(None, layer),))
    return layer


def sdpa_attention(ch: Choices) -> bool:
    """The local layers' core attention is bridgec's SdpaAttention (torch's scaled_dot_product_attention)."""
    match ch.transformer_impl:
        case c.TransformerImpl.TORCH:
            return True
        case c.TransformerImpl.LOCAL | c.TransformerImpl.TRANSFORMER_ENGINE:
            return False
        case _:
            assert_never(ch.transformer_impl)


def local_zero_centered(spec: Spec, ch: Choices) -> bool:
    """Zero-centred norms on the local path: bridgec's norm (runtime.norms) in every norm slot of the block."""
    match ch.transformer_impl:
        case c.TransformerImpl.LOCAL | c.TransformerImpl.TORCH:
            return spec.model.norm_zero_centered
        case c.TransformerImpl.TRANSFORMER_ENGINE:
            return False  # transformer-engine's norms honour layernorm_zero_centered_gamma themselves
        case _:
            assert_never(ch.transformer_impl)


def scaled_embeddings(spec: Spec) -> bool:
    return spec.model.embedding_multiplier != 1.0


def _block_spec(spec: Spec, ch: Choices) -> Call:
    layer = _layer_spec(spec, ch)
    if not local_zero_centered(spec, ch):
        return layer
    return Call(
        function="zero_centered_block",
        arguments=(
            arg(None, layer),
            arg("config", Code(text="transformer_config()")),
            arg("vp_stage", Code(text="vp_stage")),
        ),
    )


def _gpt_model(spec: Spec, ch: Choices) -> Call:
    match ch.position_embedding:
        case c.PositionEmbedding.ROPE:
            rotary = names(("rotary_base", "ROTARY_BASE"))
            if spec.model.rope_scaling_factor is not None:
                rotary = (
                    *rotary,
                    arg("rope_scaling", True, "Llama 3.1 frequency scaling (low 1, high 4, original context 8192)"),
                    *names(("rope_scaling_factor", "ROPE_SCALING_FACTOR")),
                )
        case c.PositionEmbedding.LEARNED:
            rotary = ()
        case _:
            assert_never(ch.position_embedding)
    return Call(
        function="GPTModel",
        arguments=(
            arg("config", Code(text="transformer_config()")),
            arg("transformer_layer_spec", _block_spec(spec, ch)),
            *names(
                ("vocab_size", "PADDED_VOCAB_SIZE"),
                ("max_sequence_length", "SEQ_LENGTH"),
                ("pre_process", "pre_process"),
                ("post_process", "post_process"),
                ("share_embeddings_and_output_weights", "TIE_EMBEDDINGS"),
            ),
            arg("position_embedding_type", POSITION_EMBEDDING[ch.position_embedding]),
            *rotary,
            *names(("vp_stage", "vp_stage")),
        ),
    )


def model_plan(spec: Spec, ch: Choices) -> ModelPlan:
    gpt = _gpt_model(spec, ch)
    if scaled_embeddings(spec):
        gpt = Call(
            function="scale_embeddings",
            arguments=(arg(None, gpt), arg("multiplier", Code(text="EMBEDDING_MULTIPLIER"), "megatron-core has none")),
        )
    return ModelPlan(config=_transformer_config(spec, ch), gpt=gpt)


# --------------------------------------------------------------------------------------------
# Data and forward step.


def data_source(spec: Spec, ch: Choices) -> tuple[str, Code]:
    """datasets()'s docstring and the source it passes to build_splits."""
    match ch.data:
        case c.DataKind.MOCK:
            return (
                "Train and validation splits of megatron-core's mock GPT data (learnable sequences, in three equal parts).",
                Code(text="MockData()"),
            )
        case c.DataKind.INDEXED:
            return (
                "Train and validation splits of the indexed datasets, blended by weight.",
                Code(
                    text="IndexedData(prefixes=tuple(str(SPEC_DIR / prefix) for prefix in DATA_PREFIXES), "
                    "weights=DATA_WEIGHTS, split=DATA_SPLIT)"
                ),
            )
        case c.DataKind.SFT:
            count = len(spec.data.sources)
            blend = f" of {count} datasets blended by weight" if count > 1 else ""
            return (
                (
                    f"Train and validation splits of the SFT samples{blend}, packed first-fit-decreasing into "
                    "sequences (each sample attends to itself only), their loss masks' tokens in the loss."
                    if spec.data.packing
                    else f"Train and validation splits of the SFT samples{blend}: one sample per sequence, its loss "
                    "mask's tokens in the loss."
                ),
                Code(
                    text="SftData(prefixes=tuple(str(SPEC_DIR / prefix) for prefix in DATA_PREFIXES), "
                    "weights=DATA_WEIGHTS, split=DATA_SPLIT"
                    + (", packing=SFT_PACKING" if spec.data.packing else "")
                    + (", attention=PACKED_ATTENTION)" if derive.thd_packing(spec) else ")")
                ),
            )
        case _:
            assert_never(ch.data)


def _token_aware(ch: Choices) -> bool:
    match ch.reduction:
        case c.Reduction.PER_TOKEN:
            return True
        case c.Reduction.PER_MICROBATCH:
            return False
        case _:
            assert_never(ch.reduction)


def _loss_lines(spec: Spec, ch: Choices) -> tuple[str, ...]:
    # The attention mask is None (megatron-core's causal mask) unless documents or packed samples are kept apart.
    mask = "batch.attention_mask" if derive.block_diagonal_attention(spec) else "None"
    # Packed samples for Transformer Engine: THD offsets instead of a mask (see runtime/data.py thd_params).
    packed = ", packed_seq_params=batch.packed_seq_params" if derive.thd_packing(spec) else ""
    output = f"output = model(batch.tokens, batch.position_ids, {mask}, labels=batch.labels{packed})"
    match ch.loss_source:
        case LossSource.MAXTEXT:
            return (
                "# MaxText's loss needs the logits: no labels, so GPTModel returns [batch, seq, vocab / tensor] logits.",
                f"logits = model(batch.tokens, batch.position_ids, {mask}{packed})",
                "loss = functools.partial(",
                "    maxtext_loss,",
                "    batch.loss_mask,",
                "    batch.labels,",
                "    z_loss_multiplier=Z_LOSS_MULTIPLIER,",
                "    vocab_size=VOCAB_SIZE,  # the true vocabulary: padded rows take no part in the softmax",
                "    logits_multiplier=LOGITS_MULTIPLIER,",
                ")",
                "# Token-aware: (sum of token losses, token count); divided once by the global count.",
                "return logits, loss",
            )
        case LossSource.HOOK_LOSS:
            token_aware = _token_aware(ch)
            return (
                output,
                f'# Your loss function, checked to return what reduction = "{spec.loss.reduction}" needs.',
                "return output, functools.partial(checked_loss, loss_function, batch.loss_mask, "
                f"token_aware={token_aware!r})",
            )
        case LossSource.TOKEN:
            return (
                output,
                "# Token-aware: (sum of token losses, token count); divided once by the global count.",
                "return output, functools.partial(masked_token_loss, batch.loss_mask)",
            )
        case LossSource.MEAN:
            return (
                output,
                "# Standard: the microbatch's mean token loss, averaged over microbatches and data ranks.",
                "return output, functools.partial(masked_mean_loss, batch.loss_mask)",
            )
        case LossSource.DISTILL:
            return (
                *_teacher_lines(spec, mask),
                *_student_lines(spec, mask),
                *(_PAIRS_LOSS_WORDS if _layers(spec) else _KD_LOSS_WORDS),
                "loss = functools.partial(",
                "    distill_loss,",
                "    batch.loss_mask,",
                "    batch.labels,",
                "    teacher_logits,",
                "    temperature=KD_TEMPERATURE,",
                "    kd_loss_scale=KD_LOSS_SCALE,",
                "    skip_lm_loss=SKIP_LM_LOSS,",
                *(
                    ("    hidden=HiddenStates(pairs=pairs, student=student_hidden, teacher=teacher_hidden),",)
                    if _layers(spec)
                    else ()
                ),
                ")",
                "return logits, loss",
            )
        case LossSource.HOOK_FORWARD_STEP:
            return ()
        case _:
            assert_never(ch.loss_source)


_KD_LOSS_WORDS = (
    "# Token-aware: (KD_LOSS_SCALE x KL sum + cross-entropy sum, token count); divided once by the global",
    "# count. Vocabulary-parallel: the full vocabulary is never gathered on one rank.",
)
_PAIRS_LOSS_WORDS = (
    "# Token-aware: (KD_LOSS_SCALE x KL sum + cross-entropy sum + each pair's scale x its layer loss",
    "# sum, token count); divided once by the global count. Vocabulary-parallel: the full vocabulary",
    "# is never gathered on one rank.",
)


def _layers(spec: Spec) -> bool:
    """[[distill.layers]] pairs to catch and compare."""
    return spec.distill is not None and bool(spec.distill.layers)


def _teacher_lines(spec: Spec, mask: str) -> tuple[str, ...]:
    """The teacher's logits of the microbatch (and its [[distill.layers]] hidden states); under pipeline
    parallelism on the last stage alone (the only one that holds the teacher, and the one whose loss function
    reads them)."""
    if _layers(spec):
        context = (
            "torch.no_grad(), capturing_layers(unwrap(teacher), [pair.teacher for pair in pairs]) as teacher_hidden"
        )
        caught = ("pairs = layer_pairs(KD_LAYER_PAIRS)",)
        words = "; the pairs' teacher layers' hidden states caught on the way."
    else:
        context, caught, words = "torch.no_grad()", (), "."
    if spec.parallel.pipeline == 1:
        return (
            *caught,
            f"# The teacher's logits, forward only: no graph, no gradient{words}",
            f"with {context}:",
            f"    teacher_logits = teacher(batch.tokens, batch.position_ids, {mask})",
        )
    return (
        *caught,
        "# The teacher's logits, forward only, on the last stage: the teacher lives there, whole, and reads the",
        "# microbatch's tokens (next_batch's teacher_inputs); the other stages' chunks have no loss to give them to.",
        "teacher_logits, teacher_hidden = None, {}" if caught else "teacher_logits = None",
        "if chunk.post_process:",
        f"    with {context}:",
        f"        teacher_logits = teacher(batch.tokens, batch.position_ids, {mask})",
    )


def _student_lines(spec: Spec, mask: str) -> tuple[str, ...]:
    """The student's logits; with [[distill.layers]], its paired layers' output hidden states caught in the graph
    backward runs through (this chunk's: under pipeline parallelism the last chunk holds them)."""
    forward = f"logits = model(batch.tokens, batch.position_ids, {mask})"
    if not _layers(spec):
        return (forward,)
    return (
        "# The pairs' student layers' output hidden states, as the graph that backward runs through holds them.",
        "with capturing_layers(chunk, [pair.student for pair in pairs]) as student_hidden:",
        f"    {forward}",
    )


def _hook(spec: Spec, name: str | None) -> Code | None:
    if spec.hooks.file is None or name is None:
        return None
    return Code(text=f"Hook(SPEC_DIR / {py_literal(spec.hooks.file)}, {py_literal(name)})")


def forward_plan(spec: Spec, ch: Choices) -> ForwardPlan:
    context = (
        (arg("context_parallel", True, "keep this rank's two chunks of each sequence"),)
        if spec.parallel.context > 1
        else ()
    )
    next_batch = Call(
        function="next_batch",
        arguments=(
            arg(None, Code(text="data_iterator")),
            *names(
                ("pre_process", "chunk.pre_process"),
                ("post_process", "chunk.post_process"),
                ("device", "state.layout.device"),
            ),
            *context,
            *_teacher_inputs(spec),
        ),
    )
    hook = loss_hook = None
    match ch.loss_source:
        case LossSource.HOOK_FORWARD_STEP:
            hook = _hook(spec, spec.hooks.forward_step)
        case LossSource.HOOK_LOSS:
            loss_hook = _hook(spec, spec.hooks.loss)
        case LossSource.TOKEN | LossSource.MEAN | LossSource.MAXTEXT | LossSource.DISTILL:
            pass
        case _:
            assert_never(ch.loss_source)
    return ForwardPlan(
        hook=hook,
        loss_hook=loss_hook,
        next_batch=next_batch,
        body=_loss_lines(spec, ch),
        keyword_parameters=_teacher_parameter(spec) if ch.loss_source is LossSource.DISTILL else "",
    )


def _teacher_inputs(spec: Spec) -> tuple[Argument, ...]:
    if spec.distill is None or spec.parallel.pipeline == 1:
        return ()
    return (arg("teacher_inputs", True, "the last stage's teacher reads the tokens and position ids too"),)


def teacher_type(spec: Spec) -> str:
    """The teacher's type in the script: None on the pipeline stages before the last, which hold none of it."""
    return "torch.nn.Module" if spec.parallel.pipeline == 1 else "torch.nn.Module | None"


def _teacher_parameter(spec: Spec) -> str:
    return f"teacher: {teacher_type(spec)}"
