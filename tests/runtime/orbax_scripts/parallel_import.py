"""torchrun script: import MaxText test checkpoints at TP=2 and PP=2 and measure parity and per-rank reads.

    torchrun --nproc-per-node 2 parallel_import.py CASES OUT --layouts tp2 pp2

Per layout (megatron's groups are rebuilt in the same processes, which saves a
launch) and per case it builds this rank's chunks, loads the checkpoint, computes the
logits (gathered over TP; sent from stage 0 to stage 1 under PP) and writes
OUT/rank<r>.json with, per layout and case: the max |logit - Flax logit|, the decoded bytes
this rank read per leaf, tensorstore's file bytes read, and the checkpoint's
data size. At TP=2 it also exports the model back (gathered on rank 0) and
compares every leaf with the original, bit for bit. Finally it records whether
JAX was ever imported (it must not be).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import tensorstore as ts
import torch
import torch.distributed as dist
from megatron.core import parallel_state

import megatron_llama as ml
from bridgec.runtime.maxtext_export import export_maxtext, gather_full_params
from bridgec.runtime.maxtext_import import Dims, load_maxtext_weights
from bridgec.runtime.model import build_chunks
from bridgec.runtime.orbax_read import OrbaxItem, ReadStats

CASES = ("scanned", "unscanned")
LAYOUTS = {"tp2": (2, 1), "pp2": (1, 2)}


def file_bytes_read() -> int:
    for metric in ts.experimental_collect_matching_metrics("/tensorstore/kvstore/file/bytes_read"):
        return int(metric["values"][0]["value"])
    return 0


def data_bytes(items: Path) -> int:
    return sum(f.stat().st_size for f in items.rglob("*") if f.is_file() and "d" in f.relative_to(items).parts[:-1])


def pipeline_logits(chunk: torch.nn.Module, tokens: torch.Tensor, layout: ml.Layout) -> torch.Tensor | None:
    """Forward through two pipeline stages by hand: hidden states go from stage 0 to stage 1."""
    chunk.eval()
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    with torch.no_grad():
        if layout.is_first_stage:
            hidden = chunk(tokens, positions, None)
            dist.send(hidden.contiguous(), parallel_state.get_pipeline_model_parallel_next_rank())
            return None
        hidden = torch.empty(tokens.shape[1], tokens.shape[0], chunk.config.hidden_size)
        dist.recv(hidden, parallel_state.get_pipeline_model_parallel_prev_rank())
        chunk.set_input_tensor(hidden)
        return ml.gather_vocab(chunk(None, positions, None))


def run_case(cases: Path, name: str, layout: ml.Layout, export_dir: Path) -> dict:
    config, data = ml.read_case(cases / name)
    items = cases / name / data["items"]
    chunks = build_chunks(ml.provider(config, tensor=layout.tensor, pipeline=layout.pipeline, query_scaling="undo"), layout)
    stats = ReadStats()
    before = file_bytes_read()
    report = load_maxtext_weights(
        chunks,
        path=str(items),
        vocab_size=config["vocab_size"],
        tensor_parallel=layout.tensor,
        tensor_rank=layout.tensor_rank,
        query_scaling="undo",
        rope_layout="rotate_half",
        stats=stats,
    )
    result: dict = {
        "bytes_read": report.bytes_read,
        "per_leaf": stats.per_leaf,
        "file_bytes_read": file_bytes_read() - before,
        "data_bytes": data_bytes(items),
        "leaf_bytes": {n: OrbaxItem(items).info(n).nbytes for n in stats.per_leaf},
    }
    tokens = torch.from_numpy(np.load(cases / "tokens.npy").astype(np.int64))
    expected = np.load(cases / name / "logits.npy")
    logits = ml.logits(chunks[0], tokens) if layout.pipeline == 1 else pipeline_logits(chunks[0], tokens, layout)
    if logits is not None:
        result["max_logit_diff"] = float(np.abs(logits[..., : config["vocab_size"]].numpy() - expected).max())
    if layout.tensor > 1:
        full = gather_full_params(
            chunks, tensor_group=parallel_state.get_tensor_model_parallel_group(), pipeline_group=None, tied=config["tied"]
        )
        if full is not None:
            exported = export_maxtext(
                full.__getitem__,
                directory=export_dir / name,
                step=0,
                dims=Dims.of(chunks[0], vocab_size=config["vocab_size"]),
                scanned=report.scanned,
                dtype="float32",
                query_scaling="undo",
                rope_layout="rotate_half",
                zarr3=report.zarr3,
            )
            original, back = OrbaxItem(items), OrbaxItem(exported.items)
            weights = [n for n in original.names if n.startswith("params.")]
            result["export_mismatched"] = [n for n in weights if n not in back or original.read(n).tobytes() != back.read(n).tobytes()]
            result["export_leaves"] = len(back.names)
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("cases", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--layouts", nargs="+", choices=sorted(LAYOUTS), default=sorted(LAYOUTS))
    args = parser.parse_args()
    results: dict = {}
    for name in args.layouts:
        tensor, pipeline = LAYOUTS[name]
        layout = ml.start(tensor=tensor, pipeline=pipeline)
        results[name] = {case: run_case(args.cases, case, layout, args.out / f"export-{name}") for case in CASES}
        results[name]["ranks"] = {"tensor": layout.tensor_rank, "pipeline": layout.pipeline_rank}
        parallel_state.destroy_model_parallel()
    results["jax_imported"] = any(module == "jax" or module.startswith("jax.") for module in sys.modules)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rank{dist.get_rank()}.json").write_text(json.dumps(results, indent=1))
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
