"""``bridgec import hf``: a Hugging Face model folder's ``config.json`` as a spec that fine-tunes from its weights.

Pure: the config texts in, TOML text out (with notes and errors); the command
reads the folder and writes the file. Every config key is either mapped (the
spec line names it in a comment), read and found to need nothing, or listed in
the closing comment block with what was done; a key whose value bridgec cannot
reproduce (another activation, RoPE scaling megatron-core does not have,
attention biases without MLP biases, ...) is refused with the key and the
value, so the spec never describes a different model than the folder's.

The spec's ``[init.checkpoint] format = "huggingface"`` loads the weights
(:mod:`bridgec.runtime.hf_import`, which checks every tensor's name and shape
against this model before reading anything).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from bridgec.compiler.maxtext import ImportResult
from bridgec.compiler.maxtext_read import ImportProblem
from bridgec.compiler.spec_text import comment_bullets, toml_value, wrap_words

__all__ = ["ARCHITECTURES", "ImportResult", "import_hf"]

ARCHITECTURES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "Qwen3MoeForCausalLM",
    "GemmaForCausalLM",
)
"""The families whose weights runtime.models.gpt's Hugging Face names describe."""

MAX_SEQ_LENGTH = 4096
"""The training sequence length the import proposes at most (a model's max_position_embeddings can be 128K)."""

LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
"""The llama3 RoPE scaling parameters megatron-core's rope_scaling fixes (RotaryEmbedding._apply_scaling)."""

_IGNORED: dict[str, str] = {
    "architectures": "read: it picks the family",
    "model_type": "read: it names the family",
    "transformers_version": "the writer's version",
    "dtype": "read: the dtype the weights are stored in",
    "torch_dtype": "read: the dtype the weights are stored in",
    "initializer_range": "the weights come from the folder",
    "bos_token_id": "the tokenizer's: see the tokenizer comment",
    "eos_token_id": "the tokenizer's: see the tokenizer comment",
    "pad_token_id": "the tokenizer's: see the tokenizer comment",
    "use_cache": "generation only",
    "pretraining_tp": "a numerics option of transformers' old forward; the same weights",
    "attention_dropout": "read: it must be 0 (checked)",
    "max_window_layers": "only with use_sliding_window (checked)",
    "layer_types": "read: full attention in every layer (checked)",
    "output_attentions": "transformers' forward output",
    "output_hidden_states": "transformers' forward output",
    "return_dict": "transformers' forward output",
    "tie_encoder_decoder": "encoder-decoder models only",
    "is_decoder": "a decoder-only model",
    "is_encoder_decoder": "a decoder-only model",
    "chunk_size_feed_forward": "the same function",
    "problem_type": "classification heads only",
    "id2label": "classification heads only",
    "label2id": "classification heads only",
    "_name_or_path": "the writer's path",
}


