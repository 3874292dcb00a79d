"""OptaxAdamW + clip_by_global_norm + MaxText's decay mask against optax, 20 steps, through megatron-core.

The reference is what MaxText does each step: ``optax.clip_by_global_norm``
(maxtext_utils.apply_gradient_clipping), then ``optax.adamw(schedule, ...,
eps_root, mask=adamw_mask)`` on a MaxText-shaped parameter tree whose paths come
from the parameter table (bridgec.runtime.models.gpt), the mask being MaxText's ``_get_path_mask_fn``
(keystr with "/" and re.search). The megatron side holds the same numbers in
fused Megatron parameters (linear_qkv = query|key|value, linear_fc1 = wi_0|wi_1;
Adam is elementwise and the global norm is layout-free, so any bijection works)
and trains through train_step (optax_worker.py). Tolerance: max |diff| <= 1e-6, fp32.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from bridgec.runtime.models import gpt
from tests.e2e.harness import launch
from tests.runtime import optax_worker
from tests.runtime.optax_worker import SHAPE, full_shapes, leaf_sizes
from tests.runtime.test_decay_mask import maxtext_mask

TOLERANCE = 1e-6
STEPS = 20
PATTERNS = [r"norm", r"token_embedder"]
SETTINGS = dict(peak_lr=1e-2, end_lr=1e-3, warmup=3, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip=1.0)


def maxtext_paths(name: str) -> tuple[str, ...]:
    """The MaxText leaves (unscanned) of the worker's model parameter ``name``."""
    config = gpt.GPTConfig(num_layers=SHAPE.num_layers, hidden=SHAPE.hidden, heads=SHAPE.heads, groups=SHAPE.groups,
                           head_dim=SHAPE.head_dim, ffn=SHAPE.ffn, vocab=SHAPE.vocab, seq_length=8, layernorm=False,
                           gated=True, bias=False, qk_norm=True, tied=False, learned_positions=False)  # fmt: skip
    return gpt.maxtext_paths(gpt.find(config, name), config, scanned=False)


def _bf16(array: np.ndarray) -> np.ndarray:
    """Round to bf16-representable fp32 values, so a bf16 model holds them exactly."""
    return torch.from_numpy(array.astype(np.float32)).bfloat16().float().numpy()


def _split(name: str, flat: np.ndarray) -> dict[str, np.ndarray]:
    paths = maxtext_paths(name)
    pieces = np.split(flat, np.cumsum(leaf_sizes(name, SHAPE))[:-1])
    return dict(zip(paths, pieces))


