"""[data] packing: SFT samples packed into a sequence train exactly as the same samples one per sequence.

The real path: bridgec data build --sft (a tiny BPE tokenizer) -> build_sft_splits(packing on and off)
-> next_batch -> a megatron-core GPTModel with local (CPU) attention. The masked token-loss sum of
the packed batch and its gradients must equal those of the same samples unpacked, to 1e-6 in fp32:
in-process at DP1 (one gloo rank), and at TP2, PP2 and DP2 in one 2-process launch
(tests/runtime/packing_layout_worker.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer import TransformerConfig

from bridgec.runtime.data import next_batch
from bridgec.runtime.sft_build import SftSettings, build_sft_dataset
from bridgec.runtime.sft_data import SftData, build_sft_splits
from bridgec.runtime.sft_pack import first_fit_decreasing
from tests import tiny_tokenizers

SEQ = 64
VOCAB = 640


@pytest.fixture(scope="module")
def sft_prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pack")
    tokenizer = tiny_tokenizers.huggingface_bpe(folder / "tok")
    pairs = [{"prompt": f"question {i}?", "completion": f"answer {i}" + " more words" * (i % 5)} for i in range(9)]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    build_sft_dataset(
        [folder / "pairs.jsonl"], folder / "sft", tokenizer=tokenizer, settings=SftSettings(loss_mode="completion")
    )
    return folder / "sft"


def test_first_fit_decreasing_fills_the_first_sequence_with_room() -> None:
    # positions = tokens - 1: sizes 4, 7, 2, 5, 3, 2 taken as 7, 5, 4, 3, 2, 2 into 10 -> [7, 3], [5, 4], [2, 2]
    packing = first_fit_decreasing([5, 8, 3, 6, 4, 3], 10)
    assert packing.sequences == ((1, 4), (3, 0), (2, 5))
    assert (packing.used, packing.capacity) == (23, 30)
    assert packing.efficiency == pytest.approx(23 / 30)
    with pytest.raises(ValueError, match="a sample of 12 tokens does not fit seq_length 10"):
        first_fit_decreasing([12], 10)


def _model() -> GPTModel:
    torch.manual_seed(5)
    config = TransformerConfig(
        num_layers=2, hidden_size=32, num_attention_heads=4, use_cpu_initialization=True,
        hidden_dropout=0.0, attention_dropout=0.0,
    )  # fmt: skip
    return GPTModel(
        config=config, transformer_layer_spec=get_gpt_layer_local_spec(), vocab_size=VOCAB,
        max_sequence_length=SEQ, position_embedding_type="rope",
    )  # fmt: skip


def _batch(dataset, count: int):  # noqa: ANN001, ANN202 - SftDataset -> Batch
    items = [dataset[i] for i in range(count)]
    raw = {key: torch.stack([item[key] for item in items]) for key in items[0]}
    return next_batch(iter([raw]), pre_process=True, post_process=True, device=torch.device("cpu"))


def _loss_and_grads(model: GPTModel, batch, *, mask: bool = True) -> tuple[torch.Tensor, dict]:  # noqa: ANN001
    model.zero_grad()
    attention = batch.attention_mask if mask else None
    losses = model(batch.tokens, batch.position_ids, attention, labels=batch.labels)
    total = (losses.float() * batch.loss_mask).sum()
    total.backward()
    return total.detach(), {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def test_a_packed_batch_equals_its_samples_unpacked(megatron_world1: None, sft_prefix: Path) -> None:
    common = {"seq_length": SEQ, "seed": 1, "pad": 0}
    packed, _ = build_sft_splits(SftData(prefixes=(str(sft_prefix),), weights=(1.0,), split=(1.0, 0.0, 0.0), packing=True), **common, num_samples=(4, 0))  # fmt: skip
    sequences = len(packed.sequences)
    assert sequences < 9, "the nine samples should share sequences"
    assert sorted(s for seq in packed.sequences for s in seq) == list(range(9))
    plain, _ = build_sft_splits(
        SftData(prefixes=(str(sft_prefix),), weights=(1.0,), split=(1.0, 0.0, 0.0)), **common, num_samples=(9, 0)
    )
    plain.order = np.arange(9)  # every sample once, in order

    packed.order = np.arange(sequences)  # every packed sequence once
    packed_batch, plain_batch = _batch(packed, sequences), _batch(plain, 9)
    assert plain_batch.attention_mask is None and packed_batch.attention_mask is not None
    # Positions restart at each sample; the masked tokens are the same ones.
    first = packed.sequences[0]
    assert len(first) > 1
    second_start = int(packed.tokens.sequence_lengths[first[0]]) - 1
    assert packed_batch.position_ids[0, : second_start + 2].tolist() == [*range(second_start), 0, 1]
    assert bool(packed_batch.attention_mask[0, 0, second_start, second_start - 1])  # no look back across samples
    assert float(packed_batch.loss_mask.sum()) == float(plain_batch.loss_mask.sum()) > 0

    model = _model()
    packed_loss, packed_grads = _loss_and_grads(model, packed_batch)
    plain_loss, plain_grads = _loss_and_grads(model, plain_batch)
    assert abs(float(packed_loss) - float(plain_loss)) <= 1e-6 * max(1.0, abs(float(plain_loss))), (
        float(packed_loss),
        float(plain_loss),
    )
    # Relative to each tensor's largest gradient: the two sides sum the same terms in a different order.
    worst = {
        name: float((packed_grads[name] - plain_grads[name]).abs().max() / plain_grads[name].abs().max())
        for name in packed_grads
    }
    assert max(worst.values()) <= 1e-6, worst

    # Without the block-diagonal mask the packed samples attend to each other: the loss differs (the test can fail).
    crossing, _ = _loss_and_grads(model, packed_batch, mask=False)
    assert abs(float(crossing) - float(plain_loss)) > 1e-3


def test_data_build_and_explain_report_the_packing_efficiency(
    sft_prefix: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bridgec.compiler.cli import main
    from tests.compiler.conftest import spec_toml

    records, tokenizer = sft_prefix.parent / "pairs.jsonl", sft_prefix.parent / "tok"
    build = [
        "data",
        "build",
        "--sft",
        "--input",
        str(records),
        "--tokenizer",
        str(tokenizer),
        "--loss-mode",
        "completion",
    ]
    assert main([*build, "--output", str(tmp_path / "data" / "sft"), "--pack", str(SEQ)]) == 0
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    index = IndexedDataset(str(tmp_path / "data" / "sft"))  # its lengths are a view of its mmap: keep it alive
    sizes = np.array(index.sequence_lengths) - 1
    packing = first_fit_decreasing(sizes + 1, SEQ)
    expected = f"packing efficiency {packing.efficiency:.1%} (sample positions {int(sizes.sum()):,} / all {len(packing.sequences) * SEQ:,})"
    assert expected in capsys.readouterr().out

    # A sequence too short for --max-length: refused before anything is written.
    assert main([*build, "--output", str(tmp_path / "no" / "sft"), "--pack", "8", "--max-length", "20"]) == 2
    assert "give --max-length 9 or less" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()

    spec = spec_toml(
        model={"vocab_size": VOCAB, "seq_length": SEQ},
        data={"kind": "sft", "packing": True, "split": [1.0, 0.0, 0.0], "sources": [{"prefix": "data/sft"}]},
    )
    (tmp_path / "spec.toml").write_text(spec)
    assert main(["explain", str(tmp_path / "spec.toml")]) == 0
    out = capsys.readouterr().out
    assert f"9 training samples packed into {len(packing.sequences)} sequences of {SEQ}: {expected}" in out


def test_thd_offsets_describe_the_same_blocks_as_the_mask(sft_prefix: Path) -> None:
    """Transformer Engine's packed sequences (attention = "thd") carry cu_seqlens instead of the mask: the blocks
    they bound are exactly the mask's diagonal blocks, the other fields are the same, and next_batch makes
    megatron-core's THD PackedSeqParams of them."""
    common = {"seq_length": SEQ, "seed": 1, "pad": 0, "num_samples": (4, 0)}
    split = (1.0, 0.0, 0.0)
    masked, _ = build_sft_splits(SftData(prefixes=(str(sft_prefix),), weights=(1.0,), split=split, packing=True), **common)  # fmt: skip
    thd, _ = build_sft_splits(
        SftData(prefixes=(str(sft_prefix),), weights=(1.0,), split=split, packing=True, attention="thd"), **common
    )
    for index in range(len(masked)):
        with_mask, with_offsets = masked[index], thd[index]
        assert "attention_mask" not in with_offsets and "cu_seqlens" not in with_mask
        for key in ("tokens", "labels", "loss_mask", "position_ids"):
            assert with_offsets[key].equal(with_mask[key]), key
        offsets = with_offsets["cu_seqlens"].tolist()
        assert offsets[0] == 0 and offsets[-1] == SEQ and offsets == sorted(set(offsets))
        blocks = torch.zeros(SEQ, SEQ, dtype=torch.bool)
        for start, end in zip(offsets[:-1], offsets[1:]):
            blocks[start:end, start:end] = True
        allowed = blocks & torch.ones(SEQ, SEQ, dtype=torch.bool).tril()
        assert (~with_mask["attention_mask"][0]).equal(allowed)
        # Each block's positions restart at 0, as RoPE over cu_seqlens counts them.
        assert all(with_offsets["position_ids"][start] == 0 for start in offsets[:-1])

    batch = next_batch(iter([{k: v.unsqueeze(0) for k, v in thd[0].items()}]), pre_process=True, post_process=True, device=torch.device("cpu"))  # fmt: skip
    params = batch.packed_seq_params
    offsets = thd[0]["cu_seqlens"]
    assert batch.attention_mask is None and params.qkv_format == "thd"
    assert params.cu_seqlens_q.dtype == torch.int32 and params.cu_seqlens_q.equal(offsets)
    assert params.cu_seqlens_kv.equal(offsets)
    assert params.max_seqlen_q == params.max_seqlen_kv == int((offsets[1:] - offsets[:-1]).max())


