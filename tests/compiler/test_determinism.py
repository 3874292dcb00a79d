"""Byte-identical output: same spec and version, any machine, folder or PYTHONHASHSEED."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.compiler.conftest import spec_toml

SPEC = spec_toml(
    run={"name": "determinism", "description": "sets { and } and ünïcode"},
    launch={"procs_per_node": 4},
    parallel={"tensor": 2, "pipeline": 2},
    model={"num_layers": 4, "activation": "swiglu", "position_embedding": "rope"},
    checkpoint={"dir": "ckpt", "save_interval": 5},
)


def _compile(folder: Path, seed: str, cwd: Path, spec_arg: str, out_arg: str) -> bytes:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    result = subprocess.run(
        [sys.executable, "-m", "bridgec.compiler.cli", "compile", spec_arg, "-o", out_arg],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return (folder / "run.py").read_bytes()


def test_output_is_identical_across_hash_seeds_folders_and_paths(tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "project", tmp_path / "somewhere" / "else" / "project"
    for folder in (first, second):
        folder.mkdir(parents=True)
        (folder / "spec.toml").write_text(SPEC)
    one = _compile(first, "0", first, "spec.toml", "run.py")
    two = _compile(second, "12345", second.parent, "project/spec.toml", str(second / "run.py"))
    three = _compile(first, "random", tmp_path, str(first / "spec.toml"), "a/project/run.py")
    assert one == two == three
    text = one.decode()
    assert str(tmp_path) not in text and os.uname().nodename not in text
    shutil.rmtree(tmp_path / "a")
