"""[data] packing: SFT samples packed first-fit-decreasing into sequences of ``seq_length``.

A sample of ``n`` tokens takes ``n - 1`` positions of a sequence: its tokens ``[0, n - 1)`` are
the inputs that predict ``[1, n)`` (its last token is only ever a label), exactly the positions
whose loss it has when it runs alone. Packing is done where the dataset is built, from the
samples' lengths alone: sizes sorted longest first (ties by sample index, a stable sort), each put
into the first sequence with room. The same lengths give the same sequences on every rank, every
run and every resume, and the data build stays one format for packed and unpacked training.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import numpy as np


@attrs.frozen(kw_only=True)
class Packing:
    sequences: tuple[tuple[int, ...], ...]
    """Each sequence's sample indices (into the lengths given), in the order they sit in it."""
    used: int
    """Positions holding sample tokens (the rest is padding)."""
    capacity: int
    """Positions in every sequence: len(sequences) x seq_length."""

    @property
    def efficiency(self) -> float:
        """Non-pad positions / all positions."""
        return self.used / self.capacity if self.capacity else 0.0


def positions(length: int) -> int:
    """The positions a sample of ``length`` tokens takes in a sequence (its last token is a label only)."""
    return max(length - 1, 0)


def first_fit_decreasing(lengths: Sequence[int] | np.ndarray, seq_length: int) -> Packing:
    """Pack samples of ``lengths`` tokens into sequences of ``seq_length`` positions, first fit decreasing.

    A max segment tree over the sequences' free room finds the first one with room in O(log n),
    so packing a million samples takes seconds, not hours.
    """
    sizes = np.asarray([positions(int(n)) for n in lengths], dtype=np.int64)
    if len(sizes) and int(sizes.max()) > seq_length:
        raise ValueError(f"a sample of {int(sizes.max()) + 1} tokens does not fit seq_length {seq_length} + 1")
    leaves = 1
    while leaves < max(len(sizes), 1):
        leaves *= 2
    room = np.full(2 * leaves, seq_length, dtype=np.int64)  # every sequence (opened or not) starts empty
    members: list[list[int]] = []
    for sample in np.argsort(-sizes, kind="stable"):
        size = int(sizes[sample])
        node = 1
        while node < leaves:  # descend to the leftmost leaf with room >= size
            node = 2 * node if room[2 * node] >= size else 2 * node + 1
        slot = node - leaves
        if slot == len(members):
            members.append([])
        members[slot].append(int(sample))
        room[node] -= size
        while node > 1:
            node //= 2
            room[node] = max(room[2 * node], room[2 * node + 1])
    used = int(sizes.sum())
    return Packing(sequences=tuple(tuple(m) for m in members), used=used, capacity=len(members) * seq_length)


def packing_line(prefix: str, seq_length: int, split: Sequence[float]) -> str:
    """The packing of ``prefix``'s training split as a run packs it: samples, sequences, efficiency."""
    import torch  # noqa: F401 - megatron's indexed dataset imports it
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from bridgec.runtime.data_split import document_ranges

    index = IndexedDataset(prefix, mmap=True)
    lengths = np.array(index.sequence_lengths)  # a copy: the view dies with the index's mmap
    train = document_ranges(split, len(lengths))[0]
    part = lengths[train.begin : train.end] if train is not None else lengths[:0]
    packed = first_fit_decreasing(part, seq_length)
    return (
        f"{len(part):,} training samples packed into {len(packed.sequences):,} sequences of {seq_length}: "
        f"packing efficiency {packed.efficiency:.1%} (sample positions {packed.used:,} / all {packed.capacity:,})"
    )
