"""Every spec field, and every allowed value of every enumerated one, changes the compiled script (or its job file).

The walk covers every leaf of the Spec classes (a new field fails
``test_every_field_is_walked`` until it gets alternative values here). Each
field is varied in a context where it applies (``CONTEXT``: wsd settings under
decay = "wsd", optax pieces under style = "optax", ...), every variant goes
through the real front end (load, mesh, validation: it must be a valid spec)
and is lowered and rendered; two values giving the same script mean the
compiler ignored one of them (the bug of a reduction added to the spec alone
compiling into the mean loss). ``RUNTIME_ONLY`` lists the fields allowed to
leave the script unchanged, each with its reason.
"""

from __future__ import annotations

import base64
import copy
import enum
import types
import typing
from typing import Any, Literal, get_args, get_origin

import attrs
import pytest

from bridgec.compiler import choices, spec
from bridgec.compiler.compile import tokenizer_info
from bridgec.compiler.jobs import job_files
from bridgec.compiler.lower import Target, lower
from bridgec.compiler.render import render
from bridgec.compiler.validate import SpecContext
from tests.compiler.conftest import SPEC_DIR, MemoryFiles, dump_toml, front, idx_header

TARGET = Target(spec_sha256="0" * 64, spec_path="spec.toml", output_name="run.py")

BASE: dict[str, dict[str, Any]] = {
    "run": {"name": "walk"},
    "launch": {"procs_per_node": 2},
    "model": {"num_layers": 4, "hidden_size": 64, "num_attention_heads": 4, "vocab_size": 128, "seq_length": 32},
    "batch": {"global_batch_size": 8, "micro_batch_size": 2},
    "train": {"iters": 10},
    "optimizer": {"lr": 1e-3},
}
"""A valid spec on 2 processes (data parallel 2), so that layouts can vary."""

FILES = MemoryFiles(
    {
        "data/a.bin": b"\0" * 64,
        "data/a.idx": idx_header(40),
        "data/b.bin": b"\0" * 64,
        "data/b.idx": idx_header(40),
        "data/a.loss_mask.bin": b"\0" * 64,
        "data/a.loss_mask.idx": idx_header(40),
        # A tiktoken rank file: the 256 bytes (vocabulary 257 with the <|endoftext|> bridgec adds, eod 256).
        "tok.tiktoken": "".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(256)),
        "ckpt/1/items": "",
        "ckpt/2/items": "",
        "hf": "",
        "adapter/adapter_config.json": "{}",
        "adapter/adapter_model.safetensors": "",
        "more_hooks.py": "def my_loss(loss_mask, output_tensor):\n    return output_tensor.sum(), loss_mask.sum(), {}\n",
        "hooks.py": "def my_loss(loss_mask, output_tensor):\n    return output_tensor.sum(), loss_mask.sum(), {}\n\n"
        "def other_loss(loss_mask, output_tensor):\n    return output_tensor.sum(), loss_mask.sum(), {}\n\n"
        "def my_step(state, data_iterator, model, return_schedule_plan=False):\n    return None, None\n",
        "cbs.py": "class Alarm:\n    def on_train_step_end(self, context):\n        pass\n\n\nclass Counter:\n    pass\n",
    }
)

CUDA_TE = {"launch": {"device": "cuda"}, "model": {"transformer_impl": "transformer_engine"}}
MAXTEXT = {"scheduler": {"style": "maxtext", "maxtext": {}}}
OPTAX = {
    "optimizer": {"semantics": "optax"},
    "scheduler": {"style": "optax", "optax": [{"kind": "constant", "value": 1e-3}]},
}
CHECKPOINT = {"checkpoint": {"dir": "ckpt"}}
INDEXED = {"data": {"kind": "indexed", "sources": [{"prefix": "data/a"}], "eod_token": 0, "split": [90.0, 10.0, 0.0]}}
HOOK_LOSS = {"hooks": {"file": "hooks.py", "loss": "my_loss"}}
MOE = {"model": {"num_experts": 4, "add_bias_linear": False}}
LLAMA = {
    "model": {
        "activation": "swiglu",
        "add_bias_linear": False,
        "normalization": "rmsnorm",
        "position_embedding": "rope",
    }
}


