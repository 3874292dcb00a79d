"""What ``bridgec import maxtext`` does with each MaxText key that has no counterpart in a spec.

:mod:`bridgec.compiler.maxtext` maps the keys that carry training math into
the spec. Every other key of MaxText's base.yml (commit e591f30, 696 keys) is
classified here, so none is dropped silently:

* :data:`GATES`: keys that change the math when set away from a neutral value.
  At the neutral value they are listed as "nothing to map"; at any other value
  the import refuses, naming the key and the value that would import.
* :data:`IGNORED`: keys that cannot change the math of a training step
  (logging, kernels, storage, inference, ...) or are read only by a feature a
  gate keeps off. They are listed by reason in the spec's closing comment.

A key in neither table (a newer MaxText) is listed as "not reviewed", with its
value, so a person looks at it. Patterns use fnmatch syntax.
"""

from __future__ import annotations

import fnmatch
from typing import Any

import attrs


@attrs.frozen(kw_only=True)
class Gate:
    """A key whose non-neutral values bridgec cannot reproduce."""

    neutral: tuple[Any, ...]
    """Values that change nothing (MaxText treats "none" strings as None)."""
    what: str
    """What the key does, for the refusal message."""


_OFF = (False,)
GATES: dict[str, Gate] = {
    "use_multimodal": Gate(neutral=_OFF, what="multimodal (vision/audio) inputs"),
    "use_audio": Gate(neutral=_OFF, what="audio inputs"),
    "mtp_num_layers": Gate(neutral=(0,), what="multi-token prediction layers and their auxiliary loss"),
    "attention_type": Gate(neutral=("global",), what="the attention variant (local_sliding, chunk, mla, ...)"),
    "attn_logits_soft_cap": Gate(neutral=(0.0, 0, None), what="tanh soft-capping of attention logits"),
    "final_logits_soft_cap": Gate(neutral=(0.0, 0, None), what="tanh soft-capping of the output logits"),
    "use_post_attn_norm": Gate(neutral=_OFF, what="an extra norm after attention (Gemma 2/3 style)"),
    "use_post_ffw_norm": Gate(neutral=_OFF, what="an extra norm after the MLP (Gemma 2/3 style)"),
    "attention_sink": Gate(neutral=_OFF, what="learned attention-sink logits"),
    "share_kv_projections": Gate(neutral=_OFF, what="one projection shared by keys and values"),
    "attention_bias": Gate(neutral=_OFF, what="biases on the query/key/value projections"),
    "mlp_bias": Gate(neutral=_OFF, what="biases in the MLP"),
    "mlp_activations_limit": Gate(neutral=(-1.0, -1), what="clamping of MLP activations"),
    "use_qk_clip": Gate(neutral=_OFF, what="QK-clip (MuonClip) weight rescaling"),
    "use_indexer": Gate(neutral=_OFF, what="DeepSeek sparse-attention indexer"),
    "moba": Gate(neutral=_OFF, what="mixture-of-block attention"),
    "engram_layers": Gate(neutral=([],), what="DeepSeek Engram layers"),
    "mhc_expansion_rate": Gate(neutral=(1,), what="manifold-constrained hyper-connections"),
    "use_mrope": Gate(neutral=_OFF, what="multimodal RoPE"),
    "partial_rotary_factor": Gate(neutral=(1.0, 1), what="RoPE on part of each head"),
    "rope_type": Gate(neutral=("default",), what="RoPE scaling variants (llama3.1, yarn); bridgec maps plain RoPE only"),
    "rope_linear_scaling_factor": Gate(neutral=(1.0, 1), what="linear RoPE position scaling"),
    "qk_norm_with_scale": Gate(neutral=(True,), what="query/key norms without a learned scale"),
    "rope_min_timescale": Gate(neutral=(1,), what="RoPE minimum timescale (megatron-core fixes it at 1)"),
    "use_untrainable_positional_embedding": Gate(neutral=_OFF, what="fixed sinusoidal position embeddings"),
    "quantization": Gate(neutral=("", None), what="quantized training (int8, fp8 recipes, ...)"),
    "weight_sparsity_n": Gate(neutral=(None,), what="N:M weight sparsity"),
    "training_objective": Gate(neutral=("causal_lm",), what="the training objective"),
    "use_dpo": Gate(neutral=_OFF, what="DPO training"),
    "use_sft": Gate(neutral=_OFF, what="supervised fine-tuning (completion-only loss masks)"),
    "enable_diloco": Gate(neutral=_OFF, what="DiLoCo outer optimisation"),
    "enable_streaming_diloco": Gate(neutral=_OFF, what="streaming DiLoCo"),
    "enable_rampup_batch_size": Gate(neutral=_OFF, what="batch-size ramp-up"),
    "skip_step_on_spikes": Gate(neutral=_OFF, what="skipping updates on loss or gradient spikes"),
    "trainable_parameters_mask": Gate(neutral=([],), what="freezing all parameters but a set"),
    "lora_input_adapters_path": Gate(neutral=("", None), what="LoRA adapters"),
    "hf_lora_adapter_path": Gate(neutral=("", None), what="LoRA adapters"),
    "nope_layer_interval": Gate(neutral=(-1,), what="layers without RoPE (Llama 4)"),
    "temperature_tuning": Gate(neutral=_OFF, what="attention temperature tuning (Llama 4)"),
    "num_kv_shared_layers": Gate(neutral=(0,), what="layers reusing another layer's keys and values (Gemma 4)"),
    "hidden_size_per_layer_input": Gate(neutral=(0,), what="per-layer input embeddings (Gemma 4)"),
    "use_double_wide_mlp": Gate(neutral=_OFF, what="double-width MLPs (Gemma 4)"),
    "first_num_hash_layers": Gate(neutral=(0,), what="hash-routed MoE layers"),
    "reuse_example_batch": Gate(neutral=(0,), what="training on one repeated batch"),
}
"""Key -> the values that import; anything else is refused."""

