"""[hooks] callbacks end to end: event order and steps at data 2 x pipeline 2, user_state across a stop and resume.

One folder is launched twice: the first launch's FailOnce callback raises at the end
of step 3 (after the checkpoint of step 2), which ends the run with exit 9; the second
resumes from step 2 and finishes. A second folder runs the same 4 steps without
FailOnce. Every rank's callbacks record each event (tests/e2e/callbacks/recorder.py)
and save their user_state at the end; the resumed run's must equal the uninterrupted
run's bit for bit (step list, Python random draws, a float64 tensor of losses).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch

from tests.e2e.harness import compile_to
from tests.e2e.sweep import Job, LaunchResult, run_fork

CALLBACKS = Path(__file__).parent / "callbacks" / "recorder.py"
WORLD = 4

SPEC = """
[run]
name = "callbacks"
output_dir = "out"

[launch]
procs_per_node = 4

[model]
num_layers = 2
hidden_size = 32
num_attention_heads = 2
vocab_size = 128
seq_length = 16

[parallel]
pipeline = 2

[batch]
global_batch_size = 4
micro_batch_size = 1

[train]
iters = 4
eval_interval = 2
eval_iters = 1

[optimizer]
lr = 1e-3

[checkpoint]
dir = "ckpt"
save_interval = 2
resume = true

[hooks]
callbacks = [{callbacks}]
"""


def _folder(root: Path, name: str, callbacks: str) -> Path:
    folder = root / name
    folder.mkdir()
    shutil.copy(CALLBACKS, folder / "recorder.py")
    compile_to(folder, SPEC.format(callbacks=callbacks))
    return folder


@attrs.frozen(kw_only=True)
class Runs:
    failed: LaunchResult
    resumed: LaunchResult
    straight: LaunchResult
    stopped_folder: Path
    straight_folder: Path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("callbacks")
    stopped = _folder(root, "stopped", '"recorder.py:Recorder", "recorder.py:FailOnce"')
    straight = _folder(root, "straight", '"recorder.py:Recorder"')
    results = run_fork([Job(folder=stopped, procs=WORLD, launches=2), Job(folder=straight, procs=WORLD)])
    failed, resumed = results[stopped]
    [uninterrupted] = results[straight]
    return Runs(
        failed=failed, resumed=resumed, straight=uninterrupted, stopped_folder=stopped, straight_folder=straight
    )


def _events(folder: Path, rank: int) -> list[dict[str, Any]]:
    lines = (folder / f"events_rank{rank}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _output(result: LaunchResult) -> str:
    return "".join(out + err for out, err in result.outputs.values())


def _steps(first: int, last: int, *, saves: tuple[int, ...], evals: tuple[int, ...]) -> list[tuple[str, int]]:
    """The events of steps first..last, as the loop fires them."""
    events: list[tuple[str, int]] = []
    for step in range(first, last + 1):
        events += [("on_train_step_start", step), ("on_train_step_end", step)]
        if step in evals:
            events += [("on_eval_start", step), ("on_eval_end", step)]
        if step in saves:
            events.append(("on_checkpoint_save", step))
    return events


def test_events_fire_in_order_with_their_steps_on_every_rank(runs: Runs) -> None:
    assert runs.straight.codes == dict.fromkeys(range(WORLD), 0), _output(runs.straight)
    expected = [
        ("on_train_start", 0),
        *_steps(1, 4, saves=(2, 4), evals=(2, 4)),
        ("on_train_end", 4),
    ]
    losses = set()
    for rank in range(WORLD):
        events = _events(runs.straight_folder, rank)
        assert [(e["event"], e["step"]) for e in events] == expected, rank
        ends = [e for e in events if e["event"] == "on_train_step_end"]
        # The step's reduced loss, grad norm and learning rate are the same on every rank (pipeline stages too).
        losses.add(tuple((e["loss"], e["grad_norm"], e["learning_rate"]) for e in ends))
        assert all(e["timers"] == ["data", "forward_backward", "optimizer", "step"] for e in ends)
        assert [e["checkpoint"] for e in events if e["event"] == "on_checkpoint_save"] == [
            "iter_0000002",
            "iter_0000004",
        ]
        # Ranks 2 and 3 are the last pipeline stage; rank 2 (its first data rank) logs the loss.
        assert {e["holds_loss"] for e in events} == {rank == 2}
    assert len(losses) == 1


def test_a_raising_callback_stops_after_the_last_good_checkpoint_and_names_itself(runs: Runs) -> None:
    assert runs.failed.codes == dict.fromkeys(range(WORLD), 9), _output(runs.failed)
    output = _output(runs.failed)
    assert (
        "callback recorder.py:FailOnce raised in on_train_step_end (step 3): ValueError: tokens per second fell "
        "at step 3\n  Traceback (your code, most recent call last):\n"
    ) in output
    assert "in on_train_step_end\n" in output and "in check_throughput\n" in output
    assert "the last good checkpoint, step 2 (" in output and "), is untouched;" in output
    assert "Traceback (most recent call last)" not in output  # none of bridgec's own frames
    assert sorted(p.name for p in (runs.stopped_folder / "ckpt").iterdir() if p.name.startswith("iter_")) == [
        "iter_0000002",
        "iter_0000004",  # written by the resumed launch
    ]
    for rank in range(WORLD):
        events = [(e["event"], e["step"]) for e in _events(runs.stopped_folder, rank)]
        assert events == [
            ("on_train_start", 0),
            *_steps(1, 2, saves=(2,), evals=(2,)),
            ("on_train_step_start", 3),
            ("on_train_step_end", 3),  # the Recorder, listed before FailOnce, ran first
            ("on_exception", 3),  # the Recorder hears of FailOnce's exception; FailOnce does not
            ("on_checkpoint_load", 2),
            ("on_train_start", 2),
            *_steps(3, 4, saves=(4,), evals=(4,)),
            ("on_train_end", 4),
        ], rank


def test_user_state_survives_the_stop_and_resume_bit_exactly(runs: Runs) -> None:
    assert runs.resumed.codes == dict.fromkeys(range(WORLD), 0), _output(runs.resumed)
    restored = [e for e in _events(runs.stopped_folder, 0) if e["event"] == "on_checkpoint_load"]
    assert restored == [
        {"event": "on_checkpoint_load", "step": 2, "holds_loss": False, "restored": ["draws", "losses", "steps"]}
    ]
    for rank in range(WORLD):
        resumed = torch.load(runs.stopped_folder / f"user_state_rank{rank}.pt")
        straight = torch.load(runs.straight_folder / f"user_state_rank{rank}.pt")
        assert resumed["steps"] == straight["steps"] == [1, 2, 3, 4]
        assert resumed["draws"] == straight["draws"]
        assert resumed["losses"].dtype == torch.float64 and torch.equal(resumed["losses"], straight["losses"])
