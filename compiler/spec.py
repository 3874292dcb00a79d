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
Activation = Literal["gelu", "swiglu", "geglu"]
GeluApproximation = Literal["none", "tanh"]
QueryScaling = Literal["attention", "initial_weights", "none"]
PositionEmbedding = Literal["learned", "rope"]
TransformerImpl = Literal["local", "torch", "transformer_engine"]
OptimizerName = Literal["adam", "sgd"]
OptimizerSemantics = Literal["megatron", "optax"]
DecayMaskPaths = Literal["linen", "nnx"]
Decay = Literal["constant", "linear", "cosine", "wsd"]
WsdDecayStyle = Literal["linear", "cosine", "exponential", "minus_sqrt"]
SchedulerStyle = Literal["megatron", "maxtext", "optax"]
MaxTextScheduleKind = Literal["cosine", "wsd"]
MaxTextWsdDecayStyle = Literal["linear", "cosine"]
MaxTextScheduleVariant = Literal["2026-02", "2026-01", "2025"]
OptaxScheduleKind = Literal["constant", "linear", "cosine_decay", "warmup_cosine_decay"]
DType = Literal["fp32", "bf16", "fp16"]
Fp8Recipe = Literal["delayed", "tensorwise", "blockwise", "mxfp8"]
MixedPrecision = Literal[
    "bf16_mixed",
    "fp16_mixed",
    "bf16_with_fp8_delayed_scaling_mixed",
    "bf16_with_fp8_current_scaling_mixed",
    "bf16_with_mxfp8_mixed",
    "bf16_with_fp8_subchannel_scaling_mixed",
]
RecomputeGranularity = Literal["selective", "full"]
RecomputeMethod = Literal["uniform", "block"]
RecomputeModule = Literal["core_attn", "mlp", "layernorm", "moe", "moe_act", "mla_up_proj", "shared_experts"]
CrossEntropyFusionImpl = Literal["native", "te"]
CudaGraphImpl = Literal["none", "local", "transformer_engine"]
CudaGraphScope = Literal["attn", "mlp", "moe", "moe_router", "moe_preprocess", "full_iteration"]
DataKind = Literal["mock", "indexed", "sft"]
LossKind = Literal["cross_entropy"]
Reduction = Literal["per_token", "per_microbatch"]
InitScheme = Literal["portable", "megatron"]
CheckpointFormat = Literal["orbax", "huggingface", "megatron"]
CheckpointLayout = Literal["maxtext"]
RopeLayout = Literal["rotate_half", "interleaved"]
AdamStateKind = Literal["adamw", "adam_pax"]
LayerLoss = Literal["cosine", "mse"]
NonFinitePolicy = Literal["skip", "stop"]
TrainMode = Literal["pretrain", "finetune"]
LaunchScheduler = Literal["torchrun", "slurm", "kubernetes"]
LogLevel = Literal["debug", "info", "quiet"]
WandbMode = Literal["online", "offline", "disabled"]
PeftMethod = Literal["lora", "dora"]
PeftInitA = Literal["kaiming_uniform", "gaussian", "xavier_normal"]
PeftInitB = Literal["zero", "xavier_normal"]


@attrs.frozen(kw_only=True)
class Run:
    """[run]: what this run is called and how it is seeded."""

    name: str
    """Run name; shown in logs and the script's docstring. Required."""
    seed: int = 1234
    """Seed for weights (see [init]), data order and dropout (pipeline stage p draws dropout from seed + 100 x p, as in Megatron-LM). Same seed, same run."""
    description: str = ""
    """Free text copied into the generated script's docstring."""
    output_dir: str | None = None
    """Where metrics are written, relative to the spec's folder, in files named after the spec (<spec>.metrics.jsonl), so specs that share a name or this folder keep their own. Default: out/<name>."""


@attrs.frozen(kw_only=True)
class Slurm:
    """[launch.slurm] (scheduler = "slurm"): the job <script>.sbatch asks SLURM for."""

    time: str = "04:00:00"
    """The job's time limit (sbatch --time: MM, HH:MM:SS or D-HH:MM:SS). SLURM sends SIGTERM 5 minutes before it: the run saves and exits 75, and the job requeues itself."""
    partition: str | None = None
    """sbatch --partition; unset: the cluster's default."""
    account: str | None = None
    """sbatch --account; unset: the user's default."""
    container_image: str | None = None
    """Run inside this container image (srun --container-image, the pyxis/enroot plugin), with the job's folder mounted at the same path. It must hold bridgec."""


