"""The mapping half of ``bridgec import maxtext``: one merged MaxText config -> spec tables with comments.

:func:`map_config` maps the tables in order, each in its own function: [run]
here, [launch]/[parallel]/[batch] in :mod:`bridgec.compiler.maxtext_layout`,
[model] in :mod:`bridgec.compiler.maxtext_model` (the decoder blocks are a table
in :mod:`bridgec.compiler.maxtext_blocks`), the training tables in
:mod:`bridgec.compiler.maxtext_training`. Each reads the keys it has a
counterpart for through a :class:`~bridgec.compiler.maxtext_read.ConfigReader`
(marking them used), writes spec values with a comment naming the MaxText
source, and refuses what cannot be reproduced; what a later table needs from an
earlier one (the devices over nodes, the decoder block and layer count, the
run's length) is passed as a value. :mod:`bridgec.compiler.maxtext` merges the
files and renders the result; :mod:`bridgec.compiler.maxtext_keys` classifies
the rest. The MaxText code each rule follows is named where it is applied
(commit e591f30).
"""

from __future__ import annotations

from typing import Any

from bridgec.compiler.maxtext_layout import map_launch, map_parallel_and_batch
from bridgec.compiler.maxtext_model import map_model
from bridgec.compiler.maxtext_read import ConfigReader, MappedConfig
from bridgec.compiler.maxtext_training import (
    check_gates,
    map_checkpoints,
    map_data,
    map_loss,
    map_optimizer,
    map_precision,
    map_scheduler,
    map_train,
)


def map_config(
    *,
    config: dict[str, Any],
    origin: dict[str, str],
    names: dict[str, str],
    devices: int,
    nodes: int | None,
    device: str,
    schedule_variant: str | None,
    model_label: str | None,
) -> MappedConfig:
    """Map one merged config (see :class:`~bridgec.compiler.maxtext_read.MappedConfig` for the fields).

    ``devices``/``nodes``/``device``: the import's --devices, --nodes (None: MaxText's num_slices or 1) and
    --device; ``schedule_variant``: None for the one the base implies; ``model_label``: the model file's name, the
    run's name when MaxText's run_name and model_name are unset.
    """
    reader = ConfigReader(config=config, origin=origin, names=names)
    _map_run(reader, model_label)
    launch = map_launch(reader, devices=devices, nodes=nodes, device=device)
    model = map_model(reader)
    if model is None:  # no decoder block or scale to map: nothing else is read
        return reader.result()
    map_parallel_and_batch(reader, model, launch)
    length = map_train(reader)
    map_optimizer(reader, model.block)
    map_scheduler(reader, length, schedule_variant)
    map_precision(reader)
    map_data(reader)
    map_loss(reader)
    map_checkpoints(reader, model.block)
    check_gates(reader)
    return reader.result()


def _map_run(reader: ConfigReader, model_label: str | None) -> None:
    run_name = reader.get("run_name") or ""
    model_name = reader.get("model_name") or "default"
    reader.get("override_model_config")
    label = model_name if model_name != "default" else (model_label or "maxtext")
    name = run_name or label
    reader.put(
        "run", "name", name, reader.src("run_name") if run_name else "MaxText's run_name is empty: the model's name"
    )
    reader.put("run", "seed", int(reader.get("init_weights_seed", 0)), reader.src("init_weights_seed"))
    reader.put("run", "description", f"Imported from MaxText ({label})", reader.src("model_name"))
