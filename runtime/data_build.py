"""``bridgec data build``: text files -> a megatron-core indexed dataset.

Inputs are JSON-lines files (the text under ``text_key``), Parquet files (the column
``text_key``) and plain-text files (``.txt``: the whole file is one document). With no
tokenizer the tokenizer is byte-level and needs no download: token ``b`` is the byte value
``b`` (0-255) of the UTF-8 text, and 256 is the end-of-document token appended to every
document, so the vocabulary has 257 entries. With ``tokenizer`` (see runtime/tokenizer.py) the
ids are that tokenizer's, and ``append_eod`` ends every document with its end-of-document id.

Tokenizing runs in ``workers`` processes over fixed-size chunks of documents whose results are
written in input order, so the output does not depend on the number of workers. Tokens are
stored in the smallest dtype megatron-core's ``DType.optimal_dtype`` allows for the vocabulary.
Beside ``PREFIX.bin`` and ``PREFIX.idx`` it writes ``PREFIX.json`` (the sidecar: tokenizer kind,
vocab_size, eod, bos, pad, the tokenizer's sha256 and the token dtype), which the compiler reads
to fill in ``EOD_TOKEN`` and to check the model's vocabulary and the spec's tokenizer. Files
appear complete or not at all: each is written under a temporary name and renamed at the end.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import attrs
import numpy as np

BYTE_TOKENIZER = "bytes"
BYTE_VOCAB_SIZE = 257
BYTE_EOD = 256

CHUNK_DOCUMENTS = 256
"""Documents per work item: fixed, so chunk boundaries (and the output) never depend on the worker count."""


class DataBuildError(Exception):
    """The input cannot be turned into a dataset; the message says where and why."""


@attrs.frozen(kw_only=True)
class BuildReport:
    prefix: Path
    documents: int
    tokens: int
    tokenizer: str
    vocab_size: int
    eod: int
    dtype: str = "uint16"


def encode_bytes(text: str) -> list[int]:
    """Byte-level tokens of ``text`` followed by the end-of-document token."""
    return [*text.encode("utf-8"), BYTE_EOD]


def decode_bytes(tokens: list[int]) -> str:
    return bytes(t for t in tokens if t < 256).decode("utf-8", errors="replace")


# -- reading ---------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class _Chunk:
    """Up to CHUNK_DOCUMENTS documents of one file, each with its line (JSONL) or row (Parquet) number."""

    file: str
    json_lines: bool
    """True: each item is a raw JSONL line the worker parses; False: each item is the document's text."""
    items: tuple[tuple[int, str], ...]
    size: int
    """Input bytes the chunk stands for (for the progress bar)."""


def _chunks(paths: Sequence[Path], text_key: str) -> Iterator[_Chunk]:
    for path in paths:
        if not path.is_file():
            raise DataBuildError(f"{path}: no such file")
        match path.suffix:
            case ".parquet":
                yield from _parquet_chunks(path, text_key)
            case ".txt":
                yield _Chunk(file=str(path), json_lines=False, items=((1, _read_text(path)),), size=path.stat().st_size)
            case _:
                yield from _jsonl_chunks(path)


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataBuildError(f"{path}: not UTF-8 text (byte {error.start})") from None


def _jsonl_chunks(path: Path) -> Iterator[_Chunk]:
    items: list[tuple[int, str]] = []
    size = 0
    with path.open("rb") as stream:
        for number, raw in enumerate(stream, start=1):
            size += len(raw)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataBuildError(f"{path}:{number}: not UTF-8 text (byte {error.start} of the line)") from None
            if line.strip():
                items.append((number, line))
            if len(items) == CHUNK_DOCUMENTS:
                yield _Chunk(file=str(path), json_lines=True, items=tuple(items), size=size)
                items, size = [], 0
    if items or size:
        yield _Chunk(file=str(path), json_lines=True, items=tuple(items), size=size)


