"""Checkpoints on megatron-core's dist_checkpointing: atomic saves, validated loads, exact resume.

A checkpoint holds the model chunks, the optimizer (plain or distributed), the
learning-rate schedule, fp16's loss scale, every rank's RNG states and the
training and validation data positions; the manifest next to it records the
layout, the model's architecture, the spec/script hashes and the publish order
(folder layout and atomicity: :mod:`bridgec.runtime.checkpoint_files`).

Tensors are saved with the ``torch_dist`` backend, sharded: each rank writes its
own shards, replicas are split over the data-parallel ranks. Model and plain
optimizer state are stored in model space (global tensors by global name), so
they load into any tensor/pipeline layout. The distributed optimizer's state is
stored ``dp_reshardable`` (megatron-core's fully parallel format, as Megatron-LM
does by default): it loads when only the data-parallel size changed.

Loading first compares the manifest and every tensor this rank will read with
the checkpoint's index, on all ranks, and refuses with a message naming each
difference before a single tensor is read (:mod:`bridgec.runtime.checkpoint_checks`).
Where megatron-core's checkpointing needs help on CPU (no Apex or Transformer
Engine): :mod:`bridgec.runtime.checkpoint_compat`.

With ``async_save`` a save only stages the state (copies of the tensors, off the
training path) and megatron-core's async machinery writes it in a forked process
while training continues; the loop polls after every step, and once every rank's
writer has finished, a finalize step (collective: every rank learns whether any
write failed) publishes it exactly as a synchronous save does. The next save,
the end of training and an early stop wait for the pending one first.
"""

from __future__ import annotations

import functools
import hashlib
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue, AsyncRequest
from megatron.core.dist_checkpointing.strategies.fully_parallel import FullyParallelSaveStrategyWrapper
from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy
from megatron.core.distributed import DistributedDataParallel
from megatron.core.optimizer.optimizer import ChainedOptimizer, MixedPrecisionOptimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from torch.distributed.checkpoint.api import CheckpointException

from bridgec.runtime import checkpoint_compat as compat
from bridgec.runtime import checkpoint_files as files
from bridgec.runtime.checkpoint_checks import (
    cannot_load,
    gather,
    layout_record,
    manifest_problems,
    model_signature,
    optimizer_kind,
    tensor_problems,
)
from bridgec.runtime.entry import peer_failure
from bridgec.runtime.errors import ExitCode, RunError
from bridgec.runtime.loop import Progress
from bridgec.runtime.model import unwrap
from bridgec.runtime.parallel import Layout, collective_device

SHARDED_METADATA = {
    "distrib_optim_sharding_type": "dp_reshardable",
    "chained_optim_avoid_prefix": True,
    "singleton_local_shards": False,
}
"""How megatron-core shapes the sharded state dicts (the same for save and load)."""


def file_sha256(path: Path) -> str:
    """The sha256 of a file: the generated script passes ``file_sha256(Path(__file__))`` as script_sha256."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def spec_copy(path: Path, sha256: str) -> str | None:
    """The spec's text for the checkpoint, when the file next to the script is still the one compiled (else None)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data.decode("utf-8") if hashlib.sha256(data).hexdigest() == sha256 else None


