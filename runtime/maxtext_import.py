"""Load a MaxText Llama-family Orbax checkpoint into this rank's megatron-core GPTModel chunks.

Every rank reads only what it holds: the layers of its pipeline stage (and
virtual chunks) and its tensor-parallel shard of each of them, as boxes of the
checkpoint's leaves (:mod:`bridgec.runtime.orbax_read`). Nothing here imports
JAX.

Names come from :mod:`bridgec.runtime.param_paths` (megatron global name ->
MaxText leaves). Per megatron parameter (E hidden, H query heads, G key/value
heads, D head_dim, F ffn, V vocab; shapes of one unscanned MaxText layer):

* ``linear_qkv`` [G (H/G + 2) D, E] <- query [E, H, D], key and value [E, G, D]:
  rows grouped per key/value head g as ``[q heads of g..., k_g, v_g]`` (the order
  megatron's SelfAttention splits), transposed; a TP rank holds whole groups;
* ``linear_proj`` [E, H D] <- out [H, D, E]; ``linear_fc1`` [2F, E] <- ``[wi_0; wi_1]``
  transposed (gate first, as megatron's glu chunks it), a TP rank holding the
  gate rows and the up rows of its slice (megatron's stride-2 split);
  ``linear_fc2`` [E, F] <- wo [F, E]; norms take the ``scale`` vectors;
* the embedding [V', E] <- ``token_embedder/embedding`` [V, E]; megatron's
  padded vocabulary V' >= V gets zero rows (never looked up; export drops them).
  Their logits are 0, which megatron's cross entropy still counts, so a loss
  that matches MaxText's needs V' = V (make_vocab_size_divisible_by dividing
  V / TP); an untied ``output_layer`` <- ``logits_dense``
  [E, V] transposed, padded the same way; a tied output layer on the last
  pipeline stage takes the embedding, as in :mod:`bridgec.runtime.init`;
* scanned checkpoints stack layers at ``param_scan_axis`` (MaxText default 1:
  query [E, L, H, D], norm scales [E, L]); unscanned ones have ``layers_{i}``.

Two MaxText conventions need a decision from the caller:

* ``query_scaling``: MaxText folds attention's 1/sqrt(D) into the query kernel
  (attentions.py ``init_query_w``; not with ``use_qk_norm``). ``"undo"``
  multiplies it by sqrt(D) so the model uses megatron's default softmax scale.
  ``"keep"`` copies it as stored; the model must then be built with
  ``TransformerConfig(softmax_scale=1.0)``. Only "keep" trains like MaxText: Adam
  steps have the same size in either parametrisation, so "undo" moves the query
  weights sqrt(D) times further per step than MaxText does. "keep" is also the
  only one whose round trip is bit-exact for every head_dim (sqrt(D) must be a
  power of two for "undo").
* ``rope_layout``: MaxText's default RoPE rotates halves, like megatron-core;
  its llama3.1 RoPE (``rope_type: llama3.1`` or a llama3.1 model name) rotates
  interleaved pairs. ``"interleaved"`` permutes each query/key head's rows from
  (0, 1, 2, 3, ...) pairs to halves, which makes megatron's rotate-half RoPE
  compute the same scores. llama3.1's frequency scaling must be switched on in
  the model separately (``GPTModel(rope_scaling=True, rope_scaling_factor=8.0)``).

Before anything is copied, the whole expected tree is checked against the
checkpoint (every leaf present, every shape right, nothing left over under
``params``) on every rank, so either all ranks load or all raise the same
:class:`~bridgec.runtime.errors.RunError` (``CHECKPOINT_ERROR``) listing every
difference.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from typing import Literal

import attrs
import torch

from bridgec.runtime.errors import ExitCode, RunError
from bridgec.runtime.init import global_name, layer_numbers
from bridgec.runtime.orbax_read import OrbaxItem, ReadStats
from bridgec.runtime.param_paths import maxtext_paths

QueryScaling = Literal["undo", "keep"]
RopeLayout = Literal["rotate_half", "interleaved"]
AdamKind = Literal["adamw", "adam_pax"]

PARAMS_FIELD = "params"
"""The TrainState field holding the weights: leaves are ``params.params.<module path>``."""

_EMBEDDING = "embedding.word_embeddings.weight"
_OUTPUT = "output_layer.weight"
_FINAL_NORM = "decoder.final_layernorm.weight"
_LAYER = re.compile(r"^decoder\.layers\.(?P<index>\d+)\.(?P<rest>.+)$")
# transformer_engine layer specs fuse the norms into the next linear layer: same leaves, other names.
_TE_NORMS = {
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight",
}
_SUPPORTED_DTYPES = ("float32", "bfloat16", "float16")


@attrs.frozen(kw_only=True)
class Dims:
    """The model's sizes, as MaxText names them in its checkpoint."""

    num_layers: int
    hidden: int
    heads: int
    groups: int
    head_dim: int
    ffn: int
    vocab: int
    """MaxText's vocab_size (the checkpoint's embedding rows)."""
    padded_vocab: int
    """megatron's (padded) vocabulary, >= vocab."""
    gated: bool
    qk_norm: bool
    tied: bool

    @classmethod
    def of(cls, chunk: torch.nn.Module, *, vocab_size: int) -> Dims:
        """Sizes of an (unwrapped) GPTModel chunk; ``vocab_size`` is MaxText's, before megatron's padding."""
        config = chunk.config  # type: ignore[attr-defined]
        heads = config.num_attention_heads
        return cls(
            num_layers=config.num_layers,
            hidden=config.hidden_size,
            heads=heads,
            groups=config.num_query_groups or heads,
            head_dim=config.kv_channels or config.hidden_size // heads,
            ffn=config.ffn_hidden_size,
            vocab=vocab_size,
            padded_vocab=chunk.vocab_size,  # type: ignore[attr-defined]
            gated=bool(config.gated_linear_unit),
            qk_norm=bool(config.qk_layernorm),
            tied=bool(chunk.share_embeddings_and_output_weights),  # type: ignore[attr-defined]
        )


