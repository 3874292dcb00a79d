"""Tiny tokenizers trained or written locally (never downloaded), for the tokenizer and data-build tests.

Each is trained on the multilingual corpus in tests/fixtures/text, so every script in it
exercises real merges, byte fallbacks and unknown pieces.
"""

from __future__ import annotations

import base64
import collections
import json
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "fixtures" / "text" / "multilingual.jsonl"
TEXT_KEY = "content"


def corpus_texts() -> list[str]:
    return [json.loads(line)[TEXT_KEY] for line in CORPUS.read_text(encoding="utf-8").splitlines()]


def huggingface_bpe(
    folder: Path, *, vocab_size: int = 600, special: tuple[str, ...] = (), config: dict | None = None
) -> Path:
    """A byte-level BPE trained with ``tokenizers``, saved as tokenizer.json + tokenizer_config.json.

    ``special``: more special tokens (a chat template's markers); ``config``: more tokenizer_config.json keys.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<pad>", *special],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_texts(), trainer=trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"eos_token": "<|endoftext|>", "pad_token": "<pad>", "bos_token": None, **(config or {})}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def sentencepiece_model(folder: Path, *, vocab_size: int = 800) -> Path:
    """A unigram SentencePiece model trained with ``SentencePieceTrainer`` (byte fallback on)."""
    import io

    import sentencepiece

    stream = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_texts() * 4),
        model_writer=stream,
        vocab_size=vocab_size,
        byte_fallback=True,
        character_coverage=0.98,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.model"
    path.write_bytes(stream.getvalue())
    return path


def tiktoken_file(folder: Path, *, merges: int = 300) -> Path:
    """A tiktoken rank file: the 256 bytes, then ``merges`` byte-pair merges learnt from the corpus."""
    words = collections.Counter(
        tuple(bytes([b]) for b in word.encode("utf-8")) for text in corpus_texts() for word in text.split(" ")
    )
    ranks = {bytes([b]): b for b in range(256)}
    for _ in range(merges):
        pairs: collections.Counter[tuple[bytes, bytes]] = collections.Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        (left, right), _count = max(pairs.items(), key=lambda item: (item[1], item[0]))
        ranks.setdefault(left + right, len(ranks))
        words = collections.Counter({_merge(word, left, right): count for word, count in words.items()})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.tiktoken"
    path.write_text(
        "".join(f"{base64.b64encode(token).decode()} {rank}\n" for token, rank in ranks.items()), encoding="ascii"
    )
    return path


def _merge(word: tuple[bytes, ...], left: bytes, right: bytes) -> tuple[bytes, ...]:
    merged: list[bytes] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == left and word[i + 1] == right:
            merged.append(left + right)
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return tuple(merged)
