"""validate: the performance keys' rules (compiler/rules_perf.py), one test per rule with its exact messages.

Line numbers as in tests/compiler/test_validate.py (MINIMAL's 15 lines, new tables from line 16).
"""

from __future__ import annotations

from tests.compiler.test_validate import check

CUDA = {"device": "cuda"}
TE = {"transformer_impl": "transformer_engine"}


def test_rule_recompute_keys_need_granularity() -> None:
    check(
        {"recompute": {"method": "uniform", "num_layers": 1, "modules": ["mlp"]}},
        [
            'spec.toml:17: $.recompute.method = "uniform" changes nothing without recompute.granularity; '
            'hint: set granularity = "full" (method, num_layers) or "selective" (modules) under [recompute], '
            "or remove method",
            "spec.toml:18: $.recompute.num_layers = 1 changes nothing without recompute.granularity; hint: "
            'set granularity = "full" (method, num_layers) or "selective" (modules) under [recompute], or '
            "remove num_layers",
            'spec.toml:19: $.recompute.modules = ["mlp"] changes nothing without recompute.granularity; hint: '
            'set granularity = "full" (method, num_layers) or "selective" (modules) under [recompute], or '
            "remove modules",
        ],
    )


def test_rule_recompute_full_needs_method_and_layers() -> None:
    check(
        {"recompute": {"granularity": "full"}},
        [
            'spec.toml:17: $.recompute.granularity = "full" needs recompute.method and recompute.num_layers; '
            'hint: e.g. method = "uniform" and num_layers = 1 under [recompute] (every layer recomputed from '
            "its input)"
        ],
    )
    check(
        {"recompute": {"granularity": "full", "method": "block", "num_layers": 3, "modules": ["mlp"]}},
        [
            "spec.toml:19: $.recompute.num_layers = 3 must be between 1 and the 2 layers one pipeline stage "
            "holds; hint: num_layers = 1 to 2",
            'spec.toml:20: $.recompute.modules is for granularity = "selective"; "full" recomputes whole '
            'layers; hint: remove modules, or granularity = "selective"',
        ],
    )


def test_rule_recompute_selective_takes_modules() -> None:
    check(
        {"recompute": {"granularity": "selective", "method": "block", "num_layers": 1}},
        [
            'spec.toml:18: $.recompute.method = "block" is for granularity = "full"; "selective" recomputes '
            'its modules in every layer; hint: remove method, or granularity = "full"',
            'spec.toml:19: $.recompute.num_layers = 1 is for granularity = "full"; "selective" recomputes its '
            'modules in every layer; hint: remove num_layers, or granularity = "full"',
        ],
    )


def test_rule_recompute_modules_supported() -> None:
    check(
        {"recompute": {"granularity": "selective", "modules": ["moe_act", "moe", "layernorm", "mlp"]}},
        [
            'spec.toml:18: $.recompute.modules holds "layernorm", which needs model.transformer_impl = '
            '"transformer_engine" (megatron-core 0.16.1\'s output-discarding checkpoint reads Transformer '
            'Engine\'s FP8 state); hint: use "core_attn" or "mlp", or transformer_impl = "transformer_engine" '
            "under [model]",
            'spec.toml:18: $.recompute.modules holds "mlp", which needs model.add_bias_linear = false '
            "(megatron-core 0.16.1 returns the MLP's output bias parameter through the checkpoint, and its "
            "backward pass then recurses without end); hint: add_bias_linear = false under [model], or use "
            '"core_attn"',
            'spec.toml:18: $.recompute.modules holds "moe" but the model has no experts (model.num_experts '
            'unset); hint: use "mlp" for the dense MLP',
            'spec.toml:18: $.recompute.modules holds "moe_act", a module bridgec\'s models do not have '
            "(moe_act needs grouped GEMM experts, mla_up_proj multi-latent attention, shared_experts shared "
            "experts); hint: use core_attn, mlp, layernorm, moe",
        ],
    )
    check(
        {
            "model": {"num_experts": 4, "add_bias_linear": False},
            "recompute": {"granularity": "selective", "modules": ["mlp"]},
        },
        [
            'spec.toml:20: $.recompute.modules holds "mlp", the dense MLP, but every layer of this MoE model '
            'has experts instead; hint: use "moe"'
        ],
    )


