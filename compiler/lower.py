"""Lower a validated Spec to a Plan: resolve defaults, derive numbers, keep their arithmetic.

This is the one place derived values are computed. Each derived constant
carries the arithmetic that produced it, which the script prints as a comment
(``NUM_MICROBATCHES = 2  # global 8 / (micro 2 x data 2)``). Lowering assumes
validation passed (divisibility holds); it never rewrites a value the user set.
"""

from __future__ import annotations

import math
import shlex
from pathlib import PurePosixPath
from typing import assert_never

import attrs

from bridgec.compiler import choices as c
from bridgec.compiler import derive, explain
from bridgec.compiler.derive import data_parallel, padded_vocab, world_size
from bridgec.compiler.lower_distill import distill_plan, distill_section, teacher_section, teacher_spec
from bridgec.compiler.lower_main import (
    adam,
    imports,
    init_checkpoint_plan,
    megatron_schedule,
    schedule_function,
    step_plan,
)
from bridgec.compiler.lower_model import (
    LOSS_SCALE_SKIPS,
    MAXTEXT_WSD,
    SCORES_SCALED,
    WSD,
    Choices,
    choices_of,
    data_source,
    forward_plan,
    indexed,
    maxtext_loss,
    model_plan,
    optax_semantics,
)
from bridgec.compiler.mesh import lower_mesh
from bridgec.compiler.plan import Constant, Header, Plan, Section, Value
from bridgec.compiler.render import py_literal
from bridgec.compiler.spec import Spec
from bridgec.compiler.version import __version__
from bridgec.runtime.models import lora


@attrs.frozen(kw_only=True)
class TokenizerInfo:
    """What an indexed dataset's tokenizer sidecar (prefix.json) says."""

    name: str
    vocab_size: int
    eod: int
    origin: str = "the dataset's tokenizer file"
    """Where the facts come from, for EOD_TOKEN's comment."""


@attrs.frozen(kw_only=True)
class Target:
    """Where the script goes, relative to where the spec is; everything lower needs besides the Spec."""

    spec_sha256: str
    spec_path: str
    """The spec relative to the output file's folder, '/'-separated."""
    output_name: str
    """The output file's name (run.py)."""
    tokenizer: TokenizerInfo | None = None
    overrides: tuple[str, ...] = ()
    """The command-line overrides (key=value, as typed) applied to the spec."""
    ejected: bool = False
    """``bridgec eject``: the script is handed over to its user (no generated-file header)."""


def _c(name: str, value: Value, why: str | None = None, *, text: bool = False) -> Constant:
    return Constant(name=name, value=value, why=why, from_spec_text=text)


def _embedding_multiplier(spec: Spec) -> tuple[Constant, ...]:
    m = spec.model
    if m.embedding_multiplier == 1.0:
        return ()
    root = math.sqrt(m.hidden_size)
    why = f"sqrt(hidden {m.hidden_size}) = {root!r}" if math.isclose(m.embedding_multiplier, root) else None
    return (_c("EMBEDDING_MULTIPLIER", m.embedding_multiplier, why),)


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
    return (
        f"bridgec launch {script}" if spec.launch.nodes == 1 else f"bridgec launch {script} {_torchrun_options(spec)}"
    )


