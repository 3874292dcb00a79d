"""Each JAX-interop validation rule, by its exact message."""

from __future__ import annotations

from typing import Any

from tests.compiler.conftest import MemoryFiles, messages, spec_toml

ROPE = {"position_embedding": "rope", "add_bias_linear": False, "normalization": "rmsnorm", "activation": "swiglu"}


def check(tables: dict[str, Any], expected: list[str], files: dict[str, str] | None = None) -> None:
    assert messages(spec_toml(**tables), MemoryFiles(files)) == expected


MAXTEXT_SCHEDULE = {"style": "maxtext", "maxtext": {"kind": "cosine"}}


def test_rule_optax_semantics_needs_adam() -> None:
    check(
        {"optimizer": {"lr": 1e-3, "name": "sgd", "semantics": "optax"}, "scheduler": MAXTEXT_SCHEDULE},
        [
            'spec.toml:17: $.optimizer.semantics = "optax" follows optax.adamw, but optimizer.name = "sgd" (sgd has no '
            'optax semantics here); hint: set name = "adam", or semantics = "megatron"'
        ],
    )


def test_rule_optax_semantics_schedule() -> None:
    check(
        {"optimizer": {"lr": 1e-3, "semantics": "optax"}},
        [
            'spec.toml:16: $.optimizer.semantics = "optax" reads the learning rate from an optax or MaxText schedule, but '
            'scheduler.style = "megatron"; hint: set style = "maxtext" with [scheduler.maxtext], or style = "optax" with '
            "[[scheduler.optax]] pieces (a constant piece for a fixed learning rate)"
        ],
    )


def test_rule_optax_only_settings() -> None:
    check(
        {"optimizer": {"lr": 1e-3, "eps_root": 1e-8}},
        [
            'spec.toml:16: $.optimizer.eps_root = 1e-08 applies to semantics = "optax" only (megatron-core\'s Adam has '
            'no eps_root); hint: set semantics = "optax" under [optimizer], or remove eps_root'
        ],
    )
    check(
        {"optimizer": {"lr": 1e-3, "decay_mask": {"exclude": ["norm"]}}},
        [
            'spec.toml:16: [optimizer.decay_mask] applies to semantics = "optax" only (megatron semantics exclude biases '
            'and 1-D parameters from weight decay); hint: set semantics = "optax" under [optimizer], or remove '
            "[optimizer.decay_mask]"
        ],
    )


def test_rule_decay_mask_applies() -> None:
    optax = {"lr": 1e-3, "semantics": "optax", "decay_mask": {"exclude": ["query"]}}
    [message] = messages(spec_toml(model=ROPE, optimizer=optax, scheduler=MAXTEXT_SCHEDULE))
    assert message.startswith("spec.toml:21: $.optimizer.decay_mask.exclude cannot be applied to this model: ")
    assert "linear_qkv" in message and message.endswith(
        "hint: `bridgec explain` prints the MaxText path of every parameter; adjust the patterns"
    )
    check(
        {
            "model": ROPE,
            "optimizer": {"lr": 1e-3, "semantics": "optax", "decay_mask": {"exclude": ["(("]}},
            "scheduler": MAXTEXT_SCHEDULE,
        },
        [
            "spec.toml:21: $.optimizer.decay_mask.exclude cannot be applied to this model: decay mask: '((' is not a "
            "regular expression (missing ), unterminated subpattern at position 1); hint: `bridgec explain` prints the "
            "MaxText path of every parameter; adjust the patterns"
        ],
    )
    check(
        {
            "model": ROPE,
            "optimizer": {"lr": 1e-3, "semantics": "optax", "decay_mask": {"exclude": ["norm"]}},
            "scheduler": MAXTEXT_SCHEDULE,
        },
        [],
    )


