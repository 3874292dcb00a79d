"""[data] kind = "sft": the samples of ``bridgec data build --sft`` as training sequences.

Each sample (tokens + loss mask, runtime/sft_build.py) fills one sequence of ``seq_length``
alone: tokens ``[0, seq)`` predict ``[1, seq]``, the tail is padded with the end-of-document id
and left out of the loss. The loss mask of the position that predicts token ``t`` is the
sample's mask at ``t`` (a token counts when it is an assistant token). Samples are split by
[data] split like megatron-core splits documents (``round(share x n)`` bookends); the training
split is reshuffled every epoch with the run's seed, the validation split read in order, both
repeated as often as ``num_samples`` needs. A sample longer than ``seq_length + 1`` tokens is
refused at run start (the data build's ``--max-length`` cuts or drops them).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import numpy as np
import torch
from megatron.core.datasets.indexed_dataset import IndexedDataset

from bridgec.runtime.data_split import document_ranges
from bridgec.runtime.errors import ExitCode, RunError

MASK_SUFFIX = ".loss_mask"


@attrs.frozen(kw_only=True)
class SftData:
    """One SFT dataset: prefix.bin/.idx (tokens), prefix.loss_mask.bin/.idx, split by sample."""

    prefix: str
    split: tuple[float, ...]


class SftDataset(torch.utils.data.Dataset):
    """``order``'s samples of ``prefix``, each padded into one sequence."""

    def __init__(
        self,
        tokens: IndexedDataset,
        masks: IndexedDataset,
        split: range,
        order: np.ndarray,
        *,
        seq_length: int,
        pad: int,
    ) -> None:
        self.tokens, self.masks, self.split, self.order = tokens, masks, split, order
        self.seq_length, self.pad = seq_length, pad

    def __len__(self) -> int:
        return len(self.order)

    def describe(self, path: str) -> str:
        """The split in a line: samples, tokens, and how full its sequences are (real tokens / all tokens)."""
        count = len(self.split)
        lengths = self.tokens.sequence_lengths[self.split.start : self.split.stop]
        fill = float(lengths.sum()) / (count * (self.seq_length + 1))
        return (
            f"{path}: {count:,} SFT samples, {int(lengths.sum()):,} tokens in the training split, "
            f"{fill:.1%} of their sequences' tokens real (the rest padding); this run reads {len(self):,} "
            f"sequences, {len(self) / count:.2f} epochs"
        )

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = int(self.order[index])
        ids = np.full(self.seq_length + 1, self.pad, dtype=np.int64)
        mask = np.zeros(self.seq_length + 1, dtype=np.float32)
        tokens = self.tokens[sample]
        ids[: len(tokens)] = tokens
        mask[: len(tokens)] = self.masks[sample]
        return {
            "tokens": torch.from_numpy(ids[:-1].copy()),
            "labels": torch.from_numpy(ids[1:].copy()),
            "loss_mask": torch.from_numpy(mask[1:].copy()),
            "position_ids": torch.arange(self.seq_length, dtype=torch.long),
        }


def _repeat(samples: np.ndarray, count: int, shuffle: np.random.Generator | None) -> np.ndarray:
    """``count`` sample ids: whole passes over ``samples`` (each reshuffled when ``shuffle``), cut at ``count``."""
    if count == 0 or len(samples) == 0:
        return np.zeros(0, dtype=np.int64)
    passes = -(-count // len(samples))
    return np.concatenate([shuffle.permutation(samples) if shuffle else samples for _ in range(passes)])[:count]


def build_sft_splits(
    source: SftData, *, seq_length: int, seed: int, pad: int, num_samples: Sequence[int]
) -> tuple[SftDataset, SftDataset | None]:
    """The training and validation datasets of ``num_samples[0]`` and ``num_samples[1]`` sequences."""
    try:
        tokens = IndexedDataset(source.prefix, mmap=True)
        masks = IndexedDataset(source.prefix + MASK_SUFFIX, mmap=True)
    except (OSError, ValueError, AssertionError) as error:
        raise RunError(
            ExitCode.DATA_ERROR, f"{source.prefix}: not an SFT dataset bridgec can read ({error})", every_rank=True
        ) from None
    lengths = tokens.sequence_lengths
    if len(masks) != len(tokens) or not np.array_equal(masks.sequence_lengths, lengths):
        raise RunError(
            ExitCode.DATA_ERROR,
            f"{source.prefix}: the loss masks ({source.prefix}{MASK_SUFFIX}) do not match the tokens sample for "
            "sample; rebuild with `bridgec data build --sft`",
            every_rank=True,
        )
    if (longest := int(lengths.max())) > seq_length + 1:
        raise RunError(
            ExitCode.DATA_ERROR,
            f"{source.prefix}: a sample of {longest} tokens does not fit a sequence of seq_length {seq_length} + 1; "
            f"rebuild with `bridgec data build --sft --max-length {seq_length + 1} --overlong truncate` (or drop)",
            every_rank=True,
        )
    ranges = document_ranges(source.split, len(lengths))
    rng = np.random.default_rng(seed)
    datasets = []
    for part, count, shuffle in zip(ranges[:2], num_samples[:2], (rng, None)):
        if part is None or count == 0:
            datasets.append(None)
            continue
        order = _repeat(np.arange(part.begin, part.end), count, shuffle)
        datasets.append(SftDataset(tokens, masks, range(part.begin, part.end), order, seq_length=seq_length, pad=pad))
    if datasets[0] is None or len(datasets[0]) == 0:
        raise RunError(
            ExitCode.DATA_ERROR, "the training split is empty: give it a share in [data] split", every_rank=True
        )
    return datasets[0], datasets[1]
