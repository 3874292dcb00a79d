"""Test stand-in for a compiled script (the hand-written prototype plus checkpoints and fault knobs).

Driven by environment variables so one file covers every checkpoint and fault
test; tests/runtime/launch.py is the only place that builds or runs it, so the
switch to scripts emitted by the compiler is a change there.

  TP PP VPP DISTOPT      layout and optimizer (DISTOPT=1: distributed optimizer)
  ITERS SAVE_INTERVAL KEEP_LAST EXIT_INTERVAL RESUME ON_NONFINITE EVAL_INTERVAL
  HIDDEN LAYERS          hidden size and layers (other values: a checkpoint of another shape)
  NAN_STEP=k             the loss of step k (1-based) is multiplied by nan
  SIGTERM_STEP=k         rank 0 sends itself SIGTERM during step k
  DIE_STEP=k DIE_RANK=r  rank r kills itself (SIGKILL) during step k
  TIMEOUT_MINUTES        distributed timeout
It writes metrics to out/metrics.jsonl and checkpoints to ckpt/, next to itself.
"""

from __future__ import annotations

import functools
import hashlib
import os
import signal
from pathlib import Path

import torch
from megatron.core.distributed import finalize_model_grads
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer import TransformerConfig

from bridgec.runtime import cpu_compat
from bridgec.runtime.checkpoint import DistCheckpointer, file_sha256
from bridgec.runtime.data import TokenIds, build_splits, next_batch
from bridgec.runtime.entry import run
from bridgec.runtime.errors import ExitCode
from bridgec.runtime.loop import LoopSettings, train
from bridgec.runtime.loss import masked_token_loss
from bridgec.runtime.model import build_model, unwrap
from bridgec.runtime.optim import OptimizerSettings, ScheduleSettings, build_optimizer, build_scheduler
from bridgec.runtime.parallel import initialize

HERE = Path(__file__).resolve().parent
ENV = os.environ


def knob(name: str) -> int | None:
    return int(ENV[name]) if ENV.get(name) else None


TP = knob("TP") or 1
PP = knob("PP") or 1
VPP = knob("VPP")
DISTOPT = bool(knob("DISTOPT"))
WORLD_SIZE = int(ENV.get("WORLD_SIZE", 1))
DP = WORLD_SIZE // (TP * PP)
GLOBAL_BATCH_SIZE = 8
MICRO_BATCH_SIZE = 2
NUM_MICROBATCHES = GLOBAL_BATCH_SIZE // (MICRO_BATCH_SIZE * DP)
SEQ_LENGTH = 32
NUM_LAYERS = knob("LAYERS") or 2
HIDDEN = knob("HIDDEN") or 64
VOCAB = 128
ITERS = knob("ITERS") or 6
NAN_STEP = knob("NAN_STEP")
SIGTERM_STEP = knob("SIGTERM_STEP")
DIE_STEP = knob("DIE_STEP")
DIE_RANK = knob("DIE_RANK") or 0
SPEC_TEXT = f"# test spec\n[train]\niters = {ITERS}\n"


def transformer_config() -> TransformerConfig:
    return TransformerConfig(
        num_layers=NUM_LAYERS, hidden_size=HIDDEN, num_attention_heads=4, ffn_hidden_size=4 * HIDDEN,
        hidden_dropout=0.1, attention_dropout=0.1, init_method_std=0.02, normalization="LayerNorm",
        layernorm_epsilon=1e-5, add_bias_linear=True, tensor_model_parallel_size=TP,
        pipeline_model_parallel_size=PP, virtual_pipeline_model_parallel_size=VPP, pipeline_dtype=torch.float32,
        params_dtype=torch.float32, use_cpu_initialization=True, calculate_per_token_loss=True,
        batch_p2p_sync=False, batch_p2p_comm=VPP is None, overlap_p2p_comm=VPP is not None,
        finalize_model_grads_func=finalize_model_grads,
    )


