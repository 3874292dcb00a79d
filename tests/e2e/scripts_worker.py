"""Run several compiled scripts' main() one after another in one torchrun launch (tests/e2e/test_performance_knobs.py).

``torchrun --nproc-per-node N scripts_worker.py SCRIPT...``: each script (compiled by bridgec for the same
world size) is imported, its ``main()`` trains and writes its metrics as a launch of its own would, and
torch.distributed and megatron's groups are torn down before the next starts its own. One launch instead of
one per script: the interpreter, torch and megatron-core start once.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from bridgec.runtime.parallel import shutdown


def run_script(path: Path, index: int) -> None:
    spec = importlib.util.spec_from_file_location(f"compiled_script_{index}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    end = module.main()
    assert end.code == 0, (path, end)
    shutdown()


def main(argv: list[str]) -> int:
    for index, path in enumerate(argv):
        run_script(Path(path).resolve(), index)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
