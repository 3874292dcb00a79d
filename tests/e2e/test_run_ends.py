"""How compiled runs end when they stop early, resume past their end, or find their data changed since compiling.

The scripts are compiled with the real ``bridgec compile`` and launched by
``tests/e2e/forkrun.py`` (the environment torchrun gives its workers, one warm
Python for all launches), each check asserting the exit code and the words.
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest

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


@attrs.frozen(kw_only=True)
class Ended:
    """The launches of each run, in order."""

    finished: list[LaunchResult]
    rebuilt: list[LaunchResult]
    rebuilt_prefix: Path
    mixed: list[LaunchResult]


@pytest.fixture(scope="module")
def ended(tmp_path_factory: pytest.TempPathFactory) -> Ended:
    """Every run of this module, compiled and launched together (one forkrun start for the first launches)."""
    tmp_path = tmp_path_factory.mktemp("ends")
    # A finished run, launched again below with fewer iters.
    finished = compile_to(
        tmp_path / "finished",
        _spec("iters = 3\neval_interval = 3\neval_iters = 1", ADAM + '[checkpoint]\ndir = "ckpt"\nresume = true'),
    ).parent
    # Data rebuilt after compiling, with too few documents for the default split.
    rebuilt = tmp_path / "rebuilt"
    rebuilt.mkdir()
    _documents(rebuilt, 100)
    compile_to(rebuilt, _spec("iters = 2", ADAM + INDEXED))
    _documents(rebuilt, 5)
    # optax semantics in bf16 (megatron-core's mixed-precision optimizer) with every parameter decaying.
    mixed = compile_to(
        tmp_path / "mixed",
        _spec("iters = 2\nexit_interval = 1", OPTAX_BF16 + '[checkpoint]\ndir = "ckpt"\nresume = true'),
    ).parent
    first = run_fork(
        [Job(folder=finished, procs=1), Job(folder=rebuilt, procs=1), Job(folder=mixed, procs=1, launches=2)]
    )
    compile_to(
        finished,
        _spec("iters = 2\neval_interval = 2\neval_iters = 1", ADAM + '[checkpoint]\ndir = "ckpt"\nresume = true'),
    )
    again = run_fork([Job(folder=finished, procs=1)])[finished]
    return Ended(
        finished=first[finished] + again,
        rebuilt=first[rebuilt],
        rebuilt_prefix=rebuilt / "data" / "docs",
        mixed=first[mixed],
    )


def test_an_early_stop_without_a_checkpoint_folder_is_refused_before_launch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every launch would stop at step 1 with nothing saved and start over: a requeue-on-75 loop."""
    (tmp_path / "spec.toml").write_text(_spec("iters = 3\nexit_interval = 1"), encoding="utf-8")
    assert bridgec(["compile", str(tmp_path / "spec.toml"), "-o", str(tmp_path / "run.py")]) == 2
    assert (
        "$.train.exit_interval = 1 stops the run to resume it later, but checkpoint.dir is not set: nothing is "
        "saved, and each launch would start over from step 0 and stop again"
    ) in capsys.readouterr().err
    assert not (tmp_path / "run.py").exists()


def test_data_changed_since_compiling_exits_5_with_megatrons_arithmetic(ended: Ended) -> None:
    """5 documents and the default split: megatron-core used to loop forever on the empty validation split."""
    [bad_data] = ended.rebuilt
    prefix = ended.rebuilt_prefix
    assert bad_data.codes == {0: 5}, _output(bad_data)
    assert (
        f"bridgec: bad data:\n  {prefix} (5 documents): split [98.0, 1.0, 1.0] gives the validation "
        "split documents round(0.98 x 5) = 5 to round(0.99 x 5) = 5, which hold no tokens, and megatron-core "
        "would loop forever building it"
    ) in _output(bad_data)
    assert "Traceback" not in _output(bad_data)


def test_a_checkpoint_past_train_iters_trains_nothing_and_says_so(ended: Ended) -> None:
    first, again = ended.finished
    assert first.codes == {0: 0} and again.codes == {0: 0}, _output(first) + _output(again)
    assert "the checkpoint is at step 3, past train.iters = 2; nothing to train" in _output(again)
    assert "step      3 (past train.iters = 2) | validation loss" in _output(again)
    assert "3/2" not in _output(again)


def test_optax_semantics_in_bf16_resume_from_their_own_checkpoint(ended: Ended) -> None:
    """Every parameter decays, so the "not decayed" group was empty; megatron-core could not load it (exit 6)."""
    stop, resume = ended.mixed
    assert stop.codes == {0: 75} and resume.codes == {0: 0}, _output(stop) + _output(resume)
    assert "resume: continuing from step 1" in _output(resume)