@attrs.frozen(kw_only=True)
class Kubernetes:
    """[launch.kubernetes] (scheduler = "kubernetes"): the Kubeflow PyTorchJob <script>.pytorchjob.yaml describes."""

    image: str
    """The container image: bridgec installed, and the script (with what it reads) in working_dir. Required."""
    namespace: str = "default"
    """The namespace the job is created in."""
    working_dir: str = "/workspace"
    """The folder in the image that holds the script; the job runs it from there."""


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
    scheduler: LaunchScheduler = "torchrun"
    """How the run is launched. torchrun: by hand (the script's docstring gives the command). slurm: compile also writes <script>.sbatch (srun + bridgec launch, rendezvous from SLURM's variables; see [launch.slurm]). kubernetes: compile also writes <script>.pytorchjob.yaml, a Kubeflow PyTorchJob (see [launch.kubernetes]). bridgec check compares these files too."""
    slurm: Slurm | None = None
    """scheduler = "slurm": [launch.slurm]; unset: its defaults."""
    kubernetes: Kubernetes | None = None
    """scheduler = "kubernetes": [launch.kubernetes] (its image is required)."""


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
    qk_layernorm: bool = False
    """Normalise queries and keys per head (with the model's normalization) before RoPE: Qwen3, MaxText's use_qk_norm."""
    query_scaling: QueryScaling = "attention"
    """Where attention's 1/sqrt(head_dim) lives. attention: in the attention scores (megatron's default; MaxText's qwen3 and gpt3 blocks). initial_weights: the scores are not scaled and the query projection starts at 1/sqrt(head_dim) of its drawn init instead (MaxText's llama2, mistral, mixtral and gemma blocks, init_query_w); the same function at step 0, but Adam then moves the query weights as MaxText does. none: not scaled anywhere (those MaxText blocks with use_qk_norm)."""
    ffn_hidden_size: int | None = None
    """MLP inner width. Default: 4 x hidden_size."""
    vocab_size: int
    """Tokenizer vocabulary. Required. Padded up for tensor parallelism (see make_vocab_size_divisible_by)."""
    make_vocab_size_divisible_by: int = 128
    """The embedding is padded to a multiple of lcm(this, parallel.tensor). Megatron-LM pads to this x tensor, which changes the model (padded rows take part in the softmax) with the tensor-parallel size; the lcm keeps every tensor size that divides this on the same model."""
    seq_length: int
    """Tokens per sequence. Required."""
    normalization: Normalization = "layernorm"
    """layernorm or rmsnorm."""
    norm_epsilon: float = 1e-5
    """Epsilon inside the norms."""
    norm_zero_centered: bool = False
    """Norm scales are stored as (scale - 1), start at 0 and are applied as 1 + scale (MaxText's gpt3 LayerNorm, Gemma's RMSNorm, megatron's layernorm_zero_centered_gamma). Same function; weight decay then pulls the scale towards 1, not 0. transformer_engine's norms apply it themselves; on the local path bridgec's norm does (runtime.norms.zero_centered_block)."""
    activation: Activation = "gelu"
    """gelu, swiglu (gated SiLU) or geglu (gated GELU, MaxText's ["gelu", "linear"]); gated ones have ffn_hidden_size per branch."""
    gelu_approximation: GeluApproximation = "none"
    """GELU (gelu, geglu): none is the exact erf form (torch's and megatron's default); tanh is jax.nn.gelu's default, so MaxText's "gelu"."""
    position_embedding: PositionEmbedding = "learned"
    """learned absolute positions, or rope."""
    rotary_base: int = 10000
    """RoPE theta (rope only)."""
    rope_scaling_factor: float | None = None
    """Llama 3.1 RoPE frequency scaling with this factor (Hugging Face rope_scaling type llama3; megatron-core's rope_scaling, which fixes low_freq_factor 1, high_freq_factor 4 and original_max_position_embeddings 8192). Unset: no scaling. rope only."""
    tie_embeddings: bool = True
    """Share the input embedding with the output projection."""
    embedding_multiplier: float = 1.0
    """Multiply the word embeddings by this before the first layer (Gemma's sqrt(hidden_size), applied in the embeddings' dtype). megatron-core has no such option, so the runtime applies it to the embedding's output (runtime.norms.scale_embeddings)."""
    logits_multiplier: float = 1.0
    """Multiply the output logits by this before the loss. MaxText's normalize_embedding_logits with tied embeddings is 1 / sqrt(hidden_size); megatron-core has no such option, so the runtime applies it in the loss."""
    add_bias_linear: bool = True
    """Biases in the linear layers (GPT-2 style true; Llama style false)."""
    add_qkv_bias: bool = False
    """A bias on the query/key/value projection even when add_bias_linear is false (Qwen2)."""
    dropout: float = 0.0
    """Dropout on attention probabilities and hidden states (MaxText's dropout_rate meaning). Megatron's default is 0.1; bridgec's is 0."""
    init_method_std: float = 0.02
    """Standard deviation of the normal weight init; output projections use std / sqrt(2 x num_layers)."""
    transformer_impl: TransformerImpl = "local"
    """local (megatron-core's pure PyTorch layers, runs on CPU), torch (the local layers with core attention computed by torch's fused scaled_dot_product_attention, bridgec.runtime.attention: no seq x seq score matrix kept, flash or memory-efficient kernels on cuda; same function as local) or transformer_engine (cuda only)."""
    num_experts: int | None = None
    """Experts per MoE layer; unset for a dense model."""
    moe_router_topk: int = 2
    """Experts each token is routed to (MoE only)."""
    moe_router_pre_softmax: bool = False
    """MoE only: softmax over all experts, then the top k with those probabilities as weights (transformers' norm_topk_prob = false). Default: the top k logits, then a softmax over them (the top-k probabilities renormalised: norm_topk_prob = true). Top-1 routing always takes the softmax first (megatron-core requires it)."""


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
    """Split norms and dropout along the sequence inside tensor-parallel regions. Needs tensor > 1 and model.transformer_impl = "transformer_engine" (megatron-core's local layers do not implement it), so cuda."""
    distributed_optimizer: bool = False
    """Shard optimizer state over data-parallel ranks (ZeRO-1)."""
    mesh: dict[str, int] | None = None
    """The layout as a JAX/MaxText mesh inside one node, e.g. { data = -1, fsdp = 1, tensor = 2, stage = 2 } (MaxText's ici_* sizes). Axis names are MaxText's mesh_axes; at most one -1, filled from launch.procs_per_node. Lowered to tensor, pipeline, context, expert, sequence_parallel and distributed_optimizer (fsdp > 1), which are then left at their defaults; bridgec explain shows the mapping. Axes without a Megatron counterpart (diloco, fsdp_transpose, autoregressive, context_autoregressive) must be 1."""
    dcn_mesh: dict[str, int] | None = None
    """mesh only: axis sizes across nodes (MaxText's dcn_*), multiplied with mesh's; at most one -1, filled from launch.nodes. Default: { data = -1 }, MaxText's."""


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
    mode: TrainMode = "pretrain"
    """pretrain, or finetune: start from pretrained weights ([init.checkpoint], required) with a fresh optimizer state and schedule at step 0 (init.checkpoint.optimizer_state must stay false); a resumed finetune run reads its own [checkpoint] dir, never the pretrained weights again."""
    log_interval: int = 1
    """Print a line every this many steps (every step goes to the metrics file)."""
    eval_interval: int | None = None
    """Evaluate on the validation split every this many steps; unset: never."""
    eval_iters: int = 10
    """Global batches per evaluation. Each evaluation reads the next ones of the validation split (Megatron-LM's order; the position is in checkpoints)."""
    exit_interval: int | None = None
    """Save and stop after this many steps of this launch (resume continues)."""
    exit_duration_minutes: float | None = None
    """Save and stop once this launch has run this long (a scheduler's time limit)."""
    on_nonfinite: NonFinitePolicy = "skip"
    """A non-finite loss or gradient: skip the step (counted, optimizer untouched) or stop with a checkpoint."""