def layer_suffixes(dims: Dims) -> tuple[str, ...]:
    """Per-layer megatron parameter names (local layer spec) of a Llama-family block."""
    qk = ("self_attention.q_layernorm.weight", "self_attention.k_layernorm.weight") if dims.qk_norm else ()
    return (
        "input_layernorm.weight",
        "self_attention.linear_qkv.weight",
        *qk,
        "self_attention.linear_proj.weight",
        "pre_mlp_layernorm.weight",
        "mlp.linear_fc1.weight",
        "mlp.linear_fc2.weight",
    )


def model_names(dims: Dims) -> list[str]:
    """Global megatron names of the whole model (TP=1, PP=1), in a fixed order."""
    names = [_EMBEDDING]
    for index in range(dims.num_layers):
        names += [f"decoder.layers.{index}.{suffix}" for suffix in layer_suffixes(dims)]
    names.append(_FINAL_NORM)
    if not dims.tied:
        names.append(_OUTPUT)
    return names


def leaf_shape(path: str, dims: Dims) -> tuple[int, ...]:
    """Shape of one MaxText leaf (``params/...`` path) in an unscanned checkpoint."""
    e, h, g, d, f = dims.hidden, dims.heads, dims.groups, dims.head_dim, dims.ffn
    shapes = {
        "token_embedder/embedding": (dims.vocab, e),
        "decoder_norm/scale": (e,),
        "logits_dense/kernel": (e, dims.vocab),
        "pre_self_attention_layer_norm/scale": (e,),
        "post_self_attention_layer_norm/scale": (e,),
        "self_attention/query/kernel": (e, h, d),
        "self_attention/key/kernel": (e, g, d),
        "self_attention/value/kernel": (e, g, d),
        "self_attention/out/kernel": (h, d, e),
        "self_attention/query_norm/scale": (d,),
        "self_attention/key_norm/scale": (d,),
        "mlp/wi_0/kernel": (e, f),
        "mlp/wi_1/kernel": (e, f),
        "mlp/wi/kernel": (e, f),
        "mlp/wo/kernel": (f, e),
    }
    for suffix, shape in shapes.items():
        if path.endswith("/" + suffix):
            return shape
    raise KeyError(path)


def stacked(path: str, scanned: bool) -> bool:
    """Whether a leaf holds every layer along the scan axis."""
    return scanned and "/decoder/layers/" in path


def expected_leaves(dims: Dims, *, scanned: bool, scan_axis: int) -> dict[str, tuple[int, ...]]:
    """Every leaf (``params/...`` path) the model needs, with its checkpoint shape."""
    leaves: dict[str, tuple[int, ...]] = {}
    for name in model_names(dims):
        for path in maxtext_paths(name, gated_mlp=dims.gated, scanned=scanned):
            shape = leaf_shape(path, dims)
            if stacked(path, scanned):
                shape = (*shape[:scan_axis], dims.num_layers, *shape[scan_axis:])
            leaves[path] = shape
    return leaves


def orbax_name(prefix: str, path: str) -> str:
    """Orbax's dotted leaf name: ``params/decoder/x`` under ``params`` -> ``params.params.decoder.x``."""
    return f"{prefix}.{path.replace('/', '.')}"


# --------------------------------------------------------------------------------------------
# Checking the checkpoint against the model.


