"""Lower a Spec to the script's start(), build(), main(), schedule function and imports.

The imports are collected from the same decisions (:func:`imports`), as sqlc
computes its imports in code rather than in its templates. See
:mod:`bridgec.compiler.lower_model` for the choices every decision starts from.
"""

from __future__ import annotations

from collections import defaultdict
from typing import assert_never

from bridgec.compiler import choices as c
from bridgec.compiler import derive
from bridgec.compiler.choices import choice
from bridgec.compiler.lower_distill import teacher_spec
from bridgec.compiler.lower_model import (
    Choices,
    LossSource,
    activation_function,
    arg,
    choices_of,
    layer_spec_function,
    local_zero_centered,
    names,
    scaled_embeddings,
    sdpa_attention,
)
from bridgec.compiler.plan import (
    Argument,
    Call,
    Code,
    ForwardPlan,
    Import,
    Imports,
    InitCheckpointPlan,
    Items,
    StepPlan,
)
from bridgec.compiler.spec import OptaxSchedulePiece, Spec

# --------------------------------------------------------------------------------------------
# The learning-rate schedule function (MaxText's and optax's styles).

OPTAX_PIECES = c.table(
    c.OptaxScheduleKind,
    {
        c.OptaxScheduleKind.CONSTANT: ("constant_schedule", ("value",)),
        c.OptaxScheduleKind.LINEAR: (
            "linear_schedule",
            ("init_value", "end_value", "transition_steps", "transition_begin"),
        ),
        c.OptaxScheduleKind.COSINE_DECAY: ("cosine_decay_schedule", ("init_value", "decay_steps", "alpha", "exponent")),
        c.OptaxScheduleKind.WARMUP_COSINE_DECAY: (
            "warmup_cosine_decay_schedule",
            ("init_value", "peak_value", "warmup_steps", "decay_steps", "end_value", "exponent"),
        ),
    },
)
"""Each [[scheduler.optax]] kind: bridgec.runtime.schedules' function and the piece's fields it takes."""


def _optax_piece(piece: OptaxSchedulePiece) -> Call:
    function, keys = OPTAX_PIECES[choice(c.OptaxScheduleKind, piece.kind)]
    values = {key: getattr(piece, key) for key in keys}
    if "end_value" in values and values["end_value"] is None:
        values["end_value"] = 0.0  # optax's default
    return Call(function=function, arguments=tuple(arg(key, values[key]) for key in keys))


def schedule_function(spec: Spec, ch: Choices) -> tuple[Call | None, str]:
    """learning_rate_schedule()'s return and docstring; None for megatron's own scheduler."""
    s = spec.scheduler
    match ch.scheduler:
        case c.SchedulerStyle.MEGATRON:
            return None, ""
        case c.SchedulerStyle.MAXTEXT:
            assert s.maxtext is not None and ch.maxtext_kind is not None, "validation requires [scheduler.maxtext]"
            match ch.maxtext_kind:
                case c.MaxTextScheduleKind.WSD:
                    wsd = names(
                        ("wsd_decay_steps_fraction", "MAXTEXT_WSD_DECAY_STEPS_FRACTION"),
                        ("wsd_decay_style", "MAXTEXT_WSD_DECAY_STYLE"),
                    )
                case c.MaxTextScheduleKind.COSINE:
                    wsd = ()
                case _:
                    assert_never(ch.maxtext_kind)
            return Call(
                function="maxtext_schedule",
                arguments=(
                    arg("kind", ch.maxtext_kind.value),
                    *names(
                        ("learning_rate", "LR"),
                        ("final_fraction", "MAXTEXT_FINAL_FRACTION"),
                        ("warmup_steps_fraction", "MAXTEXT_WARMUP_STEPS_FRACTION"),
                        ("schedule_steps", "MAXTEXT_SCHEDULE_STEPS"),
                        ("steps", "TRAIN_ITERS"),
                    ),
                    *wsd,
                    *names(("variant", "MAXTEXT_SCHEDULE_VARIANT")),
                ),
            ), "MaxText's create_learning_rate_schedule: the learning rate of update k (0-based count)."
        case c.SchedulerStyle.OPTAX:
            doc = "The [[scheduler.optax]] pieces: the learning rate of update k (optax's count, read before it increments)."
            pieces = tuple(_optax_piece(piece) for piece in s.optax)
            if len(pieces) == 1:
                return pieces[0], doc
            boundaries = tuple(piece.boundary for piece in s.optax[:-1] if piece.boundary is not None)
            return Call(
                function="join_schedules",
                arguments=(
                    arg(None, Items(items=pieces)),
                    arg(None, boundaries, "update counts at which the next piece takes over"),
                ),
            ), doc
        case _:
            assert_never(ch.scheduler)


