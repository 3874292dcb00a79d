"""bridgec import maxtext: MaxText configs import to specs that load and compile.

Each test runs on the project's fixtures and, when they are beside the checkout,
on MaxText's own files in ../shared/maxtext (tests/compiler/maxtext_configs.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bridgec.compiler.compile import compile_spec
from bridgec.compiler.load import load
from bridgec.compiler.maxtext import ImportResult, import_maxtext, model_file_name
from bridgec.compiler.spec import Spec
from tests.compiler.maxtext_configs import FOLDERS, ConfigFolder, model_cases


@pytest.fixture(params=FOLDERS)
def configs(request: pytest.FixtureRequest) -> ConfigFolder:
    return request.param


def run(
    configs: ConfigFolder, model: str | None, *overrides: str, devices: int = 8, base: str | None = None, **kwargs
) -> ImportResult:
    text = configs.model_text(model) if model else None
    return import_maxtext(
        configs.base_text() if base is None else base,
        text,
        list(overrides),
        devices=devices,
        base_name="base.yml",
        model_name=f"models/{model}.yml" if model else None,
        **kwargs,
    )


def imported(configs: ConfigFolder, model: str | None, *overrides: str, **kwargs) -> tuple[str, Spec]:
    result = run(configs, model, *overrides, **kwargs)
    assert result.errors == (), result.errors
    assert result.toml is not None
    loaded = load(result.toml, "spec.toml")
    assert loaded.diagnostics == (), loaded.diagnostics
    assert loaded.spec is not None
    return result.toml, loaded.spec


def errors(configs: ConfigFolder, model: str | None, *overrides: str, **kwargs) -> list[tuple[str, str, str | None]]:
    result = run(configs, model, *overrides, **kwargs)
    assert result.toml is None
    return [(e.key, e.message, e.hint) for e in result.errors]


# name -> layers, hidden, heads, kv heads, head_dim, ffn, vocab, normalization, activation, gelu approximation,
#         positions, rotary_base, tied, logits_multiplier, qk_layernorm, biases, zero-centred norm, experts
EXPECTED = {
    "gemma-2b": (
        18,
        2048,
        8,
        1,
        256,
        16384,
        256128,
        "rmsnorm",
        "geglu",
        "tanh",
        "rope",
        10000,
        True,
        1 / 2048**0.5,
        False,
        False,
        False,
        None,
    ),
    "gpt3-52k": (
        1,
        16,
        2,
        2,
        8,
        64,
        1024,
        "layernorm",
        "gelu",
        "tanh",
        "learned",
        10000,
        True,
        1.0,
        False,
        True,
        True,
        None,
    ),
    "gpt3-6b": (
        48,
        3072,
        12,
        12,
        256,
        12288,
        32768,
        "layernorm",
        "gelu",
        "tanh",
        "learned",
        10000,
        True,
        1.0,
        False,
        True,
        True,
        None,
    ),
    "llama2-70b": (
        80,
        8192,
        64,
        8,
        128,
        28672,
        32000,
        "rmsnorm",
        "swiglu",
        "none",
        "rope",
        10000,
        False,
        1.0,
        False,
        False,
        False,
        None,
    ),
    "llama2-7b": (
        32,
        4096,
        32,
        32,
        128,
        11008,
        32000,
        "rmsnorm",
        "swiglu",
        "none",
        "rope",
        10000,
        False,
        1.0,
        False,
        False,
        False,
        None,
    ),
    "llama3-8b": (
        32,
        4096,
        32,
        8,
        128,
        14336,
        128256,
        "rmsnorm",
        "swiglu",
        "none",
        "rope",
        500000,
        False,
        1.0,
        False,
        False,
        False,
        None,
    ),
    "llama3.1-8b": (
        32,
        4096,
        32,
        8,
        128,
        14336,
        128256,
        "rmsnorm",
        "swiglu",
        "none",
        "rope",
        500000,
        False,
        1.0,
        False,
        False,
        False,
        None,
    ),
    "mistral-7b": (
        32,
        4096,
        32,
        8,
        128,
        14336,
        32000,
        "rmsnorm",
        "swiglu",
        "none",
        "rope",
        1000000,
        False,
        1.0,
        False,
        False,
        False,
        None,
    ),
    "mixtral-8x7b": (
        32,
        4096,
        32,
        8,
        128,
        14336,
        32000,
        "rmsnorm",
        "swiglu",
        "none",
        "rope",
        1000000,
        False,
        1.0,
        False,
        False,
        False,
        8,
    ),
    "qwen3-0.6b": (
        28,
        1024,
        16,
        8,
        128,
        3072,
        151936,
        "rmsnorm",
        "swiglu",
        "none",
        "rope",
        1000000,
        True,
        1.0,
        True,
        False,
        False,
        None,
    ),
    "qwen3-8b": (
        36,
        4096,
        32,
        8,
        128,
        12288,
        151936,
        "rmsnorm",
        "swiglu",
        "none",
        "rope",
        1000000,
        False,
        1.0,
        True,
        False,
        False,
        None,
    ),
}


def test_every_model_file_has_its_expected_values(configs: ConfigFolder) -> None:
    if configs.is_maxtext_s_own:
        assert configs.models() == sorted(EXPECTED)  # a new MaxText model file needs its row
    else:
        assert set(configs.models()) <= set(EXPECTED)


@pytest.mark.parametrize(("configs", "model"), model_cases())
def test_model_file_imports_to_a_spec_that_loads(configs: ConfigFolder, model: str) -> None:
    _, spec = imported(configs, model)
    m = spec.model
    got = (
        m.num_layers,
        m.hidden_size,
        m.num_attention_heads,
        m.num_query_groups,
        m.head_dim,
        m.ffn_hidden_size,
        m.vocab_size,
        m.normalization,
        m.activation,
        m.gelu_approximation,
        m.position_embedding,
        m.rotary_base,
        m.tie_embeddings,
        m.logits_multiplier,
        m.qk_layernorm,
        m.add_bias_linear,
        m.norm_zero_centered,
        m.num_experts,
    )
    assert got == pytest.approx(EXPECTED[model])
    assert m.dropout == 0.0 and m.make_vocab_size_divisible_by == 1
    assert spec.optimizer.semantics == "optax" and spec.scheduler.style == "maxtext"
    assert spec.loss.reduction == "per_token"


@pytest.mark.parametrize(
    ("configs", "model"), model_cases(["llama2-7b", "gemma-2b", "gpt3-52k", "qwen3-0.6b", "mixtral-8x7b"])
)
def test_imported_spec_compiles(configs: ConfigFolder, model: str, tmp_path: Path) -> None:
    toml, _ = imported(configs, model, "steps=10", "max_target_length=64")
    spec_path = tmp_path / "spec.toml"
    spec_path.write_text(toml)

    class Disk:
        def exists(self, path: Path) -> bool:
            return Path(path).exists()

        def read_text(self, path: Path) -> str:
            return Path(path).read_text()

    result = compile_spec(
        toml, spec_name="spec.toml", spec_path=spec_path, output_path=tmp_path / "run.py", files=Disk()
    )
    assert result.source is not None, [d.message for d in result.diagnostics]


@pytest.mark.parametrize(("configs", "model"), model_cases())
def test_query_scaling_follows_the_decoder_block(configs: ConfigFolder, model: str) -> None:
    """llama2/mistral/mixtral/gemma fold 1/sqrt(head_dim) into the query kernel's init; qwen3 and gpt3 scale scores."""
    _, spec = imported(configs, model)
    folded = model.startswith(("llama", "mistral", "mixtral", "gemma"))
    assert spec.model.query_scaling == ("initial_weights" if folded else "attention")


