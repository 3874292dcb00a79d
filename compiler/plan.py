"""The resolved plan: every number the generated script uses, decided, with its arithmetic.

``lower`` builds it from a validated Spec; the templates see nothing else. A
:class:`Constant` is one ``NAME = value  # arithmetic`` line of the script;
everything structural (which layer spec, which loss, which imports, which
arguments) is decided by lowering and held here as calls and lines, so the
templates print and loop, and decide nothing.
"""

from __future__ import annotations

import attrs

Value = int | float | str | bool | None | tuple["Value", ...]


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
    overrides: tuple[str, ...] = ()
    """The command-line overrides it was compiled with, as typed (``bridgec check`` applies them again)."""
    ejected: bool = False
    """``bridgec eject``: a copy its user owns, without the generated-file header and the regenerate advice."""


@attrs.frozen(kw_only=True)
class Code:
    """Python source the lowering wrote (a name, an expression), printed as it is."""

    text: str


@attrs.frozen(kw_only=True)
class Items:
    """A list argument, one item per line."""

    items: tuple[Code | Call, ...]


@attrs.frozen(kw_only=True)
class Argument:
    """One argument of a rendered call: ``name=value,  # comment`` (positional when name is None)."""

    name: str | None
    value: Code | Call | Items | Value
    """Source, a nested call, a list, or a plan value printed as a Python literal."""
    comment: str | None = None


@attrs.frozen(kw_only=True)
class Call:
    """A call rendered into the script, one argument per line: ``function(\n    key=value,\n)``."""

    function: str
    arguments: tuple[Argument, ...] = ()


@attrs.frozen(kw_only=True)
class Import:
    """``import module [as alias]``, or ``from module import names`` when names are given."""

    module: str
    names: tuple[str, ...] = ()
    alias: str | None = None


@attrs.frozen(kw_only=True)
class Imports:
    """The script's imports in its three blocks, decided by lowering from what the script calls."""

    standard: tuple[Import, ...]
    """Before the noise filter: the standard library."""
    libraries: tuple[Import, ...]
    """torch and megatron-core, after the noise filter is installed."""
    runtime: tuple[Import, ...]
    """bridgec.runtime."""


@attrs.frozen(kw_only=True)
class ModelPlan:
    config: Call
    """TransformerConfig(...): transformer_config()'s return."""
    gpt: Call
    """GPTModel(...): model_provider()'s return."""


@attrs.frozen(kw_only=True)
class ForwardPlan:
    """forward_step: the user's (hook), or bridgec's with the loss lowering chose."""

    hook: Code | None
    """``Hook(...)`` of the user's forward_step; None: bridgec writes forward_step."""
    loss_hook: Code | None
    """``Hook(...)`` of the user's loss function, called by bridgec's forward_step."""
    next_batch: Call
    body: tuple[str, ...]
    """The lines after next_batch: the model call and what is returned."""
    keyword_parameters: str = ""
    """Keyword-only parameters after the four megatron-core passes, as source (``teacher: torch.nn.Module``): main()
    binds them."""


@attrs.frozen(kw_only=True)
class StepPlan:
    """What main() does, in order, as calls lowering decided."""

    start_lines: tuple[str, ...]
    """Lines of start() between the launch check and initialize (the CPU shims)."""
    initialize: Call
    model: Call
    after_model: tuple[str, ...]
    """Lines of build() after the model exists (MaxText's query scaling)."""
    optimizer_comment: tuple[str, ...]
    optimizer: Call
    scheduler: Call
    built: Call
    hook_load: tuple[str, ...]
    """main()'s first lines: load the hooks file before any work."""
    claim: Call
    loop_settings: Call
    train: Call


@attrs.frozen(kw_only=True)
class InitCheckpointPlan:
    """start_from_checkpoint(): which reader loads the weights, and the optimizer-state import when the spec asks for it."""

    docstring: tuple[str, ...]
    """Its docstring's lines."""
    body: tuple[str, ...]
    """Its lines: the weights loaded, then the optimizer state, and the Progress returned."""
    call: tuple[str, ...]
    """main()'s lines that call it (guarded by resume when the run checkpoints)."""


@attrs.frozen(kw_only=True)
class DistillPlan:
    """[distill]: the teacher's model functions and build_teacher()."""

    model: ModelPlan
    """teacher_transformer_config()'s and teacher_model_provider()'s returns (TEACHER_* constants)."""
    build: tuple[str, ...]
    """build_teacher()'s lines: build, load the weights, freeze."""
    teacher_type: str
    """What build_teacher() returns: the teacher, or None on the pipeline stages that hold none of it."""


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
    step: tuple[str, ...]
    """Sentences for the script's docstring: what one training step does, in order, and where metrics go."""
    imports: Imports
    silence_device: str
    """The device the noise filter is installed for."""
    spec_dir: str
    """The SPEC_DIR line's right-hand side and comment."""
    sections: tuple[Section, ...]
    model: ModelPlan
    data_docstring: str
    data_source: Code
    document_masking: bool
    """Whether datasets() asks build_splits for reset positions and a block-diagonal attention mask."""
    forward: ForwardPlan
    schedule_function: Call | None
    """learning_rate_schedule()'s return (MaxText's and optax's styles); None with megatron's scheduler."""
    schedule_docstring: str
    init_checkpoint: InitCheckpointPlan | None
    distill: DistillPlan | None
    main: StepPlan
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
