"""A run never replaces another run's checkpoints or metrics: refusals at the start, one metrics file per spec.

Every launch is a spec compiled by ``bridgec compile`` and run with torchrun
(tests/runtime/launch.py, tests/e2e/harness.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from bridgec.runtime import checkpoint_files as files
from bridgec.runtime import outputs
from bridgec.runtime.errors import ExitCode, RunError
from tests.compiler.conftest import spec_toml
from tests.e2e import harness
from tests.runtime import launch as runs


def _snapshot(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` and its modification time: what a refused launch must leave alone.

    Not the launch's own record of how it ended (last_exit.json), which says that it was refused.
    """
    return {
        str(path.relative_to(folder)): path.stat().st_mtime_ns
        for path in folder.rglob("*")
        if path.is_file() and not path.name.endswith(".last_exit.json")
    }


def test_a_fresh_start_refuses_a_folder_with_checkpoints_and_overwrite_replaces_them(tmp_path: Path) -> None:
    spec = runs.RunSpec(procs=2, iters=4, save_interval=2)
    folder = runs.prepare(tmp_path, spec)
    first = runs.launch(folder)
    assert first.returncode == 0, first.explain()
    kept = {**_snapshot(folder / "ckpt"), **_snapshot(folder / "out")}

    again = runs.launch(folder)  # resume = false: starting fresh would overwrite iter 2 and 4 and move latest
    assert runs.failed_with(again, ExitCode.WOULD_OVERWRITE), again.explain()
    assert {**_snapshot(folder / "ckpt"), **_snapshot(folder / "out")} == kept
    message = again.output
    assert "Traceback" not in message
    assert f"{folder / 'ckpt'} holds 2 checkpoint(s) (iter_0000002, iter_0000004; latest iter_0000004)" in message
    for way_out in (
        "resume = true under [checkpoint] to continue from step 4",
        "another [checkpoint] dir",
        "overwrite = true under [checkpoint]",
    ):
        assert way_out in message
    assert message.count("holds 2 checkpoint(s)") == 1  # the same on every rank: printed once
    assert json.loads((folder / "out" / "spec.last_exit.json").read_text())["code"] == ExitCode.WOULD_OVERWRITE

    shorter = attrs.evolve(spec, iters=3, save_interval=None, overwrite=True)
    runs.prepare(folder, shorter)
    third = runs.launch(folder)
    assert third.returncode == 0, third.explain()
    assert "deleted 2 checkpoint(s) of an earlier run (iter_0000002, iter_0000004)" in third.output
    assert sorted(p.name for p in (folder / "ckpt").iterdir()) == ["iter_0000003", "latest"]
    written = hashlib.sha256((folder / runs.SPEC).read_bytes()).hexdigest()
    assert files.read_manifest(folder / "ckpt" / "iter_0000003").spec_sha256 == written
    assert sorted(runs.losses(folder)) == [1, 2, 3]  # the new run's metrics, not the old ones


def test_specs_that_share_a_run_name_and_folder_keep_their_own_metrics(tmp_path: Path) -> None:
    for name, iters in (("dp", 2), ("tp", 3)):
        text = spec_toml(run={"name": "same"}, train={"iters": iters})
        script = harness.compile_to(tmp_path, text, name=f"{name}.toml", output=f"run_{name}.py")
        result = harness.launch(script, 1)
        assert result.returncode == 0, result.explain()
    written = sorted((tmp_path / "out" / "same").glob("*.jsonl"))
    steps = {}
    for path in written:
        records = [json.loads(line) for line in path.read_text().splitlines()]
        steps[path.name] = [r["step"] for r in records if r["kind"] == "train"]
    assert steps == {"dp.metrics.jsonl": [1, 2], "tp.metrics.jsonl": [1, 2, 3]}


def test_a_metrics_file_another_spec_started_is_refused(tmp_path: Path, megatron_world1: None) -> None:
    """Two folders' spec.toml with the same explicit output_dir: the file names match, the launch record tells them apart."""
    shared = tmp_path / "runs" / "spec.metrics.jsonl"
    shared.parent.mkdir()
    first = tmp_path / "a" / "spec.toml"
    record = outputs.launch_record(spec=first, metrics=shared, spec_sha256="0" * 64, step=0)
    assert record["spec"] == "../a/spec.toml"
    shared.write_text(json.dumps(record) + "\n")
    outputs.claim_outputs(spec=first, metrics=shared)  # its own file: fine

    with pytest.raises(RunError) as refused:
        outputs.claim_outputs(spec=tmp_path / "b" / "spec.toml", metrics=shared)
    assert refused.value.code == ExitCode.WOULD_OVERWRITE and refused.value.every_rank
    assert refused.value.message == (
        f"{shared} holds the metrics of another run (the spec ../a/spec.toml, as seen from its folder); this spec "
        "(../b/spec.toml) would write into it. Nothing was changed. Set [run] output_dir to a folder of this run's "
        "own and recompile"
    )

    shared.write_text('{"kind": "train", "step": 1}\n')  # written before launch records: nobody's claim
    outputs.claim_outputs(spec=tmp_path / "b" / "spec.toml", metrics=shared)


CRASHING_MAIN = """
from pathlib import Path
import sys
from bridgec.runtime.entry import run

def main():
    raise ValueError("a bug in a hook")

run(main, last_exit=Path(sys.argv[1]))
"""


def test_a_crash_keeps_its_traceback_and_is_recorded_as_code_1(tmp_path: Path) -> None:
    """An exception bridgec has no message for: Python's traceback and exit 1, and last_exit.json says so."""
    record = tmp_path / "out" / "spec.last_exit.json"
    done = subprocess.run(
        [sys.executable, "-c", CRASHING_MAIN, str(record)],
        env={**os.environ, "RANK": "0"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "ValueError: a bug in a hook" in done.stderr
    assert json.loads(record.read_text()) == {
        "code": 1,
        "step": None,
        "reason": "crashed: ValueError: a bug in a hook (traceback on stderr)",
    }
