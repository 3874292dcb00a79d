"""Lower [distill]: the teacher's model, lowered as the student's is, under TEACHER_* names.

The teacher is a second GPTModel of its own shape on the student's tensor,
context and data layout. Lowering it as if it were the student (the spec with
[distill.teacher] in [model]'s place) gives its constants and its two model
functions; renaming their constants TEACHER_* keeps the student's and the
teacher's apart in one script, while the layout's constants (TENSOR_PARALLEL,
...) stay shared.

The teacher is never split into pipeline stages: it is one chunk, whole (its
embedding, every layer and its output layer), and with parallel.pipeline > 1
it lives on the student's last stage alone, where the student's logits and the
loss are, reading the microbatch's tokens there (runtime.data.next_batch's
teacher_inputs). Its memory all sits on the last stage's ranks.
"""

from __future__ import annotations

from typing import assert_never

import attrs

from bridgec.compiler import choices as c
from bridgec.compiler import derive, explain
from bridgec.compiler.lower_model import arg, choices_of, model_plan, teacher_type
from bridgec.compiler.plan import Argument, Call, Code, Constant, DistillPlan, Items, ModelPlan, Section
from bridgec.compiler.spec import Init, Spec

TEACHER_ONLY_SKIPS = ("calculate_per_token_loss", "finalize_model_grads_func")
"""TransformerConfig arguments about the gradients: the teacher has none."""


def teacher_spec(spec: Spec) -> Spec:
    """derive.whole_teacher with the teacher's weights as [init.checkpoint]."""
    assert spec.distill is not None
    return attrs.evolve(derive.whole_teacher(spec), init=Init(checkpoint=spec.distill.teacher.checkpoint))


def teacher_section(spec: Spec, model_section: Section) -> Section:
    """The student's [model] constants of the teacher, renamed; the init scheme does not apply (weights load)."""
    unread = {"INIT_SCHEME", *_UNREAD_BY_LOADER[_format(spec)]}
    constants = tuple(
        attrs.evolve(constant, name=f"TEACHER_{constant.name}")
        for constant in model_section.constants
        if constant.name not in unread
    )
    return Section(title="Distillation's teacher ([distill.teacher], on the student's layout)", constants=constants)


def distill_section(spec: Spec, checkpoint: Section) -> Section:
    """[distill]'s constants, and the teacher's checkpoint ones: ``checkpoint`` is the [init.checkpoint] section
    of the teacher lowered as a student (INIT_CHECKPOINT, ...), its constants renamed TEACHER_*."""
    assert spec.distill is not None
    d = spec.distill
    return Section(
        title="Distillation (paths relative to the spec's folder)",
        constants=(
            Constant(name="KD_TEMPERATURE", value=d.temperature),
            Constant(name="KD_LOSS_SCALE", value=d.kd_loss_scale),
            Constant(name="SKIP_LM_LOSS", value=d.skip_lm_loss),
            *_layer_pairs(spec),
            *(
                attrs.evolve(constant, name=constant.name.replace("INIT_", "TEACHER_", 1))
                for constant in checkpoint.constants
            ),
        ),
    )


def _layer_pairs(spec: Spec) -> tuple[Constant, ...]:
    """[[distill.layers]] as rows of literals (runtime.distill_layers.layer_pairs reads them)."""
    assert spec.distill is not None
    if not spec.distill.layers:
        return ()
    rows = tuple(
        (pair.student, pair.teacher, c.choice(c.LayerLoss, pair.loss).value, pair.scale) for pair in spec.distill.layers
    )
    return (Constant(name="KD_LAYER_PAIRS", value=rows, why="(student layer, teacher layer, loss, scale), 0-based"),)


