"""torchrun script: import MaxText test checkpoints at TP=2, PP=2 and DP=2 and measure parity and per-rank reads.

    torchrun --nproc-per-node 2 parallel_import.py CASES OUT --layouts tp2 pp2 dp2 ep2 [--cases NAME ...]
        [--query-scaling undo|keep]

Per layout (megatron's groups are rebuilt in the same processes, which saves a
launch) and per case it builds this rank's chunks, loads the checkpoint, computes the
logits (gathered over TP; sent from stage 0 to stage 1 under PP) and writes
OUT/rank<r>.json with, per layout and case: the max |logit - Flax logit|, the decoded bytes
this rank read per leaf, tensorstore's file bytes read, and the checkpoint's
data size. At TP=2 and PP=2 it also exports the model back (gathered on rank
0) and compares every leaf with the original, bit for bit. At DP=2 it resumes the
adamw case's JAX optimizer state into the distributed optimizer and trains the
remaining steps (:func:`run_resume`), and exports a bf16 model's fp32 main
parameters, split over the two ranks (:func:`run_bf16_export`). At EP=2 (MoE cases only) it also trains
each MoE block's curve case from its initial weights (:func:`run_curve`). Finally it records whether JAX was ever
imported (it must not be).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import megatron_llama as ml
import numpy as np
import tensorstore as ts
import torch
import torch.distributed as dist
from megatron.core import parallel_state

from bridgec.runtime.maxtext_export import export_maxtext, gather_full_params
from bridgec.runtime.maxtext_import import Dims, load_maxtext_optimizer_state, load_maxtext_weights
from bridgec.runtime.maxtext_slots import main_slots
from bridgec.runtime.model import build_chunks, build_model, unwrap
from bridgec.runtime.optim import build_optimizer, build_scheduler
from bridgec.runtime.orbax_read import OrbaxItem, ReadStats
from bridgec.runtime.step import train_step

CASES = ("scanned", "unscanned")
LAYOUTS = {"tp2": (2, 1, 1), "pp2": (1, 2, 1), "dp2": (1, 1, 1), "ep2": (1, 1, 2)}
"""(tensor, pipeline, expert) parallel sizes; ep2 splits the experts of MoE cases (the others are skipped there)."""


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


def run_case(cases: Path, name: str, layout: ml.Layout, export_dir: Path, query_scaling: str) -> dict:
    config, data = ml.read_case(cases / name)
    items = cases / name / data["items"]
    chunks = build_chunks(
        ml.provider(
            config,
            tensor=layout.tensor,
            pipeline=layout.pipeline,
            query_scaling=query_scaling,
            expert=layout.expert,
        ),
        layout,
    )
    stats = ReadStats()
    before = file_bytes_read()
    report = load_maxtext_weights(
        chunks,
        path=str(items),
        vocab_size=config["vocab_size"],
        tensor_parallel=layout.tensor,
        tensor_rank=layout.tensor_rank,
        query_scaling=query_scaling,
        rope_layout="rotate_half",
        expert_parallel=layout.expert,
        expert_rank=layout.expert_rank,
        stats=stats,
    )
    result: dict = {
        "block": report.block,
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
    if layout.tensor > 1 or layout.pipeline > 1 or layout.expert > 1:
        full = gather_full_params(
            chunks,
            tensor_group=parallel_state.get_tensor_model_parallel_group(),
            pipeline_group=parallel_state.get_pipeline_model_parallel_group(),
            tied=config["tied"],
            expert_group=parallel_state.get_expert_model_parallel_group() if layout.expert > 1 else None,
        )
        if full is not None:
            exported = export_maxtext(
                full.__getitem__,
                directory=export_dir / name,
                step=0,
                dims=Dims.of(chunks[0], vocab_size=config["vocab_size"], block=report.block),
                scanned=report.scanned,
                dtype="float32",
                query_scaling=query_scaling,
                rope_layout="rotate_half",
                zarr3=report.zarr3,
            )
            original, back = OrbaxItem(items), OrbaxItem(exported.items)
            weights = [n for n in original.names if n.startswith("params.")]
            result["export_mismatched"] = [
                n for n in weights if n not in back or original.read(n).tobytes() != back.read(n).tobytes()
            ]
            result["export_leaves"] = len(back.names)
    return result


def run_resume(cases: Path, layout: ml.Layout) -> dict:
    """DP=2 with the distributed optimizer: resume the adamw case's JAX state and train its remaining steps.

    Each data-parallel rank holds only its range of every flattened parameter's
    Adam state; each takes one of the two sequences of a step.
    """
    config, data = ml.read_case(cases / "adamw_resume")
    path = str(cases / "adamw_resume" / data["items"])
    model = build_model(
        ml.provider(config, tensor=1, pipeline=1, query_scaling="keep"),
        layout=layout,
        init_scheme="megatron",
        seed=1,
        init_std=0.02,
        num_layers=config["num_layers"],
        tied_output=config["tied"],
        dtype="fp32",
        distributed_optimizer=True,
    )
    settings = ml.adam_settings(data, dtype="fp32", distributed=True)
    optimizer = build_optimizer(model, settings)
    chunks = [unwrap(chunk) for chunk in model]
    common = dict(
        path=path,
        vocab_size=config["vocab_size"],
        tensor_parallel=1,
        tensor_rank=0,
        query_scaling="keep",
        rope_layout="rotate_half",
    )
    load_maxtext_weights(chunks, optimizer=optimizer, **common)
    step = load_maxtext_optimizer_state(
        chunks, optimizer, opt_type="adamw", adam_beta1=data["betas"][0], adam_beta2=data["betas"][1], **common
    )
    slots = main_slots(optimizer)
    partial = sum(1 for param, slot in slots.items() if slot.end - slot.start < param.numel())
    scheduler = build_scheduler(
        optimizer,
        lr=settings.lr,
        min_lr=settings.min_lr,
        weight_decay=settings.weight_decay,
        schedule=ml.constant_schedule(settings.lr),
    )
    batches = torch.from_numpy(np.load(cases / "adamw_resume" / "batches.npy").astype(np.int64))
    losses = []
    for batch in batches[step:, layout.data_rank : layout.data_rank + 1]:
        iterator = iter([{"tokens": batch[:, :-1], "labels": batch[:, 1:]}])
        result = train_step(
            ml.forward_step,
            [iterator],
            model,
            optimizer,
            scheduler,
            num_microbatches=1,
            micro_batch_size=1,
            seq_length=16,
            clip_grad=0.0,
        )
        losses.append(result.loss)
    expected = np.load(cases / "adamw_resume" / "losses.npy")[step:]
    owned = sum(slot.end - slot.start for slot in slots.values())
    total = sum(p.numel() for chunk in chunks for p in chunk.parameters())
    return {
        "losses": losses,
        "expected": expected.tolist(),
        "owned_fraction": owned / total,
        "params_with_partial_range": partial,
    }


def run_curve(cases: Path, name: str, layout: ml.Layout) -> dict:
    """Ten steps from the case's initial weights, each data-parallel rank taking one of a step's two sequences
    (under EP=2 the dense weights are data-parallel over both ranks and each rank holds half the experts)."""
    config, data = ml.read_case(cases / name)
    model = build_model(
        ml.provider(config, tensor=1, pipeline=1, query_scaling="keep", expert=layout.expert),
        layout=layout,
        init_scheme="megatron",
        seed=1,
        init_std=0.02,
        num_layers=config["num_layers"],
        tied_output=config["tied"],
        dtype="fp32",
        distributed_optimizer=False,
    )
    settings = ml.adam_settings(data, dtype="fp32", distributed=False)
    optimizer = build_optimizer(model, settings)
    load_maxtext_weights(
        [unwrap(chunk) for chunk in model],
        optimizer=optimizer,
        path=str(cases / name / "init/0/items"),
        vocab_size=config["vocab_size"],
        tensor_parallel=1,
        tensor_rank=0,
        query_scaling="keep",
        rope_layout="rotate_half",
        expert_parallel=layout.expert,
        expert_rank=layout.expert_rank,
    )
    scheduler = build_scheduler(
        optimizer,
        lr=settings.lr,
        min_lr=settings.min_lr,
        weight_decay=settings.weight_decay,
        schedule=ml.constant_schedule(settings.lr),
    )
    batches = torch.from_numpy(np.load(cases / name / "batches.npy").astype(np.int64))
    losses = []
    for batch in batches[:, layout.data_rank : layout.data_rank + 1]:
        result = train_step(
            ml.forward_step,
            [iter([{"tokens": batch[:, :-1], "labels": batch[:, 1:]}])],
            model,
            optimizer,
            scheduler,
            num_microbatches=1,
            micro_batch_size=1,
            seq_length=16,
            clip_grad=0.0,
        )
        losses.append(result.loss)
    return {"losses": losses, "expected": np.load(cases / name / "losses.npy").tolist()}


def run_bf16_export(cases: Path, layout: ml.Layout, out: Path) -> dict:
    """DP=2, bf16 model, distributed optimizer: export gathers the fp32 main ranges of both ranks, bit-exact."""
    config, data = ml.read_case(cases / "scanned")
    items = cases / "scanned" / data["items"]
    model = build_model(
        ml.provider(config, tensor=1, pipeline=1, query_scaling="keep", dtype="bf16"),
        layout=layout,
        init_scheme="megatron",
        seed=1,
        init_std=0.02,
        num_layers=config["num_layers"],
        tied_output=False,
        dtype="bf16",
        distributed_optimizer=True,
    )
    optimizer = build_optimizer(model, ml.adam_settings(data, dtype="bf16", distributed=True))
    chunks = [unwrap(chunk) for chunk in model]
    load_maxtext_weights(
        chunks,
        path=str(items),
        vocab_size=config["vocab_size"],
        tensor_parallel=1,
        tensor_rank=0,
        query_scaling="keep",
        rope_layout="rotate_half",
        optimizer=optimizer,
    )
    full = gather_full_params(
        chunks,
        tensor_group=parallel_state.get_tensor_model_parallel_group(),
        pipeline_group=None,
        tied=False,
        optimizer=optimizer,
    )
    if layout.data_rank != 0 or full is None:
        return {}
    exported = export_maxtext(
        full.__getitem__,
        directory=out,
        step=0,
        dims=Dims.of(chunks[0], vocab_size=config["vocab_size"]),
        scanned=True,
        dtype="float32",
        query_scaling="keep",
        rope_layout="rotate_half",
    )
    original, back = OrbaxItem(items), OrbaxItem(exported.items)
    weights = [n for n in original.names if n.startswith("params.")]
    return {"export_mismatched": [n for n in weights if original.read(n).tobytes() != back.read(n).tobytes()]}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("cases", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--layouts", nargs="+", choices=sorted(LAYOUTS), default=sorted(LAYOUTS))
    parser.add_argument("--cases", nargs="+", default=list(CASES), dest="names")
    parser.add_argument("--query-scaling", choices=("undo", "keep"), default="undo")
    args = parser.parse_args()
    results: dict = {}
    for name in args.layouts:
        tensor, pipeline, expert = LAYOUTS[name]
        layout = ml.start(tensor=tensor, pipeline=pipeline, expert=expert)
        if name == "dp2":
            results[name] = {
                "resume": run_resume(args.cases, layout),
                "bf16_export": run_bf16_export(args.cases, layout, args.out / "export-dp2-bf16"),
            }
        else:
            names = [
                case for case in args.names if expert == 1 or ml.read_case(args.cases / case)[0].get("num_experts")
            ]
            results[name] = {
                case: run_case(args.cases, case, layout, args.out / f"export-{name}", args.query_scaling)
                for case in names
            }
            if expert > 1:  # and ten training steps of each MoE block, split over the expert-parallel ranks
                blocks = sorted({case.rsplit("_", 1)[0] for case in names})
                results[name]["curves"] = {block: run_curve(args.cases, f"{block}_curve", layout) for block in blocks}
        results[name]["ranks"] = {
            "tensor": layout.tensor_rank,
            "pipeline": layout.pipeline_rank,
            "expert": layout.expert_rank,
        }
        parallel_state.destroy_model_parallel()
    results["jax_imported"] = any(module == "jax" or module.startswith("jax.") for module in sys.modules)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rank{dist.get_rank()}.json").write_text(json.dumps(results, indent=1))
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
