"""Real tokenizers for ``bridgec data build`` and the compiler's ``[data] tokenizer`` checks.

Three kinds of file, told apart by what the path is:

- a folder with ``tokenizer.json``: a Hugging Face tokenizer, loaded with ``tokenizers``
  (``Tokenizer.from_file``). Its end-of-document, bos and pad tokens are the
  ``eos_token``/``bos_token``/``pad_token`` of ``tokenizer_config.json`` when the folder has
  one, else the first of the usual end-of-text names among its added tokens.
- a ``.model`` file: a SentencePiece model, loaded through megatron-core's
  ``megatron.core.tokenizers`` (``SentencePieceTokenizer``, whose ``text_to_ids`` is
  ``sentencepiece``'s ``encode_as_ids``); eos/bos/pad are the model's own ids.
- any other file: a tiktoken rank file (one ``base64-token rank`` pair a line, as
  ``cl100k_base.tiktoken``), read with ``tiktoken.load.load_tiktoken_bpe``; it holds no special
  tokens, so bridgec adds one, ``<|endoftext|>``, with the id after the last rank, and splits
  text with cl100k's pattern.

megatron-core's own Hugging Face and tiktoken wrappers do not serve here: its
``HuggingFaceTokenizer`` goes through ``transformers.AutoTokenizer`` (a slow tokenizer by
default, and a model folder's config files beyond ``tokenizer.json``), and its
``TikTokenTokenizer`` reads Nemotron's JSON vocabulary, not a rank file, and shifts every rank
by 1000 reserved special ids.

The tokenizer's hash (``sha256``) covers the files that decide its ids and special tokens, so
the compiler can tell whether a dataset was built with the tokenizer a spec names.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import warnings
from pathlib import Path
from typing import Literal, Protocol

import attrs

TokenizerKind = Literal["huggingface", "sentencepiece", "tiktoken"]

EXTRA_HINT = 'pip install "bridgec[data]" (tokenizers, sentencepiece, tiktoken, pyarrow)'

TIKTOKEN_EOD = "<|endoftext|>"
# cl100k_base's split pattern (tiktoken_ext/openai_public.py).
TIKTOKEN_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
_HF_EOD_NAMES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|im_end|>")


class TokenizerError(Exception):
    """The tokenizer cannot be loaded; the message names the file and why."""


@attrs.frozen(kw_only=True)
class TokenizerFacts:
    """What the compiler and a dataset's sidecar record about a tokenizer."""

    kind: TokenizerKind
    vocab_size: int
    eod: int
    bos: int | None
    pad: int | None
    sha256: str
    files: tuple[str, ...]
    """The files hashed, by name (what the hash covers)."""


class Encoder(Protocol):
    def encode(self, text: str) -> list[int]: ...


class ReadBytes(Protocol):
    def __call__(self, path: Path) -> bytes:
        """The file's bytes; raises OSError (FileNotFoundError when absent) when it cannot be read."""
        ...


def _read_disk(path: Path) -> bytes:
    return Path(path).read_bytes()


def tokenizer_kind(path: Path) -> TokenizerKind:
    """A folder is a Hugging Face tokenizer, a ``.model`` file SentencePiece, any other file a tiktoken rank file."""
    if path.is_dir():
        return "huggingface"
    return "sentencepiece" if path.suffix == ".model" else "tiktoken"


def describe(path: Path, read: ReadBytes = _read_disk, *, kind: TokenizerKind | None = None) -> TokenizerFacts:
    """The vocabulary size, special ids and hash of the tokenizer at ``path``, from its files' bytes.

    ``read`` reads a file (the compiler passes its FileView's, so validation reads through it);
    ``kind`` defaults to what :func:`tokenizer_kind` tells from the disk.
    """
    path = Path(path)
    kind = kind or tokenizer_kind(path)
    names = ("tokenizer.json", "tokenizer_config.json") if kind == "huggingface" else (path.name,)
    folder = path if kind == "huggingface" else path.parent
    files: dict[str, bytes] = {}
    for name in names:
        try:
            files[name] = read(folder / name)
        except FileNotFoundError:
            if name == "tokenizer_config.json":
                continue  # optional: the special tokens then come from tokenizer.json's names
            if kind == "huggingface":
                raise TokenizerError(
                    f"{path}: no such folder"
                    if not _exists(read, path)
                    else f"{path}: a Hugging Face tokenizer folder needs tokenizer.json, and it has none"
                ) from None
            raise TokenizerError(f"{path}: no such file or folder") from None
        except IsADirectoryError:
            raise TokenizerError(
                f"{path}: a folder, but it has no tokenizer.json (a Hugging Face tokenizer folder needs one)"
            ) from None
        except OSError as error:
            raise TokenizerError(
                f"{folder / name}: cannot be read ({error.strerror or type(error).__name__})"
            ) from None
    return _describe(kind, str(path), tuple(files.items()))