def _parquet_chunks(path: Path, text_key: str) -> Iterator[_Chunk]:
    try:
        import pyarrow.parquet as parquet
    except ModuleNotFoundError:
        from bridgec.runtime.tokenizer import EXTRA_HINT

        raise DataBuildError(f"{path}: reading Parquet needs the Python package 'pyarrow': {EXTRA_HINT}") from None
    try:
        table = parquet.ParquetFile(path)
        names = table.schema_arrow.names
    except Exception as error:  # pyarrow raises ArrowInvalid and OSError subclasses for damaged files
        raise DataBuildError(f"{path}: not a Parquet file pyarrow can read ({error})") from None
    if text_key not in names:
        raise DataBuildError(
            f"{path}: no column {text_key!r} (columns: {', '.join(names)}); choose one with --text-key"
        )
    row = 0
    per_row = max(1, path.stat().st_size // max(1, table.metadata.num_rows))
    for batch in table.iter_batches(batch_size=CHUNK_DOCUMENTS, columns=[text_key]):
        items = []
        for value in batch.column(0).to_pylist():
            row += 1
            if not isinstance(value, str):
                raise DataBuildError(f"{path}: row {row}: column {text_key!r} is not a string")
            items.append((row, value))
        yield _Chunk(file=str(path), json_lines=False, items=tuple(items), size=per_row * len(items))


# -- tokenizing (in the workers) ---------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class _Encoded:
    tokens: np.ndarray
    """Every document's tokens, concatenated (int64)."""
    lengths: np.ndarray
    size: int


@attrs.frozen(kw_only=True)
class _Failed:
    message: str


_worker_state: dict[str, object] = {}


def _init_worker(tokenizer: Path | None, text_key: str, eod: int | None) -> None:
    """Load the tokenizer once per process (Pool initializer, or the main process when workers = 1)."""
    if tokenizer is None:
        encode: Callable[[str], list[int]] = encode_bytes
    else:
        from bridgec.runtime.tokenizer import load

        encoder, ending = load(tokenizer), [] if eod is None else [eod]
        encode = lambda text: [*encoder.encode(text), *ending]  # noqa: E731 - closes over the loaded tokenizer
    _worker_state.update(encode=encode, text_key=text_key)


def _encode_chunk(chunk: _Chunk) -> _Encoded | _Failed:
    encode, text_key = _worker_state["encode"], _worker_state["text_key"]
    documents: list[list[int]] = []
    for number, item in chunk.items:
        text = item
        if chunk.json_lines:
            try:
                record = json.loads(item)
            except json.JSONDecodeError as error:
                return _Failed(message=f"{chunk.file}:{number}: not a JSON object ({error.msg})")
            if not isinstance(record, dict) or not isinstance(record.get(text_key), str):
                return _Failed(message=f"{chunk.file}:{number}: expected an object with a string {text_key!r} key")
            text = record[text_key]
        if text:
            tokens = encode(text)
            if tokens:
                documents.append(tokens)
    lengths = np.fromiter((len(d) for d in documents), dtype=np.int64, count=len(documents))
    flat = np.array(list(itertools.chain.from_iterable(documents)), dtype=np.int64)
    return _Encoded(tokens=flat, lengths=lengths, size=chunk.size)


def _encoded(chunks: Iterator[_Chunk], init_args: tuple, workers: int) -> Iterator[_Encoded | _Failed]:
    if workers == 1:
        _init_worker(*init_args)
        yield from map(_encode_chunk, chunks)
        return
    # fork: workers start in milliseconds and need no importable __main__ (spawn re-imports it, and a
    # pool started from `python -` would respawn failing workers for ever). The parent has only
    # loaded the tokenizer's facts, never encoded in parallel, so the tokenizers library keeps its
    # threads in the children; they never touch torch.
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, initializer=_init_worker, initargs=init_args) as pool:
        yield from pool.imap(_encode_chunk, chunks, chunksize=1)


# -- writing ----------------------------------------------------------------------------------------


