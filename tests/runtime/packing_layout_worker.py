"""torchrun worker (2 processes) of tests/runtime/test_sft_packing.py: packed == unpacked at TP2, PP2 and DP2.

    torchrun --standalone --nproc-per-node 2 -m tests.runtime.packing_layout_worker PREFIX OUT

For each layout in turn (megatron's groups rebuilt between them), the same SFT samples go through a
megatron-core GPTModel (local attention, fp32) twice: packed several to a sequence with the block-diagonal
mask, and one per sequence. The masked token-loss sum and every gradient this rank holds must agree.
TP2: both ranks see every sample, each holds half of every tensor-parallel weight. PP2: stage 0 sends its
hidden states to stage 1, which sends back their gradient; the mask travels with each stage's batch.
DP2: each rank takes every other packed sequence and exactly the samples in them unpacked, and the loss
and gradients are summed over both ranks as data parallelism sums them. Writes OUT/rank<r>.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed
from megatron.core.transformer import TransformerConfig

from bridgec.runtime import cpu_compat
from bridgec.runtime.data import Batch, next_batch
from bridgec.runtime.sft_data import SftData, SftDataset, build_sft_splits

SEQ = 64
VOCAB = 640


def _model(pipeline: int) -> GPTModel:
    model_parallel_cuda_manual_seed(5)  # the same full weights at every layout, each rank its shard
    torch.manual_seed(5)
    config = TransformerConfig(
        num_layers=2, hidden_size=32, num_attention_heads=4, use_cpu_initialization=True, hidden_dropout=0.0,
        attention_dropout=0.0, tensor_model_parallel_size=parallel_state.get_tensor_model_parallel_world_size(),
        pipeline_model_parallel_size=pipeline, pipeline_dtype=torch.float32,
    )  # fmt: skip
    return GPTModel(
        config=config, transformer_layer_spec=get_gpt_layer_local_spec(), vocab_size=VOCAB,
        max_sequence_length=SEQ, position_embedding_type="rope",
        pre_process=parallel_state.is_pipeline_first_stage(), post_process=parallel_state.is_pipeline_last_stage(),
    )  # fmt: skip


def _batch(dataset: SftDataset, indices: list[int]) -> Batch:
    items = [dataset[i] for i in indices]
    raw = {key: torch.stack([item[key] for item in items]) for key in items[0]}
    return next_batch(iter([raw]), pre_process=True, post_process=True, device=torch.device("cpu"))


def _loss_and_grads(model: GPTModel, batch: Batch) -> tuple[float, dict[str, torch.Tensor]]:
    """This rank's share: the masked loss sum (last stage; 0 elsewhere) and the gradients of its parameters."""
    model.zero_grad()
    first, last = parallel_state.is_pipeline_first_stage(), parallel_state.is_pipeline_last_stage()
    shape = (batch.tokens.shape[1], batch.tokens.shape[0], model.config.hidden_size)
    received = None
    if not first:
        received = torch.empty(shape)
        dist.recv(received, src=parallel_state.get_pipeline_model_parallel_prev_rank())
        received.requires_grad_(True)
        model.set_input_tensor(received)
    output = model(batch.tokens, batch.position_ids, batch.attention_mask, labels=batch.labels if last else None)
    total = 0.0
    if last:
        loss = (output.float() * batch.loss_mask).sum()
        loss.backward()
        total = float(loss)
    else:
        dist.send(output.detach().contiguous(), dst=parallel_state.get_pipeline_model_parallel_next_rank())
        gradient = torch.empty(shape)
        dist.recv(gradient, src=parallel_state.get_pipeline_model_parallel_next_rank())
        output.backward(gradient)
    if received is not None:
        dist.send(received.grad.contiguous(), dst=parallel_state.get_pipeline_model_parallel_prev_rank())
    return total, {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def _compare(packed: tuple[float, dict], plain: tuple[float, dict]) -> dict[str, float]:
    (packed_loss, packed_grads), (plain_loss, plain_grads) = packed, plain
    assert sorted(packed_grads) == sorted(plain_grads) and packed_grads
    worst = max(
        float((packed_grads[n] - plain_grads[n]).abs().max() / plain_grads[n].abs().max().clamp_min(1e-30))
        for n in packed_grads
    )
    return {
        "loss": plain_loss,
        "loss_diff": abs(packed_loss - plain_loss),
        "grad_rel": worst,
        "tensors": len(packed_grads),
    }


def _all_reduced(result: tuple[float, dict]) -> tuple[float, dict]:
    loss, grads = result
    total = torch.tensor([loss], dtype=torch.float64)
    dist.all_reduce(total)
    for grad in grads.values():
        dist.all_reduce(grad)
    return float(total), grads


def main() -> None:
    prefix, out = sys.argv[1], Path(sys.argv[2])
    cpu_compat.apply()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    source = {"prefixes": (prefix,), "weights": (1.0,), "split": (1.0, 0.0, 0.0)}
    common = {"seq_length": SEQ, "seed": 1, "pad": 0}
    packed, _ = build_sft_splits(SftData(**source, packing=True), **common, num_samples=(4, 0))
    plain, _ = build_sft_splits(SftData(**source), **common, num_samples=(len(packed.tokens), 0))
    packed.order, plain.order = np.arange(len(packed.sequences)), np.arange(len(plain.sequences))
    everything = list(range(len(packed.sequences)))
    report = {}
    for layout, (tensor, pipeline) in {"tp2": (2, 1), "pp2": (1, 2), "dp2": (1, 1)}.items():
        parallel_state.initialize_model_parallel(tensor, pipeline)
        model = _model(pipeline)
        mine = everything[rank::2] if layout == "dp2" else everything
        samples = [sample for index in mine for sample in packed.sequences[index]]
        results = [_loss_and_grads(model, _batch(packed, mine)), _loss_and_grads(model, _batch(plain, samples))]
        if layout == "dp2":
            results = [_all_reduced(result) for result in results]
        report[layout] = {**_compare(*results), "sequences": len(mine), "samples": len(samples)}
        parallel_state.destroy_model_parallel()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(report, indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