def _piece(kind: str, **fields: Any) -> dict[str, Any]:
    return {"scheduler": {"style": "optax", "optax": [{"kind": kind, **fields}]}}


PIECES = {
    "constant": {"value": 1e-3},
    "linear": {"init_value": 0.0, "end_value": 1e-3, "transition_steps": 5},
    "cosine_decay": {"init_value": 1e-3, "decay_steps": 10},
    "warmup_cosine_decay": {"init_value": 0.0, "peak_value": 1e-3, "warmup_steps": 2, "decay_steps": 10},
}

CONTEXT: dict[str, dict[str, Any]] = {
    "model.gelu_approximation": {},
    "parallel.context": CUDA_TE,
    "model.rotary_base": {"model": {"position_embedding": "rope"}},
    "model.rope_scaling_factor": {"model": {"position_embedding": "rope"}},
    "model.add_qkv_bias": {"model": {"add_bias_linear": False}},
    "model.moe_router_topk": MOE,
    "model.moe_router_pre_softmax": MOE,
    "parallel.tensor": {},
    "parallel.virtual_pipeline": {"parallel": {"pipeline": 2}},
    "parallel.expert": MOE,
    "parallel.sequence_parallel": {**CUDA_TE, "parallel": {"tensor": 2}},
    "parallel.dcn_mesh": {"launch": {"nodes": 2}, "parallel": {"mesh": {"data": -1}}},
    "train.eval_iters": {"train": {"iters": 10, "eval_interval": 5}},
    "train.exit_interval": CHECKPOINT,  # an early stop without checkpoints would start over at every launch
    "train.exit_duration_minutes": CHECKPOINT,
    "optimizer.sgd_momentum": {"optimizer": {"lr": 1e-3, "name": "sgd"}},
    "optimizer.eps_root": OPTAX,
    "optimizer.decay_mask.exclude": {**OPTAX, **LLAMA},
    "optimizer.decay_mask.paths": OPTAX,
    "optimizer.decay_mask.scan_layers": OPTAX,
    "scheduler.wsd_decay_iters": {"scheduler": {"decay": "wsd", "wsd_decay_iters": 2}},
    "scheduler.wsd_decay_style": {"scheduler": {"decay": "wsd", "wsd_decay_iters": 2}},
    "scheduler.maxtext.wsd_decay_steps_fraction": {"scheduler": {"style": "maxtext", "maxtext": {"kind": "wsd"}}},
    "scheduler.maxtext.wsd_decay_style": {"scheduler": {"style": "maxtext", "maxtext": {"kind": "wsd"}}},
    "scheduler.optax.value": _piece("constant", **PIECES["constant"]),
    "scheduler.optax.init_value": _piece("linear", **PIECES["linear"]),
    "scheduler.optax.end_value": _piece("linear", **PIECES["linear"]),
    "scheduler.optax.transition_steps": _piece("linear", **PIECES["linear"]),
    "scheduler.optax.transition_begin": _piece("linear", **PIECES["linear"]),
    "scheduler.optax.peak_value": _piece("warmup_cosine_decay", **PIECES["warmup_cosine_decay"]),
    "scheduler.optax.warmup_steps": _piece("warmup_cosine_decay", **PIECES["warmup_cosine_decay"]),
    "scheduler.optax.decay_steps": _piece("cosine_decay", **PIECES["cosine_decay"]),
    "scheduler.optax.alpha": _piece("cosine_decay", **PIECES["cosine_decay"]),
    "scheduler.optax.exponent": _piece("cosine_decay", **PIECES["cosine_decay"]),
    "scheduler.optax.boundary": {
        "scheduler": {
            "style": "optax",
            "optax": [{"kind": "constant", "value": 1e-4, "boundary": 2}, {"kind": "constant", "value": 1e-3}],
        }
    },
    "precision.fp8": {**CUDA_TE, "precision": {"dtype": "bf16"}},
    "data.sources.prefix": INDEXED,
    "data.sources.weight": {
        "data": {
            "kind": "indexed",
            "eod_token": 0,
            "split": [90.0, 10.0, 0.0],
            "sources": [{"prefix": "data/a"}, {"prefix": "data/b"}],
        }
    },
    "data.split": INDEXED,
    "checkpoint.save_interval": CHECKPOINT,
    "checkpoint.resume": CHECKPOINT,
    "checkpoint.keep_last": CHECKPOINT,
    "checkpoint.overwrite": CHECKPOINT,
    "checkpoint.async_save": CHECKPOINT,
    "hooks.file": HOOK_LOSS,
    "hooks.forward_step": {"hooks": {"file": "hooks.py"}},
    "hooks.loss": HOOK_LOSS,
    "precision.fp8_param_gather": {
        **CUDA_TE,
        "precision": {"fp8": "tensorwise"},
        "parallel": {"distributed_optimizer": True},
    },
    "precision.fp8_bf16_first_layers": {**CUDA_TE, "precision": {"fp8": "tensorwise"}},
    "precision.fp8_bf16_last_layers": {**CUDA_TE, "precision": {"fp8": "tensorwise"}},
    "precision.mixed": {**CUDA_TE, "parallel": {"distributed_optimizer": True}},
    "recompute.num_layers": {"recompute": {"granularity": "full", "method": "uniform"}},
    "recompute.modules": {"recompute": {"granularity": "selective"}, "model": {"add_bias_linear": False}},
    "offload.activations": {"launch": {"device": "cuda"}},
    "offload.weights": {"launch": {"device": "cuda"}},
    "offload.num_layers": {"launch": {"device": "cuda"}, "offload": {"activations": True}},
    "offload.optimizer": {"launch": {"device": "cuda"}, "parallel": {"distributed_optimizer": True}},
    "offload.optimizer_fraction": {
        "launch": {"device": "cuda"},
        "parallel": {"distributed_optimizer": True},
        "offload": {"optimizer": True},
    },
    "overlap.param_gather": {"parallel": {"distributed_optimizer": True}},
    "overlap.align_param_gather": {
        "parallel": {"pipeline": 2, "virtual_pipeline": 2, "distributed_optimizer": True},
        "overlap": {"param_gather": True},
    },
    "overlap.bucket_size": {"overlap": {"grad_reduce": True}},
    "overlap.tensor_parallel": {**CUDA_TE, "parallel": {"tensor": 2, "sequence_parallel": True}},
    "fusions.bias_dropout": {"launch": {"device": "cuda"}},
    "fusions.apply_rope": {
        **CUDA_TE,
        "model": {"transformer_impl": "transformer_engine", "position_embedding": "rope"},
    },
    "fusions.cross_entropy": {"launch": {"device": "cuda"}},
    "fusions.cross_entropy_impl": {**CUDA_TE, "fusions": {"cross_entropy": True}},
    "fusions.masked_softmax": {"launch": {"device": "cuda"}},
    "fusions.gradient_accumulation": {"launch": {"device": "cuda"}},
    "cuda_graph.impl": CUDA_TE,
    "cuda_graph.scope": {**CUDA_TE, "cuda_graph": {"impl": "local"}},
}
"""Where a field applies, merged into BASE before it is varied (default: nothing more; prefix rules below)."""