# --------------------------------------------------------------------------------------------
# start(), build(), main().


def _optimizer(spec: Spec, ch: Choices) -> tuple[tuple[str, ...], Call]:
    match ch.semantics:
        case c.OptimizerSemantics.OPTAX:
            return (
                "optax.adamw exactly: eps_root inside the square root, decay = lr x weight_decay x parameter where",
                "the MaxText-style mask keeps it, learning rate of update k read at count k.",
            ), Call(
                function="build_optax_optimizer",
                arguments=(
                    arg(None, Code(text="model")),
                    *names(
                        ("lr", "LR"),
                        ("beta1", "ADAM_BETA1"),
                        ("beta2", "ADAM_BETA2"),
                        ("eps", "ADAM_EPS"),
                        ("eps_root", "ADAM_EPS_ROOT"),
                        ("weight_decay", "WEIGHT_DECAY"),
                        ("decay_exclude", "DECAY_EXCLUDE"),
                    ),
                    arg("gated_mlp", derive.gated_mlp(spec)),
                    *names(
                        ("scan_layers", "DECAY_MASK_SCAN_LAYERS"),
                        ("tied_output", "TIE_EMBEDDINGS"),
                        ("path_style", "DECAY_MASK_PATHS"),
                        ("dtype", "DTYPE"),
                        ("distributed_optimizer", "DISTRIBUTED_OPTIMIZER"),
                    ),
                ),
            )
        case c.OptimizerSemantics.MEGATRON:
            match ch.optimizer:
                case c.OptimizerName.ADAM:
                    rule = "Adam(beta1=ADAM_BETA1, beta2=ADAM_BETA2, eps=ADAM_EPS)"
                case c.OptimizerName.SGD:
                    rule = "Sgd(momentum=SGD_MOMENTUM)"
                case _:
                    assert_never(ch.optimizer)
            settings = Call(
                function="OptimizerSettings",
                arguments=(
                    arg("rule", Code(text=rule)),
                    *names(("lr", "LR")),
                    *(names(("min_lr", "MIN_LR")) if megatron_schedule(ch) else ()),
                    *names(
                        ("weight_decay", "WEIGHT_DECAY"),
                        ("dtype", "DTYPE"),
                        ("distributed_optimizer", "DISTRIBUTED_OPTIMIZER"),
                    ),
                    *_optimizer_offload(spec),
                ),
            )
            return (), Call(function="build_optimizer", arguments=(arg(None, Code(text="model")), arg(None, settings)))
        case _:
            assert_never(ch.semantics)


def _optimizer_offload(spec: Spec) -> tuple[Argument, ...]:
    o = spec.offload
    if not o.optimizer:
        return ()
    fraction = 1.0 if o.optimizer_fraction is None else o.optimizer_fraction
    return (arg("cpu_offload_fraction", fraction, "[offload] optimizer: HybridDeviceOptimizer"),)


def overlapped(spec: Spec) -> bool:
    """Some DistributedDataParallelConfig field of [overlap] (or FP8 parameter gathers) differs from megatron's."""
    o = spec.overlap
    return o.grad_reduce or o.param_gather or o.bucket_size is not None or spec.precision.fp8_param_gather


def _overlap_argument(spec: Spec) -> tuple[Argument, ...]:
    if not overlapped(spec):
        return ()
    o = spec.overlap
    fields = (
        ("grad_reduce", o.grad_reduce, False),
        ("param_gather", o.param_gather, False),
        ("align_param_gather", o.align_param_gather, False),
        ("bucket_size", o.bucket_size, None),
        ("fp8_param_gather", spec.precision.fp8_param_gather, False),
    )
    chosen = tuple(arg(name, value) for name, value, default in fields if value != default)
    return (arg("overlap", Call(function="Overlap", arguments=chosen), "[overlap]: DistributedDataParallelConfig"),)


def adam(ch: Choices) -> bool:
    """Adam's hyper-parameters exist (and its moments can be imported)."""
    match ch.optimizer:
        case c.OptimizerName.ADAM:
            return True
        case c.OptimizerName.SGD:
            return False
        case _:
            assert_never(ch.optimizer)


def megatron_schedule(ch: Choices) -> bool:
    match ch.scheduler:
        case c.SchedulerStyle.MEGATRON:
            return True
        case c.SchedulerStyle.MAXTEXT | c.SchedulerStyle.OPTAX:
            return False
        case _:
            assert_never(ch.scheduler)