def test_query_scaling_with_qk_norm_in_a_llama_block_is_none(configs: ConfigFolder) -> None:
    _, spec = imported(configs, "llama3-8b", "use_qk_norm=true")
    assert (spec.model.qk_layernorm, spec.model.query_scaling) == (True, "none")


def test_optimizer_schedule_loss_and_batch_of_the_base_config(configs: ConfigFolder) -> None:
    _, spec = imported(
        configs,
        "llama2-7b",
        "steps=1000",
        "z_loss_multiplier=1e-4",
        "gradient_accumulation_steps=4",
        "adam_eps_root=1e-8",
        "learning_rate_schedule_steps=800",
    )
    opt = spec.optimizer
    assert (opt.name, opt.lr, opt.betas, opt.eps, opt.eps_root, opt.weight_decay, opt.clip_grad) == (
        "adam",
        3e-5,
        (0.9, 0.95),
        1e-8,
        1e-8,
        0.1,
        1.0,
    )
    schedule = spec.scheduler.maxtext
    assert (
        schedule.kind,
        schedule.warmup_steps_fraction,
        schedule.final_fraction,
        schedule.schedule_steps,
        schedule.variant,
    ) == ("cosine", 0.1, 0.1, 800, "2026-02")
    assert spec.loss.z_loss_multiplier == 1e-4  # "1e-4" is a float, as OmegaConf reads it
    # per_device_batch_size 12 x 8 devices x 4 accumulation steps; DP = 8 (fsdp = -1 over 8 devices)
    assert (spec.batch.global_batch_size, spec.batch.micro_batch_size) == (384, 12)
    assert spec.parallel.mesh == {"fsdp": -1} and spec.parallel.dcn_mesh is None
    assert (spec.launch.nodes, spec.launch.procs_per_node) == (1, 8)
    assert spec.train.iters == 1000 and spec.train.on_nonfinite == "stop"
    assert spec.checkpoint.dir == "checkpoints" and spec.checkpoint.save_interval == 10000 and spec.checkpoint.resume


