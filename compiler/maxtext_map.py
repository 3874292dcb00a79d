"""The mapping half of ``bridgec import maxtext``: one merged MaxText config -> spec tables with comments.

:class:`ConfigMapper` reads each key the spec has a counterpart for (marking it
used), writes spec values with a comment naming the MaxText source, and refuses
what cannot be reproduced. :mod:`bridgec.compiler.maxtext` merges the files and
renders the tables; :mod:`bridgec.compiler.maxtext_keys` classifies the rest.
The MaxText code each rule follows is named where it is applied (commit e591f30).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from bridgec.compiler.maxtext_keys import GATES, MOE_KEYS
from bridgec.compiler.mesh import lower_mesh

_LLAMA_FAMILY = ("llama2", "mistral", "qwen3")
"""Decoder blocks whose MaxText parameter paths bridgec.runtime.param_paths maps (adamw_mask needs them)."""
_BLOCKS = (*_LLAMA_FAMILY, "mixtral", "gemma", "gpt3")
_ACTIVATIONS = {("silu", "linear"): ("swiglu", "none"), ("gelu", "linear"): ("geglu", "tanh"), ("gelu",): ("gelu", "tanh")}
_MESH_KEYS = {
    "diloco": "diloco", "data": "data", "stage": "pipeline", "fsdp": "fsdp", "fsdp_transpose": "fsdp_transpose",
    "sequence": "sequence", "context": "context", "context_usp_ulysses": "context_usp_ulysses",
    "context_autoregressive": "context_autoregressive", "tensor": "tensor", "tensor_sequence": "tensor_sequence",
    "model": "tensor", "expert": "expert", "autoregressive": "autoregressive",
}
"""Mesh axis -> the <x> of MaxText's ici_<x>_parallelism / dcn_<x>_parallelism (configs/types.py)."""
_MOE_AS_MIXTRAL: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "capacity_factor": (
        "dropless routing (<= 0); megatron-core's capacity factor has no spec field", lambda v: v <= 0),
    "load_balance_loss_weight": (
        "no load-balancing loss (0); megatron-core's moe_aux_loss_coeff has no spec field", lambda v: v == 0),
    "norm_topk_prob": ("unnormalised top-k weights (false)", lambda v: v is False),
    "first_num_dense_layers": ("every layer MoE (0)", lambda v: v == 0),
    "shared_experts": ("no shared experts (0)", lambda v: v == 0),
    "routed_bias": ("no routing bias (false)", lambda v: v is False),
    "routed_score_func": ("softmax routing ('')", lambda v: v in ("", None)),
    "n_routing_groups": ("no group-limited routing (-1)", lambda v: v == -1),
    "use_random_routing": ("learned routing (false)", lambda v: v is False),
    "interleave_moe_layer_step": ("every layer MoE (1)", lambda v: v == 1),
    "routed_scaling_factor": ("unscaled routing weights (1.0)", lambda v: v == 1.0),
    "moe_expert_input_dim": ("experts on the full hidden size (-1)", lambda v: v == -1),
}
"""MoE keys and the values mixtral's routing has, which megatron-core's MoE defaults reproduce."""


@attrs.frozen(kw_only=True)
class ImportProblem:
    """Why a config does not import: the MaxText key, what is wrong, and what would import."""

    key: str
    message: str
    hint: str | None = None


def maxtext_value(value: Any) -> Any:
    """MaxText turns the string "none" (any case) into None (pyconfig._prepare_for_pydantic)."""
    return None if isinstance(value, str) and value.lower() == "none" else value


def _scales(scale: Any) -> tuple[int, int, int, int] | str:
    """MaxText's get_individual_scales: (emb, heads, mlp, layers) exponents, or the error text."""
    if not isinstance(scale, int) or scale <= 0 or 2 ** int(math.log2(scale)) != scale:
        return (
            "Global parameter scale should be a power of two. If you want finer grained control of the model sizes "
            "then you can explicitly set base_embed_dim, base_num_query_heads, base_num_kv_heads, base_mlp_dim, "
            "base_num_decoder_layers and/or head_dim."
        )
    base, rem = divmod(int(math.log2(scale)), 3)
    heads = base + int(rem > 0)
    return base + int(rem > 1), heads, heads, base


Entry = tuple[str, Any, str]
"""(spec key, value, comment)."""