def _scheduler(ch: Choices) -> Call:
    if not megatron_schedule(ch):
        return Call(
            function="CountScheduler",
            arguments=(
                arg(None, Code(text="optimizer")),
                arg(None, Code(text="learning_rate_schedule()")),
                *names(("weight_decay", "WEIGHT_DECAY")),
            ),
        )
    match ch.decay:
        case c.Decay.WSD:
            wsd = names(("wsd_decay_iters", "LR_WSD_DECAY_ITERS"), ("wsd_decay_style", "LR_WSD_DECAY_STYLE"))
        case c.Decay.CONSTANT | c.Decay.LINEAR | c.Decay.COSINE:
            wsd = ()
        case _:
            assert_never(ch.decay)
    schedule = Call(
        function="ScheduleSettings",
        arguments=(
            *names(
                ("warmup_iters", "LR_WARMUP_ITERS"),
                ("warmup_init_lr", "LR_WARMUP_INIT"),
                ("decay", "LR_DECAY_STYLE"),
                ("decay_iters", "LR_DECAY_ITERS"),
            ),
            *wsd,
        ),
    )
    return Call(
        function="build_scheduler",
        arguments=(
            arg(None, Code(text="optimizer")),
            *names(("lr", "LR"), ("min_lr", "MIN_LR"), ("weight_decay", "WEIGHT_DECAY")),
            arg("schedule", schedule),
        ),
    )


def _start_lines(ch: Choices) -> tuple[str, ...]:
    match ch.device:
        case c.Device.CPU:
            return ("cpu_compat.apply()  # answer megatron-core's hard-coded CUDA calls on the CPU",)
        case c.Device.CUDA:
            return ()
        case _:
            assert_never(ch.device)


def _after_model(ch: Choices) -> tuple[str, ...]:
    match ch.query_scaling:
        case c.QueryScaling.INITIAL_WEIGHTS:
            return (
                "# MaxText folds 1/sqrt(head_dim) into the query kernel's initial weights (softmax_scale is 1).",
                "scale_query_rows(",
                "    [unwrap(chunk) for chunk in model],",
                "    HEAD_DIM**-0.5,",
                "    num_attention_heads=NUM_ATTENTION_HEADS,",
                "    num_query_groups=NUM_QUERY_GROUPS,",
                "    head_dim=HEAD_DIM,",
                ")",
            )
        case c.QueryScaling.ATTENTION | c.QueryScaling.NONE:
            return ()
        case _:
            assert_never(ch.query_scaling)


def _adapters(spec: Spec) -> tuple[Argument, ...]:
    if spec.peft is None:
        return ()
    settings = Call(
        function="AdapterSettings",
        arguments=names(
            ("method", "PEFT_METHOD"),
            ("targets", "PEFT_TARGETS"),
            ("rank", "PEFT_RANK"),
            ("scaling", "PEFT_SCALING"),
            ("dropout", "PEFT_DROPOUT"),
            ("init_a", "PEFT_INIT_A"),
            ("init_b", "PEFT_INIT_B"),
        ),
    )
    return (arg("adapters", settings),)


def _peft_after_load(spec: Spec) -> tuple[str, ...]:
    """[peft] after the base weights are in: the adapters from a PEFT folder, or DoRA's magnitudes from the weights."""
    if spec.peft is None:
        return ()
    if spec.peft.adapter is not None:
        return (
            "# The adapters from a Hugging Face PEFT folder (checked against this model's adapters first).",
            "load_hf_adapter(",
            "    [unwrap(chunk) for chunk in built.model],",
            "    path=SPEC_DIR / PEFT_ADAPTER,",
            "    tensor_parallel=TENSOR_PARALLEL,",
            "    tensor_rank=built.layout.tensor_rank,",
            "    optimizer=built.optimizer,",
            ")",
        )
    method = c.choice(c.PeftMethod, spec.peft.method)
    match method:
        case c.PeftMethod.DORA:
            return (
                "# DoRA's magnitudes start as the loaded base weights' row norms.",
                "reset_magnitudes([unwrap(chunk) for chunk in built.model], built.optimizer)",
            )
        case c.PeftMethod.LORA:
            return ()
        case _:
            assert_never(method)


def _checkpointer(spec: Spec) -> tuple[Argument, ...]:
    if spec.checkpoint.dir is None:
        return ()
    return (
        arg(
            "checkpointer",
            Call(
                function="DistCheckpointer",
                arguments=(
                    arg("directory", Code(text="(SPEC_DIR / CHECKPOINT_DIR).resolve()")),
                    *names(
                        ("keep_last", "KEEP_LAST"),
                        ("model", "model"),
                        ("optimizer", "optimizer"),
                        ("scheduler", "scheduler"),
                        ("layout", "layout"),
                        ("spec_sha256", "identity.spec_sha256"),
                        ("script_sha256", "identity.script_sha256"),
                        ("spec_text", "identity.spec_text"),
                        ("async_save", "ASYNC_SAVE"),
                    ),
                    *(names(("adapters_only", "True")) if spec.peft is not None else ()),
                ),
            ),
        ),
    )


