"""Warnings of the libraries bridgec stands on that say nothing a user can act on, filtered by their text.

Each entry says why it is noise; every other warning still prints. A generated
script calls :func:`silence_third_party_noise` before it imports torch or
megatron-core, and so does the command line. This module imports nothing heavy.
"""

from __future__ import annotations

import warnings

import attrs


@attrs.frozen
class Noise:
    message: str
    """A regular expression matched at the start of the warning's text."""
    category: type[Warning]
    why: str
    cpu_only: bool = False


NOISE: tuple[Noise, ...] = (
    Noise(
        "full scope is deprecated",
        UserWarning,
        "megatron-core 0.16's own TransformerConfig default (the CUDA-graph scope) warns on every config",
    ),
    Noise(
        r".*(Transformer Engine|Apex).* not installed",
        UserWarning,
        "megatron-core announces at import that Transformer Engine and Apex are absent; a CPU run uses its "
        "local layers and torch optimizers by design",
        cpu_only=True,
    ),
    Noise(
        r"When using async grad allreduce it is recommended to set the environment variable "
        "CUDA_DEVICE_MAX_CONNECTIONS",
        UserWarning,
        "megatron-core's tensor-parallel layers advise a CUDA setting, which a CPU run has no use for",
        cpu_only=True,
    ),
    Noise(
        r"`load_state_dict` is deprecated and will be removed",
        FutureWarning,
        "torch.distributed.checkpoint's deprecation of the call megatron-core's loader makes, on every resume",
    ),
    Noise(
        r"Please use DTensor instead and we are deprecating ShardedTensor",
        FutureWarning,
        "torch.distributed.checkpoint's deprecation of the ShardedTensor megatron-core loads into, on every resume",
    ),
)


def silence_third_party_noise(device: str) -> None:
    """Ignore the warnings of :data:`NOISE` that apply on ``device`` ("cpu" or "cuda")."""
    for noise in NOISE:
        if device == "cpu" or not noise.cpu_only:
            warnings.filterwarnings("ignore", message=noise.message, category=noise.category)