def detect_scanned(item: OrbaxItem, prefix: str) -> bool:
    """Scanned (``decoder.layers.<leaf>``) or unscanned (``decoder.layers_0...``); RunError if neither."""
    scanned = any(name.startswith(f"{prefix}.params.decoder.layers.") for name in item.names)
    unscanned = any(name.startswith(f"{prefix}.params.decoder.layers_0.") for name in item.names)
    if scanned == unscanned:
        tops = sorted({".".join(name.split(".")[:3]) for name in item.names})
        what = "both stacked decoder.layers and decoder.layers_0" if scanned else "no decoder layers"
        raise RunError(
            ExitCode.CHECKPOINT_ERROR,
            f"{item.path} is not a MaxText decoder checkpoint: found {what} under {prefix}.params "
            f"(expected {prefix}.params.decoder.layers.* or {prefix}.params.decoder.layers_<i>.*); "
            f"its top-level entries are: {', '.join(tops[:20])}",
        )
    return scanned


def check_model(dims: Dims, chunk: torch.nn.Module, *, query_scaling: QueryScaling) -> list[str]:
    """What the megatron model must be for a Llama-family checkpoint to fit it."""
    config = chunk.config  # type: ignore[attr-defined]
    problems = []
    if config.normalization != "RMSNorm":
        problems.append(f"model normalization is {config.normalization}; MaxText Llama-family blocks use RMSNorm")
    if config.add_bias_linear:
        problems.append("model has linear biases (add_bias_linear); MaxText Llama-family checkpoints have none")
    if getattr(chunk, "position_embedding_type", "rope") != "rope":
        problems.append(
            f"model position embedding is {chunk.position_embedding_type}; MaxText Llama-family uses rope"
        )
    if dims.padded_vocab < dims.vocab:
        problems.append(f"model vocabulary {dims.padded_vocab} is smaller than the checkpoint's {dims.vocab}")
    if dims.qk_norm and query_scaling == "undo":
        problems.append(
            "query_scaling 'undo' with qk norms: MaxText does not pre-scale queries under use_qk_norm; use 'keep'"
        )
    softmax_scale = config.softmax_scale
    if query_scaling == "keep" and not dims.qk_norm and softmax_scale != 1.0:
        problems.append(
            "query_scaling 'keep' needs TransformerConfig(softmax_scale=1.0) "
            f"(the query kernel carries 1/sqrt(head_dim)); model has softmax_scale={softmax_scale}"
        )
    if query_scaling == "undo" and softmax_scale not in (None, 1.0 / math.sqrt(dims.head_dim)):
        problems.append(
            f"query_scaling 'undo' needs megatron's default softmax scale; model has softmax_scale={softmax_scale}"
        )
    return problems


def check_tree(item: OrbaxItem, dims: Dims, *, prefix: str, scanned: bool, scan_axis: int) -> list[str]:
    """Differences between the checkpoint's leaves under ``prefix`` and what the model needs."""
    leaves = expected_leaves(dims, scanned=scanned, scan_axis=scan_axis)
    expected = {orbax_name(prefix, path): shape for path, shape in leaves.items()}
    item.open_all(expected)
    problems = []
    for name, shape in expected.items():
        if name not in item:
            problems.append(f"missing leaf {name} (the model needs shape {list(shape)})")
            continue
        info = item.info(name)
        if info.shape != shape:
            problems.append(f"leaf {name} has shape {list(info.shape)}; the model needs {list(shape)}")
        if info.dtype.name not in _SUPPORTED_DTYPES:
            supported = ", ".join(_SUPPORTED_DTYPES)
            problems.append(f"leaf {name} has dtype {info.dtype.name}; expected one of {supported}")
    root = f"{prefix}.params."
    extra = sorted(name for name in item.names if name.startswith(root) and name not in expected)
    problems += [f"unexpected leaf {name} (the model has no place for it)" for name in extra]
    return problems


def _dims_line(dims: Dims) -> str:
    return (
        f"model: num_layers={dims.num_layers} hidden_size={dims.hidden} num_attention_heads={dims.heads} "
        f"num_query_groups={dims.groups} head_dim={dims.head_dim} ffn_hidden_size={dims.ffn} vocab_size={dims.vocab} "
        f"swiglu={dims.gated} tied={dims.tied}"
    )


def raise_if(problems: list[str], *, path: str, dims: Dims) -> None:
    if problems:
        listing = "\n".join(f"  - {problem}" for problem in problems)
        raise RunError(
            ExitCode.CHECKPOINT_ERROR,
            f"checkpoint {path} does not fit this model; nothing was loaded. {len(problems)} difference(s):\n"
            f"{listing}\n  ({_dims_line(dims)}; compare with the MaxText config: base_num_decoder_layers, "
            "base_emb_dim, base_num_query_heads, base_num_kv_heads, head_dim, base_mlp_dim, vocab_size, "
            "mlp_activations, logits_via_embedding)",
        )


