"""``bridgec diff OLD NEW``: changed keys, derived values, the learning-rate curve, and whether NEW resumes OLD."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridgec.compiler import cli
from tests.compiler.conftest import spec_toml

CONSTANT = {"decay": "constant"}


def _diff(tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str) -> tuple[int, str, str]:
    (tmp_path / "old.toml").write_text(old)
    (tmp_path / "new.toml").write_text(new)
    code = cli.main(["diff", str(tmp_path / "old.toml"), str(tmp_path / "new.toml")])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_same_spec_changes_nothing_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _diff(tmp_path, capsys, spec_toml(), spec_toml(train={"iters": 10, "log_interval": 1}))
    assert code == 0
    assert "Changed keys\n  none\n" in out  # writing a default out is no change
    assert "Derived values\n  unchanged\n" in out
    assert "the same at every update" in out
    assert "NEW can resume from OLD's checkpoints" in out


def test_a_new_layout_reshards_and_changes_the_derived_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = spec_toml(launch={"procs_per_node": 2})
    new = spec_toml(launch={"procs_per_node": 4}, parallel={"tensor": 2})
    code, out, _ = _diff(tmp_path, capsys, old, new)
    assert code == 0, out
    assert "  launch.procs_per_node: 2 -> 4\n  parallel.tensor: 1 -> 2\n" in out
    assert "  world size: 2 -> 4\n" in out
    assert "data parallel" not in out  # 2 -> 2
    assert "memory per GPU (estimate)" in out


def test_the_learning_rate_change_names_the_update(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = spec_toml(scheduler={"warmup_iters": 4})
    new = spec_toml(scheduler={"warmup_iters": 2})
    code, out, _ = _diff(tmp_path, capsys, old, new)
    assert code == 0
    # megatron's linear warmup from 0 to lr 1e-3: update 1 is at 1/4 of it in OLD, 1/2 in NEW; update 2 is
    # at 1/2 and at the peak; the peak is first reached at update 2 by NEW (the largest gap, 5e-4).
    assert "largest difference 0.0005 at update 2 (0-based): 0.0005 -> 0.001" in out


def test_other_schedule_styles_are_compared_with_their_own_scheduler(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = spec_toml(scheduler=CONSTANT)
    new = spec_toml(scheduler={"style": "maxtext", "maxtext": {"kind": "cosine"}})
    code, out, _ = _diff(tmp_path, capsys, old, new)
    assert code == 0
    # MaxText warms up from 0: its update 0 runs at lr 0, OLD's at the constant 1e-3.
    assert "largest difference 0.001 at update 0 (0-based): 0.001 -> 0" in out


def test_a_new_shape_blocks_the_resume_naming_the_parameters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = spec_toml()
    code, out, _ = _diff(tmp_path, capsys, old, spec_toml(model={"hidden_size": 128}))
    assert code == 1
    assert "NEW cannot resume from OLD's checkpoints" in out
    assert "  - parameter embedding.word_embeddings.weight: OLD [128, 64], NEW [128, 128]\n" in out
    assert "more\n" in out  # the list is cut short
    code, out, _ = _diff(tmp_path, capsys, old, spec_toml(model={"num_layers": 3}))
    assert code == 1
    assert "  - parameter decoder.layers.2.mlp.linear_fc2.weight [64, 256]: in NEW's model, not in OLD's" in out


def test_the_distributed_optimizer_blocks_a_tensor_change(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = spec_toml(launch={"procs_per_node": 4}, parallel={"distributed_optimizer": True})
    same_model_parallel = spec_toml(launch={"procs_per_node": 2}, parallel={"distributed_optimizer": True})
    assert _diff(tmp_path, capsys, old, same_model_parallel)[0] == 0  # only data parallel changed
    new = spec_toml(launch={"procs_per_node": 4}, parallel={"distributed_optimizer": True, "tensor": 2})
    code, out, _ = _diff(tmp_path, capsys, old, new)
    assert code == 1
    assert "  - parallel.tensor: OLD 1, NEW 2; distributed-optimizer state only loads when just the" in out


def test_a_bad_spec_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _diff(tmp_path, capsys, spec_toml(), spec_toml(train={"iters": "x"}))
    assert code == 2
    assert "must be an integer" in err and "nothing compared" in err
    assert out == ""
