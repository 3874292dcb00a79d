"""The README's demo: the quickstart example compiles and its loss falls clearly under torchrun."""

from __future__ import annotations

from pathlib import Path

from megatron.core.datasets.indexed_dataset import IndexedDataset

from bridgec.compiler.cli import main as bridgec
from bridgec.compiler.explain import parameter_counts
from bridgec.compiler.load import load
from tests.e2e.harness import copy_example, launch

DATA = Path(__file__).parent / "data" / "tiny.jsonl"


def test_quickstart_trains(tmp_path: Path) -> None:
    spec = copy_example("quickstart", tmp_path)
    assert bridgec(["compile", str(spec), "-o", str(tmp_path / "run.py")]) == 0
    result = launch(tmp_path / "run.py", 2, torchrun=True)  # the README's demo, launched as it says
    assert result.returncode == 0, result.explain()
    losses = result.train_losses("out/quickstart")
    assert len(losses) == 40
    assert losses[-1] < losses[0] - 2.0, losses  # mock sequences count upwards: learnable
    valid = [m["loss"] for m in result.metrics("out/quickstart") if m["kind"] == "valid"]
    assert len(valid) == 2 and valid[1] < valid[0]
    assert "validation loss" in result.stdout


INDEXED = """
[run]
name = "text"
seed = 3

[launch]
procs_per_node = 2

[model]
num_layers = 2
hidden_size = 64
num_attention_heads = 4
vocab_size = 257
seq_length = 64
normalization = "rmsnorm"
activation = "swiglu"
position_embedding = "rope"
add_bias_linear = false

[batch]
global_batch_size = 8
micro_batch_size = 2

[train]
iters = 30
log_interval = 10

[optimizer]
lr = 3e-3

[scheduler]
warmup_iters = 3

[data]
kind = "indexed"

[[data.sources]]
prefix = "data/tiny"
"""


def test_indexed_text_trains(tmp_path: Path) -> None:
    """`bridgec data build` over a small text, then training on it: the byte-level loss falls clearly."""
    assert bridgec(["data", "build", "--input", str(DATA), "--output", str(tmp_path / "data" / "tiny")]) == 0
    (tmp_path / "spec.toml").write_text(INDEXED)
    assert bridgec(["compile", str(tmp_path / "spec.toml"), "-o", str(tmp_path / "run.py")]) == 0
    result = launch(tmp_path / "run.py", 2)
    assert result.returncode == 0, result.explain()
    losses = result.train_losses("out/text")
    assert losses[-1] < losses[0] - 1.5, losses

    # The start banner and the end summary, printed once (by the rank that logs).
    index = IndexedDataset(str(tmp_path / "data" / "tiny"))
    assert len(index) == 120  # megatron's 98/1/1 split gives the first 118 documents to training
    tokens = int(index.sequence_lengths[:118].sum())
    banner = [
        f"run text (spec.toml): {parameter_counts(load(INDEXED, 'spec.toml').spec).total:,} parameters",
        "  layout   2 process(es) on cpu: tensor 1, pipeline 1, context 1, data 2",
        f"  data     tiny: 118 documents, {tokens:,} tokens in the training split; this run reads 240 sequences x 64 "
        f"= 15,360 tokens, {15_360 / tokens:.2f} epochs",
        "  steps    1-30, 8 sequences each",
        "  outputs  metrics out/text/spec.metrics.jsonl",
    ]
    assert "\n".join(banner) + "\n" in result.stdout and result.stdout.count("run text (spec.toml)") == 1
    assert "this launch: steps 1-30 in " in result.stdout
    assert result.stdout.rstrip().endswith(f"; last loss {losses[-1]:.6f}")
