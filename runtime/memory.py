"""Memory in use on this rank, and the device peak MFU divides by."""

from __future__ import annotations

import attrs
import psutil
import torch

from bridgec.runtime.throughput import peak_tflops


@attrs.frozen(kw_only=True)
class Memory:
    """Bytes in use: CUDA's allocator on cuda, the process's resident set on the CPU."""

    allocated: int | None = None
    reserved: int | None = None
    max_allocated: int | None = None
    rss: int | None = None

    def fields(self) -> dict[str, int]:
        """The measured ones, by name."""
        return {key: value for key, value in attrs.asdict(self).items() if value is not None}


def memory(device: torch.device) -> Memory:
    if device.type == "cuda":
        return Memory(
            allocated=torch.cuda.memory_allocated(device),
            reserved=torch.cuda.memory_reserved(device),
            max_allocated=torch.cuda.max_memory_allocated(device),
        )
    return Memory(rss=psutil.Process().memory_info().rss)


def device_peak(device: torch.device, *, precision: str, override: float | None) -> float | None:
    """The peak MFU divides by: the spec's override, else the table's for this GPU; None on the CPU."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    return peak_tflops(torch.cuda.get_device_name(device), precision)