def _run_sections(spec: Spec, target: Target) -> list[Section]:
    world = world_size(spec)
    launch = spec.launch
    return [
        Section(
            title="Run",
            constants=(
                _c("RUN_NAME", spec.run.name, text=True),
                _c("SEED", spec.run.seed),
                _c(
                    "BRIDGEC_VERSION",
                    __version__,
                    "the bridgec that generated this script: start() refuses another runtime",
                ),
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
        _c("TIE_EMBEDDINGS", m.tie_embeddings),
        *_embedding_multiplier(spec),
        _c("NORM_EPSILON", m.norm_epsilon),
        _c("DROPOUT", m.dropout),
        _c("INIT_METHOD_STD", m.init_method_std),
    ]
    position = c.choice(c.PositionEmbedding, m.position_embedding)
    match position:
        case c.PositionEmbedding.ROPE:
            constants.append(_c("ROTARY_BASE", m.rotary_base))
            if m.rope_scaling_factor is not None:
                constants.append(_c("ROPE_SCALING_FACTOR", m.rope_scaling_factor))
        case c.PositionEmbedding.LEARNED:
            pass
        case _:
            assert_never(position)
    if m.num_experts is not None:
        constants += [_c("NUM_EXPERTS", m.num_experts), _c("MOE_ROUTER_TOPK", m.moe_router_topk)]
    counts = explain.parameter_counts(spec)
    output = f" + output {counts.output}" if counts.output else " (output tied to the embedding)"
    constants.append(
        _c(
            "NUM_PARAMETERS",
            counts.total,
            f"embedding {counts.embedding} + layers {m.num_layers} x "
            f"{counts.per_layer} + final norm {counts.final_norm}{output}",
        )
    )
    if spec.init.checkpoint is not None:
        constants.append(_c("INIT_SCHEME", "megatron", "[init.checkpoint] overwrites every weight"))
    else:
        constants.append(_c("INIT_SCHEME", c.choice(c.InitScheme, spec.init.scheme).value))
    return Section(title="Model", constants=tuple(constants))


def _peft_section(spec: Spec) -> Section | None:
    peft = spec.peft
    if peft is None:
        return None
    # The runtime takes the names (runtime.peft); choice() refuses a value no enum member has.
    method = c.choice(c.PeftMethod, peft.method).value
    init_a, init_b = c.choice(c.PeftInitA, peft.init_a).value, c.choice(c.PeftInitB, peft.init_b).value
    config = derive.gpt_config(spec)
    selected, _ = lora.select(config, peft.target_modules)
    trainable = explain.trainable_parameters(spec) or 0
    total = explain.parameter_counts(spec).total
    constants = [
        _c("PEFT_METHOD", method),
        _c("PEFT_TARGETS", peft.target_modules, f"{len(selected)} adapted linears over {config.num_layers} layers"),
        _c("PEFT_RANK", peft.rank),
        _c("PEFT_SCALING", peft.alpha / peft.rank, f"alpha {peft.alpha:g} / rank {peft.rank}"),
        _c("PEFT_DROPOUT", peft.dropout),
        _c("PEFT_INIT_A", init_a),
        _c("PEFT_INIT_B", init_b),
        _c(
            "TRAINABLE_PARAMETERS",
            trainable,
            f"the adapters only: {100 * trainable / total:.3g}% of the {total:,} frozen base parameters",
        ),
    ]
    if peft.adapter is not None:
        constants.append(_c("PEFT_ADAPTER", peft.adapter, "a Hugging Face PEFT adapter folder", text=True))
    return Section(
        title="Parameter-efficient fine-tuning (base weights frozen; only the adapters train)",
        constants=tuple(constants),
    )


def _teacher_checkpoint_section(spec: Spec) -> Section:
    """The teacher's weights, as [init.checkpoint] constants of the teacher lowered as a student."""
    section = _init_checkpoint_section(teacher_spec(spec))
    assert section is not None  # [distill.teacher.checkpoint] is required
    return section


def _init_checkpoint_section(spec: Spec) -> Section | None:
    init = spec.init.checkpoint
    if init is None:
        return None
    title = "Initial weights from a checkpoint (paths relative to the spec's folder)"
    fmt = c.choice(c.CheckpointFormat, init.format)
    match fmt:
        case c.CheckpointFormat.HUGGINGFACE:
            return Section(title=title, constants=(_c("INIT_CHECKPOINT", init.path, text=True),))
        case c.CheckpointFormat.MEGATRON:
            why = (
                "Megatron-LM's torch_dist save folder or a bridgec [checkpoint] dir (its latest), or one iter_* folder"
            )
            return Section(title=title, constants=(_c("INIT_CHECKPOINT", init.path, why, text=True),))
        case c.CheckpointFormat.ORBAX:
            pass
        case _:
            assert_never(fmt)
    m = spec.model
    # A LayerNorm model reads MaxText's gpt3 checkpoints (validate_interop), whose query kernel is not pre-scaled.
    gpt3 = m.normalization == "layernorm"
    undo = SCORES_SCALED[c.choice(c.QueryScaling, m.query_scaling)] and not m.qk_layernorm and not gpt3
    constants = [
        _c("INIT_CHECKPOINT", init.path, text=True),
        _c(
            "INIT_QUERY_SCALING",
            "undo" if undo else "keep",
            "MaxText pre-scales the query kernel by 1/sqrt(head_dim); megatron scales attention scores, so undo it"
            if undo
            else "MaxText's gpt3 divides queries by sqrt(head_dim) at run time: the query kernel stays as stored"
            if gpt3
            else f'model.query_scaling = "{m.query_scaling}": the query kernel stays as stored',
        ),
        _c("INIT_ROPE_LAYOUT", c.choice(c.RopeLayout, init.rope_layout).value),
        _c("INIT_PARAM_SCAN_AXIS", init.param_scan_axis),
    ]
    if init.optimizer_state:
        constants.append(_c("INIT_OPTIMIZER_TYPE", c.choice(c.AdamStateKind, init.optimizer_type).value))
    return Section(title=title, constants=tuple(constants))


def _precision_section(spec: Spec, ch: Choices) -> Section:
    constants = [_c("DTYPE", ch.dtype.value)]
    if ch.fp8 is not None:
        constants.append(_c("FP8_RECIPE", ch.fp8.value))
    return Section(title="Precision", constants=tuple(constants))


def _run_kind(spec: Spec) -> str:
    """The header's name for the run: a fine-tune says where its weights come from and what starts fresh."""
    mode = c.choice(c.TrainMode, spec.train.mode)
    match mode:
        case c.TrainMode.PRETRAIN:
            return "Training"
        case c.TrainMode.FINETUNE:
            # The mode changes no constant: [init.checkpoint] loads the weights, and the optimizer state and
            # schedule start at step 0 because validation refuses optimizer_state with it.
            return (
                "Fine-tuning (weights from [init.checkpoint]; optimizer state and schedule fresh at step 0; "
                "a resume reads [checkpoint] dir, never the pretrained weights)"
            )
        case _:
            assert_never(mode)


def _train_section(spec: Spec) -> Section:
    t = spec.train
    constants = [_c("TRAIN_ITERS", t.iters), _c("LOG_INTERVAL", t.log_interval)]
    if t.eval_interval is not None:
        constants += [_c("EVAL_INTERVAL", t.eval_interval), _c("EVAL_ITERS", t.eval_iters)]
    if t.exit_interval is not None:
        constants.append(_c("EXIT_INTERVAL", t.exit_interval))
    if t.exit_duration_minutes is not None:
        constants.append(_c("EXIT_DURATION_MINUTES", t.exit_duration_minutes))
    constants.append(_c("ON_NONFINITE", c.choice(c.NonFinitePolicy, t.on_nonfinite).value))
    return Section(title="Training loop", constants=tuple(constants))


def _clip_epsilon(ch: Choices) -> Constant:
    match ch.semantics:
        case c.OptimizerSemantics.OPTAX:
            return _c("CLIP_EPSILON", 0.0, "optax.clip_by_global_norm: coefficient = clip_grad / norm")
        case c.OptimizerSemantics.MEGATRON:
            return _c("CLIP_EPSILON", 1e-6, "megatron-core: coefficient = clip_grad / (norm + 1e-6)")
        case _:
            assert_never(ch.semantics)


def _optimizer_sections(spec: Spec, ch: Choices) -> list[Section]:
    o = spec.optimizer
    optimizer = [_c("LR", o.lr)]
    if megatron_schedule(ch):
        optimizer.append(_c("MIN_LR", o.min_lr))
    optimizer.append(_c("WEIGHT_DECAY", o.weight_decay))
    if adam(ch):
        optimizer += [_c("ADAM_BETA1", o.betas[0]), _c("ADAM_BETA2", o.betas[1]), _c("ADAM_EPS", o.eps)]
    else:
        optimizer.append(_c("SGD_MOMENTUM", o.sgd_momentum))
    if optax_semantics(ch):
        mask = o.decay_mask
        optimizer += [
            _c("ADAM_EPS_ROOT", o.eps_root),
            _c("DECAY_EXCLUDE", tuple(mask.exclude), text=True),
            _c("DECAY_MASK_PATHS", c.choice(c.DecayMaskPaths, mask.paths).value),
            _c("DECAY_MASK_SCAN_LAYERS", mask.scan_layers),
        ]
    optimizer += [_c("CLIP_GRAD", o.clip_grad), _clip_epsilon(ch)]
    return [Section(title="Optimizer", constants=tuple(optimizer)), _schedule_section(spec, ch)]


def _schedule_section(spec: Spec, ch: Choices) -> Section:
    s = spec.scheduler
    match ch.scheduler:
        case c.SchedulerStyle.MAXTEXT:
            return _maxtext_schedule_section(spec)
        case c.SchedulerStyle.OPTAX:
            return Section(
                title="Learning-rate schedule: the [[scheduler.optax]] pieces in learning_rate_schedule()", constants=()
            )
        case c.SchedulerStyle.MEGATRON:
            pass
        case _:
            assert_never(ch.scheduler)
    decay_iters = s.decay_iters if s.decay_iters is not None else spec.train.iters
    schedule = [
        _c("LR_WARMUP_ITERS", s.warmup_iters),
        _c("LR_WARMUP_INIT", s.warmup_init_lr),
        _c("LR_DECAY_STYLE", ch.decay.value),
        (
            _c("LR_DECAY_ITERS", decay_iters)
            if s.decay_iters is not None
            else _c("LR_DECAY_ITERS", decay_iters, f"default: train.iters {spec.train.iters}")
        ),
    ]
    if WSD[ch.decay]:
        schedule += [
            _c("LR_WSD_DECAY_ITERS", s.wsd_decay_iters),
            _c("LR_WSD_DECAY_STYLE", c.choice(c.WsdDecayStyle, s.wsd_decay_style).value),
        ]
    return Section(title="Learning-rate schedule (in optimizer steps)", constants=tuple(schedule))


def _maxtext_schedule_section(spec: Spec) -> Section:
    m = spec.scheduler.maxtext
    assert m is not None, "validation requires [scheduler.maxtext] with style = maxtext"
    steps = (
        _c("MAXTEXT_SCHEDULE_STEPS", m.schedule_steps)
        if m.schedule_steps is not None
        else _c("MAXTEXT_SCHEDULE_STEPS", spec.train.iters, f"default: train.iters {spec.train.iters}")
    )
    constants = [
        _c("MAXTEXT_SCHEDULE_VARIANT", c.choice(c.MaxTextScheduleVariant, m.variant).value),
        steps,
        _c("MAXTEXT_WARMUP_STEPS_FRACTION", m.warmup_steps_fraction),
        _c("MAXTEXT_FINAL_FRACTION", m.final_fraction),
    ]
    if MAXTEXT_WSD[c.choice(c.MaxTextScheduleKind, m.kind)]:
        constants += [
            _c("MAXTEXT_WSD_DECAY_STEPS_FRACTION", m.wsd_decay_steps_fraction),
            _c("MAXTEXT_WSD_DECAY_STYLE", c.choice(c.MaxTextWsdDecayStyle, m.wsd_decay_style).value),
        ]
    return Section(
        title=f"Learning-rate schedule (MaxText's {m.kind}, read at the pre-increment update count)",
        constants=tuple(constants),
    )


def _eod_token(spec: Spec, ch: Choices, target: Target) -> Constant:
    d = spec.data
    if d.eod_token is not None:
        return _c("EOD_TOKEN", d.eod_token)
    if d.tokenizer is not None:
        assert target.tokenizer is not None, "validation requires data.tokenizer to be readable"
        return _c("EOD_TOKEN", target.tokenizer.eod, f"from {target.tokenizer.origin} ({target.tokenizer.name})")
    match ch.data:
        case c.DataKind.INDEXED | c.DataKind.SFT:
            assert target.tokenizer is not None, "validation requires eod_token or the dataset's tokenizer file"
            return _c("EOD_TOKEN", target.tokenizer.eod, f"from the dataset's tokenizer file ({target.tokenizer.name})")
        case c.DataKind.MOCK:
            return _c(
                "EOD_TOKEN", spec.model.vocab_size - 1, f"default for mock data: vocab {spec.model.vocab_size} - 1"
            )
        case _:
            assert_never(ch.data)


def _data_section(spec: Spec, ch: Choices, target: Target) -> Section:
    d = spec.data
    g = spec.batch.global_batch_size
    t = spec.train
    constants = []
    if indexed(ch):
        constants += [
            _c("DATA_PREFIXES", tuple(source.prefix for source in d.sources), text=True),
            _c("DATA_WEIGHTS", tuple(source.weight for source in d.sources)),
            _c("DATA_SPLIT", tuple(float(part) for part in d.split)),
        ]
    constants.append(_eod_token(spec, ch, target))
    constants.append(_c("EOD_MASK_LOSS", d.eod_mask_loss))
    if d.document_masking:
        constants.append(
            _c(
                "DOCUMENT_MASKING",
                True,
                "positions restart after each EOD_TOKEN; attention stays inside a document (block-diagonal mask)",
            )
        )
    if d.packing:
        constants.append(
            _c(
                "SFT_PACKING",
                True,
                "samples packed first-fit-decreasing into each sequence; positions restart and attention stays "
                "inside a sample",
            )
        )
    if derive.thd_packing(spec):
        constants.append(
            _c(
                "PACKED_ATTENTION",
                "thd",
                "Transformer Engine keeps packed samples apart by their offsets (cu_seqlens, THD format), not a mask",
            )
        )
    constants.append(_c("TRAIN_SAMPLES", t.iters * g, f"train.iters {t.iters} x global {g}"))
    if t.eval_interval is not None:
        windows = derive.validation_windows(spec)
        count = (
            f"{windows} evaluation{'s' if windows > 1 else ''} (iters {t.iters} // eval_interval {t.eval_interval})"
            if derive.evaluations(spec) == windows
            else f"1 evaluation (at least one; iters {t.iters} < eval_interval {t.eval_interval})"
        )
        constants.append(
            _c(
                "VALID_SAMPLES",
                windows * t.eval_iters * g,
                f"{count} x eval_iters {t.eval_iters} x global {g}; each reads the next ones",
            )
        )
    else:
        constants.append(_c("VALID_SAMPLES", 0, "no evaluation"))
    if maxtext_loss(spec):
        constants += [
            _c("Z_LOSS_MULTIPLIER", spec.loss.z_loss_multiplier),
            _c("LOGITS_MULTIPLIER", spec.model.logits_multiplier),
        ]
    return Section(title="Data and loss", constants=tuple(constants))


def _output_dir(spec: Spec) -> str:
    return spec.run.output_dir if spec.run.output_dir is not None else f"out/{spec.run.name}"


def _output_section(spec: Spec, target: Target) -> Section:
    output = _output_dir(spec)
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
        _c(
            "METRICS_FILE",
            f"{stem}.metrics.jsonl",
            "in OUTPUT_DIR, named after the spec: specs sharing the folder keep their own",
        ),
        _c(
            "LAST_EXIT_FILE",
            f"{stem}.last_exit.json",
            "in OUTPUT_DIR: how the latest launch ended (code, reason, step)",
        ),
    ]
    c = spec.checkpoint
    if c.dir is not None:
        constants += [
            _c("CHECKPOINT_DIR", c.dir, text=True),
            _c("SAVE_INTERVAL", c.save_interval),
            _c("RESUME", c.resume),
            _c("KEEP_LAST", c.keep_last),
            _c(
                "ASYNC_SAVE",
                c.async_save,
                "written in the background; published once every rank's write finished" if c.async_save else None,
            ),
            _c("OVERWRITE_CHECKPOINTS", c.overwrite),
        ]
    return Section(title="Outputs (paths relative to the spec's folder)", constants=tuple(constants))


def _logging_section(spec: Spec, ch: Choices) -> Section:
    g = spec.logging
    f = explain.flops(spec)
    precision = "fp8" if ch.fp8 is not None else ch.dtype.value
    constants = [
        _c("LOG_LEVEL", c.choice(c.LogLevel, g.level).value),
        _c("PARAMS_NORM", g.params_norm),
        _c(
            "TRAIN_FLOPS_PER_TOKEN",
            f.train_per_token,
            f"3 x (2 x {f.matmul_params_per_token:,} matmul parameters + {f.attention_per_token:,} attention): "
            "bridgec explain's, for TFLOP/s and MFU",
        ),
        _c("MFU_PRECISION", precision, "the peak-table column: fp8 with precision.fp8, else precision.dtype"),
        (
            _c("PEAK_TFLOPS", g.peak_tflops)
            if g.peak_tflops is not None
            else Constant(name="PEAK_TFLOPS", value=None, why="default: the table's peak for the GPU; none on the CPU")
        ),
    ]
    if g.tensorboard is not None:
        constants.append(_c("TENSORBOARD_DIR", g.tensorboard.dir, text=True))
    if g.wandb is not None:
        w = g.wandb
        constants += [
            _c("WANDB_PROJECT", w.project, text=True),
            _c("WANDB_ENTITY", w.entity, text=True),
            _c("WANDB_RUN_NAME", w.name, text=True)
            if w.name is not None
            else _c("WANDB_RUN_NAME", None, "default: run.name"),
            _c("WANDB_TAGS", w.tags, text=True),
            _c("WANDB_MODE", c.choice(c.WandbMode, w.mode).value, "WANDB_MODE in the environment wins"),
        ]
    if g.mlflow is not None:
        m = g.mlflow
        constants += [
            _c("MLFLOW_TRACKING_URI", m.tracking_uri, text=True),
            _c("MLFLOW_EXPERIMENT", m.experiment, text=True)
            if m.experiment is not None
            else _c("MLFLOW_EXPERIMENT", None, "default: run.name"),
            _c("MLFLOW_RUN_NAME", m.run_name, text=True)
            if m.run_name is not None
            else _c("MLFLOW_RUN_NAME", None, "default: run.name"),
        ]
    return Section(title="Logging", constants=tuple(constants))


def _callbacks_section(spec: Spec) -> Section | None:
    if not spec.hooks.callbacks:
        return None
    return Section(
        title="Callbacks (file:class, files relative to the spec's folder; called in this order on every rank)",
        constants=(_c("CALLBACKS", spec.hooks.callbacks, text=True),),
    )


def _profile_section(spec: Spec) -> Section | None:
    p = spec.profile
    if p is None:
        return None
    default_dir = f"{_output_dir(spec)}/profile"
    return Section(
        title="Profile (PyTorch profiler; steps are 1-based)",
        constants=(
            _c("PROFILE_START_STEP", p.start_step),
            _c("PROFILE_END_STEP", p.end_step),
            _c("PROFILE_RANKS", p.ranks),
            (
                _c("PROFILE_DIR", p.dir, text=True)
                if p.dir is not None
                else Constant(
                    name="PROFILE_DIR", value=default_dir, why="default: <output_dir>/profile", from_spec_text=True
                )
            ),
            _c("PROFILE_MEMORY_SNAPSHOT", p.memory_snapshot),
            _c("PROFILE_NVTX", p.nvtx),
        ),
    )


def _user_strings(spec: Spec) -> tuple[str, ...]:
    """Every string from the spec that the script contains, for the verify stage."""
    strings = [spec.run.name, spec.run.description, *spec.optimizer.decay_mask.exclude]
    strings += list(spec.peft.target_modules) if spec.peft is not None else []
    strings += [source.prefix for source in spec.data.sources]  # validation allows sources with indexed data only
    h = spec.hooks
    hooks = (h.file, h.forward_step, h.loss) if h.file is not None else ()
    named = [
        spec.run.output_dir,
        spec.checkpoint.dir,
        spec.init.checkpoint.path if spec.init.checkpoint is not None else None,
        spec.peft.adapter if spec.peft is not None else None,
        spec.distill.teacher.checkpoint.path if spec.distill is not None else None,
        *hooks,
        *h.callbacks,
    ]
    strings += [value for value in named if value is not None]
    g = spec.logging
    if g.tensorboard is not None:
        strings.append(g.tensorboard.dir)
    if g.wandb is not None:
        strings += [g.wandb.project, g.wandb.entity or "", g.wandb.name or "", *g.wandb.tags]
    if g.mlflow is not None:
        strings += [g.mlflow.tracking_uri, g.mlflow.experiment or "", g.mlflow.run_name or ""]
    if spec.profile is not None and spec.profile.dir is not None:
        strings.append(spec.profile.dir)
    return tuple(s for s in strings if s)


BACKEND = c.table(c.Device, {c.Device.CPU: "gloo", c.Device.CUDA: "nccl"})


def _summary(spec: Spec, ch: Choices) -> tuple[str, ...]:
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
    micro = spec.batch.micro_batch_size
    microbatches = derive.microbatches(spec)
    return (
        f"Model: GPT, {m.num_layers} layers, hidden {m.hidden_size}, {m.num_attention_heads} heads ({attention}), "
        f"{m.activation}, {m.normalization}, {m.position_embedding} positions, sequence {m.seq_length}, "
        f"vocab {m.vocab_size}; {explain.human_count(counts.total)} parameters.",
        f"Layout: {world_size(spec)} processes on {spec.launch.nodes} node(s), {spec.launch.device} "
        f"({BACKEND[ch.device]}): " + ", ".join(layout) + ".",
        _run_kind(spec) + f": {spec.train.iters} steps of {spec.batch.global_batch_size} sequences "
        f"({microbatches} microbatches of {micro} per data-parallel rank), {spec.data.kind} data, "
        f"{spec.optimizer.name} ({spec.optimizer.semantics} semantics) at lr {spec.optimizer.lr:g} "
        f"({_schedule_name(spec, ch)} schedule), "
        f"{spec.precision.dtype}.",
    )


def _schedule_name(spec: Spec, ch: Choices) -> str:
    match ch.scheduler:
        case c.SchedulerStyle.MAXTEXT:
            assert ch.maxtext_kind is not None
            return f"MaxText {ch.maxtext_kind.value}"
        case c.SchedulerStyle.OPTAX:
            return "optax"
        case c.SchedulerStyle.MEGATRON:
            return ch.decay.value
        case _:
            assert_never(ch.scheduler)


REDUCTION_WORDS = c.table(
    c.Reduction,
    {
        c.Reduction.PER_TOKEN: "summed over the global batch's real tokens and divided once by their count",
        c.Reduction.PER_MICROBATCH: "each microbatch's mean, averaged over microbatches and data-parallel ranks",
    },
)

NONFINITE_WORDS = c.table(
    c.NonFinitePolicy,
    {
        c.NonFinitePolicy.SKIP: "skips the update (counted in the metrics; weights and optimizer state untouched)",
        c.NonFinitePolicy.STOP: "stops the run after saving the last good state (exit 7)",
    },
)


def _step(spec: Spec, ch: Choices) -> tuple[str, ...]:
    """What one training step does, in order, for the script's docstring."""
    o = spec.optimizer
    overflow = " (fp16: a loss-scale overflow skips it too)" if LOSS_SCALE_SKIPS[ch.dtype] else ""
    clip = (
        f"4. Clip: gradients scaled by min(1, clip_grad {o.clip_grad:g} / (norm + CLIP_EPSILON))."
        if o.clip_grad > 0
        else "4. No clipping (clip_grad = 0)."
    )
    output = spec.run.output_dir if spec.run.output_dir is not None else f"out/{spec.run.name}"
    return (
        f"1. Forward and backward over {derive.microbatches(spec)} microbatches of {spec.batch.micro_batch_size} "
        f"sequences on each data-parallel rank; the loss is {REDUCTION_WORDS[ch.reduction]}.{_distill_words(spec)}",
        "2. The global gradient norm, over every rank's gradients.",
        f"3. A non-finite loss or gradient norm {NONFINITE_WORDS[c.choice(c.NonFinitePolicy, spec.train.on_nonfinite)]}"
        f"{overflow}.",
        clip,
        f"5. The optimizer step: {o.name} ({o.semantics} semantics).",
        f"6. The learning-rate schedule ({_schedule_name(spec, ch)}) advances one update.",
        f"Every step's loss, gradient norm, learning rate and timing go to OUTPUT_DIR/METRICS_FILE ({output}/, "
        f"relative to the spec's folder); every LOG_INTERVAL ({spec.train.log_interval}) steps a line is printed.",
    )


def _distill_words(spec: Spec) -> str:
    d = spec.distill
    if d is None:
        return ""
    t = d.teacher
    lm = "" if d.skip_lm_loss else " + the cross entropy"
    where = (
        ""
        if spec.parallel.pipeline == 1
        else (
            f", whole on the last pipeline stage alone ({explain.human_count(explain.teacher_rank_parameters(spec))} "
            "parameters on each of its ranks)"
        )
    )
    return (
        f" Distillation: a frozen teacher ({t.num_layers} layers, hidden {t.hidden_size}, "
        f"{explain.human_count(explain.parameter_counts(teacher_spec(spec)).total)} parameters) runs forward only on "
        f"each microbatch{where}; the loss is kd_loss_scale {d.kd_loss_scale:g} x T^2 KL(teacher || student) at "
        f"temperature T = {d.temperature:g}{lm}{_layer_words(spec)}."
    )


def _layer_words(spec: Spec) -> str:
    """[[distill.layers]]: each pair's scaled hidden-state loss, as the header states the total."""
    assert spec.distill is not None
    return "".join(
        f" + {pair.scale:g} x {pair.loss} loss of the student's layer {pair.student} to the teacher's {pair.teacher}"
        for pair in spec.distill.layers
    )


def _spec_dir(target: Target) -> str:
    folder = target.spec_path.rpartition("/")[0]
    if folder:
        return f"(HERE / {py_literal(folder)}).resolve()  # paths in the spec are relative to its folder"
    return "HERE  # paths in the spec are relative to its folder"


def regenerate_command(target: Target) -> str:
    """The command that regenerates the script (and its job file), run from the script's folder."""
    return shlex.join(["bridgec", "compile", target.spec_path, "-o", target.output_name, *target.overrides])


def lower(spec: Spec, target: Target) -> Plan:
    """Resolve every value the generated script needs. Pure: no I/O."""
    ch = choices_of(spec)
    teacher = teacher_section(spec, _model_section(teacher_spec(spec))) if spec.distill is not None else None
    sections = [
        *_run_sections(spec, target),
        _parallel_section(spec),
        _batch_section(spec),
        _model_section(spec),
        _precision_section(spec, ch),
        _train_section(spec),
        *_optimizer_sections(spec, ch),
        _data_section(spec, ch, target),
        *[section for section in (_init_checkpoint_section(spec),) if section is not None],
        *[section for section in (_peft_section(spec),) if section is not None],
        *([distill_section(spec, _teacher_checkpoint_section(spec)), teacher] if teacher is not None else []),
        _output_section(spec, target),
        _logging_section(spec, ch),
        *[section for section in (_callbacks_section(spec), _profile_section(spec)) if section is not None],
    ]
    regenerate = regenerate_command(target)
    schedule, schedule_docstring = schedule_function(spec, ch)
    data_docstring, source = data_source(spec, ch)
    forward = forward_plan(spec, ch)
    main = step_plan(spec, ch)
    return Plan(
        header=Header(
            version=__version__,
            spec_path=target.spec_path,
            spec_sha256=target.spec_sha256,
            regenerate=regenerate,
            overrides=target.overrides,
            ejected=target.ejected,
        ),
        run_name=spec.run.name,
        description=spec.run.description,
        launch_command=launch_command(spec, target.output_name),
        bridgec_launch_command=bridgec_launch_command(spec, target.output_name),
        summary=_summary(spec, ch),
        step=_step(spec, ch),
        imports=imports(spec, ch, schedule=schedule, forward=forward, main=main),
        silence_device=ch.device.value,
        spec_dir=_spec_dir(target),
        sections=tuple(section for section in sections if section.constants),
        model=model_plan(spec, ch),
        data_docstring=data_docstring,
        data_source=source,
        document_masking=spec.data.document_masking,
        forward=forward,
        schedule_function=schedule,
        schedule_docstring=schedule_docstring,
        init_checkpoint=init_checkpoint_plan(spec, ch),
        distill=distill_plan(spec, teacher) if teacher is not None else None,
        main=main,
        user_strings=_user_strings(spec),
    )
