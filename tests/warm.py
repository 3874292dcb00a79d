"""Multi-process launches from one warm Python for the whole test session (instead of torchrun each time).

A torchrun launch of a tiny run costs about 29 CPU seconds on this project's machines, of which some 25
are imports: torchrun's own and every worker's (torch, megatron-core, the runtime). The launcher of
tests/e2e/forkrun.py (``--serve``) imports them once, then forks each launch's ranks from that warm
process and gives each the environment torchrun gives a worker (RANK, WORLD_SIZE, MASTER_ADDR, a fresh
MASTER_PORT, ...); the ranks then run the real script with real torch.distributed (gloo), as separate
processes. Like torchrun's agent it stops the other ranks (SIGTERM) once one fails.

What stays on torchrun: tests of launching itself (tests/e2e/test_launch.py, the README's commands),
of torchrun's own failure report, and of killing a job (tests/runtime/launch.py ``start``/``kill``).
``BRIDGEC_TEST_LAUNCHER=torchrun`` sends every launch through torchrun.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import attrs

REPO = Path(__file__).resolve().parents[1]


def enabled() -> bool:
    """Launch through the warm launcher (default) rather than torchrun (BRIDGEC_TEST_LAUNCHER=torchrun)."""
    return os.environ.get("BRIDGEC_TEST_LAUNCHER", "warm") != "torchrun"


@attrs.frozen(kw_only=True)
class Ran:
    codes: dict[int, int]
    """Each rank's exit code (-N: stopped by signal N)."""
    hung: bool
    outputs: dict[int, tuple[str, str]]
    """rank -> (stdout, stderr)."""

    @property
    def returncode(self) -> int:
        """What torchrun would exit with: 0 when every rank did, else 1."""
        return 0 if not any(self.codes.values()) else 1


class _Server:
    process: subprocess.Popen[str] | None = None
    cpu_seconds: float = 0.0
    """CPU seconds the ranks of every launch so far used (tests/conftest.py's BRIDGEC_TEST_COST adds them)."""

    @classmethod
    def get(cls) -> subprocess.Popen[str]:
        if cls.process is None or cls.process.poll() is not None:
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
            cls.process = subprocess.Popen(
                [sys.executable, "-m", "tests.e2e.forkrun", "--serve"],
                cwd=REPO,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            atexit.register(cls.stop)
        return cls.process

    @classmethod
    def stop(cls) -> None:
        if cls.process is not None and cls.process.poll() is None:
            cls.process.stdin.close()  # type: ignore[union-attr]
            cls.process.wait(timeout=60)


def run(
    procs: int,
    *,
    cwd: Path,
    log_dir: Path,
    script: Path | None = None,
    module: str | None = None,
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    guard: float = 600,
) -> Ran:
    """Run ``script`` (or ``python -m module``) on ``procs`` ranks from ``cwd``; wait for every rank."""
    request = {
        "procs": procs, "cwd": str(cwd), "log_dir": str(log_dir), "args": list(args), "env": env or {},
        "guard": guard, **({"module": module} if module else {"script": str(script)}),
    }  # fmt: skip
    server = _Server.get()
    server.stdin.write(json.dumps(request) + "\n")  # type: ignore[union-attr]
    server.stdin.flush()  # type: ignore[union-attr]
    line = server.stdout.readline()  # type: ignore[union-attr]
    if not line:
        raise AssertionError(f"the warm launcher (tests/e2e/forkrun.py --serve) died: exit {server.wait()}")
    reply = json.loads(line)
    _Server.cpu_seconds += float(reply["cpu"])
    outputs = {rank: tuple(_read(log_dir / f"{rank}.{suffix}") for suffix in ("out", "err")) for rank in range(procs)}
    return Ran(codes={int(k): int(v) for k, v in reply["codes"].items()}, hung=reply["hung"], outputs=outputs)  # type: ignore[arg-type]


def cpu_seconds() -> float:
    """CPU seconds used by the ranks of every warm launch of this session."""
    return _Server.cpu_seconds


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def torchrun(
    procs: int, target: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc-per-node PROCS TARGET`` (TARGET: ``script [args]`` or ``-m module [args]``),
    warm unless BRIDGEC_TEST_LAUNCHER=torchrun; stdout and stderr are the ranks' own, rank by rank."""
    if not enabled():
        command = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node", str(procs)]
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
        return subprocess.run(
            [*command, *target], cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout
        )
    module = target[1] if target[0] == "-m" else None
    rest = target[2:] if module else target[1:]
    script = None if module else Path(cwd) / target[0]
    logs = Path(tempfile.mkdtemp(prefix="ranks-"))
    ran = run(
        procs, cwd=Path(cwd), log_dir=logs, script=script, module=module, args=tuple(rest), env=env, guard=timeout
    )
    if ran.hung:
        raise subprocess.TimeoutExpired(target, timeout)
    ordered = [ran.outputs[rank] for rank in sorted(ran.outputs)]
    return subprocess.CompletedProcess(
        target, ran.returncode, "".join(out for out, _ in ordered), "".join(err for _, err in ordered)
    )
