"""A tiny MaxText-layout Llama in Flax linen, and the Orbax checkpoints the import tests read.

The model mirrors MaxText's llama2 decoder block (layers/decoders.py,
models/llama2.py, layers/attentions.py, layers/embeddings.py) in parameter
names, shapes and arithmetic:

* ``token_embedder/embedding`` [V, E];
* ``decoder/layers/...`` stacked by ``nn.scan`` with the layer axis at
  ``param_scan_axis`` (MaxText's default 1), or ``decoder/layers_{i}/...``;
* per layer ``pre_self_attention_layer_norm/scale``, ``self_attention/{query,
  key,value}/kernel`` [E, heads, D], ``self_attention/out/kernel`` [H, D, E],
  ``post_self_attention_layer_norm/scale``, ``mlp/{wi_0,wi_1}/kernel`` [E, F],
  ``mlp/wo/kernel`` [F, E];
* ``decoder/decoder_norm/scale`` and ``decoder/logits_dense/kernel`` [E, V], or
  logits through the embedding (``logits_via_embedding``);
* the query kernel is pre-scaled by 1/sqrt(D): attention does not scale again;
* RoPE: MaxText's default rotate-half (``RotaryEmbedding``), or the llama3.1
  interleaved-pairs variant with its frequency scaling (``LLaMARotaryEmbedding``).

Run as a script it writes the test cases (checkpoints, reference logits and
losses) into a folder; the tests run it once per session in a subprocess so that
the torch process stays free of JAX, and so that XLA can be given two host
devices for a sharded save. ``restore`` mode reads a checkpoint back the way
MaxText's ``load_parameters_path`` does (checkpointing.load_params_from_path).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

CASE_CONFIG = "case.json"


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 128
    emb_dim: int = 64
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    mlp_dim: int = 96
    num_layers: int = 4
    epsilon: float = 1e-5
    rope_theta: float = 10000.0
    rope_type: str = "default"  # or "llama3.1"
    tied: bool = False
    normalize_embedding_logits: bool = False
    scanned: bool = True
    param_scan_axis: int = 1
    block: str = "llama2"  # MaxText decoder_block: llama2, mistral and qwen3 share names and maths; gemma
    qk_norm: bool = False  # use_qk_norm (qwen3): per-head RMSNorm of q and k before RoPE, queries scaled at run time
    activation: str = "silu"  # mlp_activations[0]: "silu" (SwiGLU) or "gelu" (tanh GeGLU, gemma)
    dtype: str = "float32"  # MaxText's dtype: activations and matmuls; the weights stay float32 (weight_dtype)
    trainable_position_size: int = -1  # gpt3: learned positions (position_embedder) instead of RoPE
    num_experts: int = 0  # mixtral: the MLP is MaxText's MoE block (MoeBlock_0) with this many experts
    experts_per_token: int = 2  # num_experts_per_tok


# --------------------------------------------------------------------------------------------
# The model (imports JAX lazily so the torch test process can import the config alone).


def _model(config: LlamaConfig) -> Any:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    def cast(x: Any) -> Any:
        """To MaxText's dtype: float32 weights are cast where they are used (MaxText's dtype vs weight_dtype)."""
        return x if config.dtype == "float32" else jnp.asarray(x, jnp.dtype(config.dtype))

    gpt3 = config.block == "gpt3"

    def dense_general(features: tuple[int, ...], in_axes: int, name: str) -> Any:
        class DenseGeneral(nn.Module):
            @nn.compact
            def __call__(self, x: Any) -> Any:
                in_shape = x.shape[-in_axes:]
                kernel = self.param("kernel", nn.initializers.normal(0.02), (*in_shape, *features))
                contract = tuple(range(x.ndim - in_axes, x.ndim))
                y = jnp.tensordot(cast(x), cast(kernel), axes=(contract, tuple(range(in_axes))))
                if gpt3:  # gpt3's DenseGenerals have biases of the output's shape (linears.py use_bias)
                    y = y + cast(self.param("bias", nn.initializers.zeros, features))
                return y

        return DenseGeneral(name=name)

    class LayerNorm(nn.Module):
        """gpt3.py Gpt3LayerNorm: (x - mean) * rsqrt(var + eps) * (scale + 1) + bias (the scale is zero-centred)."""

        @nn.compact
        def __call__(self, x: Any) -> Any:
            scale = self.param("scale", nn.initializers.zeros, (x.shape[-1],))
            bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
            mean = jnp.mean(x, axis=-1, keepdims=True)
            var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
            return (x - mean) * jax.lax.rsqrt(var + config.epsilon) * (cast(scale) + 1) + cast(bias)

    class RMSNorm(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            # MaxText's RMSNorm multiplies by the scale as stored (scale_offset 0), gemma's included.
            scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
            x32 = x.astype(jnp.float32)
            y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + config.epsilon)
            # Normalised in float32, then scaled in MaxText's dtype (normalizations.py RMSNorm).
            return cast(y) * cast(scale)

    def rope_default(x: Any, positions: Any) -> Any:
        dim = x.shape[-1]
        fraction = 2 * jnp.arange(dim // 2) / dim
        timescale = config.rope_theta**fraction
        angle = positions[:, :, None, None] / timescale
        sin, cos = jnp.sin(angle), jnp.cos(angle)
        x1, x2 = jnp.split(x, 2, axis=-1)
        return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)

    def llama31_frequencies(dim: int) -> Any:
        # MaxText LLaMARotaryEmbedding._apply_scaling_factor (scale 8, low 1, high 4, context 8192).
        fraction = 2 * jnp.arange(dim // 2) / dim
        freq = 1.0 / (config.rope_theta**fraction)
        wavelen = 2 * jnp.pi / freq
        smooth = (8192 / wavelen - 1.0) / (4.0 - 1.0)
        medium = (1 - smooth) * freq / 8 + smooth * freq
        scaled = jnp.where(wavelen > 8192, freq / 8, medium)
        return jnp.where(wavelen < 8192 / 4, freq, scaled)

    def rope_llama31(x: Any, positions: Any) -> Any:
        freq = llama31_frequencies(x.shape[-1])
        angle = positions[:, :, None, None] * freq
        sin, cos = jnp.sin(angle), jnp.cos(angle)
        even, odd = x[..., 0::2], x[..., 1::2]
        out_even = even * cos - odd * sin
        out_odd = odd * cos + even * sin
        return jnp.stack([out_even, out_odd], axis=-1).reshape(x.shape)

    rope = rope_default if config.rope_type == "default" else rope_llama31

    class Attention(nn.Module):
        @nn.compact
        def __call__(self, x: Any, positions: Any) -> Any:
            h, g, d = config.num_heads, config.num_kv_heads, config.head_dim
            batch, seq = x.shape[:2]
            if gpt3:
                # gpt3.py: one fused qkv_proj [E, 3, H, D] (MHA), no RoPE, the query divided by sqrt(D) here.
                qkv = dense_general((3, h, d), 1, "qkv_proj")(x)
                q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
                q = (q / jnp.sqrt(d)).reshape(batch, seq, g, h // g, d)
                scores = jnp.einsum("bsgrd,btgd->bgrst", q, k).astype(jnp.float32)
                causal = jnp.tril(jnp.ones((seq, seq), dtype=bool))
                probs = cast(jax.nn.softmax(jnp.where(causal, scores, jnp.finfo(jnp.float32).min), axis=-1))
                out = jnp.einsum("bgrst,btgd->bsgrd", probs, v).reshape(batch, seq, h, d)
                return dense_general((config.emb_dim,), 2, "out")(out)
            q = dense_general((h, d), 1, "query")(x)
            k = dense_general((g, d), 1, "key")(x)
            v = dense_general((g, d), 1, "value")(x)
            if config.qk_norm:
                q, k = RMSNorm(name="query_norm")(q), RMSNorm(name="key_norm")(k)
            q, k = cast(rope(q, positions)), cast(rope(k, positions))
            q = q.reshape(batch, seq, g, h // g, d)
            if config.qk_norm:
                # qwen3 passes query_pre_attn_scalar = head_dim ** -0.5: attention scales the query at run time.
                q = q * d**-0.5
            # Otherwise the query kernel carries 1/sqrt(d): no scaling here (MaxText's depth_scaling).
            scores = jnp.einsum("bsgrd,btgd->bgrst", q, k).astype(jnp.float32)
            causal = jnp.tril(jnp.ones((seq, seq), dtype=bool))
            scores = jnp.where(causal, scores, jnp.finfo(jnp.float32).min)
            probs = cast(jax.nn.softmax(scores, axis=-1))
            out = jnp.einsum("bgrst,btgd->bsgrd", probs, v).reshape(batch, seq, h, d)
            return dense_general((config.emb_dim,), 2, "out")(out)

    class Mlp(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            if gpt3:
                # MlpBlock(use_pre_norm, use_bias, activations ["gelu"]): its own LayerNorm, one wi, tanh gelu.
                x = LayerNorm(name="mlp_layer_norm")(x)
                hidden = jax.nn.gelu(dense_general((config.mlp_dim,), 1, "wi")(x))
                return dense_general((config.emb_dim,), 1, "wo")(hidden)
            gate = dense_general((config.mlp_dim,), 1, "wi_0")(x)
            up = dense_general((config.mlp_dim,), 1, "wi_1")(x)
            # MaxText's "gelu" is jax.nn.gelu, whose default is the tanh approximation.
            act = nn.silu if config.activation == "silu" else jax.nn.gelu
            return dense_general((config.emb_dim,), 1, "wo")(act(gate) * up)

    class MoeBlock(nn.Module):
        """layers/moe.py RoutedMoE as mixtral uses it, computed densely: the router is a DenseGeneral ``gate``
        [E, X]; the experts' weights are bare arrays wi_0, wi_1 [X, E, F] and wo [X, F, E]. get_topk takes
        ``top_k`` of the router logits, then ``softmax`` over those k in float32 (no renormalisation, no
        bias, no scaling); dropless (capacity_factor -1); the weights multiply each chosen expert's output
        (unpermute). Every expert runs on every token here, weighted 0 unless chosen: the same sums."""

        @nn.compact
        def __call__(self, x: Any) -> Any:
            experts, emb, mlp = config.num_experts, config.emb_dim, config.mlp_dim
            init = nn.initializers.normal(0.02)
            logits = dense_general((experts,), 1, "gate")(x)
            wi_0 = self.param("wi_0", init, (experts, emb, mlp))
            wi_1 = self.param("wi_1", init, (experts, emb, mlp))
            wo = self.param("wo", init, (experts, mlp, emb))
            weights, chosen = jax.lax.top_k(logits, config.experts_per_token)
            weights = cast(jax.nn.softmax(weights.astype(jnp.float32), axis=-1))
            combine = jnp.sum(jax.nn.one_hot(chosen, experts, dtype=weights.dtype) * weights[..., None], axis=-2)
            act = nn.silu if config.activation == "silu" else jax.nn.gelu
            hidden = act(jnp.einsum("bse,xef->bsxf", cast(x), cast(wi_0))) * jnp.einsum(
                "bse,xef->bsxf", cast(x), cast(wi_1)
            )
            out = jnp.einsum("bsxf,xfe->bsxe", hidden, cast(wo))
            return jnp.einsum("bsxe,bsx->bse", out, combine)

    # gemma names its two norms differently; the maths is the same pre-norm residual block.
    norm_names = (
        ("pre_self_attention_norm", "pre_ffw_norm")
        if config.block == "gemma"
        else ("pre_self_attention_layer_norm", "post_self_attention_layer_norm")
    )

    class Layer(nn.Module):
        @nn.compact
        def __call__(self, x: Any, positions: Any) -> Any:
            if gpt3:
                h = x + Attention(name="self_attention")(LayerNorm(name="pre_self_attention_norm")(x), positions)
                return h + Mlp(name="mlp")(h), None
            h = x + Attention(name="self_attention")(RMSNorm(name=norm_names[0])(x), positions)
            mlp = MoeBlock(name="MoeBlock_0") if config.num_experts else Mlp(name="mlp")
            y = h + mlp(RMSNorm(name=norm_names[1])(h))
            return y, None

    class Decoder(nn.Module):
        @nn.compact
        def __call__(self, y: Any, positions: Any, embedder: Any) -> Any:
            if gpt3:  # decoders.py: trainable_position_size learned rows, added to the token embedding
                table = nn.Embed(config.trainable_position_size, config.emb_dim, name="position_embedder")
                y = y + cast(table(positions.astype(jnp.int32)))
            if config.scanned:
                stack = nn.scan(
                    Layer,
                    variable_axes={"params": config.param_scan_axis},
                    split_rngs={"params": True},
                    in_axes=(nn.broadcast,),
                    length=config.num_layers,
                )(name="layers")
                y, _ = stack(y, positions)
            else:
                for index in range(config.num_layers):
                    y, _ = Layer(name=f"layers_{index}")(y, positions)
            y = (LayerNorm if gpt3 else RMSNorm)(name="decoder_norm")(y)
            if config.tied:
                logits = embedder.attend(y)
                if config.normalize_embedding_logits:
                    logits = logits / jnp.sqrt(y.shape[-1])
                return logits
            # MaxText casts the logits to float32 for the loss (cast_logits_to_fp32).
            return dense_general((config.vocab_size,), 1, "logits_dense")(y).astype(jnp.float32)

    class Transformer(nn.Module):
        @nn.compact
        def __call__(self, tokens: Any) -> Any:
            embedder = nn.Embed(config.vocab_size, config.emb_dim, name="token_embedder")
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.float32), tokens.shape)
            return Decoder(name="decoder")(cast(embedder(tokens)), positions, embedder)

    return Transformer()


def random_params(config: LlamaConfig, seed: int) -> dict:
    """MaxText-shaped parameters (``{"params": {...}}``), drawn with numpy so they do not depend on jax's RNG.

    Norm scales are 1 + noise (so a mixed-up norm shows); the query kernel is drawn
    with std / sqrt(D), as MaxText's pre-scaled initialiser does.
    """
    import jax
    import numpy as np

    model = _model(dataclasses.replace(config, scanned=True, param_scan_axis=config.param_scan_axis))
    shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 4), np.int32))
    rng = np.random.default_rng(seed)

    def draw(path: tuple, leaf: Any) -> Any:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        if name.endswith("scale"):
            # gpt3's LayerNorm stores scale - 1 (applied as 1 + scale): noise around 0 there, around 1 elsewhere.
            centre = 0.0 if config.block == "gpt3" else 1.0
            return (centre + 0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)
        # Under use_qk_norm MaxText does not pre-scale the query kernel.
        std = 0.1 / math.sqrt(config.head_dim) if "query" in name and not config.qk_norm else 0.1
        return (std * rng.standard_normal(leaf.shape)).astype(np.float32)

    params = jax.tree_util.tree_map_with_path(draw, shapes)
    return params if config.scanned else unscan(params, config)


def unscan(params: dict, config: LlamaConfig) -> dict:
    """Scanned ``decoder/layers`` -> ``decoder/layers_{i}`` (same values)."""
    import jax
    import numpy as np

    decoder = dict(params["params"]["decoder"])
    stacked = decoder.pop("layers")
    for index in range(config.num_layers):
        decoder[f"layers_{index}"] = jax.tree_util.tree_map(
            lambda leaf, index=index: np.take(np.asarray(leaf), index, axis=config.param_scan_axis), stacked
        )
    return {"params": {**params["params"], "decoder": decoder}}


def forward(config: LlamaConfig, params: dict, tokens: Any) -> Any:
    import jax

    model = _model(config)
    return jax.jit(model.apply)(params, tokens)


def loss_fn(config: LlamaConfig, *, with_logits: bool = False) -> Any:
    """Mean next-token cross entropy of a batch [B, S + 1]; ``with_logits``: (loss, logits) for has_aux."""
    import jax.numpy as jnp
    import optax

    model = _model(config)

    def loss(params: dict, batch: Any) -> Any:
        logits = model.apply(params, batch[:, :-1])
        value = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]))
        return (value, logits) if with_logits else value

    return loss


def adam_pax(learning_rate: float, b1: float, b2: float, eps: float, weight_decay: float, mask: Any) -> Any:
    """MaxText's ``adam_pax`` (optimizers/optimizers.py): Adam with bias-corrected moments in its state.

    Written from its update rule: with t = count + 1 and the bias-corrected decay
    b^ = b (1 - b^(t-1)) / (1 - b^t), m^ = (1 - b1^) g + b1^ m^, v^ likewise;
    u = m^ / (sqrt(v^) + eps) + wd * p (masked); update = -lr * u.
    """
    import jax
    import jax.numpy as jnp
    import optax

    def init(params: Any) -> Any:
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        return optax.ScaleByAdamState(
            count=jnp.zeros([], jnp.int32), mu=zeros, nu=jax.tree_util.tree_map(jnp.zeros_like, params)
        )

    def decay(count: Any, beta: float) -> Any:
        t = count.astype(jnp.float32) + 1.0
        return beta * (1.0 - beta ** (t - 1.0)) / (1.0 - beta**t)

    def update(grads: Any, state: Any, params: Any) -> Any:
        d1, d2 = decay(state.count, b1), decay(state.count, b2)
        mu = jax.tree_util.tree_map(lambda g, m: (1 - d1) * g + d1 * m, grads, state.mu)
        nu = jax.tree_util.tree_map(lambda g, v: (1 - d2) * g * g + d2 * v, grads, state.nu)
        keep = mask(params)
        updates = jax.tree_util.tree_map(
            lambda m, v, p, k: -learning_rate * (m / (jnp.sqrt(v) + eps) + (weight_decay * p if k else 0.0)),
            mu,
            nu,
            params,
            keep,
        )
        return updates, optax.ScaleByAdamState(count=state.count + 1, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def decay_mask(params: Any) -> Any:
    """Decay everything but norm scales and biases (Megatron's rule: its 1-D parameters and biases)."""
    import jax

    return jax.tree_util.tree_map_with_path(lambda path, _: str(path[-1].key) not in ("scale", "bias"), params)


# --------------------------------------------------------------------------------------------
# Orbax checkpoints.


def save(root: Path, step: int, tree: Any, *, use_zarr3: bool, use_ocdbt: bool = True) -> Path:
    """Save ``tree`` as MaxText does: CheckpointManager, item "items"; returns the item folder."""
    import orbax.checkpoint as ocp

    handler = ocp.PyTreeCheckpointHandler(use_zarr3=use_zarr3, use_ocdbt=use_ocdbt)
    manager = ocp.CheckpointManager(root, item_names=("items",), item_handlers={"items": handler})
    manager.save(step, args=ocp.args.Composite(items=ocp.args.PyTreeSave(tree)))
    manager.wait_until_finished()
    manager.close()
    return root / str(step) / "items"


def shard_like_tensor_parallel(params: dict, config: LlamaConfig) -> dict:
    """Place each leaf on two devices split the way MaxText's tensor axis splits it, so the save writes one chunk per shard."""
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.devices()[:2]), ("tensor",))
    layer_axis = config.param_scan_axis if config.scanned else None

    def spec(path: tuple, leaf: Any) -> Any:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        ndim = np.ndim(leaf)
        unscanned_axis = {
            "query/kernel": 1,
            "key/kernel": 1,
            "value/kernel": 1,
            "out/kernel": 0,
            "wi_0/kernel": 1,
            "wi_1/kernel": 1,
            "wo/kernel": 0,
            "qkv_proj/kernel": 2,
            "qkv_proj/bias": 1,
            "wi/kernel": 1,
            "wi/bias": 0,
            "token_embedder/embedding": 0,
            "logits_dense/kernel": 1,
            "MoeBlock_0/wi_0": 2,  # [X, E, F]: the expert weights split along F
            "MoeBlock_0/wi_1": 2,
            "MoeBlock_0/wo": 1,
        }
        axis = next((a for suffix, a in unscanned_axis.items() if name.endswith(suffix)), None)
        if axis is None:
            return NamedSharding(mesh, PartitionSpec())
        if layer_axis is not None and "/layers/" in name and axis >= layer_axis:
            axis += 1
        parts = [None] * ndim
        parts[axis] = "tensor"
        return NamedSharding(mesh, PartitionSpec(*parts))

    return jax.tree_util.tree_map_with_path(lambda p, leaf: jax.device_put(leaf, spec(p, leaf)), params)


