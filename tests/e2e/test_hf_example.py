"""examples/hf-tiny runs as its README says: make_model.py makes the tiny Hugging Face Llama (no download), the
committed run.py fine-tunes from it on CPU, and the loss goes down from the model's starting loss."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hf-tiny"


def test_hf_tiny_example_runs(tmp_path: Path) -> None:
    folder = tmp_path / "hf-tiny"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("model", "out"))
    made = subprocess.run([sys.executable, "make_model.py"], cwd=folder, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    launched = subprocess.run(
        [sys.executable, "-m", "bridgec.compiler.cli", "launch", "run.py"],
        cwd=folder, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert launched.returncode == 0, launched.stdout + launched.stderr
    assert "Traceback" not in launched.stderr
    lines = (folder / "out" / "hf-tiny" / "spec.metrics.jsonl").read_text().splitlines()
    losses = [json.loads(line)["loss"] for line in lines if json.loads(line).get("kind", "train") == "train"]
    assert len(losses) == 10 and losses[-1] < losses[0], losses
