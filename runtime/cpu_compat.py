"""Run megatron-core on a CPU-only machine: the one place that patches it.

megatron-core hard-codes CUDA in a handful of places on the training path. On a
run compiled for ``device = "cpu"`` the generated script calls :func:`apply`
once, before building anything; on CUDA nothing here is touched.

Every substitution is scoped as narrowly as the code it answers allows:

* ``device="cuda"`` literals and ``torch.cuda.*`` calls are answered per
  megatron module, by giving that module a ``torch`` whose factory functions map
  a CUDA device to the CPU and whose ``cuda`` namespace answers with CPU
  equivalents (:data:`SCOPED_MODULES` lists each module and the lines).
* ``Tensor.type()`` type-string checks (``'torch.cuda.FloatTensor'``) are
  answered by one patch of ``torch.Tensor.type`` when called without arguments,
  because the check is a method call on a parameter and cannot be scoped.
* ``Tensor.cuda()`` returns the tensor itself: megatron-core moves tied
  embeddings with it before an all-reduce (a method call, so not scopable).
* The model-parallel RNG tracker keeps its per-rank streams on the CPU
  generator, so dropout inside tensor-parallel regions still differs per TP rank.

Each entry names the megatron-core 0.16.1 lines it answers; ``tests/runtime/
test_cpu_compat.py`` checks that every listed module still uses CUDA where we
say it does, so a megatron-core upgrade that moves the lines fails loudly.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import types
from typing import Any

import attrs
import torch

_CPU = torch.device("cpu")


def _cpu_device(device: Any) -> Any:
    """Map a CUDA device (``"cuda"``, ``"cuda:0"``, an index, a torch.device) to the CPU."""
    if device is None:
        return None
    if isinstance(device, int):
        return _CPU
    if isinstance(device, str) and device.startswith("cuda"):
        return _CPU
    if isinstance(device, torch.device) and device.type == "cuda":
        return _CPU
    return device


class _CudaOnCpu(types.ModuleType):
    """Stands in for ``torch.cuda`` inside one megatron module.

    Device queries answer "cpu", streams and synchronisation are no-ops (the CPU
    executes in program order), and RNG calls act on the CPU generator.
    Everything else falls through to the real ``torch.cuda``.
    """

    def __init__(self) -> None:
        super().__init__("torch.cuda (bridgec cpu)")

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cuda, name)

    @staticmethod
    def current_device() -> torch.device:
        return _CPU

    @staticmethod
    def synchronize(device: Any = None) -> None:
        return None

    @staticmethod
    def empty_cache() -> None:
        return None

    @staticmethod
    def current_stream(device: Any = None) -> _NullStream:
        return _NullStream()

    @staticmethod
    def default_stream(device: Any = None) -> _NullStream:
        return _NullStream()

    @staticmethod
    def Stream(device: Any = None, priority: int = 0) -> _NullStream:  # noqa: N802 (torch's name)
        return _NullStream()

    @staticmethod
    def stream(stream: Any) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    @staticmethod
    def get_rng_state(device: Any = None) -> torch.Tensor:
        return torch.get_rng_state()

    @staticmethod
    def set_rng_state(state: torch.Tensor, device: Any = None) -> None:
        torch.set_rng_state(state)

    @staticmethod
    def manual_seed(seed: int) -> None:
        torch.manual_seed(seed)


class _NullStream:
    """A CUDA stream on a machine with one in-order executor: every wait is already satisfied."""

    def wait_stream(self, other: Any) -> None:
        return None

    def synchronize(self) -> None:
        return None

    def record_event(self, event: Any = None) -> _NullEvent:
        return _NullEvent()


class _NullEvent:
    """A CUDA event recorded on a :class:`_NullStream`: always already complete."""

    def synchronize(self) -> None:
        return None

    def wait(self, stream: Any = None) -> None:
        return None

    def query(self) -> bool:
        return True


def _factory(name: str) -> Any:
    real = getattr(torch, name)

    def on_cpu(*args: Any, device: Any = None, pin_memory: bool = False, **kwargs: Any) -> Any:
        # pin_memory needs an accelerator; on the CPU it has nothing to pin for.
        return real(*args, device=_cpu_device(device), **kwargs)

    on_cpu.__name__ = name
    return on_cpu


class _TorchOnCpu(types.ModuleType):
    """Stands in for ``torch`` inside one megatron module (see the module docstring)."""

    _FACTORIES = ("tensor", "zeros", "ones", "empty", "full", "arange")

    def __init__(self) -> None:
        super().__init__("torch (bridgec cpu)")
        self.cuda = _CudaOnCpu()
        for name in self._FACTORIES:
            setattr(self, name, _factory(name))

    def __getattr__(self, name: str) -> Any:
        value = getattr(torch, name)
        setattr(self, name, value)  # later look-ups skip __getattr__
        return value


@attrs.frozen(kw_only=True)
class Substitution:
    """One megatron module whose ``torch`` is replaced on CPU, and why."""

    module: str
    """Dotted name of the megatron-core module."""
    answers: tuple[str, ...]
    """The CUDA uses it answers, as ``line: code`` of megatron-core 0.16.1."""


SCOPED_MODULES: tuple[Substitution, ...] = (
    Substitution(
        module="megatron.core.pipeline_parallel.schedules",
        answers=('596: total_num_tokens = torch.zeros([], dtype=torch.int, device="cuda")',),
    ),
    Substitution(
        module="megatron.core.pipeline_parallel.p2p_communication",
        answers=(
            "190: (3,), device=torch.cuda.current_device(), dtype=torch.int64",
            "242: torch.cuda.synchronize()",
        ),
    ),
    Substitution(
        module="megatron.core.optimizer.optimizer",
        answers=(
            "473: self.found_inf = torch.tensor([0.0], dtype=torch.float, device='cuda')",
            "907: self._scale = torch.tensor([1.0], dtype=torch.float, device='cuda')",
        ),
    ),
    Substitution(
        module="megatron.core.optimizer.grad_scaler",
        answers=(
            "15: self._scale = torch.tensor([initial_scale], dtype=torch.float, device='cuda')",
            "88: self.min_scale = torch.tensor([min_scale], dtype=torch.float, device='cuda')",
            "91: self.growth_factor = torch.tensor([growth_factor], dtype=torch.float, device='cuda')",
            "94: self.backoff_factor = torch.tensor([backoff_factor], dtype=torch.float, device='cuda')",
            "140: self._scale = state_dict['scale'].cuda(torch.cuda.current_device())",
        ),
    ),
    Substitution(
        module="megatron.core.optimizer.distrib_optimizer",
        answers=("791: (numel,), dtype=dtype, device=torch.cuda.current_device()",),
    ),
    Substitution(
        module="megatron.core.optimizer.clip_grads",
        answers=(
            "90: total_norm_cuda = torch.tensor([float(total_norm)], dtype=torch.float, device='cuda')",
            "115: grad_norm = torch.zeros(1, dtype=torch.float, device='cuda')",
        ),
    ),
    Substitution(
        module="megatron.core.distributed.param_and_grad_buffer",
        answers=(
            "417: stream_context = torch.cuda.stream(self.communication_stream)",
            "783: device=torch.cuda.current_device(),",
        ),
    ),
    Substitution(
        module="megatron.core.distributed.distributed_data_parallel",
        answers=("230: torch.cuda.Stream(device=torch.cuda.current_device())",),
    ),
    Substitution(
        module="megatron.core.tensor_parallel.layers",
        answers=("261: device=torch.cuda.current_device(),",),
    ),
    Substitution(
        module="megatron.core.tensor_parallel.mappings",
        answers=("91: torch.empty(dim_size, dtype=input_.dtype, device=torch.cuda.current_device())",),
    ),
    Substitution(
        module="megatron.core.tensor_parallel.random",
        answers=(
            "237: torch.cuda.manual_seed(seed)",
            "238: self.states_[name] = torch.cuda.get_rng_state()",
        ),
    ),
    Substitution(
        module="megatron.core.models.common.embeddings.rotary_pos_embedding",
        answers=("162: self.inv_freq = self.inv_freq.to(device=torch.cuda.current_device())",),
    ),
    Substitution(
        module="megatron.core.transformer.moe.token_dispatcher",
        answers=("445: MoEAlltoAllTokenDispatcher.cuda_dtoh_stream = torch.cuda.Stream()",),
    ),
    Substitution(
        module="megatron.core.transformer.moe.router",
        answers=("90: self.weight.data = self.weight.data.to(device=torch.cuda.current_device())",),
    ),
    Substitution(
        module="megatron.core.transformer.moe.moe_utils",
        answers=('998: tracker[key]["values"] = torch.zeros(num_layers, device="cuda")',),
    ),
    Substitution(
        module="megatron.core.transformer.utils",
        answers=('35: return torch.triu(torch.ones(sq, sq, device="cuda"), diagonal=1).bool()',),
    ),
    Substitution(
        module="megatron.core.utils",
        answers=('1207: l2_cuda = torch.tensor([float(l2_reduced)], dtype=torch.float, device="cuda")',),
    ),
    Substitution(
        module="megatron.core.rerun_state_machine",
        answers=("261: torch.tensor(value, dtype=torch.int32, device='cuda')",),
    ),
    # The checkpoint path (dist_checkpointing save with the torch_dist backend).
    Substitution(
        module="megatron.core.dist_checkpointing.strategies.filesystem_async",
        answers=("230: torch.cuda.synchronize()",),
    ),
    Substitution(
        module="megatron.core.dist_checkpointing.strategies.async_utils",
        answers=(
            "165: ten = torch.tensor([is_alive], dtype=torch.int, device=torch.cuda.current_device())",
            "212: torch.cuda.synchronize()",
            "604: ten = torch.tensor([call_idx], dtype=torch.int, device=torch.cuda.current_device())",
        ),
    ),
    Substitution(
        module="megatron.core.dist_checkpointing.strategies.state_dict_saver",
        answers=("252: [int(len(node_failures) > 0)], dtype=torch.int, device=torch.cuda.current_device()",),
    ),
)

_applied = False
_real_tensor_type = torch.Tensor.type


def _tensor_type_as_cuda(self: torch.Tensor, dtype: Any = None, non_blocking: bool = False, **kwargs: Any) -> Any:
    """``Tensor.type()`` that names CPU tensors like CUDA ones.

    Answers megatron-core 0.16.1 optimizer/distrib_optimizer.py:420
    ``elif model_param.type() == 'torch.cuda.FloatTensor':`` (and :361, :582,
    optimizer.py:671, :690, clip_grads.py:167), which reject CPU parameters.
    Calls with a dtype argument (conversions) are passed through untouched.
    """
    if dtype is None and not kwargs:
        name = _real_tensor_type(self)
        if isinstance(name, str) and name.startswith("torch.") and not name.startswith("torch.cuda."):
            return "torch.cuda." + name[len("torch.") :]
        return name
    return _real_tensor_type(self, dtype, non_blocking, **kwargs)


def _tensor_cuda_stays(
    self: torch.Tensor, device: Any = None, non_blocking: bool = False, **kwargs: Any
) -> torch.Tensor:
    """``Tensor.cuda()`` on a CPU run: the tensor stays where it is.

    Answers megatron-core 0.16.1 models/common/language_module/language_module.py:244
    ``weight.data = weight.data.cuda()`` (tied embeddings with pipeline parallelism).
    """
    return self


class _SameGeneratorWarning(logging.Filter):
    """Drops megatron's "CPU RNG state changed within GPU RNG context" warning on CPU runs.

    tensor_parallel/random.py:265 warns when the CPU generator moves inside a
    fork of the CUDA generator; on a CPU run the two are the same generator, so
    every dropout region inside a fork would warn although nothing is wrong.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "CPU RNG state changed within GPU RNG context" not in record.getMessage()