PREFIX_CONTEXT: dict[str, dict[str, Any]] = {
    "launch.slurm.": {"launch": {"scheduler": "slurm"}},
    "launch.kubernetes.": {"launch": {"scheduler": "kubernetes", "kubernetes": {"image": "registry/a:1"}}},
    "scheduler.maxtext.": MAXTEXT,
    "logging.tensorboard.": {"logging": {"tensorboard": {"dir": "tb"}}},
    "logging.wandb.": {"logging": {"wandb": {"project": "p"}}},
    "logging.mlflow.": {"logging": {"mlflow": {"tracking_uri": "sqlite:///m.db"}}},
    "profile.": {"profile": {"start_step": 2, "end_step": 3}},
    "init.checkpoint.": {**LLAMA, "init": {"checkpoint": {"format": "orbax", "path": "ckpt/1/items"}}},
    "peft.": {**LLAMA, "peft": {}},
}

VALUES: dict[str, list[Any]] = {
    "logging.params_norm": [False, True],
    "logging.peak_tflops": [None, 989.0],
    "logging.tensorboard.dir": ["tb", "elsewhere"],
    "logging.wandb.project": ["p", "q"],
    "logging.wandb.entity": [None, "team"],
    "logging.wandb.name": [None, "named"],
    "logging.wandb.tags": [[], ["a"]],
    "logging.mlflow.tracking_uri": ["sqlite:///m.db", "http://127.0.0.1:5000"],
    "logging.mlflow.experiment": [None, "exp"],
    "logging.mlflow.run_name": [None, "named"],
    "profile.start_step": [2, 1],
    "profile.end_step": [3, 4],
    "profile.ranks": [[0], [0, 1]],
    "profile.dir": [None, "traces"],
    "profile.memory_snapshot": [False, True],
    "profile.nvtx": [False, True],
    "peft.target_modules": [["linear_qkv"], ["linear_q", "decoder.layers.1.mlp.linear_fc2"]],
    "peft.rank": [8, 4],
    "peft.alpha": [16.0, 8.0],
    "peft.dropout": [0.0, 0.1],
    "peft.adapter": [None, "adapter"],
    "run.name": ["a", "b"],
    "run.seed": [1, 2],
    "run.description": ["", "words"],
    "run.output_dir": [None, "elsewhere"],
    "launch.nodes": [1, 2],
    "launch.procs_per_node": [2, 4],
    "launch.timeout_minutes": [10.0, 5.0],
    "launch.slurm.time": ["04:00:00", "1-00:00:00"],
    "launch.slurm.partition": [None, "gpu"],
    "launch.slurm.account": [None, "proj"],
    "launch.slurm.container_image": [None, "nvcr.io/nvidia/pytorch:25.01-py3"],
    "launch.kubernetes.image": ["registry/a:1", "registry/b:2"],
    "launch.kubernetes.namespace": ["default", "ml"],
    "launch.kubernetes.working_dir": ["/workspace", "/job"],
    "model.num_layers": [4, 8],
    "model.hidden_size": [64, 128],
    "model.num_attention_heads": [4, 8],
    "model.num_query_groups": [None, 2],
    "model.head_dim": [None, 32],
    "model.qk_layernorm": [False, True],
    "model.ffn_hidden_size": [None, 96],
    "model.vocab_size": [128, 200],
    "model.make_vocab_size_divisible_by": [128, 64],
    "model.seq_length": [32, 64],
    "model.norm_epsilon": [1e-5, 1e-6],
    "model.norm_zero_centered": [False, True],
    "model.rotary_base": [10000, 500000],
    "model.rope_scaling_factor": [None, 8.0],
    "model.add_qkv_bias": [False, True],
    "model.tie_embeddings": [True, False],
    "model.logits_multiplier": [1.0, 0.5],
    "model.embedding_multiplier": [1.0, 8.0],
    "model.add_bias_linear": [True, False],
    "model.dropout": [0.0, 0.1],
    "model.init_method_std": [0.02, 0.01],
    "model.num_experts": [None, 4],
    "model.moe_router_topk": [2, 1],
    "model.moe_router_pre_softmax": [False, True],
    "parallel.tensor": [1, 2],
    "parallel.pipeline": [1, 2],
    "parallel.virtual_pipeline": [None, 2],
    "parallel.context": [1, 2],
    "parallel.expert": [1, 2],
    "parallel.sequence_parallel": [False, True],
    "parallel.distributed_optimizer": [False, True],
    "parallel.mesh": [None, {"data": -1, "tensor": 2}],
    "parallel.dcn_mesh": [None, {"fsdp": -1}],
    "batch.global_batch_size": [8, 16],
    "batch.micro_batch_size": [2, 1],
    "train.iters": [10, 20],
    "train.log_interval": [1, 5],
    "train.eval_interval": [None, 5],
    "train.eval_iters": [10, 2],
    "train.exit_interval": [None, 3],
    "train.exit_duration_minutes": [None, 30.0],
    "optimizer.lr": [1e-3, 2e-3],
    "optimizer.min_lr": [0.0, 1e-5],
    "optimizer.weight_decay": [0.01, 0.1],
    "optimizer.betas": [[0.9, 0.999], [0.9, 0.95]],
    "optimizer.eps": [1e-8, 1e-6],
    "optimizer.sgd_momentum": [0.9, 0.5],
    "optimizer.clip_grad": [1.0, 0.0],
    "optimizer.eps_root": [0.0, 1e-8],
    "optimizer.decay_mask.exclude": [[], ["norm"]],
    "optimizer.decay_mask.scan_layers": [True, False],
    "scheduler.warmup_iters": [0, 2],
    "scheduler.warmup_init_lr": [0.0, 1e-5],
    "scheduler.decay_iters": [None, 5],
    "scheduler.wsd_decay_iters": [2, 3],
    "scheduler.maxtext.warmup_steps_fraction": [0.1, 0.2],
    "scheduler.maxtext.final_fraction": [0.1, 0.2],
    "scheduler.maxtext.schedule_steps": [None, 20],
    "scheduler.maxtext.wsd_decay_steps_fraction": [0.1, 0.2],
    "scheduler.optax.value": [1e-3, 2e-3],
    "scheduler.optax.init_value": [0.0, 1e-5],
    "scheduler.optax.end_value": [1e-3, 2e-3],
    "scheduler.optax.peak_value": [1e-3, 2e-3],
    "scheduler.optax.transition_steps": [5, 6],
    "scheduler.optax.transition_begin": [0, 1],
    "scheduler.optax.warmup_steps": [2, 3],
    "scheduler.optax.decay_steps": [10, 8],
    "scheduler.optax.alpha": [0.0, 0.1],
    "scheduler.optax.exponent": [1.0, 2.0],
    "scheduler.optax.boundary": [2, 3],
    "data.sources.prefix": ["data/a", "data/b"],
    "data.sources.weight": [1.0, 2.0],
    "data.split": [[90.0, 10.0, 0.0], [80.0, 20.0, 0.0]],
    "data.eod_token": [None, 0],
    "data.tokenizer": [None, "tok.tiktoken"],
    "data.eod_mask_loss": [False, True],
    "data.document_masking": [False, True],
    "data.packing": [False, True],
    "loss.z_loss_multiplier": [0.0, 1e-4],
    "checkpoint.dir": [None, "ckpt"],
    "checkpoint.save_interval": [None, 5],
    "checkpoint.resume": [False, True],
    "checkpoint.keep_last": [None, 2],
    "checkpoint.overwrite": [False, True],
    "checkpoint.async_save": [False, True],
    "hooks.file": ["hooks.py", "more_hooks.py"],
    "hooks.forward_step": [None, "my_step"],
    "hooks.loss": ["my_loss", "other_loss"],
    "hooks.callbacks": [[], ["cbs.py:Alarm"], ["cbs.py:Alarm", "cbs.py:Counter"]],
    "init.checkpoint.format": ["orbax", "megatron"],
    "init.checkpoint.path": ["ckpt/1/items", "ckpt/2/items"],
    "init.checkpoint.optimizer_state": [False, True],
    "init.checkpoint.param_scan_axis": [1, 0],
    "precision.fp8_param_gather": [False, True],
    "precision.fp8_bf16_first_layers": [0, 1],
    "precision.fp8_bf16_last_layers": [0, 1],
    "recompute.num_layers": [1, 2],
    "recompute.modules": [None, ["core_attn", "mlp"]],
    "offload.activations": [False, True],
    "offload.weights": [False, True],
    "offload.num_layers": [1, 2],
    "offload.optimizer": [False, True],
    "offload.optimizer_fraction": [None, 0.5],
    "overlap.grad_reduce": [False, True],
    "overlap.param_gather": [False, True],
    "overlap.align_param_gather": [False, True],
    "overlap.bucket_size": [None, 1000],
    "overlap.tensor_parallel": [False, True],
    "fusions.bias_dropout": [False, True],
    "fusions.apply_rope": [False, True],
    "fusions.cross_entropy": [False, True],
    "fusions.masked_softmax": [False, True],
    "fusions.gradient_accumulation": [False, True],
    "cuda_graph.scope": [[], ["attn"]],
}
"""Values of the fields that are not enumerations (the enumerations take every allowed value)."""

