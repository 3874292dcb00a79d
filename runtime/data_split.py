"""How megatron-core cuts an indexed dataset into train/valid/test documents, without torch or numpy.

megatron-core's GPT datasets split every source by document (strictly: by
sequence, which is one document for data written by ``bridgec data build``):
``[data] split`` is normalised to shares (``parse_and_normalize_split``), the
shares become cumulative bookends (``convert_split_vector_to_split_matrix``;
a zero share gives no split at all), and split ``i`` of a source with ``n``
documents gets documents ``round(begin x n)`` to ``round(end x n)``
(blended_megatron_dataset_builder.py ``_build_megatron_dataset_splits``, Python's
round: halves to even). A split with a share but no documents makes
megatron-core loop forever while it counts epochs (gpt_dataset.py
``_get_num_epochs``), even when no sample of that split is asked for.

The compiler checks this from the ``.idx`` header (the document count is all
it needs) and the runtime again at start, with the token counts; both use
these functions, and a test compares them with megatron-core's own.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from decimal import Decimal

import attrs

SPLIT_NAMES = ("train", "validation", "test")

IDX_MAGIC = b"MMIDIDX\x00\x00"
IDX_HEADER_SIZE = 34
"""magic (9) + version (8) + dtype code (1) + sequence count (8) + document count (8): indexed_dataset.py."""


@attrs.frozen(kw_only=True)
class DocumentRange:
    """One split of one source: documents ``begin`` to ``end`` (end excluded)."""

    split: str
    begin: int
    end: int
    share_begin: float
    """The normalised bookends megatron-core rounds (fractions of the source's documents)."""
    share_end: float

    @property
    def documents(self) -> int:
        return self.end - self.begin

    def arithmetic(self, total: int) -> str:
        """``round(0.98 x 5) = 5 to round(0.99 x 5) = 5``."""
        return (
            f"round({self.share_begin:.6g} x {total}) = {self.begin} to "
            f"round({self.share_end:.6g} x {total}) = {self.end}"
        )


def split_text(split: Sequence[float]) -> str:
    """The split as megatron-core's config string: plain decimals it parses back to the same floats.

    megatron reads the numbers with the regex ``[.0-9]+``, so an exponent
    (``1e-05``, which ``str`` and ``:g`` write for small shares) would be read
    as two numbers; the shortest round-tripping decimal never has one.
    """
    # Decimal of the shortest repr: the same digits, written without an exponent by format "f".
    return ",".join(format(Decimal(repr(float(share))), "f") for share in split)


def document_ranges(split: Sequence[float], documents: int) -> tuple[DocumentRange | None, ...]:
    """Train/valid/test documents of a source with ``documents`` documents; None where the share is 0.

    Float for float what megatron-core 0.16 computes: shares normalised by their
    sum, cumulative bookends, ``int(round(bookend x documents))``.
    """
    total = 0.0
    for share in split:
        total += share  # numpy.sum of three float64s adds left to right, as here
    shares = [share / total for share in split]
    bookends = [0.0]
    for share in shares:
        bookends.append(bookends[-1] + share)
    ranges: list[DocumentRange | None] = []
    for name, begin, end in zip(SPLIT_NAMES, bookends[:-1], bookends[1:]):
        if end <= begin:
            ranges.append(None)
            continue
        ranges.append(
            DocumentRange(
                split=name,
                begin=int(round(begin * float(documents))),
                end=int(round(end * float(documents))),
                share_begin=begin,
                share_end=end,
            )
        )
    return tuple(ranges)


def empty_splits(split: Sequence[float], documents: int) -> tuple[DocumentRange, ...]:
    """The splits that have a share but get no document of a source with ``documents`` documents."""
    return tuple(r for r in document_ranges(split, documents) if r is not None and r.documents == 0)


def idx_document_count(header: bytes) -> int | str:
    """The number of documents (sequences) an ``.idx`` file's first 34 bytes announce, or what is wrong."""
    if len(header) < IDX_HEADER_SIZE:
        return f"it is {len(header)} bytes long, shorter than the {IDX_HEADER_SIZE}-byte header of an index file"
    if header[:9] != IDX_MAGIC:
        return "it does not start with megatron's index header (MMIDIDX)"
    (version,) = struct.unpack("<Q", header[9:17])
    if version != 1:
        return f"it has index version {version}; megatron-core reads version 1"
    (sequences,) = struct.unpack("<Q", header[18:26])
    return int(sequences)
