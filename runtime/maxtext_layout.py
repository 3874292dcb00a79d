"""MaxText checkpoint layouts against megatron-core's GPTModel: leaves, checks, transforms, reads.

What each megatron parameter's MaxText leaves are, their shapes and
tensor-parallel boxes, come from the parameter table
(:mod:`bridgec.runtime.models.gpt`); this module does the arithmetic of its
transforms (E hidden, H query heads, G key/value heads, D head_dim, F ffn, V
vocab; shapes of one unscanned MaxText layer):

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
  pipeline stage takes the embedding;
* mixtral's MoE block (X experts): ``mlp.router.weight`` [X, E] <- ``MoeBlock_0/gate/kernel``
  [E, X] transposed; expert x's ``linear_fc1`` [2F, E] <- ``[wi_0[x]; wi_1[x]]`` transposed and
  ``linear_fc2`` [E, F] <- ``wo[x]`` transposed, from the stacked ``wi_0``, ``wi_1`` [X, E, F] and
  ``wo`` [X, F, E]; an expert-parallel rank reads the consecutive experts it holds, in one box;
* scanned checkpoints stack layers at ``param_scan_axis`` (MaxText default 1:
  query [E, L, H, D], norm scales [E, L], wi_0 [X, L, E, F]); unscanned ones have ``layers_{i}``.

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
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Literal, assert_never

import attrs
import torch

from bridgec.runtime.errors import ExitCode, RunError
from bridgec.runtime.models import gpt
from bridgec.runtime.models.chunks import config_of, pairs
from bridgec.runtime.norms import ZeroCenteredNorm
from bridgec.runtime.orbax_read import OrbaxItem

QueryScaling = Literal["undo", "keep"]
RopeLayout = Literal["rotate_half", "interleaved"]

PARAMS_FIELD = "params"
"""The TrainState field holding the weights: leaves are ``params.params.<module path>``."""

_SUPPORTED_DTYPES = ("float32", "bfloat16", "float16")


@attrs.frozen(kw_only=True)
class Dims:
    """The model (the parameter table's view of it) and MaxText's vocabulary."""

    model: gpt.GPTConfig
    vocab: int
    """MaxText's vocab_size (the checkpoint's embedding rows); ``model.vocab`` is megatron's padded one, >= it."""
    block: str = "llama2"
    """MaxText's decoder_block, which names the leaves (one of gpt.MAXTEXT_BLOCKS)."""

    @classmethod
    def of(cls, chunk: torch.nn.Module, *, vocab_size: int, block: str = "llama2") -> Dims:
        """Sizes of an (unwrapped) GPTModel chunk; ``vocab_size`` is MaxText's, before megatron's padding."""
        if block not in gpt.MAXTEXT_BLOCKS:
            raise RunError(
                ExitCode.CHECKPOINT_ERROR,
                f"decoder block {block!r} is not mapped; bridgec reads and writes {', '.join(gpt.MAXTEXT_BLOCKS)}",
            )
        return cls(model=config_of(chunk), vocab=vocab_size, block=block)


def mapped(dims: Dims) -> list[gpt.Parameter]:
    """The whole model's parameters that have MaxText leaves, in table order."""
    return [p for p in gpt.parameters(dims.model) if p.entry.maxtext is not None]


def stacked(parameter: gpt.Parameter, scanned: bool) -> bool:
    """Whether its leaves hold every layer along the scan axis."""
    return scanned and parameter.layer is not None


def leaves_of(parameter: gpt.Parameter, dims: Dims, *, scanned: bool) -> list[tuple[str, gpt.MaxTextLeaf]]:
    """(``params/...`` path, leaf) of each MaxText leaf the parameter holds, in the transform's order."""
    assert parameter.entry.maxtext is not None
    paths = gpt.maxtext_paths(parameter, dims.model, scanned=scanned, block=dims.block)
    return list(zip(paths, parameter.entry.maxtext.leaves_for(dims.model, dims.block), strict=True))


