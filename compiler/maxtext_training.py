"""[train], [optimizer], [scheduler], [precision], [data], [loss], [checkpoint] and [init.checkpoint] from a MaxText
config, and the gates checked last.
"""

from __future__ import annotations

import attrs

from bridgec.compiler.maxtext_blocks import WITH_PARAM_PATHS, DecoderBlock
from bridgec.compiler.maxtext_keys import GATES
from bridgec.compiler.maxtext_read import ConfigReader, show
from bridgec.runtime.models import gpt

_ADAM_KEYS = ("adam_b1", "adam_b2", "adam_eps", "adam_eps_root", "adam_weight_decay", "adamw_mask")


@attrs.frozen(kw_only=True)
class RunLength:
    steps: int
    """Training steps (MaxText's steps, or learning_rate_schedule_steps when steps is -1)."""
    schedule_steps: int
    """The schedule's length: learning_rate_schedule_steps, or steps."""


def map_train(reader: ConfigReader) -> RunLength:
    steps = reader.get("steps")
    schedule_steps = reader.get("learning_rate_schedule_steps")
    if steps == -1:
        steps = schedule_steps
    if steps is None or steps < 1:
        reader.refuse("steps", "steps and learning_rate_schedule_steps are both -1: the run has no length")
        steps = 1
    length = RunLength(steps=int(steps), schedule_steps=int(steps if schedule_steps == -1 else schedule_steps))
    reader.put("train", "iters", length.steps, reader.src("steps"))
    interval = reader.get("eval_interval", -1)
    eval_steps = reader.get("eval_steps", -1)
    if interval and interval > 0:
        reader.put("train", "eval_interval", int(interval), reader.src("eval_interval"))
        if eval_steps and eval_steps > 0:
            reader.put("train", "eval_iters", int(eval_steps), reader.src("eval_steps"))
        else:
            reader.note("eval_steps = -1 (MaxText evaluates the whole eval split): set [train] eval_iters")
    else:
        reader.mark_inactive("eval_steps", "no evaluation (eval_interval -1)")
    on_nan, on_inf = bool(reader.get("abort_on_nan_loss")), bool(reader.get("abort_on_inf_loss"))
    stop = on_nan or on_inf
    reader.put(
        "train",
        "on_nonfinite",
        "stop" if stop else "skip",
        reader.src("abort_on_nan_loss", "abort_on_inf_loss")
        + ("" if stop else "; MaxText would go on training with the non-finite values"),
    )
    return length


def map_optimizer(reader: ConfigReader, block: DecoderBlock) -> None:
    kind = reader.get("opt_type")
    lr = float(reader.get("learning_rate"))
    clip = float(reader.get("gradient_clipping_threshold") or 0.0)
    mask = list(reader.get("adamw_mask") or [])
    if kind == "muon":
        reader.refuse("opt_type", "opt_type muon has no counterpart in bridgec", "use adamw, adam_pax or sgd")
        return
    if kind not in ("adamw", "adam_pax", "sgd"):
        reader.refuse("opt_type", f"opt_type {kind!r} is not a MaxText optimizer bridgec knows")
        return
    if kind == "sgd":
        reader.put("optimizer", "name", "sgd", "opt_type sgd: optax.sgd(lr), no momentum, no weight decay")
        reader.put("optimizer", "lr", lr, reader.src("learning_rate"))
        reader.put("optimizer", "sgd_momentum", 0.0, "optax.sgd's default momentum (None)")
        reader.put("optimizer", "weight_decay", 0.0, "optax.sgd has no weight decay")
        reader.put("optimizer", "clip_grad", clip, reader.src("gradient_clipping_threshold"))
        reader.skip(_ADAM_KEYS, "only Adam-type optimizers read it")
        return
    reader.put("optimizer", "name", "adam", f"opt_type {kind}")
    reader.put("optimizer", "semantics", "optax", "optax.adamw's arithmetic, as MaxText runs it")
    reader.put("optimizer", "lr", lr, reader.src("learning_rate") + ": the peak of [scheduler.maxtext]")
    reader.put(
        "optimizer", "betas", [float(reader.get("adam_b1")), float(reader.get("adam_b2"))], "MaxText adam_b1, adam_b2"
    )
    reader.put("optimizer", "eps", float(reader.get("adam_eps")), reader.src("adam_eps"))
    reader.put("optimizer", "eps_root", float(reader.get("adam_eps_root") or 0.0), reader.src("adam_eps_root"))
    reader.put(
        "optimizer",
        "weight_decay",
        float(reader.get("adam_weight_decay")),
        reader.src("adam_weight_decay") + ": multiplied by the scheduled lr, as optax does",
    )
    reader.put(
        "optimizer", "clip_grad", clip, reader.src("gradient_clipping_threshold") + ": optax.clip_by_global_norm"
    )
    if kind == "adam_pax":
        reader.caveat(
            "opt_type adam_pax keeps bias-corrected moments (pax's bias_corrected_decay); in exact arithmetic "
            "that is Adam's bias correction, so it imports as optax semantics (equal to fp32 rounding)"
        )
    _decay_mask(reader, block, mask)


