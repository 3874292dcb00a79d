"""Datasets and microbatch iterators on megatron-core's GPT datasets.

Every rank that needs data builds the same datasets (they are deterministic
and cached on disk), so no broadcast across tensor-parallel ranks is needed.
Samples are dealt out the way Megatron-LM's pretraining sampler deals them:
a step consumes ``global_batch_size`` consecutive samples; microbatch ``m``
of data-parallel rank ``d`` takes samples
``consumed + m x (micro x data) + d x micro + [0, micro)``. The position is
a single number (samples consumed), which is what a checkpoint stores.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs
import numpy as np
import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.utils import get_batch_on_this_cp_rank

from bridgec.runtime.data_split import document_ranges, split_text
from bridgec.runtime.errors import ExitCode, RunError
from bridgec.runtime.sft_data import SftData, build_sft_splits


@attrs.frozen(kw_only=True)
class TokenIds:
    """The special-token facts megatron's GPT datasets read from a tokenizer (duck-typed)."""

    vocab_size: int
    eod: int

    @property
    def unique_identifiers(self) -> dict[str, int]:
        """Part of the dataset cache key (megatron_dataset.py serialises the config with it)."""
        return {"vocab_size": self.vocab_size, "eod": self.eod}


@attrs.frozen(kw_only=True)
class Splits:
    """Datasets per split; a split that was not asked for is None."""

    train: GPTDataset
    valid: GPTDataset | None
    test: GPTDataset | None


def check_sources(prefixes: Sequence[str], split: Sequence[float]) -> None:
    """Reject missing, empty or unreadable indexed datasets, and splits without tokens, before megatron-core sees them.

    megatron-core loops forever on a dataset split with zero tokens
    (gpt_dataset.py ``_get_num_epochs``), whether or not samples of that split
    are asked for, and fails deep inside numpy on a missing file; each gets a
    message naming the file here. The compiler checks the document counts too;
    this catches data rebuilt or replaced since, and documents without tokens.
    """
    problems = []
    for prefix in prefixes:
        for suffix in (".bin", ".idx"):
            path = Path(prefix + suffix)
            if not path.is_file():
                problems.append(f"{path}: no such file (an indexed dataset needs {prefix}.bin and {prefix}.idx)")
            elif path.stat().st_size == 0:
                problems.append(f"{path}: file is empty")
        if problems:
            continue
        try:
            index = IndexedDataset(prefix, mmap=True)  # its lengths are a view of its mmap: keep it alive
        except Exception as error:  # noqa: BLE001 - any decoding failure means a damaged file
            problems.append(f"{prefix}.idx: cannot be read as a megatron indexed dataset ({error})")
            continue
        if int(index.sequence_lengths.sum()) == 0:
            problems.append(f"{prefix}: holds no tokens (megatron-core would loop forever on it)")
            continue
        problems += _empty_splits(prefix, index.sequence_lengths, split)
    if problems:
        # Every rank builds the same datasets from the same files: each finds the same problems.
        raise RunError(ExitCode.DATA_ERROR, "bad data:\n  " + "\n  ".join(problems), every_rank=True)


def _empty_splits(prefix: str, lengths: np.ndarray, split: Sequence[float]) -> list[str]:
    """A line for every split of ``prefix`` that has a share of [data] split but no tokens."""
    documents = len(lengths)
    problems = []
    for part in document_ranges(split, documents):
        if part is None or int(lengths[part.begin : part.end].sum()) > 0:
            continue
        problems.append(
            f"{prefix} ({documents} documents): split {list(split)} gives the {part.split} split documents "
            f"{part.arithmetic(documents)}, which hold no tokens, and megatron-core would loop forever building "
            "it; give that share to another split, or build the data from more documents"
        )
    return problems


def content_key(prefixes: Sequence[str]) -> str:
    """A key of what megatron-core's cached sample indices depend on: every source's document lengths.

    megatron-core names its cache files after the dataset's path and the config,
    not the data: after ``bridgec data build`` rewrites a dataset in place, the
    old indices would point past the new documents ("index out of range") or
    at the wrong tokens. Each distinct set of lengths gets a cache folder of its
    own; data with the same lengths has the same indices (tokens are always
    read from the current .bin). The same on every rank and every node.
    """
    digest = hashlib.sha256()
    for prefix in prefixes:
        index = IndexedDataset(prefix, mmap=True)  # its lengths are a view of its mmap: keep it alive
        lengths = np.ascontiguousarray(index.sequence_lengths)
        digest.update(len(lengths).to_bytes(8, "little"))
        digest.update(memoryview(lengths).cast("B"))
    return digest.hexdigest()[:16]


@attrs.frozen(kw_only=True)
class MockData:
    """megatron-core's synthetic, learnable sequences, always split in three equal parts."""


@attrs.frozen(kw_only=True)
class IndexedData:
    """Indexed datasets (prefix.bin + prefix.idx), blended by weight and split by document."""

    prefixes: tuple[str, ...]
    weights: tuple[float, ...]
    split: tuple[float, ...]
    """train/valid/test proportions of each source's documents."""


