"""``bridgec check`` where CI and pre-commit run it: a checkout that holds specs and scripts but no data.

A repository commits the spec, the dataset's small tokenizer file (``prefix.json``)
and the generated script; the ``.bin``/``.idx`` files are too large to commit. The
README's pre-commit recipe must pass in such a checkout and still catch a stale script.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.compiler.conftest import spec_toml

ROOT = Path(__file__).resolve().parents[2]
BRIDGEC = Path(sys.executable).parent / "bridgec"
DOCUMENTS = ROOT / "tests" / "e2e" / "data" / "tiny.jsonl"


def _readme_precommit_entry() -> list[str]:
    """The command of the pre-commit hook the README tells users to install."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n# \.pre-commit-config\.yaml\n(.*?)```", readme, re.S)
    assert block is not None, "README.md lost its .pre-commit-config.yaml example"
    entry = re.search(r"^\s*entry: (.+)$", block[1], re.M)
    assert entry is not None
    return entry[1].split()


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)


def _git(*args: str, cwd: Path) -> None:
    identity = ["-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "init.defaultBranch=main"]
    result = _run(["git", *identity, *args], cwd)
    assert result.returncode == 0, result.stderr


INDEXED = {
    "data": {"kind": "indexed", "sources": [{"prefix": "data/stories"}]},
    "model": {"vocab_size": 257},
}


@pytest.fixture()
def checkout(tmp_path: Path) -> Path:
    """A clone of a repository that committed spec, sidecar and script, with its data left out (.gitignore)."""
    origin = tmp_path / "origin"
    origin.mkdir()
    built = _run([str(BRIDGEC), "data", "build", "--input", str(DOCUMENTS), "--output", "data/stories"], origin)
    assert built.returncode == 0, built.stderr
    (origin / "spec.toml").write_text(spec_toml(**INDEXED), encoding="utf-8")
    compiled = _run([str(BRIDGEC), "compile", "spec.toml", "-o", "run.py"], origin)
    assert compiled.returncode == 0, compiled.stderr
    (origin / ".gitignore").write_text("*.bin\n*.idx\nout/\n", encoding="utf-8")
    _git("init", "-q", cwd=origin)
    _git("add", "-A", cwd=origin)
    _git("commit", "-q", "-m", "spec and generated script", cwd=origin)
    clone = tmp_path / "clone"
    _git("clone", "-q", str(origin), str(clone), cwd=tmp_path)
    assert sorted(p.name for p in (clone / "data").iterdir()) == ["stories.json"]  # no .bin/.idx
    return clone


def test_the_readme_precommit_recipe_passes_without_data_and_catches_a_stale_script(checkout: Path) -> None:
    entry = _readme_precommit_entry()
    assert entry[0] == "bridgec"
    fresh = _run([str(BRIDGEC), *entry[1:]], checkout)
    assert fresh.returncode == 0, fresh.stderr
    assert "all fresh" in fresh.stdout
    single = _run([str(BRIDGEC), "check", "spec.toml", "run.py"], checkout)
    assert single.returncode == 0, single.stderr

    (checkout / "spec.toml").write_text(spec_toml(**INDEXED, train={"iters": 20}), encoding="utf-8")
    stale = _run([str(BRIDGEC), *entry[1:]], checkout)
    assert stale.returncode == 1, stale.stderr
    assert "+TRAIN_ITERS = 20" in stale.stdout


def test_check_still_needs_the_committed_tokenizer_file(checkout: Path) -> None:
    """The sidecar decides the script's end-of-document id: without it check cannot regenerate, and says why."""
    (checkout / "data" / "stories.json").unlink()
    result = _run([str(BRIDGEC), "check", "spec.toml", "run.py"], checkout)
    assert result.returncode == 2
    assert "there is no tokenizer file data/stories.json" in result.stderr
    assert "do not exist" not in result.stderr  # the data files themselves are not check's business


def test_validate_and_compile_still_need_the_data(checkout: Path) -> None:
    for command in (["validate", "spec.toml"], ["compile", "spec.toml", "-o", "run.py"]):
        result = _run([str(BRIDGEC), *command], checkout)
        assert result.returncode == 2
        assert "data/stories.bin and data/stories.idx do not exist" in result.stderr
