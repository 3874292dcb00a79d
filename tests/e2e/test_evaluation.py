"""Evaluation reads the validation samples the spec says: each evaluation the next eval_iters global batches,
as Megatron-LM's validation iterator does, and a resume continues from the position in the checkpoint.

One spec, launched twice (exit_interval stops the first launch after step 3 with a checkpoint). Its
forward_step hook writes the first tokens of every sample it sees in evaluation; the test compares them
with the validation split the script itself builds (its own ``datasets()``).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from tests.e2e.harness import compile_to, launch

SPEC = """
[run]
name = "evaluation"

[model]
num_layers = 1
hidden_size = 32
num_attention_heads = 2
vocab_size = 128
seq_length = 16

[batch]
global_batch_size = 4
micro_batch_size = 2

[train]
iters = 6
eval_interval = 2
eval_iters = 1
exit_interval = 3

[optimizer]
lr = 1e-3

[hooks]
file = "recording.py"
forward_step = "forward_step"

[checkpoint]
dir = "checkpoints"
resume = true
"""

HOOKS = '''
"""The standard forward step, writing the first tokens of each sample it evaluates to evaluated.jsonl."""

import functools
import json
from pathlib import Path

from bridgec.runtime.data import next_batch
from bridgec.runtime.loss import masked_token_loss
from bridgec.runtime.model import unwrap


def forward_step(state, data_iterator, model, return_schedule_plan=False):
    chunk = unwrap(model)
    batch = next_batch(data_iterator, pre_process=chunk.pre_process, post_process=chunk.post_process,
                       device=state.layout.device)
    if not chunk.training:
        with (Path(__file__).parent / "evaluated.jsonl").open("a") as file:
            for sample in batch.tokens[:, :4].tolist():
                file.write(json.dumps({"step": state.step, "tokens": sample}) + "\\n")
    output = model(batch.tokens, batch.position_ids, None, labels=batch.labels)
    return output, functools.partial(masked_token_loss, batch.loss_mask)
'''


def _validation_tokens(script: Path, count: int) -> list[list[int]]:
    """The first tokens of the first ``count`` validation samples, from the script's own datasets() (built from
    its cache)."""
    spec = importlib.util.spec_from_file_location("evaluation_run", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    valid = module.datasets().valid
    return [valid[index]["tokens"][:4].tolist() for index in range(count)]


def test_successive_evaluations_read_successive_validation_samples_across_a_resume(tmp_path: Path) -> None:
    (tmp_path / "recording.py").write_text(HOOKS, encoding="utf-8")
    script = compile_to(tmp_path, SPEC)
    first = launch(script, 1)
    assert first.returncode != 0 and "stopping after step 3" in first.stdout, first.explain()  # exit 75
    second = launch(script, 1)
    assert second.returncode == 0, second.explain()
    assert "resume: continuing from step 3" in second.stdout
    seen: dict[int, list[list[int]]] = {}
    for line in (tmp_path / "evaluated.jsonl").read_text().splitlines():
        record = json.loads(line)
        seen.setdefault(record["step"], []).append(record["tokens"])
    valid = _validation_tokens(script, 12)
    # Evaluations after steps 2, 4 and 6 (state.step is the step count then) read windows 0, 1 and 2 of 4 samples.
    assert seen == {2: valid[0:4], 4: valid[4:8], 6: valid[8:12]}
    assert valid[0:4] != valid[4:8] != valid[8:12]
