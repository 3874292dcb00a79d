"""SdpaAttention against megatron-core's local attention: the same GPTModel with each, the same weights and batch.

Used in-process at TP1 (tests/runtime/test_attention.py) and in the two-rank worker at TP2 and PP2
(tests/runtime/two_rank_worker.py). Every case returns the largest differences of the mean token loss and of any
parameter's gradient (relative to its largest entry, at least 1) between the two models (fp32, CPU).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import torch
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer import TransformerConfig

from bridgec.runtime.attention import SdpaAttention, sdpa_layer

SEQ = 16
BATCH = 2
VOCAB = 64
DOCUMENT_ENDS = (5, 11)
"""Each sequence holds three documents: [0, 5), [5, 11), [11, 16)."""


def config(**overrides: object) -> TransformerConfig:
    """2 layers, 4 query heads in 2 groups (grouped-query attention), the current layout's parallel sizes.

    Weights drawn with std 0.3 (not 0.02) so attention is far from uniform: masks and scales then matter.
    """
    settings: dict[str, object] = dict(
        num_layers=2, hidden_size=32, num_attention_heads=4, num_query_groups=2, use_cpu_initialization=True,
        hidden_dropout=0.0, attention_dropout=0.0, init_method_std=0.3,
        tensor_model_parallel_size=parallel_state.get_tensor_model_parallel_world_size(),
        pipeline_model_parallel_size=parallel_state.get_pipeline_model_parallel_world_size(),
        pipeline_dtype=torch.float32, batch_p2p_sync=False,
    )  # fmt: skip
    settings.update(overrides)
    return TransformerConfig(**settings)


def models(cfg: TransformerConfig) -> tuple[GPTModel, GPTModel]:
    """(local, sdpa): this stage's chunk with each core attention, the sdpa one holding the local one's weights."""
    pre = parallel_state.is_pipeline_first_stage()
    post = parallel_state.is_pipeline_last_stage()

    def build(spec: object) -> GPTModel:
        return GPTModel(
            config=cfg, transformer_layer_spec=spec, vocab_size=VOCAB, max_sequence_length=SEQ,
            pre_process=pre, post_process=post, position_embedding_type="rope",
        )  # fmt: skip

    torch.manual_seed(5)
    local = build(get_gpt_layer_local_spec())
    sdpa = build(sdpa_layer(get_gpt_layer_local_spec()))
    assert any(isinstance(module, SdpaAttention) for module in sdpa.modules()), "the swap reached no layer"
    sdpa.load_state_dict(local.state_dict())
    return local, sdpa


def document_mask() -> torch.Tensor:
    """megatron's convention (True = masked): block-diagonal causal over DOCUMENT_ENDS, [1, 1, SEQ, SEQ]."""
    doc = torch.zeros(SEQ, dtype=torch.long)
    for end in DOCUMENT_ENDS:
        doc[end:] += 1
    allowed = (doc[:, None] == doc[None, :]) & torch.ones(SEQ, SEQ, dtype=torch.bool).tril()
    return (~allowed).view(1, 1, SEQ, SEQ)


def batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=generator)
    return {
        "tokens": tokens[:, :-1],
        "labels": tokens[:, 1:],
        "position_ids": torch.arange(SEQ).repeat(BATCH, 1),
    }


def _loss(losses: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    mean = losses.float().mean()  # the token mean keeps gradients near 1, where fp32 round-off is 1e-7
    return mean, {"loss": mean.detach()}


def _forward_step(mask: torch.Tensor | None, data: Iterator[dict], model: GPTModel) -> tuple:
    item = next(data)
    output = model(item["tokens"], item["position_ids"], mask, labels=item["labels"])
    return output, _loss


def _run(model: GPTModel, mask: torch.Tensor | None) -> tuple[float, dict[str, torch.Tensor]]:
    """One forward and backward through megatron-core's schedule: (mean token loss on the last stage, gradients)."""
    model.zero_grad()
    forward_data = get_forward_backward_func()(
        forward_step_func=functools.partial(_forward_step, mask),
        data_iterator=iter([batch()]),
        model=[model],
        num_microbatches=1,
        seq_length=SEQ,
        micro_batch_size=BATCH,
        forward_only=False,
    )
    loss = float(forward_data[0]["loss"]) if forward_data else 0.0
    return loss, {name: param.grad.detach().clone() for name, param in model.named_parameters()}


def difference(cfg: TransformerConfig, mask: torch.Tensor | None) -> dict[str, float]:
    """Largest |local - sdpa| of the loss and of every gradient on this rank."""
    local, sdpa = models(cfg)
    local_loss, local_grads = _run(local, mask)
    sdpa_loss, sdpa_grads = _run(sdpa, mask)
    grads = max(
        float((local_grads[name] - sdpa_grads[name]).abs().max() / local_grads[name].abs().max().clamp(min=1.0))
        for name in local_grads
    )
    return {"loss": abs(local_loss - sdpa_loss), "grad": grads, "loss_value": local_loss}


def cases() -> dict[str, dict[str, float]]:
    """Causal, documents (block-diagonal mask) and a softmax scale other than 1/sqrt(head_dim), all with GQA."""
    return {
        "causal": difference(config(), None),
        "documents": difference(config(), document_mask()),
        "softmax_scale": difference(config(softmax_scale=1.0), document_mask()),
    }