def _hook_load(ch: Choices) -> tuple[str, ...]:
    why = "  # the hooks file, before any work: a problem with it is a message, not a traceback"
    match ch.loss_source:
        case LossSource.HOOK_FORWARD_STEP:
            return ("forward_step.load()" + why,)
        case LossSource.HOOK_LOSS:
            return ("loss_function.load()" + why,)
        case LossSource.TOKEN | LossSource.MEAN | LossSource.MAXTEXT | LossSource.DISTILL:
            return ()
        case _:
            assert_never(ch.loss_source)


def _callback_load(spec: Spec) -> tuple[str, ...]:
    if not spec.hooks.callbacks:
        return ()
    why = "  # import the files and build the classes now: a problem is a message, not a traceback"
    return ("callbacks = load_callbacks(SPEC_DIR, CALLBACKS)" + why,)


def step_plan(spec: Spec, ch: Choices) -> StepPlan:
    checkpointing = spec.checkpoint.dir is not None
    evaluation = spec.train.eval_interval is not None
    optimizer_comment, optimizer = _optimizer(spec, ch)
    betas = names(("adam_betas", "(ADAM_BETA1, ADAM_BETA2)")) if adam(ch) else ()
    return StepPlan(
        start_lines=_start_lines(ch),
        initialize=Call(
            function="initialize",
            arguments=names(
                ("device", "DEVICE"),
                ("tensor", "TENSOR_PARALLEL"),
                ("pipeline", "PIPELINE_PARALLEL"),
                *((("virtual_pipeline", "VIRTUAL_PIPELINE"),) if spec.parallel.virtual_pipeline is not None else ()),
                ("context", "CONTEXT_PARALLEL"),
                ("expert", "EXPERT_PARALLEL"),
                ("seed", "SEED"),
                ("timeout_minutes", "TIMEOUT_MINUTES"),
            ),
        ),
        model=Call(
            function="build_model",
            arguments=(
                arg(None, Code(text="model_provider")),
                *names(
                    ("layout", "layout"),
                    ("init_scheme", "weights.init_scheme(INIT_SCHEME)"),
                    ("seed", "SEED"),
                    ("init_std", "INIT_METHOD_STD"),
                    ("num_layers", "NUM_LAYERS"),
                    ("tied_output", "TIE_EMBEDDINGS"),
                    ("dtype", "DTYPE"),
                    ("distributed_optimizer", "DISTRIBUTED_OPTIMIZER"),
                ),
                *(names(("num_experts", "NUM_EXPERTS")) if spec.model.num_experts is not None else ()),
                *_adapters(spec),
                *_overlap_argument(spec),
            ),
        ),
        after_model=_after_model(ch),
        optimizer_comment=optimizer_comment,
        optimizer=optimizer,
        scheduler=_scheduler(ch),
        built=Call(
            function="Built",
            arguments=(
                *names(
                    ("layout", "layout"),
                    ("model", "model"),
                    ("optimizer", "optimizer"),
                    ("scheduler", "scheduler"),
                    ("datasets", "datasets"),
                    ("identity", "identity"),
                ),
                *_checkpointer(spec),
                *names(("spec_dir", "SPEC_DIR")),
                arg(
                    "imports",
                    Call(
                        function="ImportFacts",
                        arguments=(
                            *names(("vocab_size", "VOCAB_SIZE"), ("global_batch_size", "GLOBAL_BATCH_SIZE")),
                            *betas,
                            *(
                                names(("hf_folder", "SPEC_DIR / INIT_CHECKPOINT"))
                                if ch.checkpoint_format is c.CheckpointFormat.HUGGINGFACE
                                else ()
                            ),
                        ),
                    ),
                ),
            ),
        ),
        hook_load=(*_hook_load(ch), *_callback_load(spec)),
        claim=Call(
            function="claim_outputs",
            arguments=(
                *names(("spec", "HERE / SPEC_FILE"), ("metrics", "SPEC_DIR / OUTPUT_DIR / METRICS_FILE")),
                *(
                    names(
                        ("checkpoint_dir", "(SPEC_DIR / CHECKPOINT_DIR).resolve()"),
                        ("resume", "RESUME"),
                        ("overwrite", "OVERWRITE_CHECKPOINTS"),
                    )
                    if checkpointing
                    else ()
                ),
            ),
        ),
        loop_settings=Call(
            function="LoopSettings",
            arguments=(
                *names(("iters", "TRAIN_ITERS"), ("log_interval", "LOG_INTERVAL")),
                *(names(("eval_interval", "EVAL_INTERVAL"), ("eval_iters", "EVAL_ITERS")) if evaluation else ()),
                *names(
                    ("global_batch_size", "GLOBAL_BATCH_SIZE"),
                    ("micro_batch_size", "MICRO_BATCH_SIZE"),
                    ("num_microbatches", "NUM_MICROBATCHES"),
                    ("seq_length", "SEQ_LENGTH"),
                    ("clip_grad", "CLIP_GRAD"),
                    ("clip_epsilon", "CLIP_EPSILON"),
                    ("on_nonfinite", "ON_NONFINITE"),
                ),
                *(names(("exit_interval", "EXIT_INTERVAL")) if spec.train.exit_interval is not None else ()),
                *(
                    names(("exit_duration_minutes", "EXIT_DURATION_MINUTES"))
                    if spec.train.exit_duration_minutes is not None
                    else ()
                ),
                *(names(("save_interval", "SAVE_INTERVAL")) if checkpointing else ()),
                *names(
                    ("metrics_path", "SPEC_DIR / OUTPUT_DIR / METRICS_FILE"),
                    ("spec_path", "HERE / SPEC_FILE"),
                    ("spec_sha256", "SPEC_SHA256"),
                    ("run_name", "RUN_NAME"),
                    ("parameters", "NUM_PARAMETERS"),
                    ("flops_per_token", "TRAIN_FLOPS_PER_TOKEN"),
                    ("precision", "MFU_PRECISION"),
                    ("peak_tflops", "PEAK_TFLOPS"),
                    ("log_level", "LOG_LEVEL"),
                    ("params_norm", "PARAMS_NORM"),
                ),
            ),
        ),
        train=Call(
            function="train",
            arguments=(
                arg(
                    None,
                    Code(
                        text="functools.partial(forward_step, teacher=teacher)"
                        if spec.distill is not None
                        else "forward_step"
                    ),
                ),
                *names(
                    ("model", "built.model"),
                    ("optimizer", "built.optimizer"),
                    ("scheduler", "built.scheduler"),
                    ("splits", "built.datasets()"),
                    ("layout", "layout"),
                    ("settings", "settings"),
                ),
                *(names(("checkpointer", "built.checkpointer"), ("resume", "RESUME")) if checkpointing else ()),
                *(names(("initial", "initial")) if spec.init.checkpoint is not None else ()),
                *_sinks(spec),
                *_profile(spec),
                *(names(("callbacks", "callbacks")) if spec.hooks.callbacks else ()),
            ),
        ),
    )


