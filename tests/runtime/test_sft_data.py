"""[data] kind = "sft" at run time: each sample alone in a padded sequence, its mask shifted onto the predictions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridgec.runtime.errors import RunError
from bridgec.runtime.sft_build import SftSettings, build_sft_dataset
from bridgec.runtime.sft_data import SftData, build_sft_splits
from tests import tiny_tokenizers


@pytest.fixture(scope="module")
def sft_prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sft")
    tokenizer = tiny_tokenizers.huggingface_bpe(folder / "tok")
    pairs = [{"prompt": f"question {i}?", "completion": f"answer {i}" + " more" * (i % 4)} for i in range(10)]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    settings = SftSettings(loss_mode="completion")
    build_sft_dataset([folder / "pairs.jsonl"], folder / "sft", tokenizer=tokenizer, settings=settings)
    return folder / "sft"


def test_a_sample_fills_one_sequence_and_its_mask_marks_the_predicted_tokens(sft_prefix: Path) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    train, valid = build_sft_splits(
        SftData(prefixes=(str(sft_prefix),), weights=(1.0,), split=(80.0, 20.0, 0.0)),
        seq_length=24,
        seed=1,
        pad=0,
        num_samples=(20, 4),
    )
    tokens, masks = IndexedDataset(str(sft_prefix)), IndexedDataset(f"{sft_prefix}.loss_mask")
    assert (len(train), len(valid)) == (20, 4)
    assert sorted(train.order[:8].tolist()) == list(range(8))  # one whole, shuffled pass over the 8 training samples
    assert [valid.sequences[i] for i in valid.order] == [(8,), (9,), (8,), (9,)]  # validation in order, repeated
    (sample,) = train.sequences[int(train.order[0])]
    item = train[0]
    ids, mask = tokens[sample].tolist(), masks[sample].tolist()
    n = len(ids)
    assert item["tokens"][:n].tolist() == ids and item["tokens"][n:].eq(0).all()
    assert item["labels"][: n - 1].tolist() == ids[1:]
    # Position p predicts token p + 1: it counts exactly when token p + 1 is a completion token.
    assert item["loss_mask"][: n - 1].tolist() == [float(m) for m in mask[1:]]
    assert item["loss_mask"][n - 1 :].eq(0).all()
    assert item["position_ids"].tolist() == list(range(24))
    assert train.describe("sft").startswith("sft: 8 SFT samples, ")


def test_a_sample_longer_than_the_sequence_is_refused(sft_prefix: Path) -> None:
    with pytest.raises(
        RunError,
        match=r"does not fit a sequence of seq_length 4 \+ 1; rebuild with `bridgec data build --sft --max-length 5",
    ):
        build_sft_splits(
            SftData(prefixes=(str(sft_prefix),), weights=(1.0,), split=(1.0, 0.0, 0.0)),
            seq_length=4,
            seed=1,
            pad=0,
            num_samples=(2, 0),
        )


def test_several_datasets_blend_by_weight_as_megatron_blends(sft_prefix: Path, tmp_path: Path) -> None:
    """Weights 3:1 over two datasets: every prefix of the order keeps megatron-core's shares (its
    build_blending_indices), each dataset serves its own sequences in its own order, and both splits blend."""
    other = tmp_path / "other"
    pairs = [{"prompt": f"q{i}", "completion": f"a{i} " * (1 + i % 3)} for i in range(6)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    tokenizer = tiny_tokenizers.huggingface_bpe(tmp_path / "tok")
    build_sft_dataset([tmp_path / "pairs.jsonl"], other, tokenizer=tokenizer, settings=SftSettings())
    source = SftData(prefixes=(str(sft_prefix), str(other)), weights=(3.0, 1.0), split=(50.0, 50.0, 0.0), packing=True)
    train, valid = build_sft_splits(source, seq_length=24, seed=1, pad=0, num_samples=(40, 8))
    assert (len(train), len(valid)) == (40, 8)
    first, second = train.parts
    assert [len(part) for part in train.parts] == [30, 10]  # 3:1 exactly
    for n in range(1, 41):  # the share drawn so far never strays a whole sequence from the weights
        drawn = int((train.dataset_index[:n] == 0).sum())
        assert abs(drawn - 0.75 * n) <= 1
    # Each dataset's sequences in its own order: the blend's k-th draw from a dataset is that dataset's item k.
    for index in (0, 5, 17, 39):
        part = train.parts[train.dataset_index[index]]
        expected = part[int(train.sample_index[index])]
        assert all(train[index][key].equal(expected[key]) for key in expected)
    assert sorted(first.order[: len(first.sequences)].tolist()) == list(range(len(first.sequences)))
    assert [len(part) for part in valid.parts] == [6, 2]
    banner = train.describe()
    assert "(weight share 75.0%: 30 of the 40 sequences)" in banner
    assert "(weight share 25.0%: 10 of the 40 sequences)" in banner


def test_a_blended_dataset_with_an_empty_split_is_refused(sft_prefix: Path, tmp_path: Path) -> None:
    (tmp_path / "one.jsonl").write_text(json.dumps({"prompt": "q", "completion": "a b"}) + "\n")
    tokenizer = tiny_tokenizers.huggingface_bpe(tmp_path / "tok")
    build_sft_dataset([tmp_path / "one.jsonl"], tmp_path / "one", tokenizer=tokenizer, settings=SftSettings())
    source = SftData(prefixes=(str(sft_prefix), str(tmp_path / "one")), weights=(1.0, 1.0), split=(50.0, 50.0, 0.0))
    with pytest.raises(RunError, match=r"one: the training split has no samples, but the blend draws 2 sequences"):
        build_sft_splits(source, seq_length=24, seed=1, pad=0, num_samples=(4, 4))
