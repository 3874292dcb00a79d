"""explain: parameter counts equal a real megatron-core GPTModel's; the rank table equals megatron's rank groups."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import attrs
import pytest

from bridgec.compiler.explain import explain_text, flops, memory, parameter_counts, rank_layout, trainable_parameters
from bridgec.compiler.load import load
from bridgec.compiler.lower import Target, lower
from bridgec.compiler.render import render
from bridgec.compiler.spec import Peft, Spec
from tests.compiler.conftest import spec_toml

MODELS = {
    "gpt2": {},
    "llama": {
        "normalization": "rmsnorm",
        "activation": "swiglu",
        "position_embedding": "rope",
        "tie_embeddings": False,
        "add_bias_linear": False,
        "num_query_groups": 2,
        "ffn_hidden_size": 96,
    },
    "gemma": {
        "normalization": "rmsnorm",
        "activation": "geglu",
        "position_embedding": "rope",
        "num_query_groups": 1,
        "head_dim": 32,
        "add_bias_linear": False,
    },
    "qwen3": {
        "normalization": "rmsnorm",
        "activation": "swiglu",
        "position_embedding": "rope",
        "qk_layernorm": True,
        "add_bias_linear": False,
        "vocab_size": 100,
    },
    "moe": {"num_experts": 4, "add_bias_linear": False},
}


def _spec(model: dict) -> Spec:
    result = load(spec_toml(model=model), "spec.toml")
    assert result.spec is not None, result.diagnostics
    return result.spec


@pytest.mark.parametrize("name", sorted(MODELS))
def test_parameter_count_equals_megatrons(name: str, megatron_world1: None, tmp_path: Path) -> None:
    spec = _spec(MODELS[name])
    script = tmp_path / f"run_{name}.py"
    script.write_text(render(lower(spec, Target(spec_sha256="0" * 64, spec_path="spec.toml", output_name="run.py"))))
    # Build the model the generated script builds, with its own model_provider (importing it runs no main()).
    module_spec = importlib.util.spec_from_file_location(f"compiled_{name}", script)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    model = module.model_provider(True, True)
    assert parameter_counts(spec).total == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_decay_mask_names_are_megatrons(name: str, megatron_world1: None, tmp_path: Path) -> None:
    """The names the compile-time decay-mask check goes through are the real model's global names (MoE included)."""
    from bridgec.compiler.validate_interop import no_decay_table

    spec = _spec(MODELS[name])
    script = tmp_path / f"run_{name}.py"
    script.write_text(render(lower(spec, Target(spec_sha256="0" * 64, spec_path="spec.toml", output_name="run.py"))))
    module_spec = importlib.util.spec_from_file_location(f"compiled_names_{name}", script)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    model = module.model_provider(True, True)
    # One rank holds every layer and expert: the global names are the local ones, experts numbered globally.
    real = [local.replace(".experts.local_experts.", ".experts.") for local, _ in model.named_parameters()]
    assert [decision.name for decision in no_decay_table(spec)] == real


def test_flops_and_memory_are_positive_and_consistent() -> None:
    spec = _spec(MODELS["llama"])
    f = flops(spec)
    assert f.train_per_token == 3 * f.forward_per_token > 0
    assert memory(spec).total > memory(spec).weights > 0


def test_local_attention_memory_counts_its_scores_and_says_so() -> None:
    """The local layers' unfused attention keeps 5 x heads x s^2 per sequence and layer (Korthikanti et al.)."""
    local = _spec(MODELS["gpt2"])
    fused = attrs.evolve(local, model=attrs.evolve(local.model, transformer_impl="transformer_engine"))
    m = local.model
    scores = 5 * m.num_attention_heads * m.seq_length**2 * local.batch.micro_batch_size * m.num_layers
    in_flight = memory(local).in_flight_microbatches
    assert memory(local).activations - memory(fused).activations == pytest.approx(scores * in_flight * 2)  # fp32
    text = explain_text(local)
    assert "unfused local attention keeping its scores" in text and "flash" not in text


def test_rank_layout_matches_megatrons_rank_generator() -> None:
    from megatron.core.parallel_state import RankGenerator

    result = load(
        spec_toml(
            launch={"nodes": 2, "procs_per_node": 8},
            parallel={"tensor": 2, "pipeline": 2},
            model={"num_layers": 4},
            batch={"global_batch_size": 16, "micro_batch_size": 1},
        ),
        "spec.toml",
    )
    spec = result.spec
    assert spec is not None
    rows = rank_layout(spec)
    generator = RankGenerator(tp=2, ep=1, dp=4, pp=2, cp=1, order="tp-cp-ep-dp-pp")
    for axis, field in (("tp", "tensor"), ("dp", "data"), ("pp", "pipeline")):
        for group in generator.get_ranks(axis):
            coordinates = {getattr(rows[rank], field) for rank in group}
            assert coordinates == set(range(len(group)))  # a group spans its axis once
            others = {
                tuple(getattr(rows[rank], f) for f in ("tensor", "data", "pipeline") if f != field) for rank in group
            }
            assert len(others) == 1  # and nothing else changes inside it


