"""The megatron-core GPTModel that matches tests/runtime/flax_llama.py, and helpers to run it on CPU.

Shared by the in-process tests (TP=1, gloo world of one) and the torchrun
scripts beside this file (TP=2, PP=2). No JAX here.
"""

from __future__ import annotations

import functools
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from megatron.core.distributed import finalize_model_grads
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer import TransformerConfig

from bridgec.runtime import cpu_compat
from bridgec.runtime.loss import masked_token_loss
from bridgec.runtime.norms import zero_centered_block
from bridgec.runtime.optim import Adam, OptimizerSettings, ScheduleSettings
from bridgec.runtime.parallel import Layout, initialize

CASE_CONFIG = "case.json"


def read_case(folder: Path) -> tuple[dict, dict]:
    """(the Flax LlamaConfig as a dict, the rest of case.json)."""
    data = json.loads((Path(folder) / CASE_CONFIG).read_text())
    return data.pop("config"), data


def padded_vocab(vocab_size: int, tensor_parallel: int, divisible_by: int = 64) -> int:
    """megatron's rule: pad to a multiple of divisible_by x TP (64 keeps the test vocab whole at TP=2)."""
    multiple = divisible_by * tensor_parallel
    return -(-vocab_size // multiple) * multiple


def transformer_config(
    config: dict, *, tensor: int, pipeline: int, query_scaling: str, dtype: str = "fp32", expert: int = 1
) -> TransformerConfig:
    bf16 = dtype == "bf16"
    qk_norm = config.get("qk_norm", False)
    gelu = config.get("activation", "silu") == "gelu"
    gpt3 = config.get("block") == "gpt3"
    experts = config.get("num_experts") or None
    return TransformerConfig(
        bf16=bf16,
        num_layers=config["num_layers"],
        hidden_size=config["emb_dim"],
        num_attention_heads=config["num_heads"],
        num_query_groups=config["num_kv_heads"],
        kv_channels=config["head_dim"],
        ffn_hidden_size=config["mlp_dim"],
        normalization="LayerNorm" if gpt3 else "RMSNorm",
        layernorm_epsilon=config["epsilon"],
        gated_linear_unit=not gpt3,
        activation_func=functools.partial(F.gelu, approximate="tanh") if gelu else F.silu,
        qk_layernorm=qk_norm,
        bias_activation_fusion=False,
        add_bias_linear=gpt3,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        # Under qk norms MaxText scales scores by 1/sqrt(head_dim) at run time, as megatron's default does.
        # So does gpt3 (its query kernel is not pre-scaled).
        softmax_scale=1.0 if query_scaling == "keep" and not qk_norm and not gpt3 else None,
        # mixtral: megatron-core's MoE with its default routing (top-k of the logits, then softmax over the k;
        # dropless; no auxiliary loss), which is MaxText's. Only the forward runs under TP here: megatron-core
        # trains MoE with TP only under sequence parallelism, which its local (CPU) norms refuse.
        num_moe_experts=experts,
        moe_router_topk=config.get("experts_per_token", 2) if experts else 2,
        tensor_model_parallel_size=tensor,
        pipeline_model_parallel_size=pipeline,
        # Expert weights of an expert-parallel model are not reduced over data-parallel ranks (allreduce=False).
        expert_model_parallel_size=expert,
        pipeline_dtype=torch.bfloat16 if bf16 else torch.float32,
        params_dtype=torch.float32,
        use_cpu_initialization=True,
        calculate_per_token_loss=True,
        batch_p2p_sync=False,
        finalize_model_grads_func=finalize_model_grads,
    )


def provider(
    config: dict, *, tensor: int, pipeline: int, query_scaling: str, dtype: str = "fp32", expert: int = 1
) -> Any:
    """(pre_process, post_process, vp_stage) -> GPTModel, as a generated script's model_provider."""

    gpt3 = config.get("block") == "gpt3"

    def build(pre_process: bool, post_process: bool, vp_stage: int | None = None) -> GPTModel:
        transformer = transformer_config(
            config, tensor=tensor, pipeline=pipeline, query_scaling=query_scaling, dtype=dtype, expert=expert
        )
        layer = get_gpt_layer_local_spec(
            num_experts=config.get("num_experts") or None,
            normalization="LayerNorm" if gpt3 else "RMSNorm",
            qk_layernorm=config.get("qk_norm", False),
        )
        return GPTModel(
            config=transformer,
            # gpt3's LayerNorm applies 1 + scale (bridgec's zero-centred norm on the local layers).
            transformer_layer_spec=zero_centered_block(layer, config=transformer, vp_stage=vp_stage) if gpt3 else layer,
            vocab_size=padded_vocab(config["vocab_size"], tensor),
            # gpt3: as many learned positions as MaxText's trainable_position_size.
            max_sequence_length=config["trainable_position_size"] if gpt3 else 64,
            pre_process=pre_process,
            post_process=post_process,
            share_embeddings_and_output_weights=config["tied"],
            position_embedding_type="learned_absolute" if gpt3 else "rope",
            rotary_base=int(config["rope_theta"]),
            rope_scaling=config["rope_type"] == "llama3.1",
            rope_scaling_factor=8.0,
            vp_stage=vp_stage,
        )

    return build


def adam_settings(data: dict, *, dtype: str, distributed: bool) -> OptimizerSettings:
    """Megatron's Adam with the JAX case's hyper-parameters (case.json), no clipping."""
    lr, betas = data.get("lr", 1e-3), data.get("betas", (0.9, 0.999))
    return OptimizerSettings(
        rule=Adam(beta1=betas[0], beta2=betas[1], eps=data.get("eps", 1e-8)),
        lr=lr,
        min_lr=lr,
        weight_decay=data.get("weight_decay", 0.0),
        dtype=dtype,
        distributed_optimizer=distributed,
    )


def constant_schedule(lr: float) -> ScheduleSettings:
    return ScheduleSettings(
        warmup_iters=0,
        warmup_init_lr=lr,
        decay="constant",
        decay_iters=100,
        wsd_decay_iters=None,
        wsd_decay_style="linear",
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_single_process() -> Layout:
    """gloo world of one, megatron's groups at TP=PP=1 (for in-process tests)."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    cpu_compat.apply()
    return start(tensor=1, pipeline=1)


def start(*, tensor: int, pipeline: int, expert: int = 1) -> Layout:
    cpu_compat.apply()
    return initialize(
        device="cpu",
        tensor=tensor,
        pipeline=pipeline,
        virtual_pipeline=None,
        context=1,
        expert=expert,
        seed=1234,
        timeout_minutes=2,
    )


@torch.no_grad()
def logits(chunk: GPTModel, tokens: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary logits [batch, seq, padded vocab] of a single-stage chunk (gathered over TP)."""
    chunk.eval()
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    local = chunk(tokens, positions, None)
    return gather_vocab(local)


def gather_vocab(local: torch.Tensor) -> torch.Tensor:
    from megatron.core import parallel_state

    group = parallel_state.get_tensor_model_parallel_group()
    size = torch.distributed.get_world_size(group)
    if size == 1:
        return local
    parts = [torch.empty_like(local) for _ in range(size)]
    torch.distributed.all_gather(parts, local.contiguous(), group=group)
    return torch.cat(parts, dim=-1)


def forward_step(data_iterator: Iterator[dict[str, torch.Tensor]], model: Any) -> Any:
    """Next-token cross entropy, token-weighted (runtime.loss pattern 2), for runtime.step.train_step."""
    batch = next(data_iterator)
    tokens, labels = batch["tokens"], batch["labels"]
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    output = model(tokens, positions, None, labels=labels)
    return output, functools.partial(masked_token_loss, torch.ones_like(labels, dtype=torch.float32))


_parallel: dict[str, dict] = {}


def run_parallel(cases: Path, out: Path, *arguments: str) -> dict[int, dict]:
    """Run parallel_import.py on 2 processes (TP=2 then PP=2, or as ``arguments`` say) once per session and set
    of arguments; per-rank results."""
    key = " ".join(arguments) or "results"
    if key not in _parallel:
        from tests import warm

        script = Path(__file__).with_name("parallel_import.py")
        command = [str(script), str(cases), str(out), *arguments]
        done = warm.torchrun(2, command, cwd=script.parent)
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
        _parallel[key] = {rank: json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)}
    return _parallel[key]


def single_process_layout() -> Layout:
    """The Layout of the single-process world (tests/conftest.py's megatron_world1): every size 1, every rank 0."""
    import attrs

    values: dict[str, Any] = {"device": torch.device("cpu"), "virtual_pipeline": None}
    for field in attrs.fields(Layout):
        if field.name not in values:
            values[field.name] = 0 if field.name == "rank" or field.name.endswith("_rank") else 1
    return Layout(**values)
