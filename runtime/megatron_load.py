"""Initial weights from a checkpoint Megatron-LM (or Megatron Bridge) saved in the ``torch_dist`` format.

Such a save folder holds ``latest_checkpointed_iteration.txt`` and one
``iter_NNNNNNN/`` per save, each with ``common.pt`` (the entries every rank
shares: ``args``, ``checkpoint_version``, ``iteration``, ...), ``metadata.json``
(the dist_checkpointing backend) and the ``__*.distcp`` shards with their
``.metadata`` index. The model's sharded state sits under ``model`` (``model0``,
``model1``, ... with a virtual pipeline), by megatron-core's global tensor
names: the same names bridgec's own checkpoints use, so it loads into any
tensor/pipeline layout.

A checkpoint bridgec saved (a ``[checkpoint] dir``: its ``latest`` names the
folder) is the same torch_dist structure under the same names, so it loads here
too, weights only: its manifest (``bridgec.json``) stands in for Megatron-LM's
``checkpoint_version`` and ``args`` (its model architecture is compared, its
file sizes checked). Its optimizer state continues with ``[checkpoint] resume``.

Before a tensor is read, on every rank: the checkpoint version, the run's
architecture against the checkpoint's ``args`` (when it has them) and Megatron
Bridge's ``run_config.yaml`` (when there is one), every tensor
this rank will read against the index, and every shard file against the byte
ranges the index points into (a truncated copy). Every difference is named in
one RunError (CHECKPOINT_ERROR); nothing is loaded then.

With the optimizer state (:func:`load_megatron_training_state`) the load also
reads ``optimizer`` (megatron-core's optimizer sharded state, built with the
checkpoint's own content metadata as Megatron-LM's load does), the schedule
``opt_param_scheduler`` (Megatron-LM counts it in samples: divided by the
checkpoint's global batch size into the updates bridgec counts) and the
iteration and consumed samples of ``args``, so training continues where
Megatron-LM stopped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
import torch.distributed as dist
import yaml
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.distributed import DistributedDataParallel
from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from torch.distributed.checkpoint.metadata import Metadata

from bridgec.runtime import checkpoint_compat as compat
from bridgec.runtime import checkpoint_files as files
from bridgec.runtime.checkpoint_checks import ARCHITECTURE, dtype_casts, gather, model_signature, tensor_problems
from bridgec.runtime.checkpoint_files import read_tensor_metadata
from bridgec.runtime.errors import ExitCode, RunError
from bridgec.runtime.model import unwrap

TRACKER = "latest_checkpointed_iteration.txt"
RELEASE = "release"
COMMON = "common.pt"
BACKEND = "metadata.json"
RUN_CONFIG = "run_config.yaml"
"""Megatron Bridge's copy of its configuration, in every checkpoint folder it writes."""
KNOWN_VERSIONS = (3.0,)
"""Megatron-LM's checkpoint_version values this loader reads (3.0: the current one, torch_dist included)."""
_ITERATION = re.compile(r"^iter_(\d{7})$")


@attrs.frozen(kw_only=True)
class MegatronImport:
    """What :func:`load_megatron_weights` loaded."""

    folder: Path
    """The ``iter_*`` folder read."""
    iteration: int
    """The iteration the checkpoint was saved at (its ``iteration`` entry)."""
    compared_args: bool
    """Whether the checkpoint had Megatron-LM ``args``, a Megatron Bridge run config or a bridgec manifest to
    compare with."""
    casts: tuple[str, ...] = ()
    """The dtype changes the load made on this rank ("float32 -> bfloat16"): the weights are stored in another
    dtype than this run's, and megatron-core's load cast them (rounding to nearest)."""


@attrs.frozen(kw_only=True)
class MegatronProgress:
    """What :func:`load_megatron_training_state` loaded: the training position, in bridgec's units."""

    folder: Path
    """The ``iter_*`` folder read."""
    step: int
    """Updates applied: the checkpoint's ``iteration``."""
    consumed_samples: int
    """``args.consumed_train_samples``: where the training data continues."""
    consumed_valid_samples: int
    """``args.consumed_valid_samples``: where the validation data continues."""
    schedule_steps: int
    """The scheduler's ``num_steps`` (samples in Megatron-LM) over the checkpoint's global batch size."""


