"""What a spec means for a human: rank layout, batch arithmetic, parameters, FLOPs, memory.

Pure functions of a validated Spec (no torch). Parameter counts are exact for
megatron-core's GPTModel with the local or TE layer spec; the memory estimate
follows Megatron-LM's ``theoretical_memory_usage`` (weights, gradients and
optimizer state per parameter of the most loaded rank; activations by
Korthikanti et al. 2022, Table 2, for the first pipeline stage).
"""

from __future__ import annotations

import math

import attrs

from bridgec.compiler import derive
from bridgec.compiler.spec import Recompute, Spec
from bridgec.runtime import throughput
from bridgec.runtime.models import gpt, lora

ATTENTION_MEMORY = {
    "local": "unfused local attention keeping its scores",
    "torch": "torch's fused scaled_dot_product_attention",
    "transformer_engine": "Transformer Engine's fused attention",
}
"""What the activation estimate assumes of each model.transformer_impl's core attention."""

MiB = 1024 * 1024


@attrs.frozen(kw_only=True)
class ParameterCounts:
    embedding: int
    """Word (+ learned position) embeddings."""
    per_layer: int
    layers: int
    """All transformer layers."""
    final_norm: int
    output: int
    """The untied output projection (0 when tied)."""

    @property
    def total(self) -> int:
        return self.embedding + self.layers + self.final_norm + self.output


def _dims(spec: Spec) -> tuple[int, int, int, int]:
    return (
        spec.model.num_attention_heads,
        derive.query_groups(spec),
        derive.head_dim(spec),
        derive.ffn_hidden_size(spec),
    )


def _size(parameter: gpt.Parameter) -> int:
    return math.prod(parameter.shape)


def parameter_counts(spec: Spec) -> ParameterCounts:
    """Sums over the parameter table (runtime.models.gpt) of the whole model."""
    config = derive.gpt_config(spec)
    sums = {stage: 0 for stage in gpt.Stage}
    output = 0
    for parameter in gpt.parameters(config):
        if parameter.entry is gpt.OUTPUT:
            output += _size(parameter)
        else:
            sums[parameter.entry.stage] += _size(parameter)
    layers = sums[gpt.Stage.LAYER]
    return ParameterCounts(
        embedding=sums[gpt.Stage.FIRST],
        per_layer=layers // spec.model.num_layers,
        layers=layers,
        final_norm=sums[gpt.Stage.LAST],
        output=output,
    )


def trainable_parameters(spec: Spec) -> int | None:
    """[peft]: the adapters' parameters, the only trainable ones (runtime.models.lora's table); None without [peft]."""
    peft = spec.peft
    if peft is None:
        return None
    config = derive.gpt_config(spec)
    selected, _ = lora.select(config, peft.target_modules)
    return sum(_size(p) for p in lora.adapter_parameters(config, selected, rank=peft.rank, dora=peft.method == "dora"))


def _expert_weights(spec: Spec) -> int:
    """Matrix elements of one expert of one layer (what a token skips per expert it is not routed to)."""
    config = derive.gpt_config(spec)
    first_layer = gpt.chunk_parameters(config, layers=[0], first=False, last=False)
    return sum(_size(p) for p in first_layer if p.expert == 0 and p.entry.decay is gpt.Decay.DECAY)


@attrs.frozen(kw_only=True)
class Flops:
    matmul_params_per_token: int
    attention_per_token: int
    """Forward FLOPs of the score and value products per token."""

    @property
    def forward_per_token(self) -> int:
        return 2 * self.matmul_params_per_token + self.attention_per_token

    @property
    def train_per_token(self) -> int:
        """Forward + backward (backward = 2 x forward)."""
        return 3 * self.forward_per_token


def flops(spec: Spec) -> Flops:
    """FLOPs per token: 2 per multiply-add of each matmul parameter a token touches, plus attention."""
    m = spec.model
    counts = parameter_counts(spec)
    heads, _, head_dim, _ = _dims(spec)
    vocab = derive.padded_vocab(spec)
    per_layer = counts.per_layer
    if m.num_experts is not None:
        # A token only goes through top-k experts.
        per_layer = per_layer - _expert_weights(spec) * (m.num_experts - m.moe_router_topk)
    matmul = per_layer * m.num_layers + vocab * m.hidden_size  # layers + output projection (tied or not)
    attention = 4 * m.num_layers * m.seq_length * heads * head_dim  # QK^T and PV, 2 FLOPs per MAC
    return Flops(matmul_params_per_token=matmul, attention_per_token=attention)