def build_splits(
    source: MockData | IndexedData | SftData,
    *,
    seq_length: int,
    seed: int,
    token_ids: TokenIds,
    eod_mask_loss: bool,
    num_samples: tuple[int, int, int],
    cache_dir: str,
    document_masking: bool = False,
) -> Splits:
    """Build train/valid/test datasets of exactly ``num_samples`` sequences each.

    megatron-core builds every split that has a share of ``split``, even one
    asked for 0 samples (bridgec never reads the test split).
    """
    if isinstance(source, SftData):
        train, valid = build_sft_splits(
            source, seq_length=seq_length, seed=seed, pad=token_ids.eod, num_samples=num_samples
        )
        return Splits(train=train, valid=valid, test=None)
    match source:
        case IndexedData(prefixes=prefixes, weights=weights, split=split):
            check_sources(prefixes, split)
            blend = (list(prefixes), list(weights) if len(prefixes) > 1 else None)
            cache_dir = os.path.join(cache_dir, content_key(prefixes))
            split_setting: str | None = split_text(split)
            dataset_class: type[GPTDataset] = GPTDataset
        case MockData():
            blend, split_setting, dataset_class = None, None, MockGPTDataset
    config = GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend=blend,
        split=split_setting,
        path_to_cache=cache_dir,
        tokenizer=token_ids,  # type: ignore[arg-type]  # megatron reads .eod and .vocab_size only
        # document_masking: positions restart after each eod and every sample carries its
        # [1, seq, seq] boolean mask (True: masked), causal and block-diagonal over documents.
        reset_position_ids=document_masking,
        reset_attention_mask=document_masking,
        eod_mask_loss=eod_mask_loss,
        create_attention_mask=document_masking,
        mid_level_dataset_surplus=0.005,
    )
    os.makedirs(cache_dir, exist_ok=True)
    train, valid, test = BlendedMegatronDatasetBuilder(dataset_class, list(num_samples), lambda: True, config).build()
    if train is None:
        raise RunError(
            ExitCode.DATA_ERROR, "the training split is empty: give it a share in [data] split", every_rank=True
        )
    return Splits(train=train, valid=valid, test=test)


class MicrobatchIterator(Iterator[dict[str, torch.Tensor]]):
    """This data-parallel rank's microbatches, in Megatron-LM sampler order, from ``consumed`` on."""

    def __init__(
        self,
        dataset: GPTDataset,
        *,
        micro_batch_size: int,
        data_parallel_size: int,
        data_rank: int,
        consumed: int = 0,
    ) -> None:
        self.dataset = dataset
        self.micro_batch_size = micro_batch_size
        self.data_parallel_size = data_parallel_size
        self.data_rank = data_rank
        self.consumed = consumed

    def __next__(self) -> dict[str, torch.Tensor]:
        start = self.consumed + self.data_rank * self.micro_batch_size
        if self.consumed + self.micro_batch_size * self.data_parallel_size > len(self.dataset):
            raise StopIteration
        samples = [self.dataset[index] for index in range(start, start + self.micro_batch_size)]
        self.consumed += self.micro_batch_size * self.data_parallel_size
        # Only the tensors go into the batch: megatron's BlendedDataset adds its numpy "dataset_id"
        # (which source a sample came from) to every sample, and nothing downstream reads it.
        return {
            key: torch.stack([sample[key] for sample in samples])
            for key, value in samples[0].items()
            if isinstance(value, torch.Tensor)
        }


@attrs.frozen(kw_only=True)
class Batch:
    """One microbatch as the model needs it; fields a stage does not use are None."""

    tokens: torch.Tensor | None
    position_ids: torch.Tensor | None
    labels: torch.Tensor | None
    loss_mask: torch.Tensor | None
    attention_mask: torch.Tensor | None = None
    """[batch, 1, seq, seq] booleans, True where attention is masked; None: megatron-core's causal mask."""
    packed_seq_params: PackedSeqParams | None = None
    """Packed SFT samples for Transformer Engine (THD format): where each sample starts; None: not packed so."""


def next_batch(
    data_iterator: Iterator[dict[str, torch.Tensor]] | None,
    *,
    pre_process: bool,
    post_process: bool,
    device: torch.device,
    context_parallel: bool = False,
    teacher_inputs: bool = False,
) -> Batch:
    """Take the next microbatch for a model chunk: inputs on the first stage, targets on the last.

    Middle pipeline chunks read nothing (their input arrives from the previous stage).
    With context parallelism each rank keeps its two load-balanced sequence chunks
    (megatron-core's ``get_batch_on_this_cp_rank``). ``teacher_inputs``: the last
    stage takes the tokens and position ids too, for a distillation's teacher that
    runs whole there (the student's own chunk there ignores them: it reads the
    previous stage's hidden states).
    """
    if not (pre_process or post_process) or data_iterator is None:
        return Batch(tokens=None, position_ids=None, labels=None, loss_mask=None)
    raw = next(data_iterator)
    if context_parallel:
        raw = get_batch_on_this_cp_rank(dict(raw))
    inputs = pre_process or (teacher_inputs and post_process)
    return Batch(
        tokens=raw["tokens"].to(device) if inputs else None,
        position_ids=raw["position_ids"].to(device) if inputs else None,
        labels=raw["labels"].to(device) if post_process else None,
        loss_mask=raw["loss_mask"].to(device) if post_process else None,
        # Every stage that reads data runs attention, so each takes the mask (present with document masking).
        attention_mask=raw["attention_mask"].to(device) if "attention_mask" in raw else None,
        packed_seq_params=thd_params(raw["cu_seqlens"], device) if "cu_seqlens" in raw else None,
    )


def thd_params(cu_seqlens: torch.Tensor, device: torch.device) -> PackedSeqParams:
    """Transformer Engine's THD parameters of one packed sequence (micro_batch_size 1: its [1, k] offsets)."""
    offsets = cu_seqlens.reshape(-1).to(device=device, dtype=torch.int32)
    longest = int((offsets[1:] - offsets[:-1]).max())
    return PackedSeqParams(
        qkv_format="thd", cu_seqlens_q=offsets, cu_seqlens_kv=offsets, max_seqlen_q=longest, max_seqlen_kv=longest
    )