def iteration_folder(path: Path) -> Path:
    """The ``iter_*`` (or ``release``) folder of a Megatron-LM save folder (its tracker file names it), of a
    bridgec ``[checkpoint] dir`` (the one its ``latest`` names), or ``path`` itself."""
    if _ITERATION.match(path.name) or path.name == RELEASE:
        return path
    if (path / files.POINTER).is_file() or files.complete_checkpoints(path):
        latest = files.find_latest(path)
        assert latest is not None  # a pointer names a folder, or there is a complete checkpoint
        return latest
    tracker = path / TRACKER
    if not tracker.is_file():
        raise RunError(
            ExitCode.CHECKPOINT_ERROR,
            f"{path}: not a Megatron-LM checkpoint folder (no {TRACKER}, and not an iter_NNNNNNN or release "
            f"folder) nor a bridgec one (no {files.POINTER} and no complete iter_NNNNNNN inside)",
        )
    text = tracker.read_text(encoding="utf-8", errors="replace").strip()
    if text == RELEASE:
        return path / RELEASE  # Megatron-LM's name for a checkpoint converted or released without an iteration
    if not text.isdigit():
        raise RunError(
            ExitCode.CHECKPOINT_ERROR,
            f"{tracker} should hold an iteration number or 'release', it holds {text[:40]!r}",
        )
    return path / f"iter_{int(text):07d}"


def read_common(folder: Path) -> dict[str, Any]:
    """``common.pt`` of an ``iter_*`` folder, checked for a backend and a version this loader reads."""
    if not folder.is_dir():
        raise RunError(ExitCode.CHECKPOINT_ERROR, f"{folder}: no such checkpoint folder")
    for name in (COMMON, BACKEND, ".metadata"):
        if not (folder / name).is_file():
            raise RunError(
                ExitCode.CHECKPOINT_ERROR,
                f"{folder / name}: missing; {folder} is not a complete torch_dist checkpoint "
                "(an unfinished save, or another format)",
            )
    try:
        common = torch.load(folder / COMMON, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means a damaged file
        raise RunError(
            ExitCode.CHECKPOINT_ERROR, f"{folder / COMMON} cannot be read ({type(error).__name__}: {error})"
        ) from None
    if not isinstance(common, dict):
        raise RunError(ExitCode.CHECKPOINT_ERROR, f"{folder / COMMON}: not a Megatron-LM common state (a dict)")
    if (folder / files.MANIFEST).is_file():
        return common  # bridgec's own: its manifest, not a checkpoint_version, says what it holds
    version = common.get("checkpoint_version")
    if version not in KNOWN_VERSIONS:
        raise RunError(
            ExitCode.CHECKPOINT_ERROR,
            f"{folder / COMMON}: checkpoint_version {version!r}; this loader reads "
            f"{', '.join(str(known) for known in KNOWN_VERSIONS)} (Megatron-LM's torch_dist checkpoints)",
        )
    return common


def args_view(args: Any) -> dict[str, Any]:
    """The architecture Megatron-LM's ``args`` describe, under the names of :func:`model_signature`."""
    view: dict[str, Any] = {}

    def put(name: str, value: Any) -> None:
        if value is not None:
            view[name] = value

    for name in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "kv_channels"):
        put(name, getattr(args, name, None))
    heads = getattr(args, "num_attention_heads", None)
    put("num_query_groups", args.num_query_groups if getattr(args, "group_query_attention", False) else heads)
    put("normalization", getattr(args, "normalization", None))
    put("gated_linear_unit", getattr(args, "swiglu", None))
    put("add_bias_linear", getattr(args, "add_bias_linear", None))
    put("add_qkv_bias", getattr(args, "add_qkv_bias", None))
    put("qk_layernorm", getattr(args, "qk_layernorm", None))
    put("num_moe_experts", getattr(args, "num_experts", None))
    put("vocab_size", getattr(args, "padded_vocab_size", None))
    put("max_sequence_length", getattr(args, "max_position_embeddings", None))
    put("position_embedding_type", getattr(args, "position_embedding_type", None))
    if getattr(args, "position_embedding_type", None) == "rope":
        put("rotary_base", getattr(args, "rotary_base", None))
        put("rotary_percent", getattr(args, "rotary_percent", None))
    untie = getattr(args, "untie_embeddings_and_output_weights", None)
    put("tied_output", None if untie is None else not untie)
    return view