def distill_plan(spec: Spec, teacher_constants: Section) -> DistillPlan | None:
    if spec.distill is None:
        return None
    as_student = teacher_spec(spec)
    student_names = {constant.name.removeprefix("TEACHER_") for constant in teacher_constants.constants}
    renames = {name: f"TEACHER_{name}" for name in student_names}
    renames["transformer_config()"] = "teacher_transformer_config()"
    plan = model_plan(as_student, choices_of(as_student))
    config = Call(
        function=plan.config.function,
        arguments=tuple(a for a in plan.config.arguments if a.name not in TEACHER_ONLY_SKIPS),
    )
    if spec.parallel.pipeline > 1:
        config = Call(function=config.function, arguments=tuple(map(_whole, config.arguments)))
    model = ModelPlan(config=_renamed(config, renames), gpt=_renamed(plan.gpt, renames))
    return DistillPlan(model=model, build=_build(spec), teacher_type=teacher_type(spec))


def _whole(argument: Argument) -> Argument:
    """The teacher's config is one pipeline stage: megatron-core then builds all its layers in one chunk."""
    if argument.name != "pipeline_model_parallel_size":
        return argument
    return arg(argument.name, 1, "whole, on the student's last stage: PIPELINE_PARALLEL splits the student alone")


def _build(spec: Spec) -> tuple[str, ...]:
    """build_teacher()'s lines: build the one chunk, load its weights, freeze it (and, under pipeline
    parallelism, keep it on the last stage alone)."""
    assert spec.distill is not None
    if spec.parallel.pipeline == 1:
        return (_BUILD_CHUNKS, *_load(spec), _FREEZE)
    per_rank = explain.teacher_rank_parameters(spec)
    sliced = "" if spec.parallel.tensor == 1 else f", 1/{spec.parallel.tensor} of each split matrix"
    where = (
        f"# The teacher runs whole on the last pipeline stage, beside the student's output layer: "
        f"{per_rank:,} parameters",
        f"# on each of its ranks (all {spec.distill.teacher.num_layers} layers{sliced}); the other stages keep none "
        "of it.",
    )
    return (
        *where,
        "# Every rank builds and loads it: the loaders' checks stop every rank alike when the weights do not fit,",
        "# and a Megatron checkpoint's read is collective over all ranks. The stages before the last drop it.",
        _BUILD_WHOLE,
        *_load(spec),
        _FREEZE_LAST,
    )


def _format(spec: Spec) -> c.CheckpointFormat:
    assert spec.distill is not None
    return c.choice(c.CheckpointFormat, spec.distill.teacher.checkpoint.format)


_UNREAD_BY_LOADER: dict[c.CheckpointFormat, tuple[str, ...]] = {
    c.CheckpointFormat.HUGGINGFACE: (),
    c.CheckpointFormat.ORBAX: (),
    # The tokenizer's vocabulary: what the Hugging Face and Orbax loaders pad to megatron's; a Megatron checkpoint
    # holds the padded rows already (its args or manifest compared with TEACHER_PADDED_VOCAB_SIZE's model).
    c.CheckpointFormat.MEGATRON: ("VOCAB_SIZE",),
}
"""[model] constants of the teacher that nothing reads with that checkpoint format (the student's are read by
its data and metrics; the teacher's only by its loader)."""


def _load(spec: Spec) -> tuple[str, ...]:
    """build_teacher()'s load of the weights: the student's [init.checkpoint] loader of that format."""
    fmt = _format(spec)
    match fmt:
        case c.CheckpointFormat.HUGGINGFACE:
            return _HF_LOAD
        case c.CheckpointFormat.ORBAX if spec.distill is not None and spec.distill.teacher.num_experts is not None:
            return (*_ORBAX_LOAD[:10], *_ORBAX_EXPERTS, *_ORBAX_LOAD[10:])
        case c.CheckpointFormat.ORBAX:
            return _ORBAX_LOAD
        case c.CheckpointFormat.MEGATRON:
            return _MEGATRON_LOAD if spec.parallel.pipeline == 1 else _MEGATRON_LOAD_STAGES
        case _:
            assert_never(fmt)


