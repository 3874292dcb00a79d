"""[data] document_masking: a sequence of several documents trains as if each document ran alone.

The real path: bridgec data build (byte tokenizer) -> build_splits(document_masking=True) (megatron-core's
GPTDataset with reset_position_ids / reset_attention_mask / create_attention_mask) -> next_batch -> a
megatron-core GPTModel with local (CPU) attention. The packed sample's summed token losses and its
gradients must equal the sums over its documents run one by one with plain causal attention and
positions from 0, to 1e-6 in fp32. In-process at DP1 (one gloo rank).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer import TransformerConfig

from bridgec.runtime.data import MockData, TokenIds, build_splits, next_batch
from bridgec.runtime.data_build import BYTE_EOD, BYTE_VOCAB_SIZE, build_indexed_dataset

SEQ = 48


def _model() -> GPTModel:
    torch.manual_seed(3)
    config = TransformerConfig(
        num_layers=2, hidden_size=32, num_attention_heads=4, use_cpu_initialization=True,
        hidden_dropout=0.0, attention_dropout=0.0,
    )  # fmt: skip
    return GPTModel(
        config=config, transformer_layer_spec=get_gpt_layer_local_spec(), vocab_size=BYTE_VOCAB_SIZE,
        max_sequence_length=SEQ, position_embedding_type="rope",
    )  # fmt: skip


def _splits(tmp_path: Path, document_masking: bool):  # noqa: ANN202 - Splits
    tmp_path.mkdir(parents=True, exist_ok=True)
    docs = ["short one", "a somewhat longer second document", "third", "fourth document here", "5th"] * 6
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    build_indexed_dataset(tmp_path / "docs.jsonl", tmp_path / "ds")
    from bridgec.runtime.data import IndexedData

    return build_splits(
        IndexedData(prefixes=(str(tmp_path / "ds"),), weights=(1.0,), split=(1.0, 0.0, 0.0)),
        seq_length=SEQ, seed=1, token_ids=TokenIds(vocab_size=BYTE_VOCAB_SIZE, eod=BYTE_EOD), eod_mask_loss=True,
        num_samples=(4, 0, 0), cache_dir=str(tmp_path / "cache"), document_masking=document_masking,
    )  # fmt: skip


def _loss_and_grads(model: GPTModel, tokens, positions, mask, labels, loss_mask) -> tuple[torch.Tensor, dict]:  # noqa: ANN001
    model.zero_grad()
    losses = model(tokens, positions, mask, labels=labels)
    total = (losses.float() * loss_mask).sum()
    total.backward()
    return total.detach(), {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def test_a_packed_sample_equals_its_documents_run_alone(megatron_world1: None, tmp_path: Path) -> None:
    splits = _splits(tmp_path, document_masking=True)
    raw = {k: v.unsqueeze(0) for k, v in splits.train[0].items() if isinstance(v, torch.Tensor)}
    batch = next_batch(iter([raw]), pre_process=True, post_process=True, device=torch.device("cpu"))
    tokens = batch.tokens[0]
    ends = [int(i) + 1 for i in torch.nonzero(tokens == BYTE_EOD).flatten()]
    bounds = list(zip([0, *ends], [*ends, SEQ]))
    bounds = [(a, b) for a, b in bounds if b > a]
    assert len(bounds) >= 3, "the sample should hold several documents"
    # megatron-core's own masks: positions restart after every eod, attention blocks are per document.
    assert batch.attention_mask is not None and batch.attention_mask.shape == (1, 1, SEQ, SEQ)
    for a, b in bounds:
        assert batch.position_ids[0, a:b].tolist() == list(range(b - a))

    model = _model()
    packed_loss, packed_grads = _loss_and_grads(
        model, batch.tokens, batch.position_ids, batch.attention_mask, batch.labels, batch.loss_mask
    )
    alone_loss, alone_grads = torch.zeros(()), {name: torch.zeros_like(g) for name, g in packed_grads.items()}
    for a, b in bounds:
        positions = torch.arange(b - a).unsqueeze(0)
        loss, grads = _loss_and_grads(
            model, batch.tokens[:, a:b], positions, None, batch.labels[:, a:b], batch.loss_mask[:, a:b]
        )
        alone_loss += loss
        for name, grad in grads.items():
            alone_grads[name] += grad
    assert torch.allclose(packed_loss, alone_loss, rtol=0, atol=1e-6 * max(1.0, float(alone_loss.abs()))), (
        float(packed_loss),
        float(alone_loss),
    )
    # Relative to each tensor's largest gradient: the two sides sum the same terms in a different order.
    worst = {
        name: float((packed_grads[name] - alone_grads[name]).abs().max() / alone_grads[name].abs().max())
        for name in packed_grads
    }
    assert max(worst.values()) <= 1e-6, worst

    # Without document masking the same sample attends across documents: the losses differ (the test can fail).
    plain = _splits(tmp_path / "plain", document_masking=False).train[0]
    assert "attention_mask" not in plain
    crossing, _ = _loss_and_grads(
        model, batch.tokens, torch.arange(SEQ).unsqueeze(0), None, batch.labels, batch.loss_mask
    )
    assert abs(float(crossing) - float(alone_loss)) > 1e-3


def test_mock_data_gets_document_masks_too(megatron_world1: None, tmp_path: Path) -> None:
    splits = build_splits(
        MockData(), seq_length=SEQ, seed=1, token_ids=TokenIds(vocab_size=BYTE_VOCAB_SIZE, eod=BYTE_EOD),
        eod_mask_loss=False, num_samples=(2, 1, 0), cache_dir=str(tmp_path), document_masking=True,
    )  # fmt: skip
    sample = splits.train[0]
    assert sample["attention_mask"].shape == (1, SEQ, SEQ)
    ends = torch.nonzero(sample["tokens"] == BYTE_EOD).flatten()
    if len(ends):
        first = int(ends[0]) + 1
        assert sample["position_ids"][first] == 0 and bool(sample["attention_mask"][0, first, 0])
