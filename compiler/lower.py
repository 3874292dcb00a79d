"""Lower a validated Spec to a Plan: resolve defaults, derive numbers, keep their arithmetic.

This is the one place derived values are computed. Each derived constant
carries the arithmetic that produced it, which the script prints as a comment
(``NUM_MICROBATCHES = 2  # global 8 / (micro 2 x data 2)``). Lowering assumes
validation passed (divisibility holds); it never rewrites a value the user set.
"""

from __future__ import annotations

import shlex
from pathlib import PurePosixPath

import attrs

from bridgec.compiler import derive, explain
from bridgec.compiler.derive import data_parallel, padded_vocab, world_size
from bridgec.compiler.mesh import lower_mesh
from bridgec.compiler.plan import Call, Constant, Header, HooksPlan, ModelPlan, Plan, SchedulePlan, Section, Value
from bridgec.compiler.spec import Spec
from bridgec.compiler.version import __version__


@attrs.frozen(kw_only=True)
class TokenizerInfo:
    """What an indexed dataset's tokenizer sidecar (prefix.json) says."""

    name: str
    vocab_size: int
    eod: int


@attrs.frozen(kw_only=True)
class Target:
    """Where the script goes, relative to where the spec is; everything lower needs besides the Spec."""

    spec_sha256: str
    spec_path: str
    """The spec relative to the output file's folder, '/'-separated."""
    output_name: str
    """The output file's name (run.py)."""
    tokenizer: TokenizerInfo | None = None


def _c(name: str, value: Value, why: str | None = None, *, text: bool = False) -> Constant:
    return Constant(name=name, value=value, why=why, from_spec_text=text)


def _torchrun_options(spec: Spec) -> str:
    if spec.launch.nodes == 1:
        return f"--nnodes 1 --nproc-per-node {spec.launch.procs_per_node}"
    return (
        f"--nnodes {spec.launch.nodes} --nproc-per-node {spec.launch.procs_per_node} "
        "--rdzv-backend c10d --rdzv-endpoint HOST_OF_NODE_0:29500"
    )


def launch_command(spec: Spec, output_name: str) -> str:
    return f"torchrun {_torchrun_options(spec)} {shlex.quote(output_name)}"


def bridgec_launch_command(spec: Spec, output_name: str) -> str:
    """``bridgec launch``: the script's own process count on one node; torchrun's options for several."""
    script = shlex.quote(output_name)
    return f"bridgec launch {script}" if spec.launch.nodes == 1 else f"bridgec launch {script} {_torchrun_options(spec)}"


def _run_sections(spec: Spec, target: Target) -> list[Section]:
    world = world_size(spec)
    launch = spec.launch
    return [
        Section(
            title="Run",
            constants=(
                _c("RUN_NAME", spec.run.name, text=True),
                _c("SEED", spec.run.seed),
                _c("BRIDGEC_VERSION", __version__, "the bridgec that generated this script: start() refuses another runtime"),
            ),
        ),
        Section(
            title="Launch",
            constants=(
                _c("DEVICE", launch.device),
                _c("NODES", launch.nodes),
                _c("PROCS_PER_NODE", launch.procs_per_node),
                _c("WORLD_SIZE", world, f"nodes {launch.nodes} x procs_per_node {launch.procs_per_node}"),
                _c("TIMEOUT_MINUTES", launch.timeout_minutes),
                _c("LAUNCH_COMMAND", launch_command(spec, target.output_name)),
            ),
        ),
    ]