@attrs.define
class _Mapper:
    """What the mapping has said so far."""

    config: dict[str, Any]
    tables: dict[str, list[tuple[str, Any, str]]] = attrs.field(factory=dict)
    used: set[str] = attrs.field(factory=set)
    errors: list[ImportProblem] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)

    def get(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        return self.config.get(key, default)

    def need(self, key: str, kind: type | tuple[type, ...] = int) -> Any:
        self.used.add(key)
        if key not in self.config:
            self.errors.append(ImportProblem(key=key, message=f"no {key!r}: the model's shape needs it"))
            return None
        value = self.config[key]
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            self.errors.append(ImportProblem(key=key, message=f"{key} = {value!r}: expected {_kind(kind)}"))
            return None
        return value

    def put(self, table: str, key: str, value: Any, comment: str) -> None:
        if value is not None:
            self.tables.setdefault(table, []).append((key, value, comment))

    def refuse(self, key: str, message: str, hint: str | None = None) -> None:
        self.errors.append(ImportProblem(key=key, message=message, hint=hint))


def _kind(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({int: "an integer", float: "a number", bool: "true or false", str: "a string"}[k] for k in kinds)


def import_hf(
    config_text: str,
    *,
    folder: str,
    devices: int,
    nodes: int = 1,
    device: str = "cuda",
    tokenizer_files: Sequence[str] = (),
    command: str | None = None,
) -> ImportResult:
    """Map ``config.json`` (its text) to a spec that starts from the folder's weights.

    ``folder`` is the model folder as the spec names it (relative to the spec's
    folder); ``tokenizer_files`` the tokenizer files found there (named in a
    comment: the data is built with that tokenizer). ``devices`` is the total
    process count over ``nodes``.
    """
    try:
        config = json.loads(config_text)
    except json.JSONDecodeError as error:
        return ImportResult(toml=None, notes=(), errors=(ImportProblem(key="", message=f"config.json: {error}"),))
    if not isinstance(config, dict):
        return ImportResult(toml=None, notes=(), errors=(ImportProblem(key="", message="config.json: not an object"),))
    if devices < 1 or nodes < 1 or devices % nodes:
        problem = ImportProblem(key="", message=f"--devices {devices} is not a multiple of --nodes {nodes}")
        return ImportResult(toml=None, notes=(), errors=(problem,))
    m = _Mapper(config=config)
    architecture = _architecture(m)
    if architecture is None:
        return ImportResult(toml=None, notes=(), errors=tuple(m.errors))
    name = folder.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or "hf-model"
    m.put("run", "name", name, "")
    m.put("run", "description", f"Fine-tune {architecture} from {folder}", "")
    m.put("launch", "device", device, "--device")
    m.put("launch", "nodes", nodes, "--nodes")
    m.put("launch", "procs_per_node", devices // nodes, f"--devices {devices} over {nodes} node(s)")
    _model(m, architecture)
    if m.errors:
        return ImportResult(toml=None, notes=tuple(m.notes), errors=tuple(m.errors))
    if device == "cuda":
        m.put("model", "transformer_impl", "transformer_engine", "--device cuda: Transformer Engine's fused layers")
    _training(m, devices=devices, device=device)
    if "tokenizer.json" in tokenizer_files:
        m.put(
            "data", "tokenizer", folder, "the folder's tokenizer.json: vocab_size and the eod id are checked against it"
        )
    m.put("init.checkpoint", "format", "huggingface", "the folder's safetensors")
    m.put("init.checkpoint", "path", folder, "config.json's folder, relative to this spec")
    lines = _header(folder, command, tokenizer_files)
    if m.notes:
        lines += ["#", "# NEEDS YOUR ACTION:", *comment_bullets(m.notes)]
    for table, entries in m.tables.items():
        lines += ["", f"[{table}]"]
        for key, value, comment in entries:
            text = f"{key} = {toml_value(value)}"
            lines.append(f"{text}  # {comment}" if comment else text)
    lines += ["", *_closing(m)]
    return ImportResult(toml="\n".join(lines) + "\n", notes=tuple(m.notes), errors=())


def _architecture(m: _Mapper) -> str | None:
    found = m.get("architectures")
    if not isinstance(found, list) or len(found) != 1 or not isinstance(found[0], str):
        m.refuse("architectures", f"architectures = {found!r}: expected one *ForCausalLM class name")
        return None
    if found[0] not in ARCHITECTURES:
        m.refuse(
            "architectures",
            f"architecture {found[0]!r} is not one bridgec maps",
            hint=f"supported: {', '.join(ARCHITECTURES)}",
        )
        return None
    return found[0]


def _model(m: _Mapper, architecture: str) -> None:
    put: Callable[[str, Any, str], None] = lambda key, value, comment: m.put("model", key, value, comment)  # noqa: E731
    layers = m.need("num_hidden_layers")
    hidden = m.need("hidden_size")
    heads = m.need("num_attention_heads")
    groups = m.get("num_key_value_heads") or heads
    ffn = m.need("intermediate_size")
    vocab = m.need("vocab_size")
    positions = m.need("max_position_embeddings")
    eps = m.need("rms_norm_eps", (float, int))
    if None in (layers, hidden, heads, ffn, vocab, positions, eps):
        return
    put("num_layers", layers, "num_hidden_layers")
    put("hidden_size", hidden, "hidden_size")
    put("num_attention_heads", heads, "num_attention_heads")
    put("num_query_groups", groups, "num_key_value_heads")
    head_dim = m.get("head_dim")
    if head_dim is not None and head_dim != hidden // heads:
        put("head_dim", head_dim, f"head_dim (not hidden_size / num_attention_heads = {hidden // heads})")
    put("ffn_hidden_size", ffn, "intermediate_size (per branch of the gated MLP)")
    put("vocab_size", vocab, "vocab_size")
    divisible = math.gcd(vocab, 128)
    put(
        "make_vocab_size_divisible_by",
        divisible,
        "gcd(vocab_size, 128): no padded rows, which would take part in the softmax (not transformers' model)",
    )
    seq = min(positions, MAX_SEQ_LENGTH)
    put("seq_length", seq, f"training length; max_position_embeddings = {positions}")
    put("normalization", "rmsnorm", "RMSNorm in every *ForCausalLM family mapped here")
    put("norm_epsilon", float(eps), "rms_norm_eps")
    if architecture == "GemmaForCausalLM":
        _gemma(m, put, hidden)
    else:
        activation = m.get("hidden_act", "silu")
        if activation != "silu":
            m.refuse("hidden_act", f"hidden_act = {activation!r}: the gated MLP maps to swiglu only with silu")
        put("activation", "swiglu", "hidden_act = silu: gate_proj/up_proj/down_proj")
    put("position_embedding", "rope", "rotary position embedding (rotate-half, as transformers applies it)")
    _rope(m, put)
    tied = m.get("tie_word_embeddings", architecture == "GemmaForCausalLM")  # transformers' default per family
    put("tie_embeddings", bool(tied), "tie_word_embeddings")
    put("add_bias_linear", False, "no biases in the linear layers")
    _biases(m, architecture, put)
    if architecture in ("Qwen3ForCausalLM", "Qwen3MoeForCausalLM"):
        put("qk_layernorm", True, "Qwen3: q_norm and k_norm (RMSNorm per head before RoPE)")
    if architecture == "Qwen3MoeForCausalLM":
        _experts(m, put)
    put("dropout", 0.0, "attention_dropout = 0")
    if m.get("attention_dropout", 0.0) not in (0, 0.0):
        m.refuse("attention_dropout", "attention_dropout must be 0 (megatron's dropout would also drop hidden states)")
    _window(m, seq)
    layer_types = m.get("layer_types")
    if layer_types is not None and any(kind != "full_attention" for kind in layer_types):
        m.refuse("layer_types", f"layer_types holds {sorted(set(layer_types))}: only full_attention maps")


GEMMA_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu")
"""Gemma's hidden_act values that mean tanh GELU (transformers reads the released folders' "gelu" as tanh)."""


def _gemma(m: _Mapper, put: Callable[[str, Any, str], None], hidden: int) -> None:
    """Gemma: RMSNorm applying 1 + weight, embeddings scaled by sqrt(hidden_size), GeGLU with tanh GELU."""
    put("norm_zero_centered", True, "Gemma's RMSNorm applies 1 + weight (weights stored zero-centred)")
    # transformers 4.x wrote hidden_activation beside hidden_act and used it; 5.x reads hidden_act only.
    key = "hidden_activation" if m.config.get("hidden_activation") is not None else "hidden_act"
    activation = m.get(key, "gelu_pytorch_tanh")
    m.used.add("hidden_act")
    if activation not in GEMMA_ACTIVATIONS:
        m.refuse(key, f"{key} = {activation!r}: Gemma's gated MLP maps to geglu with tanh GELU only")
    legacy = ' (transformers reads Gemma\'s "gelu" as tanh)' if activation == "gelu" else ""
    put("activation", "geglu", f"{key} = {activation}{legacy}: gelu(gate_proj) x up_proj, then down_proj")
    put("gelu_approximation", "tanh", f"{key} = {activation}: the tanh approximation")
    put("embedding_multiplier", math.sqrt(hidden), f"sqrt(hidden_size = {hidden}): Gemma scales its input embeddings")
    if m.get("use_bidirectional_attention"):
        m.refuse("use_bidirectional_attention", "use_bidirectional_attention = true: bridgec trains causal models")


def _experts(m: _Mapper, put: Callable[[str, Any, str], None]) -> None:
    """Qwen3-MoE: every layer's MLP is a softmax-routed mixture of experts (megatron-core's MoE, dropless)."""
    # transformers 5 writes num_local_experts; 4.x (and the released Qwen3 MoE folders) num_experts.
    experts_key = "num_local_experts" if "num_local_experts" in m.config else "num_experts"
    experts = m.need(experts_key)
    topk = m.need("num_experts_per_tok")
    ffn = m.need("moe_intermediate_size")
    if m.get("decoder_sparse_step", 1) != 1 or m.get("mlp_only_layers") not in (None, []):
        m.refuse(
            "mlp_only_layers",
            "decoder_sparse_step / mlp_only_layers give some layers a dense MLP: bridgec's MoE models have "
            "experts in every layer",
        )
    normalised = bool(m.get("norm_topk_prob", False))
    if None in (experts, topk, ffn):
        return
    if topk == 1 and normalised:
        m.refuse(
            "norm_topk_prob",
            "norm_topk_prob = true with one expert per token: megatron-core's top-1 "
            "routing weighs the expert by its softmax probability",
        )
    # The dense intermediate_size is unused when every layer is sparse: the experts' width is the MLP width.
    m.tables["model"] = [entry for entry in m.tables["model"] if entry[0] != "ffn_hidden_size"]
    put("ffn_hidden_size", ffn, "moe_intermediate_size (each expert's width; intermediate_size is unused)")
    put("num_experts", experts, experts_key)
    put("moe_router_topk", topk, "num_experts_per_tok")
    if not normalised and topk > 1:
        put("moe_router_pre_softmax", True, "norm_topk_prob = false: softmax over all experts, top-k not renormalised")
    m.used |= {"router_aux_loss_coef", "output_router_logits", "intermediate_size"}
    m.notes.append(
        f"router_aux_loss_coef = {m.config.get('router_aux_loss_coef')}: transformers adds the load-balancing loss "
        "only with output_router_logits; bridgec trains without it"
    )


def _rope(m: _Mapper, put: Callable[[str, Any, str], None]) -> None:
    # transformers 5 writes rope_parameters (with rope_theta inside); 4.x writes rope_theta and rope_scaling.
    parameters = m.get("rope_parameters") or {}
    scaling = m.get("rope_scaling") or parameters
    theta_key = "rope_parameters.rope_theta" if "rope_theta" in parameters else "rope_theta"
    theta = parameters.get("rope_theta", m.get("rope_theta", 10000.0))
    if not isinstance(theta, (int, float)) or theta != int(theta):
        m.refuse(theta_key, f"{theta_key} = {theta!r}: bridgec's rotary_base is a whole number")
        return
    put("rotary_base", int(theta), theta_key)
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    key = "rope_parameters" if m.config.get("rope_parameters") else "rope_scaling"
    if kind == "default":
        return
    if kind != "llama3":
        m.refuse(key, f"{key} type {kind!r}: megatron-core applies only llama3 RoPE scaling")
        return
    for name, wanted in LLAMA3_ROPE.items():
        if not math.isclose(float(scaling.get(name, math.nan)), wanted):
            m.refuse(
                f"{key}.{name}",
                f"{key}.{name} = {scaling.get(name)!r}: megatron-core's llama3 scaling fixes it at {wanted}",
            )
    factor = scaling.get("factor")
    if not isinstance(factor, (int, float)) or factor <= 0:
        m.refuse(f"{key}.factor", f"{key}.factor = {factor!r}: a positive number")
        return
    put("rope_scaling_factor", float(factor), f"{key}: llama3 type, factor {factor}")


def _biases(m: _Mapper, architecture: str, put: Callable[[str, Any, str], None]) -> None:
    if m.get("mlp_bias", False):
        m.refuse("mlp_bias", "mlp_bias = true: megatron-core gives every linear layer a bias or none")
    if architecture == "Qwen2ForCausalLM":
        put("add_qkv_bias", True, "Qwen2: q_proj, k_proj and v_proj have biases")
    elif m.get("attention_bias", False):
        m.refuse(
            "attention_bias",
            "attention_bias = true puts biases on q/k/v and o_proj but not the MLP; megatron-core cannot "
            "(add_bias_linear is all linears, add_qkv_bias q/k/v only)",
        )


def _window(m: _Mapper, seq: int) -> None:
    window = m.get("sliding_window")
    use = m.get("use_sliding_window", window is not None)
    if window is not None and use and window < seq:
        m.refuse(
            "sliding_window",
            f"sliding_window = {window} is shorter than the training seq_length {seq}: megatron-core's local "
            "attention has no sliding window",
            hint="lower seq_length in the written spec to at most the window (edit it after importing)",
        )
    elif window is not None and use:
        m.notes.append(
            f"sliding_window = {window} >= seq_length {seq}: every token sees the whole sequence, as in "
            "transformers; a longer seq_length would need the window"
        )


def _training(m: _Mapper, *, devices: int, device: str) -> None:
    stored = m.config.get("dtype", m.config.get("torch_dtype", "float32"))
    dtype = "bf16" if stored == "bfloat16" and device == "cuda" else "fp32"
    m.put("precision", "dtype", dtype, f"weights stored as {stored}" + ("" if dtype == "bf16" else "; fp32 training"))
    m.put("batch", "global_batch_size", devices, "one sequence per data-parallel rank: a starting value")
    m.put("batch", "micro_batch_size", 1, "")
    m.put("train", "mode", "finetune", "from the folder's weights: optimizer and schedule start at step 0")
    m.put("train", "iters", 100, "a starting value")
    m.put("optimizer", "name", "adam", "fine-tuning: AdamW")
    m.put("optimizer", "lr", 1e-5, "a fine-tuning learning rate to start from")
    m.put("optimizer", "min_lr", 1e-6, "")
    m.put("optimizer", "weight_decay", 0.0, "")
    m.put("scheduler", "warmup_iters", 10, "")
    m.put("scheduler", "decay", "cosine", "")
    m.put("data", "kind", "mock", "replace with your tokenized data (see the tokenizer comment above)")
    m.notes.append("[data] is mock: build your data with the folder's tokenizer and point [data] at it")
    m.notes.append("[batch], [train], [optimizer] and [scheduler] are starting values for a fine-tune: set yours")


def _header(folder: str, command: str | None, tokenizer_files: Sequence[str]) -> list[str]:
    lines = ["# Imported from a Hugging Face model folder by `bridgec import hf`; comments name each config.json key."]
    if command:
        lines.append(f"#   {command}")
    if tokenizer_files:
        lines.append(
            f"# tokenizer: {folder}  ({', '.join(tokenizer_files)}; build data with: "
            f"bridgec data build --tokenizer {folder} ...)"
        )
    else:
        lines.append(f"# tokenizer: none found in {folder}: build data with the tokenizer this model was trained with")
    return lines


def _closing(m: _Mapper) -> list[str]:
    rule = "# " + "-" * 98
    lines = [rule, "# config.json keys with no counterpart in this spec, and what was done about each.", rule]
    said = " ".join(comment for entries in m.tables.values() for _, _, comment in entries)
    read = sorted(key for key in m.used if key in m.config and key not in said and key not in _IGNORED)
    ignored = sorted(key for key in m.config if key in _IGNORED)
    unknown = sorted(key for key in m.config if key not in m.used and key not in _IGNORED)
    for key in ignored:
        lines.append(f"#   - {key} = {_show(m.config[key])}: {_IGNORED[key]}")
    if read:
        lines += ["# Read, and nothing to set for them (the spec's defaults or implied by the values above):"]
        lines += [f"#   {line}" for line in wrap_words(", ".join(f"{k} = {_show(m.config[k])}" for k in read), 96, "")]
    if unknown:
        lines += ["# NOT REVIEWED by this bridgec (a newer transformers?): check that these change nothing:"]
        lines += [f"#   - {key} = {_show(m.config[key])}" for key in unknown]
    return lines


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
