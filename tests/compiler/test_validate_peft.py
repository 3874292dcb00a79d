"""validate: the [peft] rules (compiler/rules_peft.py), one test per rule with its exact diagnostics.

Specs come from ``spec_toml`` with test_validate.py's MINIMAL layout (its module docstring counts the lines).
"""

from __future__ import annotations

from tests.compiler.test_validate import LLAMA, check, check_without_data

HF = {"checkpoint": {"format": "huggingface", "path": "model"}}
ADAPTER = {"adapter/adapter_config.json": "{}", "adapter/adapter_model.safetensors": ""}
AVAILABLE = (
    "linear_qkv, linear_q, linear_k, linear_v, linear_proj, linear_fc1, linear_fc1_gate, linear_fc1_up, linear_fc2"
)
HINT = "hint: a name from that list, or a pattern over the global path such as decoder.layers.0.*.linear_qkv"


def test_rule_peft_module_types() -> None:
    check(
        {"model": {**LLAMA, "transformer_impl": "transformer_engine"}, "launch": {"device": "cuda"}, "peft": {}},
        [
            'spec.toml:13: [peft] with model.transformer_impl = "transformer_engine": adapters wrap megatron-core\'s '
            "local ColumnParallelLinear and RowParallelLinear, and transformer_engine's fused linears are another "
            'module type that has no adapter; hint: transformer_impl = "local"'
        ],
    )


def test_rule_peft_targets() -> None:
    check({"model": LLAMA, "peft": {"target_modules": ["linear_q", "linear_v", "linear_fc2"]}}, [])
    check({"model": LLAMA, "peft": {"target_modules": ["decoder.layers.1.*.linear_qkv"]}}, [])
    check(
        {"model": LLAMA, "peft": {"target_modules": ["q_proj", "decoder.layers.2.*"]}},
        [
            f'spec.toml:21: $.peft.target_modules: "decoder.layers.2.*" matches no module of this model; the modules '
            f"that take an adapter are {AVAILABLE}, in each of its 2 layers; {HINT}",
            f'spec.toml:21: $.peft.target_modules: "q_proj" matches no module of this model; the modules that take an '
            f"adapter are {AVAILABLE}, in each of its 2 layers; {HINT}",
        ],
    )
    # A non-gated MLP has no gate: the list says what this model has.
    check(
        {"peft": {"target_modules": ["linear_fc1_gate"]}},
        [
            'spec.toml:17: $.peft.target_modules: "linear_fc1_gate" matches no module of this model; the modules that '
            "take an adapter are linear_qkv, linear_q, linear_k, linear_v, linear_proj, linear_fc1, linear_fc2, in each "
            f"of its 2 layers; {HINT}"
        ],
    )
    check(
        {"model": LLAMA, "peft": {"target_modules": ["linear_qkv", "decoder.layers.0.*.linear_k"]}},
        [
            "spec.toml:21: $.peft.target_modules adapts decoder.layers.0.self_attention: linear_qkv and linear_k: the "
            "fused module's adapter already covers the projection, so its rows would get two adapters; hint: the fused "
            "name (linear_qkv, linear_fc1) or its projections (linear_q, linear_k, linear_v; linear_fc1_gate, "
            "linear_fc1_up), not both"
        ],
    )


def test_rule_peft_sizes() -> None:
    check({"model": LLAMA, "peft": {"rank": 16, "alpha": 32.0, "dropout": 0.1}}, [])
    check(
        {
            "model": {**LLAMA, "num_query_groups": 2},
            "peft": {"rank": 40, "target_modules": ["linear_k", "linear_proj"]},
        },
        [
            "spec.toml:22: $.peft.rank = 40 is larger than linear_k (64 in, 32 out): the adapter of a layer can have at "
            "most its smaller dimension as rank; hint: rank = 32 or less, or leave those modules out of target_modules"
        ],
    )
    check(
        {"model": LLAMA, "peft": {"rank": 0, "alpha": 0.0, "dropout": 1.0}},
        [
            "spec.toml:21: $.peft.rank = 0: an adapter needs rank 1 or more; hint: 8 or 16 are common",
            "spec.toml:22: $.peft.alpha = 0.0: the update is scaled by alpha / rank, so alpha must be positive; "
            "hint: alpha = 2 x rank is common",
            "spec.toml:23: $.peft.dropout = 1.0 is not a probability below 1; hint: 0 (no dropout) up to e.g. 0.1",
        ],
    )


def test_rule_peft_adapter() -> None:
    check({"model": LLAMA, "init": HF, "peft": {"adapter": "adapter"}}, [], files={"model": "", **ADAPTER})
    check(
        {"model": LLAMA, "peft": {"adapter": "adapter"}},
        [
            'spec.toml:21: $.peft.adapter = "adapter" has no adapter_model.safetensors (paths are relative to the '
            "spec's folder); hint: point it at the folder peft's save_pretrained (or bridgec convert --to hf-peft) "
            "wrote",
            'spec.toml:21: $.peft.adapter = "adapter" is a Hugging Face PEFT adapter, which is trained on a Hugging '
            'Face base model, and the spec has no [init.checkpoint] format = "huggingface"; hint: an [init.checkpoint] '
            'table with format = "huggingface" and the base model\'s folder',
        ],
        files={"adapter/adapter_config.json": "{}"},
    )
    check_without_data({"model": LLAMA, "init": HF, "peft": {"adapter": "adapter"}}, [])


def test_rule_peft_start() -> None:
    megatron = {"checkpoint": {"format": "megatron", "path": "ck"}}
    check(
        {"model": LLAMA, "init": megatron, "peft": {}},
        [
            'spec.toml:21: $.init.checkpoint.format = "megatron" with [peft]: the Megatron-LM loader reads every '
            "tensor of the model, the adapters included, which that checkpoint does not have (not supported yet); "
            'hint: convert the checkpoint to a Hugging Face folder and use format = "huggingface", or drop [peft]'
        ],
        files={"ck": ""},
    )
    init = {"checkpoint": {"format": "orbax", "path": "ck", "optimizer_state": True}}
    check(
        {"model": LLAMA, "init": init, "peft": {}},
        [
            "spec.toml:21: $.init.checkpoint.optimizer_state = true with [peft]: the checkpoint's optimizer state is "
            "for its full weights, which [peft] freezes, and holds nothing for the new adapters; hint: "
            "optimizer_state = false: the adapters' optimizer starts fresh"
        ],
        files={"ck": ""},
    )
