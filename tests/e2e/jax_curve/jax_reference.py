"""The JAX side of the training-curve test: MaxText's train step in Flax + optax, as a long-lived worker.

One process serves the whole test (importing JAX and compiling the step are
the slow part), reading one JSON command per line on stdin and answering one
line ``RESULT {json}`` on stdout:

* ``{"command": "init", "out": DIR}``: the initial weights
  (tests/runtime/flax_llama.random_params) saved with Orbax as MaxText saves a
  params-only checkpoint: ``DIR/0/items`` holding ``{"params": {"params": ...}}``.
* ``{"command": "train", "batches": NPZ, "out": DIR}``: ``case.STEPS`` updates
  on the batches the compiled script's sampler produced; after ``case.SAVE_STEP``
  updates the whole TrainState (step, params, opt_state: mu, nu, count) is
  saved to ``DIR/<SAVE_STEP>/items``. Answers the per-step losses, raw gradient
  norms and learning rates.
* ``{"command": "restore", "items": ITEMS, "out": NPZ}``: reads a checkpoint
  back the way MaxText's ``load_parameters_path`` does
  (flax_llama.restore_like_maxtext) and writes every leaf to NPZ by its
  '/'-joined path.

The step is written from MaxText (src/maxtext/trainers/pre_train/train.py
``loss_fn`` and ``train_step``, utils/max_utils.py ``cross_entropy_with_logits``,
optimizers/optimizers.py ``_get_path_mask_fn``, utils/maxtext_utils.py
``create_learning_rate_schedule`` and ``apply_gradient_clipping``), not from
bridgec's runtime: it is the reference the compiled program is measured against.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax.training import train_state  # noqa: E402

from tests.e2e.jax_curve import case  # noqa: E402
from tests.runtime import flax_llama  # noqa: E402

CONFIG = flax_llama.LlamaConfig(**case.MODEL)
EPS = 1e-8
"""MaxText's loss denominator guard (train.py: total_loss / (total_weights + EPS))."""


def learning_rate_schedule(steps: int) -> Any:
    """MaxText's create_learning_rate_schedule, cosine, current formula (learning_rate_schedule_steps = steps)."""
    h = case.HYPER
    lr = h["learning_rate"]
    final_lr = lr * h["learning_rate_final_fraction"]
    warmup_steps = int(steps * h["warmup_steps_fraction"])
    cos_steps = steps - warmup_steps

    def cosine(step: Any) -> Any:
        pct = step / (cos_steps - 1) if cos_steps > 1 else 1.0
        a = 0.5 * (jnp.cos(jnp.pi * pct) + 1)
        return lr * a + final_lr * (1 - a)

    warmup = optax.linear_schedule(init_value=0.0, end_value=lr, transition_steps=warmup_steps)
    return optax.join_schedules([warmup, cosine], [warmup_steps, warmup_steps + cos_steps])


def decay_mask(params: Any) -> Any:
    """MaxText's adamw_mask: a leaf decays unless a pattern is found in its '/'-joined key path."""
    patterns = case.HYPER["adamw_mask"]

    def decays(path: tuple, _: Any) -> bool:
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        return not any(re.search(pattern, name) for pattern in patterns)

    return jax.tree_util.tree_map_with_path(decays, params)


def loss_fn(model: Any, params: Any, batch: dict[str, Any]) -> Any:
    """MaxText's loss: cross entropy plus z_loss x logsumexp^2 per token, masked, over the token count."""
    logits = model.apply(params, batch["tokens"]).astype(jnp.float32)
    targets = jax.nn.one_hot(batch["labels"], CONFIG.vocab_size)
    logits_sum = jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True)
    xent = -jnp.sum(targets * (logits - logits_sum), axis=-1)
    xent = xent + case.HYPER["z_loss_multiplier"] * jax.lax.square(jnp.squeeze(logits_sum, axis=-1))
    weights = batch["loss_mask"] != 0
    return jnp.sum(xent * weights) / (jnp.sum(weights) + EPS)


def init(out: Path) -> dict[str, Any]:
    params = flax_llama.random_params(CONFIG, seed=case.INIT_SEED)
    items = flax_llama.save(out, 0, {"params": params}, use_zarr3=True)
    return {"items": str(items)}


def train(batches_path: Path, out: Path) -> dict[str, Any]:
    h = case.HYPER
    model = flax_llama._model(CONFIG)
    schedule = learning_rate_schedule(case.STEPS)
    tx = optax.adamw(
        schedule,
        b1=h["b1"],
        b2=h["b2"],
        eps=h["eps"],
        eps_root=h["eps_root"],
        weight_decay=h["weight_decay"],
        mask=decay_mask,
    )
    clip = optax.clip_by_global_norm(h["gradient_clipping_threshold"])
    params = flax_llama.random_params(CONFIG, seed=case.INIT_SEED)
    state = train_state.TrainState.create(apply_fn=None, params=params, tx=tx)

    @jax.jit
    def step(state: Any, batch: dict[str, Any]) -> Any:
        loss, raw_grads = jax.value_and_grad(lambda p: loss_fn(model, p, batch))(state.params)
        grads, _ = clip.update(raw_grads, clip.init(raw_grads), None)
        return state.apply_gradients(grads=grads), loss, optax.global_norm(raw_grads)

    data = np.load(batches_path)
    losses, grad_norms, learning_rates = [], [], []
    items = None
    for index in range(case.STEPS):
        if index == case.SAVE_STEP:
            items = flax_llama.save(out, case.SAVE_STEP, state, use_zarr3=True)
        batch = {key: jnp.asarray(data[key][index]) for key in ("tokens", "labels", "loss_mask")}
        learning_rates.append(float(schedule(index)))
        state, loss, grad_norm = step(state, batch)
        losses.append(float(loss))
        grad_norms.append(float(grad_norm))
    return {"losses": losses, "grad_norms": grad_norms, "learning_rates": learning_rates, "items": str(items)}


def restore(items: Path, out: Path) -> dict[str, Any]:
    params = flax_llama.restore_like_maxtext(items, dataclasses.replace(CONFIG), "float32")
    leaves = {
        jax.tree_util.keystr(path, simple=True, separator="/"): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
    }
    np.savez(out, **leaves)
    return {"leaves": sorted(leaves), "dtypes": sorted({str(leaf.dtype) for leaf in leaves.values()})}


def main() -> int:
    for line in sys.stdin:
        request = json.loads(line)
        command = request["command"]
        if command == "init":
            result = init(Path(request["out"]))
        elif command == "train":
            result = train(Path(request["batches"]), Path(request["out"]))
        elif command == "restore":
            result = restore(Path(request["items"]), Path(request["out"]))
        elif command == "quit":
            return 0
        else:
            raise ValueError(f"unknown command {command!r}")
        print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