def _cpu_get_rng_state(device: Any = "cuda", clone: bool = False, graph_safe: bool = False) -> torch.Tensor:
    return torch.get_rng_state()


def _cpu_set_rng_state(new_state: torch.Tensor, device: int = -1, graph_safe: bool = False) -> None:
    torch.set_rng_state(new_state)


def apply() -> None:
    """Apply every substitution once. Idempotent; only scripts compiled for ``device = "cpu"`` call it.

    It is safe on a machine that has GPUs too (such a run stays on the CPU), but
    the two global Tensor patches then apply to the whole process, user hooks
    included: ``Tensor.cuda()`` leaves tensors on the CPU.
    """
    global _applied
    if _applied:
        return
    proxy = _TorchOnCpu()
    for substitution in SCOPED_MODULES:
        module = importlib.import_module(substitution.module)
        module.torch = proxy  # type: ignore[attr-defined]
    torch.Tensor.type = _tensor_type_as_cuda  # type: ignore[method-assign]
    torch.Tensor.cuda = _tensor_cuda_stays  # type: ignore[method-assign]
    # tensor_parallel/random.py:55 and :66-103 read and set the CUDA generator by index
    # (torch.cuda.default_generators[idx]); the tracker's streams live on the CPU one here.
    random = importlib.import_module("megatron.core.tensor_parallel.random")
    random._get_cuda_rng_state = _cpu_get_rng_state  # type: ignore[attr-defined]
    random._set_cuda_rng_state = _cpu_set_rng_state  # type: ignore[attr-defined]
    logging.getLogger(random.__name__).addFilter(_SameGeneratorWarning())
    # transformer/moe/moe_utils.py:1192 tests ``te_general_gemm is not None``, but the name is only
    # bound when Transformer Engine imports (:34); without TE the MoE router raises NameError.
    moe_utils = importlib.import_module("megatron.core.transformer.moe.moe_utils")
    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None  # type: ignore[attr-defined]
    _applied = True


def applied() -> bool:
    """Whether :func:`apply` ran in this process."""
    return _applied