_RUN_CONFIG_NAMES = {
    **{name: name for name in ARCHITECTURE},
    "seq_length": "max_sequence_length",
    "position_embedding_type": "position_embedding_type",
}
"""Megatron Bridge's model provider fields (run_config.yaml ``model:``) under the names of :func:`model_signature`."""


def run_config_view(config: dict[str, Any]) -> dict[str, Any]:
    """The architecture a Megatron Bridge ``run_config.yaml`` describes (its ``model`` section)."""
    model = config.get("model")
    if not isinstance(model, dict):
        return {}
    view = {ours: model[theirs] for theirs, ours in _RUN_CONFIG_NAMES.items() if model.get(theirs) is not None}
    if model.get("share_embeddings_and_output_weights") is not None:
        view["tied_output"] = model["share_embeddings_and_output_weights"]
    return view


def read_run_config(folder: Path) -> dict[str, Any] | None:
    """Megatron Bridge's ``run_config.yaml`` of an ``iter_*`` folder; None when there is none (Megatron-LM)."""
    file = folder / RUN_CONFIG
    if not file.is_file():
        return None
    try:
        config = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise RunError(ExitCode.CHECKPOINT_ERROR, f"{file} cannot be read ({type(error).__name__}: {error})") from None
    if not isinstance(config, dict):
        raise RunError(ExitCode.CHECKPOINT_ERROR, f"{file}: not a Megatron Bridge run config (a mapping)")
    return config


def differences(view: dict[str, Any], ours: dict[str, Any], source: str) -> list[str]:
    """Each architecture value ``view`` (read from ``source``) gives differently from this run's signature."""
    return [
        f"{name}: {value!r} in {source}, {ours[name]!r} in this run"
        for name, value in view.items()
        if name in ours and ours[name] != value
    ]


def truncated_files(folder: Path, metadata: Metadata | None = None) -> list[str]:
    """Shard files shorter than the byte ranges the index reads from them (or missing); ``metadata``: the folder's
    tensor index when the caller has read it already."""
    metadata = metadata if metadata is not None else read_tensor_metadata(folder)
    needed: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        name = info.relative_path
        needed[name] = max(needed.get(name, 0), info.offset + info.length)
    problems = []
    for name, size in sorted(needed.items()):
        file = folder / name
        if not file.is_file():
            problems.append(f"{file}: missing")
        elif file.stat().st_size < size:
            problems.append(f"{file}: {file.stat().st_size} bytes, the index reads up to byte {size} (truncated)")
    return problems


def load_megatron_weights(
    model: Sequence[torch.nn.Module], optimizer: Any | None, *, path: Path, replica: int = 0
) -> MegatronImport:
    """Load the model weights of the Megatron-LM checkpoint at ``path`` into ``model`` (collective).

    ``path`` is a Megatron-LM save folder (its latest iteration), a bridgec
    ``[checkpoint] dir`` (its latest) or one ``iter_*`` folder; ``model`` the
    chunks, wrapped (DDP) or not. The optimizer's fp32 main parameters are
    refreshed from the loaded weights (None: a model without one, a frozen
    teacher). A RunError(CHECKPOINT_ERROR) lists every problem found on any rank
    before anything is read.

    ``replica``: which copy of ``model`` this rank holds when ranks that
    megatron-core's layout tells apart hold the same one (a distillation's
    teacher, whole on every pipeline stage while it loads: its stage's number).
    Copies other than 0 are marked non-main replicas, so that megatron-core's
    check that each shard is read by one main replica counts each once.
    """
    imported, _ = _load(model, optimizer, None, path=path, replica=replica)
    return imported


def load_megatron_training_state(
    model: list[DistributedDataParallel], optimizer: Any, scheduler: OptimizerParamScheduler, *, path: Path
) -> MegatronProgress:
    """Load weights, optimizer state, schedule and training position of a Megatron-LM checkpoint (collective).

    As :func:`load_megatron_weights`; the checkpoint must also hold Megatron-LM's
    optimizer state (not saved with ``--no-save-optim``), and a distributed
    optimizer's state saved in a sharding megatron-core cannot reshard is refused
    when the tensor/pipeline layout changed. ``scheduler`` continues at the
    saved step with this run's settings.
    """
    _, progress = _load(model, optimizer, scheduler, path=path)
    assert progress is not None  # with a scheduler, _load refuses a checkpoint it cannot read a position from
    return progress