def test_merge_conflict_between_model_file_and_overrides_is_maxtext_s_error(configs: ConfigFolder) -> None:
    [(key, message, hint)] = errors(configs, "llama2-7b", "base_emb_dim=1024")
    assert key == "base_emb_dim"
    assert message == (
        "Keys ['base_emb_dim'] are overridden by both model config and CLI/kwargs with different "
        "values. This is not allowed, unless setting `override_model_config=True`."
    )
    assert "override_model_config=true" in hint
    _, spec = imported(configs, "llama2-7b", "base_emb_dim=1024", "override_model_config=true")
    assert spec.model.hidden_size == 1024
    # the same value is no conflict (MaxText compares values)
    _, spec = imported(configs, "llama2-7b", "base_emb_dim=4096")
    assert spec.model.hidden_size == 4096


def test_overrides_beat_the_base_and_the_model_file_beats_the_base(configs: ConfigFolder) -> None:
    _, spec = imported(configs, "mistral-7b", "max_target_length=4096")
    assert spec.model.seq_length == 4096  # command line over base.yml
    assert spec.model.rotary_base == 1000000  # mistral-7b.yml over base.yml's 10000


def test_global_parameter_scale(configs: ConfigFolder) -> None:
    toml, spec = imported(configs, None, "global_parameter_scale=2")
    # MaxText's get_individual_scales(2): heads and mlp double, emb and layers stay.
    m = spec.model
    assert (m.hidden_size, m.num_attention_heads, m.num_query_groups, m.ffn_hidden_size, m.num_layers) == (
        2048,
        32,
        32,
        14336,
        16,
    )
    assert "base_num_query_heads 16 (base.yml) x 2^1 (global_parameter_scale 2)" in toml
    _, spec = imported(configs, None, "global_parameter_scale=8")
    assert (spec.model.hidden_size, spec.model.num_attention_heads, spec.model.num_layers) == (4096, 32, 32)
    [(key, message, _)] = errors(configs, None, "global_parameter_scale=3")
    assert key == "global_parameter_scale" and message.startswith("Global parameter scale should be a power of two.")


