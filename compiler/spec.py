"""The spec: one frozen attrs class per TOML table, field by field.

These classes mirror ``spec.toml`` one to one. A field's docstring is its
documentation: the README's spec reference is generated from them
(``python -m bridgec.compiler.specdoc``), and a test keeps the two in step.
Defaults sit next to the fields. Nothing here validates across fields; that is
``validate.py``'s job, and deriving numbers is ``lower.py``'s.
"""

from __future__ import annotations

from typing import Literal

import attrs

Device = Literal["cpu", "cuda"]
Normalization = Literal["layernorm", "rmsnorm"]
Activation = Literal["gelu", "swiglu"]
PositionEmbedding = Literal["learned", "rope"]
TransformerImpl = Literal["local", "transformer_engine"]
OptimizerName = Literal["adam", "sgd"]
Decay = Literal["constant", "linear", "cosine", "wsd"]
WsdDecayStyle = Literal["linear", "cosine", "exponential", "minus_sqrt"]
DType = Literal["fp32", "bf16", "fp16"]
Fp8Recipe = Literal["delayed", "tensorwise", "blockwise", "mxfp8"]
DataKind = Literal["mock", "indexed"]
LossKind = Literal["cross_entropy"]
Reduction = Literal["per_token", "per_microbatch"]
InitScheme = Literal["portable", "megatron"]
CheckpointFormat = Literal["orbax"]
CheckpointLayout = Literal["maxtext"]
NonFinitePolicy = Literal["skip", "stop"]


@attrs.frozen(kw_only=True)
class Run:
    """[run]: what this run is called and how it is seeded."""

    name: str
    """Run name; shown in logs and the script's docstring. Required."""
    seed: int = 1234
    """Seed for weights (see [init]), data order and dropout. Same seed, same run."""
    description: str = ""
    """Free text copied into the generated script's docstring."""
    output_dir: str | None = None
    """Where metrics are written, relative to the spec's folder. Default: out/<name>."""


@attrs.frozen(kw_only=True)
class Launch:
    """[launch]: the topology the script is compiled for."""

    device: Device = "cpu"
    """cpu (gloo, runs anywhere) or cuda (nccl; needed for transformer_engine and fp8)."""
    nodes: int = 1
    """Number of machines (torchrun --nnodes)."""
    procs_per_node: int = 1
    """Processes per machine (torchrun --nproc-per-node); one per GPU on cuda."""
    timeout_minutes: float = 10.0
    """Collective timeout: a rank that dies stops the job after at most this long."""


@attrs.frozen(kw_only=True)
class Model:
    """[model]: the network (megatron-core GPTModel)."""

    kind: Literal["gpt"] = "gpt"
    """Model family. Only gpt (decoder-only) for now."""
    num_layers: int
    """Transformer layers. Required."""
    hidden_size: int
    """Hidden (embedding) width. Required."""
    num_attention_heads: int
    """Query heads. Required."""
    num_query_groups: int | None = None
    """Key/value heads for grouped-query attention. Default: num_attention_heads (plain multi-head)."""
    head_dim: int | None = None
    """Width of one head. Default: hidden_size / num_attention_heads."""
    ffn_hidden_size: int | None = None
    """MLP inner width. Default: 4 x hidden_size."""
    vocab_size: int
    """Tokenizer vocabulary. Required. Padded up for tensor parallelism (see make_vocab_size_divisible_by)."""
    make_vocab_size_divisible_by: int = 128
    """The embedding is padded to a multiple of this x parallel.tensor (Megatron's rule)."""
    seq_length: int
    """Tokens per sequence. Required."""
    normalization: Normalization = "layernorm"
    """layernorm or rmsnorm."""
    norm_epsilon: float = 1e-5
    """Epsilon inside the norms."""
    activation: Activation = "gelu"
    """gelu, or swiglu (gated SiLU, with ffn_hidden_size per branch)."""
    position_embedding: PositionEmbedding = "learned"
    """learned absolute positions, or rope."""
    rotary_base: int = 10000
    """RoPE theta (rope only)."""
    tie_embeddings: bool = True
    """Share the input embedding with the output projection."""
    add_bias_linear: bool = True
    """Biases in the linear layers (GPT-2 style true; Llama style false)."""
    dropout: float = 0.0
    """Dropout on attention probabilities and hidden states (MaxText's dropout_rate meaning). Megatron's default is 0.1; bridgec's is 0."""
    init_method_std: float = 0.02
    """Standard deviation of the normal weight init; output projections use std / sqrt(2 x num_layers)."""
    transformer_impl: TransformerImpl = "local"
    """local (pure PyTorch layers, runs on CPU) or transformer_engine (cuda only)."""
    num_experts: int | None = None
    """Experts per MoE layer; unset for a dense model."""
    moe_router_topk: int = 2
    """Experts each token is routed to (MoE only)."""


