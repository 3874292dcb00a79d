"""The decayed-parameter set against optax with MaxText's adamw_mask, on a MaxText-shaped Flax parameter tree.

The tree is written out here from MaxText's module names (llama2 / qwen3
decoder blocks, models/llama2.py, layers/attentions.py, layers/decoders.py),
independently of bridgec.runtime.models.gpt (the parameter table); so a wrong or missing entry in
that table shows up as a difference. "What optax decays" is measured, not
assumed: one optax.adamw update with zero gradients, lr 1 and weight decay 1
changes exactly the leaves its mask decays.
"""

from __future__ import annotations

import re
from typing import Any

import attrs
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridgec.runtime.decay_mask import DecayMaskError, decay_table, decide, summarize
from bridgec.runtime.models import gpt

LAYERS = 2
LAYER_LEAVES = (
    "pre_self_attention_layer_norm/scale",
    "self_attention/query/kernel",
    "self_attention/key/kernel",
    "self_attention/value/kernel",
    "self_attention/query_norm/scale",
    "self_attention/key_norm/scale",
    "self_attention/out/kernel",
    "post_self_attention_layer_norm/scale",
    "mlp/wi_0/kernel",
    "mlp/wi_1/kernel",
    "mlp/wo/kernel",
)


def maxtext_mask(patterns: list[str]) -> Any:
    """MaxText's get_adamw_mask: True (decay) where no pattern re.search-es the '/'-joined key path; None if empty."""
    if not patterns:
        return None
    compiled = [re.compile(p) for p in patterns]

    def mask_fn(params: Any) -> Any:
        def keep(path: Any, _: Any) -> bool:
            text = jax.tree_util.keystr(path, simple=True, separator="/")
            return not any(p.search(text) for p in compiled)

        return jax.tree_util.tree_map_with_path(keep, params)

    return mask_fn


def maxtext_tree(*, scanned: bool, tied: bool, nnx: bool) -> dict[str, Any]:
    """A qwen3-style MaxText parameter tree (Linen: under "params"; NNX: the module state itself)."""
    rng = np.random.default_rng(0)
    leaf = lambda: jnp.asarray(rng.normal(size=(3,)), dtype=jnp.float32)  # noqa: E731 - shapes do not matter to masks
    decoder: dict[str, Any] = {"decoder_norm": {"scale": leaf()}}
    layer_names = ["layers"] if scanned else [f"layers_{i}" for i in range(LAYERS)]
    for name in layer_names:
        layer: dict[str, Any] = {}
        for path in LAYER_LEAVES:
            module, param = path.rsplit("/", 1)
            node = layer
            for part in module.split("/"):
                node = node.setdefault(part, {})
            node[param] = leaf()
        decoder[name] = layer
    if not tied:
        decoder["logits_dense"] = {"kernel": leaf()}
    model = {"token_embedder": {"embedding": leaf()}, "decoder": decoder}
    return model if nnx else {"params": model}


def optax_decayed(tree: dict[str, Any], patterns: list[str]) -> set[str]:
    """Leaves optax.adamw(mask=MaxText's adamw_mask) decays, measured with one zero-gradient update."""
    tx = optax.adamw(1.0, weight_decay=1.0, mask=maxtext_mask(patterns))
    zeros = jax.tree.map(jnp.zeros_like, tree)
    updates, _ = tx.update(zeros, tx.init(tree), tree)
    flat = jax.tree_util.tree_flatten_with_path(updates)[0]
    return {jax.tree_util.keystr(path, simple=True, separator="/") for path, value in flat if bool(jnp.any(value != 0))}


