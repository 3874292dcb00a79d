"""Launch many compiled scripts from one Python start: import once, then fork one process per rank.

``python -m tests.e2e.forkrun JOBS.json`` reads a list of jobs
``{"folder": ..., "procs": N, "launches": K}`` and runs each job's ``run.py``
K times in a row (a second launch resumes from the first one's checkpoint).
Each launch forks N processes from this one, which has already imported
torch, megatron-core and the runtime (the ~4 s every torchrun worker spends
on imports, paid once), and gives each the environment torchrun gives a
worker (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, a fresh MASTER_PORT per
launch). A rank runs the script as ``__main__`` from the script's folder, with
that folder first on ``sys.path``, so the script's own ``run(main)`` decides
its exit code exactly as under torchrun. Its stdout and stderr go to
``FOLDER/logs/launch<K>/<rank>.out`` and ``.err``.

What differs from torchrun: there is no elastic agent (no restarts, no agent
store, and no process to outlive), and modules the parent imported are shared,
so a file beside the script cannot shadow them (the compiler refuses such hooks
files). ``tests.e2e.sweep --launcher torchrun`` runs the same jobs through the
real torchrun.

One JSON line per launch goes to stdout: folder, launch, exit code per rank,
and whether the hang guard had to kill it.

``python -m tests.e2e.forkrun --serve`` is the same launcher kept warm for a
whole pytest session (tests/warm.py starts it once and talks to it): one JSON
request per stdin line (a script or a ``-m`` module, its arguments, the
folder to run in, extra environment, the log folder, the hang guard), one
JSON reply per stdout line with each rank's exit code. As torchrun's agent
does, the first rank that fails gets the others SIGTERM (SIGKILL 30 s later),
so a failure never waits for the hang guard.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import signal
import socket
import sys
import time
import traceback
from pathlib import Path

HANG_GUARD_SECONDS = 120
"""Per launch. A 2-step run of a generated spec takes about a second; this only stops a hang."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _preload() -> None:
    """Import what every generated script imports, so the forked ranks start warm."""
    import torch  # noqa: F401
    import torch.nn.functional  # noqa: F401
    from megatron.core.distributed import finalize_model_grads  # noqa: F401
    from megatron.core.models.gpt import GPTModel  # noqa: F401
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec  # noqa: F401
    from megatron.core.transformer import TransformerConfig  # noqa: F401

    from bridgec.runtime import checkpoint, cpu_compat, data, entry, hooks, loop, model, optax_optim, optim  # noqa: F401


def _rank(script: Path, log_dir: Path, rank: int, procs: int, port: int) -> None:
    """The forked child: become rank ``rank`` of the launch, run the script, exit with its code. Never returns."""
    _run_rank({"script": str(script), "cwd": str(script.parent)}, log_dir, rank, procs, port)


def _run_rank(request: dict, log_dir: Path, rank: int, procs: int, port: int) -> None:
    """Become rank ``rank``: logs to ``log_dir``, torchrun's environment, then run the request's script or
    module as ``__main__`` and exit with its code. Never returns."""
    code = 1
    try:
        os.chdir(request["cwd"])
        for fd, suffix in ((1, "out"), (2, "err")):
            target = os.open(log_dir / f"{rank}.{suffix}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        os.environ.update(request.get("env", {}))
        os.environ.update(
            RANK=str(rank), LOCAL_RANK=str(rank), GROUP_RANK="0", WORLD_SIZE=str(procs),
            LOCAL_WORLD_SIZE=str(procs), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        )  # fmt: skip
        try:
            if "module" in request:
                sys.argv = [request["module"], *request.get("args", [])]
                sys.path[0] = request["cwd"]
                runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
            else:
                script = Path(request["script"])
                sys.argv = [str(script), *request.get("args", [])]
                sys.path[0] = str(script.parent)
                runpy.run_path(str(script), run_name="__main__")
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except BaseException:  # noqa: BLE001 - an uncaught exception is what the test looks for
            traceback.print_exc()
            code = 1
        atexit._run_exitfuncs()  # what interpreter exit would run (multiprocessing managers, ...)
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _wait(
    pids: list[int], guard: float = HANG_GUARD_SECONDS, stop_on_failure: bool = False
) -> tuple[dict[int, int], bool]:
    """Exit code per rank (-N: killed by signal N); kill all once the hang guard expires. ``stop_on_failure``:
    the first rank to fail gets the others SIGTERM (SIGKILL 30 s later), as torchrun's agent does."""
    deadline = time.monotonic() + guard
    codes: dict[int, int] = {}
    hung = False
    stopping_since: float | None = None
    while len(codes) < len(pids):
        for rank, pid in enumerate(pids):
            if rank in codes:
                continue
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                codes[rank] = os.waitstatus_to_exitcode(status)
        running = [pid for rank, pid in enumerate(pids) if rank not in codes]
        if stop_on_failure and stopping_since is None and running and any(codes.values()):
            stopping_since = time.monotonic()
            _signal(running, signal.SIGTERM)
        if stopping_since is not None and running and time.monotonic() > stopping_since + 30:
            _signal(running, signal.SIGKILL)
        if running and time.monotonic() > deadline and not hung:
            hung = True
            _signal(running, signal.SIGKILL)
        time.sleep(0.02)
    return codes, hung


def _signal(pids: list[int], number: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, number)
        except ProcessLookupError:
            pass


def launch(folder: Path, procs: int, number: int) -> dict[str, object]:
    log_dir = folder / "logs" / f"launch{number}"
    log_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    pids = []
    for rank in range(procs):
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _rank(folder / "run.py", log_dir, rank, procs, port)
        pids.append(pid)
    codes, hung = _wait(pids)
    return {"folder": str(folder), "launch": number, "codes": codes, "hung": hung}


def _children_cpu() -> float:
    import resource

    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def serve() -> int:
    """Answer launch requests from stdin, one JSON line each, until stdin closes."""
    _preload()
    protocol = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        log_dir = Path(request["log_dir"])
        log_dir.mkdir(parents=True, exist_ok=True)
        procs, port = int(request["procs"]), _free_port()
        pids = []
        for rank in range(procs):
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _run_rank(request, log_dir, rank, procs, port)
            pids.append(pid)
        before = _children_cpu()
        codes, hung = _wait(pids, float(request.get("guard", HANG_GUARD_SECONDS)), stop_on_failure=True)
        reply = {"codes": codes, "hung": hung, "cpu": _children_cpu() - before}
        protocol.write(json.dumps(reply) + "\n")
        protocol.flush()
    return 0


def main(argv: list[str]) -> int:
    if argv == ["--serve"]:
        return serve()
    jobs = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    _preload()
    for job in jobs:
        folder = Path(job["folder"])
        for number in range(1, int(job["launches"]) + 1):
            result = launch(folder, int(job["procs"]), number)
            print(json.dumps(result), flush=True)
            if result["hung"]:
                break
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