# --------------------------------------------------------------------------------------------
# The transforms (one unscanned layer; torch tensors in the checkpoint's dtype).


def rope_permutation(head_dim: int) -> torch.Tensor:
    """Interleaved pairs (x0, x1), (x2, x3), ... -> halves (x0, x2, ...; x1, x3, ...) within a head."""
    return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])


@attrs.frozen(kw_only=True)
class Transform:
    """How leaf values become megatron values: the RoPE permutation and the query factor.

    For weights the query factor is sqrt(D) ("undo") or 1; for Adam moments it is
    the factor a gradient picks up (1/sqrt(D) for exp_avg, 1/D for exp_avg_sq).
    """

    rope_interleaved: bool
    query_factor: float

    def rope(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self.rope_interleaved:
            return tensor
        return tensor[..., rope_permutation(tensor.shape[-1])]

    def query(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = self.rope(tensor)
        if self.query_factor != 1.0:
            # One rounding, from float64, when the result is cast into the parameter.
            tensor = tensor.double() * self.query_factor
        return tensor


def fuse_qkv(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, transform: Transform) -> torch.Tensor:
    """query [E, h, D], key/value [E, g, D] (this rank's heads) -> linear_qkv rows [g (h/g + 2) D, E]."""
    hidden, groups, head_dim = key.shape
    q = transform.query(query)
    k = transform.rope(key)
    dtype = torch.promote_types(q.dtype, key.dtype)
    q = q.to(dtype).reshape(hidden, groups, -1, head_dim)
    fused = torch.cat([q, k.to(dtype).unsqueeze(2), value.to(dtype).unsqueeze(2)], dim=2)
    return fused.reshape(hidden, -1).t()


def _assemble(suffix: str, leaves: list[torch.Tensor], transform: Transform) -> torch.Tensor:
    """One layer's megatron parameter (this rank's shard) from its MaxText leaf boxes."""
    if suffix == "self_attention.linear_qkv.weight":
        return fuse_qkv(*leaves, transform)
    if suffix == "self_attention.linear_proj.weight":
        (out,) = leaves
        return out.reshape(-1, out.shape[-1]).t()
    if suffix == "mlp.linear_fc1.weight":
        return torch.cat([leaf.t() for leaf in leaves], dim=0)
    if suffix == "mlp.linear_fc2.weight":
        return leaves[0].t()
    if suffix in ("self_attention.q_layernorm.weight", "self_attention.k_layernorm.weight"):
        return transform.rope(leaves[0])
    return leaves[0]  # norm scales


def _pad_rows(rows: torch.Tensor, total: int) -> torch.Tensor:
    if rows.shape[0] == total:
        return rows
    padded = torch.zeros((total, *rows.shape[1:]), dtype=rows.dtype)
    padded[: rows.shape[0]] = rows
    return padded


# --------------------------------------------------------------------------------------------
# Which boxes a rank reads.


@attrs.frozen(kw_only=True)
class Shard:
    """This rank's tensor-parallel position."""

    size: int
    rank: int

    def part(self, total: int) -> slice:
        piece = total // self.size
        return slice(self.rank * piece, (self.rank + 1) * piece)


def layer_box(path: str, dims: Dims, shard: Shard) -> list[slice]:
    """This rank's box of one unscanned layer leaf (which heads, groups or ffn columns)."""
    box = [slice(None)] * len(leaf_shape(path, dims))
    if path.endswith("self_attention/query/kernel"):
        box[1] = shard.part(dims.heads)
    elif path.endswith(("self_attention/key/kernel", "self_attention/value/kernel")):
        box[1] = shard.part(dims.groups)
    elif path.endswith("self_attention/out/kernel"):
        box[0] = shard.part(dims.heads)
    elif path.endswith(("mlp/wi_0/kernel", "mlp/wi_1/kernel", "mlp/wi/kernel")):
        box[1] = shard.part(dims.ffn)
    elif path.endswith("mlp/wo/kernel"):
        box[0] = shard.part(dims.ffn)
    return box


def vocab_rows(dims: Dims, shard: Shard) -> tuple[slice, int]:
    """This rank's rows of the padded vocabulary that exist in the checkpoint, and how many rows it holds."""
    rows = shard.part(dims.padded_vocab)
    return slice(min(rows.start, dims.vocab), min(rows.stop, dims.vocab)), rows.stop - rows.start


@attrs.frozen(kw_only=True)
class Target:
    """One local parameter to fill: its global name and the layer it belongs to (None at top level)."""

    name: str
    param: torch.nn.Parameter
    layer: int | None
    suffix: str


def canonical_name(local: str, numbers: dict[int, int], *, tied: bool) -> str:
    """A parameter's layout-independent name in local-layer-spec terms.

    Global layer index (runtime.init.global_name); a tied output layer is the
    embedding; transformer_engine's fused norm weights get the local spec's names.
    """
    name = global_name(local, numbers)
    if tied and name == _OUTPUT:
        return _EMBEDDING
    match = _LAYER.match(name)
    if match and match["rest"] in _TE_NORMS:
        return f"decoder.layers.{match['index']}.{_TE_NORMS[match['rest']]}"
    return name


def targets(chunks: Sequence[torch.nn.Module], dims: Dims) -> list[Target]:
    """Every parameter of this rank's chunks, by canonical name."""
    found = []
    for chunk in chunks:
        numbers = layer_numbers(chunk)
        for local, param in chunk.named_parameters():
            name = canonical_name(local, numbers, tied=dims.tied)
            match = _LAYER.match(name)
            layer, suffix = (int(match["index"]), match["rest"]) if match else (None, name)
            found.append(Target(name=name, param=param, layer=layer, suffix=suffix))
    return found


class LeafReader:
    """Reads the boxes of one kind of leaf for a set of layers, once per stacked leaf."""

    def __init__(
        self, item: OrbaxItem, *, prefix: str, dims: Dims, shard: Shard, scanned: bool, scan_axis: int
    ) -> None:
        self.item, self.prefix, self.dims, self.shard = item, prefix, dims, shard
        self.scanned, self.scan_axis = scanned, scan_axis

    def layers(self, path: str, layers: list[int]) -> dict[int, torch.Tensor]:
        """Box of leaf ``path`` (a scanned path, or an unscanned one with ``{i}`` for the layer) per layer."""
        box = layer_box(path, self.dims, self.shard)
        if stacked(path, self.scanned):
            # Layers of one chunk are consecutive: one read covers them all.
            first, last = min(layers), max(layers)
            full = box[: self.scan_axis] + [slice(first, last + 1)] + box[self.scan_axis :]
            block = self.item.read_torch(orbax_name(self.prefix, path), full)
            return {layer: block.select(self.scan_axis, layer - first) for layer in layers}
        return {layer: self.item.read_torch(orbax_name(self.prefix, path.format(i=layer)), box) for layer in layers}

    def top(self, path: str, rows_axis: int | None) -> torch.Tensor:
        """A top-level leaf; ``rows_axis`` is its vocabulary axis (padded rows are added by the caller)."""
        box = [slice(None)] * len(leaf_shape(path, self.dims))
        if rows_axis is not None:
            box[rows_axis] = vocab_rows(self.dims, self.shard)[0]
        return self.item.read_torch(orbax_name(self.prefix, path), box)


def _layer_paths(suffix: str, dims: Dims, scanned: bool) -> tuple[str, ...]:
    # maxtext_paths wants a concrete index; {i} stands for the layer in unscanned paths.
    paths = maxtext_paths(f"decoder.layers.0.{suffix}", gated_mlp=dims.gated, scanned=scanned)
    return paths if scanned else tuple(path.replace("/layers_0/", "/layers_{i}/") for path in paths)


def produce(
    reader: LeafReader, chunk_targets: list[Target], transform: Transform
) -> Iterator[tuple[Target, torch.Tensor]]:
    """(target, local value) for every target of one chunk, one kind of parameter at a time.

    Reading kind by kind keeps at most one kind's boxes (e.g. q, k and v of the
    chunk's layers) in memory besides the model.
    """
    dims = reader.dims
    by_suffix: dict[str, list[Target]] = {}
    for target in chunk_targets:
        by_suffix.setdefault(target.suffix, []).append(target)
    for suffix, group in by_suffix.items():
        if suffix == _EMBEDDING:
            rows = reader.top("params/token_embedder/embedding", rows_axis=0)
            value = _pad_rows(rows, vocab_rows(dims, reader.shard)[1])
            yield from ((target, value) for target in group)
        elif suffix == _OUTPUT:
            rows = reader.top("params/decoder/logits_dense/kernel", rows_axis=1).t()
            value = _pad_rows(rows, vocab_rows(dims, reader.shard)[1])
            yield from ((target, value) for target in group)
        elif suffix == _FINAL_NORM:
            value = reader.top("params/decoder/decoder_norm/scale", rows_axis=None)
            yield from ((target, value) for target in group)
        else:
            layers = [int(target.layer) for target in group if target.layer is not None]
            boxes = [reader.layers(path, layers) for path in _layer_paths(suffix, dims, reader.scanned)]
            for target, layer in zip(group, layers, strict=True):
                yield target, _assemble(suffix, [box[layer] for box in boxes], transform)


def _check_targets(found: list[Target], dims: Dims) -> list[str]:
    known = set(layer_suffixes(dims)) | {_EMBEDDING, _OUTPUT, _FINAL_NORM}
    return [
        f"model parameter {t.name} has no MaxText counterpart in the Llama-family layout"
        for t in found
        if t.suffix not in known
    ]


# --------------------------------------------------------------------------------------------
# Optimizer main parameters: where megatron's optimizers keep fp32 weights and Adam state.


@attrs.frozen(kw_only=True)
class MainSlot:
    """The optimizer's main (fp32) parameter for one model parameter, and which flat range of it that is.

    ``start:end`` indexes the flattened model parameter; it is the whole of it
    except under the distributed optimizer, which holds this data-parallel rank's
    range only. ``inner`` is the torch optimizer whose ``state[main]`` holds Adam's moments.
    """

    main: torch.Tensor
    start: int
    end: int
    inner: torch.optim.Optimizer
    separate: bool
    """main is a copy (mixed precision) rather than the model parameter or a view of it."""


def main_slots(optimizer: object) -> dict[torch.nn.Parameter, MainSlot]:
    """Model parameter -> main parameter slot, for megatron-core 0.16's FP32Optimizer,
    Float16OptimizerWithFloat16Params and DistributedOptimizer (inside a ChainedOptimizer or not)."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
    from megatron.core.optimizer.optimizer import ChainedOptimizer, Float16OptimizerWithFloat16Params, FP32Optimizer

    subs = optimizer.chained_optimizers if isinstance(optimizer, ChainedOptimizer) else [optimizer]
    slots: dict[torch.nn.Parameter, MainSlot] = {}
    for sub in subs:
        inner = sub.optimizer
        if isinstance(sub, DistributedOptimizer):
            pairs = [
                (model_groups, shard_groups, separate)
                for model_groups, shard_groups, separate in (
                    (sub.model_float16_groups, sub.shard_fp32_from_float16_groups, True),
                    (sub.model_fp32_groups, sub.shard_fp32_groups, False),
                )
            ]
            for model_groups, shard_groups, separate in pairs:
                for model_group, shard_group in zip(model_groups, shard_groups):
                    for param, main in zip(model_group, shard_group):
                        span = sub._get_model_param_range_map(param)["param"]
                        slots[param] = MainSlot(
                            main=main, start=span.start, end=span.end, inner=inner, separate=separate
                        )
        elif isinstance(sub, Float16OptimizerWithFloat16Params):
            for model_group, main_group in zip(sub.float16_groups, sub.fp32_from_float16_groups):
                for param, main in zip(model_group, main_group):
                    slots[param] = MainSlot(main=main, start=0, end=param.numel(), inner=inner, separate=True)
            for group in sub.fp32_from_fp32_groups:
                for param in group:
                    slots[param] = MainSlot(main=param, start=0, end=param.numel(), inner=inner, separate=False)
        elif isinstance(sub, FP32Optimizer):
            for group in inner.param_groups:
                for param in group["params"]:
                    slots[param] = MainSlot(main=param, start=0, end=param.numel(), inner=inner, separate=False)
        else:
            raise TypeError(f"unsupported megatron optimizer {type(sub).__name__}")
    return slots


def _flat_part(value: torch.Tensor, slot: MainSlot) -> torch.Tensor:
    return value.reshape(-1)[slot.start : slot.end].view_as(slot.main)


# --------------------------------------------------------------------------------------------
# Entry points.


@attrs.frozen(kw_only=True)
class ImportReport:
    """What :func:`load_maxtext_weights` found and did on this rank."""

    path: str
    scanned: bool
    zarr3: bool
    ocdbt: bool
    dtypes: tuple[str, ...]
    """dtypes of the checkpoint's weight leaves."""
    parameters: int
    """Local parameters set."""
    bytes_read: int
    """Decoded bytes of the boxes this rank read."""
    padded_vocab_rows: int
    """Rows megatron adds to the vocabulary (zeros)."""
    step: int | None
    """The checkpoint's ``step`` leaf, if it has one."""


@torch.no_grad()
def load_maxtext_weights(
    chunks: Sequence[torch.nn.Module],
    *,
    path: str,
    vocab_size: int,
    tensor_parallel: int,
    tensor_rank: int,
    query_scaling: QueryScaling,
    rope_layout: RopeLayout,
    param_scan_axis: int = 1,
    optimizer: object | None = None,
    stats: ReadStats | None = None,
) -> ImportReport:
    """Copy a MaxText checkpoint's weights into this rank's (unwrapped) GPTModel chunks.

    ``path`` is the Orbax item folder (``<ckpt>/<step>/items``); ``vocab_size``
    MaxText's vocabulary (megatron's padded rows are zero). Call it on every
    rank, either before the optimizer exists, or after it with ``optimizer``
    passed: megatron's mixed-precision and distributed optimizers copy the
    weights into their fp32 main parameters when they are built, and the first
    step copies those back over the model, so a load after build_optimizer that
    skips them is lost. Passing the optimizer also gives the main parameters the
    checkpoint's fp32 values rather than their bf16 rounding. Raises RunError
    (CHECKPOINT_ERROR) listing every difference before copying anything.
    """
    dims = Dims.of(chunks[0], vocab_size=vocab_size)
    item = OrbaxItem(path, stats=stats)
    scanned = detect_scanned(item, PARAMS_FIELD)
    found = targets(chunks, dims)
    problems = check_model(dims, chunks[0], query_scaling=query_scaling) + _check_targets(found, dims)
    problems += check_tree(item, dims, prefix=PARAMS_FIELD, scanned=scanned, scan_axis=param_scan_axis)
    raise_if(problems, path=path, dims=dims)

    slots = main_slots(optimizer) if optimizer is not None else {}
    transform = Transform(
        rope_interleaved=rope_layout == "interleaved",
        query_factor=math.sqrt(dims.head_dim) if query_scaling == "undo" else 1.0,
    )
    shard = Shard(size=tensor_parallel, rank=tensor_rank)
    reader = LeafReader(item, prefix=PARAMS_FIELD, dims=dims, shard=shard, scanned=scanned, scan_axis=param_scan_axis)
    count = 0
    for chunk in chunks:
        for target, value in produce(reader, targets([chunk], dims), transform):
            target.param.data.copy_(value.reshape(target.param.shape))
            slot = slots.get(target.param)
            if slot is not None and slot.separate:
                slot.main.data.copy_(_flat_part(value, slot))
            count += 1
    weight_leaves = expected_leaves(dims, scanned=scanned, scan_axis=param_scan_axis)
    weight_names = [orbax_name(PARAMS_FIELD, path) for path in weight_leaves]
    return ImportReport(
        path=path,
        scanned=scanned,
        zarr3=item.use_zarr3,
        ocdbt=item.use_ocdbt,
        dtypes=tuple(sorted({item.info(name).dtype.name for name in weight_names})),
        parameters=count,
        bytes_read=item.stats.bytes_read,
        padded_vocab_rows=dims.padded_vocab - dims.vocab,
        step=int(item.read("step")) if "step" in item else None,
    )


@attrs.frozen(kw_only=True)
class AdamState:
    """Adam's state for this rank's parameters, in torch's convention (exp_avg, exp_avg_sq, step).

    ``moments[param]`` holds ``exp_avg`` and ``exp_avg_sq`` as fp32 tensors of the
    parameter's local shape (this TP shard, every data-parallel rank the whole of it).
    """

    step: int
    moments: dict[torch.nn.Parameter, dict[str, torch.Tensor]]


def moment_prefix(item: OrbaxItem) -> str:
    """Where the Adam state sits in opt_state: ``opt_state.0`` (optax.adamw's chain), ``opt_state`` (adam_pax), ..."""
    marker = f".mu.{PARAMS_FIELD}.token_embedder.embedding"
    found = sorted(name[: -len(marker)] for name in item.names if name.endswith(marker))
    if len(found) != 1:
        what = "no Adam moments (opt_state ... mu / nu)" if not found else f"several Adam states: {', '.join(found)}"
        raise RunError(ExitCode.CHECKPOINT_ERROR, f"{item.path}: found {what}; cannot import the optimizer state")
    return found[0]


@torch.no_grad()
def read_maxtext_adam_state(
    chunks: Sequence[torch.nn.Module],
    *,
    path: str,
    vocab_size: int,
    tensor_parallel: int,
    tensor_rank: int,
    query_scaling: QueryScaling,
    rope_layout: RopeLayout,
    opt_type: AdamKind,
    adam_beta1: float,
    adam_beta2: float,
    param_scan_axis: int = 1,
    stats: ReadStats | None = None,
) -> AdamState:
    """Read MaxText's Adam state (``mu``, ``nu``, ``count``) for this rank's parameters.

    Moments go through the same permutations, fusions and transposes as their
    parameters. Under ``query_scaling="undo"`` a query gradient is 1/sqrt(D) of
    MaxText's, so its exp_avg is divided by sqrt(D) and exp_avg_sq by D.
    ``adam_pax`` keeps bias-corrected moments m^, v^; torch keeps raw ones:
    exp_avg = m^ (1 - b1^t), exp_avg_sq = v^ (1 - b2^t) with t = count.
    """
    dims = Dims.of(chunks[0], vocab_size=vocab_size)
    item = OrbaxItem(path, stats=stats)
    prefix = moment_prefix(item)
    scanned = detect_scanned(item, PARAMS_FIELD)
    found = targets(chunks, dims)
    problems = check_model(dims, chunks[0], query_scaling=query_scaling) + _check_targets(found, dims)
    for field in ("mu", "nu"):
        problems += check_tree(item, dims, prefix=f"{prefix}.{field}", scanned=scanned, scan_axis=param_scan_axis)
    if f"{prefix}.count" not in item:
        problems.append(f"missing leaf {prefix}.count (Adam's step count)")
    raise_if(problems, path=path, dims=dims)

    step = int(item.read(f"{prefix}.count"))
    scale = math.sqrt(dims.head_dim) if query_scaling == "undo" else 1.0
    corrections = {"mu": 1.0, "nu": 1.0}
    if opt_type == "adam_pax":
        corrections = {"mu": 1.0 - adam_beta1**step, "nu": 1.0 - adam_beta2**step}
    shard = Shard(size=tensor_parallel, rank=tensor_rank)
    moments: dict[torch.nn.Parameter, dict[str, torch.Tensor]] = {}
    for field, key, power in (("mu", "exp_avg", 1), ("nu", "exp_avg_sq", 2)):
        transform = Transform(rope_interleaved=rope_layout == "interleaved", query_factor=scale**-power)
        reader = LeafReader(
            item, prefix=f"{prefix}.{field}", dims=dims, shard=shard, scanned=scanned, scan_axis=param_scan_axis
        )
        for chunk in chunks:
            for target, value in produce(reader, targets([chunk], dims), transform):
                value = value.double() * corrections[field] if corrections[field] != 1.0 else value
                moments.setdefault(target.param, {})[key] = value.to(torch.float32).reshape(target.param.shape)
    return AdamState(step=step, moments=moments)


def set_megatron_adam_state(optimizer: object, state: AdamState) -> None:
    """Put Adam moments and the step count into a megatron-core optimizer built by ``optim.build_optimizer``.

    megatron keeps Adam's state on its main parameters: ``inner.state[main] =
    {"step", "exp_avg", "exp_avg_sq"}`` (torch.optim.AdamW on CPU; the step is a
    float32 tensor, and bias correction uses step + 1 on the next update, as optax
    does with count + 1). Under the distributed optimizer a rank's main parameter
    is its range of the flattened parameter, so only that range is kept.
    """
    slots = main_slots(optimizer)
    missing = [slot for param, slot in slots.items() if param not in state.moments]
    if missing:
        raise RunError(
            ExitCode.CHECKPOINT_ERROR,
            f"Adam state covers {len(state.moments)} parameters but the optimizer holds {len(slots)}",
        )
    for param, slot in slots.items():
        moments = state.moments[param]
        slot.inner.state[slot.main] = {
            "step": torch.tensor(float(state.step), dtype=torch.float32),
            "exp_avg": _flat_part(moments["exp_avg"], slot).to(slot.main.dtype).clone(),
            "exp_avg_sq": _flat_part(moments["exp_avg_sq"], slot).to(slot.main.dtype).clone(),
        }
    for group in (g for slot in slots.values() for g in slot.inner.param_groups):
        if "step" in group:  # apex FusedAdam keeps the step per group
            group["step"] = state.step


def load_maxtext_optimizer_state(
    chunks: Sequence[torch.nn.Module],
    optimizer: object,
    *,
    path: str,
    vocab_size: int,
    tensor_parallel: int,
    tensor_rank: int,
    query_scaling: QueryScaling,
    rope_layout: RopeLayout,
    opt_type: AdamKind,
    adam_beta1: float,
    adam_beta2: float,
    param_scan_axis: int = 1,
) -> int:
    """:func:`read_maxtext_adam_state` then :func:`set_megatron_adam_state`; returns the step count (updates done)."""
    state = read_maxtext_adam_state(
        chunks,
        path=path,
        vocab_size=vocab_size,
        tensor_parallel=tensor_parallel,
        tensor_rank=tensor_rank,
        query_scaling=query_scaling,
        rope_layout=rope_layout,
        opt_type=opt_type,
        adam_beta1=adam_beta1,
        adam_beta2=adam_beta2,
        param_scan_axis=param_scan_axis,
    )
    set_megatron_adam_state(optimizer, state)
    return state.step

