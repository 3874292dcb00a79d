"""Checkpoints: exact resume, atomic saves, keep_last, resharding, refusals and inspect.

Every launch is a spec compiled by ``bridgec compile`` and run with torchrun
(tests/runtime/launch.py). The launches are few and tiny (2 layers, hidden 64,
6 steps); each straight run is shared by the tests that compare against it.
Losses are compared bit for bit (fp32 on CPU is deterministic).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import attrs
import pytest
import torch

from bridgec.compiler.cli import main as bridgec
from bridgec.runtime import checkpoint_files as files
from bridgec.runtime.errors import ExitCode, RunError
from tests.runtime import launch as runs


@pytest.fixture(scope="module")
def straight_dp1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 steps, one process, plain optimizer; checkpoints at 3 and 6, evaluations at 3 and 6."""
    folder = runs.prepare(tmp_path_factory.mktemp("straight_dp1"), runs.RunSpec(save_interval=3, eval_interval=3))
    result = runs.launch(folder)
    assert result.returncode == 0, result.explain()
    return folder


@attrs.frozen(kw_only=True)
class Killed:
    folder: Path
    reference: dict[int, float]
    """Losses the killed run logged for every step: its own straight-run reference."""


TALLY = """
import json, random, torch


class Tally:
    \"\"\"user_state keeps each step, a Python random draw and the loss; every step is also appended to a file.\"\"\"

    def on_train_start(self, context):
        for key in ("steps", "draws", "losses"):
            context.user_state.setdefault(key, [])

    def on_train_step_end(self, context):
        record = {"step": context.step, "draw": random.random(), "loss": context.losses["lm loss"]}
        for key, value in (("steps", record["step"]), ("draws", record["draw"]), ("losses", record["loss"])):
            context.user_state[key].append(value)
        with open(f"tally_rank{context.rank}.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\\n")

    def on_train_end(self, context):
        torch.save(dict(context.user_state), f"tally_rank{context.rank}.pt")
"""
"""A callback whose user_state must come back from the checkpoint bit for bit after kill -9."""

DP2 = runs.RunSpec(
    procs=2, distributed_optimizer=True, save_interval=2, keep_last=2, resume=True, callbacks=TALLY,
    callback_classes=("Tally",),
)  # fmt: skip


@pytest.fixture(scope="module")
def killed_dp2(tmp_path_factory: pytest.TempPathFactory) -> Killed:
    """Data parallel 2, distributed optimizer: saves at 2 and 4, then kill -9 while step 6 is being saved."""
    folder = runs.prepare(tmp_path_factory.mktemp("killed_dp2"), DP2)
    marker = folder / "paused"
    process = runs.start(folder, pause_save=(6, marker))
    runs.wait_for(marker, process)
    runs.kill(process)
    return Killed(folder=folder, reference=runs.losses(folder))


def test_exit_duration_and_exit_interval_stop_with_a_checkpoint_and_resume_is_exact(
    straight_dp1: Path, tmp_path: Path
) -> None:
    """One launch stops at its time limit (after step 1), the next at its step limit (3 steps later), the third ends."""
    limited = runs.RunSpec(eval_interval=3, resume=True, exit_duration_minutes=1e-6)
    folder = runs.prepare(tmp_path, limited)
    first = runs.launch(folder)
    assert first.code() == ExitCode.STOPPED_TO_RESUME, first.explain()
    assert "resume: no checkpoint found, starting fresh" in first.output
    assert "stopping after step 1: exit_duration_minutes 1e-06 reached; checkpoint saved" in first.output
    assert (folder / "ckpt" / "latest").read_text() == "iter_0000001\n"

    # The user lifts the time limit, sets a step limit instead and recompiles.
    runs.prepare(folder, attrs.evolve(limited, exit_duration_minutes=None, exit_interval=3))
    second = runs.launch(folder)
    assert second.code() == ExitCode.STOPPED_TO_RESUME, second.explain()
    assert "resume: continuing from step 1 (8 samples consumed)" in second.output
    assert "stopping after step 4: exit_interval 3 reached; checkpoint saved" in second.output
    assert (folder / "ckpt" / "latest").read_text() == "iter_0000004\n"

    third = runs.launch(folder)
    assert third.returncode == 0, third.explain()  # the last step comes before exit_interval
    assert "resume: continuing from step 4 (32 samples consumed)" in third.output
    assert runs.losses(folder) == runs.losses(straight_dp1)  # bit-identical, every step
    assert runs.losses(folder, "valid") == runs.losses(straight_dp1, "valid")
    assert files.find_latest(folder / "ckpt") == folder / "ckpt" / "iter_0000006"


