"""``bridgec launch RUN.py [TORCHRUN_OPTIONS]``: torchrun, with the workers' own exit code.

torchrun exits 1 whenever a worker exits non-zero, with a FAILED report and a
traceback of its own, so a job script cannot tell a planned stop (75: launch
again to resume) from a crash. This command runs torchrun on the script,
relays the workers' output, and exits with the code of the first worker that
failed; for bridgec's own codes (a message the worker already printed, or a
planned stop) torchrun's report is replaced by one line.

SIGTERM and SIGINT (a scheduler's notice, Ctrl-C) go straight to the workers,
which finish the step, save and exit 75. When torchrun itself was signalled
(a scheduler that signals every process of the job) it reports no codes; the
script's ``last_exit.json`` of this launch says what the workers did.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bridgec.compiler import torchrun
from bridgec.compiler.torchrun import InputError, ScriptLaunch, read_launch
from bridgec.runtime.errors import ExitCode

EXIT_OK = 0
EXIT_USAGE = 2


def torchrun_arguments(script: ScriptLaunch, options: list[str]) -> list[str]:
    """The options given, or the script's own (one node: a free port on this machine) ahead of the script."""
    if options:
        torchrun.check_options(options)
        return [*options, str(script.path)]
    if script.nodes > 1:
        raise InputError(
            f"{script.path} is compiled for {script.nodes} nodes x {script.procs_per_node} processes; give torchrun's "
            f"options for this node, e.g. bridgec launch {script.path} {' '.join(script.torchrun_options)} "
            "(HOST_OF_NODE_0: the address of node 0; run it on every node)"
        )
    return ["--standalone", "--nproc-per-node", str(script.procs_per_node), str(script.path)]


def workers_code(finished: torchrun.Finished, recorded: dict[str, Any] | None) -> int:
    """The exit code the workers meant: torchrun's root cause, else the script's record of this launch."""
    if finished.returncode == 0:
        return EXIT_OK
    code = finished.root_cause
    if code is None and recorded is not None and isinstance(recorded.get("code"), int):
        code = recorded["code"]
    if code is None:
        return finished.returncode
    return 128 - code if code < 0 else code  # a worker killed by signal N: 128 + N, as a shell reports it


def read_record(path: Path | None, since: float) -> dict[str, Any] | None:
    """The script's last_exit.json, if this launch wrote it (written at or after ``since``)."""
    if path is None:
        return None
    try:
        if path.stat().st_mtime < since:
            return None
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def describe(code: int) -> str:
    if code == ExitCode.STOPPED_TO_RESUME:
        return "stopped on purpose after saving; launch again to resume"
    if code > 128 and code - 128 in signal.valid_signals():
        return f"a worker was killed by {signal.Signals(code - 128).name}"
    try:
        return f"{ExitCode(code).name.lower().replace('_', ' ')} (the message above says what to do)"
    except ValueError:
        return "see torchrun's report above"


def cmd_launch(args: argparse.Namespace) -> int:
    try:
        script = read_launch(Path(args.script))
        arguments = torchrun_arguments(script, list(args.torchrun_options))
    except InputError as error:
        print(f"bridgec: {error}", file=sys.stderr)
        return EXIT_USAGE
    began = time.time() - 1.0  # file systems keep mtimes in whole seconds or coarser
    finished = torchrun.run(arguments, signals_to_workers=True)
    code = workers_code(finished, read_record(script.last_exit, began))
    if code == EXIT_OK:
        return EXIT_OK
    known = code in {int(member) for member in ExitCode}
    if not known:
        sys.stderr.write(finished.launcher_output)  # a crash: torchrun's report names the failed rank and its error
    print(f"bridgec: {script.path} exited {code}: {describe(code)}", file=sys.stderr)
    return code


def add_launch_parser(commands: Any) -> None:
    launch = commands.add_parser(
        "launch",
        help="run a compiled script under torchrun and exit with the workers' own code (75: launch again)",
        description="Run RUN.py under torchrun and exit with the workers' own exit code instead of torchrun's 1: "
        "0 done, 75 stopped on purpose after saving (launch again to resume), 4-10 a problem the script named. "
        "Without TORCHRUN_OPTIONS a one-node script runs with its own process count (--standalone "
        "--nproc-per-node N); a multi-node script needs them (the rendezvous options of its docstring), on every "
        "node. SIGTERM and Ctrl-C reach the workers, which finish the step, save and exit 75.",
        epilog="exit codes: the workers' (see the README's table); 2 when RUN.py or the options are wrong",
    )
    launch.add_argument("script", metavar="RUN.py", help="the script bridgec compile wrote")
    launch.add_argument(
        "torchrun_options",
        metavar="TORCHRUN_OPTIONS",
        nargs=argparse.REMAINDER,
        help="torchrun's options (--nnodes, --nproc-per-node, --rdzv-backend, --rdzv-endpoint, ...), given "
        "after RUN.py",
    )
    launch.set_defaults(handler=cmd_launch)