@attrs.frozen(kw_only=True)
class DecayMask:
    """[optimizer.decay_mask] (semantics = "optax"): which parameters weight decay skips, in MaxText's adamw_mask terms."""

    exclude: tuple[str, ...] = ()
    """Regexes (Python re.search) over MaxText parameter paths: a parameter whose path any of them finds is not decayed (MaxText's adamw_mask). Empty: every parameter decays, as in MaxText. A pattern that matches some leaves of a fused Megatron parameter (linear_qkv = query/key/value, linear_fc1 = wi_0/wi_1) and not others is an error. bridgec explain prints the no-decay set."""
    paths: DecayMaskPaths = "linen"
    """How the paths are spelled: linen ("params/decoder/layers/mlp/wi_0/kernel": MaxText with pure_nnx = false) or nnx ("decoder/layers/mlp/wi_0/kernel": pure_nnx = true)."""
    scan_layers: bool = True
    """MaxText's scan_layers: one stacked leaf per kind under decoder/layers/; false: decoder/layers_{i}/ per layer."""


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
    """Decoupled weight decay. semantics = "megatron" excludes biases and 1-D parameters (norms); "optax" decays what [optimizer.decay_mask] keeps (everything by default, as MaxText)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam's (beta1, beta2)."""
    eps: float = 1e-8
    """Adam's epsilon."""
    sgd_momentum: float = 0.9
    """Momentum (sgd only)."""
    clip_grad: float = 1.0
    """Clip the global gradient norm to this; 0 disables."""
    semantics: OptimizerSemantics = "megatron"
    """megatron: megatron-core's optimizer (decay skips biases and 1-D parameters; clip coefficient max / (norm + 1e-6)). optax (adam only): optax.adamw exactly, as MaxText runs it: eps_root inside the square root after bias correction, decay = lr x weight_decay x parameter on the parameters [optimizer.decay_mask] keeps, optax.clip_by_global_norm (no epsilon), the learning rate read at the pre-increment update count."""
    eps_root: float = 0.0
    """optax only: added to the bias-corrected second moment inside the square root (MaxText's adam_eps_root)."""
    decay_mask: DecayMask = attrs.field(factory=DecayMask)
    """optax only: [optimizer.decay_mask]."""


@attrs.frozen(kw_only=True)
class MaxTextSchedule:
    """[scheduler.maxtext] (style = "maxtext"): MaxText's create_learning_rate_schedule; the peak is optimizer.lr."""

    kind: MaxTextScheduleKind = "cosine"
    """MaxText's lr_schedule_type: cosine (warmup from 0, cosine to the final lr) or wsd (warmup, constant, decay)."""
    warmup_steps_fraction: float = 0.1
    """Warmup takes int(schedule_steps x this) updates, from lr 0 at the first update."""
    final_fraction: float = 0.1
    """The decay ends at optimizer.lr x this (MaxText's learning_rate_final_fraction)."""
    schedule_steps: int | None = None
    """MaxText's learning_rate_schedule_steps: the schedule's length; from this update on the lr is 0. Default: train.iters."""
    wsd_decay_steps_fraction: float = 0.1
    """wsd only: the decay takes int(schedule_steps x this) updates."""
    wsd_decay_style: MaxTextWsdDecayStyle = "linear"
    """wsd only: linear or cosine decay."""
    variant: MaxTextScheduleVariant = "2026-02"
    """Which MaxText version's formula: 2026-02 (current, commit 31015aa on); 2026-01 (e886dd2 to 31015aa: warmup reaches lr one update early); 2025 (before e886dd2: cosine reaches the final lr only at schedule_steps; no wsd). They differ by up to ~0.9% of the peak."""


