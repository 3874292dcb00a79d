"""Run several compiled scripts compiled for the same number of processes in one torchrun launch.

Usage: torchrun --nproc-per-node N run_scripts.py SCRIPT [SCRIPT ...]

Starting a process and importing torch and megatron-core costs seconds of CPU per process, more than the
few training steps of a golden spec. So each process imports every script as a module and calls its main()
(the function its ``if __name__ == "__main__"`` block hands to runtime.entry.run), one after the other in the
same process group. megatron-core's model-parallel state is torn down between runs, as the end of a launch
does; torch.distributed's process group stays. A main() that returns STOPPED_TO_RESUME is called again,
which is a user launching again: everything is rebuilt and restored from the run's checkpoint. The first
error ends the launch with its traceback.

Before each call rank 0 prints ``=== SCRIPT launch K``, after it ``=== SCRIPT exit CODE``, which is how
tests tell the runs' outputs apart (tests/e2e/test_goldens_run.py).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import torch.distributed as dist
from megatron.core import parallel_state

from bridgec.runtime.errors import ExitCode

MAX_LAUNCHES = 4


def run(path: Path, index: int) -> None:
    spec = importlib.util.spec_from_file_location(f"compiled_{index}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for launch in range(1, MAX_LAUNCHES + 1):
        say(f"=== {path} launch {launch}")
        code = module.main().code  # a generated main() returns its RunEnd
        parallel_state.destroy_model_parallel()
        dist.barrier()
        say(f"=== {path} exit {int(code)}")
        if code != ExitCode.STOPPED_TO_RESUME:
            return


def say(text: str) -> None:
    if os.environ["RANK"] == "0":
        print(text, flush=True)


def main(paths: list[str]) -> int:
    for index, path in enumerate(paths):
        run(Path(path).resolve(), index)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