def _profile(spec: Spec) -> tuple[Argument, ...]:
    if spec.profile is None:
        return ()
    settings = Call(
        function="ProfileSettings",
        arguments=names(
            ("start_step", "PROFILE_START_STEP"),
            ("end_step", "PROFILE_END_STEP"),
            ("ranks", "PROFILE_RANKS"),
            ("dir", "(SPEC_DIR / PROFILE_DIR).resolve()"),
            ("memory_snapshot", "PROFILE_MEMORY_SNAPSHOT"),
            ("nvtx", "PROFILE_NVTX"),
        ),
    )
    return (arg("profile", settings),)


SINK_CLASSES = {
    "tensorboard": ("sinks.tensorboard", "TensorBoardSink"),
    "wandb": ("sinks.wandb", "WandbSink"),
    "mlflow": ("sinks.mlflow", "MlflowSink"),
}
"""Each [logging] sink table: the runtime module and class that write it."""


def _sinks(spec: Spec) -> tuple[Argument, ...]:
    g = spec.logging
    sinks: list[Call] = []
    if g.tensorboard is not None:
        sinks.append(
            Call(function="TensorBoardSink", arguments=names(("dir", "(SPEC_DIR / TENSORBOARD_DIR).resolve()")))
        )
    if g.wandb is not None:
        sinks.append(
            Call(
                function="WandbSink",
                arguments=names(
                    ("project", "WANDB_PROJECT"),
                    ("entity", "WANDB_ENTITY"),
                    ("run_name", "WANDB_RUN_NAME"),
                    ("tags", "WANDB_TAGS"),
                    ("mode", "WANDB_MODE"),
                ),
            )
        )
    if g.mlflow is not None:
        sinks.append(
            Call(
                function="MlflowSink",
                arguments=names(
                    ("tracking_uri", "MLFLOW_TRACKING_URI"),
                    ("experiment", "MLFLOW_EXPERIMENT"),
                    ("run_name", "MLFLOW_RUN_NAME"),
                ),
            )
        )
    return (arg("sinks", Items(items=tuple(sinks))),) if sinks else ()


