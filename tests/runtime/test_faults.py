"""Faults: SIGTERM, non-finite steps (skip and stop) and a rank that dies, under torchrun on CPU.

Each fault comes from a hooks file, as a user would inject one: a forward_step
that computes what the generated one does and, at one step, sends a signal,
multiplies the loss by nan or kills its own rank. The spec names it in [hooks]
and ``bridgec compile`` checks it (tests/runtime/launch.py).
"""

from __future__ import annotations

import math
import signal
from pathlib import Path

import psutil
import torch

from bridgec.runtime import checkpoint_files as files
from bridgec.runtime.entry import peer_failure
from bridgec.runtime.errors import ExitCode
from bridgec.runtime.loop import truncate_metrics
from tests.runtime import launch as runs

_GENERATED_STEP = '''\
import functools
import os
import signal

from bridgec.runtime.data import next_batch
from bridgec.runtime.loss import masked_token_loss
from bridgec.runtime.model import unwrap


def generated_forward_step(state, data_iterator, model):
    """What the compiler emits for this spec (per-token loss)."""
    chunk = unwrap(model)
    batch = next_batch(data_iterator, pre_process=chunk.pre_process, post_process=chunk.post_process,
                       device=state.layout.device)
    output = model(batch.tokens, batch.position_ids, None, labels=batch.labels)
    return output, functools.partial(masked_token_loss, batch.loss_mask)
'''

SIGTERM_IN_STEP_3 = (
    _GENERATED_STEP
    + '''

def forward_step(state, data_iterator, model, return_schedule_plan=False):
    """Rank 0 sends itself SIGTERM during step 3 (a preemption notice); the step goes on."""
    if state.step + 1 == 3 and state.layout.rank == 0:
        os.kill(os.getpid(), signal.SIGTERM)
    return generated_forward_step(state, data_iterator, model)
'''
)

NAN_IN_STEP_3 = (
    _GENERATED_STEP
    + '''

def forward_step(state, data_iterator, model, return_schedule_plan=False):
    """The training loss of step 3 is multiplied by nan."""
    output, loss = generated_forward_step(state, data_iterator, model)
    if state.step + 1 == 3 and unwrap(model).post_process and model.training:
        output = output * float("nan")
    return output, loss
'''
)

RANK_1_DIES_IN_STEP_3 = (
    _GENERATED_STEP
    + '''

def forward_step(state, data_iterator, model, return_schedule_plan=False):
    """Rank 1 kills itself (SIGKILL, no chance to clean up) during step 3."""
    if state.step + 1 == 3 and state.layout.rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return generated_forward_step(state, data_iterator, model)
'''
)


STUCK_IN_STEP_2 = (
    _GENERATED_STEP
    + '''
import time
from pathlib import Path


def forward_step(state, data_iterator, model, return_schedule_plan=False):
    """Step 2 never ends on any rank (like megatron-core counting epochs of an empty split), once it says so."""
    if state.step + 1 == 2:
        Path(f"stuck_{state.layout.rank}").touch()
        while True:
            time.sleep(0.1)
    return generated_forward_step(state, data_iterator, model)
'''
)


def test_workers_end_when_torchrun_is_killed(tmp_path: Path) -> None:
    """SIGKILL to torchrun alone (it cannot stop its workers then): no worker survives it."""
    folder = runs.prepare(tmp_path, runs.RunSpec(procs=2, hooks=STUCK_IN_STEP_2))
    process = runs.start(folder)
    for rank in (0, 1):
        runs.wait_for(folder / f"stuck_{rank}", process)
    workers = psutil.Process(process.pid).children(recursive=True)
    assert len(workers) >= 2
    process.send_signal(signal.SIGKILL)  # torchrun only: the workers run in sessions of their own
    process.communicate()
    _, alive = psutil.wait_procs(workers, timeout=runs.HANG_GUARD_SECONDS)
    for worker in alive:
        worker.kill()  # leave nothing behind, whatever the outcome
    assert alive == [], f"workers {[worker.pid for worker in alive]} outlived torchrun"


