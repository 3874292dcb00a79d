"""The megatron side of the optax parity tests: a tiny GPTModel trained by train_step with OptaxAdamW.

The gradients are injected exactly: the "loss" of step k is sum_p <p, G_k[p]>,
whose gradient is G_k whatever the parameters are, so megatron-core's schedule,
DDP, the optimizer wrappers, clipping (epsilon 0) and the scheduler all run as
in training while the gradients equal the ones handed to optax.

Used in-process (world of one) and as a torchrun script (DP = 2 with the
distributed optimizer, or TP = 2): ``python -m torch.distributed.run
--nproc-per-node 2 optax_worker.py CASE.pt OUT_DIR --tensor 2``. No JAX here.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.distributed import finalize_model_grads
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer import TransformerConfig

from bridgec.runtime.init import shard
from bridgec.runtime.model import build_model, unwrap
from bridgec.runtime.optax_optim import build_optax_optimizer
from bridgec.runtime.parallel import Layout
from bridgec.runtime.schedules import CountScheduler, warmup_cosine_decay_schedule
from bridgec.runtime.step import train_step


@attrs.frozen(kw_only=True)
class Shape:
    """A Llama-style model: RMSNorm, SwiGLU, GQA, qk-norm, untied output, no biases."""

    num_layers: int = 2
    hidden: int = 32
    heads: int = 4
    groups: int = 2
    head_dim: int = 8
    ffn: int = 48
    vocab: int = 64


SHAPE = Shape()


def full_shapes(shape: Shape) -> dict[str, tuple[int, ...]]:
    """Global name -> TP=1 shape, for the local layer spec with qk_layernorm."""
    e, d = shape.hidden, shape.head_dim
    shapes = {"embedding.word_embeddings.weight": (shape.vocab, e)}
    for i in range(shape.num_layers):
        layer = f"decoder.layers.{i}."
        shapes.update(
            {
                layer + "input_layernorm.weight": (e,),
                layer + "self_attention.linear_proj.weight": (e, shape.heads * d),
                layer + "self_attention.linear_qkv.weight": ((shape.heads + 2 * shape.groups) * d, e),
                layer + "self_attention.q_layernorm.weight": (d,),
                layer + "self_attention.k_layernorm.weight": (d,),
                layer + "pre_mlp_layernorm.weight": (e,),
                layer + "mlp.linear_fc1.weight": (2 * shape.ffn, e),
                layer + "mlp.linear_fc2.weight": (e, shape.ffn),
            }
        )
    shapes["decoder.final_layernorm.weight"] = (e,)
    shapes["output_layer.weight"] = (shape.vocab, e)
    return shapes


def leaf_sizes(name: str, shape: Shape) -> tuple[int, ...]:
    """How many elements of a fused Megatron parameter each of its MaxText leaves holds (in the parameter table's MaxText leaf order)."""
    e, d = shape.hidden, shape.head_dim
    if name.endswith("linear_qkv.weight"):
        return (e * shape.heads * d, e * shape.groups * d, e * shape.groups * d)
    if name.endswith("linear_fc1.weight"):
        return (e * shape.ffn, e * shape.ffn)
    return (math.prod(full_shapes(shape)[name]),)


def _provider(shape: Shape, tensor: int, dtype: str) -> Any:
    def build(pre_process: bool, post_process: bool, vp_stage: int | None = None) -> GPTModel:
        config = TransformerConfig(
            num_layers=shape.num_layers,
            hidden_size=shape.hidden,
            num_attention_heads=shape.heads,
            num_query_groups=shape.groups,
            kv_channels=shape.head_dim,
            ffn_hidden_size=shape.ffn,
            normalization="RMSNorm",
            gated_linear_unit=True,
            activation_func=F.silu,
            bias_activation_fusion=False,
            add_bias_linear=False,
            qk_layernorm=True,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            tensor_model_parallel_size=tensor,
            params_dtype=torch.float32,
            pipeline_dtype=torch.float32,
            bf16=dtype == "bf16",
            use_cpu_initialization=True,
            finalize_model_grads_func=finalize_model_grads,
        )
        return GPTModel(
            config=config,
            transformer_layer_spec=get_gpt_layer_local_spec(qk_layernorm=True, normalization="RMSNorm"),
            vocab_size=shape.vocab,
            max_sequence_length=8,
            pre_process=pre_process,
            post_process=post_process,
            share_embeddings_and_output_weights=False,
            position_embedding_type="rope",
        )

    return build


def layout_of_this_rank() -> Layout:
    """The Layout of an already-initialised megatron parallel state (CPU)."""
    return Layout(
        device=torch.device("cpu"),
        world_size=torch.distributed.get_world_size(),
        rank=torch.distributed.get_rank(),
        tensor=parallel_state.get_tensor_model_parallel_world_size(),
        pipeline=1,
        virtual_pipeline=None,
        context=1,
        expert=1,
        data=parallel_state.get_data_parallel_world_size(),
        tensor_rank=parallel_state.get_tensor_model_parallel_rank(),
        pipeline_rank=0,
        context_rank=0,
        data_rank=parallel_state.get_data_parallel_rank(),
        expert_rank=parallel_state.get_expert_model_parallel_rank(),
    )


def _named(model: list[Any]) -> dict[str, torch.nn.Parameter]:
    # One pipeline stage holds every layer: the local names are the global ones.
    return {name: param for chunk in model for name, param in unwrap(chunk).named_parameters()}


def _linear_loss(grads: dict[str, torch.Tensor], data_iterator: Any, model: Any) -> tuple[torch.Tensor, Any]:
    params = _named([model])
    output = sum(((params[name] * grad.to(params[name].dtype)).float().sum() for name, grad in grads.items()))

    def loss_func(output_tensor: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return output_tensor, {"lm loss": torch.stack([output_tensor.detach(), torch.ones_like(output_tensor)])}

    return output, loss_func


def _tp_summed(name: str, tensor: int) -> int:
    """finalize_model_grads sums q/k-layernorm gradients over TP ranks (each rank norms its own heads).

    With injected gradients every rank holds the whole G, so each injects G / TP.
    """
    return tensor if ("q_layernorm" in name or "k_layernorm" in name) else 1


def run(case: dict[str, Any], *, dtype: str, distributed_optimizer: bool) -> float:
    """Train len(grads) steps from the case's initial parameters; return max |ours - optax| over this rank's shards.

    Ours are the fp32 main parameters (the model's own for fp32, the optimizer's copies for bf16).
    """
    layout = layout_of_this_rank()
    settings = case["settings"]
    model = build_model(
        _provider(SHAPE, layout.tensor, dtype),
        layout=layout,
        init_scheme="megatron",
        seed=0,
        init_std=0.02,
        num_layers=SHAPE.num_layers,
        tied_output=False,
        dtype=dtype,
        distributed_optimizer=distributed_optimizer,
    )
    params = _named(model)
    assert sorted(params) == sorted(case["init"]), "the test's parameter table does not match megatron-core's"

    def cut(name: str, full: torch.Tensor) -> torch.Tensor:
        param = params[name]
        if not getattr(param, "tensor_model_parallel", False):
            assert tuple(param.shape) == tuple(full.shape), name
            return full
        dim, stride = param.partition_dim, param.partition_stride
        assert param.shape[dim] * layout.tensor == full.shape[dim], name
        return shard(full, axis=dim, stride=stride, tensor_parallel=layout.tensor, tensor_rank=layout.tensor_rank)

    with torch.no_grad():
        for name, param in params.items():
            param.copy_(cut(name, case["init"][name]).to(param.dtype))
    optimizer = build_optax_optimizer(
        model,
        lr=settings["peak_lr"],
        beta1=settings["b1"],
        beta2=settings["b2"],
        eps=settings["eps"],
        eps_root=settings["eps_root"],
        weight_decay=settings["weight_decay"],
        decay_exclude=settings["patterns"],
        gated_mlp=True,
        scan_layers=False,
        tied_output=False,
        path_style="linen",
        dtype=dtype,
        distributed_optimizer=distributed_optimizer,
    )
    schedule = warmup_cosine_decay_schedule(
        0.0, settings["peak_lr"], settings["warmup"], len(case["grads"]), end_value=settings["end_lr"]
    )
    scheduler = CountScheduler(optimizer, schedule, weight_decay=settings["weight_decay"])
    for grads in case["grads"]:
        local = {name: cut(name, grad) / _tp_summed(name, layout.tensor) for name, grad in grads.items()}
        result = train_step(
            functools.partial(_linear_loss, local),
            [None],
            model,
            optimizer,
            scheduler,
            num_microbatches=1,
            micro_batch_size=1,
            seq_length=8,
            clip_grad=settings["clip"],
            clip_epsilon=0.0,
        )
        assert not result.skipped
    main = main_parameters(optimizer)
    return max(
        float((main.get(param, param).detach().float() - cut(name, case["expected"][name])).abs().max())
        for name, param in params.items()
    )


def clipped_gradients(grads: dict[str, torch.Tensor], *, max_norm: float, epsilon: float) -> dict[str, torch.Tensor]:
    """Load ``grads`` as main grads, then megatron's global norm and train_step's clip_gradients (world of one)."""
    from bridgec.runtime.step import clip_gradients

    layout = layout_of_this_rank()
    model = build_model(
        _provider(SHAPE, 1, "fp32"),
        layout=layout,
        init_scheme="megatron",
        seed=0,
        init_std=0.02,
        num_layers=SHAPE.num_layers,
        tied_output=False,
        dtype="fp32",
        distributed_optimizer=False,
    )
    optimizer = build_optax_optimizer(
        model,
        lr=1.0,
        beta1=0.9,
        beta2=0.95,
        eps=1e-8,
        eps_root=0.0,
        weight_decay=0.0,
        decay_exclude=[],
        gated_mlp=True,
        scan_layers=False,
        tied_output=False,
        path_style="linen",
        dtype="fp32",
        distributed_optimizer=False,
    )
    params = _named(model)
    for name, param in params.items():
        param.main_grad.copy_(grads[name])
    optimizer.prepare_grads()
    norm = float(optimizer.get_grad_norm())
    clip_gradients(optimizer, max_norm=max_norm, grad_norm=norm, epsilon=epsilon)
    return {name: param.grad.detach().clone() for name, param in params.items()}


def main_parameters(optimizer: Any) -> dict[torch.nn.Parameter, torch.Tensor]:
    """Model parameter -> its fp32 main copy, for bf16 runs (Float16OptimizerWithFloat16Params)."""
    out = {}
    for sub in optimizer.chained_optimizers:
        pairs = zip(getattr(sub, "float16_groups", []), getattr(sub, "fp32_from_float16_groups", []))
        for model_group, main_group in pairs:
            out.update(zip(model_group, main_group))
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("case")
    parser.add_argument("out")
    parser.add_argument("--tensor", type=int, default=1)
    parser.add_argument("--distributed-optimizer", action="store_true")
    args = parser.parse_args(argv)
    from bridgec.runtime import cpu_compat
    from bridgec.runtime.parallel import initialize, shutdown

    cpu_compat.apply()
    layout = initialize(
        device="cpu",
        tensor=args.tensor,
        pipeline=1,
        virtual_pipeline=None,
        context=1,
        expert=1,
        seed=0,
        timeout_minutes=2,
    )
    worst = run(torch.load(args.case), dtype="fp32", distributed_optimizer=args.distributed_optimizer)
    Path(args.out, f"rank{layout.rank}.json").write_text(json.dumps({"max_diff": worst}))
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
