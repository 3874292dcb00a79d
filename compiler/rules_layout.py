"""Rules for the parallel layout, the model's shape against it, devices and number formats."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

from bridgec.compiler.derive import model_parallel, world_size
from bridgec.compiler.errors import render_value
from bridgec.compiler.rule_base import (
    Finding,
    Rule,
    SpecContext,
    data_parallel_size,
    divisors_text,
    microbatches,
    multiples_near,
    split_hint,
)
from bridgec.compiler.spec import Spec

# -- parallel layout -------------------------------------------------------------------------


def rule_world_divisible(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    n, p = spec.launch.nodes, spec.launch.procs_per_node
    t, pp, c = spec.parallel.tensor, spec.parallel.pipeline, spec.parallel.context
    if min(n, p, t, pp, c) < 1 or (n * p) % (t * pp * c) == 0:
        return
    world, mp = n * p, t * pp * c
    step = mp // math.gcd(n, mp)  # procs_per_node must be a multiple of this
    procs = -(-p // step) * step
    yield Finding(
        about=(
            ("launch", "procs_per_node"),
            ("parallel", "tensor"),
            ("parallel", "pipeline"),
            ("parallel", "context"),
            ("launch", "nodes"),
        ),
        message=(
            f"world size = launch.nodes x procs_per_node = {n} x {p} = {world} is not divisible by "
            f"parallel.tensor x pipeline x context = {t} x {pp} x {c} = {mp}, so the ranks do not form "
            f"whole data-parallel groups"
        ),
        hint=(
            f"procs_per_node = {procs} (data parallel {n * procs // mp}), or tensor x pipeline x context "
            f"= {divisors_text(world)}"
        ),
    )


def rule_global_batch_divisible(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    dp, g, m = data_parallel_size(spec), spec.batch.global_batch_size, spec.batch.micro_batch_size
    if dp is None or g < 1 or m < 1 or g % (m * dp) == 0:
        return
    yield Finding(
        about=(("batch", "global_batch_size"),),
        message=(
            f"$.batch.global_batch_size = {g} is not divisible by batch.micro_batch_size x data parallel "
            f"= {m} x {dp} = {m * dp} (each data-parallel rank runs whole microbatches; data parallel = "
            f"world size {world_size(spec)} / (tensor x pipeline x context) {model_parallel(spec)})"
        ),
        hint=f"global_batch_size = {multiples_near(g, m * dp)}",
    )


def rule_layers_divisible(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    layers, pp, vpp = spec.model.num_layers, spec.parallel.pipeline, spec.parallel.virtual_pipeline
    if layers < 1 or pp < 1:
        return
    if layers % pp:
        yield Finding(
            about=(("model", "num_layers"), ("parallel", "pipeline")),
            message=(
                f"$.model.num_layers = {layers} is not divisible by parallel.pipeline = {pp} "
                f"(each pipeline stage holds the same number of layers)"
            ),
            hint=f"num_layers = {multiples_near(layers, pp)}, or pipeline = {divisors_text(layers)}",
        )
    elif vpp is not None and vpp >= 2 and pp > 1 and layers % (pp * vpp):
        yield Finding(
            about=(("model", "num_layers"), ("parallel", "virtual_pipeline")),
            message=(
                f"$.model.num_layers = {layers} is not divisible by parallel.pipeline x virtual_pipeline "
                f"= {pp} x {vpp} = {pp * vpp} (each model chunk holds the same number of layers)"
            ),
            hint=f"num_layers = {multiples_near(layers, pp * vpp)}, or a virtual_pipeline that divides "
            f"{layers // pp} (the layers per stage)",
        )


def rule_virtual_pipeline(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    vpp, pp = spec.parallel.virtual_pipeline, spec.parallel.pipeline
    if vpp is None:
        return
    about = (("parallel", "virtual_pipeline"),)
    if vpp < 2:
        yield Finding(
            about=about,
            message=f"$.parallel.virtual_pipeline = {vpp} must be at least 2 (it is the number of model "
            f"chunks per pipeline stage; one chunk is the plain pipeline schedule)",
            hint="remove virtual_pipeline, or set it to 2 or more",
        )
    elif pp == 1:
        yield Finding(
            about=about,
            message=f"$.parallel.virtual_pipeline = {vpp} needs parallel.pipeline > 1 (the interleaved "
            f"schedule splits each pipeline stage into chunks)",
            hint="set pipeline = 2 or more, or remove virtual_pipeline",
        )
    else:
        count = microbatches(spec)
        if count is not None and pp > 1 and count % pp:
            g, m, dp = spec.batch.global_batch_size, spec.batch.micro_batch_size, data_parallel_size(spec)
            yield Finding(
                about=(("batch", "global_batch_size"), ("parallel", "virtual_pipeline")),
                message=(
                    f"the interleaved pipeline schedule (parallel.virtual_pipeline = {vpp}) needs the number "
                    f"of microbatches to be a multiple of parallel.pipeline = {pp}, but global_batch_size / "
                    f"(micro_batch_size x data parallel) = {g} / ({m} x {dp}) = {count}"
                ),
                hint=f"global_batch_size = {multiples_near(g, m * dp * pp)}",
            )


def rule_heads_divisible_by_tensor(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    t, heads, groups = spec.parallel.tensor, spec.model.num_attention_heads, spec.model.num_query_groups
    if t < 1 or heads < 1:
        return
    if heads % t:
        yield Finding(
            about=(("model", "num_attention_heads"), ("parallel", "tensor")),
            message=(
                f"$.model.num_attention_heads = {heads} is not divisible by parallel.tensor = {t} "
                f"(each tensor-parallel rank needs whole heads)"
            ),
            hint=split_hint(heads, t, "heads"),
        )
    if groups is not None and groups >= 1 and groups % t:
        yield Finding(
            about=(("model", "num_query_groups"), ("parallel", "tensor")),
            message=(
                f"$.model.num_query_groups = {groups} is not divisible by parallel.tensor = {t} "
                f"(each tensor-parallel rank needs whole key/value groups)"
            ),
            hint=split_hint(groups, t, "query groups"),
        )


def rule_heads_divisible_by_groups(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    heads, groups = spec.model.num_attention_heads, spec.model.num_query_groups
    if groups is None or groups < 1 or heads < 1 or heads % groups == 0:
        return
    yield Finding(
        about=(("model", "num_query_groups"),),
        message=(
            f"$.model.num_attention_heads = {heads} is not divisible by model.num_query_groups = {groups} "
            f"(each key/value group serves the same number of query heads)"
        ),
        hint=f"num_query_groups = {divisors_text(heads)}",
    )


def rule_hidden_divisible_by_heads(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    hidden, heads = spec.model.hidden_size, spec.model.num_attention_heads
    if spec.model.head_dim is not None or hidden < 1 or heads < 1 or hidden % heads == 0:
        return
    yield Finding(
        about=(("model", "hidden_size"), ("model", "num_attention_heads")),
        message=(
            f"$.model.hidden_size = {hidden} is not divisible by model.num_attention_heads = {heads}, so "
            f"a head has no whole width (head_dim defaults to hidden_size / num_attention_heads)"
        ),
        hint=f"hidden_size = {multiples_near(hidden, heads)}, or set head_dim under [model]",
    )


def rule_sequence_divisible_by_context(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    seq, c = spec.model.seq_length, spec.parallel.context
    if c <= 1 or seq < 1 or seq % (2 * c) == 0:
        return
    yield Finding(
        about=(("model", "seq_length"), ("parallel", "context")),
        message=(
            f"$.model.seq_length = {seq} is not divisible by 2 x parallel.context = {2 * c} (context "
            f"parallelism cuts each sequence into 2 x context chunks to balance causal attention)"
        ),
        hint=f"seq_length = {multiples_near(seq, 2 * c)}",
    )


def rule_sequence_parallel_needs_tensor(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    if spec.parallel.sequence_parallel and spec.parallel.tensor == 1:
        yield Finding(
            about=(("parallel", "sequence_parallel"),),
            message=(
                "$.parallel.sequence_parallel = true needs parallel.tensor > 1 (it splits norms and "
                "dropout along the sequence inside tensor-parallel regions)"
            ),
            hint="set tensor = 2 or more, or remove sequence_parallel",
        )
    if spec.parallel.sequence_parallel and spec.model.transformer_impl != "transformer_engine":
        yield Finding(
            about=(("parallel", "sequence_parallel"), ("model", "transformer_impl")),
            message=(
                '$.parallel.sequence_parallel = true needs model.transformer_impl = "transformer_engine" '
                "(megatron-core's local torch norms refuse sequence parallelism)"
            ),
            hint='set transformer_impl = "transformer_engine" (and device = "cuda"), or remove sequence_parallel',
        )


def rule_experts(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    e, experts, topk = spec.parallel.expert, spec.model.num_experts, spec.model.moe_router_topk
    if experts is None:
        if e > 1:
            yield Finding(
                about=(("parallel", "expert"),),
                message=f"$.parallel.expert = {e} needs model.num_experts (expert parallelism splits "
                f"the experts of MoE layers, and this model is dense)",
                hint=f"set num_experts under [model] to a multiple of {e}, or remove expert",
            )
        return
    if experts < 1:
        return
    if e >= 1 and experts % e:
        yield Finding(
            about=(("model", "num_experts"), ("parallel", "expert")),
            message=f"$.model.num_experts = {experts} is not divisible by parallel.expert = {e} "
            f"(each expert-parallel rank holds the same number of experts)",
            hint=f"num_experts = {multiples_near(experts, e)}, or expert = {divisors_text(experts)}",
        )
    if topk > experts:
        yield Finding(
            about=(("model", "moe_router_topk"), ("model", "num_experts")),
            message=f"$.model.moe_router_topk = {topk} is more than model.num_experts = {experts} "
            f"(a token cannot be routed to more experts than there are)",
            hint=f"moe_router_topk = {experts} or less",
        )
    if spec.parallel.tensor > 1 and not spec.parallel.sequence_parallel:
        yield Finding(
            about=(("parallel", "tensor"), ("model", "num_experts")),
            message=f"MoE layers (model.num_experts = {experts}) with parallel.tensor = "
            f"{spec.parallel.tensor} need parallel.sequence_parallel = true (megatron-core "
            f"refuses to train MoE with tensor parallelism but without sequence parallelism)",
            hint="set sequence_parallel = true under [parallel] (which needs transformer_impl = "
            '"transformer_engine"), or use expert parallelism instead of tensor',
        )


def rule_experts_without_biases(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    if spec.model.num_experts is None or spec.model.num_experts < 1 or not spec.model.add_bias_linear:
        return
    yield Finding(
        about=(("model", "add_bias_linear"), ("model", "num_experts")),
        message=f"MoE layers (model.num_experts = {spec.model.num_experts}) need model.add_bias_linear = "
        f"false (megatron-core adds expert biases in place, which autograd rejects in the "
        f"backward pass)",
        hint="set add_bias_linear = false under [model] (MoE models use no linear biases)",
    )


def rule_expert_fits_data_parallel(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    dp, e, c = data_parallel_size(spec), spec.parallel.expert, spec.parallel.context
    if dp is None or e < 1 or spec.model.num_experts is None or (dp * c) % e == 0:
        return
    yield Finding(
        about=(("parallel", "expert"),),
        message=(
            f"$.parallel.expert = {e} does not divide data parallel x context = {dp} x {c} = {dp * c} "
            f"(expert parallelism is carved out of the data- and context-parallel ranks)"
        ),
        hint=f"expert = {divisors_text(dp * c)}",
    )


# -- devices and number formats -----------------------------------------------------------------


def rule_fp8_needs_cuda_and_transformer_engine(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    recipe = spec.precision.fp8
    if recipe is None:
        return
    if spec.launch.device != "cuda":
        yield Finding(
            about=(("precision", "fp8"),),
            message=f'$.precision.fp8 = {render_value(recipe)} needs launch.device = "cuda" (FP8 runs '
            f"on GPU tensor cores)",
            hint='set device = "cuda" under [launch], or remove fp8',
        )
    if spec.model.transformer_impl != "transformer_engine":
        yield Finding(
            about=(("precision", "fp8"),),
            message=f"$.precision.fp8 = {render_value(recipe)} needs model.transformer_impl = "
            f'"transformer_engine" (the local layers have no FP8 path)',
            hint='set transformer_impl = "transformer_engine" under [model], or remove fp8',
        )


def rule_transformer_engine_needs_cuda(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    if spec.model.transformer_impl == "transformer_engine" and spec.launch.device != "cuda":
        yield Finding(
            about=(("model", "transformer_impl"),),
            message='$.model.transformer_impl = "transformer_engine" needs launch.device = "cuda" '
            "(transformer_engine's kernels run only on GPUs)",
            hint='set device = "cuda" under [launch], or transformer_impl = "local"',
        )


def rule_context_needs_transformer_engine(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    c = spec.parallel.context
    if c > 1 and spec.model.transformer_impl != "transformer_engine":
        yield Finding(
            about=(("parallel", "context"),),
            message=f'$.parallel.context = {c} needs model.transformer_impl = "transformer_engine" '
            f"(megatron-core's context parallelism runs through transformer_engine attention)",
            hint='set transformer_impl = "transformer_engine" under [model] (cuda only), or context = 1',
        )


# -- schedulers --------------------------------------------------------------------------------

_SLURM_TIME = re.compile(r"(\d+-)?\d+(:\d{1,2}){0,2}")
"""sbatch --time: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS."""


def rule_scheduler_settings_match(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    for table, present in (
        ("slurm", spec.launch.slurm is not None),
        ("kubernetes", spec.launch.kubernetes is not None),
    ):
        if present and spec.launch.scheduler != table:
            yield Finding(
                about=(("launch", table), ("launch", "scheduler")),
                message=(
                    f"[launch.{table}] is only read with launch.scheduler = {render_value(table)}; with "
                    f"{render_value(spec.launch.scheduler)} it would change nothing"
                ),
                hint=f'set scheduler = "{table}" under [launch], or remove [launch.{table}]',
            )


def rule_kubernetes_needs_image(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    if spec.launch.scheduler == "kubernetes" and spec.launch.kubernetes is None:
        yield Finding(
            about=(("launch", "scheduler"),),
            message='launch.scheduler = "kubernetes" needs the container image the job runs: there is no [launch.kubernetes]',
            hint='add [launch.kubernetes] with image = "registry/image:tag" (bridgec installed, the script in working_dir)',
        )


def rule_slurm_time(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    slurm = spec.launch.slurm
    if slurm is not None and not _SLURM_TIME.fullmatch(slurm.time):
        yield Finding(
            about=(("launch", "slurm", "time"),),
            message=f"$.launch.slurm.time = {render_value(slurm.time)} is not a SLURM time limit",
            hint='write minutes ("90"), "HH:MM:SS" ("04:00:00") or "D-HH:MM:SS" ("1-12:00:00")',
        )


LAYOUT_RULES: tuple[Rule, ...] = (
    rule_world_divisible,
    rule_global_batch_divisible,
    rule_layers_divisible,
    rule_virtual_pipeline,
    rule_heads_divisible_by_tensor,
    rule_heads_divisible_by_groups,
    rule_hidden_divisible_by_heads,
    rule_sequence_divisible_by_context,
    rule_sequence_parallel_needs_tensor,
    rule_experts,
    rule_experts_without_biases,
    rule_expert_fits_data_parallel,
    rule_fp8_needs_cuda_and_transformer_engine,
    rule_transformer_engine_needs_cuda,
    rule_context_needs_transformer_engine,
    rule_scheduler_settings_match,
    rule_kubernetes_needs_image,
    rule_slurm_time,
)
