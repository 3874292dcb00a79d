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

Megatron parameter names map to MaxText paths through
:mod:`bridgec.runtime.param_paths`. A fused Megatron parameter (``linear_qkv`` =
query + key + value, gated ``linear_fc1`` = wi_0 + wi_1) takes a single decay
setting, so patterns that decay some of its leaves and not others are an error
(:class:`DecayMaskError`), never a silent choice. A tied output layer (the copy
on the last pipeline stage) is the embedding in MaxText.

No torch here: ``bridgec explain`` prints the table from parameter names the
compiler derives (:func:`megatron_parameter_names`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Literal

import attrs

from bridgec.runtime.param_paths import maxtext_paths

PathStyle = Literal["linen", "nnx"]

_TIED_OUTPUT = "output_layer.weight"
_EMBEDDING = "embedding.word_embeddings.weight"
_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


class DecayMaskError(ValueError):
    """The patterns cannot be applied to this model; the message names the parameter and the fix."""


class UnmappedParameterError(DecayMaskError):
    """A parameter has no MaxText path, so no pattern can decide its decay (MoE routers and experts, for now)."""


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


def path_strings(name: str, *, gated_mlp: bool, scan_layers: bool, tied_output: bool, style: PathStyle) -> tuple[str, ...]:
    """The strings MaxText's mask function searches for the leaves a Megatron parameter holds."""
    lookup = _EMBEDDING if tied_output and name == _TIED_OUTPUT else name
    try:
        paths = maxtext_paths(lookup, gated_mlp=gated_mlp, scanned=scan_layers)
    except KeyError as error:
        raise UnmappedParameterError(
            f"decay mask: parameter {name} has no MaxText path in bridgec.runtime.param_paths ({error.args[0]}), "
            "so regexes over MaxText paths cannot decide its weight decay; only the Llama-family layout "
            "(llama2/llama3/mistral/qwen3 blocks) is mapped"
        ) from None
    if style == "nnx":
        return tuple(path.removeprefix("params/") for path in paths)
    return paths


def decide(
    name: str,
    patterns: Sequence[str],
    *,
    gated_mlp: bool,
    scan_layers: bool,
    tied_output: bool,
    style: PathStyle,
) -> DecayDecision:
    """Decay ``name`` unless a pattern ``re.search``-es its MaxText path(s) (MaxText's adamw_mask)."""
    if not patterns:
        return DecayDecision(name=name, paths=(), decays=True)
    paths = path_strings(name, gated_mlp=gated_mlp, scan_layers=scan_layers, tied_output=tied_output, style=style)
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


def decay_table(
    names: Iterable[str],
    patterns: Sequence[str],
    *,
    gated_mlp: bool,
    scan_layers: bool,
    tied_output: bool,
    style: PathStyle,
) -> list[DecayDecision]:
    """:func:`decide` for every name; raises on the first parameter the patterns cannot decide."""
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as error:
            raise DecayMaskError(f"decay mask: {pattern!r} is not a regular expression ({error})") from None
    return [
        decide(name, patterns, gated_mlp=gated_mlp, scan_layers=scan_layers, tied_output=tied_output, style=style)
        for name in names
    ]


def megatron_parameter_names(
    *,
    num_layers: int,
    normalization: str,
    gated_mlp: bool,
    add_bias_linear: bool,
    qk_layernorm: bool,
    tied_output: bool,
    learned_positions: bool,
    transformer_engine: bool,
    num_experts: int | None = None,
) -> list[str]:
    """Global parameter names of a megatron-core GPTModel (one pipeline stage holding everything).

    Matches ``named_parameters()`` of the local and transformer-engine layer
    specs (with TE the pre-attention and pre-MLP norms live inside linear_qkv
    and linear_fc1), with experts under their global numbers
    (:func:`bridgec.runtime.init.global_name`). ``gated_mlp`` does not change
    the names, only what linear_fc1 holds. An MoE layer (``num_experts``) has
    a router and per-expert linear_fc1/linear_fc2 instead of the dense MLP's
    two linears, and a pre-MLP norm of its own with TE too. A tied output layer
    has no parameter of its own on a single stage.
    """
    names = ["embedding.word_embeddings.weight"]
    if learned_positions:
        names.append("embedding.position_embeddings.weight")
    norm_bias = normalization == "layernorm"
    for index in range(num_layers):
        layer = f"decoder.layers.{index}."
        if transformer_engine:
            names.append(layer + "self_attention.linear_qkv.layer_norm_weight")
            if norm_bias:
                names.append(layer + "self_attention.linear_qkv.layer_norm_bias")
        else:
            names.append(layer + "input_layernorm.weight")
            if norm_bias:
                names.append(layer + "input_layernorm.bias")
        for linear in ("self_attention.linear_proj", "self_attention.linear_qkv"):
            names.append(layer + linear + ".weight")
            if add_bias_linear:
                names.append(layer + linear + ".bias")
        if qk_layernorm:
            names += [layer + "self_attention.q_layernorm.weight", layer + "self_attention.k_layernorm.weight"]
        if transformer_engine and num_experts is None:
            names.append(layer + "mlp.linear_fc1.layer_norm_weight")
            if norm_bias:
                names.append(layer + "mlp.linear_fc1.layer_norm_bias")
        else:
            names.append(layer + "pre_mlp_layernorm.weight")
            if norm_bias:
                names.append(layer + "pre_mlp_layernorm.bias")
        if num_experts is None:
            linears = ["mlp.linear_fc1", "mlp.linear_fc2"]
        else:
            names.append(layer + "mlp.router.weight")
            linears = [f"mlp.experts.{expert}.{linear}" for expert in range(num_experts)
                       for linear in ("linear_fc1", "linear_fc2")]
        for linear in linears:
            names.append(layer + linear + ".weight")
            if add_bias_linear:
                names.append(layer + linear + ".bias")
    names.append("decoder.final_layernorm.weight")
    if norm_bias:
        names.append("decoder.final_layernorm.bias")
    if not tied_output:
        names.append("output_layer.weight")
    return names


def summarize(decisions: Sequence[DecayDecision]) -> list[str]:
    """Lines for ``bridgec explain``: one per parameter kind, layers folded into a range when they agree.

    ``decoder.layers.{0..31}.mlp.linear_fc1.weight  no decay  (matched '.*mlp.*')``.
    """
    groups: dict[tuple[str, bool, tuple[str, ...]], list[int | None]] = {}
    for decision in decisions:
        match = _LAYER.match(decision.name)
        key = (f"decoder.layers.{{}}.{match[2]}" if match else decision.name, decision.decays, decision.matched)
        groups.setdefault(key, []).append(int(match[1]) if match else None)
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
