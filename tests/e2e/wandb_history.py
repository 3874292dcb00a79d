"""Read the history of an offline W&B run back from its ``.wandb`` file (this wandb ships no Python reader).

The file is W&B's transaction log: a 7-byte header (``:W&B``, magic, version)
then LevelDB's log format (32 KiB blocks of records with a 7-byte header:
CRC-32, length, type full/first/middle/last), each record a serialised
``wandb_internal_pb2.Record``; history rows are its ``history`` records.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _records(data: bytes) -> Iterator[bytes]:
    assert data[:4] == b":W&B", "not a .wandb file"
    position, pending = HEADER, b""
    while position + HEADER <= len(data):
        room = BLOCK - position % BLOCK
        if room < HEADER:  # the block's tail is padding
            position += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position : position + HEADER])
        chunk = data[position + HEADER : position + HEADER + length]
        position += HEADER + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk


def history(run_folder: Path) -> list[dict[str, Any]]:
    """Every history row of the run in ``run_folder`` (offline-run-*), keys as logged plus _step."""
    (path,) = run_folder.glob("*.wandb")
    rows = []
    for raw in _records(path.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
    return rows
