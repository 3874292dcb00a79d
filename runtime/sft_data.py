"""[data] kind = "sft": the samples of ``bridgec data build --sft`` as training sequences.

Each sample (tokens + loss mask, runtime/sft_build.py) fills one sequence of ``seq_length``
alone: tokens ``[0, seq)`` predict ``[1, seq]``, the tail is padded with the end-of-document id
and left out of the loss. The loss mask of the position that predicts token ``t`` is the
sample's mask at ``t`` (a token counts when it is an assistant token). Samples are split by
[data] split like megatron-core splits documents (``round(share x n)`` bookends); the training
split is reshuffled every epoch with the run's seed, the validation split read in order, both
repeated as often as ``num_samples`` needs. A sample longer than ``seq_length + 1`` tokens is
refused at run start (the data build's ``--max-length`` cuts or drops them).

Several datasets are blended by weight the way megatron-core blends pretraining data: its
``build_blending_indices`` gives, for each sequence of a split, the dataset it comes from (the
shares drawn so far stay closest to the weights), and each dataset serves its own sequences in
its own order, repeated as often as its share needs.

With ``packing`` (runtime/sft_pack.py) each split's samples are packed first-fit-decreasing into
sequences instead: position ids restart at 0 for each sample, and each sequence carries a
``[1, seq, seq]`` block-diagonal causal mask (True: masked), so a sample attends to itself only,
as it would alone. The sequences, not the samples, are reshuffled every epoch. For Transformer
Engine (``attention = "thd"``) each sequence carries ``cu_seqlens`` instead of the mask: the
offsets where its samples (and the trailing padding, a block of its own) start, plus the end,
which ``runtime/data.py`` turns into megatron-core's THD ``PackedSeqParams``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import attrs
import numpy as np
import torch
from megatron.core.datasets.indexed_dataset import IndexedDataset

from bridgec.runtime.data_split import document_ranges
from bridgec.runtime.errors import ExitCode, RunError
from bridgec.runtime.sft_pack import first_fit_decreasing

MASK_SUFFIX = ".loss_mask"


@attrs.frozen(kw_only=True)
class SftData:
    """SFT datasets (each prefix.bin/.idx tokens and prefix.loss_mask.bin/.idx), split by sample, blended by weight."""

    prefixes: tuple[str, ...]
    weights: tuple[float, ...]
    """Shares of the blend (normalised over all datasets); one dataset takes every sequence."""
    split: tuple[float, ...]
    packing: bool = False
    """Pack several samples into each sequence (first fit decreasing) instead of one sample per sequence."""
    attention: Literal["mask", "thd"] = "mask"
    """How packed samples are kept apart: a block-diagonal mask (local attention) or cu_seqlens (Transformer Engine)."""


class SftDataset(torch.utils.data.Dataset):
    """``order``'s sequences, each holding the samples ``sequences[i]`` lists, padded to ``seq_length``."""

    def __init__(
        self,
        tokens: IndexedDataset,
        masks: IndexedDataset,
        sequences: Sequence[Sequence[int]],
        order: np.ndarray,
        *,
        seq_length: int,
        pad: int,
        packed: bool,
        attention: Literal["mask", "thd"] = "mask",
    ) -> None:
        self.tokens, self.masks, self.sequences, self.order = tokens, masks, sequences, order
        self.seq_length, self.pad, self.packed, self.attention = seq_length, pad, packed, attention

    def __len__(self) -> int:
        return len(self.order)

    def describe(self, path: str) -> str:
        """The split in a line: samples, sequences, and how full they are (sample positions / all positions)."""
        samples = [sample for sequence in self.sequences for sample in sequence]
        lengths = self.tokens.sequence_lengths[samples]
        used = int(np.maximum(lengths - 1, 0).sum())
        fill = used / (len(self.sequences) * self.seq_length)
        packed = f", packed into {len(self.sequences):,} sequences" if self.packed else ""
        return (
            f"{path}: {len(samples):,} SFT samples{packed}, {int(lengths.sum()):,} tokens in the training split, "
            f"{fill:.1%} of their sequences' positions real (the rest padding); this run reads {len(self):,} "
            f"sequences, {len(self) / len(self.sequences):.2f} epochs"
        )

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        seq = self.seq_length
        ids = np.full(seq, self.pad, dtype=np.int64)
        labels = np.full(seq, self.pad, dtype=np.int64)
        loss_mask = np.zeros(seq, dtype=np.float32)
        position_ids = np.arange(seq, dtype=np.int64)
        starts = []
        at = 0
        for sample in self.sequences[int(self.order[index])]:
            tokens, mask = self.tokens[sample], self.masks[sample]
            # Inputs tokens[:-1] predict tokens[1:]; the loss mask of the position predicting token t is mask[t].
            # Alone (unpacked) the last token is also an input, predicting padding outside the loss: the same loss.
            n = max(len(tokens) - 1, 0) if self.packed else min(len(tokens), seq)
            ids[at : at + n] = tokens[:n]
            labels[at : at + len(tokens) - 1] = tokens[1:]
            loss_mask[at : at + len(tokens) - 1] = mask[1:]
            position_ids[at : at + n] = np.arange(n)
            starts.append(at)
            at += n
        item = {
            "tokens": torch.from_numpy(ids),
            "labels": torch.from_numpy(labels),
            "loss_mask": torch.from_numpy(loss_mask),
        }
        if not self.packed:
            item["position_ids"] = torch.arange(seq, dtype=torch.long)
            return item
        position_ids[at:] = np.arange(seq - at)  # the padding is a block of its own: no row is fully masked
        item["position_ids"] = torch.from_numpy(position_ids)
        if self.attention == "thd":
            # Transformer Engine's THD format: cumulative sequence lengths, the padding as a last block.
            bounds = [*starts, at] + ([seq] if at < seq else [])
            item["cu_seqlens"] = torch.tensor(bounds, dtype=torch.int32)
            return item
        document = np.zeros(seq, dtype=np.int64)
        for number, start in enumerate([*starts[1:], at], start=1):
            document[start:] = number
        same = document[:, None] == document[None, :]
        causal = np.tril(np.ones((seq, seq), dtype=bool))
        # megatron-core's convention (as GPTDataset's create_attention_mask): True where attention is masked.
        item["attention_mask"] = torch.from_numpy(~(same & causal)).unsqueeze(0)
        return item


