"""A seeded generator of specs over bridgec's option space, for "accepted by the compiler implies runs".

``generate(seed)`` draws one spec the way a user might write it: model shapes,
layouts on one or two processes (data, distributed optimizer, tensor, pipeline
with and without a virtual pipeline, expert parallelism, JAX meshes), batch
shapes, optimizers and their semantics, every schedule style and variant,
the precisions that run on CPU, losses, mock data and indexed corpora (one to
three sources, a handful to a few hundred documents, blends, splits), checkpoint
and evaluation settings, early stops and hooks files. Draws are not filtered:
some specs are meant to be refused by ``bridgec validate`` (that is part of
what is tested), and every spec that is accepted must run.

The same seed gives the same spec on any machine (``random.Random(seed)``
only). Nothing here imports torch or megatron.

Left out of the option space, each for a reason:

* ``device = "cuda"``, ``transformer_impl = "transformer_engine"``, fp8, context
  parallelism and sequence parallelism: they need a GPU and Transformer Engine.
* ``[init.checkpoint]``: needs an Orbax checkpoint written by JAX
  (tests/runtime/test_maxtext_import.py covers it).
"""

from __future__ import annotations

import random
import string
from typing import Any

import attrs

from tests.compiler.conftest import dump_toml

HOOK_FORWARD_STEP = '''"""A forward step in Megatron Bridge's signature, as a user writes one."""

import functools

from bridgec.runtime.data import next_batch
from bridgec.runtime.loss import masked_token_loss
from bridgec.runtime.model import unwrap


def my_forward_step(state, data_iterator, model, return_schedule_plan=False):
    chunk = unwrap(model)
    batch = next_batch(data_iterator, pre_process=chunk.pre_process, post_process=chunk.post_process,
                       device=state.layout.device)
    output = model(batch.tokens, batch.position_ids, None, labels=batch.labels)
    return output, functools.partial(masked_token_loss, batch.loss_mask)
'''

HOOK_LOSS = '''"""A loss hook that wraps bridgec's own reducers."""

from bridgec.runtime.loss import masked_mean_loss, masked_token_loss


def my_token_loss(loss_mask, output_tensor):
    return masked_token_loss(loss_mask, output_tensor)


def my_mean_loss(loss_mask, output_tensor):
    return masked_mean_loss(loss_mask, output_tensor)
'''

HOOK_FILE_NAMES = (
    "my_hooks.py",
    "steps.py",
    "hooks/train_hooks.py",
    "my_hooks.py",
    "steps.py",
    "numpy.py",
    "torch.py",
    "megatron.py",
)
"""Mostly ordinary names; a few shadow a module the script imports and must be refused."""

SPLITS = (
    None,  # the default, [98, 1, 1]
    [100.0, 0.0, 0.0],
    [99.9, 0.1, 0.0],
    [99.0, 1.0, 0.0],
    [90.0, 10.0, 0.0],
    [80.0, 10.0, 10.0],
    [50.0, 50.0, 0.0],
    [1.0, 1.0, 1.0],
    [98.0, 0.0, 2.0],
)

CORPUS_SIZES = (1, 5, 60, 200, 400, 400, 1000, 1000)
"""Documents per generated corpus: small ones leave some splits without documents (refused)."""


@attrs.frozen(kw_only=True)
class Corpus:
    """A JSON-lines text corpus that ``bridgec data build`` turns into ``prefix``.bin/.idx/.json."""

    prefix: str
    documents: tuple[str, ...]


@attrs.frozen(kw_only=True)
class Generated:
    """One drawn spec and the files it names."""

    seed: int
    tables: dict[str, Any]
    corpora: tuple[Corpus, ...] = ()
    files: tuple[tuple[str, str], ...] = ()
    """(path relative to the spec's folder, text): hooks files."""

    def toml(self) -> str:
        return f"# bridgec spec generator, seed {self.seed}\n" + dump_toml(self.tables)

    @property
    def procs(self) -> int:
        return int(self.tables["launch"]["procs_per_node"])

    @property
    def iters(self) -> int:
        return int(self.tables["train"]["iters"])

    @property
    def eval_interval(self) -> int | None:
        return self.tables["train"].get("eval_interval")

    @property
    def stops_early_at(self) -> int | None:
        """The step after which ``exit_interval`` stops the first launch (exit 75), or None."""
        interval = self.tables["train"].get("exit_interval")
        return interval if interval is not None and interval < self.iters else None

    @property
    def resumes(self) -> bool:
        """Whether the run is launched a second time (it checkpoints and resumes)."""
        checkpoint = self.tables.get("checkpoint", {})
        return "dir" in checkpoint and bool(checkpoint.get("resume"))


