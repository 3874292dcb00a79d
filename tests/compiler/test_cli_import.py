"""`bridgec import maxtext` as a user runs it: MaxText configs to a spec that compiles and stays fresh.

On the project's fixtures, and on MaxText's own files when they are beside the checkout (maxtext_configs.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.compiler.maxtext_configs import FIXTURES, FOLDERS, ConfigFolder

BRIDGEC = [sys.executable, "-m", "bridgec.compiler.cli"]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BRIDGEC, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("configs", FOLDERS)
def test_import_compile_check(configs: ConfigFolder, tmp_path: Path) -> None:
    shutil.copytree(configs.folder, tmp_path / "maxtext")
    imported = _run(
        "import",
        "maxtext",
        "maxtext/base.yml",
        "model_name=llama3-8b",
        "steps=100",
        "--devices",
        "8",
        "-o",
        "spec.toml",
        cwd=tmp_path,
    )
    assert imported.returncode == 0, imported.stderr
    text = (tmp_path / "spec.toml").read_text()
    assert "--model maxtext/models/llama3-8b.yml" in text and str(tmp_path) not in text
    assert "num_query_groups = 8" in text and 'semantics = "optax"' in text
    # The ledger of MaxText keys without a counterpart is a file of its own; the spec names it.
    ledger = (tmp_path / "spec.maxtext-keys.txt").read_text()
    assert "MaxText keys with no counterpart in this spec" in ledger and "Ignored, " in ledger
    assert "Ignored, " not in text and text.rstrip().endswith("what was done about each: spec.maxtext-keys.txt")
    assert imported.stdout.endswith("review it, then: bridgec compile spec.toml -o run.py\n")
    assert _run("compile", "spec.toml", "-o", "run.py", cwd=tmp_path).returncode == 0
    assert _run("check", "spec.toml", "run.py", cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("configs", FOLDERS)
def test_import_errors_are_reported_without_writing(configs: ConfigFolder, tmp_path: Path) -> None:
    shutil.copytree(configs.folder, tmp_path / "maxtext")
    result = _run(
        "import",
        "maxtext",
        "maxtext/base.yml",
        "model_name=llama2-7b",
        "base_emb_dim=1024",
        "--devices",
        "8",
        "-o",
        "spec.toml",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "base_emb_dim" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "spec.toml").exists()
    missing = _run(
        "import", "maxtext", "maxtext/base.yml", "model_name=nope", "--devices", "8", "-o", "x.toml", cwd=tmp_path
    )
    assert missing.returncode == 2 and "model_name 'nope'" in missing.stderr
    assert _run("import", "maxtext", "--help", cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("configs", FOLDERS)
def test_an_import_that_does_not_validate_says_so_and_names_no_absolute_path(
    configs: ConfigFolder, tmp_path: Path
) -> None:
    """gpt3-52k with context parallelism on the CPU: it needs Transformer Engine, which validation says at import."""
    base = configs.base.resolve()
    (tmp_path / "run").mkdir()
    result = _run(
        "import",
        "maxtext",
        str(base),
        "model_name=gpt3-52k",
        "ici_context_parallelism=2",
        "--devices",
        "2",
        "--device",
        "cpu",
        "-o",
        "spec.toml",
        cwd=tmp_path / "run",
    )
    assert result.returncode == 2
    assert 'spec.toml:41: $.parallel.context = 2 needs model.transformer_impl = "transformer_engine"' in (result.stderr)
    assert result.stderr.rstrip().endswith(
        "spec.toml is written, but it does not validate yet (1 error(s) above): "
        "change what they name (or import again with other options), then: "
        "bridgec compile spec.toml -o run.py"
    )
    text = (tmp_path / "run" / "spec.toml").read_text()
    assert f" {base.parent}" not in text  # the files are named relative to the spec's folder, once, in the command
    relative = Path(os.path.relpath(base, tmp_path / "run")).as_posix()
    assert (
        text.count(relative) == 1 and "# MaxText merge order: base.yml <- models/gpt3-52k.yml <- command line" in text
    )
    assert "--device cpu" in text  # the echoed command reproduces the import


@pytest.mark.parametrize("configs", FOLDERS)
def test_ledger_inline_keeps_the_old_single_file(configs: ConfigFolder, tmp_path: Path) -> None:
    shutil.copytree(configs.folder, tmp_path / "maxtext")
    imported = _run(
        "import",
        "maxtext",
        "maxtext/base.yml",
        "model_name=llama3-8b",
        "--devices",
        "8",
        "--ledger",
        "inline",
        "-o",
        "spec.toml",
        cwd=tmp_path,
    )
    assert imported.returncode == 0, imported.stderr
    assert "# Ignored, " in (tmp_path / "spec.toml").read_text()
    assert not (tmp_path / "spec.maxtext-keys.txt").exists()


def test_overrides_anywhere_on_the_command_line(tmp_path: Path) -> None:
    """MaxText's users type `train.py base.yml key=value ...`: overrides before BASE.yml or among the options import
    the same spec as the overrides right after BASE.yml."""
    orders = {
        "after_base": ["maxtext/base.yml", "model_name=llama3-8b", "steps=100", "--devices", "8", "-o", "spec.toml"],
        "anywhere": ["model_name=llama3-8b", "--devices", "8", "maxtext/base.yml", "-o", "spec.toml", "steps=100"],
        "after_options": ["--devices", "8", "-o", "spec.toml", "maxtext/base.yml", "model_name=llama3-8b", "steps=100"],
    }
    for name, words in orders.items():
        shutil.copytree(FIXTURES, tmp_path / name / "maxtext")
        imported = _run("import", "maxtext", *words, cwd=tmp_path / name)
        assert imported.returncode == 0, (name, imported.stderr)
    texts = {name: (tmp_path / name / "spec.toml").read_text() for name in orders}
    assert texts["anywhere"] == texts["after_base"] == texts["after_options"]
    assert "iters = 100  # steps 100 (command line)" in texts["anywhere"]


def test_the_words_that_are_not_overrides(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES, tmp_path / "maxtext")
    none = _run("import", "maxtext", "steps=5", "--devices", "8", "-o", "spec.toml", cwd=tmp_path)
    assert none.returncode == 2 and none.stderr == (
        "bridgec: import maxtext: no BASE.yml (MaxText's base config, configs/base.yml) among the arguments; the "
        "others are key=value overrides\n"
    )
    two = _run("import", "maxtext", "maxtext/base.yml", "--devices", "8", "steps", "-o", "spec.toml", cwd=tmp_path)
    assert two.returncode == 2 and two.stderr == (
        "bridgec: import maxtext: 2 arguments are not key=value ('maxtext/base.yml', 'steps'): give one BASE.yml, "
        "and each override as key=value with a MaxText key\n"
    )
    unknown = _run(
        "import", "maxtext", "maxtext/base.yml", "--devices", "8", "-o", "spec.toml", "--stepz", "5", cwd=tmp_path
    )
    assert unknown.returncode == 2 and unknown.stderr.endswith("bridgec: error: unrecognized arguments: --stepz 5\n")
    assert not (tmp_path / "spec.toml").exists()