_ORBAX_DOC = (
    "Initial weights from an Orbax checkpoint in MaxText's layout; where training starts.",
    "",
    "Each rank reads only the slices it holds. The optimizer already exists, so its",
    "fp32 main parameters are updated too.",
)
_ORBAX_LOAD = (
    "chunks = [unwrap(chunk) for chunk in built.model]",
    "checkpoint = {",
    '    "path": str(SPEC_DIR / INIT_CHECKPOINT),',
    '    "vocab_size": VOCAB_SIZE,',
    '    "tensor_parallel": TENSOR_PARALLEL,',
    '    "tensor_rank": built.layout.tensor_rank,',
    '    "query_scaling": INIT_QUERY_SCALING,',
    '    "rope_layout": INIT_ROPE_LAYOUT,',
    '    "param_scan_axis": INIT_PARAM_SCAN_AXIS,',
    "}",
    "load_maxtext_weights(chunks, optimizer=built.optimizer, **checkpoint)",
)
_ORBAX_EXPERTS = (
    "# An expert-parallel rank reads its own experts of each MoE layer (MaxText stacks them in one leaf).",
    'checkpoint["expert_parallel"] = EXPERT_PARALLEL',
    'checkpoint["expert_rank"] = built.layout.expert_rank',
)
_HF_DOC = (
    "Initial weights from a Hugging Face model folder (safetensors); training starts at step 0.",
    "",
    "Each rank reads only the slices it holds (its layers, its tensor-parallel part of each).",
    "The optimizer already exists, so its fp32 main parameters are updated too.",
)
_HF_LOAD = (
    "load_hf_weights(",
    "    [unwrap(chunk) for chunk in built.model],",
    "    path=str(SPEC_DIR / INIT_CHECKPOINT),",
    "    vocab_size=VOCAB_SIZE,  # the tokenizer's; megatron's padded rows start at zero",
    "    tensor_parallel=TENSOR_PARALLEL,",
    "    tensor_rank=built.layout.tensor_rank,",
    "    expert_parallel=EXPERT_PARALLEL,",
    "    expert_rank=built.layout.expert_rank,",
    "    optimizer=built.optimizer,",
    ")",
)


_MEGATRON_DOC = (
    "Initial weights from a Megatron-LM (or Megatron Bridge) torch_dist checkpoint; training starts at step 0.",
    "",
    "The checkpoint's args are compared with this model and every tensor with its",
    "index before anything is read; each rank reads only the slices it holds. The",
    "optimizer already exists, so its fp32 main parameters are updated too.",
)
_MEGATRON_LOAD = (
    "loaded = load_megatron_weights(built.model, built.optimizer, path=SPEC_DIR / INIT_CHECKPOINT)",
    "if built.layout.rank == 0:",
    '    print(f"init: weights from {loaded.folder} (saved at iteration {loaded.iteration})", flush=True)',
)


_MEGATRON_TRAINING_DOC = (
    "Weights, optimizer state, schedule and position from a Megatron-LM (or Megatron Bridge) torch_dist checkpoint.",
    "",
    "The checkpoint's args are compared with this model and every tensor with its index",
    "before anything is read; each rank reads only the slices it holds. Training continues",
    "at the checkpoint's iteration, with its Adam moments, fp32 main parameters, learning-rate",
    "schedule and consumed samples.",
)
_MEGATRON_TRAINING_LOAD = (
    "loaded = load_megatron_training_state(",
    "    built.model, built.optimizer, built.scheduler, path=SPEC_DIR / INIT_CHECKPOINT",
    ")",
    "if built.layout.rank == 0:",
    "    print(",
    '        f"init: weights and optimizer state from {loaded.folder} (continuing after iteration {loaded.step})",',
    "        flush=True,",
    "    )",
    "return Progress(",
    "    step=loaded.step,",
    "    consumed_samples=loaded.consumed_samples,",
    "    skipped_steps=0,",
    "    consumed_valid_samples=loaded.consumed_valid_samples,",
    ")",
)