RUNTIME_ONLY: dict[str, str] = {}
"""Fields allowed to leave the script unchanged, with the reason. Empty: every field reaches the script (the
values only the runtime interprets, like decay or on_nonfinite, reach it as the constants it passes on)."""

COMPANIONS: dict[tuple[str, object], dict[str, Any]] = {
    ("launch.device", "cuda"): {},
    ("launch.scheduler", "kubernetes"): {"launch": {"kubernetes": {"image": "registry/a:1"}}},
    ("data.tokenizer", "tok.tiktoken"): {"model": {"vocab_size": 257}},
    ("model.transformer_impl", "transformer_engine"): {"launch": {"device": "cuda"}},
    ("optimizer.name", "sgd"): {},
    ("scheduler.style", "maxtext"): {"scheduler": {"maxtext": {}}},
    ("scheduler.style", "optax"): {"scheduler": {"optax": [{"kind": "constant", "value": 1e-3}]}},
    ("data.kind", "indexed"): INDEXED,
    ("data.kind", "sft"): {"data": {**INDEXED["data"], "kind": "sft"}},
    ("data.packing", True): {"data": {**INDEXED["data"], "kind": "sft"}},
    ("scheduler.decay", "wsd"): {"scheduler": {"wsd_decay_iters": 2}},
    ("optimizer.semantics", "optax"): OPTAX,
    ("train.mode", "finetune"): PREFIX_CONTEXT["init.checkpoint."],
    ("init.checkpoint.optimizer_type", "adam_pax"): {"init": {"checkpoint": {"optimizer_state": True}}},
    ("init.checkpoint.optimizer_type", "adamw"): {"init": {"checkpoint": {"optimizer_state": True}}},
    ("precision.fp8", None): {},
    ("profile.memory_snapshot", True): {"launch": {"device": "cuda"}},
    ("profile.nvtx", True): {"launch": {"device": "cuda"}},
    ("model.gelu_approximation", "tanh"): {},
    ("model.num_experts", 4): MOE,
    ("peft.adapter", "adapter"): {"init": {"checkpoint": {"format": "huggingface", "path": "hf"}}},
    ("peft.adapter", None): {"init": {"checkpoint": {"format": "huggingface", "path": "hf"}}},
    ("offload.activations", True): {"offload": {"num_layers": 1}},
    ("offload.weights", True): {"offload": {"num_layers": 1}},
    ("recompute.granularity", "full"): {"recompute": {"method": "uniform", "num_layers": 1}},
    ("recompute.method", "uniform"): {"recompute": {"granularity": "full", "num_layers": 1}},
    ("recompute.method", "block"): {"recompute": {"granularity": "full", "num_layers": 1}},
}
"""Settings a value needs to be valid (merged after the field's context)."""