def test_kill_during_save_keeps_the_previous_checkpoint(killed_dp2: Killed) -> None:
    """kill -9 while step 6 is being written: iter 4 stays the latest; resuming from it repeats steps 5-6 exactly."""
    folder, root = killed_dp2.folder, killed_dp2.folder / "ckpt"
    partial = root / "iter_0000006.partial"
    assert (root / "latest").read_text() == "iter_0000004\n"
    assert any(partial.glob("*.distcp")) and not (partial / files.MANIFEST).exists()
    assert not (root / "iter_0000006").exists()
    assert files.inspect(root).manifest.step == 4
    assert sorted(killed_dp2.reference) == [1, 2, 3, 4, 5, 6]

    resumed = runs.launch(folder)
    assert resumed.returncode == 0, resumed.explain()
    assert "resume: continuing from step 4 (32 samples consumed)" in resumed.output
    assert runs.losses(folder) == killed_dp2.reference  # bit-identical; every step logged once
    # keep_last = 2: iter 2 went once 6 was complete; the dead save's folder is gone.
    assert sorted(p.name for p in root.iterdir()) == ["iter_0000004", "iter_0000006", "latest"]
    # [hooks] callbacks: user_state comes back as step 4 saved it (not as the killed launch left it after step 6),
    # so the resumed run ends with what one uninterrupted run would hold: the killed launch's own first records.
    for rank in range(DP2.procs):
        lines = [json.loads(line) for line in (folder / f"tally_rank{rank}.jsonl").read_text().splitlines()]
        first = {record["step"]: record for record in reversed(lines)}
        assert [record["step"] for record in lines] == [1, 2, 3, 4, 5, 6, 5, 6]
        state = torch.load(folder / f"tally_rank{rank}.pt")
        assert state["steps"] == [1, 2, 3, 4, 5, 6]
        assert state["draws"] == [first[step]["draw"] for step in range(1, 7)]  # Python's RNG restored too
        assert state["losses"] == [first[step]["loss"] for step in range(1, 7)]


@pytest.mark.parametrize("layout", [{"tensor": 2}, {"pipeline": 2}], ids=["tp1-to-tp2", "tp1-to-pp2"])
def test_resharded_checkpoint_gives_the_same_eval_loss(straight_dp1: Path, tmp_path: Path, layout: dict) -> None:
    """A TP1/PP1 checkpoint of a finished run loads into TP2 or PP2; the run only evaluates."""
    folder = runs.prepare(tmp_path, runs.RunSpec(procs=2, eval_interval=3, resume=True, **layout))
    runs.copy_checkpoint(straight_dp1, folder, "iter_0000006")
    result = runs.launch(folder)
    assert result.returncode == 0, result.explain()
    assert "all 6 steps were already done; nothing to train, evaluating what was loaded" in result.output
    assert "RNG states are per rank and were not restored" in result.output
    resharded = runs.losses(folder, "valid")[6]
    assert resharded == pytest.approx(runs.losses(straight_dp1, "valid")[6], abs=1e-6)


def test_checkpoint_that_cannot_load_names_every_mismatch(killed_dp2: Killed, tmp_path: Path) -> None:
    """Another hidden size, and distributed-optimizer state across a tensor-parallel change: exit 6, no traceback."""
    spec = attrs.evolve(DP2, tensor=2, hidden_size=32, iters=8, save_interval=None, keep_last=None)
    folder = runs.prepare(tmp_path, spec)
    runs.copy_checkpoint(killed_dp2.folder, folder, "iter_0000004")
    result = runs.launch(folder)
    assert runs.failed_with(result, ExitCode.CHECKPOINT_ERROR), result.explain()
    assert "cannot resume from" in result.output and "nothing was loaded" in result.output
    assert "model hidden_size: the checkpoint has 64, this run 32" in result.output
    assert "layout tensor: the checkpoint has 1, this run 2" in result.output
    assert "Traceback" not in result.output


def test_truncated_file_is_refused_before_anything_loads(straight_dp1: Path, tmp_path: Path) -> None:
    folder = runs.prepare(tmp_path, runs.RunSpec(iters=8, resume=True))
    runs.copy_checkpoint(straight_dp1, folder, "iter_0000006")
    damaged = next((folder / "ckpt" / "iter_0000006").glob("*.distcp"))
    damaged.write_bytes(damaged.read_bytes()[:1000])
    result = runs.launch(folder)
    assert result.code() == ExitCode.CHECKPOINT_ERROR, result.explain()
    assert f"{damaged}: 1000 bytes, the save wrote" in result.output
    assert "Traceback" not in result.output


# -- the folder protocol and inspect, without a launch --------------------------------------------


