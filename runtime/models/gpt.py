"""megatron-core's GPTModel: every parameter once, with everything bridgec knows about it.

One :class:`Entry` per kind of parameter (a layer's ``linear_qkv`` weight is one
entry, whatever the layer): its megatron-core name, its global (TP=1) shape as a
function of the model's sizes (:class:`GPTConfig`), how tensor parallelism
splits it, which pipeline chunk holds it, its MaxText leaves and the transform
between them, its weight-decay and initialisation rules, and a slot for its
Hugging Face name. Portable init, the decay mask, Orbax import and export, the
checkpoint architecture check and ``bridgec explain``'s parameter count all
iterate :func:`parameters` (the whole model) or :func:`chunk_parameters` (what
one pipeline chunk holds); tests/runtime/test_inventory.py checks both against a
real GPTModel's ``named_parameters()`` on TP2, PP2 (+ virtual) and EP2 layouts.

Names: a global name uses the global layer index (``decoder.layers.{layer}.``)
and global expert number (``mlp.experts.{expert}.``), so a parameter has one
name in any layout; a local name is what ``named_parameters()`` of a chunk says
(``decoder.layers.{index in the chunk}.``, ``mlp.experts.local_experts.{index on
this expert rank}.``). The local layer spec keeps the two norms as modules of
their own; transformer_engine's fuses them into ``linear_qkv`` and (dense MLPs
only) ``linear_fc1`` under other names, with the same MaxText leaves.

No torch here: the compiler imports this module.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence

import attrs


@attrs.frozen(kw_only=True)
class GPTConfig:
    """The sizes and options that decide which parameters a GPTModel has and their shapes."""

    num_layers: int
    hidden: int
    heads: int
    groups: int
    """Key/value heads (num_query_groups)."""
    head_dim: int
    ffn: int
    """ffn_hidden_size (per branch when gated)."""
    vocab: int
    """megatron's padded vocabulary (the embedding's rows)."""
    seq_length: int
    """Rows of learned position embeddings."""
    layernorm: bool
    """LayerNorm (scale and bias); RMSNorm otherwise (scale only)."""
    gated: bool
    """swiglu/geglu: linear_fc1 holds [gate; up]."""
    bias: bool
    """add_bias_linear."""
    qk_norm: bool
    tied: bool
    """The output layer shares the embedding."""
    learned_positions: bool
    transformer_engine: bool = False
    num_experts: int | None = None
    qkv_bias: bool = False
    """add_qkv_bias: linear_qkv has a bias even without add_bias_linear (Qwen2)."""


class Stage(enum.Enum):
    """Which pipeline chunk holds a parameter."""

    FIRST = "first"
    """The first chunk (pre_process): embeddings."""
    LAYER = "layer"
    """Every chunk, once per transformer layer it holds."""
    LAST = "last"
    """The last chunk (post_process): final norm and output layer."""


class Init(enum.Enum):
    """megatron-core's initial distribution of a parameter (bridgec's portable init draws the same)."""

    NORMAL = "normal"
    """N(0, init_method_std)."""
    SCALED_NORMAL = "scaled_normal"
    """N(0, init_method_std / sqrt(2 x num_layers)): the residual output projections."""
    ONE = "one"
    """Norm scale: 1 (0 when zero-centred, the layer applying 1 + scale)."""
    ZERO = "zero"
    """Bias."""


class Decay(enum.Enum):
    """Weight decay under megatron semantics (biases and 1-D parameters are excluded: runtime.optim.no_decay).

    Under optax semantics the MaxText paths decide instead (runtime.decay_mask).
    """

    DECAY = "decay"
    NO_DECAY = "no_decay"


class MaxTextTransform(enum.Enum):
    """How a parameter's MaxText leaves become its megatron value (runtime.maxtext_layout does the arithmetic)."""

    COPY = "copy"
    """Norm scales: as stored."""
    EMBEDDING = "embedding"
    """[V, E] rows; megatron's padded rows are zeros."""
    LOGITS = "logits"
    """logits_dense [E, V] transposed, padded like the embedding."""
    QKV = "qkv"
    """query [E, H, D], key and value [E, G, D] -> rows grouped per key/value head [q heads..., k, v], transposed."""
    OUT = "out"
    """out [H, D, E] -> [E, H D]."""
    FC1 = "fc1"
    """[wi_0; wi_1] (gated) or wi, transposed."""
    TRANSPOSE = "transpose"
    """wo [F, E] -> [E, F]."""
    QK_NORM = "qk_norm"
    """Per-head norm scales: the RoPE row permutation applies to them too."""
    QKV_FUSED = "qkv_fused"
    """gpt3's qkv_proj kernel [E, 3, H, D] (H = G) -> rows per head [q, k, v], transposed."""
    QKV_FUSED_BIAS = "qkv_fused_bias"
    """gpt3's qkv_proj bias [3, H, D] -> rows per head [q, k, v]."""


