"""torchrun worker of tests/runtime/test_peft.py: train each compiled [peft] script for STEPS steps on fixed
batches and, on global rank 0, the same adapters with Hugging Face peft and torch's AdamW; write OUT/rank<r>.json.

    torchrun --nproc-per-node N -m tests.runtime.peft_worker OUT BASE NAME=SCRIPT=ADAPTER ...

Every script has the same layout: the first one's start() sets up torch.distributed and megatron's groups and
each script's build() builds its model on them. start_from_checkpoint() loads the base model and the peft-saved
adapter exactly as the script's main() does; the steps run through the runtime's own train_step.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from bridgec.runtime.build import Weights
from bridgec.runtime.checkpoint_files import find_step, read_tensor_metadata
from bridgec.runtime.convert import megatron_to_hf
from bridgec.runtime.errors import RunError
from bridgec.runtime.loop import Progress, TrainState
from bridgec.runtime.model import unwrap
from bridgec.runtime.peft_hf import load_hf_adapter
from bridgec.runtime.step import train_step

STEPS = 10
VOCAB = 300


def batches(global_batch: int, seq_length: int) -> torch.Tensor:
    """STEPS global batches of seq_length + 1 tokens: [STEPS, global_batch, seq_length + 1].

    One random batch, every step: the adapters learn it, so the losses fall (the check compares moving curves).
    """
    generator = torch.Generator().manual_seed(11)
    return torch.randint(0, VOCAB, (1, global_batch, seq_length + 1), generator=generator).expand(STEPS, -1, -1)


def _microbatches(tokens: torch.Tensor, *, micro: int, data_rank: int, data: int) -> list[dict[str, torch.Tensor]]:
    """One step's microbatches of this data-parallel rank (a contiguous share of the global batch)."""
    share = tokens.shape[0] // data
    mine = tokens[data_rank * share : (data_rank + 1) * share]
    out = []
    for start in range(0, share, micro):
        part = mine[start : start + micro]
        inputs, labels = part[:, :-1], part[:, 1:]
        out.append(
            {
                "tokens": inputs,
                "labels": labels,
                "loss_mask": torch.ones(labels.shape),
                "position_ids": torch.arange(inputs.shape[1]).expand_as(inputs),
            }
        )
    return out


SAVE_AT = 5
"""Scripts with a [checkpoint] save after this step; a second build resumes there and runs the rest again."""


def _steps(script, layout, built, data: torch.Tensor, steps: range) -> list[float]:  # noqa: ANN001
    losses = []
    for step in steps:
        micro = _microbatches(data[step], micro=script.MICRO_BATCH_SIZE, data_rank=layout.data_rank, data=layout.data)
        state = TrainState(step=step, consumed_samples=step * script.GLOBAL_BATCH_SIZE, layout=layout)
        result = train_step(
            functools.partial(script.forward_step, state),
            [iter(micro)],
            built.model,
            built.optimizer,
            built.scheduler,
            num_microbatches=script.NUM_MICROBATCHES,
            micro_batch_size=script.MICRO_BATCH_SIZE,
            seq_length=script.SEQ_LENGTH,
            clip_grad=script.CLIP_GRAD,
        )
        losses.append(result.loss)
        if built.checkpointer is not None and step + 1 in (SAVE_AT, STEPS):
            built.checkpointer.save(
                Progress(step=step + 1, consumed_samples=(step + 1) * script.GLOBAL_BATCH_SIZE, skipped_steps=0)
            )
    return losses


def _resumed(script, layout, data: torch.Tensor) -> dict[str, object]:  # noqa: ANN001
    """A fresh build that starts as main() does on resume: the base (and peft adapter), then the checkpoint."""
    built = script.build(layout)
    script.start_from_checkpoint(built)
    progress = built.checkpointer.load(step=SAVE_AT)
    assert progress is not None and progress.step == SAVE_AT
    folder = find_step(built.checkpointer.directory, SAVE_AT)
    keys = sorted(read_tensor_metadata(folder).state_dict_metadata)
    return {
        "resumed_losses": _steps(script, layout, built, data, range(SAVE_AT, STEPS)),
        "checkpoint_keys": keys,
        "checkpoint_bytes": sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()),
    }


def _megatron(script, layout, data: torch.Tensor) -> dict[str, object]:  # noqa: ANN001
    built = script.build(layout)
    script.start_from_checkpoint(built)
    chunks = [unwrap(chunk) for chunk in built.model]
    base = {name: p.detach().clone() for chunk in chunks for name, p in chunk.named_parameters() if not p.requires_grad}
    trainable = sum(p.numel() for chunk in chunks for p in chunk.parameters() if p.requires_grad)
    in_optimizer = sum(p.numel() for group in built.optimizer.param_groups for p in group["params"])
    losses = _steps(script, layout, built, data, range(STEPS))
    moved = [
        name
        for chunk in chunks
        for name, p in chunk.named_parameters()
        if name in base and not torch.equal(p, base[name])
    ]
    grads = [
        name
        for chunk in chunks
        for name, p in chunk.named_parameters()
        if not p.requires_grad and (p.grad is not None or getattr(p, "main_grad", None) is not None)
    ]
    ddp_elements = sum(buffer.numel for chunk in built.model for buffer in chunk.buffers)
    return {
        "losses": losses,
        "trainable": trainable,
        "in_optimizer": in_optimizer,
        "grad_buffer": ddp_elements,
        "frozen_moved": moved,
        "frozen_with_grads": grads,
        "table_trainable": script.TRAINABLE_PARAMETERS,
    }


