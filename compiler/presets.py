"""Presets: ``bridgec new NAME --gpus N [--nodes M]`` writes a commented spec from a catalogue.

Each preset is a published model shape (Llama 3, Qwen3, Mixtral, GPT-3) with a training recipe,
pretrain or finetune, and the smallest model-parallel layout it is meant to run with (tensor
parallel inside a node, pipeline across). The GPU count decides the rest: data parallel is what
is left, and the global batch is rounded up to a whole number of microbatches per data-parallel
rank. The written spec says where each choice came from; edit it like any other.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import attrs

from bridgec.compiler.errors import close_match, render_value


@attrs.frozen(kw_only=True)
class Shape:
    """A model family member: its architecture and the layout it needs."""

    key: str
    title: str
    source: str
    """Where the numbers come from (a comment in the spec)."""
    model: dict[str, Any]
    """[model] keys, in the order written."""
    tensor: int = 1
    pipeline: int = 1
    expert: int = 1
    pretrain_batch: int
    """Global batch (sequences) of the pretrain recipe."""
    lr: float
    """Peak learning rate of the pretrain recipe."""
    warmup: int = 2000
    iters: int = 100_000


GPT3 = {
    "normalization": "layernorm",
    "activation": "gelu",
    "position_embedding": "learned",
    "tie_embeddings": True,
    "add_bias_linear": True,
    "vocab_size": 50257,
    "seq_length": 2048,
}
LLAMA3 = {
    "normalization": "rmsnorm",
    "activation": "swiglu",
    "position_embedding": "rope",
    "rotary_base": 500000,
    "tie_embeddings": False,
    "add_bias_linear": False,
    "vocab_size": 128256,
    "seq_length": 8192,
}

SHAPES: tuple[Shape, ...] = (
    Shape(
        key="llama3-8b",
        title="Llama 3 8B",
        source="Meta's Llama 3 8B config: 32 layers, hidden 4096, 32 heads, 8 KV groups, FFN 14336",
        model={"num_layers": 32, "hidden_size": 4096, "num_attention_heads": 32, "num_query_groups": 8}
        | {"ffn_hidden_size": 14336, **LLAMA3},
        tensor=2,
        pretrain_batch=512,
        lr=3e-4,
    ),
    Shape(
        key="llama3-70b",
        title="Llama 3 70B",
        source="Meta's Llama 3 70B config: 80 layers, hidden 8192, 64 heads, 8 KV groups, FFN 28672",
        model={"num_layers": 80, "hidden_size": 8192, "num_attention_heads": 64, "num_query_groups": 8}
        | {"ffn_hidden_size": 28672, **LLAMA3},
        tensor=8,
        pipeline=4,
        pretrain_batch=1024,
        lr=1.5e-4,
    ),
    Shape(
        key="qwen3-8b",
        title="Qwen3 8B",
        source="Qwen3-8B's config: 36 layers, hidden 4096, 32 heads (head_dim 128), 8 KV groups, FFN 12288, QK norm",
        model={
            "num_layers": 36,
            "hidden_size": 4096,
            "num_attention_heads": 32,
            "num_query_groups": 8,
            "head_dim": 128,
            "ffn_hidden_size": 12288,
            "vocab_size": 151936,
            "seq_length": 4096,
            "normalization": "rmsnorm",
            "norm_epsilon": 1e-6,
            "qk_layernorm": True,
            "activation": "swiglu",
            "position_embedding": "rope",
            "rotary_base": 1000000,
            "tie_embeddings": False,
            "add_bias_linear": False,
        },
        tensor=2,
        pretrain_batch=512,
        lr=3e-4,
    ),
    Shape(
        key="mixtral-8x7b",
        title="Mixtral 8x7B",
        source="Mistral's Mixtral 8x7B config: 32 layers, hidden 4096, 32 heads, 8 KV groups, 8 experts of FFN 14336, top-2",
        model={
            "num_layers": 32,
            "hidden_size": 4096,
            "num_attention_heads": 32,
            "num_query_groups": 8,
            "ffn_hidden_size": 14336,
            "num_experts": 8,
            "moe_router_topk": 2,
            "vocab_size": 32000,
            "seq_length": 4096,
            "normalization": "rmsnorm",
            "activation": "swiglu",
            "position_embedding": "rope",
            "rotary_base": 1000000,
            "tie_embeddings": False,
            "add_bias_linear": False,
        },
        tensor=2,
        expert=8,
        pretrain_batch=512,
        lr=2e-4,
    ),
    Shape(
        key="gpt3-125m",
        title="GPT-3 Small (125M)",
        source="Brown et al. 2020, Table 2.1: 12 layers, d_model 768, 12 heads, batch 0.5M tokens, lr 6e-4",
        model={"num_layers": 12, "hidden_size": 768, "num_attention_heads": 12, **GPT3},
        pretrain_batch=256,
        lr=6e-4,
        warmup=375,
        iters=600_000,
    ),
    Shape(
        key="gpt3-1.3b",
        title="GPT-3 XL (1.3B)",
        source="Brown et al. 2020, Table 2.1: 24 layers, d_model 2048, 16 heads, batch 1M tokens, lr 2e-4",
        model={"num_layers": 24, "hidden_size": 2048, "num_attention_heads": 16, **GPT3},
        pretrain_batch=512,
        lr=2e-4,
        warmup=375,
        iters=300_000,
    ),
    Shape(
        key="gpt3-175b",
        title="GPT-3 (175B)",
        source="Brown et al. 2020, Table 2.1: 96 layers, d_model 12288, 96 heads, batch 3.2M tokens, lr 0.6e-4",
        model={"num_layers": 96, "hidden_size": 12288, "num_attention_heads": 96, **GPT3},
        tensor=8,
        pipeline=16,
        pretrain_batch=1536,
        lr=0.6e-4,
        warmup=375,
        iters=100_000,
    ),
)

VARIANTS = ("pretrain", "finetune")


@attrs.frozen(kw_only=True)
class Preset:
    name: str
    shape: Shape
    variant: str

    @property
    def summary(self) -> str:
        what = "pretraining" if self.variant == "pretrain" else "fine-tuning"
        return f"{self.shape.title} {what}"

    @property
    def min_gpus(self) -> int:
        return _model_parallel(self.shape) * self.shape.expert


CATALOGUE: dict[str, Preset] = {
    f"{shape.key}-{variant}": Preset(name=f"{shape.key}-{variant}", shape=shape, variant=variant)
    for shape in SHAPES
    for variant in VARIANTS
}


class PresetError(ValueError):
    """A preset that does not exist, or a GPU count it cannot use."""


def find(name: str) -> Preset:
    if name in CATALOGUE:
        return CATALOGUE[name]
    match = close_match(name, list(CATALOGUE))
    hint = f"did you mean {match!r}?" if match else "bridgec new --list shows them"
    raise PresetError(f"no preset {name!r}; {hint}")


def catalogue_text() -> str:
    lines = ["preset                   min GPUs  what"]
    lines += [f"{p.name:<24} {p.min_gpus:>8}  {p.summary}" for p in CATALOGUE.values()]
    return "\n".join(lines) + "\n"


def _model_parallel(shape: Shape) -> int:
    return shape.tensor * shape.pipeline


@attrs.frozen(kw_only=True)
class Layout:
    nodes: int
    per_node: int
    data: int
    global_batch: int
    batch_why: str


def layout(preset: Preset, gpus: int, nodes: int) -> Layout:
    """The launch and batch for ``gpus`` GPUs on ``nodes`` machines, or why the preset cannot use them."""
    shape = preset.shape
    if gpus < 1 or nodes < 1:
        raise PresetError(f"--gpus {gpus} --nodes {nodes}: both must be 1 or more")
    if gpus % nodes:
        raise PresetError(f"--gpus {gpus} over --nodes {nodes}: every node needs the same number of GPUs")
    per_node = gpus // nodes
    model_parallel = _model_parallel(shape)
    if gpus % model_parallel:
        raise PresetError(
            f"{preset.name} runs tensor {shape.tensor} x pipeline {shape.pipeline} = {model_parallel} GPUs per "
            f"model replica: --gpus {gpus} is not a multiple of {model_parallel}"
        )
    if per_node % shape.tensor:
        raise PresetError(
            f"{preset.name} keeps its tensor parallel {shape.tensor} inside a node: {per_node} GPUs per node "
            f"(--gpus {gpus} / --nodes {nodes}) is not a multiple of {shape.tensor}"
        )
    data = gpus // model_parallel
    if data % shape.expert:
        raise PresetError(
            f"{preset.name} spreads its experts over expert parallel {shape.expert}, carved out of data "
            f"parallel ({data} at --gpus {gpus}): use a multiple of {model_parallel * shape.expert} GPUs"
        )
    base = shape.pretrain_batch if preset.variant == "pretrain" else max(shape.pretrain_batch // 4, 1)
    global_batch = -(-base // data) * data
    why = (
        f"{base} sequences, a whole number of microbatches on each of the {data} data-parallel ranks"
        if global_batch == base
        else f"{base} rounded up to a multiple of data parallel {data}"
    )
    return Layout(nodes=nodes, per_node=per_node, data=data, global_batch=global_batch, batch_why=why)


def _value(value: Any) -> str:
    """A TOML value, whole (errors.render_value cuts long ones short)."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    return render_value(value)