@attrs.frozen(kw_only=True)
class OptaxSchedulePiece:
    """One [[scheduler.optax]] piece: an optax schedule; several are joined with optax.join_schedules."""

    kind: OptaxScheduleKind
    """constant, linear (optax.linear_schedule), cosine_decay or warmup_cosine_decay. Required."""
    value: float | None = None
    """constant: the learning rate."""
    init_value: float | None = None
    """linear, cosine_decay, warmup_cosine_decay: the value at the piece's update 0."""
    end_value: float | None = None
    """linear: the value after transition_steps; warmup_cosine_decay: the value at decay_steps (default 0)."""
    peak_value: float | None = None
    """warmup_cosine_decay: the value at the end of warmup."""
    transition_steps: int | None = None
    """linear: updates from init_value to end_value (<= 0: constant init_value, as optax)."""
    transition_begin: int = 0
    """linear: updates held at init_value first."""
    warmup_steps: int | None = None
    """warmup_cosine_decay: updates of linear warmup."""
    decay_steps: int | None = None
    """cosine_decay: updates of decay; warmup_cosine_decay: total updates including the warmup (optax's meaning)."""
    alpha: float = 0.0
    """cosine_decay: the final value as a fraction of init_value."""
    exponent: float = 1.0
    """cosine_decay, warmup_cosine_decay: power applied to the cosine."""
    boundary: int | None = None
    """The update count at which the next piece takes over (optax.join_schedules; the next piece counts from 0 there). Every piece but the last needs one."""


@attrs.frozen(kw_only=True)
class Scheduler:
    """[scheduler]: the learning-rate schedule (megatron-core OptimizerParamScheduler, or MaxText's or optax's: see style)."""

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
    style: SchedulerStyle = "megatron"
    """megatron: the fields above, megatron-core's OptimizerParamScheduler. maxtext: [scheduler.maxtext]. optax: [[scheduler.optax]] pieces. maxtext and optax set the learning rate of update k to schedule(k) (optax's count, read before it increments)."""
    maxtext: MaxTextSchedule | None = None
    """style = "maxtext": [scheduler.maxtext]."""
    optax: tuple[OptaxSchedulePiece, ...] = ()
    """style = "optax": [[scheduler.optax]] pieces, joined at their boundaries."""


@attrs.frozen(kw_only=True)
class Precision:
    """[precision]: number formats."""

    dtype: DType = "fp32"
    """Parameter and compute dtype: fp32, bf16 or fp16 (mixed precision keeps fp32 master weights). fp16 scales the loss dynamically as Megatron-LM does: from 2^32, halved on overflow, with the overflowed steps skipped (expect ~20 at the start); on CPU too."""
    fp8: Fp8Recipe | None = None
    """FP8 recipe for transformer_engine on cuda (TransformerConfig fp8_recipe, with fp8 = "hybrid": e4m3 forward, e5m2 gradients): delayed (scales from an amax history), tensorwise (current per-tensor scaling), blockwise (128 x 128 weight blocks, 1 x 128 activation blocks) or mxfp8 (MX block scaling, Blackwell)."""
    fp8_param_gather: bool = False
    """fp8 only: keep the parameters in FP8 and all-gather them in FP8 (TransformerConfig fp8_param and DistributedDataParallelConfig fp8_param_gather). Needs parallel.distributed_optimizer."""
    fp8_bf16_first_layers: int = 0
    """fp8 only: run this many first transformer layers in bf16 rather than FP8 (TransformerConfig first_last_layers_bf16 with num_layers_at_start_in_bf16)."""
    fp8_bf16_last_layers: int = 0
    """fp8 only: run this many last transformer layers in bf16 rather than FP8 (TransformerConfig first_last_layers_bf16 with num_layers_at_end_in_bf16)."""
    mixed: MixedPrecision | None = None
    """A named recipe of Megatron Bridge's (mixed_precision.py) that fills the [precision] keys you leave out: bf16_mixed (dtype bf16), fp16_mixed (fp16), bf16_with_fp8_delayed_scaling_mixed (bf16, fp8 delayed, fp8_param_gather), bf16_with_fp8_current_scaling_mixed (bf16, fp8 tensorwise, fp8_param_gather, first and last layer in bf16), bf16_with_mxfp8_mixed (bf16, fp8 mxfp8, fp8_param_gather), bf16_with_fp8_subchannel_scaling_mixed (bf16, fp8 blockwise). Keys you write win; bridgec explain shows the result."""


@attrs.frozen(kw_only=True)
class Recompute:
    """[recompute]: activation recomputation (megatron-core TransformerConfig recompute_*): activations are recomputed in the backward pass instead of kept. Same losses, less memory, more compute."""

    granularity: RecomputeGranularity | None = None
    """recompute_granularity. selective: recompute only the modules below, in every layer. full: recompute whole layers (their inputs are kept), per method and num_layers. Unset: keep every activation."""
    method: RecomputeMethod | None = None
    """recompute_method, full only (required there): uniform recomputes every group of num_layers layers from the group's input; block recomputes the first num_layers layers of each pipeline stage and keeps the rest."""
    num_layers: int | None = None
    """recompute_num_layers, full only (required there): layers per group (uniform) or recomputed layers per pipeline stage (block), 1 to the layers one pipeline stage holds."""
    modules: tuple[RecomputeModule, ...] | None = None
    """recompute_modules, selective only: among core_attn (the attention scores and softmax), mlp (the dense MLP; needs model.add_bias_linear = false), layernorm (the two norms of a layer; transformer_engine only), moe (the MoE layer); moe_act, mla_up_proj and shared_experts need model features bridgec does not build. Default: megatron's ["core_attn"]."""


