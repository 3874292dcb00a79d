"""The one training setup both sides run: the tiny Llama, its hyper-parameters, and the specs that compile it.

No JAX and no torch here: the test process, the JAX reference worker
(``jax_reference.py``) and the batch dump (``dump_batches.py``) all import it,
so a number changed here changes it everywhere.
"""

from __future__ import annotations

STEPS = 20
"""Optimizer updates in every run (MaxText's ``steps``)."""
SAVE_STEP = 10
"""The JAX loop saves its full state (params, opt_state) after this many updates."""

MODEL = {
    "vocab_size": 260,
    "emb_dim": 64,
    "num_heads": 4,
    "num_kv_heads": 2,
    "head_dim": 16,
    "mlp_dim": 96,
    "num_layers": 2,
    "epsilon": 1e-5,
    "rope_theta": 10000.0,
    "tied": False,
    "scanned": True,
    "param_scan_axis": 1,
}
"""tests/runtime/flax_llama.LlamaConfig fields. The byte-level tokenizer has 257 ids; 260 is a multiple of 4,
so make_vocab_size_divisible_by = 2 pads nothing at TP=1 or TP=2 (megatron's vocabulary = MaxText's)."""

INIT_SEED = 1
"""numpy seed of flax_llama.random_params (the initial weights)."""

GLOBAL_BATCH = 8
MICRO_BATCH = 2
SEQ_LENGTH = 32

HYPER = {
    "learning_rate": 3e-3,
    "b1": 0.9,
    "b2": 0.95,
    "eps": 1e-8,
    "eps_root": 1e-8,
    "weight_decay": 0.1,
    "adamw_mask": ["norm", "embedding"],
    "gradient_clipping_threshold": 2.0,
    "z_loss_multiplier": 1e-4,
    "warmup_steps_fraction": 0.1,
    "learning_rate_final_fraction": 0.1,
}
"""MaxText's names for the optimizer, schedule and loss settings."""


def spec_text(
    name: str,
    *,
    tensor: int = 1,
    init_checkpoint: str | None = None,
    optimizer_state: bool = False,
    checkpoint_dir: str | None = None,
) -> str:
    """A spec of this setup: MaxText's llama2 block, optax.adamw, MaxText's cosine schedule, z-loss, fp32."""
    m, h = MODEL, HYPER
    exclude = ", ".join(f'"{pattern}"' for pattern in h["adamw_mask"])
    text = f"""\
[run]
name = "{name}"

[launch]
procs_per_node = {tensor}

[model]
num_layers = {m["num_layers"]}
hidden_size = {m["emb_dim"]}
num_attention_heads = {m["num_heads"]}
num_query_groups = {m["num_kv_heads"]}
head_dim = {m["head_dim"]}
ffn_hidden_size = {m["mlp_dim"]}
vocab_size = {m["vocab_size"]}
make_vocab_size_divisible_by = 2
seq_length = {SEQ_LENGTH}
normalization = "rmsnorm"
norm_epsilon = {m["epsilon"]}
activation = "swiglu"
position_embedding = "rope"
rotary_base = {int(m["rope_theta"])}
add_bias_linear = false
tie_embeddings = {str(m["tied"]).lower()}
query_scaling = "initial_weights"
dropout = 0.0

[parallel]
tensor = {tensor}

[batch]
global_batch_size = {GLOBAL_BATCH}
micro_batch_size = {MICRO_BATCH}

[train]
iters = {STEPS}

[optimizer]
lr = {h["learning_rate"]}
weight_decay = {h["weight_decay"]}
betas = [{h["b1"]}, {h["b2"]}]
eps = {h["eps"]}
eps_root = {h["eps_root"]}
clip_grad = {h["gradient_clipping_threshold"]}
semantics = "optax"

[optimizer.decay_mask]
exclude = [{exclude}]

[scheduler]
style = "maxtext"

[scheduler.maxtext]
kind = "cosine"
warmup_steps_fraction = {h["warmup_steps_fraction"]}
final_fraction = {h["learning_rate_final_fraction"]}

[precision]
dtype = "fp32"

[data]
kind = "indexed"
sources = [{{ prefix = "tiny" }}]
split = [100.0, 0.0, 0.0]

[loss]
z_loss_multiplier = {h["z_loss_multiplier"]}
"""
    if checkpoint_dir is not None:
        text += f'\n[checkpoint]\ndir = "{checkpoint_dir}"\nresume = true\n'
    if init_checkpoint is not None:
        text += f'\n[init.checkpoint]\nformat = "orbax"\npath = "{init_checkpoint}"\n'
        if optimizer_state:
            text += 'optimizer_state = true\noptimizer_type = "adamw"\n'
    return text