def _exists(read: ReadBytes, folder: Path) -> bool:
    try:
        read(folder)
    except IsADirectoryError:
        return True
    except OSError:
        return False
    return True


@functools.cache
def _describe(kind: TokenizerKind, where: str, files: tuple[tuple[str, bytes], ...]) -> TokenizerFacts:
    """Cached per content: compile asks several rules about one tokenizer."""
    contents = dict(files)
    digest = hashlib.sha256()
    for name, content in files:
        # A folder's files by their fixed names; a single file by its kind, so a renamed copy hashes the same.
        label = name if kind == "huggingface" else kind
        digest.update(label.encode() + b"\0" + content + b"\0")
    match kind:
        case "huggingface":
            special = _huggingface_facts(Path(where), contents)
        case "sentencepiece":
            special = _sentencepiece_facts(Path(where), contents[Path(where).name])
        case "tiktoken":
            ranks = parse_tiktoken_ranks(Path(where), contents[Path(where).name])
            special = _Special(vocab_size=len(ranks) + 1, eod=len(ranks), bos=None, pad=None)
    return TokenizerFacts(
        kind=kind,
        vocab_size=special.vocab_size,
        eod=special.eod,
        bos=special.bos,
        pad=special.pad,
        sha256=digest.hexdigest(),
        files=tuple(contents),
    )


@attrs.frozen(kw_only=True)
class _Special:
    vocab_size: int
    eod: int
    bos: int | None
    pad: int | None


def load(path: Path) -> Encoder:
    """The tokenizer at ``path``, ready to encode (in a data-build worker); TokenizerError says what is wrong."""
    path = Path(path)
    match tokenizer_kind(path):
        case "huggingface":
            return _HFEncoder(_huggingface_tokenizer(path, (path / "tokenizer.json").read_text(encoding="utf-8")))
        case "sentencepiece":
            return _SentencePieceEncoder(_megatron_sentencepiece(path))
        case "tiktoken":
            return _TiktokenEncoder(tiktoken_encoding(parse_tiktoken_ranks(path, path.read_bytes())))


def _missing(package: str) -> TokenizerError:
    return TokenizerError(f"reading this tokenizer needs the Python package {package!r}: {EXTRA_HINT}")


# -- Hugging Face ------------------------------------------------------------------------------------


class _HFEncoder:
    def __init__(self, tokenizer: object) -> None:
        self._tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        # Plain text only: the BOS/EOS a post-processor adds are the data builder's choice (--append-eod).
        return self._tokenizer.encode(text, add_special_tokens=False).ids


def _huggingface_tokenizer(folder: Path, text: str) -> object:
    try:
        from tokenizers import Tokenizer
    except ModuleNotFoundError:
        raise _missing("tokenizers") from None
    try:
        return Tokenizer.from_str(text)
    except Exception as error:  # the Rust loader raises a bare Exception for every parse failure
        raise TokenizerError(
            f"{folder / 'tokenizer.json'}: not a tokenizer file the tokenizers library can read ({error})"
        ) from None


def _huggingface_facts(folder: Path, contents: dict[str, bytes]) -> _Special:
    try:
        text = contents["tokenizer.json"].decode("utf-8")
    except UnicodeDecodeError:
        raise TokenizerError(f"{folder / 'tokenizer.json'}: not UTF-8 text") from None
    tokenizer = _huggingface_tokenizer(folder, text)
    config = _tokenizer_config(folder, contents.get("tokenizer_config.json"))
    eod_name = _token_name(config.get("eos_token"))
    if eod_name is None:
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        eod_name = next((name for name in _HF_EOD_NAMES if name in vocab), None)
    if eod_name is None:
        raise TokenizerError(
            f"{folder}: no end-of-document token: tokenizer_config.json names no eos_token and tokenizer.json "
            f"has none of {', '.join(_HF_EOD_NAMES)}"
        )
    ids = {}
    named = (("eos_token", eod_name), *((key, _token_name(config.get(key))) for key in ("bos_token", "pad_token")))
    for role, name in named:
        if name is not None:
            token_id = tokenizer.token_to_id(name)
            if token_id is None:
                raise TokenizerError(f"{folder}: {role} {name!r} is not a token of tokenizer.json")
            ids[role] = token_id
    return _Special(
        vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
        eod=ids["eos_token"],
        bos=ids.get("bos_token"),
        pad=ids.get("pad_token"),
    )