def model_provider(pre_process, post_process, vp_stage=None):
    return GPTModel(
        config=transformer_config(), transformer_layer_spec=get_gpt_layer_local_spec(), vocab_size=VOCAB,
        max_sequence_length=SEQ_LENGTH, pre_process=pre_process, post_process=post_process,
        share_embeddings_and_output_weights=True, position_embedding_type="learned_absolute", vp_stage=vp_stage,
    )


def forward_step(state, data_iterator, model, return_schedule_plan=False):
    step = state.step + 1
    if step == SIGTERM_STEP and state.layout.rank == 0:
        os.kill(os.getpid(), signal.SIGTERM)
    if step == DIE_STEP and state.layout.rank == DIE_RANK:
        os.kill(os.getpid(), signal.SIGKILL)
    chunk = unwrap(model)
    batch = next_batch(data_iterator, pre_process=chunk.pre_process, post_process=chunk.post_process, device=state.layout.device)
    output = model(batch.tokens, batch.position_ids, None, labels=batch.labels)
    if step == NAN_STEP and chunk.post_process and model.training:
        output = output * float("nan")
    return output, functools.partial(masked_token_loss, batch.loss_mask)


def main() -> ExitCode:
    cpu_compat.apply()
    layout = initialize(device="cpu", tensor=TP, pipeline=PP, virtual_pipeline=VPP, context=1, expert=1, seed=1234,
                        timeout_minutes=float(ENV.get("TIMEOUT_MINUTES", "2")))
    model = build_model(model_provider, layout=layout, init_scheme="portable", seed=1234, init_std=0.02,
                        num_layers=NUM_LAYERS, tied_output=True, dtype="fp32", distributed_optimizer=DISTOPT)
    opt_settings = OptimizerSettings(name="adam", lr=1e-3, min_lr=1e-4, weight_decay=0.01, adam_beta1=0.9,
                                     adam_beta2=0.999, adam_eps=1e-8, sgd_momentum=0.9, clip_grad=1.0, dtype="fp32",
                                     distributed_optimizer=DISTOPT)
    optimizer = build_optimizer(model, opt_settings)
    scheduler = build_scheduler(optimizer, lr=1e-3, min_lr=1e-4, weight_decay=0.01, schedule=ScheduleSettings(
        warmup_iters=2, warmup_init_lr=0.0, decay="cosine", decay_iters=ITERS, wsd_decay_iters=None, wsd_decay_style="linear"))
    splits = build_splits(kind="mock", prefixes=(), weights=(), split=(98, 1, 1), seq_length=SEQ_LENGTH, seed=1234,
                          token_ids=TokenIds(vocab_size=VOCAB, eod=VOCAB - 1), eod_mask_loss=False,
                          num_samples=(ITERS * GLOBAL_BATCH_SIZE, 2 * GLOBAL_BATCH_SIZE, 0),
                          cache_dir=str(HERE / "out" / "cache"))
    settings = LoopSettings(iters=ITERS, log_interval=1, eval_interval=knob("EVAL_INTERVAL"), eval_iters=2,
                            global_batch_size=GLOBAL_BATCH_SIZE, micro_batch_size=MICRO_BATCH_SIZE,
                            num_microbatches=NUM_MICROBATCHES, seq_length=SEQ_LENGTH, clip_grad=1.0, clip_epsilon=1e-6,
                            on_nonfinite=ENV.get("ON_NONFINITE", "skip"), exit_interval=knob("EXIT_INTERVAL"),
                            exit_duration_minutes=None, save_interval=knob("SAVE_INTERVAL"),
                            metrics_path=HERE / "out" / "metrics.jsonl")
    checkpointer = DistCheckpointer(
        directory=HERE / "ckpt", keep_last=knob("KEEP_LAST"), model=model, optimizer=optimizer, scheduler=scheduler,
        layout=layout, spec_sha256=hashlib.sha256(SPEC_TEXT.encode()).hexdigest(),
        script_sha256=file_sha256(Path(__file__)), spec_text=SPEC_TEXT,
    )
    return train(forward_step, model=model, optimizer=optimizer, scheduler=scheduler, splits=splits, layout=layout,
                 settings=settings, checkpointer=checkpointer, resume=bool(knob("RESUME")))


if __name__ == "__main__":
    run(main)
