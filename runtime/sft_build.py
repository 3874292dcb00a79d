"""``bridgec data build --sft``: instruction records -> token and loss-mask arrays in megatron's indexed format.

Each JSONL line, or each row of a Parquet file (``.parquet``: a ``messages`` column of
``list<struct<role, content>>``, or string prompt/completion columns), is a record in one of two shapes:

- ``{"messages": [{"role": ..., "content": ...}, ...]}`` (system, user, assistant, tool; multi-turn),
  rendered with the chat template (``tokenizer_config.json``'s ``chat_template``, or a template file)
  as ``transformers``' ``apply_chat_template`` renders it (runtime/chat_template.py), then
  tokenized whole without added special tokens;
- ``{"prompt": ..., "completion": ...}`` (field names configurable): prompt and completion tokenized
  one after the other, with ``append_eod`` ending the completion.

``loss_mode`` chooses the tokens that count: ``assistant`` (every ``{% generation %}`` span of the
template, or the completion), ``last_turn`` (the last span only), ``completion`` (prompt/completion
records: the completion), ``full`` (every token). A sample whose mask is all zeros, or all ones
although it has non-assistant turns, is an error naming its line (never a silent fallback). Samples
longer than ``max_length`` are truncated or dropped (counted), or refused with their line.

Writes ``PREFIX.bin/.idx`` (tokens), ``PREFIX.loss_mask.bin/.idx`` (one uint8 per token) and
``PREFIX.json``; every file under a temporary name, renamed only when all are complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import numpy as np

from bridgec.runtime.chat_template import TemplateError, compile_template, render, span_mask
from bridgec.runtime.data_build import DataBuildError

LossMode = Literal["completion", "assistant", "last_turn", "full"]
Overlong = Literal["truncate", "drop", "error"]
ROLES = ("system", "user", "assistant", "tool")
MASK_SUFFIX = ".loss_mask"


@attrs.frozen(kw_only=True)
class SftSettings:
    loss_mode: LossMode = "assistant"
    messages_key: str = "messages"
    prompt_key: str = "prompt"
    completion_key: str = "completion"
    template: Path | None = None
    """A Jinja chat template file; None: tokenizer_config.json's chat_template."""
    max_length: int | None = None
    overlong: Overlong = "error"
    append_eod: bool = True
    """prompt/completion records: end the completion with the end-of-document id (a chat template ends turns itself)."""


@attrs.frozen(kw_only=True)
class SftReport:
    prefix: Path
    samples: int
    tokens: int
    loss_tokens: int
    truncated: int
    dropped: int


@attrs.frozen(kw_only=True)
class _Sample:
    ids: list[int]
    mask: list[int]


class _Tokenizer:
    """A Hugging Face tokenizer folder: ids with character offsets, special tokens, the chat template."""

    def __init__(self, folder: Path, template_file: Path | None) -> None:
        from bridgec.runtime.tokenizer import TokenizerError, describe

        try:
            self.facts = describe(folder)
        except TokenizerError as error:
            raise DataBuildError(str(error)) from None
        if self.facts.kind != "huggingface":
            raise DataBuildError(
                f"{folder}: --sft needs a Hugging Face tokenizer folder (tokenizer.json): masks come from the "
                f"character offsets of its encodings"
            )
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        config_file = folder / "tokenizer_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
        self.variables = {
            key: value if isinstance(value, str) else (value or {}).get("content")
            for key, value in config.items()
            if key.endswith("_token") and (isinstance(value, str) or isinstance(value, dict))
        }
        source, where = config.get("chat_template"), config_file
        if template_file is not None:
            try:
                source, where = template_file.read_text(encoding="utf-8"), template_file
            except OSError as error:
                raise DataBuildError(f"{template_file}: cannot be read ({error.strerror})") from None
        self.template = None
        if isinstance(source, str):
            try:
                self.template = compile_template(source)
            except TemplateError as error:
                raise DataBuildError(f"{where}: the chat template does not compile: {error}") from None

    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        return encoding.ids, encoding.offsets


def _chat_sample(tok: _Tokenizer, messages: Any, where: str, mode: LossMode) -> _Sample:
    if not isinstance(messages, list) or not messages:
        raise DataBuildError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    for number, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise DataBuildError(f"{where}: messages[{number}] needs a string 'content'")
        if message.get("role") not in ROLES:
            raise DataBuildError(
                f"{where}: messages[{number}] has the unknown role {message.get('role')!r} (known: {', '.join(ROLES)})"
            )
    if tok.template is None:
        raise DataBuildError(
            f"{where}: a messages record needs a chat template: tokenizer_config.json has none; give --chat-template FILE"
        )
    if mode == "completion":
        raise DataBuildError(
            f'{where}: loss_mode "completion" is for prompt/completion records; use "assistant" or "last_turn"'
        )
    try:
        rendered = render(tok.template, messages, tok.variables)
    except TemplateError as error:
        raise DataBuildError(f"{where}: the chat template fails to render: {error}") from None
    ids, offsets = tok.encode(rendered.text)
    spans = rendered.generation if mode == "assistant" else rendered.generation[-1:]
    mask = [1] * len(ids) if mode == "full" else span_mask(offsets, spans)
    if mode != "full" and all(mask) and any(m["role"] != "assistant" for m in messages):
        raise DataBuildError(
            f"{where}: the loss mask covers every token although the record has non-assistant turns: the template's "
            "{% generation %} block wraps more than the assistant's text"
        )
    return _Sample(ids=ids, mask=mask)