@attrs.frozen(kw_only=True)
class Offload:
    """[offload]: moving tensors to host memory during the step (megatron-core cpu_offloading*, cuda only)."""

    activations: bool = False
    """Offload the activations of num_layers layers to the CPU after their forward pass (TransformerConfig cpu_offloading with cpu_offloading_activations)."""
    weights: bool = False
    """Offload the weights of num_layers layers to the CPU between uses (TransformerConfig cpu_offloading with cpu_offloading_weights)."""
    num_layers: int | None = None
    """activations or weights (required there): how many transformer layers are offloaded (cpu_offloading_num_layers), 1 to model.num_layers - 1, as megatron-core requires."""
    optimizer: bool = False
    """Keep the optimizer state (and its step) on the CPU (OptimizerConfig optimizer_cpu_offload, megatron-core's HybridDeviceOptimizer). Needs parallel.distributed_optimizer."""
    optimizer_fraction: float | None = None
    """optimizer only: the fraction of the optimizer state kept on the CPU (optimizer_offload_fraction), in (0, 1]. Default: 1 (megatron-core's 0 would offload nothing)."""


@attrs.frozen(kw_only=True)
class Overlap:
    """[overlap]: communication overlapped with computation (megatron-core DistributedDataParallelConfig and TransformerConfig)."""

    grad_reduce: bool = False
    """Reduce each bucket of gradients over the data-parallel ranks as soon as its backward pass is done, during the rest of the backward pass (overlap_grad_reduce). Same losses."""
    param_gather: bool = False
    """All-gather the updated parameters of the distributed optimizer bucket by bucket during the next forward pass rather than after the step (overlap_param_gather). Needs parallel.distributed_optimizer."""
    align_param_gather: bool = False
    """param_gather with a virtual pipeline: every pipeline stage launches its first all-gathers at once (align_param_gather)."""
    bucket_size: int | None = None
    """grad_reduce only: parameters per communication bucket (bucket_size; without grad_reduce megatron-core uses one bucket). Default: megatron-core's, max(40,000,000, 1,000,000 x data-parallel size)."""
    tensor_parallel: bool = False
    """Overlap tensor-parallel communication with the GEMMs (TransformerConfig tp_comm_overlap, Transformer Engine's userbuffers). Needs transformer_engine, cuda and parallel.sequence_parallel."""


@attrs.frozen(kw_only=True)
class Fusions:
    """[fusions]: fused kernels (megatron-core TransformerConfig). Each is a CUDA kernel: cuda only."""

    bias_dropout: bool = False
    """Fuse bias + dropout + residual add (bias_dropout_fusion)."""
    apply_rope: bool = False
    """Fused RoPE (apply_rope_fusion; Transformer Engine's kernel, so transformer_engine). rope only."""
    cross_entropy: bool = False
    """Fused vocab-parallel cross entropy (cross_entropy_loss_fusion), with cross_entropy_impl. Applies to megatron-core's own loss, not to MaxText's (z_loss_multiplier, logits_multiplier)."""
    cross_entropy_impl: CrossEntropyFusionImpl = "native"
    """cross_entropy only: native (megatron-core's) or te (Transformer Engine's; transformer_engine) (cross_entropy_fusion_impl)."""
    masked_softmax: bool = False
    """Fused scale + mask + softmax in the local attention (masked_softmax_fusion; megatron's CUDA kernel). transformer_impl = "local" only: torch's and Transformer Engine's attention have no separate softmax."""
    gradient_accumulation: bool = False
    """Accumulate weight gradients into the fp32 main gradients inside the GEMM (gradient_accumulation_fusion; needs Transformer Engine or APEX's fused_weight_gradient_mlp_cuda)."""