# --------------------------------------------------------------------------------------------
# The cases.


def _write_case(folder: Path, config: LlamaConfig, **extra: Any) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CASE_CONFIG).write_text(json.dumps({"config": dataclasses.asdict(config), **extra}, indent=1))


def read_case(folder: Path) -> tuple[LlamaConfig, dict]:
    data = json.loads((folder / CASE_CONFIG).read_text())
    return LlamaConfig(**data.pop("config")), data


def _training_case(
    out: Path,
    name: str,
    config: LlamaConfig,
    optimizer: str,
    *,
    use_zarr3: bool,
    steps_before: int = 3,
    steps_after: int = 4,
    save_initial: bool = False,
) -> tuple[Any, Any, Any]:
    """K optimizer steps, a full-state checkpoint (TrainState: step, params, opt_state), then N more steps' losses.

    ``save_initial``: the initial weights too (params only, step 0, under ``init/``), for a curve from the start.
    Returns (initial params, the batches, the float32 logits of the first batch's inputs under the initial
    params): the first step's forward, so a forward case of these weights needs no compile of its own.
    """
    import jax
    import numpy as np
    import optax
    from flax.training import train_state

    lr, betas, eps, wd = 3e-3, (0.9, 0.95), 1e-8, 0.1
    params = random_params(config, seed=7)
    if save_initial:
        save(out / name / "init", 0, {"params": params}, use_zarr3=use_zarr3)
    batches = np.random.default_rng(11).integers(
        0, config.vocab_size, (steps_before + steps_after, 2, 17), dtype=np.int32
    )
    if optimizer == "adamw":
        tx = optax.adamw(lr, b1=betas[0], b2=betas[1], eps=eps, weight_decay=wd, mask=decay_mask)
    else:
        tx = adam_pax(lr, betas[0], betas[1], eps, wd, decay_mask)
    loss = loss_fn(config, with_logits=True)
    state = train_state.TrainState.create(apply_fn=None, params=params, tx=tx)

    @jax.jit
    def step(state: Any, batch: Any) -> Any:
        (value, logits), grads = jax.value_and_grad(loss, has_aux=True)(state.params, batch)
        return state.apply_gradients(grads=grads), value, logits

    losses, first_logits = [], None
    for index in range(steps_before + steps_after):
        if index == steps_before:
            items = save(out / name / "ckpt", steps_before, state, use_zarr3=use_zarr3)
        state, value, logits = step(state, batches[index])
        losses.append(float(value))
        if index == 0:
            first_logits = np.asarray(logits, dtype=np.float32)
    np.save(out / name / "batches.npy", batches)
    np.save(out / name / "losses.npy", np.array(losses, dtype=np.float64))
    _write_case(
        out / name,
        config,
        items=str(items.relative_to(out / name)),
        optimizer=optimizer,
        lr=lr,
        betas=betas,
        eps=eps,
        weight_decay=wd,
        steps_before=steps_before,
    )
    return params, batches, first_logits