def _decay_mask(reader: ConfigReader, block: DecoderBlock, mask: list[str]) -> None:
    nnx = bool(reader.get("pure_nnx"))
    scanned = bool(reader.get("scan_layers"))
    if not mask:
        reader.caveat(
            "adamw_mask is empty: every parameter decays, MaxText's default (Megatron's own rule "
            "would skip biases and norms)"
        )
        return
    if not block.param_paths:
        reader.refuse(
            "adamw_mask",
            f"adamw_mask with decoder_block {block.name!r}: its MaxText parameter paths "
            f"are not mapped (bridgec.runtime.models.gpt covers {', '.join(WITH_PARAM_PATHS)})",
            "set adamw_mask=[] (every parameter decays) or use a llama2/mistral/qwen3 block",
        )
    reader.put("optimizer.decay_mask", "exclude", mask, reader.src("adamw_mask") + " (re.search over paths)")
    reader.put("optimizer.decay_mask", "paths", "nnx" if nnx else "linen", reader.src("pure_nnx"))
    reader.put("optimizer.decay_mask", "scan_layers", scanned, reader.src("scan_layers"))


def map_scheduler(reader: ConfigReader, length: RunLength, variant_asked: str | None) -> None:
    kind = reader.get("lr_schedule_type")
    warmup = float(reader.get("warmup_steps_fraction"))
    legacy = "learning_rate_final_fraction" not in reader.config
    final_key = "cosine_learning_rate_final_fraction" if legacy else "learning_rate_final_fraction"
    final = float(reader.get(final_key))
    reader.mark_read("cosine_learning_rate_final_fraction")
    variant = variant_asked or ("2025" if legacy else "2026-02")
    reader.put("scheduler", "style", "maxtext", "MaxText's create_learning_rate_schedule")
    reader.put("scheduler.maxtext", "kind", kind, reader.src("lr_schedule_type"))
    reader.put("scheduler.maxtext", "warmup_steps_fraction", warmup, reader.src("warmup_steps_fraction"))
    reader.put("scheduler.maxtext", "final_fraction", final, reader.src(final_key))
    if length.schedule_steps != length.steps:
        reader.put(
            "scheduler.maxtext",
            "schedule_steps",
            length.schedule_steps,
            reader.src("learning_rate_schedule_steps") + ": lr 0 from this update on",
        )
    if kind == "wsd":
        fraction = float(reader.get("wsd_decay_steps_fraction"))
        if warmup + fraction > 1.0:
            reader.refuse(
                "wsd_decay_steps_fraction",
                f"Invalid WSD schedule: warmup_steps_fraction ({warmup}) + wsd_decay_steps_fraction "
                f"({fraction}) must not exceed 1.0. Current sum: {warmup + fraction}",
            )
        reader.put("scheduler.maxtext", "wsd_decay_steps_fraction", fraction, reader.src("wsd_decay_steps_fraction"))
        reader.put("scheduler.maxtext", "wsd_decay_style", reader.get("wsd_decay_style"), reader.src("wsd_decay_style"))
    elif kind == "cosine":
        reader.skip(("wsd_decay_steps_fraction", "wsd_decay_style"), "only lr_schedule_type wsd reads it")
    else:
        reader.refuse("lr_schedule_type", f"lr_schedule_type {kind!r} is not cosine or wsd")
    if variant == "2025" and kind == "wsd":
        reader.refuse("lr_schedule_type", "the 2025 schedule variant has no wsd", "pick variant 2026-01 or 2026-02")
    reader.put(
        "scheduler.maxtext",
        "variant",
        variant,
        "base.yml still names cosine_learning_rate_final_fraction: MaxText before 2026-01"
        if legacy and variant_asked is None
        else "MaxText's formula as of this month (see the docs)",
    )