@attrs.frozen(kw_only=True)
class Parallel:
    """[parallel]: how the model and batch are split over ranks. Data parallel is derived."""

    tensor: int = 1
    """Tensor-parallel size (TP): splits each layer's matrices."""
    pipeline: int = 1
    """Pipeline-parallel size (PP): splits the layers into stages."""
    virtual_pipeline: int | None = None
    """Model chunks per pipeline stage (interleaved schedule). Needs pipeline > 1."""
    context: int = 1
    """Context-parallel size (CP): splits each sequence."""
    expert: int = 1
    """Expert-parallel size (EP), carved out of data x context. Needs an MoE model."""
    sequence_parallel: bool = False
    """Split norms and dropout along the sequence inside tensor-parallel regions. Needs tensor > 1."""
    distributed_optimizer: bool = False
    """Shard optimizer state over data-parallel ranks (ZeRO-1)."""


@attrs.frozen(kw_only=True)
class Batch:
    """[batch]: sizes in sequences."""

    global_batch_size: int
    """Sequences per optimizer step, over all data-parallel ranks. Required."""
    micro_batch_size: int = 1
    """Sequences per forward/backward pass on one rank."""


@attrs.frozen(kw_only=True)
class Train:
    """[train]: the loop."""

    iters: int
    """Optimizer steps. Required."""
    log_interval: int = 1
    """Print a line every this many steps (every step goes to the metrics file)."""
    eval_interval: int | None = None
    """Evaluate on the validation split every this many steps; unset: never."""
    eval_iters: int = 10
    """Batches per evaluation."""
    exit_interval: int | None = None
    """Save and stop after this many steps of this launch (resume continues)."""
    exit_duration_minutes: float | None = None
    """Save and stop once this launch has run this long (a scheduler's time limit)."""
    on_nonfinite: NonFinitePolicy = "skip"
    """A non-finite loss or gradient: skip the step (counted, optimizer untouched) or stop with a checkpoint."""


@attrs.frozen(kw_only=True)
class Optimizer:
    """[optimizer]: the update rule (megatron-core's optimizer)."""

    name: OptimizerName = "adam"
    """adam (decoupled weight decay, i.e. AdamW) or sgd."""
    lr: float
    """Peak learning rate. Required."""
    min_lr: float = 0.0
    """Learning rate at the end of decay."""
    weight_decay: float = 0.01
    """Decoupled weight decay; biases and 1-D parameters (norms) are excluded."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam's (beta1, beta2)."""
    eps: float = 1e-8
    """Adam's epsilon."""
    sgd_momentum: float = 0.9
    """Momentum (sgd only)."""
    clip_grad: float = 1.0
    """Clip the global gradient norm to this; 0 disables."""


@attrs.frozen(kw_only=True)
class Scheduler:
    """[scheduler]: the learning-rate schedule (megatron-core OptimizerParamScheduler)."""

    warmup_iters: int = 0
    """Steps of linear warmup from warmup_init_lr to lr."""
    warmup_init_lr: float = 0.0
    """Learning rate at step 0 of warmup."""
    decay: Decay = "cosine"
    """After warmup: constant, linear or cosine to min_lr, or wsd (warmup-stable-decay)."""
    decay_iters: int | None = None
    """Step at which decay ends. Default: train.iters."""
    wsd_decay_iters: int | None = None
    """wsd only: length of the final decay phase."""
    wsd_decay_style: WsdDecayStyle = "linear"
    """wsd only: shape of the final decay."""


@attrs.frozen(kw_only=True)
class Precision:
    """[precision]: number formats."""

    dtype: DType = "fp32"
    """Parameter and compute dtype: fp32, bf16 or fp16 (mixed precision keeps fp32 master weights)."""
    fp8: Fp8Recipe | None = None
    """FP8 recipe for transformer_engine on cuda: delayed, tensorwise, blockwise or mxfp8."""