def _forward_case(
    out: Path,
    name: str,
    config: LlamaConfig,
    params: dict,
    tokens: Any,
    *,
    use_zarr3: bool,
    sharded: bool = False,
    dtype: str = "float32",
    logits: Any = None,
) -> Any:
    """``logits``: the reference logits when already computed (an unscanned copy of a scanned case's weights)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    if dtype == "bfloat16":
        params = jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf, jnp.bfloat16), params)
    if logits is None:
        # The forward runs in fp32 on the (possibly bf16-valued) weights.
        as_fp32 = jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf, jnp.float32), params)
        logits = np.asarray(forward(config, as_fp32, tokens), dtype=np.float32)
    else:
        # Same values, other tree: it must be the tree the model of this config has (checked without compiling).
        shapes = jax.eval_shape(_model(config).init, jax.random.key(0), np.zeros((1, 4), np.int32))
        assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(params), config
    saved = shard_like_tensor_parallel(params, config) if sharded else params
    items = save(out / name / "ckpt", 0, {"params": saved}, use_zarr3=use_zarr3)
    np.save(out / name / "logits.npy", logits)
    _write_case(out / name, config, items=str(items.relative_to(out / name)), dtype=dtype, zarr3=use_zarr3)
    return logits


def _broken_case(out: Path, params: dict) -> None:
    """A MaxText tree with mlp/wi_1 missing and an unknown mlp/wi_2 instead."""
    import copy

    broken = copy.deepcopy(params)
    mlp = broken["params"]["decoder"]["layers"]["mlp"]
    mlp["wi_2"] = mlp.pop("wi_1")
    items = save(out / "missing_leaf" / "ckpt", 0, {"params": broken}, use_zarr3=True)
    _write_case(out / "missing_leaf", LlamaConfig(), items=str(items.relative_to(out / "missing_leaf")))


def _synthetic_cases(out: Path) -> None:
    """Small trees of every kind of leaf for the reader's own tests."""
    import jax.numpy as jnp
    import ml_dtypes
    import numpy as np
    import optax

    rng = np.random.default_rng(3)
    tree = {
        "params": {
            "params": {
                "dense": {"kernel": jnp.asarray(rng.standard_normal((6, 5, 4)), jnp.float32)},
                "norm": {"scale": jnp.asarray(rng.standard_normal(7), jnp.bfloat16)},
            }
        },
        "opt_state": (
            optax.ScaleByAdamState(
                count=jnp.asarray(5, jnp.int32), mu={"w": jnp.ones((3, 2))}, nu={"w": jnp.full((3, 2), 2.0)}
            ),
            optax.EmptyState(),
        ),
        "step": 42,
    }
    originals = {
        "params.params.dense.kernel": np.asarray(tree["params"]["params"]["dense"]["kernel"]),
        "params.params.norm.scale": np.asarray(tree["params"]["params"]["norm"]["scale"]).view(np.uint16),
        "opt_state.0.count": np.asarray(5, np.int32),
        "opt_state.0.mu.w": np.ones((3, 2), np.float32),
        "opt_state.0.nu.w": np.full((3, 2), 2.0, np.float32),
    }
    assert np.asarray(tree["params"]["params"]["norm"]["scale"]).dtype == ml_dtypes.bfloat16
    for name, zarr3, ocdbt in (
        ("zarr3_ocdbt", True, True),
        ("zarr2_ocdbt", False, True),
        ("zarr2_plain", False, False),
    ):
        folder = out / "synthetic" / name
        save(folder / "ckpt", 1, tree, use_zarr3=zarr3, use_ocdbt=ocdbt)
    np.savez(out / "synthetic" / "originals.npz", **originals)