@attrs.frozen(kw_only=True)
class Split:
    """Tensor-parallel split: ``tensor x stride`` pieces along ``axis``; rank r holds pieces r, r + tensor, ...

    ``gate_up``: stride 2 when the MLP is gated (linear_fc1 holds [gate; up] and each
    rank keeps its slice of both), else 1.
    """

    axis: int
    gate_up: bool = False

    def stride(self, config: GPTConfig) -> int:
        return 2 if self.gate_up and config.gated else 1


@attrs.frozen(kw_only=True)
class MaxTextLeaf:
    """One leaf of a MaxText decoder checkpoint.

    ``path`` is below ``params/decoder/layers/`` (scanned) or ``params/decoder/layers_{i}/``
    for layer parameters, the whole ``params/...`` path otherwise. ``shape`` is the
    unscanned shape given MaxText's (unpadded) vocabulary; a tensor-parallel rank
    reads ``1/tensor`` of axis ``split_axis``, a whole number of ``split_units``
    (heads, key/value heads or ffn columns).
    """

    path: str
    shape: Callable[[GPTConfig, int], tuple[int, ...]]
    split_axis: int | None = None
    split_units: Callable[[GPTConfig], int] | None = None
    expert_axis: int | None = None
    """MoE leaves stack every expert along this axis (of the unscanned shape); an expert's parameter is one index."""


MAXTEXT_BLOCKS = ("llama2", "mistral", "qwen3", "mixtral", "gemma", "gpt3")
"""MaxText decoder blocks whose checkpoints this table reads and writes. The first five share one tree and
its arithmetic (mistral: llama2's layer with its own RoPE base; qwen3: llama2's names plus per-head q/k norm
scales; mixtral: llama2's attention and norms with an MoE block, ``MoeBlock_0``, for the MLP; gemma: its two
layer norms under other names), so a block is only a naming there; gpt3 (models/gpt3.py) also stores its
attention apart: one fused, biased ``qkv_proj`` (see :class:`MaxText` ``blocks``)."""

MOE_BLOCKS = ("llama2", "mixtral")
"""Blocks whose checkpoints may hold MoE layers: mixtral's, named as llama2's outside ``MoeBlock_0`` (so a
checkpoint is recognised as llama2's, and its MoE leaves say it is mixtral's)."""

RUNTIME_QUERY_SCALING_BLOCKS = ("gpt3",)
"""Blocks whose attention divides the query by sqrt(head_dim) at run time (gpt3.py ``query /= depth_scaling``):
the query kernel is not pre-scaled, so there is nothing to undo and megatron's default softmax scale applies."""


@attrs.frozen(kw_only=True)
class MaxText:
    """A parameter's MaxText leaves (in the order the transform takes them) and the transform."""

    leaves: tuple[MaxTextLeaf, ...]
    transform: MaxTextTransform
    gated_leaves: tuple[MaxTextLeaf, ...] | None = None
    """Other leaves when the MLP is gated (linear_fc1: wi_0 and wi_1 instead of wi)."""
    renamed: tuple[tuple[str, tuple[MaxTextLeaf, ...]], ...] = ()
    """(decoder block, its leaves) where a block names this parameter's leaves differently."""
    stored_apart: tuple[tuple[str, MaxText], ...] = ()
    """(decoder block, its leaves and transform) where a block stores this parameter in other arrays (gpt3's qkv)."""

    def for_block(self, block: str) -> MaxText:
        """This parameter's leaves and transform in ``block``'s checkpoints."""
        for name, other in self.stored_apart:
            if name == block:
                return other
        return self

    def leaves_for(self, config: GPTConfig, block: str = "llama2") -> tuple[MaxTextLeaf, ...]:
        own = self.for_block(block)
        for name, leaves in own.renamed:
            if name == block:
                return leaves
        return own.gated_leaves if config.gated and own.gated_leaves is not None else own.leaves


class HFTransform(enum.Enum):
    """How a parameter's Hugging Face tensors become its megatron value (runtime.hf_layout does the arithmetic)."""

    COPY = "copy"
    """As stored; a split parameter is the same slice of the Hugging Face tensor along the split axis."""
    EMBEDDING = "embedding"
    """[V, E] rows (embed_tokens, lm_head); megatron's padded rows are zeros."""
    QKV = "qkv"
    """q_proj, k_proj, v_proj rows -> rows grouped per key/value head [q heads of the group..., k, v]."""
    FC1 = "fc1"
    """[gate_proj; up_proj] rows (each tensor-parallel rank holds its slice of both)."""


@attrs.frozen(kw_only=True)
class HuggingFace:
    """A parameter's tensors in a Hugging Face ``*ForCausalLM`` state dict (Llama, Mistral, Qwen2, Qwen3, Qwen3-MoE names).

    ``names`` are below ``model.layers.{layer}.`` for layer parameters, whole names
    otherwise, in the order the transform takes them.
    """

    names: tuple[str, ...]
    transform: HFTransform


def _always(config: GPTConfig) -> bool:
    return True


