"""The Weights & Biases sink: one W&B run per launch, its history the scalars (``pip install bridgec[wandb]``)."""

from __future__ import annotations

from typing import Any

import attrs

from bridgec.runtime.sinks import Records, SinkContext


@attrs.define
class WandbSink:
    """A W&B run in ``project``; offline mode writes a run folder under the output folder for ``wandb sync``."""

    project: str
    entity: str | None = None
    run_name: str | None = None
    """None: the spec's run.name."""
    tags: tuple[str, ...] = ()
    mode: str = "online"
    name: str = "wandb"
    _run: Any = None

    def open(self, context: SinkContext) -> None:
        import wandb  # the optional package, imported only when asked for

        context.output_dir.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(
            project=self.project,
            entity=self.entity,
            name=self.run_name or context.run_name,
            tags=list(self.tags),
            mode=self.mode,
            dir=str(context.output_dir),
            config=dict(context.config),
            reinit="create_new",
            settings=wandb.Settings(quiet=True),  # its run summary would drown the end of the console log
        )

    def write(self, records: Records) -> None:
        for step, scalars in records:
            self._run.log(dict(scalars), step=step)

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None