def _complete(root: Path, step: int, *, name: str | None = None, sequence: int = 0) -> Path:
    """A stand-in checkpoint folder with a manifest (enough for the folder protocol)."""
    path = root / (name or files.checkpoint_name(step))
    path.mkdir(parents=True)
    (path / "data.bin").write_bytes(b"x" * 10)
    manifest = files.Manifest(
        format=files.FORMAT, step=step, consumed_samples=8 * step, skipped_steps=0,
        layout={"world_size": 1, "tensor": 1, "pipeline": 1, "virtual_pipeline": None, "context": 1, "expert": 1, "data": 1},
        model={"hidden_size": 64}, optimizer={"kind": "plain", "class": "AdamW", "sharding": "model_space", "has_state": True},
        spec_sha256="a" * 64, script_sha256="b" * 64, versions={}, files={"data.bin": 10}, sequence=sequence,
    )  # fmt: skip
    (path / files.MANIFEST).write_text(manifest.to_json())
    return path


def test_latest_follows_the_pointer_and_ignores_unfinished_saves(tmp_path: Path) -> None:
    assert files.find_latest(tmp_path) is None  # an empty (or unrelated) folder: start fresh
    two, four = _complete(tmp_path, 2), _complete(tmp_path, 4)
    (tmp_path / "iter_0000006.partial").mkdir()
    assert files.find_latest(tmp_path) == four  # no pointer: the newest complete one
    (tmp_path / files.POINTER).write_text("iter_0000002\n")
    assert files.find_latest(tmp_path) == two


def test_publish_moves_the_pointer_last_and_prune_keeps_the_newest(tmp_path: Path) -> None:
    for step in (2, 4, 6):
        _complete(tmp_path, step)
    (tmp_path / files.POINTER).write_text("iter_0000006\n")
    partial = tmp_path / "iter_0000008.partial"
    shutil.copytree(tmp_path / "iter_0000006", partial)
    files.publish(partial, tmp_path / "iter_0000008")
    assert (tmp_path / files.POINTER).read_text() == "iter_0000008\n"
    files.prune(tmp_path, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_0000006", "iter_0000008", "latest"]


def _save(root: Path, step: int, keep_last: int) -> None:
    """What a save does to the folder (DistCheckpointer._publish): manifest with the next sequence, publish, prune."""
    partial = _complete(
        root, step, name=files.checkpoint_name(step) + files.PARTIAL_SUFFIX, sequence=files.next_sequence(root)
    )
    files.publish(partial, root / files.checkpoint_name(step))
    files.prune(root, keep_last)


def test_keep_last_and_the_fallback_follow_publish_order_over_an_older_runs_folder(tmp_path: Path) -> None:
    """resume = false over an older run's folder: its iter 10 and 20 are older than the new run's iter 2 and 4."""
    for step in (10, 20):
        _save(tmp_path, step, keep_last=2)
    for step in (2, 4):
        _save(tmp_path, step, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_0000002", "iter_0000004", "latest"]
    (tmp_path / files.POINTER).unlink()  # a lost pointer: the last checkpoint published is the one to resume
    assert files.find_latest(tmp_path) == tmp_path / "iter_0000004"
    assert files.read_manifest(tmp_path / "iter_0000004").sequence == 4


def test_manifests_without_a_sequence_still_read_and_count_as_older(tmp_path: Path) -> None:
    old = _complete(tmp_path, 8)
    manifest = json.loads((old / files.MANIFEST).read_text())
    del manifest["sequence"]
    (old / files.MANIFEST).write_text(json.dumps(manifest))
    assert files.read_manifest(old).sequence == 0
    _complete(tmp_path, 2, sequence=1)
    assert files.find_latest(tmp_path) == tmp_path / "iter_0000002"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("pointer", "should name a checkpoint folder like iter_0000010"),
        ("garbage_folder", "is not a complete bridgec checkpoint: it has no bridgec.json"),
        ("manifest", "bridgec.json is damaged"),
        ("missing", "iter_0000002 does not exist"),
    ],
)
def test_damaged_checkpoint_directories_give_clear_errors(tmp_path: Path, damage: str, message: str) -> None:
    if damage == "pointer":
        (tmp_path / files.POINTER).write_bytes(b"\x00\x17garbage")
    elif damage == "garbage_folder":
        (tmp_path / "iter_0000002").mkdir()
        (tmp_path / "iter_0000002" / "junk").write_bytes(b"junk")
        (tmp_path / files.POINTER).write_text("iter_0000002\n")
    elif damage == "manifest":
        path = _complete(tmp_path, 2)
        (path / files.MANIFEST).write_text('{"format": "bridgec-checkpoint/1", "step": ')
    else:
        (tmp_path / files.POINTER).write_text("iter_0000002\n")
    with pytest.raises(RunError) as raised:
        files.read_manifest(files.find_latest(tmp_path))  # type: ignore[arg-type]
    assert raised.value.code == ExitCode.CHECKPOINT_ERROR
    assert message in raised.value.message