@attrs.frozen(kw_only=True)
class Entry:
    """One kind of parameter."""

    name: str
    """Full name (FIRST, LAST) or the part after ``decoder.layers.{layer}.`` (LAYER); experts say ``{expert}``."""
    stage: Stage
    shape: Callable[[GPTConfig], tuple[int, ...]]
    """Global (TP=1) shape."""
    init: Init
    split: Split | None = None
    """None: every tensor-parallel rank holds the whole parameter."""
    when: Callable[[GPTConfig], bool] = _always
    """Whether a model of this config has the parameter."""
    maxtext: MaxText | None = None
    """None: no counterpart in the MaxText Llama-family decoder."""
    hf: HuggingFace | None = None

    @property
    def decay(self) -> Decay:
        return Decay.NO_DECAY if self.init in (Init.ONE, Init.ZERO) else Decay.DECAY

    @property
    def per_expert(self) -> bool:
        return "{expert}" in self.name


# --------------------------------------------------------------------------------------------
# The table.


def _te(c: GPTConfig) -> bool:
    return c.transformer_engine


def _local(c: GPTConfig) -> bool:
    return not c.transformer_engine


def _dense(c: GPTConfig) -> bool:
    return c.num_experts is None


def _moe(c: GPTConfig) -> bool:
    return c.num_experts is not None


def _fused_mlp_norm(c: GPTConfig) -> bool:
    """transformer_engine fuses the pre-MLP norm into a dense MLP's linear_fc1 (an MoE layer keeps its own)."""
    return c.transformer_engine and c.num_experts is None


def _layer_leaf(
    path: str,
    shape: Callable[[GPTConfig, int], tuple[int, ...]],
    split_axis: int | None = None,
    split_units: Callable[[GPTConfig], int] | None = None,
) -> MaxTextLeaf:
    return MaxTextLeaf(path=path, shape=shape, split_axis=split_axis, split_units=split_units)


def _norm(path: str, gemma_path: str, gpt3_path: str) -> MaxText:
    """A layer norm's scale: llama2's name (mistral's, qwen3's), gemma's (models/gemma.py) and gpt3's."""
    return MaxText(
        leaves=(_layer_leaf(path, lambda c, v: (c.hidden,)),),
        transform=MaxTextTransform.COPY,
        renamed=(
            ("gemma", (_layer_leaf(gemma_path, lambda c, v: (c.hidden,)),)),
            ("gpt3", (_layer_leaf(gpt3_path, lambda c, v: (c.hidden,)),)),
        ),
    )


def _vector_leaf(path: str, split_units: Callable[[GPTConfig], int] | None = None) -> MaxText:
    """A gpt3 bias (or norm bias) [E] or [F], copied as stored; ``split_units``: split like the ffn columns."""
    size = (lambda c, v: (c.ffn,)) if split_units is not None else (lambda c, v: (c.hidden,))
    return MaxText(
        leaves=(_layer_leaf(path, size, 0 if split_units is not None else None, split_units),),
        transform=MaxTextTransform.COPY,
    )


_ATTENTION_NORM = _norm(
    "pre_self_attention_layer_norm/scale", "pre_self_attention_norm/scale", "pre_self_attention_norm/scale"
)
_MLP_NORM = _norm("post_self_attention_layer_norm/scale", "pre_ffw_norm/scale", "mlp/mlp_layer_norm/scale")
# gpt3 only (the other blocks have neither biases nor LayerNorm: runtime.maxtext_layout.check_model refuses them).
_ATTENTION_NORM_BIAS = _vector_leaf("pre_self_attention_norm/bias")
_MLP_NORM_BIAS = _vector_leaf("mlp/mlp_layer_norm/bias")
_QKV = MaxText(
    leaves=(
        _layer_leaf("self_attention/query/kernel", lambda c, v: (c.hidden, c.heads, c.head_dim), 1, lambda c: c.heads),
        _layer_leaf("self_attention/key/kernel", lambda c, v: (c.hidden, c.groups, c.head_dim), 1, lambda c: c.groups),
        _layer_leaf(
            "self_attention/value/kernel", lambda c, v: (c.hidden, c.groups, c.head_dim), 1, lambda c: c.groups
        ),
    ),
    transform=MaxTextTransform.QKV,
    stored_apart=(
        (
            "gpt3",
            MaxText(
                leaves=(
                    _layer_leaf(
                        "self_attention/qkv_proj/kernel",
                        lambda c, v: (c.hidden, 3, c.heads, c.head_dim),
                        2,
                        lambda c: c.heads,
                    ),
                ),
                transform=MaxTextTransform.QKV_FUSED,
            ),
        ),
    ),
)
_QKV_BIAS = MaxText(
    leaves=(_layer_leaf("self_attention/qkv_proj/bias", lambda c, v: (3, c.heads, c.head_dim), 1, lambda c: c.heads),),
    transform=MaxTextTransform.QKV_FUSED_BIAS,
)
_OUT = MaxText(
    leaves=(
        _layer_leaf("self_attention/out/kernel", lambda c, v: (c.heads, c.head_dim, c.hidden), 0, lambda c: c.heads),
    ),
    transform=MaxTextTransform.OUT,
)


