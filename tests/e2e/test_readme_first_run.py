"""The README's "First run" as a new user follows it: their text, the spec from the README, stop, resume.

The spec and the commands are read from README.md itself. The stop is a
SIGTERM to ``bridgec launch`` once training has begun (what Ctrl-C does);
the second launch finishes the run, and every step is in the metrics once.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
DOCUMENTS = Path(__file__).resolve().parent / "data" / "tiny.jsonl"
BIN = Path(sys.executable).parent
HANG_GUARD_SECONDS = 600


def _first_run() -> tuple[str, list[list[str]]]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## First run: your own text") : text.index("## Contents")]
    spec = re.search(r"```toml\n# spec.toml\n(.*?)```", section, re.S)
    commands = re.search(r"```sh\n(.*?)```", section, re.S)
    assert spec is not None and commands is not None, "README.md lost its First run example"
    return spec[1], [shlex.split(line.split("#")[0]) for line in commands[1].splitlines() if line.strip()]


def _start(words: list[str], folder: Path) -> subprocess.Popen[str]:
    assert words[0] == "bridgec"
    environment = {"PATH": f"{BIN}:/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [str(BIN / "bridgec"), *words[1:]],
        cwd=folder,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    stdout, stderr = process.communicate(timeout=HANG_GUARD_SECONDS)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_the_first_run_trains_on_your_text_stops_and_resumes(tmp_path: Path) -> None:
    spec, commands = _first_run()
    build, compile_, launch, again = commands
    assert launch == again == ["bridgec", "launch", "run.py"]
    shutil.copy(DOCUMENTS, tmp_path / "docs.jsonl")
    (tmp_path / "spec.toml").write_text(spec)
    for words in (build, compile_):
        done = _finish(_start(words, tmp_path))
        assert done.returncode == 0, done.stderr

    metrics = tmp_path / "out" / "my-first-run" / "spec.metrics.jsonl"
    first = _start(launch, tmp_path)
    deadline = time.monotonic() + HANG_GUARD_SECONDS
    while not (metrics.is_file() and '"kind": "train"' in metrics.read_text()):  # training has begun
        assert first.poll() is None, _finish(first).stderr
        assert time.monotonic() < deadline, "hang guard: no step logged"
        time.sleep(0.2)
    first.send_signal(signal.SIGINT)  # Ctrl-C
    stopped = _finish(first)
    assert stopped.returncode == 75, stopped.stderr
    assert "data     docs: " in stopped.stdout and " documents, " in stopped.stdout  # the banner
    assert "received SIGINT; checkpoint saved; launch again to resume" in stopped.stdout

    finished = _finish(_start(again, tmp_path))
    assert finished.returncode == 0, finished.stderr
    assert "resume: continuing from step" in finished.stdout
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 41))  # every step, once
    assert "Traceback" not in stopped.stderr + finished.stderr