def generate(seed: int) -> Generated:
    """The spec of ``seed``: always the same for the same seed."""
    r = random.Random(seed)
    procs = r.choice((1, 2, 2))
    layout = r.choice(
        ("single",)
        if procs == 1
        else ("data", "distributed_optimizer", "tensor", "pipeline", "virtual_pipeline", "expert", "mesh")
    )
    tables: dict[str, Any] = {
        "run": {"name": f"gen{seed}", "seed": r.randrange(2**31)},
        "launch": {"device": "cpu", "procs_per_node": procs},
    }
    parallel, data_parallel = _parallel(r, layout)
    moe = layout == "expert" or (layout in ("single", "data") and r.random() < 0.15)
    data, corpora = _data(r, seed)
    tables["model"] = _model(r, layout, moe, indexed=data["kind"] == "indexed")
    loss = _loss(r)
    if loss["reduction"] != "per_token" and r.random() < 0.8:
        tables["model"].pop("logits_multiplier", None)  # MaxText's loss is per-token only (mostly kept valid)
    if parallel:
        tables["parallel"] = parallel
    tables["batch"] = _batch(r, layout, data_parallel)
    tables["train"] = _train(r)
    tables["optimizer"], tables["scheduler"] = _optimizer_and_schedule(
        r, tables["train"]["iters"], llama=_llama_family(tables["model"])
    )
    if not tables["scheduler"]:
        del tables["scheduler"]
    dtype = r.choice(("fp32", "fp32", "bf16", "fp16"))
    if dtype != "fp32":
        tables["precision"] = {"dtype": dtype}
    tables["data"] = data
    tables["loss"] = loss
    checkpoint = _checkpoint(r)
    if checkpoint and tables["optimizer"].get("name") == "sgd" and r.random() < 0.8:
        checkpoint = {}  # megatron-core cannot checkpoint SGD (refused): mostly left out
    if checkpoint:
        tables["checkpoint"] = checkpoint
    else:  # a planned stop needs a checkpoint to resume from (refused without one)
        tables["train"].pop("exit_interval", None)
        tables["train"].pop("exit_duration_minutes", None)
    files: tuple[tuple[str, str], ...] = ()
    if r.random() < 0.15 and (r.random() < 0.2 or not _maxtext_loss(tables)):
        tables["hooks"], files = _hooks(r, tables["loss"]["reduction"])  # hooks replace MaxText's loss: mostly not both
    if r.random() < 0.3:
        tables["init"] = {"scheme": r.choice(("portable", "megatron"))}
    return Generated(seed=seed, tables=tables, corpora=corpora, files=files)


def _maxtext_loss(tables: dict[str, Any]) -> bool:
    return "z_loss_multiplier" in tables["loss"] or "logits_multiplier" in tables["model"]


def _parallel(r: random.Random, layout: str) -> tuple[dict[str, Any], int]:
    """The [parallel] table of a layout, and its data-parallel size."""
    match layout:
        case "single":
            return {}, 1
        case "data":
            return {}, 2
        case "distributed_optimizer":
            return {"distributed_optimizer": True}, 2
        case "tensor":
            return {"tensor": 2}, 1
        case "pipeline":
            return {"pipeline": 2}, 1
        case "virtual_pipeline":
            return {"pipeline": 2, "virtual_pipeline": 2}, 1
        case "expert":
            return {"expert": 2}, 2
        case "mesh":
            mesh = r.choice(
                (
                    {"data": -1},
                    {"fsdp": -1},
                    {"data": -1, "tensor": 2},
                    {"stage": 2, "data": -1},
                    {"data": 1, "fsdp": 2},
                )
            )
            data = 1 if "tensor" in mesh or "stage" in mesh else 2
            return {"mesh": mesh}, data
    raise ValueError(layout)