def map_precision(reader: ConfigReader) -> None:
    dtype = reader.get("dtype")
    mapped = {"bfloat16": "bf16", "float32": "fp32", "float16": "fp16"}.get(dtype)
    if mapped is None:
        reader.refuse("dtype", f"dtype {dtype!r} is not bfloat16, float16 or float32")
        return
    weights = reader.get("weight_dtype")
    if weights != "float32":
        reader.refuse(
            "weight_dtype",
            f"weight_dtype {weights!r}: parameters without an fp32 copy have no "
            "counterpart (megatron-core keeps fp32 main weights)",
            "set weight_dtype=float32",
        )
    reader.put("precision", "dtype", mapped, reader.src("dtype", "weight_dtype") + ": fp32 main weights")


def map_data(reader: ConfigReader) -> None:
    kind = reader.get("dataset_type")
    reader.put("data", "kind", "mock", "MaxText synthetic data" if kind == "synthetic" else "placeholder, see below")
    if kind == "synthetic":
        reader.caveat("dataset_type synthetic: megatron-core's mock dataset is synthetic too, not the same tokens")
        reader.skip(("packing",), "synthetic data is not packed from documents")
        return
    reader.note(
        f"dataset_type {kind!r}: convert the corpus with MaxText's tokenizer (tokenizer_path "
        f"{show(reader.config.get('tokenizer_path'))}) to megatron indexed datasets (.bin/.idx) and set [data] "
        'kind = "indexed" with [[data.sources]]; the spec trains on mock data until then'
    )
    if reader.get("packing"):
        _map_packing(reader)


def _map_packing(reader: ConfigReader) -> None:
    """MaxText's packing (segment ids: positions and attention restart per document) is [data] document_masking."""
    mapped = {key: value for table in ("model", "parallel") for key, value, _ in reader.tables.get(table, [])}
    pipeline = max(1, (mapped.get("mesh") or {}).get("stage", 1)) * max(
        1, (mapped.get("dcn_mesh") or {}).get("stage", 1)
    )
    if mapped.get("transformer_impl") == "transformer_engine" or pipeline > 2 or "virtual_pipeline" in mapped:
        reader.note(
            "packing true: MaxText packs documents with segment ids, so attention and positions restart at each "
            "document; bridgec's [data] document_masking does the same, but only with megatron-core's local "
            "attention and at most 2 pipeline stages, which this layout does not have, so documents attend "
            "across each other here"
        )
        return
    reader.put(
        "data",
        "document_masking",
        True,
        reader.src("packing") + ": positions and attention restart at each document, as MaxText's segment ids do",
    )


def map_loss(reader: ConfigReader) -> None:
    z = float(reader.get("z_loss_multiplier") or 0.0)
    reader.put(
        "loss",
        "reduction",
        "per_token",
        "MaxText divides the summed token losses of all accumulation steps by their token count",
    )
    reader.put("loss", "z_loss_multiplier", z, reader.src("z_loss_multiplier"))


