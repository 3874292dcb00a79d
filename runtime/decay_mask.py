"""Which Megatron parameters weight decay applies to, under MaxText's ``adamw_mask`` meaning.

MaxText (src/maxtext/optimizers/optimizers.py, ``_get_path_mask_fn``) joins each
leaf's key path with ``jax.tree_util.keystr(path, simple=True, separator="/")``
and excludes the leaf from decay when ``re.search`` finds any of the patterns in
that string; an empty list decays everything. The path string depends on how
MaxText holds its parameters:

* ``linen`` (``pure_nnx: false``): the optimizer sees the Linen variables, so
  paths start with the collection: ``params/decoder/layers/mlp/wi_0/kernel``;
* ``nnx`` (``pure_nnx: true``, MaxText's default since 2026): ``nnx.Optimizer``
  hands optax the module's pure state, with no collection:
  ``decoder/layers/mlp/wi_0/kernel``.

Megatron parameters map to MaxText paths through the parameter table
(:mod:`bridgec.runtime.models.gpt`). A fused Megatron parameter (``linear_qkv`` =
query + key + value, gated ``linear_fc1`` = wi_0 + wi_1) takes a single decay
setting, so patterns that decay some of its leaves and not others are an error
(:class:`DecayMaskError`), never a silent choice. A tied output layer (the copy
on the last pipeline stage) is the embedding in MaxText.

No torch here: ``bridgec explain`` prints the table from the parameters the
compiler lists (:func:`bridgec.runtime.models.gpt.parameters`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Literal

import attrs

from bridgec.runtime.models.gpt import GPTConfig, Parameter, layer_template, maxtext_paths

PathStyle = Literal["linen", "nnx"]


class DecayMaskError(ValueError):
    """The patterns cannot be applied to this model; the message names the parameter and the fix."""


class UnmappedParameterError(DecayMaskError):
    """A parameter has no MaxText path, so no pattern can decide its decay (a LayerNorm model's qk norm biases)."""


@attrs.frozen(kw_only=True)
class DecayDecision:
    """One Megatron parameter: the MaxText paths it stands for and whether it decays."""

    name: str
    """Megatron global name (``decoder.layers.{global index}.…``)."""
    paths: tuple[str, ...]
    """The MaxText path strings the patterns were searched in (empty when no pattern was given)."""
    decays: bool
    matched: tuple[str, ...] = ()
    """The patterns that matched (why it does not decay)."""


def path_strings(parameter: Parameter, config: GPTConfig, *, scan_layers: bool, style: PathStyle) -> tuple[str, ...]:
    """The strings MaxText's mask function searches for the leaves a Megatron parameter holds.

    A tied output layer's copy holds the embedding, so it has the embedding's path.
    """
    try:
        paths = maxtext_paths(parameter, config, scanned=scan_layers)
    except KeyError as error:
        raise UnmappedParameterError(
            f"decay mask: parameter {parameter.name} has no MaxText path in bridgec.runtime.models.gpt "
            f"({error.args[0]}), so regexes over MaxText paths cannot decide its weight decay; only the "
            "Llama-family layout (llama2/llama3/mistral/qwen3/mixtral blocks) is mapped"
        ) from None
    if style == "nnx":
        return tuple(path.removeprefix("params/") for path in paths)
    return paths


def decide(
    parameter: Parameter, patterns: Sequence[str], *, config: GPTConfig, scan_layers: bool, style: PathStyle
) -> DecayDecision:
    """Decay the parameter unless a pattern ``re.search``-es its MaxText path(s) (MaxText's adamw_mask)."""
    name = parameter.name
    if not patterns:
        return DecayDecision(name=name, paths=(), decays=True)
    paths = path_strings(parameter, config, scan_layers=scan_layers, style=style)
    compiled = [re.compile(pattern) for pattern in patterns]
    per_leaf = {path: tuple(p.pattern for p in compiled if p.search(path)) for path in paths}
    excluded = {path for path, hits in per_leaf.items() if hits}
    if excluded and len(excluded) != len(paths):
        kept = [path for path in paths if path not in excluded]
        raise DecayMaskError(
            f"decay mask: {name} fuses the MaxText leaves {', '.join(paths)}; the patterns exclude "
            f"{', '.join(sorted(excluded))} from weight decay but not {', '.join(kept)}. One Megatron "
            "parameter takes one setting: change the patterns so they match all of these leaves or none"
        )
    matched = tuple(sorted({hit for hits in per_leaf.values() for hit in hits}))
    return DecayDecision(name=name, paths=paths, decays=not excluded, matched=matched)


def check_patterns(patterns: Sequence[str]) -> None:
    """DecayMaskError naming the first pattern that is not a regular expression."""
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as error:
            raise DecayMaskError(f"decay mask: {pattern!r} is not a regular expression ({error})") from None


def decay_table(
    parameters: Iterable[Parameter],
    patterns: Sequence[str],
    *,
    config: GPTConfig,
    scan_layers: bool,
    style: PathStyle,
) -> list[DecayDecision]:
    """:func:`decide` for every parameter; raises on the first one the patterns cannot decide."""
    check_patterns(patterns)
    return [decide(p, patterns, config=config, scan_layers=scan_layers, style=style) for p in parameters]


def summarize(decisions: Sequence[DecayDecision]) -> list[str]:
    """Lines for ``bridgec explain``: one per parameter kind, layers folded into a range when they agree.

    ``decoder.layers.{0..31}.mlp.linear_fc1.weight  no decay  (matched '.*mlp.*')``.
    """
    groups: dict[tuple[str, bool, tuple[str, ...]], list[int | None]] = {}
    for decision in decisions:
        template, layer = layer_template(decision.name)
        groups.setdefault((template, decision.decays, decision.matched), []).append(layer)
    lines = []
    for (template, decays, matched), indices in groups.items():
        layers = [i for i in indices if i is not None]
        label = template.format("{" + _ranges(layers) + "}") if layers else template
        reason = f"  (matched {', '.join(repr(m) for m in matched)})" if matched else ""
        lines.append(f"{label}  {'decay' if decays else 'no decay'}{reason}")
    return lines


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5] -> '0..2,5'."""
    parts = []
    ordered = sorted(indices)
    start = previous = ordered[0]
    for index in ordered[1:] + [None]:  # type: ignore[list-item]
        if index is not None and index == previous + 1:
            previous = index
            continue
        parts.append(str(start) if start == previous else f"{start}..{previous}")
        if index is not None:
            start = previous = index
    return ",".join(parts)
