"""torchrun worker of tests/runtime/test_hf_import.py: load each Hugging Face folder into its compiled
script's model, run one forward on fixed tokens, and write what it measured to OUT/rank<r>.json.

    torchrun --nproc-per-node N -m tests.runtime.hf_parity_worker OUT SCRIPT:FOLDER ...

Every script has the same layout; the first one's start() sets up torch.distributed and megatron's groups and
each script's build() builds its model on them. On the rank that holds the logits (the last pipeline stage,
tensor rank 0) the same tokens go through ``transformers``' own forward of the folder, in fp32.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from bridgec.runtime.build import Weights
from bridgec.runtime.convert import load_script
from bridgec.runtime.hf_import import load_hf_weights
from bridgec.runtime.hf_read import ReadStats
from bridgec.runtime.model import unwrap

TOKENS = torch.randint(0, 300, (2, 17), generator=torch.Generator().manual_seed(7))
"""Two sequences; inputs are the first 16 tokens, labels the last 16."""


def _forward(chunk: torch.nn.Module, layout, inputs: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
    """Logits (vocab gathered over tensor ranks) or per-token losses on the last stage; None elsewhere."""
    positions = torch.arange(inputs.shape[1]).expand_as(inputs)
    if layout.pipeline > 1:
        hidden_shape = (inputs.shape[1], inputs.shape[0], chunk.config.hidden_size)
        if not layout.is_first_stage:
            received = torch.empty(hidden_shape)
            dist.recv(received, src=parallel_state.get_pipeline_model_parallel_prev_rank())
            chunk.set_input_tensor(received)
        output = chunk(inputs, positions, None, labels=labels)
        if not layout.is_last_stage:
            dist.send(output.detach().contiguous(), dst=parallel_state.get_pipeline_model_parallel_next_rank())
            return None
    else:
        output = chunk(inputs, positions, None, labels=labels)
    if labels is not None or layout.tensor == 1:
        return output.detach()
    pieces = [torch.empty_like(output) for _ in range(layout.tensor)]
    dist.all_gather(pieces, output.detach().contiguous(), group=parallel_state.get_tensor_model_parallel_group())
    return torch.cat(pieces, dim=-1)


def _reference(folder: Path, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        logits = model(inputs).logits
        # transformers shifts the labels itself: the same 16 predictions as megatron's (inputs, labels).
        loss = model(torch.cat([inputs, labels[:, -1:]], dim=1), labels=torch.cat([inputs, labels[:, -1:]], dim=1))
    return logits, float(loss.loss)


def _file_bytes(folder: Path) -> int:
    """Bytes of tensor data in the folder's safetensors files (what reading every tensor whole reads)."""
    from safetensors import safe_open

    total = 0
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - a safetensors handle, not a dict
                found = handle.get_slice(name)
                total += torch.Size(found.get_shape()).numel() * {"F32": 4, "BF16": 2, "F16": 2}[found.get_dtype()]
    return total


def _first_batch_loss(folder: Path, built) -> float:  # noqa: ANN001 - the script's Built
    """transformers' per-token loss over the run's first global batch (one data-parallel rank: samples 0..B-1),
    the loss the script's step 1 reports."""
    import transformers

    dataset = built.datasets().train
    samples = [dataset[index] for index in range(built.imports.global_batch_size)]
    tokens = torch.stack([sample["tokens"] for sample in samples])
    labels = torch.stack([sample["labels"] for sample in samples])
    mask = torch.stack([sample["loss_mask"] for sample in samples]).float()
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        logits = model(tokens).logits
    losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
    return float((losses * mask).sum() / mask.sum())


def main() -> None:
    out = Path(sys.argv[1])
    pairs = [Path(script_path) for script_path in sys.argv[2:]]
    results: dict[str, dict[str, float | int]] = {}
    layout = None
    for pair in pairs:
        script_path, folder = str(pair).split(":")
        script = load_script(Path(script_path))
        if layout is None:
            layout = script.start("hf parity worker")
        built = script.build(layout, weights=Weights.REPLACED)
        chunks = [unwrap(chunk) for chunk in built.model]
        stats = ReadStats()
        vocab = chunks[0].vocab_size
        report = load_hf_weights(
            chunks,
            path=folder,
            vocab_size=300,
            tensor_parallel=layout.tensor,
            tensor_rank=layout.tensor_rank,
            expert_parallel=layout.expert,
            expert_rank=layout.expert_rank,
            optimizer=built.optimizer,
            stats=stats,
        )
        inputs, labels = TOKENS[:, :-1], TOKENS[:, 1:]
        with torch.no_grad():
            logits = _forward(chunks[0], layout, inputs, None)
            losses = _forward(chunks[0], layout, inputs, labels)
        found: dict[str, float | int] = {
            "bytes_read": report.bytes_read,
            "file_bytes": _file_bytes(Path(folder)),
            "padded_vocab": vocab,
        }
        if logits is not None and layout.tensor_rank == 0:
            hf_logits, hf_loss = _reference(Path(folder), inputs, labels)
            found["logits_diff"] = float((logits[..., :300] - hf_logits).abs().max())
            found["logits_scale"] = float(hf_logits.abs().max())
            found["padded_logits_max"] = float(logits[..., 300:].abs().max()) if vocab > 300 else 0.0
            found["loss"] = float(losses.float().mean())
            found["hf_loss"] = hf_loss
            if layout.world_size == 1:
                found["hf_first_batch_loss"] = _first_batch_loss(Path(folder), built)
        results[Path(script_path).stem] = found
        del built
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
