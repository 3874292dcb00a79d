"""Real tokenizers in ``bridgec data build``: parity with each library's own encoding, workers, inputs, bad input.

The tokenizers are tiny ones trained or written here (tests/tiny_tokenizers.py), never downloaded.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bridgec.runtime.data_build import CHUNK_DOCUMENTS, DataBuildError, build_indexed_dataset
from bridgec.runtime.tokenizer import TIKTOKEN_PATTERN, TokenizerError, describe
from tests import tiny_tokenizers

KINDS = ("huggingface", "sentencepiece", "tiktoken")


@pytest.fixture(scope="module")
def tokenizers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizers")
    tiny_tokenizers.huggingface_bpe(folder / "hf")
    tiny_tokenizers.sentencepiece_model(folder / "sp")
    tiny_tokenizers.tiktoken_file(folder / "tk")
    return folder


def _path(folder: Path, kind: str) -> Path:
    return {
        "huggingface": folder / "hf",
        "sentencepiece": folder / "sp" / "tiny.model",
        "tiktoken": folder / "tk" / "tiny.tiktoken",
    }[kind]


def _library_encoder(kind: str, path: Path):  # noqa: ANN202 - a str -> list[int] callable
    """Each library's own encoding, built from the file with that library's own loader."""
    match kind:
        case "huggingface":
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
            return lambda text: tokenizer.encode(text, add_special_tokens=False).ids
        case "sentencepiece":
            import sentencepiece

            processor = sentencepiece.SentencePieceProcessor(model_file=str(path))
            return processor.encode
        case "tiktoken":
            import tiktoken
            from tiktoken.load import load_tiktoken_bpe

            ranks = load_tiktoken_bpe(str(path))
            encoding = tiktoken.Encoding(
                name="test",
                pat_str=TIKTOKEN_PATTERN,
                mergeable_ranks=ranks,
                special_tokens={"<|endoftext|>": len(ranks)},
            )
            return encoding.encode_ordinary
    raise AssertionError(kind)


def _documents(prefix: Path) -> list[list[int]]:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(str(prefix))
    return [dataset[i].tolist() for i in range(len(dataset))]


@pytest.mark.parametrize("kind", KINDS)
def test_ids_equal_the_librarys_own_encoding(tokenizers_dir: Path, tmp_path: Path, kind: str) -> None:
    path = _path(tokenizers_dir, kind)
    facts = describe(path)
    report = build_indexed_dataset(
        tiny_tokenizers.CORPUS, tmp_path / "ds", text_key=tiny_tokenizers.TEXT_KEY, tokenizer=path, append_eod=True
    )
    encode = _library_encoder(kind, path)
    expected = [[*encode(text), facts.eod] for text in tiny_tokenizers.corpus_texts()]
    assert _documents(tmp_path / "ds") == expected
    assert report.tokens == sum(map(len, expected))
    sidecar = json.loads((tmp_path / "ds.json").read_text())
    assert sidecar == {
        "tokenizer": kind,
        "vocab_size": facts.vocab_size,
        "eod": facts.eod,
        "bos": facts.bos,
        "pad": facts.pad,
        "tokenizer_sha256": facts.sha256,
        "append_eod": True,
        "dtype": "uint16",
    }
    assert max(t for doc in expected for t in doc) < facts.vocab_size


def test_special_ids_come_from_the_tokenizer(tokenizers_dir: Path) -> None:
    hf = describe(_path(tokenizers_dir, "huggingface"))
    assert (hf.eod, hf.pad, hf.bos, hf.vocab_size) == (0, 1, None, 600)  # <|endoftext|>, <pad>: the first specials
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=str(_path(tokenizers_dir, "sentencepiece")))
    sp = describe(_path(tokenizers_dir, "sentencepiece"))
    assert (sp.eod, sp.bos, sp.pad, sp.vocab_size) == (
        processor.eos_id(),
        processor.bos_id(),
        None,
        processor.get_piece_size(),
    )
    tk = describe(_path(tokenizers_dir, "tiktoken"))
    assert (tk.eod, tk.vocab_size) == (tk.vocab_size - 1, 256 + 300 + 1)


def test_output_is_byte_identical_whatever_the_worker_count(tokenizers_dir: Path, tmp_path: Path) -> None:
    lines = tiny_tokenizers.CORPUS.read_text(encoding="utf-8").splitlines(keepends=True)
    big = tmp_path / "big.jsonl"
    big.write_text("".join(lines * (2 * CHUNK_DOCUMENTS // len(lines) + 1)), encoding="utf-8")  # three chunks
    outputs = []
    for workers in (1, 2, 3):
        prefix = tmp_path / f"w{workers}" / "ds"
        build_indexed_dataset(
            big,
            prefix,
            text_key="content",
            tokenizer=_path(tokenizers_dir, "huggingface"),
            append_eod=True,
            workers=workers,
        )
        outputs.append([Path(f"{prefix}{suffix}").read_bytes() for suffix in (".bin", ".idx", ".json")])
    assert outputs[0] == outputs[1] == outputs[2]


def test_parquet_and_text_inputs(tokenizers_dir: Path, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = tiny_tokenizers.corpus_texts()
    pq.write_table(pa.table({"id": list(range(len(texts))), "body": texts}), tmp_path / "docs.parquet")
    (tmp_path / "one.txt").write_text(texts[0] + "\n" + texts[1], encoding="utf-8")
    path = _path(tokenizers_dir, "tiktoken")
    build_indexed_dataset(
        [tmp_path / "docs.parquet", tmp_path / "one.txt"], tmp_path / "ds", text_key="body", tokenizer=path
    )
    encode = _library_encoder("tiktoken", path)
    assert _documents(tmp_path / "ds") == [encode(t) for t in texts] + [encode(texts[0] + "\n" + texts[1])]
    with pytest.raises(
        DataBuildError, match=r"docs.parquet: no column 'text' \(columns: id, body\); choose one with --text-key"
    ):
        build_indexed_dataset(tmp_path / "docs.parquet", tmp_path / "x", tokenizer=path)


def test_a_large_vocabulary_gets_int32_tokens(tmp_path: Path) -> None:
    # 65,536 byte pairs make a vocabulary too large for uint16 (megatron's DType.optimal_dtype: < 65,500).
    ranks = [bytes([b]) for b in range(256)] + [bytes([a, b]) for a in range(256) for b in range(256)]
    file = tmp_path / "big.tiktoken"
    file.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for r, t in enumerate(ranks)), encoding="ascii")
    (tmp_path / "docs.jsonl").write_text('{"text": "hello"}\n')
    report = build_indexed_dataset(tmp_path / "docs.jsonl", tmp_path / "ds", tokenizer=file, append_eod=True)
    assert report.dtype == "int32"
    assert _documents(tmp_path / "ds")[0][-1] == len(ranks)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "absent", r"absent: no such file or folder"),
        (
            lambda d: _mkdir(d / "empty"),
            r"empty: a Hugging Face tokenizer folder needs tokenizer.json, and it has none",
        ),
        (
            lambda d: _write(d / "hf" / "tokenizer.json", '{"version": ').parent,
            r"hf/tokenizer.json: not a tokenizer file the tokenizers library can read",
        ),
        (lambda d: _write(d / "bad.model", "not a model"), r"bad.model: not a SentencePiece model"),
        (lambda d: _write(d / "bad.tiktoken", "aGVsbG8= 0\n!!! 1\n"), r"bad.tiktoken:2: not a tiktoken rank line"),
        (
            lambda d: _write(d / "gap.tiktoken", "YQ== 0\nYg== 2\n"),
            r"gap.tiktoken: the ranks are not 0 to 1, each once",
        ),
    ],
)
def test_a_bad_tokenizer_is_named_and_nothing_is_written(tmp_path: Path, make, message: str) -> None:  # noqa: ANN001
    (tmp_path / "docs.jsonl").write_text('{"text": "hello"}\n')
    with pytest.raises(DataBuildError, match=message):
        build_indexed_dataset(tmp_path / "docs.jsonl", tmp_path / "out" / "ds", tokenizer=make(tmp_path))
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_a_malformed_line_is_named_with_workers_and_nothing_is_written(tokenizers_dir: Path, tmp_path: Path) -> None:
    lines = tiny_tokenizers.CORPUS.read_text(encoding="utf-8").splitlines(keepends=True) * 20
    lines[300] = '{"content": "unterminated\n'
    (tmp_path / "docs.jsonl").write_text("".join(lines), encoding="utf-8")
    with pytest.raises(DataBuildError, match=r"docs.jsonl:301: not a JSON object \(Invalid control character"):
        build_indexed_dataset(
            tmp_path / "docs.jsonl",
            tmp_path / "out" / "ds",
            text_key="content",
            tokenizer=_path(tokenizers_dir, "huggingface"),
            workers=2,
        )
    assert list((tmp_path / "out").iterdir()) == []


def test_the_command_line_exits_2_without_a_traceback(tokenizers_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "docs.jsonl").write_text('{"text": "hello"}\n{"text": 3}\n')
    result = subprocess.run(
        [sys.executable, "-m", "bridgec.compiler.cli", "data", "build", "--input", "docs.jsonl", "--output", "ds",
         "--tokenizer", str(_path(tokenizers_dir, "huggingface")), "--append-eod", "--workers", "2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert (result.returncode, result.stderr, result.stdout) == (
        2,
        "bridgec: docs.jsonl:2: expected an object with a string 'text' key\n",
        "",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.jsonl"]


def test_describe_refuses_a_folder_without_an_end_of_document_token(tmp_path: Path) -> None:
    folder = tiny_tokenizers.huggingface_bpe(tmp_path / "hf")
    text = (folder / "tokenizer.json").read_text().replace("<|endoftext|>", "<|other|>")
    (folder / "tokenizer.json").write_text(text)
    (folder / "tokenizer_config.json").write_text("{}")
    with pytest.raises(TokenizerError, match="hf: no end-of-document token: tokenizer_config.json names no eos_token"):
        describe(folder)


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_token_arrays_are_stored_in_input_order(tokenizers_dir: Path, tmp_path: Path) -> None:
    """Chunks finish out of order in the pool; the dataset keeps the input's order (first token per doc)."""
    texts = [f"document {i} " + "x" * (i % 7) for i in range(CHUNK_DOCUMENTS * 2 + 5)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    path = _path(tokenizers_dir, "tiktoken")
    build_indexed_dataset(tmp_path / "docs.jsonl", tmp_path / "ds", tokenizer=path, workers=2)
    encode = _library_encoder("tiktoken", path)
    assert _documents(tmp_path / "ds") == [encode(t) for t in texts]
    assert np.dtype(json.loads((tmp_path / "ds.json").read_text())["dtype"]) == np.uint16


def test_a_missing_package_gives_the_install_command(tokenizers_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # as if not installed: import raises ModuleNotFoundError
    model = tokenizers_dir / "sp" / "tiny.model"
    with pytest.raises(
        TokenizerError, match=r"needs the Python package 'sentencepiece': pip install \"bridgec\[data\]\""
    ):
        describe(model.parent / "copy.model", lambda path: model.read_bytes(), kind="sentencepiece")


def test_the_hash_follows_the_content_not_the_file_name(tokenizers_dir: Path, tmp_path: Path) -> None:
    original = _path(tokenizers_dir, "tiktoken")
    copy = tmp_path / "renamed.bpe"
    copy.write_bytes(original.read_bytes())
    assert describe(copy).sha256 == describe(original).sha256
    ranks = original.read_bytes().splitlines()
    copy.write_bytes(b"\n".join(ranks[:-1]) + b"\n")  # one rank fewer: another tokenizer
    assert describe(copy).sha256 != describe(original).sha256
