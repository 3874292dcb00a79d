"""How compiled runs end when they stop early, resume past their end, or find their data changed since compiling.

The scripts are compiled with the real ``bridgec compile`` and launched by
``tests/e2e/forkrun.py`` (the environment torchrun gives its workers, one warm
Python for all launches), each check asserting the exit code and the words.
"""

from __future__ import annotations

import json
from pathlib import Path

from bridgec.compiler.cli import main as bridgec
from tests.e2e.harness import compile_to
from tests.e2e.sweep import Job, LaunchResult, run_fork

SPEC = """
[run]
name = "ends"
output_dir = "out"

[model]
num_layers = 1
hidden_size = 32
num_attention_heads = 2
vocab_size = 257
seq_length = 16

[batch]
global_batch_size = 2

[train]
{train}

{tables}
"""

ADAM = """
[optimizer]
lr = 1e-3
"""

INDEXED = """
[data]
kind = "indexed"

[[data.sources]]
prefix = "data/docs"
"""


OPTAX_BF16 = """
[optimizer]
lr = 1e-3
semantics = "optax"

[scheduler]
style = "maxtext"

[scheduler.maxtext]
kind = "cosine"

[precision]
dtype = "bf16"
"""


def _spec(train: str, tables: str = ADAM) -> str:
    return SPEC.format(train=train, tables=tables)


def _documents(folder: Path, count: int) -> None:
    """``bridgec data build`` of ``count`` short documents into folder/data/docs (replacing what is there)."""
    source = folder / "docs.jsonl"
    source.write_text("".join(json.dumps({"text": f"document {i} " * 4}) + "\n" for i in range(count)))
    assert bridgec(["data", "build", "--input", str(source), "--output", str(folder / "data" / "docs")]) == 0


def _output(result: LaunchResult) -> str:
    return "".join(out + err for out, err in result.outputs.values())


def test_runs_end_with_the_documented_code_and_words(tmp_path: Path) -> None:
    # An early stop without a checkpoint folder cannot be resumed, and says so.
    no_checkpoint = compile_to(tmp_path / "stop", _spec("iters = 3\nexit_interval = 1")).parent
    # A finished run relaunched with fewer iters: nothing to train, and no "step 3/2".
    finished = compile_to(tmp_path / "finished", _spec("iters = 3\neval_interval = 3\neval_iters = 1",
                                                       ADAM + '[checkpoint]\ndir = "ckpt"\nresume = true')).parent
    # Data rebuilt after compiling with too few documents for the default split: exit 5 with the numbers,
    # where megatron-core would loop forever.
    rebuilt = tmp_path / "rebuilt"
    rebuilt.mkdir()
    _documents(rebuilt, 100)
    compile_to(rebuilt, _spec("iters = 2", ADAM + INDEXED))
    _documents(rebuilt, 5)
    # optax semantics in bf16 (megatron-core's mixed-precision optimizer), where every parameter decays: its
    # checkpoint used to hold an empty parameter group that megatron-core could not load back (exit 6).
    mixed = compile_to(tmp_path / "mixed", _spec(
        "iters = 2\nexit_interval = 1", OPTAX_BF16 + '[checkpoint]\ndir = "ckpt"\nresume = true')).parent
    first = run_fork([Job(folder=no_checkpoint, procs=1), Job(folder=finished, procs=1),
                      Job(folder=rebuilt, procs=1), Job(folder=mixed, procs=1, launches=2)])

    stop, resume = first[mixed]
    assert stop.codes == {0: 75} and resume.codes == {0: 0}, _output(stop) + _output(resume)
    assert "resume: continuing from step 1" in _output(resume)

    [stopped] = first[no_checkpoint]
    assert stopped.codes == {0: 75}, _output(stopped)
    assert ("stopping after step 1: exit_interval 1 reached; no [checkpoint] dir, so nothing was saved: launching "
            "again starts over from step 0") in _output(stopped)

    [bad_data] = first[rebuilt]
    assert bad_data.codes == {0: 5}, _output(bad_data)
    prefix = rebuilt / "data" / "docs"
    assert (f"bridgec [rank 0]: bad data:\n  {prefix} (5 documents): split [98.0, 1.0, 1.0] gives the validation "
            "split documents round(0.98 x 5) = 5 to round(0.99 x 5) = 5, which hold no tokens, and megatron-core "
            "would loop forever building it") in _output(bad_data)
    assert "Traceback" not in _output(bad_data)

    assert first[finished][0].codes == {0: 0}, _output(first[finished][0])
    compile_to(finished, _spec("iters = 2\neval_interval = 2\neval_iters = 1",
                               ADAM + '[checkpoint]\ndir = "ckpt"\nresume = true'))
    [again] = run_fork([Job(folder=finished, procs=1)])[finished]
    assert again.codes == {0: 0}, _output(again)
    assert "the checkpoint is at step 3, past train.iters = 2; nothing to train" in _output(again)
    assert "step      3 (past train.iters = 2) | validation loss" in _output(again)
    assert "3/2" not in _output(again)