def init_checkpoint_plan(spec: Spec, ch: Choices) -> InitCheckpointPlan | None:
    if spec.init.checkpoint is None or ch.checkpoint_format is None:
        return None
    match ch.checkpoint_format:
        case c.CheckpointFormat.ORBAX:
            docstring, load = _ORBAX_DOC, _ORBAX_LOAD
            if spec.model.num_experts is not None:
                load = (*load[:-1], *_ORBAX_EXPERTS, load[-1])
        case c.CheckpointFormat.HUGGINGFACE:
            docstring, load = _HF_DOC, _HF_LOAD
        case c.CheckpointFormat.MEGATRON if ch.optimizer_state:
            docstring, load = _MEGATRON_TRAINING_DOC, _MEGATRON_TRAINING_LOAD
        case c.CheckpointFormat.MEGATRON:
            docstring, load = _MEGATRON_DOC, _MEGATRON_LOAD
        case _:
            assert_never(ch.checkpoint_format)
    if ch.checkpoint_format is c.CheckpointFormat.MEGATRON and ch.optimizer_state:
        tail: tuple[str, ...] = ()  # the load returns the Progress itself
    elif ch.optimizer_state:
        tail = (
            "# Adam moments and the update count from opt_state: training continues at that update.",
            "imported_step = load_maxtext_optimizer_state(",
            "    chunks,",
            "    built.optimizer,",
            "    opt_type=INIT_OPTIMIZER_TYPE,",
            "    adam_beta1=ADAM_BETA1,",
            "    adam_beta2=ADAM_BETA2,",
            "    **checkpoint,",
            ")",
            "built.scheduler.step(increment=imported_step)",
            "return Progress(step=imported_step, consumed_samples=imported_step * GLOBAL_BATCH_SIZE, skipped_steps=0)",
        )
    else:
        tail = ("return Progress(step=0, consumed_samples=0, skipped_steps=0)",)
    if spec.checkpoint.dir is not None and spec.peft is not None:
        call: tuple[str, ...] = (
            "# Every start loads the frozen base: a [peft] checkpoint holds the adapters and their optimizer state only.",
            "initial = start_from_checkpoint(built)",
        )
    elif spec.checkpoint.dir is not None:
        call = (
            "initial = None",
            "if not (RESUME and built.checkpointer.has_checkpoint()):  # a resumed run takes everything from its "
            "own checkpoint",
            "    initial = start_from_checkpoint(built)",
        )
    else:
        call = ("initial = start_from_checkpoint(built)",)
    return InitCheckpointPlan(docstring=docstring, body=(*load, *_peft_after_load(spec), *tail), call=call)


# --------------------------------------------------------------------------------------------
# Imports: what the decisions above call.


def _init_checkpoint_imports(ch: Choices, need: dict[str, set[str]]) -> None:
    match ch.checkpoint_format:
        case c.CheckpointFormat.ORBAX:
            need["maxtext_import"].add("load_maxtext_weights")
            if ch.optimizer_state:
                need["maxtext_import"].add("load_maxtext_optimizer_state")
        case c.CheckpointFormat.HUGGINGFACE:
            need["hf_import"].add("load_hf_weights")
        case c.CheckpointFormat.MEGATRON:
            need["megatron_load"].add("load_megatron_training_state" if ch.optimizer_state else "load_megatron_weights")
        case None:
            pass
        case _:
            assert_never(ch.checkpoint_format)


