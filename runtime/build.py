"""What a generated script's ``build()`` returns: the run, built on this rank.

Every generated script exposes two functions that ``main()`` calls and that
``bridgec convert`` calls the same way after importing the script (one
description of the run; nothing reads the script's constants):

    layout = start()          # version check, launch check, torch.distributed and megatron's groups
    built = build(layout)     # model chunks, optimizer, scheduler, datasets, checkpointer

``build(layout, weights=Weights.REPLACED)`` skips the spec's initialisation for
a caller that overwrites every weight (a conversion).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from pathlib import Path
from typing import Any, assert_never

import attrs
from megatron.core.distributed import DistributedDataParallel

from bridgec.runtime.checkpoint import DistCheckpointer
from bridgec.runtime.data import Splits
from bridgec.runtime.parallel import Layout


class Weights(enum.Enum):
    """Where the model's first weights come from."""

    SPEC = "spec"
    """As the spec says: [init] scheme (then [init.checkpoint], applied by main() after build)."""
    REPLACED = "replaced"
    """The caller replaces every weight (a conversion): megatron-core's own draw, no portable one."""

    def init_scheme(self, spec_scheme: str) -> str:
        """The bridgec.runtime.model.build_model init_scheme for a spec whose [init] scheme is ``spec_scheme``."""
        match self:
            case Weights.SPEC:
                return spec_scheme
            case Weights.REPLACED:
                return "megatron"
            case _:
                assert_never(self)


@attrs.frozen(kw_only=True)
class CheckpointIdentity:
    """What every checkpoint of this script records about where it came from."""

    spec_sha256: str
    script_sha256: str
    spec_text: str | None
    """The spec's text when it still matches spec_sha256 (bridgec.runtime.checkpoint.spec_copy)."""


@attrs.frozen(kw_only=True)
class ImportFacts:
    """What loading another framework's weights and optimizer state into this model needs besides the model."""

    vocab_size: int
    """The tokenizer's vocabulary (the embedding holds it padded)."""
    global_batch_size: int
    """Sequences per step: an imported step count becomes consumed samples."""
    adam_betas: tuple[float, float] | None = None
    """Adam's (beta1, beta2); None for sgd (no moments to import)."""
    hf_folder: Path | None = None
    """The Hugging Face model folder [init.checkpoint] starts from: its config.json describes the model an export
    to Hugging Face writes, and its tokenizer files go with it."""


@attrs.frozen(kw_only=True)
class Built:
    """This rank's part of the run, as the script's main() trains it."""

    layout: Layout
    model: list[DistributedDataParallel]
    """This rank's model chunks, DDP-wrapped."""
    optimizer: Any
    """megatron-core's ChainedOptimizer (or bridgec's optax-exact one in its wrapper)."""
    scheduler: Any
    """megatron-core's OptimizerParamScheduler, or a CountScheduler over the script's schedule function."""
    datasets: Callable[[], Splits]
    """Builds the train and validation splits: called when training starts (a conversion reads no data)."""
    identity: CheckpointIdentity
    checkpointer: DistCheckpointer | None = None
    """The spec's [checkpoint] dir; None without one."""
    spec_dir: Path
    """The spec's folder: paths in the spec are relative to it."""
    imports: ImportFacts

    def checkpointer_in(self, directory: Path) -> DistCheckpointer:
        """A checkpointer of this run in another folder, keeping every checkpoint (what a conversion writes or reads)."""
        return DistCheckpointer(
            directory=directory.resolve(),
            keep_last=None,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            layout=self.layout,
            spec_sha256=self.identity.spec_sha256,
            script_sha256=self.identity.script_sha256,
            spec_text=self.identity.spec_text,
            # [peft]: the same adapters-only checkpoints as the run's own.
            adapters_only=_has_adapters(self.model),
        )


def _has_adapters(model: list[Any]) -> bool:
    """Whether the (wrapped) chunks carry [peft] adapters (runtime.peft attaches them as chunk.peft)."""
    from bridgec.runtime.model import unwrap

    return any(hasattr(unwrap(chunk), "peft") for chunk in model)
