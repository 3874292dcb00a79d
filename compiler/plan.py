"""The resolved plan: every number the generated script uses, decided, with its arithmetic.

``lower`` builds it from a validated Spec; the templates see nothing else. A
:class:`Constant` is one ``NAME = value  # arithmetic`` line of the script;
everything structural (which layer spec, which loss, which branches exist) is
a plain field here so templates only test booleans and print values.
"""

from __future__ import annotations

from typing import Union

import attrs

Value = Union[int, float, str, bool, None, tuple["Value", ...]]


@attrs.frozen(kw_only=True)
class Constant:
    """One named value of the generated script."""

    name: str
    value: Value
    why: str | None = None
    """The arithmetic or default that produced it (a comment in the script); None for values copied from the spec."""
    from_spec_text: bool = False
    """A string typed by the user: it may only ever appear inside a string literal."""


@attrs.frozen(kw_only=True)
class Section:
    title: str
    constants: tuple[Constant, ...]


@attrs.frozen(kw_only=True)
class Header:
    version: str
    spec_path: str
    """The spec, relative to the generated file's folder, '/'-separated."""
    spec_sha256: str
    regenerate: str
    """The command that regenerates the file, run from its folder."""


@attrs.frozen(kw_only=True)
class ModelPlan:
    transformer_impl: str
    normalization: str
    """megatron-core's spelling: LayerNorm or RMSNorm."""
    gated: bool
    activation: str
    """The activation as Python source: F.gelu, F.silu, or gelu_tanh (from bridgec.runtime.model)."""
    activation_is_default: bool
    """Exact GELU, megatron-core's default: no activation_func line needed."""
    position_embedding_type: str
    tie_embeddings: bool
    add_bias_linear: bool
    qk_layernorm: bool
    zero_centered_norm: bool
    query_scaling: str
    """attention (scores scaled by 1/sqrt(head_dim)), initial_weights or none (softmax_scale 1)."""
    moe: bool
    router_pre_softmax: bool
    """Top-1 routing: megatron-core requires moe_router_pre_softmax."""


@attrs.frozen(kw_only=True)
class Call:
    """A call rendered into the script: ``function(key=value, ...)``."""

    function: str
    arguments: tuple[tuple[str, "Value"], ...]


@attrs.frozen(kw_only=True)
class SchedulePlan:
    style: str
    """megatron (OptimizerParamScheduler), maxtext or optax (CountScheduler over a schedule function)."""
    pieces: tuple[Call, ...] = ()
    """optax: the schedule pieces, joined at ``boundaries`` when there are several."""
    boundaries: tuple[int, ...] = ()
    maxtext_kind: str | None = None
    """maxtext: cosine or wsd."""
    megatron_wsd: bool = False
    """megatron: the decay style is wsd (its two extra settings are passed)."""


@attrs.frozen(kw_only=True)
class HooksPlan:
    file: str
    """The hooks file as the spec names it (relative to the spec's folder)."""
    forward_step: str | None
    loss: str | None


@attrs.frozen(kw_only=True)
class Plan:
    header: Header
    run_name: str
    description: str
    launch_command: str
    bridgec_launch_command: str
    """The same launch through ``bridgec launch``, which exits with the workers' own code."""
    summary: tuple[str, ...]
    """Sentences for the script's docstring: what runs."""
    device: str
    sections: tuple[Section, ...]
    model: ModelPlan
    schedule: SchedulePlan
    optimizer: str
    """adam or sgd."""
    optax_semantics: bool
    loss_source: str
    """Where each microbatch's loss comes from: token (masked_token_loss), mean (masked_mean_loss), maxtext
    (MaxText's cross entropy on the logits), hook_loss (the user's loss function) or hook_forward_step (the
    user's forward_step, loss and all)."""
    needs_unwrap: bool
    """The script reaches into the DDP-wrapped chunks (its forward_step, query scaling, checkpoint import)."""
    data_kind: str
    per_token_loss: bool
    virtual_pipeline: bool
    pipeline: bool
    context_parallel: bool
    dtype: str
    fp8: str | None
    checkpointing: bool
    init_checkpoint: bool
    init_optimizer_state: bool
    evaluation: bool
    hooks: HooksPlan | None
    user_strings: tuple[str, ...]
    """Every string that came from the spec, for the verify stage."""

    def constant(self, name: str) -> Constant:
        for section in self.sections:
            for constant in section.constants:
                if constant.name == name:
                    return constant
        raise KeyError(name)

    def value(self, name: str) -> Value:
        return self.constant(name).value