def test_packed_equals_unpacked_at_tp2_pp2_and_dp2(sft_prefix: Path, tmp_path: Path) -> None:
    """One 2-process launch (tests/runtime/packing_layout_worker.py) checks the equality above at TP2, PP2 and DP2."""
    from tests import warm

    worker = ["-m", "tests.runtime.packing_layout_worker", str(sft_prefix), str(tmp_path)]
    done = warm.torchrun(2, worker, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    for rank, report in enumerate(ranks):
        for layout in ("tp2", "pp2", "dp2"):
            found = report[layout]
            assert found["grad_rel"] <= 1e-6 and found["tensors"] > 0, (rank, layout, found)
            assert found["loss_diff"] <= 1e-6 * max(1.0, found["loss"]), (rank, layout, found)
    assert ranks[1]["pp2"]["loss"] > 0 and ranks[0]["pp2"]["loss"] == 0  # the loss lives on the last stage
    assert ranks[0]["dp2"]["sequences"] + ranks[1]["dp2"]["sequences"] == ranks[0]["tp2"]["sequences"]
    # Data parallelism summed the two halves: the same loss as all the samples on one tensor-parallel pair.
    assert abs(ranks[0]["dp2"]["loss"] - ranks[0]["tp2"]["loss"]) <= 1e-5 * ranks[0]["tp2"]["loss"]