for _kind, _fields in PIECES.items():
    COMPANIONS[("scheduler.optax.kind", _kind)] = {"scheduler": {"optax": [{"kind": _kind, **_fields}]}}
COMPANIONS.update({("precision.fp8", recipe): {} for recipe in get_args(spec.Fp8Recipe)})

# [distill.teacher] has [model]'s keys: the same values, in the same contexts moved under the teacher.
# Its weights from a Megatron-LM checkpoint, whose architecture is compared at load time: any [model] value is a
# valid teacher there (the Hugging Face and Orbax loaders read Llama-family decoders only).
TEACHER = {**BASE["model"], "checkpoint": {"format": "megatron", "path": "ckpt/1/items"}}
ORBAX_TEACHER = {**TEACHER, **LLAMA["model"], "checkpoint": {"format": "orbax", "path": "ckpt/1/items"}}
PREFIX_CONTEXT["distill.teacher.checkpoint."] = {"distill": {"teacher": ORBAX_TEACHER}}
PREFIX_CONTEXT["distill."] = {"distill": {"teacher": TEACHER}}


def _under_teacher(context: dict[str, Any]) -> dict[str, Any]:
    """A [model] context for the teacher's same key: its model keys under [distill.teacher]."""
    moved = {table: keys for table, keys in context.items() if table != "model"}
    return {**moved, "distill": {"teacher": {**TEACHER, **context.get("model", {})}}}


