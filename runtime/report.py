"""What the logging rank says at the start and the end of a launch: what runs, on what, where it writes, how it went.

The start banner names the run, its layout and size, the data (documents,
tokens, how many epochs this run reads) and the output paths; the end summary
gives the steps this launch ran, their time and the last losses. Only the text
is built here; ``loop.train`` prints it through the metrics log (one rank).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from megatron.core.datasets.blended_dataset import BlendedDataset
from megatron.core.datasets.gpt_dataset import MockGPTDataset

from bridgec.runtime.parallel import Layout
from bridgec.runtime.sft_data import SftBlend, SftDataset


def _shown(path: Path) -> str:
    """A path relative to the working folder when it lies below it (shorter to read), else as it is."""
    relative = os.path.relpath(path)
    return path.as_posix() if relative.startswith("..") else Path(relative).as_posix()


def _parts(dataset: Any) -> list[Any]:
    """The GPT datasets behind ``dataset`` (one, or a blend's sources)."""
    return list(dataset.datasets) if isinstance(dataset, BlendedDataset) else [dataset]


def describe_data(dataset: Any, *, samples: int, seq_length: int) -> str:
    """The training split in a line: documents and tokens, and how many epochs ``samples`` sequences read."""
    if isinstance(dataset, SftDataset):
        return dataset.describe(Path(dataset.tokens.path_prefix).name)
    if isinstance(dataset, SftBlend):
        return dataset.describe()
    parts = _parts(dataset)
    if any(isinstance(part, MockGPTDataset) for part in parts):
        return "mock (megatron-core's synthetic sequences)"
    documents = sum(len(part.indices) for part in parts)
    tokens = sum(int(part.dataset.sequence_lengths[part.indices].sum()) for part in parts)
    read = samples * seq_length
    names = ", ".join(Path(part.dataset_path).name for part in parts)
    return (
        f"{names}: {documents:,} documents, {tokens:,} tokens in the training split; this run reads "
        f"{samples:,} sequences x {seq_length} = {read:,} tokens, {read / tokens:.2f} epochs"
    )


def start_banner(
    *,
    run_name: str,
    spec: Path,
    parameters: int,
    layout: Layout,
    data: str,
    first_step: int,
    iters: int,
    global_batch_size: int,
    outputs: Sequence[tuple[str, Path]],
) -> str:
    sizes = f"tensor {layout.tensor}, pipeline {layout.pipeline}"
    if layout.virtual_pipeline:
        sizes += f" (virtual {layout.virtual_pipeline})"
    sizes += f", context {layout.context}, data {layout.data}" + (
        f", expert {layout.expert}" if layout.expert > 1 else ""
    )
    resumed = f" (from step {first_step})" if first_step else ""
    return "\n".join([
        f"run {run_name} ({_shown(spec)}): {parameters:,} parameters",
        f"  layout   {layout.world_size} process(es) on {layout.device.type}: {sizes}",
        f"  data     {data}",
        f"  steps    {first_step + 1}-{iters}{resumed}, {global_batch_size} sequences each",
        "  outputs  " + ", ".join(f"{what} {_shown(path)}" for what, path in outputs),
    ])  # fmt: skip


def end_summary(
    *, first_step: int, last_step: int, seconds: float, loss: float | None, valid_loss: float | None
) -> str:
    steps = last_step - first_step
    if steps == 0:
        ran = "no steps"
    else:
        ran = f"steps {first_step + 1}-{last_step} in {seconds:.1f} s ({seconds / steps:.3f} s/step)"
    losses = [f"last loss {loss:.6f}"] if loss is not None else []
    losses += [f"last validation loss {valid_loss:.6f}"] if valid_loss is not None else []
    return f"this launch: {ran}" + ("; " + ", ".join(losses) if losses else "")