def architecture_views(
    folder: Path, common: dict[str, Any], manifest: files.Manifest | None
) -> list[tuple[dict[str, Any], str]]:
    """Each description of the saved model the checkpoint holds, with where it is from: Megatron-LM's ``args``,
    Megatron Bridge's ``run_config.yaml``, bridgec's manifest (:func:`bridgec_manifest`)."""
    views = []
    if common.get("args") is not None:
        views.append((args_view(common["args"]), "the checkpoint's args"))
    run_config = read_run_config(folder)
    if run_config is not None:
        views.append((run_config_view(run_config), f"{folder / RUN_CONFIG}"))
    if manifest is not None:
        views.append((manifest.model, f"{folder / files.MANIFEST}"))
    return views


def bridgec_manifest(folder: Path) -> files.Manifest | None:
    """The manifest of a checkpoint bridgec saved; None for Megatron-LM's and Megatron Bridge's."""
    return files.read_manifest(folder) if (folder / files.MANIFEST).is_file() else None


def _load(
    model: Sequence[torch.nn.Module],
    optimizer: Any | None,
    scheduler: OptimizerParamScheduler | None,
    *,
    path: Path,
    replica: int = 0,
) -> tuple[MegatronImport, MegatronProgress | None]:
    folder = iteration_folder(path)
    common = read_common(folder)
    manifest = bridgec_manifest(folder)
    ours = model_signature(list(model))
    weights_only = scheduler is None
    if weights_only:
        # Weights alone are cast on load (an fp32 checkpoint into a bf16 run); optimizer state is never.
        del ours["params_dtype"]
    views = architecture_views(folder, common, manifest)
    problems = [problem for view, source in views for problem in differences(view, ours, source)]
    if manifest is not None:
        problems += files.file_problems(folder, manifest)
    model_state = {
        _model_key(index, len(model)): unwrap(chunk).sharded_state_dict() for index, chunk in enumerate(model)
    }
    if replica:
        _mark_replica(model_state, replica)
    state: dict[str, Any] = dict(model_state)
    progress = None
    if scheduler is not None and manifest is not None:
        problems.append(
            f"{folder}: a bridgec checkpoint; optimizer_state = true reads Megatron-LM's optimizer state and "
            "schedule (continue a bridgec run with [checkpoint] dir and resume = true, or set optimizer_state = false)"
        )
    elif scheduler is not None:
        metadata = dist_checkpointing.load_content_metadata(str(folder)) or {}
        training = training_problems(common, metadata, optimizer, folder=folder)
        problems += training
        if not training:
            progress = megatron_progress(common, folder=folder)
            compat.allocate_optimizer_state(optimizer)
            state["optimizer"] = optimizer.sharded_state_dict(model_state, is_loading=True, metadata=metadata)
    casts: list[str] = []
    if not problems:
        metadata = read_tensor_metadata(folder)
        problems = tensor_problems(state, metadata, any_dtype=weights_only) + truncated_files(folder, metadata)
        casts = dtype_casts(state, metadata)
    problems = gather(problems)
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise RunError(
            ExitCode.CHECKPOINT_ERROR,
            f"cannot start from {folder}; nothing was loaded:\n  " + "\n  ".join(shown),
            every_rank=True,
        )
    try:
        with torch.no_grad():  # the fp32 distributed optimizer's main params are views of the model's
            loaded = dist_checkpointing.load(state, str(folder))
            for index, chunk in enumerate(model):
                unwrap(chunk).load_state_dict(loaded[_model_key(index, len(model))], strict=True)
            if scheduler is None and optimizer is not None:
                optimizer.reload_model_params()
            elif scheduler is not None:
                optimizer.load_state_dict(loaded["optimizer"])
                compat.restore_distributed_steps(optimizer, loaded["optimizer"])
    except Exception as error:  # noqa: BLE001 - whatever broke, this run must not continue half-loaded
        raise RunError(
            ExitCode.CHECKPOINT_ERROR,
            f"loading {folder} failed ({type(error).__name__}: {str(error).strip()[:500]}); "
            "the run stops rather than continue from partly loaded weights",
        ) from None
    if scheduler is not None and progress is not None:
        compat.restore_schedule(scheduler, scheduler.state_dict(), progress.schedule_steps)
    iteration = manifest.step if manifest is not None else common.get("iteration", 0)
    imported = MegatronImport(folder=folder, iteration=int(iteration), compared_args=bool(views), casts=tuple(casts))
    if casts and dist.get_rank() == 0:
        print(f"{folder}: weights stored as {', '.join(casts)} (this run's dtype), cast on load", flush=True)
    return imported, progress