def test_rule_offload_needs_cuda() -> None:
    check(
        {
            "offload": {"activations": True, "num_layers": 1, "optimizer": True},
            "parallel": {"distributed_optimizer": True},
        },
        [
            'spec.toml:17: $.offload.activations = true needs launch.device = "cuda" (it moves tensors from '
            'the GPU to host memory; on the CPU they are already there); hint: device = "cuda" under '
            "[launch], or remove activations",
            'spec.toml:19: $.offload.optimizer = true needs launch.device = "cuda" (it moves tensors from the '
            'GPU to host memory; on the CPU they are already there); hint: device = "cuda" under [launch], or '
            "remove optimizer",
        ],
    )


def test_rule_offload_layers() -> None:
    check(
        {"launch": CUDA, "offload": {"num_layers": 1}},
        [
            "spec.toml:19: $.offload.num_layers = 1 changes nothing without offload.activations or "
            "offload.weights; hint: activations = true under [offload], or remove num_layers"
        ],
    )
    check(
        {"launch": CUDA, "offload": {"weights": True}},
        [
            "spec.toml:19: $.offload.activations or weights needs offload.num_layers (how many layers are "
            "offloaded); hint: num_layers = 1 to 1 under [offload]"
        ],
    )
    check(
        {"launch": CUDA, "offload": {"activations": True, "num_layers": 2}},
        [
            "spec.toml:20: $.offload.num_layers = 2 must be between 1 and model.num_layers - 1 = 1 "
            "(megatron-core offloads fewer layers than the model has); hint: num_layers = 1 to 1"
        ],
    )


def test_rule_offload_excludes() -> None:
    check(
        {
            "launch": {"device": "cuda", "procs_per_node": 2},
            "offload": {"activations": True, "num_layers": 1},
            "parallel": {"pipeline": 2},
            "recompute": {"granularity": "selective"},
            "cuda_graph": {"impl": "local"},
        },
        [
            'spec.toml:20: $.offload.activations = true cannot run with cuda_graph.impl = "local" '
            "(megatron-core's CPU offloading supports neither pipeline parallelism, recomputation nor CUDA "
            "graphs); hint: remove activations under [offload], or change cuda_graph.impl",
            "spec.toml:20: $.offload.activations = true cannot run with parallel.pipeline = 2 "
            "(megatron-core's CPU offloading supports neither pipeline parallelism, recomputation nor CUDA "
            "graphs); hint: remove activations under [offload], or change parallel.pipeline",
            'spec.toml:20: $.offload.activations = true cannot run with recompute.granularity = "selective" '
            "(megatron-core's CPU offloading supports neither pipeline parallelism, recomputation nor CUDA "
            "graphs); hint: remove activations under [offload], or change recompute.granularity",
        ],
    )


def test_rule_optimizer_offload() -> None:
    check(
        {"launch": CUDA, "offload": {"optimizer_fraction": 0.5}},
        [
            "spec.toml:19: $.offload.optimizer_fraction = 0.5 changes nothing without offload.optimizer; "
            "hint: optimizer = true under [offload], or remove optimizer_fraction"
        ],
    )
    check(
        {
            "launch": CUDA,
            "offload": {"optimizer": True, "optimizer_fraction": 0.0},
            "optimizer": {"semantics": "optax"},
        },
        [
            'spec.toml:16: $.optimizer.semantics = "optax" reads the learning rate from an optax or MaxText '
            'schedule, but scheduler.style = "megatron"; hint: set style = "maxtext" with '
            '[scheduler.maxtext], or style = "optax" with [[scheduler.optax]] pieces (a constant piece for a '
            "fixed learning rate)",
            'spec.toml:20: $.offload.optimizer = true needs optimizer.semantics = "megatron" (it offloads '
            "megatron-core's optimizer; the optax one is bridgec's); hint: semantics = \"megatron\" under "
            "[optimizer], or remove optimizer",
            "spec.toml:20: $.offload.optimizer = true needs parallel.distributed_optimizer = true "
            "(megatron-core's HybridDeviceOptimizer steps the distributed optimizer's shards); hint: "
            "distributed_optimizer = true under [parallel], or remove optimizer",
            "spec.toml:21: $.offload.optimizer_fraction = 0.0 must be in (0, 1]; hint: e.g. "
            "optimizer_fraction = 1.0 (the whole optimizer state on the CPU)",
        ],
    )


def test_rule_overlap_param_gather_needs_distributed_optimizer() -> None:
    check(
        {"overlap": {"param_gather": True}},
        [
            "spec.toml:17: $.overlap.param_gather = true needs parallel.distributed_optimizer = true (only "
            "the distributed optimizer all-gathers parameters after its step); hint: distributed_optimizer = "
            "true under [parallel], or remove param_gather"
        ],
    )