def test_fractional_per_device_batch_size(configs: ConfigFolder) -> None:
    [(key, message, hint)] = errors(configs, "llama2-7b", "per_device_batch_size=0.25")
    assert key == "per_device_batch_size"
    assert message == (
        "per_device_batch_size 0.25 on 8 devices gives 2 sequences per accumulation step for 8 "
        "data-parallel ranks; megatron-core's micro batch is a whole number of sequences (>= 1) per rank"
    )
    assert hint.startswith("set per_device_batch_size to a multiple of 1 (e.g. per_device_batch_size=1)")
    # With tensor parallelism the same fraction has a whole micro batch: 0.5 x 8 = 4 sequences over DP = 4.
    _, spec = imported(configs, "llama2-7b", "per_device_batch_size=0.5", "ici_tensor_parallelism=2")
    assert (spec.batch.global_batch_size, spec.batch.micro_batch_size) == (4, 1)
    assert spec.parallel.mesh == {"fsdp": -1, "tensor": 2}


def test_pipeline_stages_become_megatron_microbatches_and_virtual_stages(configs: ConfigFolder) -> None:
    _, spec = imported(configs, "llama2-7b", "ici_pipeline_parallelism=2", "ici_tensor_parallelism=2")
    assert spec.parallel.mesh == {"stage": 2, "fsdp": -1, "tensor": 2}
    assert spec.parallel.virtual_pipeline == 16  # 32 layers / (2 stages x 1 layer per stage)
    # 96 sequences / (DP 2 x num_pipeline_microbatches 2 (= stages))
    assert (spec.batch.global_batch_size, spec.batch.micro_batch_size) == (96, 24)


def test_nodes_and_dcn(configs: ConfigFolder) -> None:
    _, spec = imported(configs, "llama2-7b", "ici_fsdp_parallelism=4", "ici_tensor_parallelism=2", devices=16, nodes=2)
    assert (spec.launch.nodes, spec.launch.procs_per_node) == (2, 8)
    assert spec.parallel.mesh == {"fsdp": 4, "tensor": 2} and spec.parallel.dcn_mesh is None  # MaxText's default
    _, spec = imported(
        configs, "llama2-7b", "dcn_pipeline_parallelism=2", "dcn_data_parallelism=1", devices=16, nodes=2
    )
    assert spec.parallel.dcn_mesh == {"stage": 2}
    [(key, message, _)] = errors(configs, "llama2-7b", "ici_data_parallelism=-1")
    assert key == "ici_fsdp_parallelism"
    assert "-1 on more than one axis (data, fsdp)" in message


def test_axes_without_counterpart_are_refused_by_their_maxtext_key(configs: ConfigFolder) -> None:
    [(key, message, _)] = errors(configs, "llama2-7b", "ici_fsdp_transpose_parallelism=2", "ici_fsdp_parallelism=4")
    assert key == "ici_fsdp_transpose_parallelism"
    assert "fsdp_transpose = 2 has no Megatron counterpart" in message


def test_mixtral_maps_to_megatron_moe_and_refuses_what_it_cannot_express(configs: ConfigFolder) -> None:
    toml, spec = imported(configs, "mixtral-8x7b")
    assert (spec.model.num_experts, spec.model.moe_router_topk) == (8, 2)
    assert "MoE: megatron-core's defaults match MaxText's mixtral routing" in toml
    [(key, message, _)] = errors(configs, "mixtral-8x7b", "load_balance_loss_weight=0.01")
    assert key == "load_balance_loss_weight"
    assert message == (
        "load_balance_loss_weight = 0.01: bridgec maps MoE with no load-balancing loss (0); "
        "megatron-core's moe_aux_loss_coeff has no spec field"
    )
    [(key, message, _)] = errors(configs, "mixtral-8x7b", "capacity_factor=1.25")
    assert key == "capacity_factor" and "dropless routing" in message
    [(key, message, _)] = errors(configs, "mixtral-8x7b", "num_experts_per_tok=1", "override_model_config=true")
    assert key == "num_experts_per_tok"
    assert message == (
        "num_experts_per_tok = 1: mixtral's softmax over the one chosen logit weighs its expert by 1; "
        "megatron-core's top-1 routing weighs it by the softmax over every expert (moe_router_pre_softmax, which "
        "it requires for top-1)"
    )