@attrs.frozen(kw_only=True)
class Memory:
    """Estimated bytes on the most loaded GPU (first pipeline stage)."""

    params_on_rank: int
    weights: float
    gradients: float
    optimizer: float
    activations: float
    weight_bytes: int
    grad_bytes: int
    optimizer_bytes_per_param: float
    in_flight_microbatches: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations


def in_flight_microbatches(spec: Spec) -> float:
    """Microbatches whose activations the first pipeline stage holds at once (Megatron-LM's 1F1B bound)."""
    p = spec.parallel
    if p.virtual_pipeline is not None:
        return p.pipeline * (1 + (p.pipeline - 1) / (p.pipeline * p.virtual_pipeline))
    return min(derive.microbatches(spec), p.pipeline)


def _layer_parts(spec: Spec) -> dict[str, float]:
    """One layer's kept activations for one microbatch on one rank, in 16-bit values, by the part that keeps them.

    Korthikanti et al. (2022): 34 x s x b x h per layer with a 4h MLP (here (18 + 4 ffn / h) sbh) plus the
    unfused attention's 5 x heads x s^2 x b. Split over tensor ranks: all of it with sequence parallelism;
    without it 10 sbh (the norms' and dropouts' inputs) stays whole on every rank.
    """
    m = spec.model
    p = spec.parallel
    s, b, h = m.seq_length, spec.batch.micro_batch_size, m.hidden_size
    _, _, _, ffn = _dims(spec)
    sbh = s * b * h
    # Without sequence parallelism 10 sbh (the norms' and dropouts' inputs) stays whole on every tensor rank.
    r = p.tensor if p.sequence_parallel else 1
    t = p.tensor
    parts = {
        "layernorm": 4 * sbh / r,  # the two norms' outputs, discarded and recomputed by "layernorm"
        "mlp": 4 * ffn / h * sbh / t,  # the MLP's two ffn-wide tensors (fc1 output, activation output)
        # megatron-core's local attention is unfused: it keeps the scores, softmax and dropout mask of every
        # head (5 x heads x s^2 per sequence); torch's SDPA and Transformer Engine's fused attention do not.
        "core_attn": 5 * m.num_attention_heads * s * s * b / t if m.transformer_impl == "local" else 0.0,
        "rest": 6 * sbh / r + 8 * sbh / t,
    }
    return {name: value / p.context for name, value in parts.items()}


def activation_bytes(spec: Spec, recompute: Recompute) -> float:
    """Activation bytes on the first pipeline stage's rank with this recomputation (and [offload] activations)."""
    m = spec.model
    p = spec.parallel
    s, b, h = m.seq_length, spec.batch.micro_batch_size, m.hidden_size
    parts = _layer_parts(spec)
    full_layer = sum(parts.values())
    layer_input = 2 * s * b * h / (p.tensor if p.sequence_parallel else 1) / p.context
    layers = m.num_layers // p.pipeline
    match recompute.granularity:
        case None:
            kept, transient = layers * full_layer, 0.0
        case "selective":
            dropped = sum(parts.get(module, 0.0) for module in (recompute.modules or ("core_attn",)))
            kept, transient = layers * (full_layer - dropped), dropped
        case "full":
            n = recompute.num_layers or 1
            if recompute.method == "block":
                recomputed = min(n, layers)
                kept, transient = recomputed * layer_input + (layers - recomputed) * full_layer, full_layer
            else:  # uniform: each group of n layers keeps its input and is recomputed whole
                kept, transient = math.ceil(layers / n) * layer_input, n * full_layer
        case _:
            raise AssertionError(recompute.granularity)
    if spec.offload.activations and spec.offload.num_layers:
        kept -= min(spec.offload.num_layers, layers) * full_layer  # moved to host memory
    total = kept * in_flight_microbatches(spec) + transient  # one microbatch is recomputed at a time
    total += (8 * s * b + s * b * h) * p.pipeline / (p.tensor * p.context)  # embedding input and dropout
    if p.pipeline == 1:
        total += s * b * h * 4 * (1 + derive.padded_vocab(spec) / h) / (p.tensor * p.context)  # output and loss
    mixed = spec.precision.dtype in ("bf16", "fp16")
    return total * (1 if mixed else 2)  # 16-bit values; fp32 doubles them