class ConfigMapper:
    """Maps one merged config: spec tables with comments, notes, caveats, errors, and what happened to each key.

    :func:`bridgec.compiler.maxtext.import_maxtext` runs it and renders the result.
    """

    def __init__(self, *, config: dict[str, Any], origin: dict[str, str], names: dict[str, str], devices: int,
                 nodes: int | None, device: str, schedule_variant: str | None, model_label: str | None) -> None:
        self.config = config
        self.origin = origin
        self.names = names
        self.devices = devices
        self.nodes_arg = nodes
        self.device = device
        self.schedule_variant = schedule_variant
        self.model_label = model_label
        self.tables: dict[str, list[Entry]] = {}
        self.errors: list[ImportProblem] = []
        self.notes: list[str] = []
        self.caveats: list[str] = []
        self.used: set[str] = set()
        self.inactive: dict[str, str] = {}

    # -- reading keys -------------------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        return self.config.get(key, default)

    def src(self, *keys: str) -> str:
        """'key value (file)' for comments."""
        parts = []
        for key in keys:
            where = self.names[self.origin.get(key, "base")]
            parts.append(f"{key} {show(self.config.get(key))} ({where})")
        return "; ".join(parts)

    def put(self, table: str, key: str, value: Any, comment: str = "") -> None:
        self.tables.setdefault(table, []).append((key, value, comment))

    def refuse(self, key: str, message: str, hint: str | None = None) -> None:
        self.errors.append(ImportProblem(key=key, message=message, hint=hint))

    def skip(self, keys: Sequence[str], reason: str) -> None:
        """Keys read only by a feature this config keeps off."""
        for key in keys:
            if key in self.config and key not in self.used:
                self.used.add(key)
                self.inactive[key] = reason

    # -- the mapping --------------------------------------------------------------------------
    def run(self) -> None:
        self.run_table()
        self.launch_table()
        if not self.model_table():
            return
        self.parallel_and_batch()
        self.train_table()
        self.optimizer_table()
        self.scheduler_table()
        self.precision_table()
        self.data_table()
        self.loss_table()
        self.checkpoint_tables()
        self.check_the_rest()

    def run_table(self) -> None:
        run_name = self.get("run_name") or ""
        model_name = self.get("model_name") or "default"
        self.get("override_model_config")
        label = model_name if model_name != "default" else (self.model_label or "maxtext")
        name = run_name or label
        self.put("run", "name", name, self.src("run_name") if run_name else "MaxText's run_name is empty: the model's name")
        self.put("run", "seed", int(self.get("init_weights_seed", 0)), self.src("init_weights_seed"))
        self.put("run", "description", f"Imported from MaxText ({label})", self.src("model_name"))

    def launch_table(self) -> None:
        slices = self.get("num_slices", -1)
        nodes = self.nodes_arg if self.nodes_arg is not None else (slices if isinstance(slices, int) and slices > 0 else 1)
        if self.nodes_arg is not None and isinstance(slices, int) and slices > 0 and slices != self.nodes_arg:
            self.refuse("num_slices", f"num_slices = {slices} but the import was asked for {self.nodes_arg} nodes",
                        "give --nodes the slice count, or leave num_slices at -1")
        if self.devices < 1 or nodes < 1 or self.devices % nodes:
            self.refuse("num_slices", f"{self.devices} devices do not split evenly over {nodes} nodes",
                        "give --devices a multiple of --nodes")
            nodes = 1
        self.nodes = nodes
        self.procs_per_node = max(self.devices // nodes, 1)
        hardware = self.get("hardware")
        self.put("launch", "device", self.device, f"MaxText hardware {hardware!r}; the target is the import's --device")
        self.put("launch", "nodes", nodes, "MaxText slices (num_slices, or --nodes)")
        self.put("launch", "procs_per_node", self.procs_per_node, f"{self.devices} devices / {nodes} node(s)")

    def model_table(self) -> bool:
        """[model]; False when the decoder block or the scale cannot be mapped (nothing else is then read)."""
        block = self.get("decoder_block")
        if block not in _BLOCKS:
            self.refuse("decoder_block", f"decoder_block {block!r} is not mapped; bridgec maps {', '.join(_BLOCKS)}")
            return False
        self.block = block
        if not self.model_dimensions():
            return False
        gpt3 = block == "gpt3"
        self.put("model", "normalization", "layernorm" if gpt3 else "rmsnorm", f"decoder_block {block!r}")
        self.put("model", "norm_epsilon", float(self.get("normalization_layer_epsilon")),
                 self.src("normalization_layer_epsilon"))
        if gpt3:
            self.put("model", "norm_zero_centered", True, "gpt3's LayerNorm: scale starts at 0, applied as 1 + scale")
        self.model_activation()
        self.model_positions(gpt3)
        self.model_logits()
        self.put("model", "add_bias_linear", gpt3, "gpt3 blocks have biases" if gpt3 else f"{block} blocks have no biases")
        self.model_dropout()
        if gpt3 and self.device == "cuda":
            self.put("model", "transformer_impl", "transformer_engine",
                     "norm_zero_centered needs transformer-engine's norm (megatron-core's torch norm lacks it)")
        elif gpt3:
            self.notes.append(
                "gpt3's zero-centred LayerNorm (norm_zero_centered) needs a norm applying 1 + scale: megatron-core's "
                "local torch norm refuses layernorm_zero_centered_gamma, transformer-engine (cuda) has it"
            )
        self.model_experts()
        return True

    def model_dimensions(self) -> bool:
        """Sizes, scaled by global_parameter_scale as MaxText's get_individual_scales does; GQA; query scaling."""
        scale = self.get("global_parameter_scale", 1)
        scales = _scales(scale)
        if isinstance(scales, str):
            self.refuse("global_parameter_scale", scales)
            return False
        emb, heads_scale, mlp_scale, layer_scale = scales

        def scaled(key: str, exponent: int) -> tuple[int, str]:
            value = int(self.get(key)) * 2**exponent
            arithmetic = f" x 2^{exponent} (global_parameter_scale {scale})" if scale != 1 else ""
            return value, self.src(key) + arithmetic

        self.layers, comment = scaled("base_num_decoder_layers", layer_scale)
        self.put("model", "num_layers", self.layers, comment)
        self.hidden, comment = scaled("base_emb_dim", emb)
        self.put("model", "hidden_size", self.hidden, comment)
        heads, comment = scaled("base_num_query_heads", heads_scale)
        self.put("model", "num_attention_heads", heads, comment)
        kv_heads, comment = scaled("base_num_kv_heads", heads_scale)
        if kv_heads < 1 or heads % kv_heads:
            self.refuse("base_num_kv_heads", f"{heads} query heads are not a multiple of {kv_heads} key/value heads")
        self.put("model", "num_query_groups", kv_heads, comment)
        self.put("model", "head_dim", int(self.get("head_dim")), self.src("head_dim"))
        qk_norm = bool(self.get("use_qk_norm"))
        if qk_norm:
            self.put("model", "qk_layernorm", True, self.src("use_qk_norm") + ": per-head RMSNorm before RoPE")
        if self.block in ("llama2", "mistral", "mixtral", "gemma"):
            # attentions.py init_query_w: these blocks pass no query_pre_attn_scalar, so 1/sqrt(head_dim) goes into
            # the query kernel's init instead of the scores, and nowhere at all under use_qk_norm.
            why = "skips 1/sqrt(head_dim) under use_qk_norm" if qk_norm else "divides the query kernel by sqrt(head_dim)"
            self.put("model", "query_scaling", "none" if qk_norm else "initial_weights",
                     f"{self.block} attention does not scale its scores; init_query_w {why}")
        mlp, comment = scaled("base_mlp_dim", mlp_scale)
        self.put("model", "ffn_hidden_size", mlp, comment)
        self.put("model", "vocab_size", int(self.get("vocab_size")), self.src("vocab_size"))
        self.put("model", "make_vocab_size_divisible_by", 1, "MaxText does not pad the vocabulary (only to a multiple of TP)")
        self.seq = int(self.get("max_target_length"))
        self.put("model", "seq_length", self.seq, self.src("max_target_length"))
        return True

    def model_logits(self) -> None:
        tied = bool(self.get("logits_via_embedding"))
        normalize = bool(self.get("normalize_embedding_logits"))
        self.put("model", "tie_embeddings", tied, self.src("logits_via_embedding"))
        if tied and normalize:
            self.put("model", "logits_multiplier", 1.0 / math.sqrt(self.hidden),
                     f"normalize_embedding_logits true: tied logits / sqrt(emb_dim {self.hidden})")
        elif not tied:
            self.inactive["normalize_embedding_logits"] = "only applies to tied logits (logits_via_embedding false)"

    def model_activation(self) -> None:
        activations = tuple(self.get("mlp_activations") or ())
        mapped = _ACTIVATIONS.get(activations)
        if mapped is None:
            self.refuse("mlp_activations", f"mlp_activations {list(activations)} is not mapped",
                        'bridgec maps ["silu", "linear"] (SwiGLU), ["gelu", "linear"] (GeGLU) and ["gelu"]')
            return
        activation, approximation = mapped
        self.put("model", "activation", activation, self.src("mlp_activations"))
        if approximation != "none":
            self.put("model", "gelu_approximation", approximation, "MaxText's gelu is jax.nn.gelu, tanh-approximate")

    def model_positions(self, gpt3: bool) -> None:
        trainable = self.get("trainable_position_size", -1)
        if gpt3:
            if trainable <= 0:
                self.refuse("trainable_position_size", "gpt3 without trainable positions has no position signal here",
                            "set trainable_position_size >= max_target_length")
            elif trainable < self.seq:
                self.refuse("trainable_position_size", f"{trainable} learned positions < max_target_length {self.seq}")
            self.put("model", "position_embedding", "learned", self.src("trainable_position_size"))
            self.skip(("rope_max_timescale",), "gpt3 blocks use learned positions, not RoPE")
            return
        if trainable > 0:
            self.refuse("trainable_position_size", f"learned positions ({trainable}) on top of RoPE have no Megatron "
                        "counterpart", "set trainable_position_size=-1")
        theta = self.get("rope_max_timescale")
        self.put("model", "position_embedding", "rope", f"decoder_block {self.block!r}")
        self.put("model", "rotary_base", int(theta) if float(theta).is_integer() else theta, self.src("rope_max_timescale"))
        if float(theta) != int(float(theta)):
            self.refuse("rope_max_timescale", f"rope_max_timescale {theta} is not a whole number; [model] rotary_base is")

    def model_dropout(self) -> None:
        rate = float(self.get("dropout_rate", 0.0) or 0.0)
        enabled = bool(self.get("enable_dropout"))
        if enabled and rate > 0:
            self.refuse(
                "dropout_rate",
                f"dropout_rate {rate} with enable_dropout: MaxText drops whole hidden channels (broadcast over the "
                "sequence) of the embedding, the MLP hidden layer, each layer's output including its residual, and "
                "the final norm's output; megatron-core drops elements of the attention probabilities and of each "
                "branch before the residual add. There is no faithful counterpart",
                "set dropout_rate=0.0 or enable_dropout=false, and add [model] dropout by hand if you want Megatron's",
            )
            return
        why = "enable_dropout false" if not enabled else "dropout_rate 0"
        self.put("model", "dropout", 0.0, f"MaxText: {why} (megatron-core's own default would be 0.1)")

    def model_experts(self) -> None:
        experts = int(self.get("num_experts", 1))
        if experts <= 1:
            self.skip(MOE_KEYS, "only MoE models (num_experts > 1) read it")
            return
        if self.block != "mixtral":
            self.refuse("num_experts", f"MoE with decoder_block {self.block!r} is not mapped; bridgec maps mixtral's")
        for key, (meaning, matches) in _MOE_AS_MIXTRAL.items():
            value = self.get(key)
            if key in self.config and not matches(value):
                self.refuse(key, f"{key} = {show(value)}: bridgec maps MoE with {meaning}")
        moe_dim = self.get("base_moe_mlp_dim", -1)
        if moe_dim not in (-1, self.config.get("base_mlp_dim")):
            self.refuse("base_moe_mlp_dim", f"base_moe_mlp_dim {moe_dim} differs from base_mlp_dim: the spec has no "
                        "separate expert MLP width (megatron-core's moe_ffn_hidden_size)")
        self.skip(("routed_bias_update_rate", "topk_routing_group"), "only DeepSeek-style routing reads it")
        self.put("model", "num_experts", experts, self.src("num_experts"))
        self.put("model", "moe_router_topk", int(self.get("num_experts_per_tok")), self.src("num_experts_per_tok"))
        self.caveats.append(
            "MoE: megatron-core's defaults match MaxText's mixtral routing (top-k of the router logits, then softmax "
            "over the k; dropless; no auxiliary loss). Expert weights are separate parameters in Megatron and one "
            "stacked leaf in MaxText"
        )

    def parallel_and_batch(self) -> None:
        axes = self.get("mesh_axes") or []
        ici: dict[str, int] = {}
        dcn: dict[str, int] = {}
        for axis in axes:
            name = _MESH_KEYS.get(axis)
            if name is None:
                self.refuse("mesh_axes", f"mesh axis {axis!r} is not one of MaxText's training axes")
                continue
            ici[axis] = int(self.get(f"ici_{name}_parallelism", 1))
            dcn[axis] = int(self.get(f"dcn_{name}_parallelism", 1))
        for name in set(_MESH_KEYS.values()):
            for kind in ("ici", "dcn"):
                key = f"{kind}_{name}_parallelism"
                if key in self.config and key not in self.used:
                    self.used.add(key)
                    if self.config[key] != 1:
                        self.notes.append(f"{key} = {self.config[key]} is ignored: '{name}' is not in mesh_axes "
                                          "(MaxText ignores it too)")
                    else:
                        self.inactive[key] = "its axis is not in mesh_axes"
        for old, new in (("sequence", "context"), ("model", "tensor")):
            if old in ici:
                ici[new] = ici.get(new, 1) * ici.pop(old)
                dcn[new] = dcn.get(new, 1) * dcn.pop(old)
        result = lower_mesh(ici, dcn, nodes=self.nodes, procs_per_node=self.procs_per_node)
        for problem in result.errors:
            axis = problem.path.rsplit(".", 1)[-1]
            kind = "dcn" if ".dcn_mesh" in problem.path else "ici"
            key = f"{kind}_{_MESH_KEYS.get(axis, axis)}_parallelism" if axis in _MESH_KEYS else f"{kind}_*_parallelism"
            self.refuse(key, problem.message.replace("dcn_mesh", "dcn").replace("mesh", "ici"), problem.hint)
        if result.lowering is None:
            return
        lowering = result.lowering
        mesh = {axis: value for axis, value in ici.items() if value != 1} or {"data": ici.get("data", 1)}
        self.put("parallel", "mesh", mesh, "MaxText ici_*_parallelism (the axes not 1)")
        dcn_shown = {axis: value for axis, value in dcn.items() if value != 1}
        if dcn_shown != {"data": -1}:
            self.put("parallel", "dcn_mesh", dcn_shown or {"data": 1}, "MaxText dcn_*_parallelism (the axes not 1)")
        if self.get("shard_optimizer_over_data"):
            self.put("parallel", "distributed_optimizer", True, self.src("shard_optimizer_over_data"))
        self.caveats.append(
            f"mesh resolves to TP={lowering.tensor} PP={lowering.pipeline} CP={lowering.context} EP={lowering.expert} "
            f"DP={lowering.data}" + (" with the distributed optimizer (fsdp)" if lowering.distributed_optimizer else "")
        )
        stages = lowering.pipeline
        micro_per_step = self.pipeline(stages)
        self.batch(lowering.data, micro_per_step)

    def pipeline(self, stages: int) -> int:
        keys = ("num_pipeline_microbatches", "num_layers_per_pipeline_stage", "num_pipeline_repeats",
                "pipeline_parallel_layers")
        if stages == 1:
            self.skip(keys, "only pipeline runs (stage > 1) read it")
            return 1
        if self.get("pipeline_parallel_layers", -1) != -1:
            self.refuse("pipeline_parallel_layers", "pipelining only some layers has no Megatron counterpart",
                        "set pipeline_parallel_layers=-1")
        per_stage = int(self.get("num_layers_per_pipeline_stage", 1))
        repeats = int(self.get("num_pipeline_repeats", -1))
        if repeats == -1:
            if self.layers % (stages * per_stage):
                self.refuse("num_layers_per_pipeline_stage", f"{self.layers} layers do not split into {stages} stages "
                            f"x {per_stage} layers per stage")
                return 1
            repeats = self.layers // (stages * per_stage)
        if repeats > 1:
            self.put("parallel", "virtual_pipeline", repeats,
                     f"MaxText's circular pipeline: {repeats} repeats of {per_stage} layer(s) per stage")
        microbatches = int(self.get("num_pipeline_microbatches", -1))
        return stages if microbatches == -1 else microbatches

    def batch(self, data_parallel: int, pipeline_microbatches: int) -> None:
        per_device = self.get("per_device_batch_size")
        accumulation = int(self.get("gradient_accumulation_steps", 1))
        per_step = int(self.devices * per_device)
        if per_step != self.devices * per_device:
            self.notes.append(f"int({self.devices} devices x per_device_batch_size {per_device}) = {per_step}: "
                              "MaxText truncates the batch to whole sequences, and so does this spec")
        share = data_parallel * pipeline_microbatches
        if per_step < share or per_step % share:
            smallest = share / self.devices
            self.refuse(
                "per_device_batch_size",
                f"per_device_batch_size {per_device} on {self.devices} devices gives {per_step} sequences per "
                f"accumulation step for {data_parallel} data-parallel ranks"
                + (f" x {pipeline_microbatches} pipeline microbatches" if pipeline_microbatches > 1 else "")
                + "; megatron-core's micro batch is a whole number of sequences (>= 1) per rank",
                f"set per_device_batch_size to a multiple of {smallest:g} (e.g. per_device_batch_size={smallest:g}), "
                "or make the data-parallel size smaller with ici_tensor_parallelism or ici_pipeline_parallelism",
            )
            return
        micro = per_step // share
        self.put("batch", "global_batch_size", per_step * accumulation,
                 f"int({self.devices} devices x per_device_batch_size {per_device}) x gradient_accumulation_steps "
                 f"{accumulation}")
        self.put("batch", "micro_batch_size", micro,
                 f"{per_step} / ({data_parallel} data-parallel ranks"
                 + (f" x {pipeline_microbatches} num_pipeline_microbatches)" if pipeline_microbatches > 1 else ")")
                 + f"; {accumulation * pipeline_microbatches} microbatches per step")

    def train_table(self) -> None:
        steps = self.get("steps")
        schedule_steps = self.get("learning_rate_schedule_steps")
        if steps == -1:
            steps = schedule_steps
        if steps is None or steps < 1:
            self.refuse("steps", "steps and learning_rate_schedule_steps are both -1: the run has no length")
            steps = 1
        self.steps = int(steps)
        self.schedule_steps = int(steps if schedule_steps == -1 else schedule_steps)
        self.put("train", "iters", self.steps, self.src("steps"))
        interval = self.get("eval_interval", -1)
        eval_steps = self.get("eval_steps", -1)
        if interval and interval > 0:
            self.put("train", "eval_interval", int(interval), self.src("eval_interval"))
            if eval_steps and eval_steps > 0:
                self.put("train", "eval_iters", int(eval_steps), self.src("eval_steps"))
            else:
                self.notes.append("eval_steps = -1 (MaxText evaluates the whole eval split): set [train] eval_iters")
        else:
            self.inactive["eval_steps"] = "no evaluation (eval_interval -1)"
        on_nan, on_inf = bool(self.get("abort_on_nan_loss")), bool(self.get("abort_on_inf_loss"))
        stop = on_nan or on_inf
        self.put("train", "on_nonfinite", "stop" if stop else "skip",
                 self.src("abort_on_nan_loss", "abort_on_inf_loss")
                 + ("" if stop else "; MaxText would go on training with the non-finite values"))

    def optimizer_table(self) -> None:
        kind = self.get("opt_type")
        lr = float(self.get("learning_rate"))
        clip = float(self.get("gradient_clipping_threshold") or 0.0)
        mask = list(self.get("adamw_mask") or [])
        adam_keys = ("adam_b1", "adam_b2", "adam_eps", "adam_eps_root", "adam_weight_decay", "adamw_mask")
        if kind == "muon":
            self.refuse("opt_type", "opt_type muon has no counterpart in bridgec", "use adamw, adam_pax or sgd")
            return
        if kind not in ("adamw", "adam_pax", "sgd"):
            self.refuse("opt_type", f"opt_type {kind!r} is not a MaxText optimizer bridgec knows")
            return
        if kind == "sgd":
            self.put("optimizer", "name", "sgd", "opt_type sgd: optax.sgd(lr), no momentum, no weight decay")
            self.put("optimizer", "lr", lr, self.src("learning_rate"))
            self.put("optimizer", "sgd_momentum", 0.0, "optax.sgd's default momentum (None)")
            self.put("optimizer", "weight_decay", 0.0, "optax.sgd has no weight decay")
            self.put("optimizer", "clip_grad", clip, self.src("gradient_clipping_threshold"))
            self.skip(adam_keys, "only Adam-type optimizers read it")
            return
        self.put("optimizer", "name", "adam", f"opt_type {kind}")
        self.put("optimizer", "semantics", "optax", "optax.adamw's arithmetic, as MaxText runs it")
        self.put("optimizer", "lr", lr, self.src("learning_rate") + ": the peak of [scheduler.maxtext]")
        self.put("optimizer", "betas", [float(self.get("adam_b1")), float(self.get("adam_b2"))], "MaxText adam_b1, adam_b2")
        self.put("optimizer", "eps", float(self.get("adam_eps")), self.src("adam_eps"))
        self.put("optimizer", "eps_root", float(self.get("adam_eps_root") or 0.0), self.src("adam_eps_root"))
        self.put("optimizer", "weight_decay", float(self.get("adam_weight_decay")),
                 self.src("adam_weight_decay") + ": multiplied by the scheduled lr, as optax does")
        self.put("optimizer", "clip_grad", clip, self.src("gradient_clipping_threshold") + ": optax.clip_by_global_norm")
        if kind == "adam_pax":
            self.caveats.append(
                "opt_type adam_pax keeps bias-corrected moments (pax's bias_corrected_decay); in exact arithmetic "
                "that is Adam's bias correction, so it imports as optax semantics (equal to fp32 rounding)"
            )
        nnx = bool(self.get("pure_nnx"))
        scanned = bool(self.get("scan_layers"))
        if mask:
            if self.block not in _LLAMA_FAMILY:
                self.refuse("adamw_mask", f"adamw_mask with decoder_block {self.block!r}: its MaxText parameter paths "
                            f"are not mapped (bridgec.runtime.param_paths covers {', '.join(_LLAMA_FAMILY)})",
                            "set adamw_mask=[] (every parameter decays) or use a llama2/mistral/qwen3 block")
            self.put("optimizer.decay_mask", "exclude", mask, self.src("adamw_mask") + " (re.search over paths)")
            self.put("optimizer.decay_mask", "paths", "nnx" if nnx else "linen", self.src("pure_nnx"))
            self.put("optimizer.decay_mask", "scan_layers", scanned, self.src("scan_layers"))
        else:
            self.caveats.append("adamw_mask is empty: every parameter decays, MaxText's default (Megatron's own rule "
                                "would skip biases and norms)")

    def scheduler_table(self) -> None:
        kind = self.get("lr_schedule_type")
        warmup = float(self.get("warmup_steps_fraction"))
        if "learning_rate_final_fraction" in self.config:
            final = float(self.get("learning_rate_final_fraction"))
            final_key = "learning_rate_final_fraction"
            legacy = False
        else:
            final = float(self.get("cosine_learning_rate_final_fraction"))
            final_key = "cosine_learning_rate_final_fraction"
            legacy = True
        self.used.add("cosine_learning_rate_final_fraction")
        variant = self.schedule_variant or ("2025" if legacy else "2026-02")
        self.put("scheduler", "style", "maxtext", "MaxText's create_learning_rate_schedule")
        self.put("scheduler.maxtext", "kind", kind, self.src("lr_schedule_type"))
        self.put("scheduler.maxtext", "warmup_steps_fraction", warmup, self.src("warmup_steps_fraction"))
        self.put("scheduler.maxtext", "final_fraction", final, self.src(final_key))
        if self.schedule_steps != self.steps:
            self.put("scheduler.maxtext", "schedule_steps", self.schedule_steps,
                     self.src("learning_rate_schedule_steps") + ": lr 0 from this update on")
        wsd_keys = ("wsd_decay_steps_fraction", "wsd_decay_style")
        if kind == "wsd":
            fraction = float(self.get("wsd_decay_steps_fraction"))
            if warmup + fraction > 1.0:
                self.refuse("wsd_decay_steps_fraction",
                            f"Invalid WSD schedule: warmup_steps_fraction ({warmup}) + wsd_decay_steps_fraction "
                            f"({fraction}) must not exceed 1.0. Current sum: {warmup + fraction}")
            self.put("scheduler.maxtext", "wsd_decay_steps_fraction", fraction, self.src("wsd_decay_steps_fraction"))
            self.put("scheduler.maxtext", "wsd_decay_style", self.get("wsd_decay_style"), self.src("wsd_decay_style"))
        elif kind == "cosine":
            self.skip(wsd_keys, "only lr_schedule_type wsd reads it")
        else:
            self.refuse("lr_schedule_type", f"lr_schedule_type {kind!r} is not cosine or wsd")
        if variant == "2025" and kind == "wsd":
            self.refuse("lr_schedule_type", "the 2025 schedule variant has no wsd", "pick variant 2026-01 or 2026-02")
        self.put("scheduler.maxtext", "variant", variant,
                 "base.yml still names cosine_learning_rate_final_fraction: MaxText before 2026-01"
                 if legacy and self.schedule_variant is None else "MaxText's formula as of this month (see the docs)")

    def precision_table(self) -> None:
        dtype = self.get("dtype")
        mapped = {"bfloat16": "bf16", "float32": "fp32", "float16": "fp16"}.get(dtype)
        if mapped is None:
            self.refuse("dtype", f"dtype {dtype!r} is not bfloat16, float16 or float32")
            return
        weights = self.get("weight_dtype")
        if weights != "float32":
            self.refuse("weight_dtype", f"weight_dtype {weights!r}: parameters without an fp32 copy have no "
                        "counterpart (megatron-core keeps fp32 main weights)", "set weight_dtype=float32")
        self.put("precision", "dtype", mapped, self.src("dtype", "weight_dtype") + ": fp32 main weights")

    def data_table(self) -> None:
        kind = self.get("dataset_type")
        self.put("data", "kind", "mock", "MaxText synthetic data" if kind == "synthetic" else "placeholder, see below")
        if kind == "synthetic":
            self.caveats.append("dataset_type synthetic: megatron-core's mock dataset is synthetic too, not the same "
                                "tokens")
            self.skip(("packing",), "synthetic data is not packed from documents")
            return
        self.notes.append(
            f"dataset_type {kind!r}: convert the corpus with MaxText's tokenizer (tokenizer_path "
            f"{show(self.config.get('tokenizer_path'))}) to megatron indexed datasets (.bin/.idx) and set [data] "
            "kind = \"indexed\" with [[data.sources]]; the spec trains on mock data until then"
        )
        if self.get("packing"):
            self.notes.append(
                "packing true: MaxText packs documents with segment ids, so attention and positions restart at each "
                "document; megatron-core's GPT dataset concatenates documents and attends across them"
            )

    def loss_table(self) -> None:
        z = float(self.get("z_loss_multiplier") or 0.0)
        self.put("loss", "reduction", "per_token",
                 "MaxText divides the summed token losses of all accumulation steps by their token count")
        self.put("loss", "z_loss_multiplier", z, self.src("z_loss_multiplier"))

    def checkpoint_tables(self) -> None:
        enabled = bool(self.get("enable_checkpointing"))
        period = self.get("checkpoint_period")
        keep = self.get("max_num_checkpoints_to_keep")
        output = self.get("base_output_directory") or ""
        if enabled:
            where = f"{output.rstrip('/')}/{{run_name}}/checkpoints" if output else "{run_name}/checkpoints"
            self.put("checkpoint", "dir", "checkpoints", f"MaxText wrote Orbax checkpoints to {where}; this is "
                     "megatron-core's format")
            self.put("checkpoint", "save_interval", int(period), self.src("checkpoint_period"))
            self.put("checkpoint", "resume", True, "MaxText resumes from the run's latest checkpoint")
            if isinstance(keep, int) and keep > 0:
                self.put("checkpoint", "keep_last", keep, self.src("max_num_checkpoints_to_keep"))
        params = self.get("load_parameters_path") or ""
        full = self.get("load_full_state_path") or ""
        if params and full:
            self.refuse("load_full_state_path", "load_parameters_path and load_full_state_path are both set "
                        "(MaxText refuses this too)")
        elif params or full:
            path = params or full
            self.put("init.checkpoint", "format", "orbax")
            self.put("init.checkpoint", "path", path, self.src("load_parameters_path" if params else "load_full_state_path"))
            self.put("init.checkpoint", "layout", "maxtext")
            self.put("init.checkpoint", "optimizer_state", bool(full), "full state: Adam moments and step too" if full else "parameters only")
            if str(path).startswith("gs://"):
                self.notes.append(f"{path}: copy the checkpoint to a local folder and point [init.checkpoint] path at it")
        else:
            self.caveats.append("initial weights: bridgec's own init ([init] scheme portable), not MaxText's "
                                "initializers; set load_parameters_path to start from MaxText weights")

    def check_the_rest(self) -> None:
        """Gates at neutral values are fine; the rest is ignored or unreviewed (reported by render)."""
        for key, gate in GATES.items():
            if key not in self.config or key in self.used:
                continue
            value = self.config[key]
            if value not in gate.neutral:
                self.refuse(key, f"{key} = {show(value)} ({gate.what}) has no counterpart in bridgec",
                            f"set {key}={show(gate.neutral[0])} to import")

    # -- output ---------------------------------------------------------------------------------


def show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "None"
    return str(value)