def test_peft_trainable_parameters_are_the_adapters() -> None:
    """A [peft] spec: the adapters' parameters, counted by hand: hidden 64, 4 heads of 16, ffn 96, 2 layers."""
    llama = _spec(MODELS["llama"])
    peft = Peft(method="lora", target_modules=("linear_q", "linear_fc2"), rank=4)
    lora_spec = attrs.evolve(llama, peft=peft)
    # linear_q: A 4 x 64 + B 64 x 4; linear_fc2: A 4 x 96 + B 64 x 4; per layer, 2 layers.
    assert trainable_parameters(lora_spec) == 2 * ((4 * 64 + 64 * 4) + (4 * 96 + 64 * 4)) == 2304
    # DoRA adds a magnitude per output row: 64 for each.
    assert trainable_parameters(attrs.evolve(llama, peft=attrs.evolve(peft, method="dora"))) == 2304 + 2 * 2 * 64
    assert trainable_parameters(llama) is None
    text = explain_text(lora_spec)
    assert "  trainable: lora adapters of rank 4 on linear_q, linear_fc2 2,304 (" in text


def _with(spec: Spec, **tables: object) -> Spec:
    return attrs.evolve(spec, **{name: attrs.evolve(getattr(spec, name), **keys) for name, keys in tables.items()})


def test_activation_memory_follows_recompute_offload_and_sequence_parallelism() -> None:
    from bridgec.compiler.explain import activation_bytes

    base = _spec(MODELS["gpt2"])
    m = base.model
    none = memory(base).activations
    selective = memory(_with(base, recompute={"granularity": "selective"})).activations
    # Selective core_attn drops the local attention's scores of every layer, and recomputes one layer's.
    scores = 5 * m.num_attention_heads * m.seq_length**2 * base.batch.micro_batch_size * 2  # fp32
    in_flight = memory(base).in_flight_microbatches
    assert none - selective == pytest.approx(scores * (m.num_layers * in_flight - 1))
    full = memory(_with(base, recompute={"granularity": "full", "method": "uniform", "num_layers": 1})).activations
    assert full < selective < none
    block_all = _with(base, recompute={"granularity": "full", "method": "block", "num_layers": m.num_layers})
    assert activation_bytes(block_all, block_all.recompute) < none
    offloaded = _with(base, launch={"device": "cuda"}, offload={"activations": True, "num_layers": 1})
    assert memory(offloaded).activations < none
    tp2 = _with(base, launch={"procs_per_node": 2}, parallel={"tensor": 2})
    sp = _with(tp2, parallel={"tensor": 2, "sequence_parallel": True})
    assert memory(sp).activations < memory(tp2).activations  # the norms' and dropouts' share is split too
    text = explain_text(_with(base, recompute={"granularity": "selective", "modules": ("core_attn", "mlp")}))
    assert "selective recomputation of core_attn+mlp" in text
    assert "activations by recompute choice: none " in text and "| full uniform 1 " in text


def test_optimizer_offload_and_distributed_optimizer_leave_the_gpu() -> None:
    base = _spec(MODELS["gpt2"])
    sharded = _with(base, launch={"procs_per_node": 4}, parallel={"distributed_optimizer": True})
    assert memory(sharded).optimizer == pytest.approx(memory(base).optimizer / 4)
    offloaded = _with(
        sharded, launch={"procs_per_node": 4, "device": "cuda"}, offload={"optimizer": True, "optimizer_fraction": 0.5}
    )
    assert memory(offloaded).optimizer == pytest.approx(memory(sharded).optimizer / 2)
    assert "0.5 of it in host memory" in explain_text(offloaded)


def test_a_pipelined_distillation_puts_the_whole_teacher_on_the_last_stage() -> None:
    """tests/golden/good/distill-pipeline: tensor 2 x pipeline 2, a 3-layer teacher (hidden 128, 8 heads in 2
    query groups of head 16, swiglu ffn 512, vocab 128, untied), counted by hand per tensor rank:
    per layer qkv 192 x 128 / 2 + proj 128 x 128 / 2 + fc1 1024 x 128 / 2 + fc2 128 x 512 / 2 + 2 norms of 128
    = 119,040; 3 layers + embedding 8,192 + output 8,192 + final norm 128 = 373,632."""
    folder = Path(__file__).resolve().parents[1] / "golden" / "good" / "distill-pipeline"
    result = load((folder / "spec.toml").read_text(), "spec.toml")
    assert result.spec is not None, result.diagnostics
    text = explain_text(result.spec)
    assert text.endswith(
        "Distillation teacher (frozen, forward only: no gradients, no optimizer state)\n"
        "  parameters 746,368 (746.37K); on each rank that holds it 373,632\n"
        "  held by the last pipeline stage's ranks 2, 3, whole (the other stages load it at the start, then drop it)\n"
        "  weights    1.43 MiB per holding rank (4 bytes/param), on top of the estimate above\n"
    ), text
    unpipelined = attrs.evolve(
        result.spec, parallel=attrs.evolve(result.spec.parallel, pipeline=1, virtual_pipeline=None)
    )
    assert "  held by every rank\n" in explain_text(unpipelined)


def test_explain_lists_the_distillation_layer_pairs() -> None:
    """tests/golden/good/distill-layers: its two [[distill.layers]] entries close the teacher's section."""
    folder = Path(__file__).resolve().parents[1] / "golden" / "good" / "distill-layers"
    result = load((folder / "spec.toml").read_text(), "spec.toml")
    assert result.spec is not None, result.diagnostics
    assert explain_text(result.spec).endswith(
        "on top of the estimate above\n"
        "  layer pairs (output hidden states; each loss logged as 'layer STUDENT-TEACHER LOSS loss')\n"
        "    student layer 3 - teacher layer 2: cosine x 1\n"
        "    student layer 3 - teacher layer 2: mse x 0.1\n"
    )