def mask_decayed(tree: dict[str, Any], patterns: list[str]) -> set[str]:
    """The same from MaxText's mask function directly (fast, for the property test)."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    paths = [jax.tree_util.keystr(path, simple=True, separator="/") for path, _ in flat]
    if not patterns:
        return set(paths)
    return {p for p in paths if not any(re.search(pattern, p) for pattern in patterns)}


def all_leaves(tree: dict[str, Any]) -> set[str]:
    return {
        jax.tree_util.keystr(path, simple=True, separator="/")
        for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def config(*, tied: bool = False, gated: bool = True, learned: bool = False) -> gpt.GPTConfig:
    """A qwen3-style model (RMSNorm, qk norms, no biases)."""
    return gpt.GPTConfig(num_layers=LAYERS, hidden=8, heads=2, groups=2, head_dim=4, ffn=16, vocab=32, seq_length=4,
                         layernorm=False, gated=gated, bias=False, qk_norm=True, tied=tied,
                         learned_positions=learned)  # fmt: skip


def ours_decayed(patterns: list[str], *, scanned: bool, tied: bool, nnx: bool) -> set[str]:
    """MaxText leaves held by the Megatron parameters our table decays."""
    style = "nnx" if nnx else "linen"
    model = config(tied=tied)
    parameters = gpt.parameters(model)
    table = decay_table(parameters, patterns, config=model, scan_layers=scanned, style=style)
    out = set()
    for parameter, decision in zip(parameters, table, strict=True):
        if decision.decays:
            paths = gpt.maxtext_paths(parameter, model, scanned=scanned)
            out.update(p.removeprefix("params/") if nnx else p for p in paths)
    return out


LAYOUTS = [dict(scanned=s, tied=t, nnx=n) for s in (True, False) for t in (True, False) for n in (False, True)]
PATTERN_SETS = [
    [],
    ["norm"],
    [".*norm", "bias"],
    ["token_embedder", "logits_dense"],
    ["^params/decoder/layers"],  # anchored: matches Linen paths only
    ["^decoder/"],  # anchored: matches NNX paths only
    ["layers_1/"],  # one unscanned layer
    ["self_attention/(query|key|value)/kernel"],  # all of linear_qkv
    ["mlp/wi_"],  # all of linear_fc1
]


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()))
@pytest.mark.parametrize("patterns", PATTERN_SETS, ids=lambda p: "|".join(p) or "empty")
def test_decayed_set_is_optax_s(layout: dict[str, bool], patterns: list[str]) -> None:
    tree = maxtext_tree(**layout)
    # Every leaf of the MaxText tree is held by exactly the Megatron parameters we enumerate.
    covered = ours_decayed([], **layout)
    assert covered == all_leaves(tree)
    assert ours_decayed(patterns, **layout) == optax_decayed(tree, patterns)


FRAGMENTS = [
    "norm",
    "scale",
    "kernel",
    "query",
    "key/",
    "value",
    "out/",
    "wi_0",
    "wi_1",
    "wo",
    "mlp",
    "embed",
    "logits",
    "layers_0",
    "layers/",
    "^params",
    "^decoder",
    "self_attention/(query|key|value)",
    "mlp/wi_",
]


@settings(max_examples=150, deadline=None)
@given(
    patterns=st.lists(st.sampled_from(FRAGMENTS), max_size=3),
    scanned=st.booleans(),
    tied=st.booleans(),
    nnx=st.booleans(),
)
def test_any_patterns_agree_with_maxtext_or_are_refused(
    patterns: list[str], scanned: bool, tied: bool, nnx: bool
) -> None:
    tree = maxtext_tree(scanned=scanned, tied=tied, nnx=nnx)
    expected = mask_decayed(tree, patterns)
    try:
        ours = ours_decayed(patterns, scanned=scanned, tied=tied, nnx=nnx)
    except DecayMaskError as error:
        # Refused only when MaxText really decays part of a fused parameter and not the rest.
        fused = re.search(r"fuses the MaxText leaves (.*); the patterns", str(error))
        assert fused is not None
        leaves = {p.removeprefix("params/") if nnx else p for p in fused[1].split(", ")}
        assert 0 < len(leaves & expected) < len(leaves)
        return
    assert ours == expected


def test_splitting_a_fused_parameter_is_an_error_naming_it() -> None:
    model = config()
    qkv = gpt.find(model, "decoder.layers.0.self_attention.linear_qkv.weight")
    with pytest.raises(DecayMaskError, match=r"decoder\.layers\.0\.self_attention\.linear_qkv\.weight fuses"):
        decide(qkv, ["query"], config=model, scan_layers=True, style="linen")
    fc1 = gpt.find(model, "decoder.layers.1.mlp.linear_fc1.weight")
    with pytest.raises(DecayMaskError, match=r"linear_fc1\.weight fuses .*wi_0.*wi_1"):
        decide(fc1, ["wi_0"], config=model, scan_layers=False, style="nnx")


def test_tied_output_copy_is_the_embedding() -> None:
    """With pipeline parallelism the last stage holds a copy of the tied embedding: it decays like the embedding."""
    model = config(tied=True)
    (copy,) = [p for p in gpt.chunk_parameters(model, layers=[1], first=False, last=True) if p.tied_copy]
    decision = decide(copy, ["token_embedder"], config=model, scan_layers=True, style="linen")
    assert decision.paths == ("params/token_embedder/embedding",) and not decision.decays


def test_unmapped_parameter_is_an_error_only_when_patterns_are_given() -> None:
    """A LayerNorm model's per-head q norm bias has no MaxText leaf (gpt3 has no qk norms)."""
    model = attrs.evolve(config(), layernorm=True)
    bias = gpt.find(model, "decoder.layers.0.self_attention.q_layernorm.bias")
    assert decide(bias, [], config=model, scan_layers=True, style="linen").decays  # no patterns: all decay
    with pytest.raises(DecayMaskError, match="q_layernorm.bias has no MaxText path"):
        decide(bias, ["norm"], config=model, scan_layers=True, style="linen")