@attrs.frozen(kw_only=True)
class DataSource:
    """One entry of [data] sources."""

    prefix: str
    """Path prefix of an indexed dataset (prefix.bin + prefix.idx), relative to the spec's folder."""
    weight: float = 1.0
    """Blend weight (normalised over all sources)."""


@attrs.frozen(kw_only=True)
class Data:
    """[data]: where tokens come from."""

    kind: DataKind = "mock"
    """mock (megatron-core's synthetic, learnable sequences) or indexed (.bin/.idx files)."""
    sources: tuple[DataSource, ...] = ()
    """indexed only: [[data.sources]] tables with prefix and weight."""
    split: tuple[float, float, float] = (98.0, 1.0, 1.0)
    """Train/valid/test proportions of each source."""
    eod_token: int | None = None
    """End-of-document token id. Default: from the dataset's tokenizer file (prefix.json), or vocab_size - 1 for mock."""
    eod_mask_loss: bool = False
    """Exclude end-of-document tokens from the loss."""


@attrs.frozen(kw_only=True)
class Loss:
    """[loss]: what is minimised and how it is averaged."""

    kind: LossKind = "cross_entropy"
    """Next-token cross entropy over the loss mask."""
    reduction: Reduction = "per_token"
    """per_token: sum over all microbatches / real tokens of the global batch. per_microbatch: mean per microbatch, then mean over microbatches."""


@attrs.frozen(kw_only=True)
class Checkpoint:
    """[checkpoint]: megatron-core dist_checkpointing saves."""

    dir: str | None = None
    """Checkpoint folder, relative to the spec's folder; unset: no checkpoints."""
    save_interval: int | None = None
    """Save every this many steps (and always at the end)."""
    resume: bool = False
    """Continue from the latest complete checkpoint in dir, or start fresh when there is none."""
    keep_last: int | None = None
    """Keep only the newest this many checkpoints; unset: keep all."""


@attrs.frozen(kw_only=True)
class Hooks:
    """[hooks]: your own Python, checked by the compiler before anything is emitted."""

    file: str | None = None
    """Python file (relative to the spec's folder) holding the hooks."""
    forward_step: str | None = None
    """Name of a function (state, data_iterator, model, return_schedule_plan=False) -> (output, loss_func)."""
    loss: str | None = None
    """Name of a function (loss_mask, output_tensor) -> (loss, num_tokens, metadata) or (loss, metadata)."""


@attrs.frozen(kw_only=True)
class InitCheckpoint:
    """[init.checkpoint]: start from weights written by another framework."""

    format: CheckpointFormat
    """orbax: an Orbax/Flax checkpoint read with tensorstore (no JAX needed)."""
    path: str
    """The checkpoint item folder, e.g. ckpt/1000/items (relative to the spec's folder)."""
    layout: CheckpointLayout = "maxtext"
    """How the tree is laid out: maxtext (MaxText's decoder parameter names, scanned or not)."""
    optimizer_state: bool = False
    """Also load Adam moments and the step count from opt_state, so the schedule continues where it was."""


@attrs.frozen(kw_only=True)
class Init:
    """[init]: where the initial weights come from."""

    scheme: InitScheme = "portable"
    """portable: every weight drawn from (seed, its global name), so every layout starts identical. megatron: each rank's own init (faster at scale, layout-dependent)."""
    checkpoint: InitCheckpoint | None = None
    """Load initial weights (and optionally optimizer state) from a checkpoint instead; see [init.checkpoint]."""


@attrs.frozen(kw_only=True)
class Spec:
    """A whole spec.toml."""

    run: Run
    launch: Launch = attrs.field(factory=Launch)
    model: Model
    parallel: Parallel = attrs.field(factory=Parallel)
    batch: Batch
    train: Train
    optimizer: Optimizer
    scheduler: Scheduler = attrs.field(factory=Scheduler)
    precision: Precision = attrs.field(factory=Precision)
    data: Data = attrs.field(factory=Data)
    loss: Loss = attrs.field(factory=Loss)
    checkpoint: Checkpoint = attrs.field(factory=Checkpoint)
    hooks: Hooks = attrs.field(factory=Hooks)
    init: Init = attrs.field(factory=Init)