def map_checkpoints(reader: ConfigReader, block: DecoderBlock) -> None:
    """[checkpoint] from MaxText's checkpointing; [init.checkpoint] from the checkpoint it loads."""
    enabled = bool(reader.get("enable_checkpointing"))
    period = reader.get("checkpoint_period")
    keep = reader.get("max_num_checkpoints_to_keep")
    output = reader.get("base_output_directory") or ""
    if enabled:
        where = f"{output.rstrip('/')}/{{run_name}}/checkpoints" if output else "{run_name}/checkpoints"
        reader.put(
            "checkpoint",
            "dir",
            "checkpoints",
            f"MaxText wrote Orbax checkpoints to {where}; this is megatron-core's format",
        )
        reader.put("checkpoint", "save_interval", int(period), reader.src("checkpoint_period"))
        reader.put("checkpoint", "resume", True, "MaxText resumes from the run's latest checkpoint")
        if isinstance(keep, int) and keep > 0:
            reader.put("checkpoint", "keep_last", keep, reader.src("max_num_checkpoints_to_keep"))
    params = reader.get("load_parameters_path") or ""
    full = reader.get("load_full_state_path") or ""
    if params and full:
        reader.refuse(
            "load_full_state_path",
            "load_parameters_path and load_full_state_path are both set (MaxText refuses this too)",
        )
    elif (params or full) and block.name not in gpt.MAXTEXT_BLOCKS:
        key = "load_parameters_path" if params else "load_full_state_path"
        reader.refuse(
            key,
            f"{key} with decoder_block {block.name!r}: bridgec reads the checkpoints of MaxText's "
            f"{', '.join(gpt.MAXTEXT_BLOCKS)} blocks; {block.name}'s checkpoint layout is not mapped",
            f"import without {key} (the spec then starts from megatron's initializers)",
        )
    elif params or full:
        path = params or full
        _refuse_unmapped_tree(reader, block, "load_parameters_path" if params else "load_full_state_path")
        reader.put("init.checkpoint", "format", "orbax")
        reader.put(
            "init.checkpoint", "path", path, reader.src("load_parameters_path" if params else "load_full_state_path")
        )
        reader.put("init.checkpoint", "layout", "maxtext")
        reader.put(
            "init.checkpoint",
            "optimizer_state",
            bool(full),
            "full state: Adam moments and step too" if full else "parameters only",
        )
        if str(path).startswith("gs://"):
            reader.note(f"{path}: copy the checkpoint to a local folder and point [init.checkpoint] path at it")
    else:
        reader.caveat(
            "initial weights: bridgec's own init ([init] scheme portable), not MaxText's "
            "initializers; set load_parameters_path to start from MaxText weights"
        )


def _refuse_unmapped_tree(reader: ConfigReader, block: DecoderBlock, key: str) -> None:
    """fused_qkv and fused_mlp change the checkpoint's tree: only gpt3's fused qkv_proj (its own layer) is mapped.

    attentions.py with fused_qkv stores one ``qkv_proj`` instead of query/key/value; gpt3.py without it stores
    biased query/key/value; linears.py MlpBlock with fused_mlp stores one ``wi`` [emb, activations, mlp].
    """
    fused_qkv = bool(reader.get("fused_qkv"))
    if fused_qkv != (block.name == "gpt3"):
        reader.refuse(
            "fused_qkv",
            f"fused_qkv = {str(fused_qkv).lower()} with decoder_block {block.name!r} and {key}: the checkpoint "
            f"stores {'one fused qkv_proj' if fused_qkv else 'separate query, key and value kernels'}, a layout "
            "bridgec does not map (it reads gpt3's fused qkv_proj and the other blocks' separate kernels)",
            f"import without {key}, or convert the checkpoint with fused_qkv = {str(not fused_qkv).lower()}",
        )
    positions, length = reader.get("trainable_position_size", -1), reader.get("max_target_length")
    if block.learned_positions and positions > 0 and positions != length:
        reader.refuse(
            "trainable_position_size",
            f"trainable_position_size {positions} with {key}: the checkpoint holds {positions} learned positions; "
            f"megatron-core's model holds max_target_length ({length}) of them, and a checkpoint is never cut",
            f"set max_target_length={positions}",
        )
    if reader.get("fused_mlp"):
        reader.refuse(
            "fused_mlp",
            f"fused_mlp = true with {key}: the checkpoint stores one mlp/wi [emb, activations, mlp], a layout "
            "bridgec does not map",
            f"import without {key}, or convert the checkpoint with fused_mlp = false",
        )


def check_gates(reader: ConfigReader) -> None:
    """Gates at neutral values are fine; the rest is ignored or unreviewed (reported by the renderer)."""
    for key, gate in GATES.items():
        if key not in reader.config or key in reader.used:
            continue
        value = reader.config[key]
        if value not in gate.neutral:
            reader.refuse(
                key,
                f"{key} = {show(value)} ({gate.what}) has no counterpart in bridgec",
                f"set {key}={show(gate.neutral[0])} to import",
            )