for _path in [path for path in VALUES if path.startswith("model.")]:
    VALUES["distill.teacher." + _path.removeprefix("model.")] = VALUES[_path]
for _path, _context_of in list(CONTEXT.items()):
    if _path.startswith("model."):
        CONTEXT["distill.teacher." + _path.removeprefix("model.")] = _under_teacher(_context_of)
for (_path, _value), _companion in list(COMPANIONS.items()):
    if _path.startswith("model."):
        COMPANIONS[("distill.teacher." + _path.removeprefix("model."), _value)] = _under_teacher(_companion)
COMPANIONS[("distill.teacher.vocab_size", 200)] = {"model": {"vocab_size": 200}}  # the teacher's is the student's
VALUES.update(
    {
        "distill.temperature": [1.0, 2.0],
        "distill.kd_loss_scale": [1.0, 0.5],
        "distill.skip_lm_loss": [False, True],
        "distill.teacher.checkpoint.path": ["ckpt/1/items", "ckpt/2/items"],
        "distill.teacher.checkpoint.format": ["orbax", "megatron", "huggingface"],
        "distill.teacher.checkpoint.param_scan_axis": [1, 0],
        "distill.layers.student": [3, 2],
        "distill.layers.teacher": [3, 1],
        "distill.layers.scale": [1.0, 0.5],
    }
)
for _key in ("student", "teacher", "loss", "scale"):  # one [[distill.layers]] pair, varied key by key
    CONTEXT[f"distill.layers.{_key}"] = {"distill": {"teacher": TEACHER, "layers": [{"student": 3, "teacher": 3}]}}