def imports(spec: Spec, ch: Choices, *, schedule: Call | None, forward: ForwardPlan, main: StepPlan) -> Imports:
    """What the script calls, from the decisions taken: the forward step, start(), build() and the schedule."""
    standard = [Import(module="pathlib", names=("Path",))]
    if forward.hook is None:  # bridgec's forward_step binds its loss with functools.partial
        standard.insert(0, Import(module="functools"))
    libraries = [Import(module="torch")]
    # The models' own needs: the student's, and a distillation's teacher's (lowered as a student is).
    models = [(spec, ch)]
    if spec.distill is not None:
        as_student = teacher_spec(spec)
        models.append((as_student, choices_of(as_student)))
    activations = {activation_function(model_ch) for _, model_ch in models}
    if any(activation is not None and activation.startswith("F.") for activation in activations):
        libraries.append(Import(module="torch.nn.functional", alias="F"))
    layer_specs = tuple(sorted({layer_spec_function(model_ch) for _, model_ch in models}))
    libraries += [
        Import(module="megatron.core.distributed", names=("finalize_model_grads",)),
        Import(module="megatron.core.models.gpt", names=("GPTModel",)),
        Import(module="megatron.core.models.gpt.gpt_layer_specs", names=layer_specs),
        Import(module="megatron.core.transformer", names=("TransformerConfig",)),
    ]
    need: defaultdict[str, set[str]] = defaultdict(set)
    need["build"] |= {"Built", "CheckpointIdentity", "ImportFacts", "Weights"}
    need["checkpoint"] |= {"file_sha256", "spec_copy"}
    need["data"] |= {"Splits", "TokenIds", "build_splits", _data_class(ch)}
    need["entry"].add("run")
    need["errors"].add("RunEnd")
    need["loop"] |= {"LoopSettings", "train"}
    need["model"].add("build_model")
    need["outputs"].add("claim_outputs")
    need["parallel"] |= {"Layout", "check_launch", "initialize"}
    need["version"].add("require_runtime")
    if main.start_lines:  # the CPU shims
        need[""].add("cpu_compat")
    if spec.checkpoint.dir is not None:
        need["checkpoint"].add("DistCheckpointer")
    if "gelu_tanh" in activations:
        need["model"].add("gelu_tanh")
    if any(local_zero_centered(model_spec, model_ch) for model_spec, model_ch in models):
        need["norms"].add("zero_centered_block")
    if any(sdpa_attention(model_ch) for _, model_ch in models):
        need["attention"].add("sdpa_layer")
    if any(scaled_embeddings(model_spec) for model_spec, _ in models):
        need["norms"].add("scale_embeddings")
    if overlapped(spec):
        need["model"].add("Overlap")
    if forward.hook is None or main.after_model or spec.init.checkpoint is not None:
        need["model"].add("unwrap")  # bridgec's forward_step, the query scaling and the checkpoint import use it
    if main.after_model:
        need["init"].add("scale_query_rows")
    if spec.profile is not None:
        need["profile"].add("ProfileSettings")
    if spec.peft is not None:
        need["peft"].add("AdapterSettings")
        if spec.peft.adapter is not None:
            need["peft_hf"].add("load_hf_adapter")
        elif spec.peft.method == "dora" and spec.init.checkpoint is not None:
            need["peft"].add("reset_magnitudes")
    if spec.hooks.callbacks:
        need["callbacks"].add("load_callbacks")
    for sink in derive.sinks(spec):
        module, name = SINK_CLASSES[sink]
        need[module].add(name)
    _loss_imports(ch, need)
    if spec.init.checkpoint is not None:
        need["loop"].add("Progress")
        _init_checkpoint_imports(ch, need)
    if spec.distill is not None:  # the teacher's weights: the student's loader of that format
        teacher_ch = choices_of(teacher_spec(spec))
        _init_checkpoint_imports(teacher_ch, need)
        if teacher_ch.checkpoint_format is not c.CheckpointFormat.HUGGINGFACE:
            need["distill"].add("naming_the_teacher")
        if spec.distill.layers:  # [[distill.layers]]: hooks that catch the pairs' hidden states
            need["distill_layers"] |= {"HiddenStates", "capturing_layers", "layer_pairs"}
    _optimizer_imports(ch, need)
    if schedule is not None:
        need["schedules"] |= {"CountScheduler", "Schedule", schedule.function}
        for argument in schedule.arguments:
            if isinstance(argument.value, Items):
                need["schedules"] |= {item.function for item in argument.value.items if isinstance(item, Call)}
    runtime = [
        Import(module="bridgec.runtime" + (f".{module}" if module else ""), names=tuple(sorted(names)))
        for module, names in sorted(need.items())
    ]
    return Imports(standard=tuple(standard), libraries=tuple(libraries), runtime=tuple(runtime))


def _data_class(ch: Choices) -> str:
    match ch.data:
        case c.DataKind.MOCK:
            return "MockData"
        case c.DataKind.INDEXED:
            return "IndexedData"
        case c.DataKind.SFT:
            return "SftData"
        case _:
            assert_never(ch.data)


def _loss_imports(ch: Choices, need: defaultdict[str, set[str]]) -> None:
    match ch.loss_source:
        case LossSource.HOOK_FORWARD_STEP:
            need["hooks"].add("Hook")
            return
        case LossSource.HOOK_LOSS:
            need["hooks"] |= {"Hook", "checked_loss"}
        case LossSource.TOKEN:
            need["loss"].add("masked_token_loss")
        case LossSource.MEAN:
            need["loss"].add("masked_mean_loss")
        case LossSource.MAXTEXT:
            need["maxtext_loss"].add("maxtext_loss")
        case LossSource.DISTILL:
            need["distill"] |= {"distill_loss", "freeze_teacher"}
            need["model"].add("build_chunks")
        case _:
            assert_never(ch.loss_source)
    need["data"].add("next_batch")
    need["loop"].add("TrainState")


def _optimizer_imports(ch: Choices, need: defaultdict[str, set[str]]) -> None:
    match ch.semantics:
        case c.OptimizerSemantics.OPTAX:
            need["optax_optim"].add("build_optax_optimizer")
        case c.OptimizerSemantics.MEGATRON:
            need["optim"] |= {"OptimizerSettings", "build_optimizer", "Adam" if adam(ch) else "Sgd"}
        case _:
            assert_never(ch.semantics)
    if megatron_schedule(ch):
        need["optim"] |= {"ScheduleSettings", "build_scheduler"}