def make_cases(out: Path) -> None:
    import numpy as np

    base = LlamaConfig()
    tokens = np.random.default_rng(5).integers(0, base.vocab_size, (2, 16), dtype=np.int32)
    np.save(out / "tokens.npy", tokens)
    params = random_params(base, seed=1)
    _forward_case(out, "scanned", base, params, tokens, use_zarr3=True, sharded=True)
    unscanned = dataclasses.replace(base, scanned=False)
    _forward_case(out, "unscanned", unscanned, unscan(params, base), tokens, use_zarr3=False)
    tied = dataclasses.replace(base, vocab_size=100, tied=True)
    _forward_case(out, "tied_padded", tied, random_params(tied, seed=2), tokens % 100, use_zarr3=True)
    llama31 = dataclasses.replace(base, rope_type="llama3.1")
    _forward_case(out, "llama31", llama31, params, tokens, use_zarr3=True)
    _forward_case(out, "bf16", base, params, tokens, use_zarr3=True, dtype="bfloat16")
    _broken_case(out, params)
    # Three layers: megatron's distributed optimizer then splits a parameter between two
    # data-parallel ranks (with an even count the split falls between two layers).
    three = dataclasses.replace(base, num_layers=3)
    _training_case(out, "adamw_resume", three, "adamw", use_zarr3=True)
    _training_case(out, "adam_pax_resume", dataclasses.replace(three, scanned=False), "adam_pax", use_zarr3=False)
    _synthetic_cases(out)