RECOMPUTE_CHOICES = (
    ("none", Recompute()),
    ("selective core_attn", Recompute(granularity="selective")),
    ("selective core_attn+mlp", Recompute(granularity="selective", modules=("core_attn", "mlp"))),
    ("full uniform 1", Recompute(granularity="full", method="uniform", num_layers=1)),
)
"""The recompute choices explain sets side by side."""


def recompute_name(recompute: Recompute) -> str:
    match recompute.granularity:
        case None:
            return "no recomputation"
        case "selective":
            return "selective recomputation of " + "+".join(recompute.modules or ("core_attn",))
        case "full":
            return f"full recomputation, {recompute.method} {recompute.num_layers}"
        case _:
            raise AssertionError(recompute.granularity)


def _optimizer_offload_line(spec: Spec, mem: Memory) -> tuple[str, ...]:
    if not spec.offload.optimizer:
        return ()
    return (f"  (optimizer state: {offload_fraction(spec):g} of it in host memory, not counted in the total)",)


def offload_fraction(spec: Spec) -> float:
    """The share of the optimizer state [offload] optimizer keeps in host memory."""
    if not spec.offload.optimizer:
        return 0.0
    return 1.0 if spec.offload.optimizer_fraction is None else spec.offload.optimizer_fraction


def memory(spec: Spec) -> Memory:
    p = spec.parallel
    counts = parameter_counts(spec)
    dp = derive.data_parallel(spec)
    # Most loaded rank: its share of the layers plus the embedding (and the untied output when pp = 1).
    params = counts.layers / p.pipeline + counts.embedding
    if p.pipeline == 1:
        params += counts.output + counts.final_norm
    params_on_rank = int(params / p.tensor)
    mixed = spec.precision.dtype in ("bf16", "fp16")
    weight_bytes = 2 if mixed else 4
    grad_bytes = 4  # gradients are reduced in fp32
    # Adam keeps two fp32 moments (+ an fp32 master copy under mixed precision); SGD one momentum buffer.
    state = (8 if spec.optimizer.name == "adam" else 4) + (4 if mixed else 0)
    if p.distributed_optimizer:
        state = state / dp
    activations = activation_bytes(spec, spec.recompute)
    return Memory(
        params_on_rank=params_on_rank,
        weights=params_on_rank * weight_bytes,
        gradients=params_on_rank * grad_bytes,
        optimizer=params_on_rank * state * (1 - offload_fraction(spec)),
        activations=activations,
        weight_bytes=weight_bytes,
        grad_bytes=grad_bytes,
        optimizer_bytes_per_param=state,
        in_flight_microbatches=in_flight_microbatches(spec),
    )


@attrs.frozen(kw_only=True)
class RankCoordinates:
    rank: int
    node: int
    tensor: int
    context: int
    expert: int
    data: int
    pipeline: int