@attrs.frozen(kw_only=True)
class CudaGraph:
    """[cuda_graph]: capture the step's kernels as CUDA graphs (megatron-core cuda_graph_impl, cuda_graph_scope; cuda only)."""

    impl: CudaGraphImpl = "none"
    """none, local (megatron-core's capture: per layer, or the whole forward-backward with scope full_iteration) or transformer_engine (Transformer Engine's make_graphed_callables; transformer_engine)."""
    scope: tuple[CudaGraphScope, ...] = ()
    """What is captured (cuda_graph_scope): empty for whole layers; attn, mlp, moe, moe_router, moe_preprocess (MoE ones need an MoE model); full_iteration (local only): the whole forward-backward."""


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
    """mock (megatron-core's synthetic, learnable sequences), indexed (.bin/.idx files) or sft (datasets of `bridgec data build --sft`, blended by weight: each sample alone in a sequence, padded, only its loss-mask tokens in the loss)."""
    sources: tuple[DataSource, ...] = ()
    """indexed only: [[data.sources]] tables with prefix and weight."""
    split: tuple[float, float, float] = (98.0, 1.0, 1.0)
    """indexed only: train/valid/test proportions of each source's documents. Every split with a share must get at least one document of every source (megatron-core never finishes building an empty one); bridgec never reads the test split. Mock data is always split in thirds."""
    tokenizer: str | None = None
    """The tokenizer the data was built with (relative to the spec's folder): a Hugging Face tokenizer folder (tokenizer.json), a SentencePiece .model or a tiktoken rank file, as given to `bridgec data build --tokenizer`. The compiler reads it: vocab_size must cover it, EOD_TOKEN is its end-of-document id, and every source's PREFIX.json must name its sha256."""
    eod_token: int | None = None
    """End-of-document token id. Default: from data.tokenizer, else from the dataset's tokenizer file (prefix.json), or vocab_size - 1 for mock."""
    eod_mask_loss: bool = False
    """Exclude end-of-document tokens from the loss."""
    document_masking: bool = False
    """Keep documents apart inside a sequence (Megatron's reset_position_ids + reset_attention_mask): position ids restart after each end-of-document token and attention never crosses one (a block-diagonal causal mask given to megatron-core's local attention, or torch's scaled_dot_product_attention). Needs model.transformer_impl = "local" or "torch" and at most 2 pipeline stages without virtual ones."""
    packing: bool = False
    """sft only: pack several samples into each sequence (first fit decreasing by length, when the run builds its datasets) instead of one padded sample per sequence. Position ids restart at each sample and attention never crosses one (the block-diagonal causal mask of document_masking), so each sample trains as it would alone. Needs model.transformer_impl = "local" or "torch" and at most 2 pipeline stages without virtual ones."""


@attrs.frozen(kw_only=True)
class Loss:
    """[loss]: what is minimised and how it is averaged."""

    kind: LossKind = "cross_entropy"
    """Next-token cross entropy over the loss mask."""
    reduction: Reduction = "per_token"
    """per_token: sum over all microbatches / real tokens of the global batch. per_microbatch: mean per microbatch, then mean over microbatches."""
    z_loss_multiplier: float = 0.0
    """Add this x logsumexp(logits)^2 to every token's loss (MaxText's z_loss_multiplier; it keeps the softmax normaliser near 1)."""


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
    """Keep only this many of the most recently saved checkpoints (in save order, not step order); unset: keep all."""
    async_save: bool = False
    """Write each save in the background while training continues (megatron-core's async torch_dist writer): the save stages a copy of the state and returns; the checkpoint is published (latest moves, keep_last prunes) once every rank's write has finished. The next save, the end of training and an early stop (SIGTERM, exit_interval) wait for it; a failed background write stops every rank with exit 6 (CHECKPOINT_ERROR) and leaves the previous checkpoint as the latest."""
    overwrite: bool = False
    """resume = false over a dir that already holds checkpoints: true deletes them and starts fresh; false (the default) refuses to start (exit 10), so no run replaces another's checkpoints unasked."""


@attrs.frozen(kw_only=True)
class Hooks:
    """[hooks]: your own Python, checked by the compiler before anything is emitted."""

    file: str | None = None
    """Python file (relative to the spec's folder) holding the hooks. Its name must not be that of a module the script needs (torch.py, numpy.py, a standard-library name, ...): beside the script it would be imported instead."""
    forward_step: str | None = None
    """Name of a function (state, data_iterator, model, return_schedule_plan=False) -> (output, loss_func)."""
    loss: str | None = None
    """Name of a function (loss_mask, output_tensor) -> (loss_sum, num_tokens, metadata) for reduction = "per_token", or (loss_mean, metadata) for "per_microbatch"; metadata = {"lm loss": torch.stack([numerator, denominator])} (see runtime/loss.py); every other entry (a [numerator, denominator] tensor, or a number: its mean) is reduced over microbatches and data-parallel ranks the same way, printed and written to the metrics file. Checked at every call."""
    callbacks: tuple[str, ...] = ()
    """Classes called at training events, each as "file.py:Class" (the file relative to the spec's folder; it need not be hooks.file). Every method whose name does not start with an underscore must be an event: on_train_start, on_train_step_start, on_train_step_end, on_train_end, on_eval_start, on_eval_end, on_checkpoint_save, on_checkpoint_load, on_exception; each takes (self, context). The class is built with no arguments on every rank, in the listed order; see README: Callbacks."""