BLOCKS = {
    "mistral": LlamaConfig(block="mistral", rope_theta=1_000_000.0, num_layers=2),
    # head_dim 24 with 4 heads of a 64-wide model: head_dim != emb / heads.
    "qwen3": LlamaConfig(block="qwen3", qk_norm=True, head_dim=24, rope_theta=1_000_000.0, num_layers=2),
    "gemma": LlamaConfig(block="gemma", activation="gelu", num_layers=2),
    # gpt3-52k's shape of model: MHA, tied logits, learned positions for the test's 16 tokens.
    "gpt3": LlamaConfig(
        block="gpt3", num_kv_heads=4, activation="gelu", tied=True, trainable_position_size=16, num_layers=2
    ),
    # mixtral: llama2's attention with MaxText's MoE block, 4 experts, top 2.
    "mixtral": LlamaConfig(block="mixtral", rope_theta=1_000_000.0, num_layers=2, num_experts=4),
}
"""The other MaxText decoder blocks, each a small model in its own layout (tests/runtime/test_maxtext_blocks.py)."""


def make_block_cases(out: Path) -> None:
    """Per block: ten adamw steps from the initial weights (the full state saved after three); those weights
    as a scanned checkpoint saved from two devices split like TP and as an unscanned one, with the logits of
    the first batch's inputs. One XLA compile per block (the training step's forward gives the logits)."""
    import numpy as np

    for block, config in BLOCKS.items():
        params, batches, logits = _training_case(
            out, f"{block}_curve", config, "adamw", use_zarr3=True, steps_before=3, steps_after=7, save_initial=True
        )
        tokens = batches[0][:, :-1]
        if not (out / "tokens.npy").exists():
            np.save(out / "tokens.npy", tokens)
        assert np.array_equal(np.load(out / "tokens.npy"), tokens)  # every block draws the same batches
        _forward_case(out, f"{block}_scanned", config, params, tokens, use_zarr3=True, sharded=True, logits=logits)
        unscanned = dataclasses.replace(config, scanned=False)
        _forward_case(
            out, f"{block}_unscanned", unscanned, unscan(params, config), tokens, use_zarr3=False, logits=logits
        )
    # MaxText's default precision (dtype bfloat16, weight_dtype float32) and the same run in float32.
    for dtype in ("bfloat16", "float32"):
        config = dataclasses.replace(LlamaConfig(), dtype=dtype, num_layers=2)
        _training_case(
            out,
            f"llama2_{dtype}_curve",
            config,
            "adamw",
            use_zarr3=True,
            steps_before=3,
            steps_after=7,
            save_initial=True,
        )


