"""Rules of [distill]: a teacher the student can learn from, on the student's parallel layout.

The teacher's own [model] keys are checked by the [model] rules themselves: each
layout rule runs on the spec with the teacher in the student's place, and what it
finds about the model is reported at ``distill.teacher``.
"""

from __future__ import annotations

from collections.abc import Iterator

import attrs

from bridgec.compiler import derive
from bridgec.compiler.errors import KeyPath, render_value
from bridgec.compiler.rule_base import Finding, NotLoaded, Rule, SpecContext
from bridgec.compiler.rules_files import rule_init_checkpoint_exists, rule_megatron_init_settings
from bridgec.compiler.rules_layout import LAYOUT_RULES
from bridgec.compiler.rules_training import rule_counts_at_least_one, rule_model_numbers
from bridgec.compiler.spec import Init, Spec, Teacher
from bridgec.compiler.validate_interop import rule_huggingface_checkpoint_keys, rule_init_checkpoint_model

TEACHER: KeyPath = ("distill", "teacher")


def rule_teacher_vocab(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    if spec.distill is None:
        return
    teacher, student = spec.distill.teacher.vocab_size, spec.model.vocab_size
    if teacher != student:
        yield Finding(
            about=((*TEACHER, "vocab_size"), ("model", "vocab_size")),
            message=(
                f"$.distill.teacher.vocab_size = {teacher} differs from the student's model.vocab_size = {student} "
                "(the KL loss compares the two distributions token by token over one vocabulary)"
            ),
            hint="distil from a teacher that shares the student's tokenizer",
        )
        return
    teacher_padded = derive.padded_vocab(_as_student(spec))
    student_padded = derive.padded_vocab(spec)
    if teacher_padded != student_padded:
        yield Finding(
            about=((*TEACHER, "make_vocab_size_divisible_by"), ("model", "make_vocab_size_divisible_by")),
            message=(
                f"the teacher's padded vocabulary {teacher_padded} (distill.teacher.make_vocab_size_divisible_by = "
                f"{spec.distill.teacher.make_vocab_size_divisible_by}) differs from the student's {student_padded} "
                f"(model.make_vocab_size_divisible_by = {spec.model.make_vocab_size_divisible_by}): the two "
                "logits must split alike over the tensor-parallel ranks"
            ),
            hint="give both the same make_vocab_size_divisible_by",
        )


def rule_teacher_sequence(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    if spec.distill is None:
        return
    teacher, student = spec.distill.teacher.seq_length, spec.model.seq_length
    if teacher < student:
        yield Finding(
            about=((*TEACHER, "seq_length"), ("model", "seq_length")),
            message=(
                f"$.distill.teacher.seq_length = {teacher} is shorter than the student's model.seq_length = "
                f"{student} (the teacher reads the student's sequences)"
            ),
            hint=f"seq_length = {student} under [distill.teacher]",
        )


def rule_teacher_layout(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    """The [model] rules, on the teacher with the student's parallel layout."""
    if spec.distill is None:
        return
    yield from (_at_teacher(finding) for finding in _model_findings(LAYOUT_RULES, spec, ctx))


VALUE_RULES: tuple[Rule, ...] = (rule_counts_at_least_one, rule_model_numbers)
"""The [model] rules of single values (counts at least 1, dropout in [0, 1), ...), which the teacher's keys obey too."""


def rule_teacher_values(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    """The [model] value rules, on the teacher's keys."""
    if spec.distill is None:
        return
    yield from (_renamed(finding) for finding in _model_findings(VALUE_RULES, spec, ctx))


def _model_findings(rules: tuple[Rule, ...], spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    """What ``rules`` find about [model] when the teacher is the model (the others are the student's own,
    reported once already)."""
    as_student = _as_student(spec)
    for rule in rules:
        try:
            findings = list(rule(as_student, ctx))
        except NotLoaded:
            continue
        yield from (finding for finding in findings if finding.about[0][0] == "model")


def rule_teacher_frozen_settings(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    """Keys of [model] that act on training or on drawn weights: the frozen, loaded teacher has neither."""
    if spec.distill is None:
        return
    teacher = spec.distill.teacher
    defaults = attrs.fields(Teacher)
    if teacher.dropout != defaults.dropout.default:
        yield Finding(
            about=((*TEACHER, "dropout"),),
            message=(
                f"$.distill.teacher.dropout = {render_value(teacher.dropout)} changes nothing: the frozen teacher "
                "runs in eval mode, where dropout never applies"
            ),
            hint="remove dropout from [distill.teacher]",
        )
    if teacher.init_method_std != defaults.init_method_std.default:
        yield Finding(
            about=((*TEACHER, "init_method_std"),),
            message=(
                f"$.distill.teacher.init_method_std = {render_value(teacher.init_method_std)} changes nothing: "
                "the teacher's weights are loaded from [distill.teacher.checkpoint], never drawn"
            ),
            hint="remove init_method_std from [distill.teacher]",
        )


def _as_student(spec: Spec) -> Spec:
    return derive.whole_teacher(spec)  # one pipeline stage: the teacher is never split into stages


def _at_teacher(finding: Finding) -> Finding:
    renamed = _renamed(finding)
    return attrs.evolve(renamed, message=f"{renamed.message} (the teacher runs on the student's layout)")


def _renamed(finding: Finding) -> Finding:
    """A finding about [model] said of [distill.teacher]."""
    about = tuple((*TEACHER, *path[1:]) if path[0] == "model" else path for path in finding.about)
    message = finding.message.replace("$.model.", "$.distill.teacher.").replace(" model.", " distill.teacher.")
    return attrs.evolve(finding, about=about, message=message)


CHECKPOINT_RULES: tuple[Rule, ...] = (
    rule_init_checkpoint_model,
    rule_huggingface_checkpoint_keys,
    rule_megatron_init_settings,
    rule_init_checkpoint_exists,
)
"""The [init.checkpoint] rules: the teacher's weights are read by the student's loaders, which need the same."""


def rule_teacher_checkpoint(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    """The [init.checkpoint] rules, on the teacher's checkpoint with the teacher as the model it loads into."""
    if spec.distill is None:
        return
    checkpoint = spec.distill.teacher.checkpoint
    if checkpoint.optimizer_state:
        yield Finding(
            about=((*TEACHER, "checkpoint", "optimizer_state"),),
            message="$.distill.teacher.checkpoint.optimizer_state = true, but the frozen teacher has no optimizer",
            hint="remove optimizer_state from [distill.teacher.checkpoint]",
        )
    weights_only = attrs.evolve(checkpoint, optimizer_state=False)  # reported above, once
    as_student = attrs.evolve(_as_student(spec), init=Init(checkpoint=weights_only))
    for rule in CHECKPOINT_RULES:
        try:
            findings = list(rule(as_student, ctx))
        except NotLoaded:
            continue
        yield from (_checkpoint_at_teacher(finding) for finding in findings)


_CHECKPOINT_WORDS = (
    ("$.init.checkpoint.", "$.distill.teacher.checkpoint."),
    ("[init.checkpoint]", "[distill.teacher.checkpoint]"),
    ("needs model ", "needs [distill.teacher] "),
    ("under [model]", "under [distill.teacher]"),
)
"""How an [init.checkpoint] rule's words about the student read when the rule ran on the teacher."""


def _checkpoint_at_teacher(finding: Finding) -> Finding:
    def moved(path: KeyPath) -> KeyPath:
        if path[:2] == ("init", "checkpoint"):
            return (*TEACHER, *path[1:])
        return (*TEACHER, *path[1:]) if path[0] == "model" else path

    message, hint = finding.message, finding.hint
    for student, teacher in _CHECKPOINT_WORDS:
        message = message.replace(student, teacher)
        hint = hint.replace(student, teacher)
    return attrs.evolve(finding, about=tuple(moved(path) for path in finding.about), message=message, hint=hint)


def rule_teacher_logits_multiplier(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    if spec.distill is None or spec.distill.teacher.logits_multiplier == 1.0:
        return
    yield Finding(
        about=((*TEACHER, "logits_multiplier"),),
        message=(
            f"$.distill.teacher.logits_multiplier = {spec.distill.teacher.logits_multiplier} is not built yet: the "
            "KL loss reads the teacher's logits as its output layer gives them"
        ),
        hint="remove logits_multiplier from [distill.teacher]",
    )


def rule_teacher_query_scaling(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    if spec.distill is None or spec.distill.teacher.query_scaling != "initial_weights":
        return
    yield Finding(
        about=((*TEACHER, "query_scaling"),),
        message=(
            '$.distill.teacher.query_scaling = "initial_weights" scales freshly drawn query weights, but the '
            "teacher's weights are loaded as stored"
        ),
        hint='query_scaling = "none" (the scores are not scaled; the loaded weights hold the scale)',
    )


def rule_distill_loss(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    """Distillation adds to bridgec's token-weighted cross entropy: the hooks and the other losses replace it."""
    if spec.distill is None:
        return
    others: list[tuple[KeyPath, str]] = []
    if spec.hooks.forward_step is not None:
        others.append((("hooks", "forward_step"), f"hooks.forward_step = {render_value(spec.hooks.forward_step)}"))
    if spec.hooks.loss is not None:
        others.append((("hooks", "loss"), f"hooks.loss = {render_value(spec.hooks.loss)}"))
    if spec.loss.reduction != "per_token":
        others.append((("loss", "reduction"), f"loss.reduction = {render_value(spec.loss.reduction)}"))
    if spec.loss.z_loss_multiplier != 0.0 or spec.model.logits_multiplier != 1.0:
        others.append((("loss", "z_loss_multiplier"), "MaxText's loss (z_loss_multiplier or logits_multiplier)"))
    for about, what in others:
        yield Finding(
            about=(about, ("distill",)),
            message=(
                f"[distill] adds its KL loss to bridgec's token-weighted cross entropy; {what} replaces that loss "
                "(not built together yet)"
            ),
            hint="remove one of the two",
        )


def rule_distill_values(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    if spec.distill is None:
        return
    if spec.distill.temperature <= 0:
        yield Finding(
            about=(("distill", "temperature"),),
            message=f"$.distill.temperature = {spec.distill.temperature} must be positive (logits are divided by it)",
            hint="temperature = 1.0 (the teacher's own distribution) or above to soften it",
        )
    if spec.distill.kd_loss_scale <= 0:
        yield Finding(
            about=(("distill", "kd_loss_scale"),),
            message=f"$.distill.kd_loss_scale = {spec.distill.kd_loss_scale} must be positive",
            hint="kd_loss_scale = 1.0, or remove [distill] to train on the cross entropy alone",
        )


def rule_distill_layer_width(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    if spec.distill is None or not spec.distill.layers:
        return
    student, teacher = spec.model.hidden_size, spec.distill.teacher.hidden_size
    if student != teacher:
        yield Finding(
            about=(("distill", "layers"), ("model", "hidden_size"), (*TEACHER, "hidden_size")),
            message=(
                f"[[distill.layers]] compares hidden states of the student's model.hidden_size = {student} with the "
                f"teacher's distill.teacher.hidden_size = {teacher}: a projection between the two widths is not built"
            ),
            hint="distil layers from a teacher of the student's hidden_size, or remove [[distill.layers]]",
        )


def rule_distill_layer_indices(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    if spec.distill is None:
        return
    for i, pair in enumerate(spec.distill.layers):
        for key, index, table, layers in (
            ("student", pair.student, "model", spec.model.num_layers),
            ("teacher", pair.teacher, "distill.teacher", spec.distill.teacher.num_layers),
        ):
            if not 0 <= index < layers:
                yield Finding(
                    about=(("distill", "layers", i, key),),
                    message=(
                        f"$.distill.layers[{i}].{key} = {index} is not a layer of the {key}: {table}.num_layers = "
                        f"{layers} (layers are 0-based)"
                    ),
                    hint=f"a layer from 0 to {layers - 1}",
                )
        if pair.scale <= 0:
            yield Finding(
                about=(("distill", "layers", i, "scale"),),
                message=f"$.distill.layers[{i}].scale = {pair.scale} must be positive",
                hint="scale = 1.0, or remove the entry",
            )


def rule_distill_layer_repeated(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    """Each pair's loss is logged under (student, teacher, loss): a second entry of the three would share its name."""
    if spec.distill is None:
        return
    first: dict[tuple[int, int, str], int] = {}
    for i, pair in enumerate(spec.distill.layers):
        key = (pair.student, pair.teacher, pair.loss)
        if key not in first:
            first[key] = i
            continue
        yield Finding(
            about=(("distill", "layers", i),),
            message=(
                f"$.distill.layers[{i}] repeats $.distill.layers[{first[key]}] (student = {pair.student}, teacher = "
                f"{pair.teacher}, loss = {render_value(pair.loss)}): each pair's loss is logged once, by those three"
            ),
            hint="keep one entry, its scale the sum of the two",
        )


def rule_distill_layer_stage(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    """Under pipeline parallelism the teacher runs on the last stage, beside the last model chunk's layers."""
    if spec.distill is None or spec.parallel.pipeline == 1:
        return
    pipeline, virtual = spec.parallel.pipeline, spec.parallel.virtual_pipeline or 1
    per_chunk = spec.model.num_layers // (pipeline * virtual)
    first, last = spec.model.num_layers - per_chunk, spec.model.num_layers - 1
    paired = f"layer {last}" if first == last else f"layers {first} to {last}"
    for i, pair in enumerate(spec.distill.layers):
        if first <= pair.student <= last or not 0 <= pair.student <= last:  # out of range: rule_distill_layer_indices
            continue
        chunk = pair.student // per_chunk  # megatron-core's interleaving: chunk c runs on stage c % pipeline
        if virtual > 1:
            at = f"in model chunk {chunk // pipeline} of pipeline stage {chunk % pipeline}"
            teacher = f"beside the last model chunk of the last stage ({pipeline - 1})"
        else:
            at, teacher = f"on pipeline stage {chunk}", f"on the last stage ({pipeline - 1})"
        yield Finding(
            about=(("distill", "layers", i, "student"), ("parallel", "pipeline")),
            message=(
                f"$.distill.layers[{i}].student = {pair.student} is {at}, but the teacher runs {teacher}, where "
                f"the pairs' states meet: only its {paired} can be paired"
            ),
            hint=f"student = {last}" if first == last else f"a student layer from {first} to {last}",
        )


def rule_distill_layer_parallel(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    """Activation recompute runs a layer's forward again; sequence parallelism shards its output over the tensor
    ranks: neither is built with layer pairs."""
    if spec.distill is None or not spec.distill.layers:
        return
    if spec.recompute.granularity == "full":
        yield Finding(
            about=(("distill", "layers"), ("recompute", "granularity")),
            message=(
                '[[distill.layers]] with recompute.granularity = "full" is not built: a recomputed layer runs its '
                "forward without a graph first, so its caught hidden states would carry no gradient"
            ),
            hint='remove [[distill.layers]], or use granularity = "selective" (it recomputes inside the layers)',
        )
    if spec.parallel.sequence_parallel:
        yield Finding(
            about=(("distill", "layers"), ("parallel", "sequence_parallel")),
            message=(
                "[[distill.layers]] with parallel.sequence_parallel = true is not built: the hidden states between "
                "layers are then split along the sequence over the tensor-parallel ranks"
            ),
            hint="remove one of the two",
        )


DISTILL_RULES: tuple[Rule, ...] = (
    rule_teacher_vocab,
    rule_teacher_sequence,
    rule_teacher_values,
    rule_teacher_frozen_settings,
    rule_teacher_layout,
    rule_teacher_checkpoint,
    rule_teacher_logits_multiplier,
    rule_teacher_query_scaling,
    rule_distill_loss,
    rule_distill_values,
    rule_distill_layer_width,
    rule_distill_layer_indices,
    rule_distill_layer_repeated,
    rule_distill_layer_stage,
    rule_distill_layer_parallel,
)
