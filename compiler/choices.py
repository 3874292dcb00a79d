"""Every enumerated spec value as an enum: what lowering dispatches on, exhaustively.

The spec keeps its TOML-facing ``Literal`` types (spec.py: cattrs structures
them and the spec reference prints them); lowering turns each value into one of
these members with :func:`choice` and then decides with a ``match`` that ends in
``assert_never`` or with a table keyed by every member. A value added to a spec
Literal alone fails the test that keeps these enums and the Literals equal;
added here as well, it fails every match and table that does not handle it
(tests/compiler/test_exhaustive.py compiles every value of every field).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TypeVar

E = TypeVar("E", bound=enum.Enum)
V = TypeVar("V")


class Device(enum.Enum):
    CPU = "cpu"
    CUDA = "cuda"


class ModelKind(enum.Enum):
    GPT = "gpt"


class Normalization(enum.Enum):
    LAYERNORM = "layernorm"
    RMSNORM = "rmsnorm"


class Activation(enum.Enum):
    GELU = "gelu"
    SWIGLU = "swiglu"
    GEGLU = "geglu"


class GeluApproximation(enum.Enum):
    NONE = "none"
    TANH = "tanh"


class QueryScaling(enum.Enum):
    ATTENTION = "attention"
    INITIAL_WEIGHTS = "initial_weights"
    NONE = "none"


class PositionEmbedding(enum.Enum):
    LEARNED = "learned"
    ROPE = "rope"


class TransformerImpl(enum.Enum):
    LOCAL = "local"
    TORCH = "torch"
    TRANSFORMER_ENGINE = "transformer_engine"


class MixedPrecision(enum.Enum):
    BF16_MIXED = "bf16_mixed"
    FP16_MIXED = "fp16_mixed"
    BF16_WITH_FP8_DELAYED_SCALING_MIXED = "bf16_with_fp8_delayed_scaling_mixed"
    BF16_WITH_FP8_CURRENT_SCALING_MIXED = "bf16_with_fp8_current_scaling_mixed"
    BF16_WITH_MXFP8_MIXED = "bf16_with_mxfp8_mixed"
    BF16_WITH_FP8_SUBCHANNEL_SCALING_MIXED = "bf16_with_fp8_subchannel_scaling_mixed"


class RecomputeGranularity(enum.Enum):
    SELECTIVE = "selective"
    FULL = "full"


class RecomputeMethod(enum.Enum):
    UNIFORM = "uniform"
    BLOCK = "block"


class RecomputeModule(enum.Enum):
    CORE_ATTN = "core_attn"
    MLP = "mlp"
    LAYERNORM = "layernorm"
    MOE = "moe"
    MOE_ACT = "moe_act"
    MLA_UP_PROJ = "mla_up_proj"
    SHARED_EXPERTS = "shared_experts"


class CrossEntropyFusionImpl(enum.Enum):
    NATIVE = "native"
    TE = "te"


class CudaGraphImpl(enum.Enum):
    NONE = "none"
    LOCAL = "local"
    TRANSFORMER_ENGINE = "transformer_engine"


class CudaGraphScope(enum.Enum):
    ATTN = "attn"
    MLP = "mlp"
    MOE = "moe"
    MOE_ROUTER = "moe_router"
    MOE_PREPROCESS = "moe_preprocess"
    FULL_ITERATION = "full_iteration"


class OptimizerName(enum.Enum):
    ADAM = "adam"
    SGD = "sgd"


class OptimizerSemantics(enum.Enum):
    MEGATRON = "megatron"
    OPTAX = "optax"


class DecayMaskPaths(enum.Enum):
    LINEN = "linen"
    NNX = "nnx"


class Decay(enum.Enum):
    CONSTANT = "constant"
    LINEAR = "linear"
    COSINE = "cosine"
    WSD = "wsd"


class WsdDecayStyle(enum.Enum):
    LINEAR = "linear"
    COSINE = "cosine"
    EXPONENTIAL = "exponential"
    MINUS_SQRT = "minus_sqrt"


class SchedulerStyle(enum.Enum):
    MEGATRON = "megatron"
    MAXTEXT = "maxtext"
    OPTAX = "optax"


class MaxTextScheduleKind(enum.Enum):
    COSINE = "cosine"
    WSD = "wsd"


class MaxTextWsdDecayStyle(enum.Enum):
    LINEAR = "linear"
    COSINE = "cosine"


class MaxTextScheduleVariant(enum.Enum):
    V2026_02 = "2026-02"
    V2026_01 = "2026-01"
    V2025 = "2025"


class OptaxScheduleKind(enum.Enum):
    CONSTANT = "constant"
    LINEAR = "linear"
    COSINE_DECAY = "cosine_decay"
    WARMUP_COSINE_DECAY = "warmup_cosine_decay"


class DType(enum.Enum):
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


class Fp8Recipe(enum.Enum):
    DELAYED = "delayed"
    TENSORWISE = "tensorwise"
    BLOCKWISE = "blockwise"
    MXFP8 = "mxfp8"


class DataKind(enum.Enum):
    MOCK = "mock"
    INDEXED = "indexed"
    SFT = "sft"


class LossKind(enum.Enum):
    CROSS_ENTROPY = "cross_entropy"


class Reduction(enum.Enum):
    PER_TOKEN = "per_token"
    PER_MICROBATCH = "per_microbatch"


class InitScheme(enum.Enum):
    PORTABLE = "portable"
    MEGATRON = "megatron"


class CheckpointFormat(enum.Enum):
    ORBAX = "orbax"
    HUGGINGFACE = "huggingface"
    MEGATRON = "megatron"


class CheckpointLayout(enum.Enum):
    MAXTEXT = "maxtext"


class LayerLoss(enum.Enum):
    COSINE = "cosine"
    MSE = "mse"


class RopeLayout(enum.Enum):
    ROTATE_HALF = "rotate_half"
    INTERLEAVED = "interleaved"


class AdamStateKind(enum.Enum):
    ADAMW = "adamw"
    ADAM_PAX = "adam_pax"


class NonFinitePolicy(enum.Enum):
    SKIP = "skip"
    STOP = "stop"


class TrainMode(enum.Enum):
    PRETRAIN = "pretrain"
    FINETUNE = "finetune"


class LaunchScheduler(enum.Enum):
    TORCHRUN = "torchrun"
    SLURM = "slurm"
    KUBERNETES = "kubernetes"


class LogLevel(enum.Enum):
    DEBUG = "debug"
    INFO = "info"
    QUIET = "quiet"


class WandbMode(enum.Enum):
    ONLINE = "online"
    OFFLINE = "offline"
    DISABLED = "disabled"


class PeftMethod(enum.Enum):
    LORA = "lora"
    DORA = "dora"


class PeftInitA(enum.Enum):
    KAIMING_UNIFORM = "kaiming_uniform"
    GAUSSIAN = "gaussian"
    XAVIER_NORMAL = "xavier_normal"


class PeftInitB(enum.Enum):
    ZERO = "zero"
    XAVIER_NORMAL = "xavier_normal"


def choice(kind: type[E], value: str) -> E:
    """The member of ``kind`` for a validated spec value (a ValueError here is a Literal without its member)."""
    return kind(value)


def table(kind: type[E], entries: Mapping[E, V]) -> Mapping[E, V]:
    """``entries`` after checking, at import, that it has every member of ``kind`` (a dispatch table)."""
    missing = [member.name for member in kind if member not in entries]
    if missing:
        raise AssertionError(f"{kind.__name__} table misses {', '.join(missing)}")
    return entries
