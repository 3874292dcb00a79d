"""[data] kind = "sft" end to end: bridgec data build --sft, compile, a 2-process (DP2) run with validation.

The chat fixture (tests/fixtures/chat) rendered with a Qwen-style template over a tiny local tokenizer,
blended 3:1 with the same records built with every token in the loss; the held-out split is evaluated
over its loss-mask (assistant) tokens only.
"""

from __future__ import annotations

import math
from pathlib import Path

from bridgec.compiler.cli import main as bridgec
from tests.e2e.harness import compile_to, launch
from tests.runtime.test_sft_build import RECORDS, _tokenizer

SPEC = """
[run]
name = "sft"

[launch]
procs_per_node = 2

[model]
num_layers = 2
hidden_size = 64
num_attention_heads = 4
vocab_size = 640
seq_length = 128

[batch]
global_batch_size = 4
micro_batch_size = 1

[train]
iters = 4
eval_interval = 2
eval_iters = 1

[optimizer]
lr = 1e-3

[data]
kind = "sft"
tokenizer = "tok"
split = [75.0, 25.0, 0.0]

[[data.sources]]
prefix = "data/chat"
weight = 3.0

[[data.sources]]
prefix = "data/last"
weight = 1.0
"""


def test_an_sft_spec_trains_and_validates_on_assistant_tokens(tmp_path: Path) -> None:
    _tokenizer(tmp_path / "tok", "qwen")
    (tmp_path / "chat.jsonl").write_text(RECORDS.read_text(encoding="utf-8") * 4, encoding="utf-8")
    for name, mode in (("chat", "assistant"), ("last", "full")):
        code = bridgec(
            ["data", "build", "--sft", "--input", str(tmp_path / "chat.jsonl"), "--tokenizer", str(tmp_path / "tok"),
             "--output", str(tmp_path / "data" / name), "--max-length", "129", "--overlong", "truncate",
             "--loss-mode", mode]
        )  # fmt: skip
        assert code == 0
    result = launch(compile_to(tmp_path, SPEC), 2)
    assert result.returncode == 0, result.explain()
    assert "SFT samples" in result.stdout
    assert "(weight share 75.0%: 12 of the 16 sequences)" in result.stdout  # the blend, in the start banner
    assert "(weight share 25.0%: 4 of the 16 sequences)" in result.stdout
    records = result.metrics("out/sft")
    train = [r["loss"] for r in records if r["kind"] == "train"]
    valid = [r["loss"] for r in records if r["kind"] == "valid"]
    assert len(train) == 4 and len(valid) == 2 and all(math.isfinite(x) for x in train + valid)