def rng_states() -> dict[str, Any]:
    """This rank's generators: Python, NumPy, torch (CPU and CUDA) and megatron's tensor-parallel tracker."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "tracker": {name: state.clone() for name, state in tensor_parallel.get_cuda_rng_tracker().get_states().items()},
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(states["tracker"])


@attrs.frozen(kw_only=True)
class PendingSave:
    """A save whose tensors are being written in the background (``async_save``)."""

    progress: Progress
    partial: Path
    has_state: bool
    previous: str
    """What a failure leaves (see :func:`_previous`), as it stood when the save began."""
    began: float
    """perf_counter() when the save began."""


class DistCheckpointer:
    """Saves and restores the whole training state in ``directory`` (see :class:`bridgec.runtime.loop.Checkpointer`).

    Every rank constructs it with the same arguments and calls ``save``,
    ``poll``, ``finish`` and ``load_latest`` together (all are collective).
    """

    def __init__(
        self,
        *,
        directory: Path,
        keep_last: int | None,
        model: list[DistributedDataParallel],
        optimizer: ChainedOptimizer,
        scheduler: OptimizerParamScheduler,
        layout: Layout,
        spec_sha256: str,
        script_sha256: str,
        spec_text: str | None = None,
        async_save: bool = False,
        adapters_only: bool = False,
    ) -> None:
        if not directory.is_absolute():
            raise ValueError(f"checkpoint directory must be absolute (resolved by the script), got {directory}")
        if keep_last is not None and keep_last < 1:
            raise ValueError(f"keep_last must be at least 1, got {keep_last}")
        compat.require_state_initialisers(optimizer)
        self.directory = directory
        self.keep_last = keep_last
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.layout = layout
        self.spec_sha256 = spec_sha256
        self.script_sha256 = script_sha256
        self.spec_text = spec_text
        self.distributed_optimizer = optimizer_kind(optimizer) == "distributed"
        self._strategy: Any = None
        self.async_save = async_save
        self.adapters_only = adapters_only
        """[peft]: the model state saved and loaded is the adapters' alone (the frozen base comes from
        [init.checkpoint] or the initialisation at every start, resume included)."""
        # A forked writer per save (megatron-core's TemporalAsyncCaller): nothing outlives the save it writes.
        self._queue = AsyncCallsQueue(persistent=False) if async_save else None
        self._now = 0
        """The last step the loop reported (poll, finish): how far training ran while a save was written."""

    def has_checkpoint(self) -> bool:
        """Whether the folder holds a complete checkpoint that load_latest would restore (same answer on every rank)."""
        return files.find_latest(self.directory) is not None

    # -- saving ---------------------------------------------------------------

    def save(self, progress: Progress) -> None:
        """Write a complete checkpoint of ``progress.step``; publish it only once every rank has finished.

        With ``async_save`` this waits for the pending save (if any), stages this
        one and returns while it is written; :meth:`poll` or :meth:`finish` publishes it.
        """
        self.finish(progress.step)
        began = time.perf_counter()
        name = files.checkpoint_name(progress.step)
        partial = self.directory / (name + files.PARTIAL_SUFFIX)
        has_state = self._optimizer_has_state()
        previous = _previous(self.directory)
        try:
            _on_rank0(lambda: _prepare_folder(self.directory, partial), f"cannot create {partial}", previous)
            state = self._sharded_state(loading=False, with_optimizer=has_state, with_rng=True)
            state["progress"] = {
                "step": progress.step,
                "consumed_samples": progress.consumed_samples,
                "skipped_steps": progress.skipped_steps,
                "consumed_valid_samples": progress.consumed_valid_samples,
            }
            if progress.user_state is not None:
                state["user_state"] = self._user_state(progress.user_state)
            if self._queue is not None:
                request = dist_checkpointing.save(
                    state, str(partial), sharded_strategy=self._save_strategy(), async_sharded_save=True
                )
                pending = PendingSave(
                    progress=progress, partial=partial, has_state=has_state, previous=previous, began=began
                )
                self._schedule(request, pending)
                _say(
                    f"checkpoint: step {progress.step} staged in {time.perf_counter() - began:.2f} s, "
                    "writing in the background"
                )
                return
            dist_checkpointing.save(state, str(partial), sharded_strategy=self._save_strategy())
            dist.barrier()  # every rank's shards are on disk
            _on_rank0(
                lambda: self._publish(progress, partial, self.directory / name, has_state=has_state),
                f"publishing {partial} failed",
                previous,
            )
        except RunError:
            raise
        except Exception as error:  # noqa: BLE001 - a full disk shows up as several exception types
            if peer_failure(error):
                raise  # another rank died: entry.run reports that, not a checkpoint problem
            raise RunError(
                ExitCode.CHECKPOINT_ERROR,
                f"saving step {progress.step} to {partial} failed ({type(error).__name__}: {str(error).strip()[:500]}); "
                f"{previous}",
            ) from None
        _say(
            f"checkpoint: saved step {progress.step} to {self.directory / name} in {time.perf_counter() - began:.2f} s"
        )

    def _schedule(self, request: AsyncRequest, pending: PendingSave) -> None:
        # megatron-core's finalize functions (gather the write results, write the index) run inside ours,
        # so that a failed write becomes one RunError on every rank and a good one is published.
        ours = request._replace(finalize_fns=[functools.partial(self._finalize, pending, list(request.finalize_fns))])
        self._queue.schedule_async_request(ours)  # type: ignore[union-attr]

    def poll(self, step: int) -> None:
        """Publish the pending save if every rank's writer has finished (collective; call after every step)."""
        if self._queue is not None:
            self._now = step
            self._queue.maybe_finalize_async_calls(blocking=False)

    def finish(self, step: int) -> None:
        """Wait for the pending save and publish it (collective): before a save, at the end, at an early stop."""
        if self._queue is not None:
            self._now = step
            self._queue.maybe_finalize_async_calls(blocking=True)

    def _finalize(self, pending: PendingSave, megatron_finalize: list[Callable[[], None]]) -> None:
        """Every rank's writer has finished: agree on whether all writes succeeded, then publish (rank 0)."""
        finalizing = time.perf_counter()
        step = pending.progress.step
        failure = ""
        try:
            for finalize in megatron_finalize:
                finalize()
        except CheckpointException as error:  # a BaseException: the writers' own failures, gathered on rank 0
            failure = _write_failures(error)
        except Exception as error:  # noqa: BLE001 - a full disk shows up as several exception types
            if peer_failure(error):
                raise
            failure = f"{type(error).__name__}: {str(error).strip()[:500]}"
        flag = torch.tensor([1 if failure else 0], dtype=torch.int64, device=collective_device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item():
            cause = f" ({failure})" if failure else " on another rank"
            raise RunError(
                ExitCode.CHECKPOINT_ERROR,
                f"writing step {step} to {pending.partial} in the background failed{cause}; {pending.previous}",
                every_rank=True,
            )
        final = self.directory / files.checkpoint_name(step)
        _on_rank0(
            lambda: self._publish(pending.progress, pending.partial, final, has_state=pending.has_state),
            f"publishing {pending.partial} failed",
            pending.previous,
        )
        _say(
            f"checkpoint: saved step {step} to {final} in {time.perf_counter() - pending.began:.2f} s "
            f"(written in the background, published after step {self._now}: {self._now - step} steps later; "
            f"finalized in {time.perf_counter() - finalizing:.2f} s)"
        )

    def _publish(self, progress: Progress, partial: Path, final: Path, *, has_state: bool) -> None:
        if self.spec_text is not None:
            (partial / files.SPEC_COPY).write_text(self.spec_text, encoding="utf-8")
        files.fsync_files(partial)
        manifest = self._manifest(progress, files.file_sizes(partial), has_state=has_state)
        files.write_atomic(partial / files.MANIFEST, manifest.to_json())
        files.publish(partial, final)
        if self.keep_last is not None:
            files.prune(self.directory, self.keep_last)

    def _manifest(self, progress: Progress, sizes: dict[str, int], *, has_state: bool) -> files.Manifest:
        import megatron.core

        return files.Manifest(
            format=files.FORMAT,
            step=progress.step,
            consumed_samples=progress.consumed_samples,
            skipped_steps=progress.skipped_steps,
            layout=layout_record(self.layout),
            model=model_signature(self.model),
            optimizer=self._optimizer_record(has_state),
            spec_sha256=self.spec_sha256,
            script_sha256=self.script_sha256,
            versions={"megatron-core": megatron.core.__version__, "torch": torch.__version__},
            files=sizes,
            sequence=files.next_sequence(self.directory),
        )

    def _optimizer_record(self, has_state: bool) -> dict[str, Any]:
        return {
            "kind": "distributed" if self.distributed_optimizer else "plain",
            "class": type(self.optimizer.chained_optimizers[0].optimizer).__name__,
            "sharding": SHARDED_METADATA["distrib_optim_sharding_type"]
            if self.distributed_optimizer
            else "model_space",
            "has_state": has_state,
        }

    def _optimizer_has_state(self) -> bool:
        """Whether every rank's optimizer has taken a step (before that there is no state to save)."""
        local = all(len(sub.optimizer.state) > 0 for sub in self.optimizer.chained_optimizers)
        flag = torch.tensor([int(local)], dtype=torch.int64, device=self.layout.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def _save_strategy(self) -> Any:
        # One strategy for the whole run; replicated shards are split over the data-parallel ranks.
        if self._strategy is None:
            strategy: Any = TorchDistSaveShardedStrategy("torch_dist", 1)
            if self.layout.data * self.layout.context > 1:
                group = parallel_state.get_data_parallel_group(with_context_parallel=True)
                strategy = FullyParallelSaveStrategyWrapper(strategy, group)
            self._strategy = strategy
        return self._strategy

    def _sharded_state(self, *, loading: bool, with_optimizer: bool, with_rng: bool) -> dict[str, Any]:
        model_state = {
            _model_key(index, len(self.model)): self._model_state(unwrap(chunk))
            for index, chunk in enumerate(self.model)
        }
        state: dict[str, Any] = dict(model_state)
        if with_optimizer:
            if loading:
                compat.allocate_optimizer_state(self.optimizer)
            state["optimizer"] = self.optimizer.sharded_state_dict(
                model_state, is_loading=loading, metadata=SHARDED_METADATA
            )
        state["scheduler"] = self.scheduler.state_dict()
        if not loading and self._grad_scalers():
            state["grad_scalers"] = [scaler.state_dict() for scaler in self._grad_scalers()]
        if with_rng:
            state["rng_state"] = ShardedObject(
                "rng_state",
                None if loading else rng_states(),
                (self.layout.world_size,),
                (self.layout.rank,),
                replica_id=0,
            )
        return state

    def _model_state(self, chunk: torch.nn.Module) -> dict[str, Any]:
        state = chunk.sharded_state_dict(metadata=SHARDED_METADATA)
        if not self.adapters_only:
            return state
        return {key: value for key, value in state.items() if key.startswith(ADAPTER_KEYS)}

    def _grad_scalers(self) -> list[Any]:
        """fp16's dynamic loss scalers, one per chained optimizer (none for fp32 and bf16)."""
        return [
            sub.grad_scaler
            for sub in self.optimizer.chained_optimizers
            if isinstance(sub, MixedPrecisionOptimizer) and sub.grad_scaler is not None
        ]

    def _restore_grad_scalers(self, saved: list[dict[str, Any]] | None) -> None:
        """Continue fp16's loss scale where the save left it.

        Saved on their own, beside the optimizer: an fp16 run skips its first
        updates while the scale comes down from 2^32, and until an update has
        been applied the optimizer has no state and is not saved at all, so a
        resume would otherwise start again at 2^32 and skip those steps twice.
        One copy is kept (rank 0's, in the checkpoint's common part), as
        Megatron-LM keeps it: the dense parameters' scale is the same on every
        rank (overflows are agreed over the model-parallel ranks, and gradients
        are data-parallel averages). An expert optimizer's scale is agreed only
        within its expert-parallel rank's group, so with expert parallelism and
        fp16 the other expert ranks resume at rank 0's expert scale.
        """
        if saved is None:
            return
        for scaler, state in zip(self._grad_scalers(), saved):
            scaler.load_state_dict(state)

    # -- loading --------------------------------------------------------------

    def load_latest(self) -> Progress | None:
        """Restore the checkpoint ``latest`` names; None when the directory holds none.

        Raises RunError(CHECKPOINT_ERROR) naming every difference when the
        checkpoint does not fit this run or is damaged; nothing is loaded then.
        """
        return self.load(step=None)

    def load(self, *, step: int | None) -> Progress | None:
        """Restore the checkpoint of ``step`` (None: the latest, as :meth:`load_latest`).

        A ``step`` without a complete checkpoint is a RunError(CHECKPOINT_ERROR)
        that lists the steps the folder has.
        """
        path = files.find_step(self.directory, step)
        if path is None:
            return None
        began = time.perf_counter()
        manifest = files.read_manifest(path)
        problems = files.file_problems(path, manifest)
        if problems:
            raise RunError(ExitCode.CHECKPOINT_ERROR, cannot_load(path, problems), every_rank=True)
        problems = manifest_problems(manifest, model=self.model, optimizer=self.optimizer, layout=self.layout)
        same_layout = manifest.layout == layout_record(self.layout)
        with_optimizer = manifest.optimizer["has_state"]
        state = self._sharded_state(loading=True, with_optimizer=with_optimizer, with_rng=same_layout)
        if not problems:
            metadata = files.read_tensor_metadata(path)
            problems = tensor_problems(state, metadata)
            # Callbacks' user_state is per rank, like the RNG states: it comes back when the layout is the same.
            # A checkpoint of a run without callbacks has none, and the callbacks then start with an empty one.
            if any(key.startswith("user_state/") for key in metadata.state_dict_metadata):
                if same_layout:
                    state["user_state"] = self._user_state(None)
                else:
                    _say("checkpoint: the callbacks' user_state is per rank and is not restored after a layout change")
        problems = gather(problems)
        if problems:
            raise RunError(ExitCode.CHECKPOINT_ERROR, cannot_load(path, problems), every_rank=True)
        try:
            loaded = self._load(path, state, with_optimizer=with_optimizer)
        except Exception as error:  # noqa: BLE001 - whatever broke, this run must not continue half-loaded
            raise RunError(
                ExitCode.CHECKPOINT_ERROR,
                f"loading {path} failed ({type(error).__name__}: {str(error).strip()[:500]}); "
                "the run stops rather than continue from a partly loaded state",
            ) from None
        self._restore_schedule(loaded["scheduler"])
        self._restore_grad_scalers(loaded.get("grad_scalers"))
        if same_layout:
            restore_rng_states(loaded["rng_state"])
        else:
            _say(
                "checkpoint: the layout changed since the save; RNG states are per rank and were not restored "
                "(dropout differs from an uninterrupted run)"
            )
        if manifest.spec_sha256 != self.spec_sha256:
            _say(f"checkpoint: written from a different spec (sha256 {manifest.spec_sha256[:12]}...)")
        progress = loaded["progress"]
        _say(f"checkpoint: loaded step {progress['step']} from {path} in {time.perf_counter() - began:.2f} s")
        return Progress(
            step=progress["step"],
            consumed_samples=progress["consumed_samples"],
            skipped_steps=progress["skipped_steps"],
            # Checkpoints written before the validation position was kept evaluate from the split's start.
            consumed_valid_samples=progress.get("consumed_valid_samples", 0),
            user_state=loaded.get("user_state"),
        )

    def _user_state(self, data: dict[str, Any] | None) -> ShardedObject:
        """This rank's callbacks' user_state as one pickled object per rank (None: the slot a load fills)."""
        return ShardedObject("user_state", data, (self.layout.world_size,), (self.layout.rank,), replica_id=0)

    @torch.no_grad()  # the fp32 distributed optimizer's main params are views of the model's
    def _load(self, path: Path, state: dict[str, Any], *, with_optimizer: bool) -> dict[str, Any]:
        loaded = dist_checkpointing.load(state, str(path))
        for index, chunk in enumerate(self.model):
            model_state = loaded[_model_key(index, len(self.model))]
            found = unwrap(chunk).load_state_dict(model_state, strict=not self.adapters_only)
            if self.adapters_only and found.unexpected_keys:
                raise ValueError(f"not adapters of this model: {found.unexpected_keys}")
        if with_optimizer:
            self.optimizer.load_state_dict(loaded["optimizer"])
            compat.restore_distributed_steps(self.optimizer, loaded["optimizer"])
        else:
            # Mixed-precision optimizers keep fp32 main copies made when they were built; without optimizer
            # state to load, refresh them from the loaded weights or the first update writes the old ones back.
            self.optimizer.reload_model_params()
        return loaded

    def _restore_schedule(self, saved: dict[str, Any]) -> None:
        """Continue the schedule at the saved step, with this run's settings (a longer run may change them)."""
        current = self.scheduler.state_dict()
        changed = [
            f"{key} {saved[key]} -> {value}"
            for key, value in current.items()
            if key != "num_steps" and saved.get(key) != value
        ]
        if changed:
            _say(
                "checkpoint: the learning-rate schedule changed since the save; using this run's: " + ", ".join(changed)
            )
        compat.restore_schedule(self.scheduler, current, saved["num_steps"])


def _write_failures(error: CheckpointException) -> str:
    """'rank 0: OSError: [Errno 28] No space left on device; ...' from the writers' wrapped exceptions."""
    causes = []
    for rank, wrapped in sorted(error.failures.items()):
        cause = wrapped[0] if isinstance(wrapped, tuple) else wrapped
        causes.append(f"rank {rank}: {type(cause).__name__}: {str(cause).strip()[:200]}")
    # Only the coordinator (rank 0) learns the causes; the other ranks know that a write failed.
    return "; ".join(causes) if causes else "a background writer failed"


def _prepare_folder(directory: Path, partial: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    files.remove_partials(directory)
    partial.mkdir()


def _previous(directory: Path) -> str:
    """What a failed save leaves: the checkpoint a resume would still load, named, or that there is none."""
    complete = files.complete_checkpoints(directory)
    if not complete:
        return "there is no earlier checkpoint in this folder"
    return f"the previous checkpoint ({complete[-1][1].name}) is intact"


def _on_rank0(action: Callable[[], None], what: str, previous: str) -> None:
    """Run ``action`` on rank 0 only; every rank learns whether it worked (so none waits forever in a barrier).

    A failure raises RunError(CHECKPOINT_ERROR) on every rank: on rank 0 with
    the cause, on the others saying rank 0 failed.
    """
    failure = ""
    if dist.get_rank() == 0:
        try:
            action()
        except Exception as error:  # noqa: BLE001 - any file-system failure; reported below on every rank
            failure = f"{what}: {type(error).__name__}: {str(error).strip()[:300]}"
    flag = torch.tensor([1 if failure else 0], dtype=torch.int64, device=collective_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item():
        # Rank 0's message names the cause; the others only know that rank 0 failed.
        raise RunError(ExitCode.CHECKPOINT_ERROR, (failure or f"{what} on rank 0") + f"; {previous}", every_rank=True)


ADAPTER_KEYS = "peft."
"""The adapters' keys in a chunk's state (runtime.peft.PeftLayers under chunk.peft)."""


def _model_key(index: int, count: int) -> str:
    # Megatron-LM's names: "model" for one chunk, "model0", "model1", ... with a virtual pipeline.
    return "model" if count == 1 else f"model{index}"


def _say(text: str) -> None:
    if dist.get_rank() == 0:
        print(text, flush=True)