# --------------------------------------------------------------------------------------------
# Reading back an exported checkpoint the way MaxText's load_parameters_path does.


def restore_like_maxtext(items: Path, config: LlamaConfig, dtype: str) -> dict:
    """checkpointing.load_params_from_path: Checkpointer(PyTreeCheckpointHandler) restoring only ``params``.

    The abstract tree has the model's weight dtype (MaxText's weight_dtype), as MaxText's has.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    import orbax.checkpoint as ocp

    abstract = jax.eval_shape(_model(config).init, jax.random.key(0), np.zeros((1, 4), np.int32))
    abstract = jax.tree_util.tree_map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, jnp.dtype(dtype)), abstract)
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
    checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_ocdbt=True, use_zarr3=True))
    restored = checkpointer.restore(
        Path(items).absolute(), item={"params": abstract}, transforms={}, restore_args={"params": restore_args}
    )
    return restored["params"]


def compare_restored(items: Path, case: Path) -> dict:
    """Restore ``items`` as MaxText would and compare with the case's own checkpoint, bit for bit, and its logits."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    config, data = read_case(case)
    dtype = data.get("dtype", "float32")
    restored = restore_like_maxtext(items, config, dtype)
    original = restore_like_maxtext(case / data["items"], config, dtype)
    mismatched = []

    def check(path: tuple, a: Any, b: Any) -> None:
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.dtype != b.dtype or a.tobytes() != b.tobytes():
            mismatched.append(jax.tree_util.keystr(path))

    jax.tree_util.tree_map_with_path(check, restored, original)
    as_fp32 = jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf, jnp.float32), restored)
    logits = np.asarray(forward(config, as_fp32, jnp.asarray(np.load(case.parent / "tokens.npy") % config.vocab_size)))
    expected = np.load(case / "logits.npy")
    dtypes = sorted({str(np.asarray(leaf).dtype) for leaf in jax.tree_util.tree_leaves(restored)})
    return {"mismatched": mismatched, "logits_max_diff": float(np.max(np.abs(logits - expected))), "dtypes": dtypes}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make")
    make.add_argument("out", type=Path)
    blocks = sub.add_parser("make-blocks")
    blocks.add_argument("out", type=Path)
    restore = sub.add_parser("restore", help="pairs of (exported item folder, case folder)")
    restore.add_argument("pairs", type=Path, nargs="+")
    args = parser.parse_args(argv)
    if args.command == "make":
        make_cases(args.out)
    elif args.command == "make-blocks":
        make_block_cases(args.out)
    else:
        pairs = zip(args.pairs[0::2], args.pairs[1::2], strict=True)
        print(json.dumps({str(items): compare_restored(items, case) for items, case in pairs}))
    return 0


_built: dict[str, Path] = {}


def build_cases(root: Path, command: str = "make") -> Path:
    """Write every case of ``command`` (make, make-blocks) under ``root`` once per test session (in a JAX
    subprocess); returns the folder."""
    if command not in _built:
        import subprocess

        out = Path(root) / f"maxtext_cases_{command}"
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, __file__, command, str(out)], check=True, capture_output=True, text=True)
        _built[command] = out
    return _built[command]


def restore_in_jax(pairs: list[tuple[Path, Path]]) -> dict:
    """Run ``restore`` in a JAX subprocess for (exported items, case) pairs; returns its JSON."""
    import subprocess

    args = [str(p) for pair in pairs for p in pair]
    done = subprocess.run([sys.executable, __file__, "restore", *args], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    # Two host devices so shard_like_tensor_parallel can place shards; set before JAX starts.
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.exit(main(sys.argv[1:]))