def _repeat(samples: np.ndarray, count: int, shuffle: np.random.Generator | None) -> np.ndarray:
    """``count`` sample ids: whole passes over ``samples`` (each reshuffled when ``shuffle``), cut at ``count``."""
    if count == 0 or len(samples) == 0:
        return np.zeros(0, dtype=np.int64)
    passes = -(-count // len(samples))
    return np.concatenate([shuffle.permutation(samples) if shuffle else samples for _ in range(passes)])[:count]


def _sequences(lengths: np.ndarray, part: range, seq_length: int, packing: bool) -> Sequence[Sequence[int]]:
    """The split's samples grouped into sequences: first fit decreasing when packing, else one each."""
    if not packing:
        return [(sample,) for sample in part]
    packed = first_fit_decreasing(lengths[part.start : part.stop], seq_length)
    return [tuple(part.start + i for i in sequence) for sequence in packed.sequences]


class SftBlend(torch.utils.data.Dataset):
    """Sequence ``i`` is ``parts[dataset_index[i]][sample_index[i]]``: several SFT datasets blended by weight."""

    def __init__(
        self, parts: Sequence[SftDataset], dataset_index: np.ndarray, sample_index: np.ndarray, weights: np.ndarray
    ) -> None:
        self.parts, self.dataset_index, self.sample_index, self.weights = parts, dataset_index, sample_index, weights

    def __len__(self) -> int:
        return len(self.dataset_index)

    def describe(self) -> str:
        """Each dataset's line with its share of the blend and how many of this run's sequences it serves."""
        counts = np.bincount(self.dataset_index, minlength=len(self.parts))
        return "; ".join(
            f"{part.describe(Path(part.tokens.path_prefix).name)} (weight share {share:.1%}: {int(count):,} of the {len(self):,} sequences)"
            for part, share, count in zip(self.parts, self.weights, counts)
        )

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.parts[int(self.dataset_index[index])][int(self.sample_index[index])]


@attrs.frozen
class _Source:
    prefix: str
    tokens: IndexedDataset
    masks: IndexedDataset


def _open(prefix: str, seq_length: int) -> _Source:
    """One SFT dataset's tokens and loss masks, checked against each other and ``seq_length``."""
    try:
        tokens = IndexedDataset(prefix, mmap=True)
        masks = IndexedDataset(prefix + MASK_SUFFIX, mmap=True)
    except (OSError, ValueError, AssertionError) as error:
        raise RunError(
            ExitCode.DATA_ERROR, f"{prefix}: not an SFT dataset bridgec can read ({error})", every_rank=True
        ) from None
    lengths = tokens.sequence_lengths
    if len(masks) != len(tokens) or not np.array_equal(masks.sequence_lengths, lengths):
        raise RunError(
            ExitCode.DATA_ERROR,
            f"{prefix}: the loss masks ({prefix}{MASK_SUFFIX}) do not match the tokens sample for "
            "sample; rebuild with `bridgec data build --sft`",
            every_rank=True,
        )
    if (longest := int(lengths.max())) > seq_length + 1:
        raise RunError(
            ExitCode.DATA_ERROR,
            f"{prefix}: a sample of {longest} tokens does not fit a sequence of seq_length {seq_length} + 1; "
            f"rebuild with `bridgec data build --sft --max-length {seq_length + 1} --overlong truncate` (or drop)",
            every_rank=True,
        )
    return _Source(prefix=prefix, tokens=tokens, masks=masks)


def _blend_indices(weights: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """megatron-core's blending: for each of ``count`` sequences, its dataset and its index in that dataset."""
    from megatron.core.datasets import helpers  # the compiled helper BlendedDataset uses

    dataset_index = np.zeros(count, dtype=np.int16)
    sample_index = np.zeros(count, dtype=np.int64)
    helpers.build_blending_indices(dataset_index, sample_index, weights.tolist(), len(weights), count, False)
    return dataset_index, sample_index


def build_sft_splits(
    source: SftData, *, seq_length: int, seed: int, pad: int, num_samples: Sequence[int]
) -> tuple[SftDataset | SftBlend, SftDataset | SftBlend | None]:
    """The training and validation datasets of ``num_samples[0]`` and ``num_samples[1]`` sequences."""
    sources = [_open(prefix, seq_length) for prefix in source.prefixes]
    weights = np.asarray(source.weights, dtype=np.float64) / sum(source.weights)
    ranges = [document_ranges(source.split, len(s.tokens.sequence_lengths)) for s in sources]
    rng = np.random.default_rng(seed)
    datasets: list[SftDataset | SftBlend | None] = []
    for k, (count, shuffle) in enumerate(zip(num_samples[:2], (rng, None))):
        parts = [r[k] for r in ranges]
        if any(part is None for part in parts) or count == 0:
            datasets.append(None)
            continue
        if len(sources) == 1:
            dataset_index, sample_index = np.zeros(count, dtype=np.int16), np.arange(count, dtype=np.int64)
        else:
            dataset_index, sample_index = _blend_indices(weights, count)
        built = []
        for number, (s, part) in enumerate(zip(sources, parts)):
            lengths = s.tokens.sequence_lengths
            sequences = _sequences(lengths, range(part.begin, part.end), seq_length, source.packing)
            needed = int(np.count_nonzero(dataset_index == number))
            if needed and not sequences and len(sources) > 1:
                raise RunError(
                    ExitCode.DATA_ERROR,
                    f"{s.prefix}: the {('training', 'validation')[k]} split has no samples, but the blend draws "
                    f"{needed:,} sequences from it; give the split more samples or leave this dataset out of the blend",
                    every_rank=True,
                )
            order = _repeat(np.arange(len(sequences)), needed, shuffle)
            built.append(
                SftDataset(
                    s.tokens,
                    s.masks,
                    sequences,
                    order,
                    seq_length=seq_length,
                    pad=pad,
                    packed=source.packing,
                    attention=source.attention,
                )
            )
        datasets.append(built[0] if len(built) == 1 else SftBlend(built, dataset_index, sample_index, weights))
    if datasets[0] is None or len(datasets[0]) == 0:
        raise RunError(
            ExitCode.DATA_ERROR, "the training split is empty: give it a share in [data] split", every_rank=True
        )
    return datasets[0], datasets[1]
