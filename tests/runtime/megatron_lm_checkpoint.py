"""Write a checkpoint in the structure Megatron-LM's save_checkpoint gives a torch_dist save, with megatron-core.

Run under torchrun with a compiled bridgec script's process count:

    torchrun --nproc-per-node N tests/runtime/megatron_lm_checkpoint.py RUN.py SAVE_DIR ITERATION

The model is the script's own (its start() and build(): the weights its [init]
draws). When the script keeps checkpoints and has one at ITERATION, that one is
loaded first: the weights and optimizer after real training steps, and the
optimizer state, schedule and consumed samples are saved too, as Megatron-LM
saves them (``optimizer``: megatron-core's optimizer sharded state with the
content metadata Megatron-LM builds; the schedule counted in samples; the
consumed samples and global batch size in ``args``). The save folder gets what Megatron-LM writes (megatron/training/
checkpointing.py, read for the structure): ``iter_NNNNNNN/`` saved by
``dist_checkpointing.save`` with the torch_dist backend (so ``common.pt``,
``metadata.json``, ``.metadata`` and ``__*.distcp``), holding ``args`` (an
argparse Namespace with Megatron-LM's argument names), ``checkpoint_version``
3.0, ``iteration``, ``model`` (the sharded state of the model), the floating-point
operation count and every rank's RNG state as a sharded object; then
``latest_checkpointed_iteration.txt`` on rank 0 once every rank has written.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedObject

from bridgec.runtime.convert import load_script
from bridgec.runtime.model import unwrap

CONTENT_METADATA = {"singleton_local_shards": False, "chained_optim_avoid_prefix": True}
"""What Megatron-LM's save records as content metadata for a run without the distributed optimizer."""


def megatron_args(model: torch.nn.Module, layout: object, iteration: int) -> argparse.Namespace:
    """The architecture entries of Megatron-LM's args for ``model`` (the names its checkpoints store)."""
    config = model.config
    return argparse.Namespace(
        num_layers=config.num_layers,
        hidden_size=config.hidden_size,
        ffn_hidden_size=config.ffn_hidden_size,
        num_attention_heads=config.num_attention_heads,
        group_query_attention=config.num_query_groups != config.num_attention_heads,
        num_query_groups=config.num_query_groups,
        kv_channels=config.kv_channels,
        normalization=config.normalization,
        swiglu=config.gated_linear_unit,
        add_bias_linear=config.add_bias_linear,
        add_qkv_bias=config.add_qkv_bias,
        qk_layernorm=config.qk_layernorm,
        num_experts=config.num_moe_experts,
        padded_vocab_size=model.vocab_size,
        max_position_embeddings=model.max_sequence_length,
        position_embedding_type=model.position_embedding_type,
        rotary_base=model.rotary_base,
        rotary_percent=model.rotary_percent,
        untie_embeddings_and_output_weights=not model.share_embeddings_and_output_weights,
        tensor_model_parallel_size=layout.tensor,  # type: ignore[attr-defined]
        pipeline_model_parallel_size=layout.pipeline,  # type: ignore[attr-defined]
        iteration=iteration,
        ckpt_format="torch_dist",
    )


def main() -> None:
    script, save_dir, iteration = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    compiled = load_script(script)
    layout = compiled.start("torchrun tests/runtime/megatron_lm_checkpoint.py")
    built = compiled.build(layout)
    trained = built.checkpointer is not None and built.checkpointer.has_checkpoint()
    progress = built.checkpointer.load(step=iteration) if trained else None
    chunks = [unwrap(chunk) for chunk in built.model]
    folder = save_dir / f"iter_{iteration:07d}"
    if dist.get_rank() == 0:
        folder.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    rng = {
        "random_rng_state": random.getstate(),
        "np_rng_state": np.random.get_state(),
        "torch_rng_state": torch.get_rng_state(),
    }
    state = {
        "args": megatron_args(chunks[0], layout, iteration),
        "checkpoint_version": 3.0,
        "iteration": iteration,
        "num_floating_point_operations_so_far": 0,
        "rng_state": ShardedObject("rng_state", [rng], (dist.get_world_size(),), (dist.get_rank(),), replica_id=0),
    }
    if len(chunks) == 1:
        state["model"] = chunks[0].sharded_state_dict()
    else:
        for index, chunk in enumerate(chunks):
            state[f"model{index}"] = chunk.sharded_state_dict()
    state["args"].no_save_optim = progress is None  # untrained: only the weights, as --no-save-optim saves
    if progress is not None:
        batch = built.imports.global_batch_size
        args = state["args"]
        args.global_batch_size = batch
        args.consumed_train_samples = progress.consumed_samples
        args.consumed_valid_samples = progress.consumed_valid_samples
        args.use_distributed_optimizer = False
        model_state = {key: value for key, value in state.items() if key.startswith("model")}
        state["optimizer"] = built.optimizer.sharded_state_dict(
            model_state, is_loading=False, metadata=CONTENT_METADATA
        )
        # Megatron-LM steps its schedule by the samples of each update: every count is in samples.
        schedule = built.scheduler.state_dict()
        state["opt_param_scheduler"] = {
            key: value * batch if key.endswith("_steps") and isinstance(value, int) else value
            for key, value in schedule.items()
        }
    dist_checkpointing.save(state, str(folder), sharded_strategy=("torch_dist", 1), content_metadata=CONTENT_METADATA)
    dist.barrier()
    if dist.get_rank() == 0:
        (save_dir / "latest_checkpointed_iteration.txt").write_text(str(iteration))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
