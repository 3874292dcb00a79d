"""Derived values of a valid spec, each computed in exactly one place.

``lower`` prints them into the script with their arithmetic, ``explain``
reports them, and the validation helpers in ``rule_base`` check that they are
whole numbers before anything relies on them.
"""

from __future__ import annotations

import math

import attrs

from bridgec.compiler.spec import Spec
from bridgec.runtime.models.gpt import GPTConfig


def world_size(spec: Spec) -> int:
    """Processes: nodes x procs_per_node."""
    return spec.launch.nodes * spec.launch.procs_per_node


def model_parallel(spec: Spec) -> int:
    """tensor x pipeline x context: the ranks one data-parallel replica spans."""
    return spec.parallel.tensor * spec.parallel.pipeline * spec.parallel.context


def data_parallel(spec: Spec) -> int:
    """world / (tensor x pipeline x context)."""
    return world_size(spec) // model_parallel(spec)


def microbatches(spec: Spec) -> int:
    """global / (micro x data): microbatches each data-parallel rank runs per step."""
    return spec.batch.global_batch_size // (spec.batch.micro_batch_size * data_parallel(spec))


def tokens_per_step(spec: Spec) -> int:
    """global x seq_length: tokens (padding included) one optimizer step trains on."""
    return spec.batch.global_batch_size * spec.model.seq_length


def vocab_multiple(spec: Spec) -> int:
    """The embedding rows are padded to a multiple of this: lcm(make_vocab_size_divisible_by, tensor).

    Megatron-LM pads to divisible_by x tensor, so the padded size (and with it
    the softmax, since padded rows are real rows) changes with the tensor-parallel
    size. The least common multiple keeps every tensor-parallel size that divides
    divisible_by on the same model, which layout parity and resharding need.
    """
    return math.lcm(spec.model.make_vocab_size_divisible_by, spec.parallel.tensor)


def padded_vocab(spec: Spec) -> int:
    multiple = vocab_multiple(spec)
    return -(-spec.model.vocab_size // multiple) * multiple


def query_groups(spec: Spec) -> int:
    return spec.model.num_query_groups or spec.model.num_attention_heads


def head_dim(spec: Spec) -> int:
    return spec.model.head_dim or spec.model.hidden_size // spec.model.num_attention_heads


def ffn_hidden_size(spec: Spec) -> int:
    return spec.model.ffn_hidden_size or 4 * spec.model.hidden_size


def gated_mlp(spec: Spec) -> bool:
    """swiglu and geglu: linear_fc1 holds [gate; up], two ffn_hidden_size branches."""
    return spec.model.activation in ("swiglu", "geglu")


def gpt_config(spec: Spec) -> GPTConfig:
    """The sizes that decide the model's parameters (runtime.models.gpt, the parameter inventory)."""
    m = spec.model
    return GPTConfig(
        num_layers=m.num_layers,
        hidden=m.hidden_size,
        heads=m.num_attention_heads,
        groups=query_groups(spec),
        head_dim=head_dim(spec),
        ffn=ffn_hidden_size(spec),
        vocab=padded_vocab(spec),
        seq_length=m.seq_length,
        layernorm=m.normalization == "layernorm",
        gated=gated_mlp(spec),
        bias=m.add_bias_linear,
        qkv_bias=m.add_qkv_bias,
        qk_norm=m.qk_layernorm,
        tied=m.tie_embeddings,
        learned_positions=m.position_embedding == "learned",
        transformer_engine=m.transformer_impl == "transformer_engine",
        num_experts=m.num_experts,
    )


def block_diagonal_attention(spec: Spec) -> bool:
    """Each batch carries a block-diagonal causal mask: documents (document_masking) or SFT samples (packing) kept apart."""
    return spec.data.document_masking or (spec.data.packing and not thd_packing(spec))


def thd_packing(spec: Spec) -> bool:
    """Packed SFT samples reach Transformer Engine as THD offsets (cu_seqlens), not as a [seq, seq] mask."""
    return spec.data.packing and spec.model.transformer_impl == "transformer_engine"


def evaluations(spec: Spec) -> int:
    """Evaluations during training: train.iters // eval_interval (0 without eval_interval)."""
    interval = spec.train.eval_interval
    return spec.train.iters // interval if interval is not None else 0


def validation_windows(spec: Spec) -> int:
    """Windows of eval_iters global batches the validation split holds: one per evaluation, as each evaluation
    reads the next one (Megatron-LM's order), and at least one (a finished run launched again evaluates)."""
    return max(1, evaluations(spec)) if spec.train.eval_interval is not None else 0


SINKS = ("tensorboard", "wandb", "mlflow")
"""The [logging] sink tables, in the order the script lists them; each is also the sink's package and extra."""


def sinks(spec: Spec) -> tuple[str, ...]:
    """The [logging] sink tables the spec writes."""
    return tuple(name for name in SINKS if getattr(spec.logging, name) is not None)


def whole_teacher(spec: Spec) -> Spec:
    """[distill]: the spec with the teacher in the student's place, on one pipeline stage. The teacher is never
    split into stages: it runs whole wherever it runs (on the student's last stage under pipeline parallelism)."""
    assert spec.distill is not None
    whole = attrs.evolve(spec.parallel, pipeline=1, virtual_pipeline=None)
    return attrs.evolve(spec, model=spec.distill.teacher, parallel=whole)