@attrs.frozen(kw_only=True)
class InitCheckpoint:
    """[init.checkpoint]: start from weights written by another framework."""

    format: CheckpointFormat
    """orbax: an Orbax/Flax checkpoint read with tensorstore (no JAX needed). huggingface: a Hugging Face model folder's safetensors (model.safetensors, or shards with model.safetensors.index.json; bridgec import hf writes the matching [model]). megatron: a torch_dist checkpoint saved by Megatron-LM or Megatron Bridge (model weights, and with optimizer_state its optimizer state, schedule and iteration; its args are compared with the spec first), or the weights of one a bridgec run saved (its manifest's model is compared; its optimizer state continues only with [checkpoint] resume). The other keys here are Orbax's and must stay unset for huggingface and megatron, except optimizer_state for megatron."""
    path: str
    """orbax: the checkpoint item folder, e.g. ckpt/1000/items; huggingface: the model folder; megatron: the save folder (its latest_checkpointed_iteration.txt names the iteration; for a bridgec [checkpoint] dir its latest) or one iter_NNNNNNN folder. Relative to the spec's folder."""
    layout: CheckpointLayout = "maxtext"
    """How the tree is laid out: maxtext (MaxText's decoder parameter names, scanned or not)."""
    optimizer_state: bool = False
    """Also load the optimizer state and the step count, so training and the schedule continue where they were. orbax: Adam moments and the count from opt_state. megatron: Megatron-LM's optimizer state (Adam moments, fp32 main parameters), opt_param_scheduler and iteration, and the consumed samples of its args (the data continues there)."""
    optimizer_type: AdamStateKind = "adamw"
    """optimizer_state only: MaxText's opt_type that wrote the moments: adamw, or adam_pax (bias-corrected moments, converted on load)."""
    rope_layout: RopeLayout = "rotate_half"
    """How the checkpoint's query/key rows pair up for RoPE: rotate_half (MaxText's default) or interleaved (MaxText's llama3.1 path); interleaved rows are permuted to megatron-core's rotate-half layout."""
    param_scan_axis: int = 1
    """Scanned checkpoints only: the axis that stacks the layers (MaxText's param_scan_axis)."""


@attrs.frozen(kw_only=True)
class Init:
    """[init]: where the initial weights come from."""

    scheme: InitScheme = "portable"
    """portable: every weight drawn from (seed, its global name), so every layout starts identical. megatron: each rank's own init (faster at scale, layout-dependent)."""
    checkpoint: InitCheckpoint | None = None
    """Load initial weights (and optionally optimizer state) from a checkpoint instead; see [init.checkpoint]."""


@attrs.frozen(kw_only=True)
class Teacher(Model):
    """[distill.teacher]: the frozen teacher, with every key of [model] (its own shape; the student's tensor, context and data layout; never split into pipeline stages: with parallel.pipeline > 1 it runs whole on the student's last stage)."""

    checkpoint: InitCheckpoint
    """[distill.teacher.checkpoint]: the teacher's weights, with the keys of [init.checkpoint], read by its loaders on the student's layout: huggingface, orbax (MaxText's layout) or megatron (Megatron-LM, Megatron Bridge or a bridgec run's checkpoint). Weights only: optimizer_state must stay unset. Required: a teacher with random weights teaches nothing."""


@attrs.frozen(kw_only=True)
class DistillLayer:
    """One [[distill.layers]] entry: a loss between a student layer's and a teacher layer's output hidden states (ModelOpt's intermediate_layer_pairs). The two models must share hidden_size (no projection is built)."""

    student: int
    """The student's transformer layer, 0-based over the whole model (Hugging Face's model.layers.N, megatron-core's decoder.layers.N at pipeline 1). With parallel.pipeline > 1 it must be one of the last pipeline stage's layers (the last model chunk's, with virtual_pipeline), where the teacher runs. Required."""
    teacher: int
    """The teacher's transformer layer, 0-based. Required."""
    loss: LayerLoss = "cosine"
    """Per token: cosine (1 - the cosine similarity of the two hidden-state vectors, ModelOpt's default for hidden states) or mse (the mean over the hidden dimension of the squared difference). Either is weighted by the loss mask and summed over the tokens, then divided by the global token count, as the LM loss is. For both losses on one pair, give two entries."""
    scale: float = 1.0
    """The pair's weight in the total loss: loss += scale x this layer loss. The layer loss is logged unscaled, per token, as "layer STUDENT-TEACHER LOSS loss"."""


@attrs.frozen(kw_only=True)
class Distill:
    """[distill]: train the student against a frozen teacher's logits (knowledge distillation)."""

    teacher: Teacher
    """[distill.teacher]. Required."""
    temperature: float = 1.0
    """Both distributions are softened as softmax(logits / temperature); the KL loss is multiplied by temperature^2 so its gradient keeps its scale."""
    kd_loss_scale: float = 1.0
    """The KL loss's weight: loss = kd_loss_scale x KL (+ the cross entropy unless skip_lm_loss)."""
    skip_lm_loss: bool = False
    """Train on the KL loss alone (the cross entropy against the labels is still logged as "ce loss")."""
    layers: tuple[DistillLayer, ...] = ()
    """[[distill.layers]]: intermediate layer pairs whose hidden-state losses are added to the total. Not with [recompute] granularity = "full" or parallel.sequence_parallel."""


@attrs.frozen(kw_only=True)
class TensorBoard:
    """[logging.tensorboard]: write every metric as TensorBoard scalars (pip install bridgec[tensorboard])."""

    dir: str
    """Event-file folder, relative to the spec's folder. Required."""


@attrs.frozen(kw_only=True)
class Wandb:
    """[logging.wandb]: log every metric to a Weights & Biases run (pip install bridgec[wandb])."""

    project: str
    """W&B project. Required."""
    entity: str | None = None
    """W&B team or user; unset: your default entity."""
    name: str | None = None
    """The W&B run's name. Default: run.name."""
    tags: tuple[str, ...] = ()
    """Tags on the W&B run."""
    mode: WandbMode = "online"
    """online (sync as it runs), offline (a local run folder under <output_dir>/wandb; wandb sync uploads it later) or disabled. WANDB_MODE in the environment wins, as in wandb itself."""