_PROFILE = "logging, profiling, metrics and debugging"
_PERF = "performance, memory, kernels and compilation (the same math)"
_SHARD = "sharding plumbing (megatron-core places tensors from TP/PP/CP/DP itself)"
_INFER = "inference, serving and decoding only"
_ENV = "cloud, cluster and runtime environment"
_CKPT = "checkpoint storage, async saving and restore options [checkpoint] does not expose"
_DATA = "input-pipeline details (bridgec reads megatron datasets, see [data])"
_NUMERICS = "precision of intermediate results (the same math in [precision] dtype; softmax and loss in fp32)"
_INIT = "initial-weight distributions (bridgec draws its own, see [init]; import a checkpoint for MaxText's)"
_INACTIVE = "read only by a feature this config keeps off"
_EVAL_ONLY = "evaluation and early-stop options [train] does not expose"

IGNORED: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        _PROFILE,
        (
            "metrics_file", "gcs_metrics", "enable_wandb", "wandb_*", "save_config_to_gcs", "profiler",
            "upload_all_profiler_results", "skip_first_n_steps_for_profiler", "profiler_steps",
            "hide_profiler_step_metric", "profile_*", "enable_tpu_profiling_options", "tpu_num_*",
            "managed_mldiagnostics*", "dump_*", "log_config", "debug_sharding", "record_internal_nn_metrics",
            "max_checkify", "write_estimator_result", "enable_goodput_recording", "monitor_goodput",
            "goodput_upload_interval_seconds", "enable_pathways_goodput", "monitor_step_time_deviation",
            "step_deviation_interval_seconds", "enable_gcp_*", "report_*", "heartbeat_reporting_interval_in_seconds",
            "enable_tensorboard", "use_vertex_tensorboard", "vertex_tensorboard_*", "xprof_*", "jax_debug_log_modules",
            "enable_checkpoint_cloud_logger", "log_period", "enable_jax_profiler", "jax_profiler_port",
            "prometheus_port",
        ),
    ),
    (
        _PERF,
        (
            "remat_policy", "decoder_layer_input", "indexer_cutoff_threshold", "context", "mlpwi", "mlpwi_0",
            "mlpwi_1", "mlpwo", "moe_mlpwi_0", "moe_mlpwi_1", "moe_mlpwo", "query_proj", "key_proj", "value_proj",
            "kv_proj", "qkv_proj", "out_proj", "query_wa_proj", "kv_wa_proj", "mla_q", "mla_kv", "attention_out",
            "engram", "optimizer_memory_host_offload", "parameter_memory_host_offload", "attention",
            "scan_pipeline_iterations", "scan_pipeline_repeats", "scan_layers_per_stage",
            "set_remat_policy_on_pipeline_iterations", "set_remat_policy_on_layers_per_stage",
            "pipeline_delay_activation_forwarding", "pipeline_fsdp_ag_once", "pipeline_fsdp_ag_per_repeat",
            "sa_*", "local_sa_*", "local_use_splash_scheduler", "use_splash_scheduler", "ring_scan_unroll",
            "experimental_sa_quant_*", "use_max_logit_estimate", "cost_estimate_flops_*", "dq_reduction_steps",
            "use_tokamax_splash", "use_jax_splash", "wi_tile_*", "wo_tile_*", "megablox", "sparse_matmul",
            "use_tokamax_gmm", "use_gmm_v2", "merge_gating_gmm", "num_moe_token_chunks", "moe_chunk_barrier",
            "use_custom_sort_vjp", "use_ring_of_experts", "num_moe_emb_chunks", "moe_dispatch_no_expert_sharding",
            "use_ragged_sort", "use_gather_mosaic_kernel", "ragged_gather_*", "use_batch_split_schedule",
            "batch_split_factor", "use_iota_embed", "fused_qkv", "fused_mlp", "num_vocab_tiling", "vocab_tiling_ag_once",
            "max_inflight_computations", "force_unroll", "te_comm_gemm_overlap", "compile_xla_flags",
            "compiled_trainstep_file", "compile_topology", "compile_topology_num_slices", "internal_compile",
            "internal_compile_num_devices", "jax_cache_dir", "shardy", "check_vma", "enable_padding_causal_mask",
            "use_sliced_mla_proj", "mla_qk_head_chunk_size", "mla_naive_kvcache", "use_mhc_pallas_kernel",
            "mhc_pallas_kernel_*", "context_parallel_load_balance", "context_parallel_strategy",
            "context_parallel_reorder_strategy", "max_segments_per_seq", "remove_size_one_mesh_axis_from_type",
            "optimize_mesh_for_tpu_v6e", "allow_split_physical_axes", "custom_mesh", "enable_nnx",
            "pure_nnx_decoder", "param_scan_axis",
        ),
    ),
    (
        _SHARD,
        (
            "shard_mode", "custom_mesh_and_rule", "custom_mesh_and_rule_for_eval", "logical_axis_rules",
            "logical_axis_rules_for_eval", "override_logical_axis_rules", "data_sharding",
            "input_data_sharding_logical_axes", "context_sharding", "ulysses_context_sharding", "sharding_tolerance",
            "moe_fsdp_use_two_stage_all_gather", "shard_exp_on_fsdp", "use_2d_fsdp_sharding",
            "dense_fsdp_use_two_stage_all_gather", "replicate_quant_scale", "subslice_shape",
        ),
    ),
    (
        _INFER,
        (
            "model_call_mode", "quantize_kvcache", "kv_quant_axis", "kv_quant_dtype", "checkpoint_is_quantized",
            "save_quantized_params_path", "max_prefill_predict_length", "prompt", "load_from_prefill_dir",
            "prefill_cache_dir", "autoregressive_decode_assert", "decode_sampling_*", "inference_*",
            "prefill_slice", "generate_slice", "enable_model_warmup", "enable_llm_inference_pool", "multi_sampling",
            "return_log_prob", "stack_prefill_result_cache", "prefill_cache_axis_order", "ar_cache_axis_order",
            "compute_axis_order", "reshape_q", "use_ragged_attention", "ragged_block_size", "prefill_chunk_size",
            "use_chunked_prefill", "enable_prefix_caching", "prefix_caching_*", "vllm_*", "force_q_layout",
            "default_prompt", "ragged_buffer_factor",
        ),
    ),
    (
        _ENV,
        (
            "hardware", "jax_distributed_initialization_timeout", "skip_jax_distributed_system",
            "enable_single_controller", "colocated_python_data_input", "colocated_python_checkpointing",
            "dcn_bandwidth_*", "elastic_backup_kind", "elastic_timeout_seconds", "elastic_max_retries",
            "elastic_min_slice_count", "elastic_enabled", "hf_access_token",
        ),
    ),
    (
        _CKPT,
        (
            "save_checkpoint_on_start", "save_checkpoint_on_completion", "async_checkpointing",
            "enable_continuous_checkpointing", "enable_single_replica_ckpt_restoring", "checkpoint_todelete_*",
            "checkpoint_storage_*", "enable_orbax_v1", "checkpoint_conversion_fn", "source_checkpoint_layout",
            "enable_autocheckpoint", "enable_multi_tier_checkpointing", "multi_tier_checkpointing_*",
            "mtc_data_parallelism", "enable_emergency_checkpoint", "local_checkpoint_directory",
            "local_checkpoint_period",
        ),
    ),
    (
        _DATA,
        (
            "tokenizer_path", "tokenizer_type", "use_chat_template", "chat_template_path", "chat_template",
            "tokenize_train_data", "tokenize_eval_data", "add_bos", "add_eos", "use_truncation", "max_corpus_chars",
            "train_data_columns", "train_image_column", "eval_data_columns", "eval_image_column", "num_epoch",
            "generate_padding_batch_train", "generate_padding_batch_eval", "dataset_path", "dataset_name",
            "eval_dataset_name", "train_split", "eval_split", "hf_path", "hf_name", "hf_data_dir", "hf_train_files",
            "hf_eval_split", "hf_eval_files", "grain_*", "olmo_*", "expansion_factor_real_data", "enable_data_shuffling", "data_shuffle_seed",
            "eval_per_device_batch_size",
        ),
    ),
    (
        _NUMERICS,
        (
            "grad_dtype", "matmul_precision", "activations_in_float32", "float32_qk_product", "float32_logits",
            "logits_dot_in_fp32", "cast_logits_to_fp32", "float32_weight_sum", "float32_gate_logits", "mu_dtype",
            "dtype_mm",
        ),
    ),
    (_INIT, ("dense_init_scale",)),
    (_EVAL_ONLY, ("eval_start_step", "target_eval_loss")),
    (
        _INACTIVE,
        (
            # multimodal / other families (use_multimodal, use_audio, model-specific blocks)
            "*_for_vit", "*_for_audio", "freeze_vision_encoder_params", "freeze_audio_encoder_params", "image_path",
            "video_path", "audio_path", "image_placeholder", "video_placeholder", "audio_placeholder",
            "use_audio_in_video", "video_max_grid_*", "max_num_images_per_example", "vision_output_length",
            "mrope_section", "position_id_per_seconds", "vocab_size_per_layer_input", "global_head_dim",
            "global_num_kv_heads", "global_rope_max_timescale", "global_rope_proportion", "local_rope_max_timescale",
            "local_rope_proportion", "attention_output_dim", "sliding_window_size", "chunk_attn_window_size",
            "causal_block_size", "v_norm_with_scale", "gdn_*", "use_qk_norm_in_gdn", "inhomogeneous_layer_cycle_interval",
            # RoPE variants (rope_type)
            "rope_use_scale", "max_position_embeddings", "original_max_position_embeddings", "rope_factor",
            "beta_fast", "beta_slow", "mscale", "rope_interleave", "rope_truncate", "rope_attention_scaling",
            "rope_pairwise", "compressed_rope_max_timescale",
            # attention variants (attention_type, use_indexer, moba, use_qk_clip)
            "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "o_lora_rank",
            "o_groups", "compress_ratios", "indexer_*", "moba_*", "qk_clip_threshold",
            # engram, mhc, mtp
            "engram_*", "sinkhorn_iterations", "enable_mhc_lite", "mtp_loss_scaling_factor", "mtp_eval_target_module",
            # quantization (quantization = "")
            "constant_bound_config", "quant_cfg_path", "use_qwix_quantization", "use_manual_quantization",
            "*_quantization_calibration_method", "quantization_local_shard_count", "weight_sparsity_m",
            "weight_sparsity_update_step", "weight_sparsity_start_step",
            # objectives and trainers (training_objective, use_sft, distillation, diloco, ramp-up, spikes)
            "block_diffusion_*", "sft_train_on_completion_only", "distill_*", "diloco_*", "num_diloco_fragments",
            "use_sequential_layers", "num_communication_overlapping_steps", "communication_overlapping_alpha",
            "per_device_batch_size_start", "per_device_batch_size_increment", "global_rampup_samples",
            "skip_step_interval", "skip_step_scaling_factor", "muon_*",
        ),
    ),
)
"""(reason, key patterns): keys that never change a training step's math here."""

MOE_KEYS: tuple[str, ...] = (
    "num_experts_per_tok", "capacity_factor", "moe_expert_input_dim", "base_moe_mlp_dim", "load_balance_loss_weight",
    "use_random_routing", "norm_topk_prob", "first_num_dense_layers", "shared_experts", "routed_scaling_factor",
    "routed_score_func", "routed_bias", "routed_bias_update_rate", "n_routing_groups", "topk_routing_group",
    "interleave_moe_layer_step",
)
"""Keys read only when num_experts > 1 (the importer checks them itself when it maps an MoE model)."""


def ignored_reason(key: str) -> str | None:
    """The reason a key is ignored, or None when it is not in :data:`IGNORED`."""
    for reason, patterns in IGNORED:
        if any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns):
            return reason
    return None