def _qk_norm(which: str) -> MaxText:
    return MaxText(
        leaves=(_layer_leaf(f"self_attention/{which}_norm/scale", lambda c, v: (c.head_dim,)),),
        transform=MaxTextTransform.QK_NORM,
    )


_HF_ATTENTION_NORM = HuggingFace(names=("input_layernorm.weight",), transform=HFTransform.COPY)
_HF_MLP_NORM = HuggingFace(names=("post_attention_layernorm.weight",), transform=HFTransform.COPY)

_FC1 = MaxText(
    leaves=(_layer_leaf("mlp/wi/kernel", lambda c, v: (c.hidden, c.ffn), 1, lambda c: c.ffn),),
    gated_leaves=(
        _layer_leaf("mlp/wi_0/kernel", lambda c, v: (c.hidden, c.ffn), 1, lambda c: c.ffn),
        _layer_leaf("mlp/wi_1/kernel", lambda c, v: (c.hidden, c.ffn), 1, lambda c: c.ffn),
    ),
    transform=MaxTextTransform.FC1,
)
_FC2 = MaxText(
    leaves=(_layer_leaf("mlp/wo/kernel", lambda c, v: (c.ffn, c.hidden), 0, lambda c: c.ffn),),
    transform=MaxTextTransform.TRANSPOSE,
)


# mixtral's MoE block (layers/moe.py RoutedMoE, as ``MoeBlock_0``): the router is a DenseGeneral kernel
# [E, X]; the experts' weights are bare arrays stacking every expert first: wi_0, wi_1 [X, E, F], wo [X, F, E].
_ROUTER = MaxText(
    leaves=(_layer_leaf("MoeBlock_0/gate/kernel", lambda c, v: (c.hidden, c.num_experts or 0)),),
    transform=MaxTextTransform.TRANSPOSE,
)
_EXPERT_FC1 = MaxText(
    leaves=tuple(
        MaxTextLeaf(
            path=f"MoeBlock_0/{name}",
            shape=lambda c, v: (c.num_experts or 0, c.hidden, c.ffn),
            split_axis=2,
            split_units=lambda c: c.ffn,
            expert_axis=0,
        )
        for name in ("wi_0", "wi_1")
    ),
    transform=MaxTextTransform.FC1,
)
_EXPERT_FC2 = MaxText(
    leaves=(
        MaxTextLeaf(
            path="MoeBlock_0/wo",
            shape=lambda c, v: (c.num_experts or 0, c.ffn, c.hidden),
            split_axis=1,
            split_units=lambda c: c.ffn,
            expert_axis=0,
        ),
    ),
    transform=MaxTextTransform.TRANSPOSE,
)


def _vector(size: Callable[[GPTConfig], int]) -> Callable[[GPTConfig], tuple[int, ...]]:
    return lambda c: (size(c),)


def _hidden(c: GPTConfig) -> int:
    return c.hidden


def _head_dim(c: GPTConfig) -> int:
    return c.head_dim


def _qkv_rows(c: GPTConfig) -> int:
    return (c.heads + 2 * c.groups) * c.head_dim


def _fc1_rows(c: GPTConfig) -> int:
    return c.ffn * (2 if c.gated else 1)


def _both(*predicates: Callable[[GPTConfig], bool]) -> Callable[[GPTConfig], bool]:
    return lambda c: all(predicate(c) for predicate in predicates)


def _layernorm(c: GPTConfig) -> bool:
    return c.layernorm


def _bias(c: GPTConfig) -> bool:
    return c.bias


def _qk(c: GPTConfig) -> bool:
    return c.qk_norm


_EXPERT = "mlp.experts.{expert}."

