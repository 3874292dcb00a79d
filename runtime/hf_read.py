"""Read a Hugging Face safetensors folder lazily: each call reads only the slice asked for.

A folder holds ``model.safetensors``, or shards named by ``model.safetensors.index.json``
(``weight_map``: tensor name -> file). Headers are read once per file; a tensor's
bytes are read only when a slice of it is asked for (safetensors' ``get_slice``),
so a rank that holds half a matrix reads half of it. :class:`ReadStats` counts
what each call returned.

Every problem with the files (missing, truncated, corrupt, a tensor listed in
the index but absent from its shard) is a :class:`~bridgec.runtime.errors.RunError`
(``CHECKPOINT_ERROR``) naming the file and tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import torch
from safetensors import SafetensorError, safe_open

from bridgec.runtime.errors import ExitCode, RunError
from bridgec.runtime.orbax_read import ReadStats

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

__all__ = ["INDEX_FILE", "SINGLE_FILE", "ReadStats", "SafetensorsFolder", "TensorInfo"]


@attrs.frozen(kw_only=True)
class TensorInfo:
    """A stored tensor's shape and dtype (from its file's header) and the file that holds it."""

    shape: tuple[int, ...]
    dtype: str
    """safetensors' dtype name: F32, BF16, F16, ..."""
    file: str


def _fail(message: str) -> RunError:
    return RunError(ExitCode.CHECKPOINT_ERROR, message)


def _weight_map(folder: Path) -> dict[str, str]:
    """Tensor name -> file name, from the index of a sharded folder or the one file's header."""
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise _fail(f"{index}: not a safetensors index with a weight_map ({error})") from None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise _fail(f"{index}: weight_map must map tensor names to file names")
        return dict(weight_map)
    single = folder / SINGLE_FILE
    if not single.is_file():
        raise _fail(
            f"{folder}: no {SINGLE_FILE} and no {INDEX_FILE} (a Hugging Face model folder saved as safetensors)"
        )
    return dict.fromkeys(_open(single).keys(), SINGLE_FILE)


def _open(path: Path):  # noqa: ANN202 - safetensors' handle has no public type
    if not path.is_file():
        raise _fail(f"{path}: missing (named by {INDEX_FILE})")
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError, ValueError) as error:
        raise _fail(f"{path}: not a readable safetensors file ({error})") from None


@attrs.define
class SafetensorsFolder:
    """A Hugging Face model folder's weights; slices are read on demand."""

    folder: Path
    stats: ReadStats = attrs.field(factory=ReadStats)
    weight_map: dict[str, str] = attrs.field(init=False)
    _handles: dict[str, object] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        self.weight_map = _weight_map(self.folder)

    @property
    def names(self) -> list[str]:
        return sorted(self.weight_map)

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def _handle(self, file: str):  # noqa: ANN202
        if file not in self._handles:
            self._handles[file] = _open(self.folder / file)
        return self._handles[file]

    def _slice(self, name: str):  # noqa: ANN202
        file = self.weight_map[name]
        try:
            return self._handle(file).get_slice(name)
        except (SafetensorError, OSError, ValueError) as error:
            raise _fail(f"{self.folder / file}: tensor {name} cannot be read ({error})") from None

    def info(self, name: str) -> TensorInfo:
        found = self._slice(name)
        return TensorInfo(shape=tuple(found.get_shape()), dtype=str(found.get_dtype()), file=self.weight_map[name])

    def read(self, name: str, rows: slice | None = None, columns: slice | None = None) -> torch.Tensor:
        """``name[rows, columns]`` (whole axes when None); the bytes returned are added to :attr:`stats`."""
        found = self._slice(name)
        index = (rows or slice(None),) if len(found.get_shape()) == 1 else (rows or slice(None), columns or slice(None))
        try:
            value = found[index]
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            raise _fail(f"{self.folder / self.weight_map[name]}: tensor {name} cannot be read ({error})") from None
        self.stats.add(name, value.numel() * value.element_size())
        return value