def test_rule_decay_mask_applies_to_moe_routers_and_experts() -> None:
    """Routers and experts have mixtral's MaxText paths (MoeBlock_0/gate, wi_0, wi_1, wo): patterns decide their
    decay, and one that splits an expert's fused wi_0 + wi_1 is refused at compile time."""
    moe = {**ROPE, "num_experts": 4}
    optimizer = {"lr": 1e-3, "semantics": "optax"}
    check(
        {
            "model": moe,
            "optimizer": {**optimizer, "decay_mask": {"exclude": ["norm", "gate"]}},
            "scheduler": MAXTEXT_SCHEDULE,
        },
        [],
    )
    found = messages(
        spec_toml(model=moe, optimizer={**optimizer, "decay_mask": {"exclude": ["wi_1"]}}, scheduler=MAXTEXT_SCHEDULE)
    )
    assert len(found) == 1 and "decoder.layers.0.mlp.experts.0.linear_fc1.weight" in found[0], found
    check({"model": moe, "optimizer": optimizer, "scheduler": MAXTEXT_SCHEDULE}, [])


def test_rule_schedule_style_tables() -> None:
    check(
        {"scheduler": {"style": "maxtext"}},
        [
            'spec.toml:17: $.scheduler.style = "maxtext" needs a [scheduler.maxtext] table; hint: add [scheduler.maxtext] '
            '(kind = "cosine" or "wsd", warmup_steps_fraction, final_fraction)'
        ],
    )
    check(
        {"scheduler": {"style": "optax"}},
        [
            'spec.toml:17: $.scheduler.style = "optax" needs [[scheduler.optax]] pieces; hint: add [[scheduler.optax]] '
            'with kind = "warmup_cosine_decay" (or linear, cosine_decay, constant)'
        ],
    )
    check(
        {"scheduler": {"maxtext": {"kind": "cosine"}, "optax": [{"kind": "constant", "value": 1e-3}]}},
        [
            'spec.toml:17: [scheduler.maxtext] is only read with style = "maxtext", but style = "megatron"; hint: set '
            'style = "maxtext" under [scheduler], or remove [scheduler.maxtext]',
            'spec.toml:18: [[scheduler.optax]] pieces are only read with style = "optax", but style = "megatron"; hint: '
            'set style = "optax" under [scheduler], or remove the [[scheduler.optax]] tables',
        ],
    )
    check(
        {"scheduler": {"style": "maxtext", "warmup_iters": 3, "maxtext": {"kind": "cosine"}}},
        [
            'spec.toml:18: $.scheduler.warmup_iters belongs to style = "megatron", but style = "maxtext" (it would be '
            "ignored); hint: remove warmup_iters, or describe the schedule in the maxtext table"
        ],
    )


def test_rule_maxtext_schedule() -> None:
    wsd = {
        "kind": "wsd",
        "warmup_steps_fraction": 0.6,
        "wsd_decay_steps_fraction": 0.5,
        "final_fraction": 1.5,
        "schedule_steps": 0,
    }
    check(
        {"scheduler": {"style": "maxtext", "maxtext": wsd}},
        [
            "spec.toml:18: $.scheduler.maxtext.final_fraction = 1.5 is not a fraction between 0 and 1; hint: set "
            "final_fraction between 0 and 1",
            "spec.toml:18: $.scheduler.maxtext.schedule_steps = 0 must be at least 1; hint: set schedule_steps >= 1, or "
            "remove it to use train.iters",
            "spec.toml:18: Invalid WSD schedule: warmup_steps_fraction (0.6) + wsd_decay_steps_fraction (0.5) must not "
            "exceed 1.0. Current sum: 1.1 (MaxText's check); hint: lower warmup_steps_fraction or "
            "wsd_decay_steps_fraction",
        ],
    )
    check(
        {"scheduler": {"style": "maxtext", "maxtext": {"kind": "wsd", "variant": "2025"}}},
        [
            'spec.toml:18: $.scheduler.maxtext.variant = "2025": MaxText\'s 2025 schedule has no WSD; hint: use '
            'variant = "2026-01" or "2026-02" for wsd, or kind = "cosine"'
        ],
    )