NOT_BUILT: dict[str, str] = {
    "distill.teacher.logits_multiplier": "refused (rule_teacher_logits_multiplier)",
    "distill.teacher.checkpoint.optimizer_state": "the teacher has no optimizer (rule_teacher_checkpoint)",
    "distill.teacher.dropout": "the frozen teacher runs in eval mode (rule_teacher_frozen_settings)",
    "distill.teacher.init_method_std": "the teacher's weights are loaded (rule_teacher_frozen_settings)",
    "distill.teacher.checkpoint.optimizer_type": "optimizer_state only, which the teacher has not "
    "(rule_teacher_checkpoint)",
}
"""Fields validation refuses any value but the default of, with the rule that does: nothing to walk."""
for _path in NOT_BUILT:
    VALUES.pop(_path, None)
REFUSED: dict[tuple[str, object], str] = {
    ("distill.teacher.query_scaling", "initial_weights"): "the teacher's weights load as stored "
    "(rule_teacher_query_scaling)",
}
"""Values of an enumerated field that validation refuses in every context, with the rule that does."""

CONTEXT["scheduler.optax.kind"] = {"scheduler": {"style": "optax"}}
CONTEXT["precision.fp8"] = {**CUDA_TE, "precision": {"dtype": "bf16"}}


# --------------------------------------------------------------------------------------------
# The walk.


@attrs.frozen
class Field:
    path: str
    type: Any


def _leaves(cls: type, prefix: str = "") -> list[Field]:
    found = []
    hints = typing.get_type_hints(cls)
    for field in attrs.fields(cls):
        kind = hints[field.name]
        inner = _table_class(kind)
        path = f"{prefix}{field.name}"
        if inner is not None:
            found += _leaves(inner, path + ".")
        else:
            found.append(Field(path=path, type=kind))
    return found


def _table_class(kind: Any) -> type | None:
    """The spec class a field holds (itself, optional, or a tuple of them), or None for a value."""
    candidates = [kind]
    if get_origin(kind) in (typing.Union, types.UnionType):
        candidates = [arg for arg in get_args(kind) if arg is not type(None)]
    if get_origin(kind) is tuple and len(get_args(kind)) == 2 and get_args(kind)[1] is Ellipsis:
        candidates = [get_args(kind)[0]]
    for candidate in candidates:
        if attrs.has(candidate):
            return candidate
    return None