def test_sigterm_finishes_the_step_saves_and_the_next_launch_resumes_exactly(tmp_path: Path) -> None:
    """Tensor parallel 2: rank 0 gets SIGTERM during step 3; both ranks stop after it, saved, with exit 75."""
    straight = runs.prepare(tmp_path / "straight", runs.RunSpec(procs=2, tensor=2))
    reference = runs.launch(straight)
    assert reference.returncode == 0, reference.explain()

    folder = runs.prepare(tmp_path / "preempted", runs.RunSpec(procs=2, tensor=2, resume=True, hooks=SIGTERM_IN_STEP_3))
    stopped = runs.launch(folder)
    assert runs.failed_with(stopped, ExitCode.STOPPED_TO_RESUME), stopped.explain()
    assert "stopping after step 3: received SIGTERM; checkpoint saved; launch again to resume" in stopped.output
    assert files.read_manifest(files.find_latest(folder / "ckpt")).step == 3  # type: ignore[arg-type]

    resumed = runs.launch(folder)  # the same script: the requeued job
    assert resumed.returncode == 0, resumed.explain()
    assert "resume: continuing from step 3 (24 samples consumed)" in resumed.output
    assert runs.losses(folder) == runs.losses(straight)  # bit-identical
    # Neither torch's checkpoint deprecations on resume nor megatron's CUDA advice on CPU tensor parallelism.
    assert "Warning" not in reference.output + resumed.output, resumed.output


def test_nonfinite_skip_counts_the_step_and_leaves_the_optimizer_untouched(tmp_path: Path) -> None:
    folder = runs.prepare(tmp_path, runs.RunSpec(iters=4, save_interval=1, on_nonfinite="skip", hooks=NAN_IN_STEP_3))
    result = runs.launch(folder)
    assert result.returncode == 0, result.explain()
    records = {r["step"]: r for r in runs.metrics(folder) if r["kind"] == "train"}
    assert records[3]["skipped"] and records[3]["loss"] == "nan" and records[3]["skipped_total"] == 1
    assert not records[4]["skipped"] and records[4]["skipped_total"] == 1 and math.isfinite(records[4]["loss"])

    # Checkpoints before and after the skipped step: model and optimizer state bit-identical.
    before = runs.read_checkpoint(folder / "ckpt" / "iter_0000002")
    after = runs.read_checkpoint(folder / "ckpt" / "iter_0000003")
    tensors = [key for key, value in before.items() if isinstance(value, torch.Tensor)]
    assert any(key.startswith("optimizer.state.exp_avg.") for key in tensors)
    assert any(key.startswith("decoder.layers.") for key in tensors)
    assert [key for key in tensors if not torch.equal(before[key], after[key])] == []
    assert before["scheduler"]["num_steps"] == after["scheduler"]["num_steps"] == 2
    manifest = files.read_manifest(folder / "ckpt" / "iter_0000003")
    assert (manifest.step, manifest.consumed_samples, manifest.skipped_steps) == (3, 24, 1)


def test_nonfinite_stop_saves_the_last_good_state_and_names_the_step(tmp_path: Path) -> None:
    folder = runs.prepare(tmp_path, runs.RunSpec(iters=4, on_nonfinite="stop", hooks=NAN_IN_STEP_3))
    result = runs.launch(folder)
    assert result.code() == ExitCode.NONFINITE_STOP, result.explain()
    assert "step 3: non-finite gradient norm (nan); stopped without applying it" in result.output
    assert "the last good state (step 2) is saved" in result.output
    assert "Traceback" not in result.output
    manifest = files.read_manifest(files.find_latest(folder / "ckpt"))  # type: ignore[arg-type]
    assert (manifest.step, manifest.consumed_samples) == (2, 16)


def test_a_rank_that_dies_ends_the_job_with_a_message(tmp_path: Path) -> None:
    """Rank 1 is SIGKILLed in step 3; rank 0 says so and exits 8 (the launch's hang guard is the only clock)."""
    folder = runs.prepare(tmp_path, runs.RunSpec(procs=2, timeout_minutes=0.5, hooks=RANK_1_DIES_IN_STEP_3))
    result = runs.launch(folder)
    assert result.returncode != 0
    assert result.exit_codes.get(1) == -9, result.explain()
    assert result.exit_codes.get(0) == ExitCode.PEER_FAILED, result.explain()
    assert "bridgec [rank 0]: a collective failed" in result.output
    assert "another rank probably died or the [launch] timeout_minutes expired" in result.output


def test_peer_failures_are_recognised_by_type_or_gloo_text() -> None:
    assert peer_failure(RuntimeError("[../gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer"))
    assert not peer_failure(RuntimeError("shape mismatch"))


def test_truncate_metrics_drops_steps_after_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    lines = [f'{{"kind": "train", "step": {step}}}\n' for step in (1, 2, 3, 4)] + ['{"kind": "tr']
    path.write_text("".join(lines))
    truncate_metrics(path, after_step=2)
    assert path.read_text() == "".join(lines[:2])