def _mesh_why(spec: Spec) -> dict[str, str]:
    """Where each size came from when the spec gives a JAX mesh (empty otherwise)."""
    p = spec.parallel
    if p.mesh is None:
        return {}
    result = lower_mesh(p.mesh, p.dcn_mesh, nodes=spec.launch.nodes, procs_per_node=spec.launch.procs_per_node)
    assert result.lowering is not None, "validation resolved the mesh"
    size = {row.name: row.size for row in result.lowering.axes}

    def axes(*names: str) -> str:
        return " x ".join(f"{name} {size.get(name, 1)}" for name in names)

    return {
        "TENSOR_PARALLEL": f"mesh: {axes('tensor', 'tensor_sequence')}",
        "PIPELINE_PARALLEL": f"mesh: {axes('stage')}",
        "CONTEXT_PARALLEL": f"mesh: {axes('context', 'context_usp_ulysses')}",
        "EXPERT_PARALLEL": f"mesh: {axes('expert')}",
        "SEQUENCE_PARALLEL": f"mesh: tensor_sequence {size.get('tensor_sequence', 1)} (> 1 turns it on)",
        "DISTRIBUTED_OPTIMIZER": f"mesh: fsdp {size.get('fsdp', 1)} (> 1 turns it on)",
    }


def _parallel_section(spec: Spec) -> Section:
    p = spec.parallel
    world = world_size(spec)
    dp = data_parallel(spec)
    why = _mesh_why(spec)
    constants = [
        _c("TENSOR_PARALLEL", p.tensor, why.get("TENSOR_PARALLEL")),
        _c("PIPELINE_PARALLEL", p.pipeline, why.get("PIPELINE_PARALLEL")),
    ]
    if p.virtual_pipeline is not None:
        constants.append(_c("VIRTUAL_PIPELINE", p.virtual_pipeline))
    constants += [
        _c("CONTEXT_PARALLEL", p.context, why.get("CONTEXT_PARALLEL")),
        _c("EXPERT_PARALLEL", p.expert, why.get("EXPERT_PARALLEL")),
        _c(
            "DATA_PARALLEL",
            dp,
            f"world {world} / (tensor {p.tensor} x pipeline {p.pipeline} x context {p.context})",
        ),
        _c("SEQUENCE_PARALLEL", p.sequence_parallel, why.get("SEQUENCE_PARALLEL")),
        _c("DISTRIBUTED_OPTIMIZER", p.distributed_optimizer, why.get("DISTRIBUTED_OPTIMIZER")),
    ]
    return Section(title="Parallel layout (megatron rank order tp-cp-ep-dp-pp)", constants=tuple(constants))


def _batch_section(spec: Spec) -> Section:
    b = spec.batch
    dp = data_parallel(spec)
    micro = b.micro_batch_size
    return Section(
        title="Batch (in sequences)",
        constants=(
            _c("GLOBAL_BATCH_SIZE", b.global_batch_size),
            _c("MICRO_BATCH_SIZE", micro),
            _c(
                "NUM_MICROBATCHES",
                derive.microbatches(spec),
                f"global {b.global_batch_size} / (micro {micro} x data {dp})",
            ),
            _c(
                "TOKENS_PER_STEP",
                b.global_batch_size * spec.model.seq_length,
                f"global {b.global_batch_size} x seq_length {spec.model.seq_length}",
            ),
        ),
    )


