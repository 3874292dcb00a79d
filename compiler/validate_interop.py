"""Validation rules for the JAX-interop settings: optax semantics, MaxText/optax schedules, the
MaxText loss and the model options MaxText's dense models need. (Mesh problems are reported
by ``mesh.resolve`` before validation, so every layout rule then runs on the resolved sizes.)

Same contract as ``validate.py``: small named rules returning findings, all
collected in :data:`INTEROP_RULES`, each tested by its exact message.
"""

from __future__ import annotations

from collections.abc import Iterator

from bridgec.compiler import derive
from bridgec.compiler.errors import render_value
from bridgec.compiler.rule_base import Finding, Rule, SpecContext
from bridgec.compiler.spec import DecayMask, OptaxSchedulePiece, Scheduler, Spec
from bridgec.runtime.decay_mask import DecayMaskError, UnmappedParameterError, decay_table
from bridgec.runtime.models import gpt


def rule_optax_semantics_needs_adam(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    if spec.optimizer.semantics == "optax" and spec.optimizer.name != "adam":
        yield Finding(
            about=(("optimizer", "semantics"), ("optimizer", "name")),
            message=f'$.optimizer.semantics = "optax" follows optax.adamw, but optimizer.name = '
            f'"{spec.optimizer.name}" (sgd has no optax semantics here)',
            hint='set name = "adam", or semantics = "megatron"',
        )


def rule_optax_semantics_schedule(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    if spec.optimizer.semantics == "optax" and spec.scheduler.style == "megatron":
        yield Finding(
            about=(("scheduler", "style"), ("optimizer", "semantics")),
            message='$.optimizer.semantics = "optax" reads the learning rate from an optax or MaxText '
            'schedule, but scheduler.style = "megatron"',
            hint='set style = "maxtext" with [scheduler.maxtext], or style = "optax" with '
            "[[scheduler.optax]] pieces (a constant piece for a fixed learning rate)",
        )


def rule_optax_only_settings(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    o = spec.optimizer
    if o.semantics == "optax":
        return
    if o.eps_root != 0.0:
        yield Finding(
            about=(("optimizer", "eps_root"),),
            message=f'$.optimizer.eps_root = {o.eps_root} applies to semantics = "optax" only '
            f"(megatron-core's Adam has no eps_root)",
            hint='set semantics = "optax" under [optimizer], or remove eps_root',
        )
    if o.decay_mask != DecayMask():
        yield Finding(
            about=(("optimizer", "decay_mask"),),
            message='[optimizer.decay_mask] applies to semantics = "optax" only (megatron semantics '
            "exclude biases and 1-D parameters from weight decay)",
            hint='set semantics = "optax" under [optimizer], or remove [optimizer.decay_mask]',
        )


def no_decay_table(spec: Spec) -> list:  # noqa: ANN201 - list[DecayDecision]
    """The decay decision of every parameter of this model under its decay mask (raises DecayMaskError)."""
    mask = spec.optimizer.decay_mask
    config = derive.gpt_config(spec)
    return decay_table(
        gpt.parameters(config), mask.exclude, config=config, scan_layers=mask.scan_layers, style=mask.paths
    )


def rule_decay_mask_applies(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    if spec.optimizer.semantics != "optax" or not spec.optimizer.decay_mask.exclude or spec.model.num_layers < 1:
        return
    try:
        no_decay_table(spec)
    except UnmappedParameterError as error:
        yield Finding(
            about=(("optimizer", "decay_mask", "exclude"),),
            message=f"$.optimizer.decay_mask.exclude cannot be applied to this model: {error}",
            hint="remove exclude (with no patterns every parameter decays, as with MaxText's adamw_mask = [])",
        )
    except (DecayMaskError, KeyError) as error:
        yield Finding(
            about=(("optimizer", "decay_mask", "exclude"),),
            message=f"$.optimizer.decay_mask.exclude cannot be applied to this model: {error}",
            hint="`bridgec explain` prints the MaxText path of every parameter; adjust the patterns",
        )


_MEGATRON_SCHEDULE = Scheduler()


def rule_schedule_style_tables(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    s = spec.scheduler
    if s.style == "maxtext" and s.maxtext is None:
        yield Finding(
            about=(("scheduler", "style"),),
            message='$.scheduler.style = "maxtext" needs a [scheduler.maxtext] table',
            hint='add [scheduler.maxtext] (kind = "cosine" or "wsd", warmup_steps_fraction, final_fraction)',
        )
    if s.style == "optax" and not s.optax:
        yield Finding(
            about=(("scheduler", "style"),),
            message='$.scheduler.style = "optax" needs [[scheduler.optax]] pieces',
            hint='add [[scheduler.optax]] with kind = "warmup_cosine_decay" (or linear, cosine_decay, constant)',
        )
    if s.style != "maxtext" and s.maxtext is not None:
        yield Finding(
            about=(("scheduler", "maxtext"), ("scheduler", "style")),
            message=f'[scheduler.maxtext] is only read with style = "maxtext", but style = "{s.style}"',
            hint='set style = "maxtext" under [scheduler], or remove [scheduler.maxtext]',
        )
    if s.style != "optax" and s.optax:
        yield Finding(
            about=(("scheduler", "optax"), ("scheduler", "style")),
            message=f'[[scheduler.optax]] pieces are only read with style = "optax", but style = "{s.style}"',
            hint='set style = "optax" under [scheduler], or remove the [[scheduler.optax]] tables',
        )
    if s.style != "megatron":
        megatron_keys = ("warmup_iters", "warmup_init_lr", "decay", "decay_iters", "wsd_decay_iters", "wsd_decay_style")
        changed = [k for k in megatron_keys if getattr(s, k) != getattr(_MEGATRON_SCHEDULE, k)]
        for key in changed:
            yield Finding(
                about=(("scheduler", key), ("scheduler", "style")),
                message=f'$.scheduler.{key} belongs to style = "megatron", but style = "{s.style}" '
                f"(it would be ignored)",
                hint=f"remove {key}, or describe the schedule in the {s.style} table",
            )


def rule_maxtext_schedule(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    table = spec.scheduler.maxtext
    if spec.scheduler.style != "maxtext" or table is None:
        return
    for key in ("warmup_steps_fraction", "final_fraction", "wsd_decay_steps_fraction"):
        value = getattr(table, key)
        if not 0.0 <= value <= 1.0:
            yield Finding(
                about=(("scheduler", "maxtext", key),),
                message=f"$.scheduler.maxtext.{key} = {value} is not a fraction between 0 and 1",
                hint=f"set {key} between 0 and 1",
            )
    if table.schedule_steps is not None and table.schedule_steps < 1:
        yield Finding(
            about=(("scheduler", "maxtext", "schedule_steps"),),
            message=f"$.scheduler.maxtext.schedule_steps = {table.schedule_steps} must be at least 1",
            hint="set schedule_steps >= 1, or remove it to use train.iters",
        )
    if table.kind == "wsd":
        total = table.warmup_steps_fraction + table.wsd_decay_steps_fraction
        if total > 1.0:
            yield Finding(
                about=(("scheduler", "maxtext", "wsd_decay_steps_fraction"),),
                message=f"Invalid WSD schedule: warmup_steps_fraction ({table.warmup_steps_fraction}) + "
                f"wsd_decay_steps_fraction ({table.wsd_decay_steps_fraction}) must not exceed 1.0. "
                f"Current sum: {total} (MaxText's check)",
                hint="lower warmup_steps_fraction or wsd_decay_steps_fraction",
            )
        if table.variant == "2025":
            yield Finding(
                about=(("scheduler", "maxtext", "variant"), ("scheduler", "maxtext", "kind")),
                message='$.scheduler.maxtext.variant = "2025": MaxText\'s 2025 schedule has no WSD',
                hint='use variant = "2026-01" or "2026-02" for wsd, or kind = "cosine"',
            )


_PIECE_FIELDS = {
    "constant": (("value",), ()),
    "linear": (("init_value", "end_value", "transition_steps"), ("transition_begin",)),
    "cosine_decay": (("init_value", "decay_steps"), ("alpha", "exponent")),
    "warmup_cosine_decay": (("init_value", "peak_value", "warmup_steps", "decay_steps"), ("end_value", "exponent")),
}
_PIECE_DEFAULTS = OptaxSchedulePiece(kind="constant")


def rule_optax_pieces(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    pieces = spec.scheduler.optax
    if spec.scheduler.style != "optax":
        return
    previous = 0
    for index, piece in enumerate(pieces):
        where = ("scheduler", "optax", index)
        required, optional = _PIECE_FIELDS[piece.kind]
        for key in required:
            if getattr(piece, key) is None:
                yield Finding(
                    about=(where + (key,), where),
                    message=f'$.scheduler.optax[{index}] (kind = "{piece.kind}") needs {key}',
                    hint=f"set {key} in that [[scheduler.optax]] table",
                )
        for key in (
            "value",
            "init_value",
            "end_value",
            "peak_value",
            "transition_steps",
            "transition_begin",
            "warmup_steps",
            "decay_steps",
            "alpha",
            "exponent",
        ):
            if key not in required + optional and getattr(piece, key) != getattr(_PIECE_DEFAULTS, key):
                yield Finding(
                    about=(where + (key,), where),
                    message=f'$.scheduler.optax[{index}].{key} is not used by kind = "{piece.kind}"',
                    hint=f"remove {key}, or use a kind that takes it",
                )
        if piece.kind == "cosine_decay" and piece.decay_steps is not None and piece.decay_steps < 1:
            yield Finding(
                about=(where + ("decay_steps",),),
                message=f"$.scheduler.optax[{index}].decay_steps = {piece.decay_steps} must be at least 1",
                hint="set decay_steps >= 1",
            )
        if (
            piece.kind == "warmup_cosine_decay"
            and piece.decay_steps is not None
            and piece.warmup_steps is not None
            and piece.decay_steps <= piece.warmup_steps
        ):
            yield Finding(
                about=(where + ("decay_steps",),),
                message=f"$.scheduler.optax[{index}].decay_steps = {piece.decay_steps} must exceed "
                f"warmup_steps = {piece.warmup_steps} (optax counts the warmup inside decay_steps)",
                hint=f"set decay_steps above {piece.warmup_steps}",
            )
        last = index == len(pieces) - 1
        if not last and piece.boundary is None:
            yield Finding(
                about=(where,),
                message=f"$.scheduler.optax[{index}] needs a boundary: the update at which piece "
                f"{index + 1} takes over",
                hint="set boundary = <update count> in that table",
            )
        if last and piece.boundary is not None:
            yield Finding(
                about=(where + ("boundary",),),
                message=f"$.scheduler.optax[{index}].boundary is set, but it is the last piece (nothing takes over)",
                hint="remove boundary from the last piece, or add the piece that follows",
            )
        if piece.boundary is not None and not last:
            if piece.boundary <= previous:
                yield Finding(
                    about=(where + ("boundary",),),
                    message=f"$.scheduler.optax[{index}].boundary = {piece.boundary} must be greater than "
                    f"the previous boundary ({previous})",
                    hint="boundaries increase from piece to piece",
                )
            previous = piece.boundary


def rule_maxtext_loss(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    z, multiplier = spec.loss.z_loss_multiplier, spec.model.logits_multiplier
    if z < 0:
        yield Finding(
            about=(("loss", "z_loss_multiplier"),),
            message=f"$.loss.z_loss_multiplier = {z} must not be negative",
            hint="set z_loss_multiplier >= 0 (MaxText uses 0 or about 1e-4)",
        )
    if multiplier <= 0:
        yield Finding(
            about=(("model", "logits_multiplier"),),
            message=f"$.model.logits_multiplier = {multiplier} must be positive",
            hint="set logits_multiplier > 0 (1.0 leaves the logits as they are)",
        )
    uses_maxtext_loss = z != 0 or multiplier != 1.0
    if uses_maxtext_loss and spec.loss.reduction != "per_token":
        yield Finding(
            about=(("loss", "reduction"), ("loss", "z_loss_multiplier"), ("model", "logits_multiplier")),
            message="MaxText's loss (loss.z_loss_multiplier or model.logits_multiplier) is token-weighted "
            'across gradient accumulation, but loss.reduction = "per_microbatch"',
            hint='set reduction = "per_token" under [loss]',
        )
    for key in ("loss", "forward_step"):
        if uses_maxtext_loss and getattr(spec.hooks, key) is not None:
            yield Finding(
                about=(("hooks", key),),
                message=f"hooks.{key} replaces the loss, so loss.z_loss_multiplier and "
                f"model.logits_multiplier would be ignored",
                hint=f"apply them in your code and remove them from the spec, or remove hooks.{key}",
            )


def rule_gelu_approximation(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    m = spec.model
    if m.gelu_approximation != "none" and m.activation == "swiglu":
        yield Finding(
            about=(("model", "gelu_approximation"), ("model", "activation")),
            message=f'$.model.gelu_approximation = "{m.gelu_approximation}" applies to gelu and geglu, '
            f'but model.activation = "swiglu"',
            hint='remove gelu_approximation, or use activation = "gelu" or "geglu"',
        )


def rule_embedding_multiplier(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    multiplier = spec.model.embedding_multiplier
    if multiplier <= 0:
        yield Finding(
            about=(("model", "embedding_multiplier"),),
            message=f"$.model.embedding_multiplier = {multiplier} must be positive",
            hint="set embedding_multiplier > 0 (1.0 leaves the embeddings as they are; Gemma: sqrt(hidden_size))",
        )


LLAMA_FAMILY = tuple(block for block in gpt.MAXTEXT_BLOCKS if block != "gpt3")
"""The MaxText blocks with RMSNorm, RoPE and no biases (a LayerNorm model's checkpoint is read as gpt3's)."""


def _gpt3_checkpoint_model(spec: Spec) -> Iterator[Finding]:
    """A LayerNorm model takes a MaxText gpt3 checkpoint (models/gpt3.py), which fixes the rest of its shape."""
    init, m = spec.init.checkpoint, spec.model
    assert init is not None
    needs = [
        (("model", "add_bias_linear"), m.add_bias_linear, "add_bias_linear = true"),
        (("model", "position_embedding"), m.position_embedding == "learned", 'position_embedding = "learned"'),
        (("model", "norm_zero_centered"), m.norm_zero_centered, "norm_zero_centered = true"),
        (("model", "num_experts"), m.num_experts is None, "a dense model (no num_experts)"),
        (("model", "activation"), m.activation == "gelu", 'activation = "gelu"'),
    ]
    for path, ok, wanted in needs:
        if not ok:
            yield Finding(
                about=(path, ("init", "checkpoint")),
                message=f'[init.checkpoint] layout = "{init.layout}" with a LayerNorm model holds a MaxText gpt3 '
                f"decoder (LayerNorm with biases, applied as 1 + scale), which needs model {wanted}",
                hint=f"set {wanted} under [model] to match the checkpoint",
            )


def _mixtral_routing(spec: Spec) -> list[tuple[tuple[str, str], bool, str]]:
    """MaxText's MoE checkpoints are mixtral's (layers/moe.py get_topk): the top k router logits, then a softmax
    over those k. megatron-core computes that without moe_router_pre_softmax, and for k > 1 only (top-1 routing
    takes its softmax over every expert first, where mixtral's weight is 1)."""
    m = spec.model
    return [
        (
            ("model", "moe_router_pre_softmax"),
            not m.moe_router_pre_softmax,
            "moe_router_pre_softmax = false (mixtral: softmax over the top k router logits)",
        ),
        (
            ("model", "moe_router_topk"),
            m.moe_router_topk > 1,
            "moe_router_topk > 1 (mixtral's top-1 weight is 1; megatron-core's top-1 routing weighs by the softmax "
            "over every expert)",
        ),
    ]


def rule_init_checkpoint_model(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    init, m = spec.init.checkpoint, spec.model
    if init is None or init.format == "megatron":
        return  # a Megatron-LM checkpoint's architecture is compared with its args at load time
    if init.format == "orbax" and m.normalization == "layernorm":
        yield from _gpt3_checkpoint_model(spec)
        return
    needs = [
        (("model", "normalization"), m.normalization == "rmsnorm", 'normalization = "rmsnorm"'),
        (("model", "add_bias_linear"), not m.add_bias_linear, "add_bias_linear = false"),
        (("model", "position_embedding"), m.position_embedding == "rope", 'position_embedding = "rope"'),
        (("model", "activation"), m.activation in ("swiglu", "geglu"), 'activation = "swiglu" (or "geglu")'),
    ]
    if init.format == "orbax" and m.num_experts is not None:
        needs += _mixtral_routing(spec)
    holds = (
        '[init.checkpoint] format = "huggingface" loads a Llama-family decoder (Llama, Mistral, Qwen2, Qwen3, Qwen3-MoE)'
        if init.format == "huggingface"
        else f'[init.checkpoint] layout = "{init.layout}" holds a MaxText {"/".join(LLAMA_FAMILY)} decoder'
    )
    for path, ok, wanted in needs:
        if not ok:
            yield Finding(
                about=(path, ("init", "checkpoint")),
                message=f"{holds}, which needs model {wanted}",
                hint=f"set {wanted} under [model] to match the checkpoint",
            )


_ORBAX_ONLY = (
    ("layout", "maxtext"),
    ("optimizer_state", False),
    ("optimizer_type", "adamw"),
    ("rope_layout", "rotate_half"),
    ("param_scan_axis", 1),
)
"""[init.checkpoint] keys that describe an Orbax checkpoint, with their defaults."""


def rule_huggingface_checkpoint_keys(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    init = spec.init.checkpoint
    if init is None or init.format != "huggingface":
        return
    for key, default in _ORBAX_ONLY:
        value = getattr(init, key)
        if value != default:
            yield Finding(
                about=(("init", "checkpoint", key), ("init", "checkpoint", "format")),
                message=f"$.init.checkpoint.{key} = {render_value(value)} describes an Orbax checkpoint; "
                'format = "huggingface" reads weights only, in Hugging Face\'s layout',
                hint=f"remove {key} from [init.checkpoint]",
            )


def rule_rope_scaling_needs_rope(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    m = spec.model
    if m.rope_scaling_factor is not None and m.position_embedding != "rope":
        yield Finding(
            about=(("model", "rope_scaling_factor"), ("model", "position_embedding")),
            message=f'$.model.rope_scaling_factor scales RoPE frequencies, but position_embedding = "{m.position_embedding}"',
            hint='set position_embedding = "rope", or remove rope_scaling_factor',
        )
    if m.rope_scaling_factor is not None and m.rope_scaling_factor <= 0:
        yield Finding(
            about=(("model", "rope_scaling_factor"),),
            message=f"$.model.rope_scaling_factor = {render_value(m.rope_scaling_factor)} must be > 0",
            hint="Llama 3.1 and 3.2 use 8.0 or 32.0 (config.json's rope_scaling.factor)",
        )


def rule_qkv_bias_needs_no_linear_bias(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    m = spec.model
    if m.add_qkv_bias and m.add_bias_linear:
        yield Finding(
            about=(("model", "add_qkv_bias"), ("model", "add_bias_linear")),
            message="$.model.add_qkv_bias = true changes nothing: add_bias_linear = true already gives "
            "linear_qkv a bias",
            hint="remove add_qkv_bias, or set add_bias_linear = false (Qwen2: biases on q, k, v only)",
        )


INTEROP_RULES: tuple[Rule, ...] = (
    rule_optax_semantics_needs_adam,
    rule_optax_semantics_schedule,
    rule_optax_only_settings,
    rule_decay_mask_applies,
    rule_schedule_style_tables,
    rule_maxtext_schedule,
    rule_optax_pieces,
    rule_maxtext_loss,
    rule_gelu_approximation,
    rule_embedding_multiplier,
    rule_init_checkpoint_model,
    rule_huggingface_checkpoint_keys,
    rule_rope_scaling_needs_rope,
    rule_qkv_bias_needs_no_linear_bias,
)
"""The JAX-interop rules; validate.RULES runs them after the core rules."""