def _mark_replica(state: dict[str, Any], replica: int) -> None:
    """Append ``replica`` to every sharded entry's replica id (megatron-core's main replica: all zeros)."""
    for entry in nested_values(state):
        ids = entry.replica_id if isinstance(entry.replica_id, tuple) else (entry.replica_id,)
        entry.replica_id = (*ids, replica)


def training_problems(common: dict[str, Any], metadata: dict[str, Any], optimizer: Any, *, folder: Path) -> list[str]:
    """Why the optimizer state, schedule or position of ``common`` cannot continue in this run (empty: they can)."""
    args = common.get("args")
    if "opt_param_scheduler" not in common or getattr(args, "no_save_optim", False):
        return [
            f"{folder / COMMON}: no optimizer state or scheduler (saved with --no-save-optim?); "
            "optimizer_state = true needs both"
        ]
    needed = ("consumed_train_samples", "global_batch_size")
    missing = [name for name in needed if getattr(args, name, None) is None]
    if missing:
        return [f"{folder / COMMON}: its args lack {', '.join(missing)}, needed to continue the data and schedule"]
    problems = []
    samples, batch = common["opt_param_scheduler"].get("num_steps", 0), args.global_batch_size
    if samples % batch:
        problems.append(
            f"{folder / COMMON}: opt_param_scheduler num_steps {samples} is not a whole number of "
            f"global batches of {batch} samples"
        )
    sharding = metadata.get("distrib_optim_sharding_type")
    distributed = any(isinstance(sub, DistributedOptimizer) for sub in optimizer.chained_optimizers)
    if sharding is not None and sharding not in DistributedOptimizer.checkpoint_fully_reshardable_formats:
        saved = (getattr(args, "tensor_model_parallel_size", 1), getattr(args, "pipeline_model_parallel_size", 1))
        now = (
            parallel_state.get_tensor_model_parallel_world_size(),
            parallel_state.get_pipeline_model_parallel_world_size(),
        )
        if saved != now or not distributed:
            problems.append(
                f"{folder}: the distributed optimizer's state is saved as {sharding!r}, which megatron-core reads "
                f"back only into a distributed optimizer at the saved tensor/pipeline layout (TP{saved[0]} PP{saved[1]}); "
                f"this run is TP{now[0]} PP{now[1]}"
                + ("" if distributed else " without a distributed optimizer")
                + " (save with --dist-ckpt-optim-fully-reshardable, or set optimizer_state = false)"
            )
    elif sharding is None and distributed:
        problems.append(
            f"{folder}: the checkpoint holds a plain (not distributed) optimizer's state; this run uses the "
            "distributed optimizer (set parallel.distributed_optimizer = false to continue it)"
        )
    return problems


def megatron_progress(common: dict[str, Any], *, folder: Path) -> MegatronProgress:
    """The training position of a checked ``common`` (see :func:`training_problems`)."""
    args = common["args"]
    return MegatronProgress(
        folder=folder,
        step=int(common.get("iteration", 0)),
        consumed_samples=int(args.consumed_train_samples),
        consumed_valid_samples=int(getattr(args, "consumed_valid_samples", 0) or 0),
        schedule_steps=int(common["opt_param_scheduler"]["num_steps"]) // int(args.global_batch_size),
    )


def _model_key(index: int, count: int) -> str:
    # Megatron-LM's names: "model" for one chunk, "model0", "model1", ... with a virtual pipeline.
    return "model" if count == 1 else f"model{index}"
