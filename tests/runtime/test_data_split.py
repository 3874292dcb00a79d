"""data_split: megatron-core's document ranges per split, computed without torch, equal megatron-core's own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from megatron.core.datasets.blended_megatron_dataset_config import (
    convert_split_vector_to_split_matrix,
    parse_and_normalize_split,
)

from bridgec.runtime.data import IndexedData, TokenIds, build_splits
from bridgec.runtime.data_build import BYTE_EOD, build_indexed_dataset
from bridgec.runtime.data_split import document_ranges, empty_splits, idx_document_count, split_text

SHARES = st.one_of(
    st.sampled_from([0.0, 1e-7, 1e-5, 0.1, 0.5, 1.0, 2.0, 10.0, 33.3, 98.0, 99.9, 1e20]),
    st.floats(min_value=0.0, max_value=1000.0, allow_nan=False),
)


@settings(max_examples=300, deadline=None)
@given(split=st.tuples(SHARES, SHARES, SHARES).filter(lambda s: s[0] > 0), documents=st.integers(0, 5000))
def test_ranges_equal_megatrons_split_matrix_and_rounding(split: tuple[float, float, float], documents: int) -> None:
    # What megatron-core builds from the config string bridgec passes it (blended_megatron_dataset_config.py),
    # rounded as _build_megatron_dataset_splits rounds it.
    matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(split_text(split)))
    expected = [
        None
        if bookends is None
        else (int(round(bookends[0] * float(documents))), int(round(bookends[1] * float(documents))))
        for bookends in matrix
    ]
    ours = [None if r is None else (r.begin, r.end) for r in document_ranges(split, documents)]
    assert ours == expected


def test_split_text_has_no_exponent() -> None:
    # megatron reads the shares with the regex [.0-9]+: "1e-05" would be two numbers.
    assert split_text([98.0, 1e-5, 1e20]) == "98.0,0.00001,100000000000000000000"
    assert parse_and_normalize_split(split_text([98.0, 1e-5, 2.0])) == parse_and_normalize_split("98,0.00001,2")


@pytest.mark.parametrize(
    ("split", "documents"),
    [
        ([90.0, 10.0, 0.0], 21),
        ([80.0, 10.0, 10.0], 37),
        ([1.0, 1.0, 1.0], 5),
        ([33.3, 33.3, 33.4], 7),
        ([3.0, 1.0, 0.0], 4),
    ],
)
def test_ranges_equal_the_documents_megatron_builds(split: list[float], documents: int, tmp_path: Path) -> None:
    """The datasets megatron-core really builds hold exactly the documents document_ranges names."""
    texts = "".join(json.dumps({"text": f"document number {i}"}) + "\n" for i in range(documents))
    (tmp_path / "docs.jsonl").write_text(texts)
    prefix = tmp_path / "data"
    build_indexed_dataset(tmp_path / "docs.jsonl", prefix)
    assert idx_document_count((tmp_path / "data.idx").read_bytes()[:34]) == documents  # what the compiler reads
    built = build_splits(
        IndexedData(prefixes=(str(prefix),), weights=(1.0,), split=tuple(split)),
        seq_length=8,
        seed=1,
        token_ids=TokenIds(vocab_size=257, eod=BYTE_EOD),
        eod_mask_loss=False,
        num_samples=(4, 2, 0),
        cache_dir=str(tmp_path / "cache"),
    )
    datasets = (built.train, built.valid, built.test)
    for dataset, expected in zip(datasets, document_ranges(split, documents)):
        if expected is None:
            assert dataset is None
        else:
            assert dataset.indices.tolist() == list(range(expected.begin, expected.end))


def test_empty_splits_and_the_index_header() -> None:
    assert [r.split for r in empty_splits([98.0, 1.0, 1.0], 5)] == ["validation", "test"]
    assert empty_splits([98.0, 1.0, 1.0], 200) == ()
    assert [r.split for r in empty_splits([99.9, 0.1, 0.0], 200)] == ["validation"]
    header = (
        b"MMIDIDX\x00\x00" + (1).to_bytes(8, "little") + b"\x08" + (5).to_bytes(8, "little") + (6).to_bytes(8, "little")
    )
    assert idx_document_count(header) == 5
    assert idx_document_count(header[:20]).startswith("it is 20 bytes long")