def _literal_values(kind: Any) -> list[Any] | None:
    if get_origin(kind) is Literal:
        return list(get_args(kind))
    if get_origin(kind) in (typing.Union, types.UnionType):
        args = [arg for arg in get_args(kind) if arg is not type(None)]
        if len(args) == 1 and get_origin(args[0]) is Literal:
            return [None, *get_args(args[0])]
    return None


FIELDS = _leaves(spec.Spec)
ENUMERATED = [f for f in FIELDS if _literal_values(f.type) is not None]


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted path; a list of tables along the way gets the value in its first element."""
    keys = path.split(".")
    node: Any = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        node = child[0] if isinstance(child, list) else child
    if value is None:
        node.pop(keys[-1], None)
    else:
        node[keys[-1]] = value


def _context(path: str) -> dict[str, Any]:
    if path in CONTEXT:
        return CONTEXT[path]
    for prefix, context in PREFIX_CONTEXT.items():
        if path.startswith(prefix):
            return context
    return {}


def _script(path: str, value: Any) -> str:
    data = copy.deepcopy(BASE)
    _merge(data, _context(path))
    hashable = not isinstance(value, (dict, list))
    _merge(data, COMPANIONS.get((path, value), {}) if hashable else {})
    _set(data, path, value)
    result = front(dump_toml(data), FILES)
    errors = [d for d in result.diagnostics if d.severity == "error"]
    assert result.spec is not None and not errors, f"{path} = {value!r}: not a valid spec: {errors}"
    context = SpecContext(file="spec.toml", spec_dir=SPEC_DIR, files=FILES)
    target = attrs.evolve(TARGET, tokenizer=tokenizer_info(result.spec, context))
    # The script and the scheduler's job file: [launch] scheduler and its tables change the job file.
    return render(lower(result.spec, target)) + "".join(job.text for job in job_files(result.spec, target))


def _values(field: Field) -> list[Any]:
    literal = _literal_values(field.type)
    if literal is None:
        return VALUES[field.path]
    return [value for value in literal if (field.path, value) not in REFUSED]


def test_every_field_is_walked() -> None:
    """A new spec field needs values here (or a place in RUNTIME_ONLY, with its reason)."""
    missing = [
        f.path for f in FIELDS if _literal_values(f.type) is None and f.path not in VALUES and f.path not in NOT_BUILT
    ]
    assert missing == []
    assert set(VALUES) <= {f.path for f in FIELDS}, "VALUES names a field the spec no longer has"
    assert set(RUNTIME_ONLY) <= {f.path for f in FIELDS}


def test_every_spec_literal_is_a_lowering_enum() -> None:
    """The spec's Literal types and the enums lowering dispatches on hold the same values."""
    for name, alias in vars(spec).items():
        if get_origin(alias) is not Literal:
            continue
        kind = getattr(choices, name)
        assert issubclass(kind, enum.Enum)
        assert [member.value for member in kind] == list(get_args(alias)), name
    assert get_args(typing.get_type_hints(spec.Model)["kind"]) == tuple(m.value for m in choices.ModelKind)


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f.path)
def test_every_value_compiles_to_its_own_script(field: Field) -> None:
    if field.path in NOT_BUILT:
        return
    values = _values(field)
    scripts = {}
    for value in values:
        scripts.setdefault(_script(field.path, value), []).append(value)
    same = [group for group in scripts.values() if len(group) > 1]
    if field.path in RUNTIME_ONLY:
        return
    assert same == [], f"{field.path}: these values compile to the same script: {same}"
    assert len(values) >= 2 or field.path in SINGLE_VALUED, f"{field.path}: give it at least two values"


SINGLE_VALUED = {
    "model.kind": "one model family so far",
    "distill.teacher.kind": "one model family so far",
    "loss.kind": "one loss so far",
    "init.checkpoint.layout": "one layout so far",
    "distill.teacher.checkpoint.layout": "one layout so far",
}
"""Enumerations with one member: nothing to tell apart (a second member makes them two-valued here)."""