def test_rule_align_param_gather() -> None:
    check(
        {"overlap": {"align_param_gather": True}},
        [
            "spec.toml:17: $.overlap.align_param_gather = true changes nothing without overlap.param_gather = "
            "true and parallel.virtual_pipeline (it aligns the interleaved schedule's overlapped "
            "all-gathers); hint: param_gather = true under [overlap] with a virtual pipeline, or remove "
            "align_param_gather"
        ],
    )


def test_rule_bucket_size() -> None:
    check(
        {"overlap": {"bucket_size": 1000}},
        [
            "spec.toml:17: $.overlap.bucket_size = 1000 changes nothing without overlap.grad_reduce = true "
            "(megatron-core then reduces all gradients as one bucket); hint: grad_reduce = true under "
            "[overlap], or remove bucket_size"
        ],
    )
    check(
        {"overlap": {"grad_reduce": True, "bucket_size": 0}},
        [
            "spec.toml:18: $.overlap.bucket_size = 0 must be at least 1 (parameters per bucket); hint: e.g. "
            "bucket_size = 40000000 (megatron-core's default)"
        ],
    )


def test_rule_tensor_parallel_overlap() -> None:
    check(
        {"overlap": {"tensor_parallel": True}},
        [
            'spec.toml:17: $.overlap.tensor_parallel = true needs launch.device = "cuda" (Transformer Engine '
            "overlaps the sequence-parallel all-gathers and reduce-scatters with its GEMMs, on CUDA); hint: "
            'set launch.device = "cuda", or remove tensor_parallel under [overlap]',
            "spec.toml:17: $.overlap.tensor_parallel = true needs model.transformer_impl = "
            '"transformer_engine" (Transformer Engine overlaps the sequence-parallel all-gathers and '
            "reduce-scatters with its GEMMs, on CUDA); hint: set model.transformer_impl = "
            '"transformer_engine", or remove tensor_parallel under [overlap]',
            "spec.toml:17: $.overlap.tensor_parallel = true needs parallel.sequence_parallel = true "
            "(Transformer Engine overlaps the sequence-parallel all-gathers and reduce-scatters with its "
            "GEMMs, on CUDA); hint: set parallel.sequence_parallel = true, or remove tensor_parallel under "
            "[overlap]",
        ],
    )


def test_rule_fusions_need_cuda() -> None:
    check(
        {"fusions": {"bias_dropout": True, "masked_softmax": True}},
        [
            'spec.toml:17: $.fusions.bias_dropout = true needs launch.device = "cuda" (a fused CUDA kernel); '
            'hint: device = "cuda" under [launch], or remove bias_dropout',
            'spec.toml:18: $.fusions.masked_softmax = true needs launch.device = "cuda" (a fused CUDA '
            'kernel); hint: device = "cuda" under [launch], or remove masked_softmax',
        ],
    )


def test_rule_fusions_need_transformer_engine() -> None:
    check(
        {
            "launch": CUDA,
            "model": {"position_embedding": "rope"},
            "fusions": {"apply_rope": True, "cross_entropy": True, "cross_entropy_impl": "te"},
        },
        [
            'spec.toml:20: $.fusions.apply_rope = true needs model.transformer_impl = "transformer_engine" '
            '(the kernel is Transformer Engine\'s); hint: transformer_impl = "transformer_engine" under '
            "[model], or remove apply_rope",
            'spec.toml:22: $.fusions.cross_entropy_impl = "te" needs model.transformer_impl = '
            '"transformer_engine" (the kernel is Transformer Engine\'s); hint: transformer_impl = '
            '"transformer_engine" under [model], or remove cross_entropy_impl',
        ],
    )


def test_rule_fusions_change_something() -> None:
    check(
        {"launch": CUDA, "fusions": {"cross_entropy_impl": "te", "apply_rope": True}, "model": TE},
        [
            'spec.toml:20: $.fusions.cross_entropy_impl = "te" changes nothing without fusions.cross_entropy '
            "= true; hint: cross_entropy = true under [fusions], or remove cross_entropy_impl",
            "spec.toml:21: $.fusions.apply_rope = true changes nothing with model.position_embedding = "
            '"learned"; hint: remove apply_rope under [fusions]',
        ],
    )
    check(
        {
            "launch": CUDA,
            "fusions": {"cross_entropy": True, "masked_softmax": True},
            "loss": {"z_loss_multiplier": 0.0001},
            "model": {"transformer_impl": "torch"},
        },
        [
            "spec.toml:20: $.fusions.cross_entropy = true changes nothing: MaxText's loss "
            "(loss.z_loss_multiplier, model.logits_multiplier) replaces megatron-core's cross entropy; hint: "
            "remove cross_entropy under [fusions]",
            "spec.toml:21: $.fusions.masked_softmax = true changes nothing with model.transformer_impl = "
            '"torch": only the local attention has a separate softmax; hint: transformer_impl = "local" under '
            "[model], or remove masked_softmax",
        ],
    )


