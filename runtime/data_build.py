"""``bridgec data build``: a JSON-lines text file -> a megatron-core indexed dataset.

The tokenizer is byte-level and needs no download: token ``b`` is the byte
value ``b`` (0-255) of the UTF-8 text, and 256 is the end-of-document token
appended to every document, so the vocabulary has 257 entries. Beside
``PREFIX.bin`` and ``PREFIX.idx`` it writes ``PREFIX.json`` (tokenizer name,
vocab_size, eod), which the compiler reads to fill in ``EOD_TOKEN`` and to check
that the model's vocabulary covers the data. Files appear complete or not at
all: each is written under a temporary name and renamed at the end.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import attrs
import numpy as np

BYTE_TOKENIZER = "bytes"
BYTE_VOCAB_SIZE = 257
BYTE_EOD = 256


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


def encode_bytes(text: str) -> list[int]:
    """Byte-level tokens of ``text`` followed by the end-of-document token."""
    return [*text.encode("utf-8"), BYTE_EOD]


def decode_bytes(tokens: list[int]) -> str:
    return bytes(t for t in tokens if t < 256).decode("utf-8", errors="replace")


def _documents(path: Path, text_key: str) -> list[list[int]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataBuildError(f"{path}: no such file") from None
    except UnicodeDecodeError as error:
        raise DataBuildError(f"{path}: not UTF-8 text (byte {error.start})") from None
    documents = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataBuildError(f"{path}:{number}: not a JSON object ({error.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get(text_key), str):
            raise DataBuildError(f"{path}:{number}: expected an object with a string {text_key!r} key")
        if record[text_key]:
            documents.append(encode_bytes(record[text_key]))
    if not documents:
        raise DataBuildError(f"{path}: no non-empty documents (an empty dataset cannot be trained on)")
    return documents


def build_indexed_dataset(input_path: Path, prefix: Path, *, text_key: str = "text") -> BuildReport:
    """Tokenise every document of ``input_path`` and write ``prefix``.bin/.idx/.json."""
    import torch  # noqa: F401 - megatron's builder converts through torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    documents = _documents(input_path, text_key)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    staging = prefix.with_name(f".{prefix.name}.partial")
    builder = IndexedDatasetBuilder(str(staging) + ".bin", dtype=np.uint16)
    for tokens in documents:
        builder.add_document(np.asarray(tokens, dtype=np.uint16), [len(tokens)])
    builder.finalize(str(staging) + ".idx")
    sidecar = {"tokenizer": BYTE_TOKENIZER, "vocab_size": BYTE_VOCAB_SIZE, "eod": BYTE_EOD}
    Path(str(staging) + ".json").write_text(json.dumps(sidecar, sort_keys=True) + "\n", encoding="utf-8")
    for suffix in (".bin", ".idx", ".json"):
        os.replace(str(staging) + suffix, str(prefix) + suffix)
    return BuildReport(
        prefix=prefix,
        documents=len(documents),
        tokens=sum(len(tokens) for tokens in documents),
        tokenizer=BYTE_TOKENIZER,
        vocab_size=BYTE_VOCAB_SIZE,
        eod=BYTE_EOD,
    )