def test_rule_optax_pieces() -> None:
    pieces = [
        {"kind": "linear", "init_value": 0.0, "alpha": 0.5},
        {
            "kind": "warmup_cosine_decay",
            "init_value": 0.0,
            "peak_value": 1e-3,
            "warmup_steps": 10,
            "decay_steps": 5,
            "boundary": 3,
        },
    ]
    check(
        {"scheduler": {"style": "optax", "optax": pieces}},
        [
            'spec.toml:18: $.scheduler.optax[0] (kind = "linear") needs end_value; hint: set end_value in that '
            "[[scheduler.optax]] table",
            'spec.toml:18: $.scheduler.optax[0] (kind = "linear") needs transition_steps; hint: set transition_steps in '
            "that [[scheduler.optax]] table",
            "spec.toml:18: $.scheduler.optax[0] needs a boundary: the update at which piece 1 takes over; hint: set "
            "boundary = <update count> in that table",
            'spec.toml:21: $.scheduler.optax[0].alpha is not used by kind = "linear"; hint: remove alpha, or use a kind '
            "that takes it",
            "spec.toml:27: $.scheduler.optax[1].decay_steps = 5 must exceed warmup_steps = 10 (optax counts the warmup "
            "inside decay_steps); hint: set decay_steps above 10",
            "spec.toml:28: $.scheduler.optax[1].boundary is set, but it is the last piece (nothing takes over); hint: "
            "remove boundary from the last piece, or add the piece that follows",
        ],
    )
    boundaries = [
        {"kind": "constant", "value": 0.0, "boundary": 5},
        {"kind": "constant", "value": 1.0, "boundary": 5},
        {"kind": "cosine_decay", "init_value": 1.0, "decay_steps": 0},
    ]
    check(
        {"scheduler": {"style": "optax", "optax": boundaries}},
        [
            "spec.toml:25: $.scheduler.optax[1].boundary = 5 must be greater than the previous boundary (5); hint: "
            "boundaries increase from piece to piece",
            "spec.toml:29: $.scheduler.optax[2].decay_steps = 0 must be at least 1; hint: set decay_steps >= 1",
        ],
    )


def test_rule_maxtext_loss() -> None:
    check(
        {"loss": {"z_loss_multiplier": -1.0, "reduction": "per_microbatch"}, "model": {"logits_multiplier": 0.0}},
        [
            "spec.toml:9: $.model.logits_multiplier = 0.0 must be positive; hint: set logits_multiplier > 0 (1.0 leaves "
            "the logits as they are)",
            "spec.toml:18: $.loss.z_loss_multiplier = -1.0 must not be negative; hint: set z_loss_multiplier >= 0 "
            "(MaxText uses 0 or about 1e-4)",
            "spec.toml:19: MaxText's loss (loss.z_loss_multiplier or model.logits_multiplier) is token-weighted across "
            'gradient accumulation, but loss.reduction = "per_microbatch"; hint: set reduction = "per_token" under '
            "[loss]",
        ],
    )
    check(
        {"loss": {"z_loss_multiplier": 1e-4}, "hooks": {"file": "h.py", "loss": "f"}},
        [
            "spec.toml:20: hooks.loss replaces the loss, so loss.z_loss_multiplier and model.logits_multiplier would be "
            "ignored; hint: apply them in your code and remove them from the spec, or remove hooks.loss"
        ],
        files={"h.py": "def f(loss_mask, output_tensor):\n    pass\n"},
    )


def test_rule_gelu_approximation() -> None:
    check(
        {"model": {"activation": "swiglu", "gelu_approximation": "tanh"}},
        [
            'spec.toml:10: $.model.gelu_approximation = "tanh" applies to gelu and geglu, but model.activation = '
            '"swiglu"; hint: remove gelu_approximation, or use activation = "gelu" or "geglu"'
        ],
    )