def test_moe_router_and_experts_have_mixtral_s_paths() -> None:
    """mixtral's MoeBlock_0: the router kernel, and each expert's fused linear_fc1 holding its index of wi_0 and
    wi_1 (one decay setting for both), so patterns decide them like any other leaf."""
    model = attrs.evolve(config(), num_experts=2)
    router = gpt.find(model, "decoder.layers.0.mlp.router.weight")
    fc1 = gpt.find(model, "decoder.layers.1.mlp.experts.1.linear_fc1.weight")
    assert gpt.maxtext_paths(router, model, scanned=True) == ("params/decoder/layers/MoeBlock_0/gate/kernel",)
    assert gpt.maxtext_paths(fc1, model, scanned=False) == (
        "params/decoder/layers_1/MoeBlock_0/wi_0",
        "params/decoder/layers_1/MoeBlock_0/wi_1",
    )
    assert not decide(router, ["gate"], config=model, scan_layers=True, style="nnx").decays
    assert decide(fc1, ["gate"], config=model, scan_layers=True, style="nnx").decays
    with pytest.raises(DecayMaskError, match="wi_0"):
        decide(fc1, ["wi_0"], config=model, scan_layers=True, style="nnx")


def test_learned_positions_have_gpt3_s_path() -> None:
    model = config(tied=True, gated=False, learned=True)
    positions = gpt.find(model, "embedding.position_embeddings.weight")
    assert gpt.maxtext_paths(positions, model, scanned=True) == ("params/decoder/position_embedder/embedding",)
    assert not decide(positions, ["position_embedder"], config=model, scan_layers=True, style="linen").decays


def test_summary_folds_layers() -> None:
    model = config()
    table = decay_table(gpt.parameters(model), ["norm"], config=model, scan_layers=True, style="linen")
    lines = summarize(table)
    assert "decoder.layers.{0..1}.input_layernorm.weight  no decay  (matched 'norm')" in lines
    assert "decoder.layers.{0..1}.mlp.linear_fc1.weight  decay" in lines
    assert "output_layer.weight  decay" in lines
