"""`bridgec import maxtext` as a user runs it: real MaxText configs to a spec that compiles and stays fresh."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.compiler.test_maxtext_import import maxtext_dir

BRIDGEC = [sys.executable, "-m", "bridgec.compiler.cli"]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BRIDGEC, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_import_compile_check(tmp_path: Path) -> None:
    shutil.copytree(maxtext_dir(), tmp_path / "maxtext")
    imported = _run("import", "maxtext", "maxtext/base.yml", "model_name=llama3-8b", "steps=100",
                    "--devices", "8", "-o", "spec.toml", cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    text = (tmp_path / "spec.toml").read_text()
    assert "--model maxtext/models/llama3-8b.yml" in text and str(tmp_path) not in text
    assert "num_query_groups = 8" in text and 'semantics = "optax"' in text
    assert _run("compile", "spec.toml", "-o", "run.py", cwd=tmp_path).returncode == 0
    assert _run("check", "spec.toml", "run.py", cwd=tmp_path).returncode == 0


def test_import_errors_are_reported_without_writing(tmp_path: Path) -> None:
    shutil.copytree(maxtext_dir(), tmp_path / "maxtext")
    result = _run("import", "maxtext", "maxtext/base.yml", "model_name=llama2-7b", "base_emb_dim=1024",
                  "--devices", "8", "-o", "spec.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert "base_emb_dim" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "spec.toml").exists()
    missing = _run("import", "maxtext", "maxtext/base.yml", "model_name=nope", "--devices", "8", "-o", "x.toml",
                   cwd=tmp_path)
    assert missing.returncode == 2 and "model_name 'nope'" in missing.stderr
    assert _run("import", "maxtext", "--help", cwd=tmp_path).returncode == 0
