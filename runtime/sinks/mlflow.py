"""The MLflow sink: one MLflow run per launch, the scalars as its metrics (``pip install bridgec[mlflow]``)."""

from __future__ import annotations

import time
from typing import Any

import attrs

from bridgec.runtime.sinks import Records, SinkContext

BATCH_LIMIT = 1000
"""MLflow's most metrics in one log_batch request."""


@attrs.define
class MlflowSink:
    """A run in ``experiment`` (created if missing) at ``tracking_uri``, through MlflowClient (no global state)."""

    tracking_uri: str
    experiment: str | None = None
    """None: the spec's run.name."""
    run_name: str | None = None
    """None: the spec's run.name."""
    name: str = "mlflow"
    _client: Any = None
    _run_id: str | None = None

    def open(self, context: SinkContext) -> None:
        from mlflow.tracking import MlflowClient  # the optional package, imported only when asked for

        client = MlflowClient(tracking_uri=self.tracking_uri)
        experiment_name = self.experiment or context.run_name
        experiment = client.get_experiment_by_name(experiment_name)
        experiment_id = (
            experiment.experiment_id if experiment is not None else client.create_experiment(experiment_name)
        )
        run = client.create_run(experiment_id, run_name=self.run_name or context.run_name)
        self._client, self._run_id = client, run.info.run_id
        from mlflow.entities import Param

        # MLflow refuses parameter values over 500 characters in older stores; the spec's are short.
        params = [Param(key, str(value)[:500]) for key, value in context.config.items()]
        client.log_batch(self._run_id, params=params)

    def write(self, records: Records) -> None:
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), timestamp, step) for step, scalars in records for key, value in scalars.items()
        ]
        for start in range(0, len(metrics), BATCH_LIMIT):
            self._client.log_batch(self._run_id, metrics=metrics[start : start + BATCH_LIMIT])

    def close(self) -> None:
        if self._client is not None and self._run_id is not None:
            self._client.set_terminated(self._run_id)
        self._client, self._run_id = None, None