def _nest(leaves: dict[str, np.ndarray]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in leaves.items():
        *parents, leaf = path.split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = jnp.asarray(value)
    return tree


def _leaf(tree: dict[str, Any], path: str) -> np.ndarray:
    node = tree
    for part in path.split("/"):
        node = node[part]
    return np.asarray(node)


def make_case(*, eps_root: float, seed: int = 0) -> dict[str, Any]:
    """Initial parameters, 20 steps of gradients and optax's final parameters, keyed by Megatron name (full shapes)."""
    rng = np.random.default_rng(seed)
    shapes = full_shapes(SHAPE)
    init = {name: _bf16(rng.normal(0.0, 0.5, shape)) for name, shape in shapes.items()}
    grads = []
    for step in range(STEPS):
        raw = {name: rng.normal(0.0, 1.0, shape) for name, shape in shapes.items()}
        for name in raw:
            if "norm" in name:  # tiny second moments, where eps_root inside the root matters
                raw[name] *= 1e-4
        norm = math.sqrt(sum(float((g**2).sum()) for g in raw.values()))
        target = SETTINGS["clip"] * (0.4, 2.5, 1.3, 0.8, 6.0)[step % 5]  # clipped on some steps only
        grads.append({name: _bf16(g * (target / norm)) for name, g in raw.items()})

    def tree_of(values: dict[str, np.ndarray]) -> dict[str, Any]:
        leaves: dict[str, np.ndarray] = {}
        for name, value in values.items():
            leaves.update(_split(name, value.reshape(-1)))
        return _nest(leaves)

    schedule = optax.warmup_cosine_decay_schedule(
        0.0, SETTINGS["peak_lr"], SETTINGS["warmup"], STEPS, end_value=SETTINGS["end_lr"]
    )
    tx = optax.adamw(
        schedule,
        b1=SETTINGS["b1"],
        b2=SETTINGS["b2"],
        eps=SETTINGS["eps"],
        eps_root=eps_root,
        weight_decay=SETTINGS["weight_decay"],
        mask=maxtext_mask(PATTERNS),
    )
    clip = optax.clip_by_global_norm(SETTINGS["clip"])

    @jax.jit
    def step(params: Any, state: Any, grad: Any) -> tuple[Any, Any]:
        grad, _ = clip.update(grad, clip.init(params))
        updates, state = tx.update(grad, state, params)
        return optax.apply_updates(params, updates), state

    params = tree_of(init)
    state = tx.init(params)
    for grad in grads:
        params, state = step(params, state, tree_of(grad))
    expected = {}
    for name, shape in shapes.items():
        pieces = [_leaf(params, path).reshape(-1) for path in maxtext_paths(name)]
        expected[name] = np.concatenate(pieces).reshape(shape)
    as_torch = lambda values: {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in values.items()}  # noqa: E731
    return {
        "init": as_torch(init),
        "grads": [as_torch(g) for g in grads],
        "expected": as_torch(expected),
        "settings": {**SETTINGS, "eps_root": eps_root, "patterns": PATTERNS},
    }


@pytest.fixture(scope="module")
def cases() -> dict[float, dict[str, Any]]:
    return {eps_root: make_case(eps_root=eps_root) for eps_root in (0.0, 1e-8)}


@pytest.mark.parametrize("eps_root", [0.0, 1e-8])
def test_fp32_matches_optax(megatron_world1: None, cases: dict, eps_root: float) -> None:
    assert optax_worker.run(cases[eps_root], dtype="fp32", distributed_optimizer=False) <= TOLERANCE


def test_bf16_main_parameters_match_optax(megatron_world1: None, cases: dict) -> None:
    """Float16OptimizerWithFloat16Params: bf16 model, fp32 main parameters updated like optax's fp32 ones."""
    assert optax_worker.run(cases[1e-8], dtype="bf16", distributed_optimizer=False) <= TOLERANCE


def test_distributed_optimizer_matches_optax(megatron_world1: None, cases: dict) -> None:
    assert optax_worker.run(cases[1e-8], dtype="fp32", distributed_optimizer=True) <= TOLERANCE


def test_the_comparison_sees_eps_root(megatron_world1: None, cases: dict) -> None:
    """Running without eps_root against optax's eps_root = 1e-8 must fail the tolerance by far."""
    wrong = dict(cases[1e-8], settings={**cases[1e-8]["settings"], "eps_root": 0.0})
    assert optax_worker.run(wrong, dtype="fp32", distributed_optimizer=False) > 100 * TOLERANCE


def _optax_clipped(grads: dict[str, np.ndarray], max_norm: float) -> dict[str, np.ndarray]:
    tree = {name: jnp.asarray(value) for name, value in grads.items()}
    clip = optax.clip_by_global_norm(max_norm)
    clipped, _ = clip.update(tree, clip.init(tree))
    return {name: np.asarray(value) for name, value in clipped.items()}


@pytest.mark.parametrize("scale", [0.5, 1.0, 3.0])
def test_clip_epsilon_zero_is_optax_clip_by_global_norm(megatron_world1: None, scale: float) -> None:
    """train_step's clip_gradients with epsilon 0 (optax semantics) against optax.clip_by_global_norm, elementwise."""
    rng = np.random.default_rng(1)
    raw = {name: rng.normal(size=shape) for name, shape in full_shapes(SHAPE).items()}
    norm = math.sqrt(sum(float((g**2).sum()) for g in raw.values()))
    # A small norm (0.05), where megatron's + 1e-6 is visible in fp32 (2e-5 relative).
    grads = {name: (g * (0.05 / norm)).astype(np.float32) for name, g in raw.items()}
    max_norm = 0.05 / scale  # scale > 1 clips, scale < 1 does not, 1.0 is the boundary
    expected = _optax_clipped(grads, max_norm)
    ours = optax_worker.clipped_gradients(
        {k: torch.from_numpy(v) for k, v in grads.items()}, max_norm=max_norm, epsilon=0.0
    )
    relative = max(
        float(np.max(np.abs(ours[k].numpy() - expected[k]) / np.maximum(np.abs(expected[k]), 1e-3))) for k in grads
    )
    assert relative <= 1e-6
    if scale > 1.0:  # megatron's own rule, max / (norm + 1e-6), is measurably different
        megatron = optax_worker.clipped_gradients(
            {k: torch.from_numpy(v) for k, v in grads.items()}, max_norm=max_norm, epsilon=1e-6
        )
        assert any(not torch.equal(megatron[k], ours[k]) for k in grads)


@pytest.mark.parametrize("layout", ["dp2_distributed_optimizer", "tp2"])
def test_two_ranks_match_optax(cases: dict, tmp_path: Path, layout: str) -> None:
    case_file = tmp_path / "case.pt"
    torch.save(cases[1e-8], case_file)
    extra = ["--distributed-optimizer"] if layout.startswith("dp2") else ["--tensor", "2"]
    done = launch(Path(optax_worker.__file__), 2, args=(str(case_file), str(tmp_path), *extra))
    assert done.returncode == 0, done.explain()
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text())["max_diff"] <= TOLERANCE
