"""Data: the sampler order, rejection of bad files, and `bridgec data build`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bridgec.runtime.data import IndexedData, MicrobatchIterator, TokenIds, build_splits, check_sources
from bridgec.runtime.data_build import BYTE_EOD, DataBuildError, build_indexed_dataset, decode_bytes
from bridgec.runtime.errors import ExitCode, RunError


class _Numbers:
    """A dataset whose sample i is the tensor [i]."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"tokens": torch.tensor([index])}


def _indices(iterator: MicrobatchIterator, count: int) -> list[list[int]]:
    return [next(iterator)["tokens"].reshape(-1).tolist() for _ in range(count)]


def test_data_parallel_ranks_split_each_step_like_megatrons_sampler() -> None:
    rank0 = MicrobatchIterator(_Numbers(), micro_batch_size=2, data_parallel_size=2, data_rank=0)
    rank1 = MicrobatchIterator(_Numbers(), micro_batch_size=2, data_parallel_size=2, data_rank=1)
    assert _indices(rank0, 2) == [[0, 1], [4, 5]]
    assert _indices(rank1, 2) == [[2, 3], [6, 7]]
    single = MicrobatchIterator(_Numbers(), micro_batch_size=2, data_parallel_size=1, data_rank=0)
    assert sorted(sum(_indices(single, 4), [])) == list(range(8))  # one step of 8 = the same samples


def test_iterator_resumes_from_consumed_samples() -> None:
    resumed = MicrobatchIterator(_Numbers(), micro_batch_size=2, data_parallel_size=2, data_rank=1, consumed=8)
    assert _indices(resumed, 1) == [[10, 11]]


def test_iterator_stops_at_the_end() -> None:
    iterator = MicrobatchIterator(_Numbers(), micro_batch_size=32, data_parallel_size=2, data_rank=0)
    next(iterator)
    with pytest.raises(StopIteration):
        next(iterator)


def _jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def test_data_build_round_trip(tmp_path: Path) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    source = _jsonl(tmp_path / "docs.jsonl", ["hello", "", "wörld"])
    report = build_indexed_dataset(source, tmp_path / "out" / "tiny")
    assert (report.documents, report.tokens) == (2, len(b"hello") + 1 + len("wörld".encode()) + 1)
    dataset = IndexedDataset(str(tmp_path / "out" / "tiny"))
    assert decode_bytes(dataset[0].tolist()) == "hello"
    assert dataset[1].tolist()[-1] == BYTE_EOD
    sidecar = json.loads((tmp_path / "out" / "tiny.json").read_text())
    assert sidecar == {"dtype": "uint16", "eod": 256, "tokenizer": "bytes", "vocab_size": 257}
    assert not list((tmp_path / "out").glob(".*"))  # no staging files left behind
    check_sources([str(tmp_path / "out" / "tiny")], [1.0, 0.0, 0.0])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "no non-empty documents"),
        ('{"text": "a"}\nnot json\n', "docs.jsonl:2: not a JSON object"),
        ('{"body": "a"}\n', "docs.jsonl:1: expected an object with a string 'text' key"),
    ],
)
def test_data_build_rejects_bad_input(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "docs.jsonl").write_text(content)
    with pytest.raises(DataBuildError, match=message):
        build_indexed_dataset(tmp_path / "docs.jsonl", tmp_path / "tiny")
    assert not list(tmp_path.glob("tiny*"))


def test_missing_and_empty_sources_are_rejected_before_megatron(tmp_path: Path) -> None:
    (tmp_path / "empty.bin").write_bytes(b"")
    (tmp_path / "empty.idx").write_bytes(b"")
    with pytest.raises(RunError) as caught:
        check_sources([str(tmp_path / "missing"), str(tmp_path / "empty")], [98.0, 1.0, 1.0])
    assert caught.value.code == ExitCode.DATA_ERROR
    assert "missing.bin: no such file" in caught.value.message
    assert "empty.bin: file is empty" in caught.value.message


class _Blended:
    """Samples shaped like megatron's BlendedDataset's: tensors plus a numpy ``dataset_id``."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict[str, object]:
        import numpy

        return {"dataset_id": numpy.int16(index % 2), "tokens": torch.tensor([index])}


def test_blended_samples_batch_only_their_tensors() -> None:
    iterator = MicrobatchIterator(_Blended(), micro_batch_size=2, data_parallel_size=1, data_rank=0)
    batch = next(iterator)
    assert set(batch) == {"tokens"}
    assert batch["tokens"].reshape(-1).tolist() == [0, 1]


def _built(tmp_path: Path, name: str, texts: list[str]) -> str:
    prefix = tmp_path / "data" / name
    build_indexed_dataset(_jsonl(tmp_path / f"{name}.jsonl", texts), prefix)
    return str(prefix)


def test_a_split_without_documents_is_refused_with_the_numbers(tmp_path: Path) -> None:
    """Five documents and the default split: validation and test get none, and megatron-core would hang."""
    prefix = _built(tmp_path, "five", [f"document {i}" for i in range(5)])
    with pytest.raises(RunError) as caught:
        check_sources([prefix], [98.0, 1.0, 1.0])
    assert caught.value.code == ExitCode.DATA_ERROR
    assert caught.value.message == (
        f"bad data:\n  {prefix} (5 documents): split [98.0, 1.0, 1.0] gives the validation split documents "
        "round(0.98 x 5) = 5 to round(0.99 x 5) = 5, which hold no tokens, and megatron-core would loop forever "
        "building it; give that share to another split, or build the data from more documents"
        f"\n  {prefix} (5 documents): split [98.0, 1.0, 1.0] gives the test split documents round(0.99 x 5) = 5 to "
        "round(1 x 5) = 5, which hold no tokens, and megatron-core would loop forever building it; give that share "
        "to another split, or build the data from more documents"
    )
    check_sources([prefix], [3.0, 1.0, 1.0])  # one document each for validation and test


def _splits(prefix: str, cache: Path, samples: int) -> list[list[int]]:
    splits = build_splits(
        IndexedData(prefixes=(prefix,), weights=(1.0,), split=(90.0, 10.0, 0.0)),
        seq_length=16,
        seed=1,
        token_ids=TokenIds(vocab_size=257, eod=BYTE_EOD),
        eod_mask_loss=False,
        num_samples=(samples, 2, 0),
        cache_dir=str(cache),
    )
    return [splits.train[i]["tokens"].tolist() for i in range(len(splits.train))]


def test_dataset_rebuilt_in_place_does_not_reuse_stale_cached_indices(tmp_path: Path) -> None:
    """megatron-core keys its index cache by path and config; a rebuilt dataset must not read the old indices."""
    cache = tmp_path / "cache"
    prefix = _built(tmp_path, "corpus", ["a" * (5 + i % 7) for i in range(60)])
    assert {token for sample in _splits(prefix, cache, 40) for token in sample} <= {ord("a"), BYTE_EOD}
    _built(tmp_path, "corpus", ["b" * (1 + i % 3) for i in range(20)])  # same path, fewer and shorter documents
    assert {token for sample in _splits(prefix, cache, 40) for token in sample} <= {ord("b"), BYTE_EOD}