def _tokenizer_config(folder: Path, content: bytes | None) -> dict:
    file = folder / "tokenizer_config.json"
    if content is None:
        return {}
    try:
        config = json.loads(content.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise TokenizerError(f"{file}: not a JSON file ({error})") from None
    if not isinstance(config, dict):
        raise TokenizerError(f"{file}: not a JSON object")
    return config


def _token_name(value: object) -> str | None:
    """A special token as tokenizer_config.json gives it: a string, or an AddedToken object with "content"."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


# -- SentencePiece ---------------------------------------------------------------------------------


def _sentencepiece_facts(file: Path, content: bytes) -> _Special:
    """From the model's bytes with sentencepiece itself (megatron-core's wrapper loads from a path only)."""
    try:
        import sentencepiece
    except ModuleNotFoundError:
        raise _missing("sentencepiece") from None
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(content)
    except (OSError, RuntimeError, ValueError) as error:
        raise TokenizerError(
            f"{file}: not a SentencePiece model ({str(error).strip() or type(error).__name__})"
        ) from None
    eod = processor.eos_id()
    if eod < 0:
        raise TokenizerError(f"{file}: the SentencePiece model has no end-of-sequence piece (eos_id = -1)")
    return _Special(
        vocab_size=processor.get_piece_size(),
        eod=eod,
        bos=processor.bos_id() if processor.bos_id() >= 0 else None,
        pad=processor.pad_id() if processor.pad_id() >= 0 else None,
    )


def _megatron_sentencepiece(file: Path) -> object:
    with warnings.catch_warnings():
        # Importing megatron-core's tokenizers imports megatron.core, which warns that TE and Apex are absent.
        warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex)")
        from megatron.core.tokenizers.text.libraries import SentencePieceTokenizer

    return SentencePieceTokenizer(str(file))


class _SentencePieceEncoder:
    def __init__(self, tokenizer: object) -> None:
        self._tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.text_to_ids(text)


# -- tiktoken ----------------------------------------------------------------------------------------


def parse_tiktoken_ranks(file: Path, content: bytes) -> dict[bytes, int]:
    """The rank file's token -> rank map; TokenizerError names the first bad line."""
    ranks: dict[bytes, int] = {}
    lines = content.splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            token, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
            if len(parts) != 2:
                raise ValueError
        except (IndexError, ValueError, binascii.Error):
            raise TokenizerError(
                f"{file}:{number}: not a tiktoken rank line (expected 'BASE64TOKEN RANK'); a SentencePiece "
                f"model must end in .model, a Hugging Face tokenizer is a folder with tokenizer.json"
            ) from None
        ranks[token] = rank
    if not ranks:
        raise TokenizerError(f"{file}: an empty tiktoken rank file")
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError(f"{file}: the ranks are not 0 to {len(ranks) - 1}, each once")
    return ranks


def tiktoken_encoding(ranks: dict[bytes, int], name: str = "bridgec") -> object:
    """The tiktoken Encoding bridgec builds from a rank file: cl100k's pattern, <|endoftext|> after the last rank."""
    try:
        import tiktoken
    except ModuleNotFoundError:
        raise _missing("tiktoken") from None

    return tiktoken.Encoding(
        name=name,
        pat_str=TIKTOKEN_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={TIKTOKEN_EOD: len(ranks)},
    )


class _TiktokenEncoder:
    def __init__(self, encoding: object) -> None:
        self._encoding = encoding

    def encode(self, text: str) -> list[int]:
        # Text that spells <|endoftext|> is text, not the special token: only --append-eod adds it.
        return self._encoding.encode_ordinary(text)
