"""Read an Orbax checkpoint item folder with tensorstore alone (no JAX, no orbax).

An Orbax ``PyTreeCheckpointHandler`` item folder (``<root>/<step>/items``) holds:

* ``_METADATA``: JSON; ``tree_metadata`` maps each leaf's key path to its
  ``key_metadata`` (the keys, ``key_type`` 1 = sequence index, 2 = dict key) and
  ``value_metadata`` (``value_type``: ``jax.Array``, ``np.ndarray``, ``scalar``,
  or ``None`` for an empty node); plus ``use_ocdbt`` and ``use_zarr3``.
* the arrays, one zarr array per leaf (``zarr`` v2 or ``zarr3``), named by the
  dotted key path (``params.params.decoder.decoder_norm.scale``,
  ``opt_state.0.mu.params...``, ``step``). With OCDBT (the default since
  orbax 0.5) they all live in one OCDBT key-value store rooted at the item folder
  (``manifest.ocdbt``, data files under ``d/`` and ``ocdbt.process_*/``);
  without it each leaf is a zarr folder of its own.

The ``write_shape`` in ``_METADATA`` is the shape each device wrote, not the
global shape; the global shape and dtype come from the zarr metadata, which
:meth:`OrbaxItem.info` opens (metadata only, no array data).

:meth:`OrbaxItem.read` reads one box of a leaf: tensorstore fetches only the
zarr chunks that overlap it. How little is read from disk therefore depends on
the checkpoint's chunking: a checkpoint written from a sharded JAX run has one
chunk (or more) per device shard, so a tensor-parallel rank that asks for half
the heads reads about half the bytes; a leaf written as a single chunk is read
whole (transiently, one chunk at a time) and only the box is kept.
:class:`ReadStats` counts the bytes of the boxes returned.

bf16 leaves come back from tensorstore as ``ml_dtypes.bfloat16`` arrays and go
to torch through an int16 view, bit for bit (:func:`to_torch`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs
import numpy as np
import tensorstore as ts
import torch

from bridgec.runtime.errors import ExitCode, RunError

Index = Sequence["slice | int"]
"""One entry per axis: a slice keeps the axis, an int selects one position and drops it."""

_ARRAY_VALUE_TYPES = ("jax.Array", "np.ndarray", "scalar")
_METADATA_FILE = "_METADATA"
_CACHE_BYTES = 64 << 20


@attrs.frozen(kw_only=True)
class LeafInfo:
    """A leaf's global shape and dtype, from its zarr metadata."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


@attrs.define
class ReadStats:
    """What an :class:`OrbaxItem` handed out: decoded bytes and boxes, per leaf."""

    bytes_read: int = 0
    reads: int = 0
    per_leaf: dict[str, int] = attrs.field(factory=dict)

    def add(self, name: str, nbytes: int) -> None:
        self.bytes_read += nbytes
        self.reads += 1
        self.per_leaf[name] = self.per_leaf.get(name, 0) + nbytes


def _fail(message: str) -> RunError:
    return RunError(ExitCode.CHECKPOINT_ERROR, message)


def _leaf_name(key_metadata: list[dict]) -> str:
    return ".".join(str(entry["key"]) for entry in key_metadata)


def _kvstore_base(path: str) -> str:
    # tensorstore kvstore URLs: a local folder becomes file://; gs://, s3:// etc. pass through.
    if "://" in path:
        return path.rstrip("/") + "/"
    return "file://" + os.path.abspath(path).rstrip("/") + "/"