def expected_leaves(dims: Dims, *, scanned: bool, scan_axis: int) -> dict[str, tuple[int, ...]]:
    """Every leaf (``params/...`` path) the model needs, with its checkpoint shape."""
    leaves: dict[str, tuple[int, ...]] = {}
    for parameter in mapped(dims):
        for path, leaf in leaves_of(parameter, dims, scanned=scanned):
            shape = leaf.shape(dims.model, dims.vocab)
            if stacked(parameter, scanned):
                shape = (*shape[:scan_axis], dims.model.num_layers, *shape[scan_axis:])
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


def detect_block(item: OrbaxItem, prefix: str, dims: Dims, *, scanned: bool) -> Dims:
    """``dims`` with the decoder block whose names the checkpoint's first layer uses (its attention norm).

    llama2, mistral, qwen3 and mixtral name their leaves alike (llama2 stands for them; mixtral adds
    ``MoeBlock_0``); gemma names its norms apart; gpt3 names its attention norm as gemma does, and is told
    apart by its fused ``qkv_proj``.
    """
    first = next(p for p in mapped(dims) if p.entry.stage is gpt.Stage.LAYER)
    qkv = next(p for p in mapped(dims) if p.entry.name == "self_attention.linear_qkv.weight")
    ((path, _),) = leaves_of(qkv, attrs.evolve(dims, block="gpt3"), scanned=scanned)
    if orbax_name(prefix, path) in item.names:
        return attrs.evolve(dims, block="gpt3")
    for block in ("gemma", "llama2"):
        ((path, _),) = leaves_of(first, attrs.evolve(dims, block=block), scanned=scanned)[:1]
        if orbax_name(prefix, path) in item.names:
            return attrs.evolve(dims, block=block)
    return dims


def query_prescaled(dims: Dims) -> bool:
    """Whether the checkpoint's query kernel carries 1/sqrt(D) (MaxText's init_query_w; not under use_qk_norm,
    nor in gpt3, which scales the query at run time)."""
    return not dims.model.qk_norm and dims.block not in gpt.RUNTIME_QUERY_SCALING_BLOCKS


def query_kernel_factor(dims: Dims, query_scaling: QueryScaling) -> float:
    """What the query kernel is multiplied by on import (divided by on export): sqrt(D) to undo a pre-scaling."""
    return math.sqrt(dims.model.head_dim) if query_scaling == "undo" and query_prescaled(dims) else 1.0


def _check_gpt3(dims: Dims, chunk: torch.nn.Module) -> list[str]:
    """gpt3 (models/gpt3.py): LayerNorm with biases applied as 1 + scale, biased linears, learned positions, MHA."""
    config = chunk.config  # type: ignore[attr-defined]
    model = dims.model
    problems = []
    if config.normalization != "LayerNorm":
        problems.append(f"model normalization is {config.normalization}; MaxText's gpt3 block uses LayerNorm")
    elif not config.layernorm_zero_centered_gamma and not any(
        isinstance(module, ZeroCenteredNorm) for module in chunk.modules()
    ):  # transformer_engine's norms apply 1 + weight themselves; the local layers need bridgec's
        problems.append(
            "model norms apply their weight as stored; MaxText's gpt3 LayerNorm applies 1 + scale "
            "([model] norm_zero_centered = true)"
        )
    if not config.add_bias_linear:
        problems.append("model has no linear biases (add_bias_linear); MaxText's gpt3 checkpoints have them")
    if getattr(chunk, "position_embedding_type", "rope") != "learned_absolute":
        problems.append(
            f"model position embedding is {getattr(chunk, 'position_embedding_type', 'rope')}; "
            "MaxText's gpt3 block learns absolute positions (trainable_position_size)"
        )
    if model.gated:
        problems.append("model MLP is gated; MaxText's gpt3 MLP is one wi with one activation")
    if model.groups != model.heads:
        problems.append(f"model has {model.groups} query groups for {model.heads} heads; gpt3 needs as many as heads")
    return problems