def rank_layout(spec: Spec) -> tuple[RankCoordinates, ...]:
    """Each global rank's coordinates in megatron-core's default order tp-cp-ep-dp-pp (tp fastest).

    Expert parallelism is carved out of data x context, so the ep coordinate is
    the data rank modulo the expert size (how megatron builds its expert groups).
    """
    p = spec.parallel
    world = derive.world_size(spec)
    dp = derive.data_parallel(spec)
    rows = []
    for rank in range(world):
        tensor = rank % p.tensor
        context = (rank // p.tensor) % p.context
        data = (rank // (p.tensor * p.context)) % dp
        pipeline = rank // (p.tensor * p.context * dp)
        rows.append(
            RankCoordinates(
                rank=rank,
                node=rank // spec.launch.procs_per_node,
                tensor=tensor,
                context=context,
                expert=data % p.expert,
                data=data,
                pipeline=pipeline,
            )
        )
    return tuple(rows)


def human_count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def human_bytes(n: float) -> str:
    if n >= 1024 * MiB:
        return f"{n / (1024 * MiB):.2f} GiB"
    return f"{n / MiB:.2f} MiB"


def interop_lines(spec: Spec) -> list[str]:
    """The JAX mesh behind the layout and the optax no-decay set, when the spec uses them."""
    from bridgec.compiler.mesh import explain_mesh, lower_mesh
    from bridgec.compiler.validate_interop import no_decay_table
    from bridgec.runtime.decay_mask import summarize

    lines: list[str] = []
    p = spec.parallel
    if p.mesh is not None:
        result = lower_mesh(p.mesh, p.dcn_mesh, nodes=spec.launch.nodes, procs_per_node=spec.launch.procs_per_node)
        if result.lowering is not None:
            lines += ["", "JAX mesh -> Megatron sizes"] + [f"  {line}" for line in explain_mesh(result.lowering)]
    if spec.optimizer.semantics == "optax":
        mask = spec.optimizer.decay_mask
        lines += ["", f"Weight decay (optax semantics, {spec.optimizer.weight_decay} x lr x parameter where it decays)"]
        if not mask.exclude:
            lines.append(
                "  every parameter decays (empty [optimizer.decay_mask] exclude, as MaxText's adamw_mask = [])"
            )
        else:
            lines.append(f"  exclude patterns {list(mask.exclude)} over MaxText {mask.paths} paths")
            lines += [f"  {line}" for line in summarize(no_decay_table(spec))]
    return lines


def explain_text(spec: Spec, *, extra: tuple[str, ...] = ()) -> str:
    """The report ``bridgec explain`` prints."""
    p = spec.parallel
    world = derive.world_size(spec)
    dp = derive.data_parallel(spec)
    micro = spec.batch.micro_batch_size
    g = spec.batch.global_batch_size
    counts = parameter_counts(spec)
    f = flops(spec)
    mem = memory(spec)
    tokens = derive.tokens_per_step(spec)
    lines = [
        f"run {spec.run.name!r}",
        "",
        "Layout",
        f"  world = nodes {spec.launch.nodes} x procs_per_node {spec.launch.procs_per_node} = {world}",
        f"  data  = world {world} / (tensor {p.tensor} x pipeline {p.pipeline} x context {p.context}) = {dp}",
        "  rank  node  tp  cp  ep  dp  pp",
    ]
    layout = rank_layout(spec)
    shown = layout if len(layout) <= 64 else layout[:32] + layout[-8:]
    for index, row in enumerate(shown):
        if len(layout) > 64 and index == 32:
            lines.append(f"  ... ({len(layout) - 40} more ranks)")
        lines.append(
            f"  {row.rank:>4}  {row.node:>4}  {row.tensor:>2}  {row.context:>2}  {row.expert:>2}  {row.data:>2}  {row.pipeline:>2}"
        )
    lines += [
        "",
        "Batch",
        f"  microbatches per step = global {g} / (micro {micro} x data {dp}) = {derive.microbatches(spec)}",
        f"  tokens per step = global {g} x seq_length {spec.model.seq_length} = {tokens}",
        "",
        "Parameters",
        f"  embedding {counts.embedding:,}",
        f"  per layer {counts.per_layer:,} x {spec.model.num_layers} layers = {counts.layers:,}",
        f"  final norm {counts.final_norm:,}",
        f"  output layer {counts.output:,}" + (" (tied to the embedding)" if spec.model.tie_embeddings else ""),
        f"  total {counts.total:,} ({human_count(counts.total)})",
        *_trainable_lines(spec, counts.total),
        "",
        "FLOPs per token",
        f"  forward = 2 x {f.matmul_params_per_token:,} matmul parameters + {f.attention_per_token:,} attention"
        f" = {f.forward_per_token:,}",
        f"  training (forward + backward = 3 x forward) = {f.train_per_token:,}",
        f"  per step = {f.train_per_token:,} x {tokens} tokens = {f.train_per_token * tokens:.3e}",
        "",
        "Memory on the most loaded rank (estimate, Megatron-LM's theoretical_memory_usage)",
        f"  parameters on rank {mem.params_on_rank:,}",
        f"  weights    {human_bytes(mem.weights)} ({mem.weight_bytes} bytes/param)",
        f"  gradients  {human_bytes(mem.gradients)} ({mem.grad_bytes} bytes/param, fp32 reduction)",
        f"  optimizer  {human_bytes(mem.optimizer)} ({mem.optimizer_bytes_per_param:g} bytes/param"
        + (f", sharded over data {dp})" if p.distributed_optimizer else ")"),
        f"  activations {human_bytes(mem.activations)} ({mem.in_flight_microbatches:g} microbatches in flight, "
        + ATTENTION_MEMORY[spec.model.transformer_impl]
        + f", {recompute_name(spec.recompute)}"
        + ("" if p.tensor == 1 or p.sequence_parallel else ", norms and dropouts whole on every tensor rank")
        + (f", {spec.offload.num_layers} layers offloaded to host)" if spec.offload.activations else ")"),
        *_optimizer_offload_line(spec, mem),
        f"  total      {human_bytes(mem.total)}",
        "  activations by recompute choice: "
        + " | ".join(f"{name} {human_bytes(activation_bytes(spec, choice))}" for name, choice in RECOMPUTE_CHOICES),
    ]
    lines += _teacher_lines(spec, mem.weight_bytes)
    lines += interop_lines(spec)
    lines += list(extra)
    return "\n".join(lines) + "\n"


def teacher_rank_parameters(spec: Spec) -> int:
    """[distill]: the teacher's parameters on one rank that holds it: all its layers, that tensor rank's slices."""
    teacher = derive.whole_teacher(spec)
    [chunk] = gpt.rank_parameters(derive.gpt_config(teacher), tensor=spec.parallel.tensor, expert=spec.parallel.expert)
    return sum(math.prod(parameter.local_shape) for parameter in chunk)


def _teacher_lines(spec: Spec, weight_bytes: int) -> list[str]:
    """Where the frozen teacher lives and what its weights take there (outside the student's estimate)."""
    if spec.distill is None:
        return []
    total = parameter_counts(derive.whole_teacher(spec)).total
    per_rank = teacher_rank_parameters(spec)
    last = spec.parallel.pipeline - 1
    if spec.parallel.pipeline == 1:
        holders = "every rank"
    else:
        ranks = [row.rank for row in rank_layout(spec) if row.pipeline == last]
        shown = ", ".join(map(str, ranks[:8])) + (f", ... ({len(ranks)} ranks)" if len(ranks) > 8 else "")
        holders = (
            f"the last pipeline stage's ranks {shown}, whole (the other stages load it at the start, then drop it)"
        )
    return [
        "",
        "Distillation teacher (frozen, forward only: no gradients, no optimizer state)",
        f"  parameters {total:,} ({human_count(total)}); on each rank that holds it {per_rank:,}",
        f"  held by {holders}",
        f"  weights    {human_bytes(per_rank * weight_bytes)} per holding rank ({weight_bytes} bytes/param), "
        "on top of the estimate above",
        *_layer_pair_lines(spec),
    ]


def _layer_pair_lines(spec: Spec) -> list[str]:
    """[[distill.layers]]: the pairs whose hidden-state losses join the total, as logged."""
    assert spec.distill is not None
    if not spec.distill.layers:
        return []
    return [
        "  layer pairs (output hidden states; each loss logged as 'layer STUDENT-TEACHER LOSS loss')",
        *(
            f"    student layer {pair.student} - teacher layer {pair.teacher}: {pair.loss} x {pair.scale:g}"
            for pair in spec.distill.layers
        ),
    ]


def _trainable_lines(spec: Spec, total: int) -> list[str]:
    trainable = trainable_parameters(spec)
    if trainable is None or spec.peft is None:
        return []
    return [
        f"  trainable: {spec.peft.method} adapters of rank {spec.peft.rank} on {', '.join(spec.peft.target_modules)} "
        f"{trainable:,} ({100 * trainable / total:.3g}% of total; every base weight frozen)"
    ]


def mfu(tokens_per_second: float, spec: Spec, peak_tflops: float) -> float:
    """Model FLOPs utilisation: achieved training TFLOP/s per device over ``peak_tflops`` (the runtime's formula)."""
    return throughput.mfu(
        tokens_per_second,
        flops_per_token=flops(spec).train_per_token,
        world_size=derive.world_size(spec),
        peak=peak_tflops,
    )