def test_dropout_as_maxtext_means_it(configs: ConfigFolder) -> None:
    _, spec = imported(configs, "gemma-2b")  # enable_dropout true (base), dropout_rate 0.0: no dropout
    assert spec.model.dropout == 0.0
    [(key, message, hint)] = errors(configs, None, "dropout_rate=0.1")
    assert key == "dropout_rate" and "There is no faithful counterpart" in message
    assert hint.startswith("set dropout_rate=0.0 or enable_dropout=false")
    _, spec = imported(configs, None, "dropout_rate=0.1", "enable_dropout=false")
    assert spec.model.dropout == 0.0


def test_gates_refuse_with_the_value_that_would_import(configs: ConfigFolder) -> None:
    [(key, message, hint)] = errors(configs, "llama2-7b", "attention_type=local_sliding")
    assert key == "attention_type"
    assert message == (
        "attention_type = 'local_sliding' (the attention variant (local_sliding, chunk, mla, ...)) "
        "has no counterpart in bridgec"
    )
    assert hint == "set attention_type='global' to import"
    assert errors(configs, "gemma-2b", "final_logits_soft_cap=30.0")[0][0] == "final_logits_soft_cap"


def test_unknown_keys_are_errors_with_a_suggestion(configs: ConfigFolder) -> None:
    [(key, message, hint)] = errors(configs, "llama2-7b", "learning_rat=1e-4")
    assert key == "learning_rat"
    assert message == "'learning_rat' (from the command line) is not a MaxText key: base.yml does not define it"
    assert hint == "did you mean learning_rate?"


def test_decay_mask_and_its_path_spelling(configs: ConfigFolder) -> None:
    _, spec = imported(configs, "llama2-7b", "adamw_mask=['.*norm', 'bias']", "scan_layers=false")
    mask = spec.optimizer.decay_mask
    assert (mask.exclude, mask.paths, mask.scan_layers) == ((".*norm", "bias"), "nnx", False)
    _, spec = imported(configs, "llama2-7b", "adamw_mask=['norm']", "pure_nnx=false")
    assert spec.optimizer.decay_mask.paths == "linen"
    [(key, message, _)] = errors(configs, "gemma-2b", "adamw_mask=['norm']")
    assert key == "adamw_mask" and "decoder_block 'gemma': its MaxText parameter paths are not mapped" in message


def test_schedules_wsd_and_the_legacy_variant(configs: ConfigFolder) -> None:
    _, spec = imported(
        configs, "llama2-7b", "lr_schedule_type=wsd", "wsd_decay_steps_fraction=0.2", "wsd_decay_style=cosine"
    )
    schedule = spec.scheduler.maxtext
    assert (schedule.kind, schedule.wsd_decay_steps_fraction, schedule.wsd_decay_style) == ("wsd", 0.2, "cosine")
    legacy_base = configs.base_text().replace("learning_rate_final_fraction:", "cosine_learning_rate_final_fraction:")
    toml, spec = imported(configs, "llama2-7b", base=legacy_base)
    assert spec.scheduler.maxtext.variant == "2025"
    assert "cosine_learning_rate_final_fraction: MaxText before 2026-01" in toml
    _, spec = imported(configs, "llama2-7b", schedule_variant="2026-01")
    assert spec.scheduler.maxtext.variant == "2026-01"


def test_sgd_and_muon(configs: ConfigFolder) -> None:
    _, spec = imported(configs, None, "opt_type=sgd")
    assert (
        spec.optimizer.name,
        spec.optimizer.semantics,
        spec.optimizer.sgd_momentum,
        spec.optimizer.weight_decay,
    ) == ("sgd", "megatron", 0.0, 0.0)
    assert errors(configs, None, "opt_type=muon")[0][:2] == ("opt_type", "opt_type muon has no counterpart in bridgec")


def test_checkpoint_loading_becomes_init_checkpoint(configs: ConfigFolder) -> None:
    _, spec = imported(configs, "llama2-7b", "load_full_state_path=ckpt/1000/items")
    assert spec.init.checkpoint is not None
    assert (spec.init.checkpoint.path, spec.init.checkpoint.optimizer_state) == ("ckpt/1000/items", True)
    both = errors(configs, "llama2-7b", "load_full_state_path=a", "load_parameters_path=b")
    assert both[0][0] == "load_full_state_path"


