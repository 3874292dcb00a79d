"""``bridgec eject``: the hand-owned copy trains like the generated script, and bridgec leaves it alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridgec.compiler import cli
from bridgec.compiler.emit import HEADER, find_generated
from tests.e2e.harness import launch

SPEC = """
[run]
name = "ejected"

[launch]
procs_per_node = 2

[model]
num_layers = 2
hidden_size = 32
num_attention_heads = 4
vocab_size = 128
seq_length = 16

[batch]
global_batch_size = 4

[train]
iters = 3

[optimizer]
lr = 1e-3
"""


def test_the_ejected_script_runs_and_is_no_generated_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "spec.toml").write_text(SPEC)
    script = tmp_path / "train.py"
    assert cli.main(["eject", str(tmp_path / "spec.toml"), "-o", str(script), "train.iters=2"]) == 0
    capsys.readouterr()
    text = script.read_text()
    assert not HEADER.match(text.splitlines()[0])
    assert "DO NOT EDIT" not in text and "bridgec launch" not in text and "# regenerate" not in text
    assert list(find_generated(tmp_path)) == []  # check --all does not claim it
    assert cli.main(["eject", str(tmp_path / "spec.toml"), "-o", str(script)]) == 2  # never over the user's edits
    assert "not replaced without --force" in capsys.readouterr().err
    assert script.read_text() == text
    result = launch(script, 2)
    assert result.returncode == 0, result.explain()
    assert len(result.train_losses("out/ejected")) == 2  # the override reached the ejected script