def _model(r: random.Random, layout: str, moe: bool, *, indexed: bool) -> dict[str, Any]:
    heads = r.choice((2, 4))
    layers = (
        4 if layout == "virtual_pipeline" else r.choice((2, 2, 4) if layout in ("pipeline", "mesh") else (1, 2, 2, 4))
    )
    model: dict[str, Any] = {
        "num_layers": layers,
        "hidden_size": r.choice((32, 64)),
        "num_attention_heads": heads,
        "vocab_size": r.choice((257, 300)) if indexed else r.choice((64, 100, 128)),
        "seq_length": r.choice((16, 32)),
    }
    optional: dict[str, Any] = {
        "num_query_groups": r.choice((None, None, 1, 2)),
        "head_dim": r.choice((None, None, 8, 16)),
        "ffn_hidden_size": r.choice((None, 48, 64, 96)),
        "normalization": r.choice(("layernorm", "rmsnorm")),
        "activation": r.choice(("gelu", "swiglu", "geglu")),
        "position_embedding": r.choice(("learned", "rope")),
        "tie_embeddings": r.choice((True, False)),
        "add_bias_linear": False if moe else r.choice((True, False)),
        "dropout": r.choice((0.0, 0.0, 0.1)),
        "qk_layernorm": r.random() < 0.2,
        "query_scaling": r.choice(("attention", "attention", "initial_weights", "none")),
        "make_vocab_size_divisible_by": r.choice((None, None, 1, 64)),
        "norm_epsilon": r.choice((None, 1e-6)),
        "init_method_std": r.choice((None, 0.01)),
        "logits_multiplier": r.choice((None, None, None, None, 0.5)),
    }
    if optional["activation"] != "swiglu" and r.random() < 0.3:
        optional["gelu_approximation"] = "tanh"
    if optional["position_embedding"] == "rope" and r.random() < 0.3:
        optional["rotary_base"] = 500000
    if moe:
        experts = r.choice((2, 4))
        optional["num_experts"] = experts
        optional["moe_router_topk"] = r.choice((1, 2))
    model.update({key: value for key, value in optional.items() if value is not None})
    return model


def _batch(r: random.Random, layout: str, data_parallel: int) -> dict[str, Any]:
    micro = r.choice((1, 2))
    count = r.choice((2, 4)) if layout == "virtual_pipeline" else r.choice((1, 2, 3))
    return {"global_batch_size": micro * data_parallel * count, "micro_batch_size": micro}


def _train(r: random.Random) -> dict[str, Any]:
    train: dict[str, Any] = {"iters": 2, "log_interval": r.choice((1, 2, 5))}
    if r.random() < 0.5:
        train["eval_interval"] = r.choice((1, 2, 3))
        train["eval_iters"] = r.choice((1, 2))
    if r.random() < 0.15:
        train["exit_interval"] = 1
    if r.random() < 0.1:
        train["exit_duration_minutes"] = 60.0
    if r.random() < 0.2:
        train["on_nonfinite"] = "stop"
    return train


def _llama_family(model: dict[str, Any]) -> bool:
    """Whether every parameter has a MaxText path (the parameter table, runtime/models/gpt.py), so decay-mask patterns can apply."""
    return (
        model.get("position_embedding") == "rope"
        and not model.get("add_bias_linear", True)
        and "num_experts" not in model
    )