def _completion_sample(tok: _Tokenizer, record: dict, where: str, settings: SftSettings) -> _Sample:
    prompt, completion = record.get(settings.prompt_key), record.get(settings.completion_key)
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise DataBuildError(
            f"{where}: expected a string {settings.prompt_key!r} and a string {settings.completion_key!r} "
            f"(or a {settings.messages_key!r} list)"
        )
    prompt_ids, _ = tok.encode(prompt)
    completion_ids = tok.encode(completion)[0] + ([tok.facts.eod] if settings.append_eod else [])
    counted = 1 if settings.loss_mode == "full" else 0
    return _Sample(ids=prompt_ids + completion_ids, mask=[counted] * len(prompt_ids) + [1] * len(completion_ids))


def _records(path: Path) -> Iterator[tuple[str, Any]]:
    """Each record of a JSONL or Parquet file with where it is: ``file:line`` or ``file: row n``."""
    if not path.is_file():
        raise DataBuildError(f"{path}: no such file")
    if path.suffix == ".parquet":
        yield from _parquet_records(path)
        return
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise DataBuildError(f"{path}: not UTF-8 text (byte {error.start})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as error:
            raise DataBuildError(f"{where}: not a JSON object ({error.msg})") from None


def _parquet_records(path: Path) -> Iterator[tuple[str, Any]]:
    """Rows as dicts: a messages column of list<struct<role, content>> reads as the JSONL shape does."""
    try:
        import pyarrow.parquet as parquet
    except ModuleNotFoundError:
        from bridgec.runtime.tokenizer import EXTRA_HINT

        raise DataBuildError(f"{path}: reading Parquet needs the Python package 'pyarrow': {EXTRA_HINT}") from None
    try:
        table = parquet.ParquetFile(path)
        batches = table.iter_batches(batch_size=1024)
        row = 0
        for batch in batches:
            for record in batch.to_pylist():
                row += 1
                yield f"{path}: row {row}", record
    except DataBuildError:
        raise
    except Exception as error:  # pyarrow raises ArrowInvalid and OSError subclasses for damaged files
        raise DataBuildError(f"{path}: not a Parquet file pyarrow can read ({error})") from None


def build_sft_dataset(inputs: Sequence[Path], prefix: Path, *, tokenizer: Path, settings: SftSettings) -> SftReport:
    """Render, tokenize and mask every record of ``inputs``; write ``prefix``.bin/.idx, .loss_mask.bin/.idx, .json."""
    import torch  # noqa: F401 - megatron's builder converts through torch
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    tok = _Tokenizer(Path(tokenizer), settings.template)
    samples: list[_Sample] = []
    truncated = dropped = 0
    for path in map(Path, inputs):
        for where, record in _records(path):
            if not isinstance(record, dict):
                raise DataBuildError(f"{where}: not a JSON object")
            if settings.messages_key in record:
                sample = _chat_sample(tok, record[settings.messages_key], where, settings.loss_mode)
            else:
                sample = _completion_sample(tok, record, where, settings)
            limit = settings.max_length
            if limit is not None and len(sample.ids) > limit:
                match settings.overlong:
                    case "drop":
                        dropped += 1
                        continue
                    case "truncate":
                        truncated += 1
                        sample = _Sample(ids=sample.ids[:limit], mask=sample.mask[:limit])
                    case "error":
                        raise DataBuildError(
                            f"{where}: {len(sample.ids)} tokens, longer than --max-length {limit} "
                            "(choose --overlong truncate or drop)"
                        )
            if not any(sample.mask):
                raise DataBuildError(
                    f'{where}: the loss mask is all zeros (loss_mode "{settings.loss_mode}"'
                    + (", after truncation" if limit is not None and len(sample.ids) == limit else "")
                    + "): the sample would teach nothing"
                )
            samples.append(sample)
    if not samples:
        raise DataBuildError(f"{', '.join(map(str, inputs))}: no samples (an empty dataset cannot be trained on)")
    dtype = DType.optimal_dtype(tok.facts.vocab_size)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    staging = prefix.with_name(f".{prefix.name}.partial")
    finals = [
        f"{prefix}.bin",
        f"{prefix}.idx",
        f"{prefix}{MASK_SUFFIX}.bin",
        f"{prefix}{MASK_SUFFIX}.idx",
        f"{prefix}.json",
    ]
    staged = [
        f"{staging}.bin",
        f"{staging}.idx",
        f"{staging}{MASK_SUFFIX}.bin",
        f"{staging}{MASK_SUFFIX}.idx",
        f"{staging}.json",
    ]
    try:
        tokens = IndexedDatasetBuilder(staged[0], dtype=dtype)
        masks = IndexedDatasetBuilder(staged[2], dtype=np.uint8)
        for sample in samples:
            tokens.add_document(np.asarray(sample.ids, dtype=dtype), [len(sample.ids)])
            masks.add_document(np.asarray(sample.mask, dtype=np.uint8), [len(sample.mask)])
        tokens.finalize(staged[1])
        masks.finalize(staged[3])
        facts = tok.facts
        sidecar = {
            "kind": "sft", "tokenizer": facts.kind, "vocab_size": facts.vocab_size, "eod": facts.eod,
            "bos": facts.bos, "pad": facts.pad, "tokenizer_sha256": facts.sha256, "dtype": np.dtype(dtype).name,
            "loss_mode": settings.loss_mode, "samples": len(samples), "truncated": truncated, "dropped": dropped,
            "max_length": settings.max_length,
        }  # fmt: skip
        Path(staged[4]).write_text(json.dumps(sidecar, sort_keys=True) + "\n", encoding="utf-8")
        for source, target in zip(staged, finals):
            os.replace(source, target)
    finally:
        for source in staged:
            Path(source).unlink(missing_ok=True)
    return SftReport(
        prefix=prefix,
        samples=len(samples),
        tokens=sum(len(s.ids) for s in samples),
        loss_tokens=sum(sum(s.mask) for s in samples),
        truncated=truncated,
        dropped=dropped,
    )