def test_rule_embedding_multiplier() -> None:
    check(
        {"model": {"embedding_multiplier": 0.0}},
        [
            "spec.toml:9: $.model.embedding_multiplier = 0.0 must be positive; hint: set embedding_multiplier > 0 "
            "(1.0 leaves the embeddings as they are; Gemma: sqrt(hidden_size))"
        ],
    )


def test_zero_centered_norm_is_valid_on_the_local_path() -> None:
    check({"model": {"norm_zero_centered": True}}, [])


def test_mesh_is_resolved_before_the_layout_rules() -> None:
    mesh = {"mesh": {"data": -1, "tensor": 4}}
    check(
        {"launch": {"procs_per_node": 8}, "parallel": mesh, "model": {"num_attention_heads": 6, "hidden_size": 60}},
        [
            "spec.toml:6: $.model.num_attention_heads = 6 is not divisible by parallel.tensor = 4 (each tensor-parallel "
            "rank needs whole heads); hint: tensor = 2 or 3, or 8 heads; with a mesh, parallel.tensor is the mesh's "
            "tensor x tensor_sequence: change it there"
        ],
    )
    check(
        {"launch": {"procs_per_node": 8}, "parallel": {"mesh": {"data": -1, "diloco": 2}}},
        [
            "spec.toml:19: mesh axis diloco = 2 has no Megatron counterpart (DiLoCo's outer optimizer over replicas); "
            "hint: set diloco to 1 (or leave it out) and give those devices to data, fsdp, tensor or stage"
        ],
    )
    check(
        {"parallel": {"dcn_mesh": {"data": -1}}},
        [
            "spec.toml:17: [parallel] dcn_mesh splits a mesh across nodes, but there is no mesh; hint: add mesh = "
            "{ ... } under [parallel], or remove dcn_mesh"
        ],
    )


def test_rule_init_checkpoint_model() -> None:
    checkpoint = {"checkpoint": {"format": "orbax", "path": "ck"}}
    check(
        {
            "init": checkpoint,
            "model": {
                "num_experts": 2,
                "add_bias_linear": False,
                "normalization": "rmsnorm",
                "position_embedding": "rope",
                "activation": "swiglu",
            },
        },
        [],
        files={"ck": ""},
    )
    # An MoE model takes mixtral's checkpoint: the top k router logits, then a softmax over those k.
    check(
        {
            "init": checkpoint,
            "model": {
                "num_experts": 4,
                "moe_router_topk": 1,
                "moe_router_pre_softmax": True,
                "add_bias_linear": False,
                "normalization": "rmsnorm",
                "position_embedding": "rope",
                "activation": "swiglu",
            },
        },
        [
            'spec.toml:10: [init.checkpoint] layout = "maxtext" holds a MaxText llama2/mistral/qwen3/mixtral/gemma '
            "decoder, which needs model moe_router_topk > 1 (mixtral's top-1 weight is 1; megatron-core's top-1 "
            "routing weighs by the softmax over every expert); hint: set moe_router_topk > 1 (mixtral's top-1 weight "
            "is 1; megatron-core's top-1 routing weighs by the softmax over every expert) under [model] to match the "
            "checkpoint",
            'spec.toml:11: [init.checkpoint] layout = "maxtext" holds a MaxText llama2/mistral/qwen3/mixtral/gemma '
            "decoder, which needs model moe_router_pre_softmax = false (mixtral: softmax over the top k router "
            "logits); hint: set moe_router_pre_softmax = false (mixtral: softmax over the top k router logits) under "
            "[model] to match the checkpoint",
        ],
        files={"ck": ""},
    )
    rmsnorm = messages(spec_toml(init=checkpoint, model={"normalization": "rmsnorm"}), MemoryFiles({"ck": ""}))
    assert [m.split(" which needs model ")[1].split(";")[0] for m in rmsnorm] == [
        'activation = "swiglu" (or "geglu")',
        "add_bias_linear = false",
        'position_embedding = "rope"',
    ]