@attrs.frozen(kw_only=True)
class Mlflow:
    """[logging.mlflow]: log every metric to an MLflow run (pip install bridgec[mlflow])."""

    tracking_uri: str
    """Where the tracking store is: http(s)://host:port for a server, or sqlite:///path.db. Required."""
    experiment: str | None = None
    """Experiment name (created if missing). Default: run.name."""
    run_name: str | None = None
    """The MLflow run's name. Default: run.name."""


@attrs.frozen(kw_only=True)
class Logging:
    """[logging]: what the run reports besides the console line and <spec>.metrics.jsonl (always written)."""

    level: LogLevel = "info"
    """Console detail: debug (every step's line, with timers and memory), info (a line every train.log_interval steps) or quiet (no banner or step lines: warnings, errors and the end summary only)."""
    params_norm: bool = False
    """Also log the L2 norm of all parameters each step (one extra all-reduce, as Megatron's log_params_norm)."""
    peak_tflops: float | None = None
    """Dense peak TFLOP/s of one device for MFU. Default: from the GPU's name and precision (A100, H100, H200, B200 in bf16 or fp8); unset on CPU: no MFU."""
    tensorboard: TensorBoard | None = None
    """[logging.tensorboard]."""
    wandb: Wandb | None = None
    """[logging.wandb]."""
    mlflow: Mlflow | None = None
    """[logging.mlflow]."""


@attrs.frozen(kw_only=True)
class Profile:
    """[profile]: the PyTorch profiler over a few steps, CUDA memory snapshots and NVTX ranges for nsys."""

    start_step: int
    """First profiled step (1-based, counted over the whole run). Required."""
    end_step: int
    """Last profiled step (inclusive). Required."""
    ranks: tuple[int, ...] = (0,)
    """Global ranks that profile."""
    dir: str | None = None
    """Where traces go, relative to the spec's folder: one Chrome-trace JSON per rank (<rank>.<time>.pt.trace.json, chrome://tracing or Perfetto; also what TensorBoard's profiler plugin reads from this folder). Default: <output_dir>/profile."""
    memory_snapshot: bool = False
    """cuda only: record the CUDA allocator's history over the profiled steps and dump it to memory_rank<r>.pickle in dir (pytorch.org/memory_viz)."""
    nvtx: bool = False
    """cuda only: NVTX ranges around every step's forward-backward and optimizer phases (and megatron-core's own), for nsys."""


@attrs.frozen(kw_only=True)
class Peft:
    """[peft]: train low-rank adapters on frozen base weights (LoRA, or DoRA) instead of every weight."""

    method: PeftMethod = "lora"
    """lora: y = W x + (alpha / rank) B A x. dora: LoRA whose adapted weight W + (alpha / rank) B A is renormalised per output row and scaled by a trained magnitude (Liu et al. 2024, as Hugging Face peft computes it: the row norm is not differentiated)."""
    target_modules: tuple[str, ...] = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")
    """The linears that get an adapter: megatron-core's linear_qkv, linear_proj, linear_fc1, linear_fc2, or one projection inside a fused one (linear_q, linear_k, linear_v; linear_fc1_gate, linear_fc1_up: Megatron Bridge's CanonicalLoRA, each its own A and B, as Hugging Face peft adapts q_proj, k_proj, ...). A name selects it in every layer; a pattern with dots or wildcards selects by global path (decoder.layers.0.*.linear_qkv, decoder.layers.1?.mlp.*). Every base weight is frozen: no gradient, no optimizer state, no gradient all-reduce."""
    rank: int = 8
    """The adapters' rank r (A is r x in, B is out x r); at most the smaller dimension of every targeted linear."""
    alpha: float = 16.0
    """The update is scaled by alpha / rank."""
    dropout: float = 0.0
    """Dropout on the adapter's input (training only)."""
    init_a: PeftInitA = "kaiming_uniform"
    """A's initial values, drawn whole from (run.seed, the parameter's global name) so every layout starts alike: kaiming_uniform (Hugging Face peft's default: U(-1/sqrt(in), 1/sqrt(in))), gaussian (N(0, 1/rank)) or xavier_normal (Megatron Bridge's)."""
    init_b: PeftInitB = "zero"
    """B's initial values: zero (the adapted model starts as the base model) or xavier_normal."""
    adapter: str | None = None
    """A Hugging Face PEFT adapter folder (adapter_config.json + adapter_model.safetensors) whose weights the adapters start from, relative to the spec's folder; needs [init.checkpoint] format = "huggingface" (the base it was trained on). Its method, rank, alpha and target modules must be the spec's."""


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
    recompute: Recompute = attrs.field(factory=Recompute)
    offload: Offload = attrs.field(factory=Offload)
    overlap: Overlap = attrs.field(factory=Overlap)
    fusions: Fusions = attrs.field(factory=Fusions)
    cuda_graph: CudaGraph = attrs.field(factory=CudaGraph)
    data: Data = attrs.field(factory=Data)
    loss: Loss = attrs.field(factory=Loss)
    checkpoint: Checkpoint = attrs.field(factory=Checkpoint)
    hooks: Hooks = attrs.field(factory=Hooks)
    init: Init = attrs.field(factory=Init)
    peft: Peft | None = None
    logging: Logging = attrs.field(factory=Logging)
    profile: Profile | None = None
    distill: Distill | None = None