_MIXTRAL_ROUTING = (
    ("moe_router_pre_softmax", False, "top-k of the router logits first, then the softmax over those k"),
    ("moe_router_score_function", "softmax", "softmax routing scores"),
    ("moe_router_topk_scaling_factor", None, "unscaled routing weights"),
    ("moe_router_num_groups", None, "no group-limited routing"),
    ("moe_router_enable_expert_bias", False, "no routing bias"),
    ("moe_expert_capacity_factor", None, "dropless routing (capacity_factor -1)"),
    ("moe_aux_loss_coeff", 0.0, "no load-balancing loss (load_balance_loss_weight 0)"),
    ("moe_z_loss_coeff", None, "no router z-loss"),
    ("moe_input_jitter_eps", None, "no input jitter"),
    ("moe_shared_expert_intermediate_size", None, "no shared experts"),
    ("moe_apply_probs_on_input", False, "routing weights applied to the experts' outputs"),
)
"""megatron-core MoE settings and the values that compute MaxText's mixtral MoE block (layers/moe.py
RoutedMoE.get_topk: ``top_k(gate_logits)``, then ``softmax`` over the k, float32; dropless; no auxiliary loss)."""


def _check_moe(dims: Dims, config: object) -> list[str]:
    """An MoE model fits a mixtral checkpoint when its experts are gated and its router routes as mixtral's."""
    model = dims.model
    if dims.block not in gpt.MOE_BLOCKS:
        return [f"model has MoE layers ({model.num_experts} experts); MaxText's {dims.block} block is dense"]
    problems = []
    if not model.gated:
        problems.append("model experts are not gated; mixtral's experts hold wi_0 (gate) and wi_1 (up)")
    for name, wanted, meaning in _MIXTRAL_ROUTING:
        value = getattr(config, name)
        if value != wanted:
            problems.append(f"model has {name}={value!r}; mixtral's MoE needs {wanted!r} ({meaning})")
    return problems