def _compiles(toml: str, tmp_path: Path) -> list[str]:
    """compile_spec's messages for ``toml`` (empty: it compiled); the files it names exist or not on disk."""
    spec_path = tmp_path / "spec.toml"
    spec_path.write_text(toml)

    class Disk:
        def exists(self, path: Path) -> bool:
            return Path(path).exists()

        def read_text(self, path: Path) -> str:
            return Path(path).read_text()

    result = compile_spec(
        toml, spec_name="spec.toml", spec_path=spec_path, output_path=tmp_path / "run.py", files=Disk()
    )
    if result.source is not None:
        (tmp_path / "run.py").write_text(result.source)
    return [] if result.source is not None else [d.message for d in result.diagnostics]


@pytest.mark.parametrize(
    ("configs", "model"), model_cases(["mistral-7b", "qwen3-0.6b", "mixtral-8x7b", "gemma-2b", "gpt3-52k"])
)
def test_checkpoint_of_each_mapped_block_imports_to_a_spec_that_compiles(
    configs: ConfigFolder, model: str, tmp_path: Path
) -> None:
    (tmp_path / "ckpt").mkdir()
    # gpt3-52k's checkpoint holds 2048 learned positions: the model must have as many.
    length = 2048 if model == "gpt3-52k" else 64
    toml, spec = imported(configs, model, "load_parameters_path=ckpt", "steps=10", f"max_target_length={length}")
    assert spec.init.checkpoint is not None and spec.init.checkpoint.layout == "maxtext"
    assert _compiles(toml, tmp_path) == []
    # The query kernel stays as MaxText trains it: pre-scaled (query_scaling initial_weights), or not pre-scaled
    # because the block scales at run time (qwen3 under use_qk_norm; gpt3, whose model scales scores itself).
    assert 'INIT_QUERY_SCALING = "keep"' in (tmp_path / "run.py").read_text()
    # An expert-parallel rank of an MoE model reads its own experts.
    reads_experts = 'checkpoint["expert_rank"] = built.layout.expert_rank' in (tmp_path / "run.py").read_text()
    assert reads_experts == (spec.model.num_experts is not None)


def test_gemma2_is_refused_naming_what_megatron_core_lacks() -> None:
    configs = model_cases(["gemma-2b"])[0].values[0]
    [(key, message, _)] = errors(configs, "gemma-2b", "decoder_block=gemma2", "override_model_config=true")
    assert key == "decoder_block"
    assert message.startswith(
        "decoder_block 'gemma2' is not mapped: its sandwich norms (post_self_attention_norm and post_ffw_norm on "
        "each branch's output, models/gemma2.py) and its attention logit soft-capping (attn_logits_soft_cap) have "
        "no counterpart in megatron-core 0.16.1"
    )


@pytest.mark.parametrize(
    ("configs", "model", "override", "key", "stores"),
    [
        (*model_cases(["gpt3-52k"])[0].values, "fused_qkv=false", "fused_qkv", "separate query, key and value kernels"),
        (*model_cases(["llama2-7b"])[0].values, "fused_qkv=true", "fused_qkv", "one fused qkv_proj"),
        # The fixtures' base.yml predates fused_mlp: MaxText's own base.yml (the shared folder, skipped without it).
        pytest.param(
            *model_cases(["llama2-7b"])[1].values,
            "fused_mlp=true",
            "fused_mlp",
            "one mlp/wi [emb, activations, mlp]",
            marks=model_cases(["llama2-7b"])[1].marks,
        ),
        (
            *model_cases(["gpt3-52k"])[0].values,
            "max_target_length=64",
            "trainable_position_size",
            "the checkpoint holds 2048 learned positions; megatron-core's model holds max_target_length (64)",
        ),
    ],
)
def test_checkpoint_tree_options_without_a_mapping_are_refused(
    configs: ConfigFolder, model: str, override: str, key: str, stores: str
) -> None:
    """fused_qkv / fused_mlp change the checkpoint's tree; a tree bridgec does not read is refused naming the key."""
    overrides = ("load_parameters_path=ckpt", "override_model_config=true", override)
    found = [e for e in errors(configs, model, *overrides) if e[0] == key]
    assert len(found) == 1 and stores in found[0][1]


