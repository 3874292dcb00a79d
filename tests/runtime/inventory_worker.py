"""What a real GPTModel holds on every rank, for tests/runtime/test_inventory.py (one torchrun launch, many cases).

``torchrun --nproc-per-node 2 inventory_worker.py CASES_JSON OUT_DIR``: for every case (a script compiled
by bridgec and a layout), this rank initialises megatron-core's process groups for the layout, builds its
chunks with the script's own ``model_provider`` on the meta device (shapes without memory, so the example
specs' full sizes cost nothing) and records each chunk's ``named_parameters()``: name, local shape and
megatron's tensor-parallel marks (partition_dim, partition_stride). Writes rank{r}.json.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from bridgec.runtime import cpu_compat


def chunk_record(chunk: torch.nn.Module) -> list[list[Any]]:
    rows = []
    for name, param in chunk.named_parameters():
        split = (
            (param.partition_dim, param.partition_stride) if getattr(param, "tensor_model_parallel", False) else None
        )
        rows.append([name, list(param.shape), split])
    return rows


def build(script: Path, index: int, virtual: int | None) -> list[list[list[Any]]]:
    spec = importlib.util.spec_from_file_location(f"inventory_case_{index}", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    chunks = []
    for stage in range(virtual or 1):
        vp_stage = stage if virtual else None
        pre = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
        post = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
        with torch.device("meta"):
            chunks.append(chunk_record(module.model_provider(pre, post, vp_stage)))
    return chunks


def main() -> None:
    cases = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    cpu_compat.apply()
    dist.init_process_group(backend="gloo")
    found: dict[str, Any] = {}
    for index, case in enumerate(cases):
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=case["tensor"],
            pipeline_model_parallel_size=case["pipeline"],
            virtual_pipeline_model_parallel_size=case["virtual"],
            expert_model_parallel_size=case["expert"],
        )
        found[case["id"]] = {
            "pipeline_rank": parallel_state.get_pipeline_model_parallel_rank(),
            "expert_rank": parallel_state.get_expert_model_parallel_rank(),
            "chunks": build(Path(case["script"]), index, case["virtual"]),
        }
        parallel_state.destroy_model_parallel()
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(found))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