def _optimizer_and_schedule(r: random.Random, iters: int, *, llama: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    semantics = r.choice(("megatron", "megatron", "optax"))
    optimizer: dict[str, Any] = {"lr": r.choice((1e-3, 3e-3))}
    if semantics == "megatron" and r.random() < 0.25:
        optimizer["name"] = "sgd"
        optimizer["sgd_momentum"] = r.choice((0.0, 0.9))
    else:
        optimizer["betas"] = r.choice(([0.9, 0.999], [0.9, 0.95]))
        if r.random() < 0.3:
            optimizer["eps"] = 1e-6
    optimizer["weight_decay"] = r.choice((0.0, 0.01, 0.1))
    optimizer["clip_grad"] = r.choice((0.0, 1.0, 1.0))
    if semantics == "optax":
        optimizer["semantics"] = "optax"
        optimizer["eps_root"] = r.choice((0.0, 1e-8))
        patterns = llama or r.random() < 0.1  # other models' parameters have no MaxText path: refused
        exclude = (
            r.choice(([], ["norm"], ["norm", "bias"], ["token_embedder"], ["scale"], ["query"])) if patterns else []
        )
        if exclude:
            optimizer["decay_mask"] = {
                "exclude": exclude,
                "paths": r.choice(("linen", "nnx")),
                "scan_layers": r.choice((True, False)),
            }
    style = r.choice(("megatron", "maxtext", "optax")) if semantics == "megatron" else r.choice(("maxtext", "optax"))
    if style == "megatron":
        schedule: dict[str, Any] = {"decay": r.choice(("constant", "linear", "cosine", "wsd"))}
        if schedule["decay"] == "wsd":
            schedule["wsd_decay_iters"] = r.choice((1, 2))
            schedule["wsd_decay_style"] = r.choice(("linear", "cosine", "exponential", "minus_sqrt"))
        warmup = r.choice((0, 0, 1))
        if warmup:
            schedule["warmup_iters"] = warmup
            if r.random() < 0.5:
                schedule["warmup_init_lr"] = 1e-5
        if r.random() < 0.3:
            schedule["decay_iters"] = r.choice((2, 10))
        if r.random() < 0.5:
            optimizer["min_lr"] = 1e-5
        return optimizer, schedule
    if style == "maxtext":
        kind = r.choice(("cosine", "wsd"))
        variant = r.choice(("2026-02", "2026-01", "2025")) if kind == "cosine" else r.choice(("2026-02", "2026-01"))
        table: dict[str, Any] = {
            "kind": kind,
            "variant": variant,
            "warmup_steps_fraction": r.choice((0.0, 0.1, 0.5, 1.0)),
            "final_fraction": r.choice((0.0, 0.1)),
        }
        if r.random() < 0.4:
            table["schedule_steps"] = r.choice((1, iters, iters + 3))
        if kind == "wsd":
            table["wsd_decay_steps_fraction"] = r.choice((0.0, 0.1, 0.5))
            table["wsd_decay_style"] = r.choice(("linear", "cosine"))
            if table["warmup_steps_fraction"] + table["wsd_decay_steps_fraction"] > 1.0:
                table["warmup_steps_fraction"] = 0.5
        return optimizer, {"style": "maxtext", "maxtext": table}
    lr = optimizer["lr"]
    pieces = r.choice(
        (
            [{"kind": "constant", "value": lr}],
            [{"kind": "linear", "init_value": 0.0, "end_value": lr, "transition_steps": r.choice((0, 1, 5))}],
            [
                {
                    "kind": "warmup_cosine_decay",
                    "init_value": 0.0,
                    "peak_value": lr,
                    "warmup_steps": 1,
                    "decay_steps": r.choice((2, 10)),
                    "end_value": lr / 10,
                }
            ],
            [
                {"kind": "linear", "init_value": 0.0, "end_value": lr, "transition_steps": 1, "boundary": 1},
                {"kind": "cosine_decay", "init_value": lr, "decay_steps": r.choice((1, 5)), "alpha": 0.1},
            ],
        )
    )
    return optimizer, {"style": "optax", "optax": pieces}


def _data(r: random.Random, seed: int) -> tuple[dict[str, Any], tuple[Corpus, ...]]:
    if r.random() < 0.5:
        data: dict[str, Any] = {"kind": "mock"}
        if r.random() < 0.05:
            data["split"] = r.choice([split for split in SPLITS if split is not None])  # refused: no effect
        return data, ()
    count = r.choice((1, 1, 2, 3))
    corpora = tuple(_corpus(r, f"data/gen{seed}_{index}") for index in range(count))
    data = {"kind": "indexed"}
    split = r.choice(SPLITS)
    if split is not None:
        data["split"] = split
    if r.random() < 0.3:
        data["eod_mask_loss"] = True
    data["sources"] = [{"prefix": corpus.prefix, "weight": r.choice((1.0, 0.25, 3.0))} for corpus in corpora]
    return data, corpora


def _corpus(r: random.Random, prefix: str) -> Corpus:
    documents = r.choice(CORPUS_SIZES)
    alphabet = string.ascii_lowercase + "  .,"
    length = r.choice((5, 40, 300))
    return Corpus(
        prefix=prefix,
        documents=tuple("".join(r.choice(alphabet) for _ in range(r.randint(1, length))) for _ in range(documents)),
    )


def _loss(r: random.Random) -> dict[str, Any]:
    reduction = r.choice(("per_token", "per_token", "per_microbatch"))
    loss: dict[str, Any] = {"reduction": reduction}
    if reduction == "per_token" and r.random() < 0.2:
        loss["z_loss_multiplier"] = 1e-4
    return loss


def _checkpoint(r: random.Random) -> dict[str, Any]:
    if r.random() >= 0.3:
        return {}
    checkpoint: dict[str, Any] = {"dir": "ckpt", "resume": r.choice((False, True, True))}
    if r.random() < 0.5:
        checkpoint["save_interval"] = 1
    if r.random() < 0.3:
        checkpoint["keep_last"] = 1
    return checkpoint


def _hooks(r: random.Random, reduction: str) -> tuple[dict[str, Any], tuple[tuple[str, str], ...]]:
    name = r.choice(HOOK_FILE_NAMES)
    if r.random() < 0.5:
        return {"file": name, "forward_step": "my_forward_step"}, ((name, HOOK_FORWARD_STEP),)
    function = "my_token_loss" if reduction == "per_token" else "my_mean_loss"
    return {"file": name, "loss": function}, ((name, HOOK_LOSS),)