def _table(name: str, keys: list[tuple[str, Any, str | None]], comment: str | None = None) -> Iterator[str]:
    yield ""
    if comment:
        yield f"# {comment}"
    yield f"[{name}]"
    for key, value, why in keys:
        line = f"{key} = {_value(value)}"
        yield f"{line:<32} # {why}" if why else line


def spec_text(preset: Preset, gpus: int, nodes: int, command: str) -> str:
    """The spec ``bridgec new`` writes."""
    shape, lay = preset.shape, layout(preset, gpus, nodes)
    finetune = preset.variant == "finetune"
    lines = [
        f"# {preset.summary} on {gpus} GPU(s) ({nodes} node(s)): a bridgec preset.",
        f"# Written by: {command}",
        f"# Shape: {shape.source}.",
        "# Review it (bridgec explain shows the layout, parameters and memory), then compile it: bridgec compile SPEC -o run.py",
    ]
    lines += _table(
        "run",
        [
            ("name", preset.name, None),
            ("description", f"{preset.summary} ({preset.name} preset, {gpus} GPUs).", None),
            ("seed", 1234, None),
        ],
    )
    lines += _table(
        "launch",
        [
            ("device", "cuda", None),
            ("nodes", lay.nodes, None),
            ("procs_per_node", lay.per_node, "one process per GPU"),
            ("timeout_minutes", 30.0, "collectives at this scale can take a while to start"),
        ],
    )
    model = [(key, value, None) for key, value in shape.model.items()]
    model += [("transformer_impl", "transformer_engine", "fused kernels; needs cuda")]
    lines += _table("model", model)
    parallel: list[tuple[str, Any, str | None]] = [
        ("tensor", shape.tensor, "inside a node" if shape.tensor > 1 else None)
    ]
    if shape.pipeline > 1:
        parallel.append(("pipeline", shape.pipeline, "across nodes"))
    if shape.expert > 1:
        parallel.append(("expert", shape.expert, "experts spread over data-parallel ranks"))
    if shape.tensor > 1:
        parallel.append(("sequence_parallel", True, "splits norms and dropout along the sequence (Transformer Engine)"))
    parallel.append(("distributed_optimizer", True, f"optimizer state sharded over data parallel {lay.data}"))
    lines += _table("parallel", parallel, f"data parallel = {gpus} GPUs / (tensor x pipeline) = {lay.data}")
    lines += _table(
        "batch",
        [("global_batch_size", lay.global_batch, lay.batch_why), ("micro_batch_size", 1, None)],
    )
    iters = 2000 if finetune else shape.iters
    lines += _table(
        "train",
        [
            ("iters", iters, None),
            ("log_interval", 10, None),
            ("eval_interval", 250 if finetune else 1000, None),
            ("eval_iters", 10, None),
        ],
    )
    lr = 1e-5 if finetune else shape.lr
    lines += _table(
        "optimizer",
        [
            ("name", "adam", None),
            ("lr", lr, "fine-tuning: a small fraction of the pretraining peak" if finetune else "peak"),
            ("min_lr", float(f"{lr / 10:.6g}"), "a tenth of the peak"),
            ("weight_decay", 0.1, None),
            ("betas", [0.9, 0.95], None),
            ("clip_grad", 1.0, None),
        ],
    )
    warmup = min(50, iters) if finetune else shape.warmup
    lines += _table("scheduler", [("warmup_iters", warmup, None), ("decay", "cosine", None)])
    lines += _table("precision", [("dtype", "bf16", None)])
    lines += _table(
        "data",
        [("kind", "mock", None)],
        "mock data runs as is; for real text build an indexed dataset (bridgec data build) and write "
        'kind = "indexed" with [[data.sources]] prefix = "..."',
    )
    lines += _table(
        "checkpoint",
        [
            ("dir", "checkpoints", None),
            ("save_interval", 250 if finetune else 1000, None),
            ("resume", True, "a relaunch continues from the latest checkpoint"),
            ("keep_last", 2, None),
        ],
    )
    lines += _table("init", [("scheme", "megatron", "each rank draws its own weights (fast at scale)")])
    if finetune:
        lines += [
            "",
            "# Fine-tuning starts from pretrained weights. bridgec reads them from an Orbax (MaxText) checkpoint",
            "# with [init.checkpoint] (below); a Hugging Face or Megatron-LM checkpoint has no key yet. Until",
            "# then this spec trains from scratch with the fine-tuning recipe above.",
            "# [init.checkpoint]",
            '# format = "orbax"',
            '# path = "ckpt/1000/items"',
        ]
    return "\n".join(lines) + "\n"