def test_checkpoint_inspect_reports_a_checkpoint_without_a_run(
    straight_dp1: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``bridgec checkpoint inspect DIR``: the latest checkpoint, hashes of the spec and script that wrote it."""
    assert bridgec(["checkpoint", "inspect", str(straight_dp1 / "ckpt")]) == 0
    summary = capsys.readouterr().out
    assert re.search(
        r"^tensors      \d+ \([\d.]+ [KM]iB\), plus \d+ other entries; --tensors lists them$", summary, re.M
    )
    assert "moe" not in summary and "None" not in summary  # a dense model: no MoE fields, nothing unset
    assert all(len(line) <= 100 for line in summary.splitlines() if not line.startswith(("checkpoint", "also here")))
    assert bridgec(["checkpoint", "inspect", "--tensors", str(straight_dp1 / "ckpt")]) == 0
    text = capsys.readouterr().out
    latest = straight_dp1 / "ckpt" / "iter_0000006"
    assert f"checkpoint   {latest}\nstatus       complete\n" in text
    assert "step         6 (48 samples consumed, 0 steps skipped)" in text
    assert "world 1 = tensor 1 x pipeline 1 x data 1 x context 1" in text
    assert f"spec         sha256 {hashlib.sha256((straight_dp1 / runs.SPEC).read_bytes()).hexdigest()}" in text
    assert f"script       sha256 {hashlib.sha256((straight_dp1 / runs.SCRIPT).read_bytes()).hexdigest()}" in text
    assert "hidden_size=64" in text and "num_layers=2" in text
    shapes = dict(re.findall(r"^  (\S+) +(\d+(?:x\d+)*|scalar) ", text, flags=re.MULTILINE))  # the tensor table
    assert shapes["embedding.word_embeddings.weight"] == "128x64"
    assert shapes["decoder.layers.mlp.linear_fc1.weight"] == "2x256x64"  # layers stacked
    assert any(key.startswith("optimizer.state.exp_avg.") for key in shapes)
    assert "available    steps 3, 6 (latest 6) (choose one with --step N)" in text
    assert "also here" not in text  # no unfinished saves
    manifest = json.loads((latest / files.MANIFEST).read_text())
    assert manifest["layout"]["tensor"] == 1 and manifest["optimizer"]["kind"] == "plain"

    assert bridgec(["checkpoint", "inspect", str(straight_dp1 / "ckpt"), "--step", "3"]) == 0
    older = capsys.readouterr().out
    assert f"checkpoint   {straight_dp1 / 'ckpt' / 'iter_0000003'}\n" in older
    assert "step         3 (24 samples consumed, 0 steps skipped)" in older
    assert bridgec(["checkpoint", "inspect", str(straight_dp1 / "ckpt"), "--step", "4"]) == 2
    absent = capsys.readouterr()
    assert absent.out == ""
    assert f"{straight_dp1 / 'ckpt'} holds no complete checkpoint of step 4; it has steps 3, 6 (latest 6)" in absent.err


def test_a_finished_run_without_evaluation_launched_again_evaluates_nothing(straight_dp1: Path, tmp_path: Path) -> None:
    """Relaunching a finished run whose spec has no eval_interval says so instead of printing a nan evaluation."""
    folder = runs.prepare(tmp_path, runs.RunSpec(resume=True))
    runs.copy_checkpoint(straight_dp1, folder, "iter_0000006")
    result = runs.launch(folder)
    assert result.returncode == 0, result.explain()
    assert "all 6 steps were already done; nothing to train, and nothing to evaluate" in result.output
    assert "nan" not in result.output and "validation" not in result.output
    assert runs.losses(folder, "valid") == {}


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("empty", "no checkpoint here (no latest, no iter_* folder)"),
        ("garbage_folder", "is not a complete bridgec checkpoint: it has no bridgec.json"),
    ],
)
def test_checkpoint_inspect_of_a_folder_without_a_checkpoint_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str, message: str
) -> None:
    if damage == "garbage_folder":
        (tmp_path / "iter_0000002").mkdir()
        (tmp_path / "iter_0000002" / "junk").write_bytes(b"junk")
        (tmp_path / files.POINTER).write_text("iter_0000002\n")
    assert bridgec(["checkpoint", "inspect", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err and "Traceback" not in captured.err


def test_a_failed_first_save_does_not_claim_an_earlier_checkpoint(tmp_path: Path) -> None:
    """[checkpoint] dir names a file: the first save fails, and the message says there is nothing to fall back on."""
    folder = runs.prepare(tmp_path, runs.RunSpec(iters=3, save_interval=2))
    (folder / "ckpt").write_text("not a folder")
    result = runs.launch(folder)
    assert runs.failed_with(result, ExitCode.CHECKPOINT_ERROR), result.explain()
    assert f"cannot create {folder / 'ckpt' / 'iter_0000002.partial'}: FileExistsError" in result.output
    assert result.output.rstrip().endswith("; there is no earlier checkpoint in this folder")
    assert "intact" not in result.output
