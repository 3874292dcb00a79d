"""Chat templates rendered the way ``transformers``' ``apply_chat_template`` renders them, with jinja2 alone.

The environment mirrors transformers' (``utils/chat_template_utils.py``): a sandboxed jinja2
environment with ``trim_blocks`` and ``lstrip_blocks``, the ``loopcontrols`` extension, a
``tojson`` that does not escape HTML, ``raise_exception``, ``strftime_now``, and the
``{% generation %}`` block, whose rendered character spans mark the assistant's text. The
special tokens of ``tokenizer_config.json`` (``bos_token``, ``eos_token``, ...) are template
variables, as there. tests/runtime/test_sft_build.py checks ids and assistant masks against
``apply_chat_template(..., return_assistant_tokens_mask=True)``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import attrs
import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment


class TemplateError(Exception):
    """The template does not compile or fails to render; the message says why."""


@attrs.frozen(kw_only=True)
class Rendered:
    text: str
    generation: tuple[tuple[int, int], ...]
    """Character spans [start, end) of each {% generation %} block, in order."""


class _GenerationTracker(jinja2.ext.Extension):
    tags = {"generation"}  # noqa: RUF012 - jinja2's Extension API

    def __init__(self, environment: jinja2.Environment) -> None:
        super().__init__(environment)
        environment.extend(track_generation=self.track)
        self._tracking: tuple[list[str], list[tuple[int, int]]] | None = None

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.CallBlock:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_generation", []), [], [], body).set_lineno(lineno)

    def _generation(self, caller: Any) -> str:
        text = caller()
        if self._tracking is not None:
            blocks, spans = self._tracking
            start = len("".join(blocks))
            spans.append((start, start + len(text)))
        return text

    @contextmanager
    def track(self, blocks: list[str], spans: list[tuple[int, int]]) -> Iterator[None]:
        self._tracking = (blocks, spans)
        try:
            yield
        finally:
            self._tracking = None


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys=False) -> str:  # noqa: ANN001
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def compile_template(source: str) -> jinja2.Template:
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTracker, jinja2.ext.loopcontrols]
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return environment.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as error:
        raise TemplateError(f"line {error.lineno}: {error.message}") from None


def render(template: jinja2.Template, messages: list[dict[str, Any]], variables: dict[str, Any]) -> Rendered:
    """The conversation as text, and where the template's {% generation %} blocks put the assistant's text."""
    blocks: list[str] = []
    spans: list[tuple[int, int]] = []
    try:
        with template.environment.track_generation(blocks, spans):
            for block in template.generate(
                messages=messages, tools=None, documents=None, add_generation_prompt=False, **variables
            ):
                blocks.append(block)
    except jinja2.exceptions.TemplateError as error:
        raise TemplateError(str(error)) from None
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise TemplateError(f"{type(error).__name__}: {error}") from None
    return Rendered(text="".join(blocks), generation=tuple(spans))


def span_mask(offsets: list[tuple[int, int]], spans: tuple[tuple[int, int], ...]) -> list[int]:
    """1 for every token overlapping a span (transformers' rule for return_assistant_tokens_mask)."""
    mask = [0] * len(offsets)
    index = 0
    for token, (start, end) in enumerate(offsets):
        while index < len(spans) and start >= spans[index][1]:
            index += 1
        if index == len(spans):
            break
        if end > spans[index][0]:
            mask[token] = 1
    return mask