def _model_section(spec: Spec) -> Section:
    m = spec.model
    p = spec.parallel
    heads = m.num_attention_heads
    constants = [
        _c("NUM_LAYERS", m.num_layers),
    ]
    if p.pipeline > 1:
        chunks = p.pipeline * (p.virtual_pipeline or 1)
        arithmetic = f"layers {m.num_layers} / (pipeline {p.pipeline}"
        arithmetic += f" x virtual {p.virtual_pipeline})" if p.virtual_pipeline else ")"
        constants.append(_c("LAYERS_PER_CHUNK", m.num_layers // chunks, arithmetic))
    constants += [
        _c("HIDDEN_SIZE", m.hidden_size),
        _c("NUM_ATTENTION_HEADS", heads),
        (
            _c("NUM_QUERY_GROUPS", m.num_query_groups)
            if m.num_query_groups is not None
            else _c("NUM_QUERY_GROUPS", heads, f"default: num_attention_heads {heads}")
        ),
        (
            _c("HEAD_DIM", m.head_dim)
            if m.head_dim is not None
            else _c("HEAD_DIM", m.hidden_size // heads, f"hidden {m.hidden_size} / heads {heads}")
        ),
        (
            _c("FFN_HIDDEN_SIZE", m.ffn_hidden_size)
            if m.ffn_hidden_size is not None
            else _c("FFN_HIDDEN_SIZE", 4 * m.hidden_size, f"default: 4 x hidden {m.hidden_size}")
        ),
        _c("VOCAB_SIZE", m.vocab_size),
        _c(
            "PADDED_VOCAB_SIZE",
            padded_vocab(spec),
            f"vocab {m.vocab_size} rounded up to a multiple of {derive.vocab_multiple(spec)} "
            f"(lcm of make_vocab_size_divisible_by {m.make_vocab_size_divisible_by} and tensor {p.tensor})",
        ),
        _c("SEQ_LENGTH", m.seq_length),
        _c("ACTIVATION", m.activation),
        _c("TIE_EMBEDDINGS", m.tie_embeddings),
        _c("NORM_EPSILON", m.norm_epsilon),
        _c("DROPOUT", m.dropout),
        _c("INIT_METHOD_STD", m.init_method_std),
    ]
    if m.position_embedding == "rope":
        constants.append(_c("ROTARY_BASE", m.rotary_base))
    if m.num_experts is not None:
        constants += [_c("NUM_EXPERTS", m.num_experts), _c("MOE_ROUTER_TOPK", m.moe_router_topk)]
    counts = explain.parameter_counts(spec)
    output = f" + output {counts.output}" if counts.output else " (output tied to the embedding)"
    constants.append(_c("NUM_PARAMETERS", counts.total, f"embedding {counts.embedding} + layers {m.num_layers} x "
                        f"{counts.per_layer} + final norm {counts.final_norm}{output}"))
    if spec.init.checkpoint is not None:
        constants.append(_c("INIT_SCHEME", "megatron", "[init.checkpoint] overwrites every weight"))
    else:
        constants.append(_c("INIT_SCHEME", spec.init.scheme))
    return Section(title="Model", constants=tuple(constants))


def _init_checkpoint_section(spec: Spec) -> Section | None:
    c = spec.init.checkpoint
    if c is None:
        return None
    m = spec.model
    undo = m.query_scaling == "attention" and not m.qk_layernorm
    constants = [
        _c("INIT_CHECKPOINT", c.path, text=True),
        _c("INIT_CHECKPOINT_FORMAT", c.format),
        _c("INIT_CHECKPOINT_LAYOUT", c.layout),
        _c(
            "INIT_QUERY_SCALING",
            "undo" if undo else "keep",
            "MaxText pre-scales the query kernel by 1/sqrt(head_dim); megatron scales attention scores, so undo it"
            if undo
            else f'model.query_scaling = "{m.query_scaling}": the query kernel stays as stored',
        ),
        _c("INIT_ROPE_LAYOUT", c.rope_layout),
        _c("INIT_PARAM_SCAN_AXIS", c.param_scan_axis),
        _c("INIT_OPTIMIZER_STATE", c.optimizer_state),
    ]
    if c.optimizer_state:
        constants.append(_c("INIT_OPTIMIZER_TYPE", c.optimizer_type))
    return Section(title="Initial weights from a checkpoint (paths relative to the spec's folder)",
                   constants=tuple(constants))


def _precision_section(spec: Spec) -> Section:
    p = spec.precision
    constants = [_c("DTYPE", p.dtype)]
    if p.fp8 is not None:
        constants.append(_c("FP8_RECIPE", p.fp8))
    return Section(title="Precision", constants=tuple(constants))


def _train_section(spec: Spec) -> Section:
    t = spec.train
    constants = [
        _c("TRAIN_ITERS", t.iters),
        _c("LOG_INTERVAL", t.log_interval),
        _c("EVAL_INTERVAL", t.eval_interval),
    ]
    if t.eval_interval is not None:
        constants.append(_c("EVAL_ITERS", t.eval_iters))
    constants += [
        _c("EXIT_INTERVAL", t.exit_interval),
        _c("EXIT_DURATION_MINUTES", t.exit_duration_minutes),
        _c("ON_NONFINITE", t.on_nonfinite),
    ]
    return Section(title="Training loop", constants=tuple(constants))


def _optimizer_sections(spec: Spec) -> list[Section]:
    o = spec.optimizer
    optax = o.semantics == "optax"
    optimizer = [
        _c("OPTIMIZER", o.name),
        _c("OPTIMIZER_SEMANTICS", o.semantics),
        _c("LR", o.lr),
    ]
    if spec.scheduler.style == "megatron":
        optimizer.append(_c("MIN_LR", o.min_lr))
    optimizer.append(_c("WEIGHT_DECAY", o.weight_decay))
    if o.name == "adam":
        optimizer += [_c("ADAM_BETA1", o.betas[0]), _c("ADAM_BETA2", o.betas[1]), _c("ADAM_EPS", o.eps)]
    else:
        optimizer.append(_c("SGD_MOMENTUM", o.sgd_momentum))
    if optax:
        mask = o.decay_mask
        optimizer += [
            _c("ADAM_EPS_ROOT", o.eps_root),
            _c("DECAY_EXCLUDE", tuple(mask.exclude), text=True),
            _c("DECAY_MASK_PATHS", mask.paths),
            _c("DECAY_MASK_SCAN_LAYERS", mask.scan_layers),
        ]
    optimizer.append(_c("CLIP_GRAD", o.clip_grad))
    if optax:
        optimizer.append(_c("CLIP_EPSILON", 0.0, "optax.clip_by_global_norm: coefficient = clip_grad / norm"))
    else:
        optimizer.append(_c("CLIP_EPSILON", 1e-6, "megatron-core: coefficient = clip_grad / (norm + 1e-6)"))
    return [Section(title="Optimizer", constants=tuple(optimizer)), _schedule_section(spec)]


def _schedule_section(spec: Spec) -> Section:
    s = spec.scheduler
    if s.style == "maxtext" and s.maxtext is not None:
        m = s.maxtext
        steps = (
            _c("MAXTEXT_SCHEDULE_STEPS", m.schedule_steps)
            if m.schedule_steps is not None
            else _c("MAXTEXT_SCHEDULE_STEPS", spec.train.iters, f"default: train.iters {spec.train.iters}")
        )
        constants = [
            _c("LR_SCHEDULE", f"maxtext {m.kind}"),
            _c("MAXTEXT_SCHEDULE_VARIANT", m.variant),
            steps,
            _c("MAXTEXT_WARMUP_STEPS_FRACTION", m.warmup_steps_fraction),
            _c("MAXTEXT_FINAL_FRACTION", m.final_fraction),
        ]
        if m.kind == "wsd":
            constants += [
                _c("MAXTEXT_WSD_DECAY_STEPS_FRACTION", m.wsd_decay_steps_fraction),
                _c("MAXTEXT_WSD_DECAY_STYLE", m.wsd_decay_style),
            ]
        return Section(title="Learning-rate schedule (MaxText's, read at the pre-increment update count)",
                       constants=tuple(constants))
    if s.style == "optax":
        return Section(
            title="Learning-rate schedule (optax pieces: see learning_rate_schedule())",
            constants=(_c("LR_SCHEDULE", "optax"),),
        )
    decay_iters = s.decay_iters if s.decay_iters is not None else spec.train.iters
    schedule = [
        _c("LR_WARMUP_ITERS", s.warmup_iters),
        _c("LR_WARMUP_INIT", s.warmup_init_lr),
        _c("LR_DECAY_STYLE", s.decay),
        (
            _c("LR_DECAY_ITERS", decay_iters)
            if s.decay_iters is not None
            else _c("LR_DECAY_ITERS", decay_iters, f"default: train.iters {spec.train.iters}")
        ),
    ]
    if s.decay == "wsd":
        schedule += [_c("LR_WSD_DECAY_ITERS", s.wsd_decay_iters), _c("LR_WSD_DECAY_STYLE", s.wsd_decay_style)]
    return Section(title="Learning-rate schedule (in optimizer steps)", constants=tuple(schedule))


_OPTAX_PIECE_FUNCTIONS = {
    "constant": ("constant_schedule", ("value",)),
    "linear": ("linear_schedule", ("init_value", "end_value", "transition_steps", "transition_begin")),
    "cosine_decay": ("cosine_decay_schedule", ("init_value", "decay_steps", "alpha", "exponent")),
    "warmup_cosine_decay": (
        "warmup_cosine_decay_schedule",
        ("init_value", "peak_value", "warmup_steps", "decay_steps", "end_value", "exponent"),
    ),
}


def _schedule_plan(spec: Spec) -> SchedulePlan:
    s = spec.scheduler
    if s.style == "maxtext" and s.maxtext is not None:
        return SchedulePlan(style="maxtext", maxtext_kind=s.maxtext.kind)
    if s.style != "optax":
        return SchedulePlan(style=s.style, megatron_wsd=s.decay == "wsd")
    pieces = []
    for piece in s.optax:
        function, keys = _OPTAX_PIECE_FUNCTIONS[piece.kind]
        arguments = tuple(
            (key, getattr(piece, key) if not (key == "end_value" and piece.end_value is None) else 0.0) for key in keys
        )
        pieces.append(Call(function=function, arguments=arguments))
    boundaries = tuple(piece.boundary for piece in s.optax[:-1] if piece.boundary is not None)
    return SchedulePlan(style="optax", pieces=tuple(pieces), boundaries=boundaries)


def _data_section(spec: Spec, target: Target) -> Section:
    d = spec.data
    g = spec.batch.global_batch_size
    t = spec.train
    constants = [_c("DATA_KIND", d.kind)]
    if d.kind == "indexed":
        constants += [
            _c("DATA_PREFIXES", tuple(source.prefix for source in d.sources), text=True),
            _c("DATA_WEIGHTS", tuple(source.weight for source in d.sources)),
            _c("DATA_SPLIT", tuple(float(part) for part in d.split)),
        ]
    if d.eod_token is not None:
        constants.append(_c("EOD_TOKEN", d.eod_token))
    elif d.kind == "indexed" and target.tokenizer is not None:
        constants.append(
            _c("EOD_TOKEN", target.tokenizer.eod, f"from the dataset's tokenizer file ({target.tokenizer.name})")
        )
    else:
        constants.append(_c("EOD_TOKEN", spec.model.vocab_size - 1, f"default for mock data: vocab {spec.model.vocab_size} - 1"))
    constants.append(_c("EOD_MASK_LOSS", d.eod_mask_loss))
    constants.append(_c("TRAIN_SAMPLES", t.iters * g, f"train.iters {t.iters} x global {g}"))
    if t.eval_interval is not None:
        windows = derive.validation_windows(spec)
        count = (
            f"{windows} evaluation{'s' if windows > 1 else ''} (iters {t.iters} // eval_interval {t.eval_interval})"
            if derive.evaluations(spec) == windows
            else f"1 evaluation (at least one; iters {t.iters} < eval_interval {t.eval_interval})"
        )
        constants.append(_c(
            "VALID_SAMPLES", windows * t.eval_iters * g,
            f"{count} x eval_iters {t.eval_iters} x global {g}; each reads the next ones",
        ))
    else:
        constants.append(_c("VALID_SAMPLES", 0, "no evaluation"))
    constants.append(_c("LOSS_REDUCTION", spec.loss.reduction))
    if _maxtext_loss(spec):
        constants += [
            _c("Z_LOSS_MULTIPLIER", spec.loss.z_loss_multiplier),
            _c("LOGITS_MULTIPLIER", spec.model.logits_multiplier),
        ]
    return Section(title="Data and loss", constants=tuple(constants))


def _loss_source(spec: Spec) -> str:
    """See Plan.loss_source; validation makes the hooks and MaxText's loss exclusive."""
    if spec.hooks.file is not None and spec.hooks.forward_step is not None:
        return "hook_forward_step"
    if spec.hooks.file is not None and spec.hooks.loss is not None:
        return "hook_loss"
    if _maxtext_loss(spec):
        return "maxtext"
    return "token" if spec.loss.reduction == "per_token" else "mean"


def _maxtext_loss(spec: Spec) -> bool:
    return spec.loss.z_loss_multiplier != 0.0 or spec.model.logits_multiplier != 1.0


def _output_section(spec: Spec, target: Target) -> Section:
    output = spec.run.output_dir if spec.run.output_dir is not None else f"out/{spec.run.name}"
    constants = [
        (
            _c("OUTPUT_DIR", output, text=True)
            if spec.run.output_dir is not None
            else Constant(name="OUTPUT_DIR", value=output, why="default: out/<run.name>", from_spec_text=True)
        )
    ]
    stem = PurePosixPath(target.spec_path).stem
    constants += [
        _c("SPEC_FILE", target.spec_path, "relative to this script"),
        _c("SPEC_SHA256", target.spec_sha256, "recorded in the metrics and in every checkpoint"),
        _c("METRICS_FILE", f"{stem}.metrics.jsonl", "in OUTPUT_DIR, named after the spec: specs sharing the folder keep their own"),
        _c("LAST_EXIT_FILE", f"{stem}.last_exit.json", "in OUTPUT_DIR: how the latest launch ended (code, reason, step)"),
    ]
    c = spec.checkpoint
    if c.dir is not None:
        constants += [
            _c("CHECKPOINT_DIR", c.dir, text=True),
            _c("SAVE_INTERVAL", c.save_interval),
            _c("RESUME", c.resume),
            _c("KEEP_LAST", c.keep_last),
            _c("OVERWRITE_CHECKPOINTS", c.overwrite),
        ]
    return Section(title="Outputs (paths relative to the spec's folder)", constants=tuple(constants))


def _activation(spec: Spec) -> str:
    m = spec.model
    if m.activation == "swiglu":
        return "F.silu"
    if m.gelu_approximation == "tanh":
        return "gelu_tanh"
    return "F.gelu"


def _model_plan(spec: Spec) -> ModelPlan:
    m = spec.model
    return ModelPlan(
        transformer_impl=m.transformer_impl,
        normalization="RMSNorm" if m.normalization == "rmsnorm" else "LayerNorm",
        gated=derive.gated_mlp(spec),
        activation=_activation(spec),
        activation_is_default=m.activation == "gelu" and m.gelu_approximation == "none",
        position_embedding_type="rope" if m.position_embedding == "rope" else "learned_absolute",
        tie_embeddings=m.tie_embeddings,
        add_bias_linear=m.add_bias_linear,
        qk_layernorm=m.qk_layernorm,
        zero_centered_norm=m.norm_zero_centered,
        query_scaling=m.query_scaling,
        moe=m.num_experts is not None,
        router_pre_softmax=m.num_experts is not None and m.moe_router_topk == 1,
    )


def _hooks_plan(spec: Spec) -> HooksPlan | None:
    h = spec.hooks
    if h.file is None or (h.forward_step is None and h.loss is None):
        return None
    return HooksPlan(file=h.file, forward_step=h.forward_step, loss=h.loss)


def _user_strings(spec: Spec) -> tuple[str, ...]:
    """Every string from the spec that the script contains, for the verify stage."""
    strings = [spec.run.name, spec.run.description, *spec.optimizer.decay_mask.exclude]
    strings += [source.prefix for source in spec.data.sources] if spec.data.kind == "indexed" else []
    hooks = _hooks_plan(spec)
    named = [
        spec.run.output_dir,
        spec.checkpoint.dir,
        spec.init.checkpoint.path if spec.init.checkpoint is not None else None,
        *((hooks.file, hooks.forward_step, hooks.loss) if hooks is not None else ()),
    ]
    strings += [value for value in named if value is not None]
    return tuple(s for s in strings if s)


def _summary(spec: Spec) -> tuple[str, ...]:
    m = spec.model
    p = spec.parallel
    counts = explain.parameter_counts(spec)
    groups = m.num_query_groups or m.num_attention_heads
    attention = "multi-head" if groups == m.num_attention_heads else f"grouped-query, {groups} groups"
    layout = [f"tensor {p.tensor}", f"pipeline {p.pipeline}"]
    if p.virtual_pipeline:
        layout.append(f"virtual pipeline {p.virtual_pipeline}")
    if p.context > 1:
        layout.append(f"context {p.context}")
    if p.expert > 1:
        layout.append(f"expert {p.expert}")
    layout.append(f"data {data_parallel(spec)}")
    backend = "gloo" if spec.launch.device == "cpu" else "nccl"
    micro = spec.batch.micro_batch_size
    microbatches = derive.microbatches(spec)
    return (
        f"Model: GPT, {m.num_layers} layers, hidden {m.hidden_size}, {m.num_attention_heads} heads ({attention}), "
        f"{m.activation}, {m.normalization}, {m.position_embedding} positions, sequence {m.seq_length}, "
        f"vocab {m.vocab_size}; {explain.human_count(counts.total)} parameters.",
        f"Layout: {world_size(spec)} processes on {spec.launch.nodes} node(s), {spec.launch.device} ({backend}): "
        + ", ".join(layout)
        + ".",
        f"Training: {spec.train.iters} steps of {spec.batch.global_batch_size} sequences "
        f"({microbatches} microbatches of {micro} per data-parallel rank), {spec.data.kind} data, "
        f"{spec.optimizer.name} ({spec.optimizer.semantics} semantics) at lr {spec.optimizer.lr:g} "
        f"({_schedule_name(spec)} schedule), "
        f"{spec.precision.dtype}.",
    )


def _schedule_name(spec: Spec) -> str:
    s = spec.scheduler
    if s.style == "maxtext" and s.maxtext is not None:
        return f"MaxText {s.maxtext.kind}"
    if s.style == "optax":
        return "optax"
    return s.decay


def lower(spec: Spec, target: Target) -> Plan:
    """Resolve every value the generated script needs. Pure: no I/O."""
    sections = [
        *_run_sections(spec, target),
        _parallel_section(spec),
        _batch_section(spec),
        _model_section(spec),
        _precision_section(spec),
        _train_section(spec),
        *_optimizer_sections(spec),
        _data_section(spec, target),
        *[section for section in (_init_checkpoint_section(spec),) if section is not None],
        _output_section(spec, target),
    ]
    regenerate = f"bridgec compile {shlex.quote(target.spec_path)} -o {shlex.quote(target.output_name)}"
    return Plan(
        header=Header(
            version=__version__,
            spec_path=target.spec_path,
            spec_sha256=target.spec_sha256,
            regenerate=regenerate,
        ),
        run_name=spec.run.name,
        description=spec.run.description,
        launch_command=launch_command(spec, target.output_name),
        bridgec_launch_command=bridgec_launch_command(spec, target.output_name),
        summary=_summary(spec),
        device=spec.launch.device,
        sections=tuple(sections),
        model=_model_plan(spec),
        schedule=_schedule_plan(spec),
        optimizer=spec.optimizer.name,
        optax_semantics=spec.optimizer.semantics == "optax",
        loss_source=_loss_source(spec),
        needs_unwrap=(
            spec.hooks.forward_step is None
            or spec.model.query_scaling == "initial_weights"
            or spec.init.checkpoint is not None
        ),
        data_kind=spec.data.kind,
        per_token_loss=spec.loss.reduction == "per_token",
        virtual_pipeline=spec.parallel.virtual_pipeline is not None,
        pipeline=spec.parallel.pipeline > 1,
        context_parallel=spec.parallel.context > 1,
        dtype=spec.precision.dtype,
        fp8=spec.precision.fp8,
        checkpointing=spec.checkpoint.dir is not None,
        init_checkpoint=spec.init.checkpoint is not None,
        init_optimizer_state=spec.init.checkpoint is not None and spec.init.checkpoint.optimizer_state,
        evaluation=spec.train.eval_interval is not None,
        hooks=_hooks_plan(spec),
        user_strings=_user_strings(spec),
    )
