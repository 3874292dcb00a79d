"""The teacher checkpoints of tests/runtime/test_distill_teachers.py: written in one launch, loaded in another.

    write RUN.py ROOT             (1 process) RUN.py's model (a teacher-shaped student whose [init.checkpoint] is
                                  the Hugging Face folder) saved three ways: ROOT/bridgec (bridgec convert
                                  hf-to-megatron), ROOT/mlm (Megatron-LM's torch_dist structure, iteration 3) and
                                  ROOT/orbax/0/items and ROOT/orbax_unscanned/0/items (bridgec convert
                                  megatron-to-orbax of ROOT/bridgec, scanned and not); and ROOT/student.json:
                                  ROOT/bridgec's weights loaded into the (zeroed) DDP student as format
                                  "megatron", and the RunError of its optimizer state loaded as Megatron-LM's
    check OUT.json NAME=RUN.py... (the scripts' processes) each script's build_teacher(), the first one's start();
                                  per rank, each teacher's local logits on fixed tokens against the first one's
                                  (largest absolute difference), or the RunError its load raised

Every path goes through the code a user runs: the converters' functions, the generated build_teacher().
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing

from bridgec.runtime import convert
from bridgec.runtime.errors import RunError
from bridgec.runtime.megatron_load import load_megatron_training_state, load_megatron_weights
from bridgec.runtime.model import unwrap
from tests.runtime.megatron_lm_checkpoint import megatron_args

ITERATION = 3


def write(script: Path, root: Path) -> None:
    compiled = convert.load_script(script)
    layout = compiled.start("teacher_worker write")
    built = compiled.build(layout)
    convert.hf_to_megatron(script, built, output=root / "bridgec")
    chunk = unwrap(built.model[0])
    folder = root / "mlm" / f"iter_{ITERATION:07d}"
    folder.mkdir(parents=True)
    state = {
        "args": megatron_args(chunk, layout, ITERATION),
        "checkpoint_version": 3.0,
        "iteration": ITERATION,
        "model": chunk.sharded_state_dict(),
    }
    dist_checkpointing.save(state, str(folder), sharded_strategy=("torch_dist", 1))
    (root / "mlm" / "latest_checkpointed_iteration.txt").write_text(str(ITERATION))
    found = {"student": _student_from_bridgec(built, root / "bridgec")}
    # A bridgec checkpoint's optimizer state continues with [checkpoint] resume, not as Megatron-LM's.
    try:
        load_megatron_training_state(built.model, built.optimizer, built.scheduler, path=root / "bridgec")
    except RunError as error:
        found["refused"] = {"code": int(error.code), "message": error.message}
    (root / "student.json").write_text(json.dumps(found))
    for scanned, output in ((True, "orbax"), (False, "orbax_unscanned")):
        convert.megatron_to_orbax(
            built,
            directory=root / "bridgec",
            output=root / output,
            step=None,
            dtype="float32",
            scanned=scanned,
            rope_layout="rotate_half",
            param_scan_axis=1,
        )


def _student_from_bridgec(built: Any, path: Path) -> float:
    """[init.checkpoint] format = "megatron" of a bridgec checkpoint into the student (DDP, its optimizer): the
    weights it holds, after every parameter was zeroed (largest absolute difference)."""
    saved = {name: param.detach().clone() for name, param in built.model[0].named_parameters()}
    with torch.no_grad():
        for param in built.model[0].parameters():
            param.zero_()
    load_megatron_weights(built.model, built.optimizer, path=path)
    return max((param - saved[name]).abs().max().item() for name, param in built.model[0].named_parameters())


def _module(name: str, script: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"teacher_{name}", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check(out: Path, scripts: dict[str, Path]) -> None:
    modules = {name: _module(name, script) for name, script in scripts.items()}
    layout = next(iter(modules.values())).start("teacher_worker check")
    tokens = torch.randint(0, 128, (2, 32), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(32).unsqueeze(0).expand(2, -1)
    reference: torch.Tensor | None = None
    found: dict[str, Any] = {}
    for name, module in modules.items():
        try:
            teacher = module.build_teacher(layout)
        except RunError as error:
            found[name] = {"code": int(error.code), "message": error.message}
            continue
        if teacher is None:  # a pipeline stage before the last: it loaded the teacher and dropped it
            found[name] = {"kept": False}
            continue
        with torch.no_grad():
            logits = teacher(tokens, positions, None).float()
        if reference is None:
            reference = logits
        found[name] = {
            "max_diff": (logits - reference).abs().max().item(),
            "shape": list(logits.shape),
            "frozen": not teacher.training and not any(param.requires_grad for param in teacher.parameters()),
        }
    (out.parent / f"{out.stem}.{dist.get_rank()}.json").write_text(json.dumps(found))


def main() -> None:
    if sys.argv[1] == "write":
        write(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        scripts = dict(pair.split("=", 1) for pair in sys.argv[3:])
        check(Path(sys.argv[2]), {name: Path(script) for name, script in scripts.items()})
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