def test_every_key_of_the_merged_config_is_in_the_output(configs: ConfigFolder) -> None:
    """Nothing is dropped silently: each MaxText key is named in a mapped value's comment or the closing block."""
    toml, _ = imported(configs, "qwen3-0.6b", "steps=5")
    merged = yaml.safe_load(configs.base_text()) | yaml.safe_load(configs.model_text("qwen3-0.6b"))
    missing = [key for key in merged if not re.search(rf"\b{re.escape(key)}\b", toml)]
    assert missing == []
    assert "NOT REVIEWED" not in toml, "a key of this base.yml has no classification in maxtext_keys.py"


def test_model_file_keys_are_listed_individually_when_ignored(configs: ConfigFolder) -> None:
    toml, _ = imported(configs, "gpt3-52k")
    assert "#   - fused_qkv = true (models/gpt3-52k.yml): ignored, performance" in toml
    assert "#   - logical_axis_rules" not in toml  # gpt3-52k does not set them


def test_output_is_deterministic_and_portable(configs: ConfigFolder) -> None:
    first = run(configs, "llama3-8b", "steps=7").toml
    assert first == run(configs, "llama3-8b", "steps=7").toml
    assert "/work" not in first and not re.search(r"\d{4}-\d\d-\d\dT", first)


def test_model_file_name_follows_model_name(configs: ConfigFolder) -> None:
    assert model_file_name(configs.base_text(), ["model_name=llama2-7b"]) == "llama2-7b"
    assert model_file_name(configs.base_text(), []) is None


def test_devices_must_split_over_nodes(configs: ConfigFolder) -> None:
    [(key, message, _)] = errors(configs, "llama2-7b", devices=12, nodes=8)
    assert message == "12 devices do not split evenly over 8 nodes"


def test_ignored_axes_are_noted_in_the_same_order_in_every_process() -> None:
    """Off-mesh parallelism keys are noted in MaxText's axis order, not a set's (which changes with the hash seed)."""
    program = (
        "import json\n"
        "from bridgec.compiler.maxtext import import_maxtext\n"
        "from tests.compiler.maxtext_configs import FIXTURES\n"
        "overrides = [\"mesh_axes=['data', 'fsdp']\", 'ici_tensor_parallelism=2', 'ici_expert_parallelism=2',\n"
        "             'ici_context_parallelism=2']\n"
        "notes = import_maxtext((FIXTURES / 'base.yml').read_text(), None, overrides, devices=8).notes\n"
        "print(json.dumps([note.split(' = ')[0] for note in notes[:3]]))\n"
    )
    root = Path(__file__).resolve().parents[2]
    notes = {
        subprocess.run(
            [sys.executable, "-c", program],
            cwd=root,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(notes) == 1
    assert json.loads(notes.pop()) == ["ici_context_parallelism", "ici_tensor_parallelism", "ici_expert_parallelism"]


def test_packing_is_document_masking_where_the_layout_allows_it(configs: ConfigFolder) -> None:
    text, spec = imported(configs, "llama2-7b")
    assert spec.data.document_masking is True
    assert (
        "document_masking = true  # packing true (base.yml): positions and attention restart at each document" in text
    )
    assert "packing true: MaxText packs" not in text  # no longer a NEEDS YOUR ACTION note
    _, spec = imported(configs, "llama2-7b", "packing=false")
    assert spec.data.document_masking is False
    # Pipeline stages in the middle read no data: no document masking, and a note says why.
    text, spec = imported(configs, "llama2-7b", "ici_pipeline_parallelism=2", "ici_tensor_parallelism=2")
    assert spec.data.document_masking is False
    assert "packing true: MaxText packs" in text and "document_masking does the same" in " ".join(text.split())