ENTRIES: tuple[Entry, ...] = (
    # First chunk.
    Entry(
        name="embedding.word_embeddings.weight",
        stage=Stage.FIRST,
        shape=lambda c: (c.vocab, c.hidden),
        init=Init.NORMAL,
        split=Split(axis=0),
        maxtext=MaxText(
            leaves=(MaxTextLeaf(path="params/token_embedder/embedding", shape=lambda c, v: (v, c.hidden)),),
            transform=MaxTextTransform.EMBEDDING,
        ),
        hf=HuggingFace(names=("model.embed_tokens.weight",), transform=HFTransform.EMBEDDING),
    ),
    Entry(
        name="embedding.position_embeddings.weight",
        stage=Stage.FIRST,
        shape=lambda c: (c.seq_length, c.hidden),
        init=Init.NORMAL,
        when=lambda c: c.learned_positions,
        maxtext=MaxText(  # gpt3: trainable_position_size rows, which must be the model's seq_length
            leaves=(
                MaxTextLeaf(
                    path="params/decoder/position_embedder/embedding", shape=lambda c, v: (c.seq_length, c.hidden)
                ),
            ),
            transform=MaxTextTransform.COPY,
        ),
    ),
    # Each layer: attention.
    Entry(
        name="input_layernorm.weight",
        stage=Stage.LAYER,
        shape=_vector(_hidden),
        init=Init.ONE,
        when=_local,
        maxtext=_ATTENTION_NORM,
        hf=_HF_ATTENTION_NORM,
    ),
    Entry(
        name="input_layernorm.bias",
        stage=Stage.LAYER,
        shape=_vector(_hidden),
        init=Init.ZERO,
        when=_both(_local, _layernorm),
        maxtext=_ATTENTION_NORM_BIAS,
    ),
    Entry(
        name="self_attention.linear_qkv.layer_norm_weight",
        stage=Stage.LAYER,
        shape=_vector(_hidden),
        init=Init.ONE,
        when=_te,
        maxtext=_ATTENTION_NORM,
        hf=_HF_ATTENTION_NORM,
    ),
    Entry(
        name="self_attention.linear_qkv.layer_norm_bias",
        stage=Stage.LAYER,
        shape=_vector(_hidden),
        init=Init.ZERO,
        when=_both(_te, _layernorm),
        maxtext=_ATTENTION_NORM_BIAS,
    ),
    Entry(
        name="self_attention.linear_proj.weight",
        stage=Stage.LAYER,
        shape=lambda c: (c.hidden, c.heads * c.head_dim),
        init=Init.SCALED_NORMAL,
        split=Split(axis=1),
        maxtext=_OUT,
        hf=HuggingFace(names=("self_attn.o_proj.weight",), transform=HFTransform.COPY),
    ),
    Entry(
        name="self_attention.linear_proj.bias",
        stage=Stage.LAYER,
        shape=_vector(_hidden),
        init=Init.ZERO,
        when=_bias,
        maxtext=_vector_leaf("self_attention/out/bias"),
    ),
    Entry(
        name="self_attention.linear_qkv.weight",
        stage=Stage.LAYER,
        shape=lambda c: (_qkv_rows(c), c.hidden),
        init=Init.NORMAL,
        split=Split(axis=0),
        maxtext=_QKV,
        hf=HuggingFace(
            names=("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
            transform=HFTransform.QKV,
        ),
    ),
    Entry(
        name="self_attention.linear_qkv.bias",
        stage=Stage.LAYER,
        shape=_vector(_qkv_rows),
        init=Init.ZERO,
        split=Split(axis=0),
        when=lambda c: c.bias or c.qkv_bias,
        maxtext=_QKV_BIAS,
        hf=HuggingFace(
            names=("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"), transform=HFTransform.QKV
        ),
    ),
    Entry(
        name="self_attention.q_layernorm.weight",
        stage=Stage.LAYER,
        shape=_vector(_head_dim),
        init=Init.ONE,
        when=_qk,
        maxtext=_qk_norm("query"),
        hf=HuggingFace(names=("self_attn.q_norm.weight",), transform=HFTransform.COPY),
    ),
    Entry(
        name="self_attention.q_layernorm.bias",
        stage=Stage.LAYER,
        shape=_vector(_head_dim),
        init=Init.ZERO,
        when=_both(_qk, _layernorm),
    ),
    Entry(
        name="self_attention.k_layernorm.weight",
        stage=Stage.LAYER,
        shape=_vector(_head_dim),
        init=Init.ONE,
        when=_qk,
        maxtext=_qk_norm("key"),
        hf=HuggingFace(names=("self_attn.k_norm.weight",), transform=HFTransform.COPY),
    ),
    Entry(
        name="self_attention.k_layernorm.bias",
        stage=Stage.LAYER,
        shape=_vector(_head_dim),
        init=Init.ZERO,
        when=_both(_qk, _layernorm),
    ),
    # Each layer: MLP.
    Entry(
        name="pre_mlp_layernorm.weight",
        stage=Stage.LAYER,
        shape=_vector(_hidden),
        init=Init.ONE,
        when=lambda c: not _fused_mlp_norm(c),
        maxtext=_MLP_NORM,
        hf=_HF_MLP_NORM,
    ),
    Entry(
        name="pre_mlp_layernorm.bias",
        stage=Stage.LAYER,
        shape=_vector(_hidden),
        init=Init.ZERO,
        when=lambda c: not _fused_mlp_norm(c) and c.layernorm,
        maxtext=_MLP_NORM_BIAS,
    ),
    Entry(
        name="mlp.linear_fc1.layer_norm_weight",
        stage=Stage.LAYER,
        shape=_vector(_hidden),
        init=Init.ONE,
        when=_fused_mlp_norm,
        maxtext=_MLP_NORM,
        hf=_HF_MLP_NORM,
    ),
    Entry(
        name="mlp.linear_fc1.layer_norm_bias",
        stage=Stage.LAYER,
        shape=_vector(_hidden),
        init=Init.ZERO,
        when=_both(_fused_mlp_norm, _layernorm),
        maxtext=_MLP_NORM_BIAS,
    ),
    Entry(
        name="mlp.linear_fc1.weight",
        stage=Stage.LAYER,
        shape=lambda c: (_fc1_rows(c), c.hidden),
        init=Init.NORMAL,
        split=Split(axis=0, gate_up=True),
        when=_dense,
        maxtext=_FC1,
        hf=HuggingFace(names=("mlp.gate_proj.weight", "mlp.up_proj.weight"), transform=HFTransform.FC1),
    ),
    Entry(
        name="mlp.linear_fc1.bias",
        stage=Stage.LAYER,
        shape=_vector(_fc1_rows),
        init=Init.ZERO,
        split=Split(axis=0, gate_up=True),
        when=_both(_dense, _bias),
        maxtext=_vector_leaf("mlp/wi/bias", split_units=lambda c: c.ffn),
    ),
    Entry(
        name="mlp.linear_fc2.weight",
        stage=Stage.LAYER,
        shape=lambda c: (c.hidden, c.ffn),
        init=Init.SCALED_NORMAL,
        split=Split(axis=1),
        when=_dense,
        maxtext=_FC2,
        hf=HuggingFace(names=("mlp.down_proj.weight",), transform=HFTransform.COPY),
    ),
    Entry(
        name="mlp.linear_fc2.bias",
        stage=Stage.LAYER,
        shape=_vector(_hidden),
        init=Init.ZERO,
        when=_both(_dense, _bias),
        maxtext=_vector_leaf("mlp/wo/bias"),
    ),
    # Each layer: MoE (router, then every expert's two linears).
    Entry(
        name="mlp.router.weight",
        stage=Stage.LAYER,
        shape=lambda c: (c.num_experts or 0, c.hidden),
        init=Init.NORMAL,
        when=_moe,
        maxtext=_ROUTER,
        hf=HuggingFace(names=("mlp.gate.weight",), transform=HFTransform.COPY),
    ),
    Entry(
        name=_EXPERT + "linear_fc1.weight",
        stage=Stage.LAYER,
        shape=lambda c: (_fc1_rows(c), c.hidden),
        init=Init.NORMAL,
        split=Split(axis=0, gate_up=True),
        when=_moe,
        maxtext=_EXPERT_FC1,
        hf=HuggingFace(
            names=("mlp.experts.{expert}.gate_proj.weight", "mlp.experts.{expert}.up_proj.weight"),
            transform=HFTransform.FC1,
        ),
    ),
    Entry(
        name=_EXPERT + "linear_fc1.bias",
        stage=Stage.LAYER,
        shape=_vector(_fc1_rows),
        init=Init.ZERO,
        split=Split(axis=0, gate_up=True),
        when=_both(_moe, _bias),
    ),
    Entry(
        name=_EXPERT + "linear_fc2.weight",
        stage=Stage.LAYER,
        shape=lambda c: (c.hidden, c.ffn),
        init=Init.SCALED_NORMAL,
        split=Split(axis=1),
        when=_moe,
        maxtext=_EXPERT_FC2,
        hf=HuggingFace(names=("mlp.experts.{expert}.down_proj.weight",), transform=HFTransform.COPY),
    ),
    Entry(
        name=_EXPERT + "linear_fc2.bias",
        stage=Stage.LAYER,
        shape=_vector(_hidden),
        init=Init.ZERO,
        when=_both(_moe, _bias),
    ),
    # Last chunk.
    Entry(
        name="decoder.final_layernorm.weight",
        stage=Stage.LAST,
        shape=_vector(_hidden),
        init=Init.ONE,
        maxtext=MaxText(
            leaves=(MaxTextLeaf(path="params/decoder/decoder_norm/scale", shape=lambda c, v: (c.hidden,)),),
            transform=MaxTextTransform.COPY,
        ),
        hf=HuggingFace(names=("model.norm.weight",), transform=HFTransform.COPY),
    ),
    Entry(
        name="decoder.final_layernorm.bias",
        stage=Stage.LAST,
        shape=_vector(_hidden),
        init=Init.ZERO,
        when=_layernorm,
        maxtext=MaxText(
            leaves=(MaxTextLeaf(path="params/decoder/decoder_norm/bias", shape=lambda c, v: (c.hidden,)),),
            transform=MaxTextTransform.COPY,
        ),
    ),
    Entry(
        name="output_layer.weight",
        stage=Stage.LAST,
        shape=lambda c: (c.vocab, c.hidden),
        init=Init.NORMAL,
        split=Split(axis=0),
        when=lambda c: not c.tied,
        maxtext=MaxText(
            leaves=(MaxTextLeaf(path="params/decoder/logits_dense/kernel", shape=lambda c, v: (c.hidden, v)),),
            transform=MaxTextTransform.LOGITS,
        ),
        hf=HuggingFace(names=("lm_head.weight",), transform=HFTransform.EMBEDDING),
    ),
)
"""Every kind of parameter, in megatron-core's ``named_parameters()`` order."""

EMBEDDING = ENTRIES[0]
"""The word embedding (a tied output layer's copy holds it)."""
OUTPUT = ENTRIES[-1]
"""The untied output layer (``bridgec explain`` counts it apart from the final norm)."""
QKV = tuple(entry for entry in ENTRIES if entry.name.startswith("self_attention.linear_qkv.") and entry.split)
"""The fused query/key/value weight and bias: rows grouped per key/value head, ``[q heads of the group..., k, v]``."""
_TIED_OUTPUT = attrs.evolve(OUTPUT, when=lambda c: c.tied, maxtext=EMBEDDING.maxtext, hf=EMBEDDING.hf)
"""A tied model's output layer on a last chunk that is not also the first: megatron-core gives it a weight
of its own, kept equal to the embedding (it is the embedding, under the embedding's name)."""


# --------------------------------------------------------------------------------------------
# Concrete parameters.


@attrs.frozen(kw_only=True)
class Parameter:
    """One parameter of a model, or of one chunk of it on one rank."""

    name: str
    """Global name (global layer and expert numbers; a tied output copy is named as the embedding it holds)."""
    local_name: str
    """The name in the chunk's ``named_parameters()``."""
    entry: Entry
    shape: tuple[int, ...]
    """Global (TP=1) shape."""
    local_shape: tuple[int, ...]
    """This tensor-parallel rank's shape."""
    split: Split | None
    stride: int
    """The split's stride for this config (1 when not split)."""
    layer: int | None
    """Global layer index (None outside the layers)."""
    expert: int | None = None
    """Global expert number."""
    tied_copy: bool = False
    """The last chunk's copy of a tied embedding."""


LAYER_PREFIX = "decoder.layers."


def _name(entry: Entry, layer: int | None, expert: int | None, *, local: bool) -> str:
    if entry.stage is not Stage.LAYER:
        return entry.name
    tail = entry.name
    if expert is not None:
        tail = tail.replace("experts.{expert}.", f"experts.local_experts.{expert}." if local else f"experts.{expert}.")
    return f"{LAYER_PREFIX}{layer}.{tail}"


def _parameter(
    entry: Entry,
    config: GPTConfig,
    *,
    tensor: int,
    layer: int | None = None,
    local_layer: int | None = None,
    expert: int | None = None,
    local_expert: int | None = None,
    tied_copy: bool = False,
) -> Parameter:
    shape = entry.shape(config)
    local_shape = list(shape)
    if entry.split is not None:
        local_shape[entry.split.axis] //= tensor
    global_entry = EMBEDDING if tied_copy else entry
    return Parameter(
        name=_name(global_entry, layer, expert, local=False),
        local_name=_name(entry, local_layer, local_expert, local=True),
        entry=entry,
        shape=shape,
        local_shape=tuple(local_shape),
        split=entry.split,
        stride=entry.split.stride(config) if entry.split is not None else 1,
        layer=layer,
        expert=expert,
        tied_copy=tied_copy,
    )


def chunk_parameters(
    config: GPTConfig,
    *,
    layers: Sequence[int],
    first: bool,
    last: bool,
    tensor: int = 1,
    expert_parallel: int = 1,
    expert_rank: int = 0,
) -> list[Parameter]:
    """The parameters of one model chunk on one rank, in ``named_parameters()`` order.

    ``layers`` are the global indices of the chunk's layers (its local layer i is
    ``layers[i]``); ``first``/``last`` say whether it is the first/last chunk
    (pre_process/post_process). An expert-parallel rank r holds experts
    ``r x local .. (r + 1) x local - 1`` (local = num_experts / expert_parallel).
    """
    found: list[Parameter] = []
    local_experts = (config.num_experts or 0) // expert_parallel
    for entry in ENTRIES:
        if not entry.when(config):
            continue
        if entry.stage is Stage.FIRST and first:
            found.append(_parameter(entry, config, tensor=tensor))
        elif entry.stage is Stage.LAST and last:
            found.append(_parameter(entry, config, tensor=tensor))
    layer_entries = [entry for entry in ENTRIES if entry.stage is Stage.LAYER and entry.when(config)]
    per_layer: list[Parameter] = []
    for local_layer, layer in enumerate(layers):
        for entry in layer_entries:
            if not entry.per_expert:
                per_layer.append(_parameter(entry, config, tensor=tensor, layer=layer, local_layer=local_layer))
                continue
            for local_expert in range(local_experts):
                per_layer.append(
                    _parameter(
                        entry,
                        config,
                        tensor=tensor,
                        layer=layer,
                        local_layer=local_layer,
                        expert=expert_rank * local_experts + local_expert,
                        local_expert=local_expert,
                    )
                )
    firsts = [p for p in found if p.entry.stage is Stage.FIRST]
    lasts = [p for p in found if p.entry.stage is Stage.LAST]
    if last and not first and _TIED_OUTPUT.when(config):
        lasts.append(_parameter(_TIED_OUTPUT, config, tensor=tensor, tied_copy=True))
    # megatron-core's order: embedding, decoder (layers, final norm), output layer. Per-expert entries of a
    # layer are listed after the router, expert by expert.
    return firsts + _experts_grouped(per_layer) + lasts


def _experts_grouped(per_layer: list[Parameter]) -> list[Parameter]:
    """Order a layer's expert parameters expert by expert (SequentialMLP's local_experts), keeping the rest in place."""
    ordered: list[Parameter] = []
    pending: list[Parameter] = []
    for parameter in per_layer:
        if parameter.expert is None:
            ordered += sorted(pending, key=lambda p: p.expert or 0)
            pending = []
            ordered.append(parameter)
        else:
            pending.append(parameter)
    return ordered + sorted(pending, key=lambda p: p.expert or 0)


def parameters(config: GPTConfig) -> list[Parameter]:
    """Every parameter of the whole model (one rank holding everything), by global name."""
    return chunk_parameters(config, layers=range(config.num_layers), first=True, last=True)


def stage_layers(
    config: GPTConfig, *, pipeline: int, virtual: int | None, pipeline_rank: int, virtual_stage: int | None
) -> range:
    """Global layer indices of one chunk: chunk v of pipeline rank p holds virtual stage ``v x pipeline + p``.

    Layers are spread evenly (megatron-core's ``get_transformer_layer_offset``
    without an uneven first or last stage): ``num_layers / (pipeline x virtual)`` each.
    """
    chunks = pipeline * (virtual or 1)
    per_chunk = config.num_layers // chunks
    stage = (virtual_stage or 0) * pipeline + pipeline_rank
    return range(stage * per_chunk, (stage + 1) * per_chunk)


def rank_parameters(
    config: GPTConfig,
    *,
    tensor: int = 1,
    pipeline: int = 1,
    virtual: int | None = None,
    expert: int = 1,
    pipeline_rank: int = 0,
    expert_rank: int = 0,
) -> list[list[Parameter]]:
    """The parameters of each chunk a rank holds (one list per virtual pipeline stage)."""
    chunks = []
    for stage in range(virtual or 1):
        virtual_stage = stage if virtual else None
        chunks.append(
            chunk_parameters(
                config,
                layers=stage_layers(
                    config, pipeline=pipeline, virtual=virtual, pipeline_rank=pipeline_rank, virtual_stage=virtual_stage
                ),
                first=pipeline_rank == 0 and stage == 0,
                last=pipeline_rank == pipeline - 1 and stage == (virtual or 1) - 1,
                tensor=tensor,
                expert_parallel=expert,
                expert_rank=expert_rank,
            )
        )
    return chunks


# --------------------------------------------------------------------------------------------
# Global names.

_LAYER_NAME = re.compile(r"^decoder\.layers\.(?P<layer>\d+)\.(?P<tail>.+)$")


def find(config: GPTConfig, name: str) -> Parameter:
    """The whole model's parameter of this global name; KeyError naming it when the model has none."""
    match = _LAYER_NAME.match(name)
    layers = [int(match["layer"])] if match else []
    if match and not 0 <= layers[0] < config.num_layers:
        raise KeyError(f"{name}: the model has {config.num_layers} layers")
    for parameter in chunk_parameters(config, layers=layers, first=not match, last=not match):
        if parameter.name == name:
            return parameter
    raise KeyError(f"{name}: not a parameter of this GPT model")


def maxtext_paths(parameter: Parameter, config: GPTConfig, *, scanned: bool, block: str = "llama2") -> tuple[str, ...]:
    """The MaxText key paths (``params/...``) of the leaves this parameter holds; KeyError when it has none.

    ``scanned`` (MaxText ``scan_layers``): layers share one stacked leaf under
    ``params/decoder/layers/``; otherwise each layer has ``params/decoder/layers_{i}/``.
    ``block``: MaxText's decoder_block (one of :data:`MAXTEXT_BLOCKS`).
    """
    if parameter.entry.maxtext is None:
        raise KeyError(f"{parameter.name}: no MaxText counterpart in the Llama-family layout")
    leaves = parameter.entry.maxtext.leaves_for(config, block)
    if parameter.layer is None:
        return tuple(leaf.path for leaf in leaves)
    layers = "params/decoder/layers" if scanned else f"params/decoder/layers_{parameter.layer}"
    return tuple(f"{layers}/{leaf.path}" for leaf in leaves)


def layer_template(name: str) -> tuple[str, int | None]:
    """``decoder.layers.{}.<tail>`` and the layer index of a global name (the name itself and None outside layers)."""
    match = _LAYER_NAME.match(name)
    if match is None:
        return name, None
    return LAYER_PREFIX + "{}." + match["tail"], int(match["layer"])


HF_LAYER_PREFIX = "model.layers."


def hf_names(parameter: Parameter) -> tuple[str, ...]:
    """The Hugging Face tensor names this parameter holds; KeyError when it has no Hugging Face counterpart."""
    hf = parameter.entry.hf
    if hf is None:
        raise KeyError(f"{parameter.name}: no Hugging Face counterpart in the Llama/Qwen/Mistral layout")
    if parameter.layer is None:
        return hf.names
    names = (name.replace("{expert}", str(parameter.expert)) for name in hf.names)
    return tuple(f"{HF_LAYER_PREFIX}{parameter.layer}.{name}" for name in names)