def test_rule_init_checkpoint_model_gpt3() -> None:
    """A LayerNorm model reads a MaxText gpt3 checkpoint, whose LayerNorm applies 1 + scale."""
    checkpoint = {"checkpoint": {"format": "orbax", "path": "ck"}}
    found = messages(spec_toml(init=checkpoint, model={"activation": "swiglu"}), MemoryFiles({"ck": ""}))
    assert [m.split(":", 2)[2] for m in found] == [
        ' [init.checkpoint] layout = "maxtext" with a LayerNorm model holds a MaxText gpt3 decoder (LayerNorm with '
        'biases, applied as 1 + scale), which needs model activation = "gelu"; hint: set activation = "gelu" '
        "under [model] to match the checkpoint",
        ' [init.checkpoint] layout = "maxtext" with a LayerNorm model holds a MaxText gpt3 decoder (LayerNorm with '
        "biases, applied as 1 + scale), which needs model norm_zero_centered = true; hint: set "
        "norm_zero_centered = true under [model] to match the checkpoint",
    ]
    fitting = {"norm_zero_centered": True, "gelu_approximation": "tanh"}
    assert messages(spec_toml(init=checkpoint, model=fitting), MemoryFiles({"ck": ""})) == []


def test_rule_init_checkpoint_model_huggingface() -> None:
    checkpoint = {"checkpoint": {"format": "huggingface", "path": "hf"}}
    found = messages(spec_toml(init=checkpoint), MemoryFiles({"hf": ""}))
    assert found[0] == (
        'spec.toml:17: [init.checkpoint] format = "huggingface" loads a Llama-family decoder (Llama, Mistral, Qwen2, '
        'Qwen3, Qwen3-MoE), which needs model activation = "swiglu" (or "geglu"); hint: set activation = "swiglu" (or "geglu") '
        "under [model] to match the checkpoint"
    )


def test_rule_huggingface_checkpoint_keys() -> None:
    check(
        {
            "init": {"checkpoint": {"format": "huggingface", "path": "hf", "rope_layout": "interleaved"}},
            "model": {
                "add_bias_linear": False,
                "normalization": "rmsnorm",
                "position_embedding": "rope",
                "activation": "swiglu",
            },
        },
        [
            'spec.toml:21: $.init.checkpoint.rope_layout = "interleaved" describes an Orbax checkpoint; '
            'format = "huggingface" reads weights only, in Hugging Face\'s layout; hint: remove rope_layout from '
            "[init.checkpoint]"
        ],
        files={"hf": ""},
    )


def test_rule_rope_scaling_needs_rope() -> None:
    check(
        {"model": {"rope_scaling_factor": 8.0}},
        [
            'spec.toml:9: $.model.rope_scaling_factor scales RoPE frequencies, but position_embedding = "learned"; '
            'hint: set position_embedding = "rope", or remove rope_scaling_factor'
        ],
    )
    check(
        {"model": {"rope_scaling_factor": 0.0, "position_embedding": "rope"}},
        [
            "spec.toml:9: $.model.rope_scaling_factor = 0.0 must be > 0; hint: Llama 3.1 and 3.2 use 8.0 or 32.0 "
            "(config.json's rope_scaling.factor)"
        ],
    )


def test_rule_qkv_bias_needs_no_linear_bias() -> None:
    check(
        {"model": {"add_qkv_bias": True}},
        [
            "spec.toml:9: $.model.add_qkv_bias = true changes nothing: add_bias_linear = true already gives "
            "linear_qkv a bias; hint: remove add_qkv_bias, or set add_bias_linear = false (Qwen2: biases on q, k, v "
            "only)"
        ],
    )