def test_rule_cuda_graph() -> None:
    check(
        {"cuda_graph": {"scope": ["attn"]}},
        [
            'spec.toml:17: $.cuda_graph.scope = ["attn"] changes nothing with cuda_graph.impl = "none"; hint: '
            'impl = "local" or "transformer_engine" under [cuda_graph], or remove scope'
        ],
    )
    check(
        {"cuda_graph": {"impl": "transformer_engine", "scope": ["full_iteration", "moe_preprocess"]}},
        [
            'spec.toml:17: $.cuda_graph.impl = "transformer_engine" needs launch.device = "cuda"; hint: '
            'device = "cuda" under [launch], or remove impl',
            'spec.toml:17: $.cuda_graph.impl = "transformer_engine" needs model.transformer_impl = '
            '"transformer_engine"; hint: impl = "local", or transformer_impl = "transformer_engine" under '
            "[model]",
            'spec.toml:18: $.cuda_graph.scope "full_iteration" needs cuda_graph.impl = "local"; hint: impl = '
            '"local" under [cuda_graph]',
            'spec.toml:18: $.cuda_graph.scope "moe_preprocess" needs "moe_router" too; hint: add "moe_router"',
            'spec.toml:18: $.cuda_graph.scope ["moe_preprocess"] needs an MoE model (model.num_experts); '
            "hint: remove those scopes",
        ],
    )
    check(
        {
            "launch": CUDA,
            "model": {"num_experts": 4, "add_bias_linear": False},
            "cuda_graph": {"impl": "local", "scope": ["moe", "moe_router"]},
        },
        ['spec.toml:22: $.cuda_graph.scope cannot hold both "moe" and "moe_router"; hint: keep one of them'],
    )


def test_rule_fp8_keys_need_fp8() -> None:
    check(
        {"precision": {"fp8_param_gather": True, "fp8_bf16_first_layers": 1, "fp8_bf16_last_layers": 1}},
        [
            "spec.toml:17: $.precision.fp8_param_gather = true changes nothing without precision.fp8; hint: "
            'fp8 = "tensorwise" (or another recipe) under [precision], or remove fp8_param_gather',
            "spec.toml:18: $.precision.fp8_bf16_first_layers = 1 changes nothing without precision.fp8; hint: "
            'fp8 = "tensorwise" (or another recipe) under [precision], or remove fp8_bf16_first_layers',
            "spec.toml:19: $.precision.fp8_bf16_last_layers = 1 changes nothing without precision.fp8; hint: "
            'fp8 = "tensorwise" (or another recipe) under [precision], or remove fp8_bf16_last_layers',
        ],
    )


def test_rule_fp8_settings() -> None:
    check(
        {
            "launch": CUDA,
            "model": TE,
            "precision": {"fp8": "delayed", "fp8_bf16_first_layers": 3, "fp8_param_gather": True},
        },
        [
            'spec.toml:21: $.precision.fp8 = "delayed" cannot keep first or last layers in bf16 '
            '(megatron-core: delayed scaling does not support it); hint: fp8 = "tensorwise", or remove '
            "fp8_bf16_first_layers and fp8_bf16_last_layers",
            "spec.toml:21: $.precision.fp8_bf16_first_layers = 3 must be between 0 and the 2 layers one "
            "pipeline stage holds; hint: fp8_bf16_first_layers = 0 to 2",
            "spec.toml:22: $.precision.fp8_param_gather = true needs parallel.distributed_optimizer = true "
            "(the distributed optimizer all-gathers the FP8 parameters); hint: distributed_optimizer = true "
            "under [parallel], or fp8_param_gather = false",
        ],
    )


def test_mixed_precision_recipe_fills_what_the_spec_leaves_out() -> None:
    check(
        {"precision": {"mixed": "bf16_with_fp8_current_scaling_mixed"}, "launch": CUDA, "model": TE},
        [
            "spec.toml:17: $.precision.fp8_param_gather = true needs parallel.distributed_optimizer = true "
            "(the distributed optimizer all-gathers the FP8 parameters); hint: distributed_optimizer = true "
            "under [parallel], or fp8_param_gather = false"
        ],
    )
    check(
        {
            "precision": {"mixed": "bf16_with_fp8_current_scaling_mixed"},
            "launch": CUDA,
            "model": TE,
            "parallel": {"distributed_optimizer": True},
        },
        [],
    )