def _export(script_path: Path, script, layout, out: Path) -> dict[str, str]:  # noqa: ANN001
    """bridgec convert megatron-to-hf's runtime, from the step-10 checkpoint: a PEFT folder, and a merged model."""
    folders = {"adapter": out / f"{script_path.stem}_adapter", "merged": out / f"{script_path.stem}_merged"}
    for kind, folder in folders.items():
        built = script.build(layout, weights=Weights.REPLACED)
        directory = built.checkpointer.directory
        megatron_to_hf(
            script_path,
            built,
            directory=directory,
            output=folder,
            step=None,
            dtype="float32",
            adapter=kind == "adapter",
        )
    return {kind: str(folder) for kind, folder in folders.items()}


def _compare_exports(base: Path, trained, exports: dict[str, str], data: torch.Tensor) -> dict[str, float]:  # noqa: ANN001
    """The exports against peft's own model after the same 10 steps: its logits, and its adapter tensors."""
    import peft
    import transformers
    from safetensors.torch import load_file

    inputs = data[0][:, :-1]
    with torch.no_grad():
        expected = trained(inputs).logits
        loaded = peft.PeftModel.from_pretrained(
            transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="eager"),
            exports["adapter"],
        )
        merged = transformers.AutoModelForCausalLM.from_pretrained(
            exports["merged"], dtype=torch.float32, attn_implementation="eager"
        )
        ours = load_file(str(Path(exports["adapter"]) / "adapter_model.safetensors"))
        theirs = peft.get_peft_model_state_dict(trained)
        return {
            "adapter_logits_diff": float((loaded(inputs).logits - expected).abs().max()),
            "merged_logits_diff": float((merged(inputs).logits - expected).abs().max()),
            "logits_scale": float(expected.abs().max()),
            "adapter_tensor_diff": max(float((ours[k] - theirs[k]).abs().max()) for k in theirs),
            "adapter_keys_equal": float(sorted(ours) == sorted(theirs)),
        }


def _reference(base: Path, adapter: Path, data: torch.Tensor, *, lr: float, betas: tuple[float, float], eps: float):  # noqa: ANN201
    """Hugging Face peft: the same adapter, batches and Adam (no weight decay, constant learning rate)."""
    import peft
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="eager")
    model = peft.PeftModel.from_pretrained(model, adapter, is_trainable=True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=0.0)
    losses = []
    for step in range(STEPS):
        inputs, labels = data[step][:, :-1], data[step][:, 1:]
        logits = model(inputs).logits
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum"
        )
        loss = loss / labels.numel()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    return losses, model


def _refused(script, layout, adapter: Path) -> str:  # noqa: ANN001
    """The RunError an adapter that does not fit gives (its exit code and message), before anything is loaded."""
    built = script.build(layout)
    before = [p.detach().clone() for chunk in built.model for p in chunk.parameters() if p.requires_grad]
    try:
        load_hf_adapter(
            [unwrap(c) for c in built.model],
            path=adapter,
            tensor_parallel=layout.tensor,
            tensor_rank=layout.tensor_rank,
        )
    except RunError as error:
        after = [p for chunk in built.model for p in chunk.parameters() if p.requires_grad]
        untouched = all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
        return f"{int(error.code)} untouched={untouched} {error}"
    return "loaded"


def load_module(path: Path):  # noqa: ANN201 - the generated script as a module
    """The whole script (its forward_step and start_from_checkpoint too, which bridgec convert's view leaves out)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    out, base = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, object]] = {}
    layout = None
    for triple in sys.argv[3:]:
        name, script_path, adapter = triple.split("=")
        script = load_module(Path(script_path))
        if layout is None:
            layout = script.start("peft worker")
        if name.startswith("refused"):
            results[name] = {"message": _refused(script, layout, Path(adapter))}
            continue
        data = batches(script.GLOBAL_BATCH_SIZE, script.SEQ_LENGTH)
        found = _megatron(script, layout, data)
        exports = None
        if getattr(script, "CHECKPOINT_DIR", None) is not None:
            found.update(_resumed(script, layout, data))
            exports = _export(Path(script_path), script, layout, out)
        if dist.get_rank() == 0:
            found["reference"], trained = _reference(
                base,
                Path(adapter),
                data,
                lr=script.LR,
                betas=(script.ADAM_BETA1, script.ADAM_BETA2),
                eps=script.ADAM_EPS,
            )
            if exports is not None:
                found.update(_compare_exports(base, trained, exports, data))
        results[name] = found
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