_BUILD_CHUNKS = "chunks = build_chunks(teacher_model_provider, layout)  # one: the pipeline is one stage"
_FREEZE = "return freeze_teacher(chunks[0], layout=layout, dtype=DTYPE)"
_BUILD_WHOLE = "chunks = [teacher_model_provider(True, True)]  # whole: embedding, every layer, output layer"
_FREEZE_LAST = "return freeze_teacher(chunks[0], layout=layout, dtype=DTYPE) if layout.is_last_stage else None"
_HF_LOAD = (
    "load_hf_weights(",
    "    chunks,",
    "    path=str(SPEC_DIR / TEACHER_CHECKPOINT),",
    "    vocab_size=TEACHER_VOCAB_SIZE,",
    "    tensor_parallel=TENSOR_PARALLEL,",
    "    tensor_rank=layout.tensor_rank,",
    "    expert_parallel=EXPERT_PARALLEL,",
    "    expert_rank=layout.expert_rank,",
    '    model="the teacher",',
    '    table="[distill.teacher]",',
    ")",
    "if layout.rank == 0:",
    '    print(f"distill: teacher weights from {SPEC_DIR / TEACHER_CHECKPOINT}", flush=True)',
)
_ORBAX_LOAD = (
    "with naming_the_teacher():  # the Orbax loader's errors speak of 'this model'",
    "    load_maxtext_weights(",
    "        chunks,",
    "        path=str(SPEC_DIR / TEACHER_CHECKPOINT),",
    "        vocab_size=TEACHER_VOCAB_SIZE,",
    "        tensor_parallel=TENSOR_PARALLEL,",
    "        tensor_rank=layout.tensor_rank,",
    "        query_scaling=TEACHER_QUERY_SCALING,",
    "        rope_layout=TEACHER_ROPE_LAYOUT,",
    "        param_scan_axis=TEACHER_PARAM_SCAN_AXIS,",
    "    )",
    "if layout.rank == 0:",
    '    print(f"distill: teacher weights from {SPEC_DIR / TEACHER_CHECKPOINT}", flush=True)',
)
_ORBAX_EXPERTS = (
    "        # An expert-parallel rank reads its own experts of each MoE layer (MaxText stacks them in one leaf).",
    "        expert_parallel=EXPERT_PARALLEL,",
    "        expert_rank=layout.expert_rank,",
)
_MEGATRON_LOAD = (
    "with naming_the_teacher():  # the Megatron-LM loader's errors speak of 'this run'",
    "    loaded = load_megatron_weights(chunks, None, path=SPEC_DIR / TEACHER_CHECKPOINT)  # no optimizer",
    "if layout.rank == 0:",
    '    print(f"distill: teacher weights from {loaded.folder} (saved at iteration {loaded.iteration})", flush=True)',
)

_MEGATRON_LOAD_STAGES = (
    "with naming_the_teacher():  # the Megatron-LM loader's errors speak of 'this run'",
    "    # Each pipeline stage holds a copy while it loads: copies of stages past the first are replicas.",
    "    loaded = load_megatron_weights(",
    "        chunks, None, path=SPEC_DIR / TEACHER_CHECKPOINT, replica=layout.pipeline_rank",
    "    )  # no optimizer",
    *_MEGATRON_LOAD[2:],
)


def _renamed(call: Call, renames: dict[str, str]) -> Call:
    """``call`` with every Code that names a renamed constant (or function call) renamed, nested calls too."""
    return Call(function=call.function, arguments=tuple(_renamed_argument(a, renames) for a in call.arguments))


def _renamed_argument(argument: Argument, renames: dict[str, str]) -> Argument:
    value = argument.value
    if isinstance(value, Code):
        value = Code(text=renames.get(value.text, value.text))
    elif isinstance(value, Call):
        value = _renamed(value, renames)
    elif isinstance(value, Items):
        value = Items(
            items=tuple(
                _renamed(item, renames) if isinstance(item, Call) else Code(text=renames.get(item.text, item.text))
                for item in value.items
            )
        )
    return attrs.evolve(argument, value=value)
