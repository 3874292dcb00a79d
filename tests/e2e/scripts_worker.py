"""Run several compiled scripts' main() one after another in one torchrun launch (tests/e2e/test_performance_knobs.py).

``torchrun --nproc-per-node N scripts_worker.py SCRIPT...``: each script (compiled by bridgec for the same
world size) is imported, its ``main()`` trains and writes its metrics as a launch of its own would, and
megatron's groups are torn down before the next script's start() builds its own (torch.distributed stays up:
start() keeps an initialised process group, and a second init over torchrun's store is not reliable). One
launch instead of one per script: the interpreter, torch and megatron-core start once.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from megatron.core import parallel_state

from bridgec.runtime.parallel import shutdown


def run_script(path: Path, index: int) -> None:
    spec = importlib.util.spec_from_file_location(f"compiled_script_{index}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    end = module.main()
    assert end.code == 0, (path, end)
    parallel_state.destroy_model_parallel()


def main(argv: list[str]) -> int:
    for index, path in enumerate(argv):
        run_script(Path(path).resolve(), index)
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