def check_model(dims: Dims, chunk: torch.nn.Module, *, query_scaling: QueryScaling) -> list[str]:
    """What the megatron model must be for a checkpoint of ``dims.block`` to fit it."""
    config = chunk.config  # type: ignore[attr-defined]
    model = dims.model
    problems = []
    if dims.block == "gpt3":
        problems += _check_gpt3(dims, chunk)
    else:
        if config.normalization != "RMSNorm":
            problems.append(f"model normalization is {config.normalization}; MaxText Llama-family blocks use RMSNorm")
        if config.add_bias_linear or model.qkv_bias:
            problems.append("model has linear biases (add_bias_linear); MaxText Llama-family checkpoints have none")
        if getattr(chunk, "position_embedding_type", "rope") != "rope":
            problems.append(
                f"model position embedding is {chunk.position_embedding_type}; MaxText Llama-family uses rope"
            )
    if model.num_experts is not None:
        problems += _check_moe(dims, config)
    if model.vocab < dims.vocab:
        problems.append(f"model vocabulary {model.vocab} is smaller than the checkpoint's {dims.vocab}")
    if model.qk_norm and query_scaling == "undo":
        problems.append(
            "query_scaling 'undo' with qk norms: MaxText does not pre-scale queries under use_qk_norm; use 'keep'"
        )
    softmax_scale = config.softmax_scale
    if not query_prescaled(dims) and not model.qk_norm:
        if softmax_scale not in (None, 1.0 / math.sqrt(model.head_dim)):
            problems.append(
                f"MaxText's {dims.block} block divides the query by sqrt(head_dim) at run time (its kernel is not "
                f"pre-scaled): the model needs megatron's default softmax scale; it has softmax_scale={softmax_scale}"
            )
        return problems
    if query_scaling == "keep" and not model.qk_norm and softmax_scale != 1.0:
        problems.append(
            "query_scaling 'keep' needs TransformerConfig(softmax_scale=1.0) "
            f"(the query kernel carries 1/sqrt(head_dim)); model has softmax_scale={softmax_scale}"
        )
    if query_scaling == "undo" and softmax_scale not in (None, 1.0 / math.sqrt(model.head_dim)):
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
    m = dims.model
    return (
        f"model: num_layers={m.num_layers} hidden_size={m.hidden} num_attention_heads={m.heads} "
        f"num_query_groups={m.groups} head_dim={m.head_dim} ffn_hidden_size={m.ffn} vocab_size={dims.vocab} "
        f"swiglu={m.gated} tied={m.tied}"
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


def assemble(kind: gpt.MaxTextTransform, leaves: list[torch.Tensor], transform: Transform) -> torch.Tensor:
    """One layer's megatron parameter (this rank's shard) from its MaxText leaf boxes."""
    match kind:
        case gpt.MaxTextTransform.QKV:
            return fuse_qkv(*leaves, transform)
        case gpt.MaxTextTransform.QKV_FUSED:
            # [E, 3, h, D] -> [E, h, 3, D]: each head's q, k, v rows together (one query per key/value group).
            (kernel,) = leaves
            return kernel.permute(0, 2, 1, 3).reshape(kernel.shape[0], -1).t()
        case gpt.MaxTextTransform.QKV_FUSED_BIAS:
            (bias,) = leaves
            return bias.permute(1, 0, 2).reshape(-1)
        case gpt.MaxTextTransform.OUT:
            (out,) = leaves
            return out.reshape(-1, out.shape[-1]).t()
        case gpt.MaxTextTransform.FC1:
            return torch.cat([leaf.t() for leaf in leaves], dim=0)
        case gpt.MaxTextTransform.TRANSPOSE:
            return leaves[0].t()
        case gpt.MaxTextTransform.QK_NORM:
            return transform.rope(leaves[0])
        case gpt.MaxTextTransform.COPY:
            return leaves[0]
        case gpt.MaxTextTransform.EMBEDDING | gpt.MaxTextTransform.LOGITS:
            raise ValueError(f"{kind} is not a layer transform")
        case _:
            assert_never(kind)


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


def layer_box(leaf: gpt.MaxTextLeaf, dims: Dims, shard: Shard) -> list[slice]:
    """This rank's box of one unscanned layer leaf (which heads, groups or ffn columns)."""
    box = [slice(None)] * len(leaf.shape(dims.model, dims.vocab))
    if leaf.split_axis is not None and leaf.split_units is not None:
        box[leaf.split_axis] = shard.part(leaf.split_units(dims.model))
    return box


def vocab_rows(dims: Dims, shard: Shard) -> tuple[slice, int]:
    """This rank's rows of the padded vocabulary that exist in the checkpoint, and how many rows it holds."""
    rows = shard.part(dims.model.vocab)
    return slice(min(rows.start, dims.vocab), min(rows.stop, dims.vocab)), rows.stop - rows.start


@attrs.frozen(kw_only=True)
class Target:
    """One local parameter to fill, with its row of the parameter table."""

    parameter: gpt.Parameter
    param: torch.nn.Parameter


def targets(
    chunks: Sequence[torch.nn.Module], *, tensor_parallel: int, expert_parallel: int = 1, expert_rank: int = 0
) -> list[Target]:
    """Every parameter of this rank's chunks; an expert-parallel rank holds experts
    ``expert_rank x local .. (expert_rank + 1) x local - 1`` of each MoE layer."""
    found = []
    for chunk in chunks:
        experts = config_of(chunk).num_experts or 0
        held = pairs(
            chunk, tensor_parallel=tensor_parallel, expert_rank=expert_rank, local_experts=experts // expert_parallel
        )
        found += [Target(parameter=parameter, param=param) for parameter, param in held]
    return found


def check_targets(found: list[Target]) -> list[str]:
    return [
        f"model parameter {t.parameter.name} has no MaxText counterpart in the Llama-family layout"
        for t in found
        if t.parameter.entry.maxtext is None
    ]


class LeafReader:
    """Reads the boxes of one kind of leaf for a set of layers, once per stacked leaf."""

    def __init__(
        self, item: OrbaxItem, *, prefix: str, dims: Dims, shard: Shard, scanned: bool, scan_axis: int
    ) -> None:
        self.item, self.prefix, self.dims, self.shard = item, prefix, dims, shard
        self.scanned, self.scan_axis = scanned, scan_axis

    def layers(self, parameters: list[gpt.Parameter], index: int) -> dict[tuple[int, int | None], torch.Tensor]:
        """Box of the ``index``-th leaf of each of these layer parameters (one kind), per (layer, expert)."""
        layers = [int(p.layer) for p in parameters if p.layer is not None]
        path, leaf = leaves_of(parameters[0], self.dims, scanned=self.scanned)[index]
        box = layer_box(leaf, self.dims, self.shard)
        experts = [int(p.expert) for p in parameters if p.expert is not None]
        if leaf.expert_axis is not None:
            # An expert-parallel rank holds consecutive experts: one read covers them.
            box[leaf.expert_axis] = slice(min(experts), max(experts) + 1)

        def one(stack: torch.Tensor, parameter: gpt.Parameter) -> torch.Tensor:
            if leaf.expert_axis is None:
                return stack
            return stack.select(leaf.expert_axis, int(parameter.expert) - min(experts))  # type: ignore[arg-type]

        if self.scanned:
            # Layers of one chunk are consecutive: one read covers them all.
            first, last = min(layers), max(layers)
            full = box[: self.scan_axis] + [slice(first, last + 1)] + box[self.scan_axis :]
            block = self.item.read_torch(orbax_name(self.prefix, path), full)
            return {
                (int(p.layer), p.expert): one(block.select(self.scan_axis, int(p.layer) - first), p)  # type: ignore[arg-type]
                for p in parameters
            }
        read: dict[int, torch.Tensor] = {}
        for parameter in parameters:
            layer = int(parameter.layer)  # type: ignore[arg-type]
            if layer not in read:
                (path, _) = leaves_of(parameter, self.dims, scanned=False)[index]
                read[layer] = self.item.read_torch(orbax_name(self.prefix, path), box)
        return {(int(p.layer), p.expert): one(read[int(p.layer)], p) for p in parameters}  # type: ignore[arg-type]

    def top(self, parameter: gpt.Parameter, rows_axis: int | None) -> torch.Tensor:
        """A top-level leaf; ``rows_axis`` is its vocabulary axis (padded rows are added by the caller)."""
        ((path, leaf),) = leaves_of(parameter, self.dims, scanned=self.scanned)
        box = [slice(None)] * len(leaf.shape(self.dims.model, self.dims.vocab))
        if rows_axis is not None:
            box[rows_axis] = vocab_rows(self.dims, self.shard)[0]
        return self.item.read_torch(orbax_name(self.prefix, path), box)

    def top_value(self, parameter: gpt.Parameter) -> torch.Tensor:
        """The local value of a top-level parameter: embedding rows, output rows (padded), or the final norm."""
        assert parameter.entry.maxtext is not None
        kind = parameter.entry.maxtext.for_block(self.dims.block).transform
        padded_rows = vocab_rows(self.dims, self.shard)[1]
        match kind:
            case gpt.MaxTextTransform.EMBEDDING:
                return _pad_rows(self.top(parameter, rows_axis=0), padded_rows)
            case gpt.MaxTextTransform.LOGITS:
                return _pad_rows(self.top(parameter, rows_axis=1).t(), padded_rows)
            case gpt.MaxTextTransform.COPY:
                return self.top(parameter, rows_axis=None)
            case (
                gpt.MaxTextTransform.QKV
                | gpt.MaxTextTransform.QKV_FUSED
                | gpt.MaxTextTransform.QKV_FUSED_BIAS
                | gpt.MaxTextTransform.OUT
                | gpt.MaxTextTransform.FC1
                | gpt.MaxTextTransform.TRANSPOSE
                | gpt.MaxTextTransform.QK_NORM
            ):
                raise ValueError(f"{kind} is not a top-level transform")
            case _:
                assert_never(kind)


def produce(
    reader: LeafReader, chunk_targets: list[Target], transform: Transform
) -> Iterator[tuple[Target, torch.Tensor]]:
    """(target, local value) for every target of one chunk, one kind of parameter at a time.

    Reading kind by kind keeps at most one kind's boxes (e.g. q, k and v of the
    chunk's layers) in memory besides the model.
    """
    by_entry: dict[gpt.Entry, list[Target]] = {}
    for target in chunk_targets:
        by_entry.setdefault(target.parameter.entry, []).append(target)
    for entry, group in by_entry.items():
        assert entry.maxtext is not None
        if entry.stage is not gpt.Stage.LAYER:
            yield from ((target, reader.top_value(target.parameter)) for target in group)
            continue
        parameters = [target.parameter for target in group]
        count = len(entry.maxtext.leaves_for(reader.dims.model, reader.dims.block))
        boxes = [reader.layers(parameters, index) for index in range(count)]
        for target in group:
            key = (int(target.parameter.layer), target.parameter.expert)  # type: ignore[arg-type]
            yield (
                target,
                assemble(entry.maxtext.for_block(reader.dims.block).transform, [box[key] for box in boxes], transform),
            )