class OrbaxItem:
    """An Orbax checkpoint item folder, opened for reading leaf boxes.

    Opening reads ``_METADATA`` only. ``path`` is the item folder, e.g.
    ``ckpt/1000/items`` (local) or a tensorstore kvstore URL (``gs://...``).
    """

    def __init__(self, path: str | os.PathLike[str], *, stats: ReadStats | None = None) -> None:
        self.path = str(path)
        self.stats = stats if stats is not None else ReadStats()
        metadata = self._read_metadata()
        self.use_ocdbt: bool = bool(metadata.get("use_ocdbt", False))
        self.use_zarr3: bool = bool(metadata.get("use_zarr3", False))
        self.names: tuple[str, ...] = tuple(
            sorted(
                _leaf_name(entry["key_metadata"])
                for entry in metadata["tree_metadata"].values()
                if entry.get("value_metadata", {}).get("value_type") in _ARRAY_VALUE_TYPES
                and not entry.get("value_metadata", {}).get("skip_deserialize", False)
            )
        )
        # A small cache keeps OCDBT tree nodes (read by every leaf) without holding many chunks.
        self._context = ts.Context({"cache_pool": {"total_bytes_limit": _CACHE_BYTES}})
        self._stores: dict[str, ts.TensorStore] = {}

    def _read_metadata(self) -> dict:
        if "://" in self.path:
            raw = ts.KvStore.open(_kvstore_base(self.path)).result().read(_METADATA_FILE).result()
            if raw.state != "value":
                raise _fail(f"{self.path}: no {_METADATA_FILE}; is this an Orbax checkpoint item folder?")
            text = bytes(raw.value).decode()
        else:
            file = Path(self.path) / _METADATA_FILE
            if not file.is_file():
                hint = ""
                if (Path(self.path) / "items" / _METADATA_FILE).is_file():
                    hint = f" (it has an item folder: use {Path(self.path) / 'items'})"
                raise _fail(
                    f"{self.path} is not an Orbax checkpoint item folder: {file} is missing{hint}; "
                    "pass the item folder, e.g. <run>/checkpoints/<step>/items"
                )
            text = file.read_text()
        try:
            metadata = json.loads(text)
            metadata["tree_metadata"]
        except (ValueError, KeyError, TypeError) as error:
            raise _fail(f"{self.path}/{_METADATA_FILE} is not Orbax pytree metadata ({error})") from error
        return metadata

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def spec(self, name: str) -> dict:
        """The tensorstore spec that opens one leaf (zarr or zarr3, inside OCDBT or not)."""
        base = _kvstore_base(self.path)
        if self.use_ocdbt:
            kvstore: dict = {"driver": "ocdbt", "base": base, "path": f"{name}/"}
        else:
            kvstore = f"{base}{name}/"  # type: ignore[assignment]
        return {"driver": "zarr3" if self.use_zarr3 else "zarr", "kvstore": kvstore}

    def _store(self, name: str) -> ts.TensorStore:
        if name not in self._stores:
            if name not in self.names:
                raise _fail(f"{self.path}: no leaf named {name}")
            try:
                self._stores[name] = ts.open(self.spec(name), open=True, read=True, context=self._context).result()
            except ValueError as error:
                raise _fail(f"{self.path}: cannot open leaf {name}: {error}") from error
        return self._stores[name]

    def open_all(self, names: Iterable[str]) -> None:
        """Open several leaves concurrently (metadata reads only)."""
        pending = {
            name: ts.open(self.spec(name), open=True, read=True, context=self._context)
            for name in names
            if name not in self._stores and name in self.names
        }
        for name, future in pending.items():
            try:
                self._stores[name] = future.result()
            except ValueError as error:
                raise _fail(f"{self.path}: cannot open leaf {name}: {error}") from error

    def info(self, name: str) -> LeafInfo:
        store = self._store(name)
        return LeafInfo(name=name, shape=tuple(int(n) for n in store.shape), dtype=np.dtype(store.dtype.numpy_dtype))

    def read(self, name: str, index: Index = ()) -> np.ndarray:
        """One box of a leaf as a numpy array (bf16 as ml_dtypes.bfloat16), reading only its chunks."""
        store = self._store(name)
        view = store[tuple(index)] if index else store
        array = np.asarray(view.read().result())
        self.stats.add(name, array.nbytes)
        return array

    def read_torch(self, name: str, index: Index = ()) -> torch.Tensor:
        return to_torch(self.read(name, index))


def to_torch(array: np.ndarray) -> torch.Tensor:
    """A numpy array as a torch tensor of the same dtype; bf16 bit-exactly through an int16 view."""
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(array))


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A CPU torch tensor as numpy; bf16 as ml_dtypes.bfloat16, bit-exactly."""
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        import ml_dtypes  # tensorstore's own dependency; no JAX

        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()