class _Progress:
    """A one-line progress bar on stderr: share of input bytes read, documents, tokens."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.done = max(total, 1), enabled, 0

    def update(self, size: int, documents: int, tokens: int) -> None:
        self.done += size
        if self.enabled:
            share = min(self.done / self.total, 1.0)
            bar = "#" * int(share * 30)
            sys.stderr.write(f"\rtokenizing [{bar:<30}] {share:4.0%} {documents:,} documents {tokens:,} tokens")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def build_indexed_dataset(
    inputs: Path | Sequence[Path],
    prefix: Path,
    *,
    text_key: str = "text",
    tokenizer: Path | None = None,
    append_eod: bool = False,
    workers: int = 1,
    progress: bool = False,
) -> BuildReport:
    """Tokenise every document of ``inputs`` and write ``prefix``.bin/.idx/.json."""
    import torch  # noqa: F401 - megatron's builder converts through torch
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    paths = [Path(inputs)] if isinstance(inputs, str | os.PathLike) else [Path(p) for p in inputs]
    if workers < 1:
        raise DataBuildError(f"--workers {workers}: needs at least 1 worker")
    sidecar = _sidecar(tokenizer, append_eod)
    dtype = DType.optimal_dtype(sidecar["vocab_size"])
    prefix.parent.mkdir(parents=True, exist_ok=True)
    staging = prefix.with_name(f".{prefix.name}.partial")
    staged = [Path(str(staging) + suffix) for suffix in (".bin", ".idx", ".json")]
    documents = tokens = 0
    bar = _Progress(sum(p.stat().st_size for p in paths if p.is_file()), progress)
    try:
        builder = IndexedDatasetBuilder(str(staged[0]), dtype=dtype)
        for result in _encoded(
            _chunks(paths, text_key), (tokenizer, text_key, sidecar["eod"] if append_eod else None), workers
        ):
            if isinstance(result, _Failed):
                raise DataBuildError(result.message)
            stored = result.tokens.astype(dtype)
            for start, end in zip(np.cumsum(result.lengths) - result.lengths, np.cumsum(result.lengths)):
                builder.add_document(stored[start:end], [int(end - start)])
            documents += len(result.lengths)
            tokens += len(stored)
            bar.update(result.size, documents, tokens)
        bar.close()
        if not documents:
            raise DataBuildError(
                f"{', '.join(map(str, paths))}: no non-empty documents (an empty dataset cannot be trained on)"
            )
        builder.finalize(str(staged[1]))
        sidecar["dtype"] = np.dtype(dtype).name
        staged[2].write_text(json.dumps(sidecar, sort_keys=True) + "\n", encoding="utf-8")
        for file, suffix in zip(staged, (".bin", ".idx", ".json")):
            os.replace(file, str(prefix) + suffix)
    finally:
        for file in staged:
            file.unlink(missing_ok=True)
    return BuildReport(
        prefix=prefix,
        documents=documents,
        tokens=tokens,
        tokenizer=sidecar["tokenizer"],
        vocab_size=sidecar["vocab_size"],
        eod=sidecar["eod"],
        dtype=np.dtype(dtype).name,
    )


def _sidecar(tokenizer: Path | None, append_eod: bool) -> dict:
    if tokenizer is None:
        if append_eod:
            raise DataBuildError(
                "--append-eod needs --tokenizer: the byte-level tokenizer always ends documents with 256"
            )
        return {"tokenizer": BYTE_TOKENIZER, "vocab_size": BYTE_VOCAB_SIZE, "eod": BYTE_EOD}
    from bridgec.runtime.tokenizer import TokenizerError, describe

    try:
        facts = describe(tokenizer)
    except TokenizerError as error:
        raise DataBuildError(str(error)) from None
    return {
        "tokenizer": facts.kind,
        "vocab_size": facts.vocab_size,
        "eod": facts.eod,
        "bos": facts.bos,
        "pad": facts.pad,
        "tokenizer_sha256": facts.sha256,
        "append_eod": append_eod,
    }
