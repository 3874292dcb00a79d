"""What a checkpoint folder holds, how it changes atomically, and how to read it without a run.

Layout of ``[checkpoint] dir``::

    DIR/latest                  "iter_0000010": the checkpoint a resume loads; replaced atomically
    DIR/iter_0000010/           one complete checkpoint
        bridgec.json            the manifest, written last: no manifest, not a checkpoint
        spec.toml               the spec the script was compiled from (when the script passes it)
        common.pt metadata.json .metadata __<rank>_<n>.distcp   megatron-core torch_dist files
    DIR/iter_0000012.partial/   a save in progress, or one that died; never loaded

A save writes into ``*.partial``, then (rank 0, after every rank finished) writes
the manifest, renames the folder and only then moves ``latest``. So a save that
dies at any point leaves the previous checkpoint as the one that loads.

Nothing here needs torch.distributed or megatron-core: ``bridgec checkpoint
inspect`` uses :func:`inspect` and :func:`format_report` directly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import attrs
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

from bridgec.runtime.errors import ExitCode, RunError

FORMAT = "bridgec-checkpoint/1"
MANIFEST = "bridgec.json"
POINTER = "latest"
SPEC_COPY = "spec.toml"
PARTIAL_SUFFIX = ".partial"
REPLACED_SUFFIX = ".replaced"
_NAME = re.compile(r"^iter_(\d{7,})$")


def checkpoint_name(step: int) -> str:
    return f"iter_{step:07d}"


@attrs.frozen(kw_only=True)
class Manifest:
    """Everything about a checkpoint except the tensors; ``bridgec.json``."""

    format: str
    step: int
    consumed_samples: int
    skipped_steps: int
    layout: dict[str, int | None]
    """world_size, tensor, pipeline, virtual_pipeline, context, expert, data."""
    model: dict[str, Any]
    """Architecture of the model that wrote it (see checkpoint.model_signature)."""
    optimizer: dict[str, Any]
    """kind (plain | distributed), class, sharding (dp_reshardable | model_space), has_state."""
    spec_sha256: str
    script_sha256: str
    versions: dict[str, str]
    files: dict[str, int]
    """Every file of the checkpoint (but the manifest) and its size in bytes."""
    sequence: int = 0
    """Publish order in its folder: one more than the largest sequence there when it was published, so a
    run started over an older run's folder counts as newer whatever its step numbers. 0 in checkpoints
    written before bridgec recorded it (they count as older, in step order)."""

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        names = {field.name for field in attrs.fields(cls)}
        required = {field.name for field in attrs.fields(cls) if field.default is attrs.NOTHING}
        if not isinstance(data, dict) or not required <= set(data) <= names:
            raise ValueError(f"expected the keys {sorted(names)}")
        return cls(**data)


def read_manifest(path: Path) -> Manifest:
    """The manifest of checkpoint folder ``path``; a RunError names what is wrong with it."""
    file = path / MANIFEST
    if not path.is_dir():
        raise RunError(ExitCode.CHECKPOINT_ERROR, f"checkpoint {path} does not exist")
    if not file.is_file():
        raise RunError(
            ExitCode.CHECKPOINT_ERROR,
            f"{path} is not a complete bridgec checkpoint: it has no {MANIFEST} "
            "(a save that did not finish, or a folder bridgec did not write)",
        )
    try:
        manifest = Manifest.from_json(file.read_text(encoding="utf-8"))
    except (ValueError, TypeError, UnicodeDecodeError) as error:
        raise RunError(ExitCode.CHECKPOINT_ERROR, f"{file} is damaged: {error}") from None
    if manifest.format != FORMAT:
        raise RunError(ExitCode.CHECKPOINT_ERROR, f"{file}: format {manifest.format!r}, this runtime reads {FORMAT!r}")
    return manifest


def file_problems(path: Path, manifest: Manifest) -> list[str]:
    """Files of the checkpoint that are missing or whose size differs from the manifest (a truncated copy)."""
    problems = []
    for name, size in sorted(manifest.files.items()):
        file = path / name
        if not file.is_file():
            problems.append(f"{file}: missing")
        elif file.stat().st_size != size:
            problems.append(f"{file}: {file.stat().st_size} bytes, the save wrote {size} (truncated or replaced)")
    return problems


def file_sizes(path: Path) -> dict[str, int]:
    """Sizes of the files in a checkpoint folder, but the manifest."""
    return {
        file.name: file.stat().st_size for file in sorted(path.iterdir()) if file.is_file() and file.name != MANIFEST
    }


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint under ``root``, oldest first.

    Oldest means published first (the manifests' ``sequence``), not the lowest
    step: after ``resume = false`` over an older run's folder, that run's
    higher-numbered checkpoints are older than the new run's.
    """
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _NAME.match(child.name)
        if match and child.is_dir() and (child / MANIFEST).is_file():
            found.append((published_sequence(child), int(match[1]), child))
    return [(step, path) for _, step, path in sorted(found)]


def published_sequence(path: Path) -> int:
    """The ``sequence`` of checkpoint folder ``path`` (0 when its manifest does not say or cannot be read:
    ordering must not fail on a damaged checkpoint; loading one reports the damage)."""
    try:
        sequence = json.loads((path / MANIFEST).read_text(encoding="utf-8")).get("sequence", 0)
    except (OSError, ValueError, AttributeError):
        return 0
    return sequence if isinstance(sequence, int) else 0


def next_sequence(root: Path) -> int:
    """The ``sequence`` of the next checkpoint published in ``root``."""
    existing = [published_sequence(path) for _, path in complete_checkpoints(root)]
    return max(existing, default=0) + 1


def available_steps(root: Path) -> list[int]:
    """Steps of the complete checkpoints under ``root``, oldest first."""
    return [step for step, _ in complete_checkpoints(root)]


def describe_steps(root: Path) -> str:
    """'steps 2, 4 (latest 4)', or 'no complete checkpoint': what a message about ``root`` lists."""
    steps = available_steps(root)
    if not steps:
        return "no complete checkpoint"
    latest = find_latest(root)
    current = f" (latest {int(_NAME.match(latest.name)[1])})" if latest is not None and _NAME.match(latest.name) else ""
    return f"step{'s' if len(steps) > 1 else ''} {', '.join(str(step) for step in steps)}{current}"


def find_step(root: Path, step: int | None) -> Path | None:
    """The checkpoint of ``step`` under ``root`` (``None``: the latest, see :func:`find_latest`).

    A step that has no complete checkpoint there is an error listing the steps
    that do (a ``*.partial`` save never counts); None when ``step`` is None and
    the folder holds nothing.
    """
    if step is None:
        return find_latest(root)
    path = root / checkpoint_name(step)
    if not (path.is_dir() and (path / MANIFEST).is_file()):
        raise RunError(
            ExitCode.CHECKPOINT_ERROR,
            f"{root} holds no complete checkpoint of step {step}; it has {describe_steps(root)}",
        )
    return path


def find_latest(root: Path) -> Path | None:
    """The checkpoint a resume loads: the one ``latest`` names, else the last one published, else None.

    Without a pointer the last complete checkpoint published is safe to take: a
    folder only gets its final name after its manifest is written (a save killed
    between the rename and the pointer update leaves exactly that).
    """
    pointer = root / POINTER
    if pointer.is_file():
        name = pointer.read_text(encoding="utf-8", errors="replace").strip()
        if not _NAME.match(name):
            raise RunError(
                ExitCode.CHECKPOINT_ERROR,
                f"{pointer} should name a checkpoint folder like iter_0000010, it holds {name[:80]!r}",
            )
        return root / name
    complete = complete_checkpoints(root)
    return complete[-1][1] if complete else None


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that a reader sees the old or the new content, never a mix."""
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_files(path: Path) -> None:
    """Flush every file of a checkpoint folder to disk before it is published."""
    for file in path.iterdir():
        if file.is_file():
            with file.open("rb") as handle:
                os.fsync(handle.fileno())
    fsync_dir(path)


def remove_partials(root: Path) -> None:
    """Delete folders of saves that never finished, or that a finished one replaced (rank 0, before a save)."""
    for child in root.iterdir():
        if child.is_dir() and child.name.endswith((PARTIAL_SUFFIX, REPLACED_SUFFIX)):
            shutil.rmtree(child, ignore_errors=True)


def publish(partial: Path, final: Path) -> None:
    """Give a complete save its final name, then point ``latest`` at it.

    A folder of the same name from an earlier run (resume = false over an old
    directory) is moved aside first and deleted only after the pointer moved.
    """
    root = final.parent
    replaced = None
    if final.exists():
        replaced = root / (final.name + REPLACED_SUFFIX)
        shutil.rmtree(replaced, ignore_errors=True)
        os.replace(final, replaced)
    os.replace(partial, final)
    fsync_dir(root)
    write_atomic(root / POINTER, final.name + "\n")
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)


def prune(root: Path, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` complete checkpoints published last (never the one ``latest`` names)."""
    current = find_latest(root)
    complete = [path for _, path in complete_checkpoints(root)]
    removed = []
    for path in complete[: max(0, len(complete) - keep_last)]:
        if path != current:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


# ---------------------------------------------------------------------------
# inspect: read a checkpoint without launching anything


@attrs.frozen(kw_only=True)
class TensorEntry:
    key: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int


@attrs.frozen(kw_only=True)
class InspectReport:
    """What ``bridgec checkpoint inspect DIR`` shows."""

    path: Path
    """The checkpoint folder described."""
    manifest: Manifest
    tensors: tuple[TensorEntry, ...]
    objects: int
    """Non-tensor entries (optimizer bookkeeping, RNG states, extra states)."""
    problems: tuple[str, ...]
    """Missing or truncated files; empty for a loadable checkpoint."""
    others: tuple[str, ...]
    """Other folders next to it that are no complete checkpoint (unfinished or replaced saves)."""
    steps: str
    """The complete checkpoints of its folder, as :func:`describe_steps` says it (what --step can choose)."""


def inspect(directory: Path | str, *, step: int | None = None) -> InspectReport:
    """Describe the checkpoint ``directory`` (a ``[checkpoint] dir``: its latest, or ``step``; or one ``iter_*`` folder)."""
    directory = Path(directory).resolve()
    if (directory / MANIFEST).is_file():
        if step is not None:
            raise RunError(
                ExitCode.CHECKPOINT_ERROR,
                f"{directory} is one checkpoint folder; --step chooses among the checkpoints of a "
                f"[checkpoint] dir, give {directory.parent}",
            )
        path = directory
    else:
        found = find_step(directory, step)
        if found is None:
            raise RunError(
                ExitCode.CHECKPOINT_ERROR, f"{directory}: no checkpoint here (no {POINTER}, no iter_* folder)"
            )
        path = found
    manifest = read_manifest(path)
    problems = file_problems(path, manifest)
    tensors: list[TensorEntry] = []
    objects = 0
    if not problems:
        metadata = read_tensor_metadata(path)
        for key, entry in sorted(metadata.state_dict_metadata.items()):
            if isinstance(entry, TensorStorageMetadata):
                shape = tuple(entry.size)
                itemsize = entry.properties.dtype.itemsize
                count = 1
                for size in shape:
                    count *= size
                tensors.append(
                    TensorEntry(
                        key=key,
                        shape=shape,
                        dtype=str(entry.properties.dtype).removeprefix("torch."),
                        nbytes=count * itemsize,
                    )
                )
            else:
                objects += 1
    root = path.parent
    complete = {folder for _, folder in complete_checkpoints(root)}
    others = tuple(sorted(child.name for child in root.iterdir() if child.is_dir() and child not in complete))
    return InspectReport(
        path=path,
        manifest=manifest,
        tensors=tuple(tensors),
        objects=objects,
        problems=tuple(problems),
        others=others,
        steps=describe_steps(root),
    )


def read_tensor_metadata(path: Path) -> Metadata:
    """The torch.distributed.checkpoint index (``.metadata``): every tensor's global shape and dtype."""
    try:
        return FileSystemReader(str(path)).read_metadata()
    except Exception as error:  # noqa: BLE001 - any unpickling failure means a damaged index
        raise RunError(
            ExitCode.CHECKPOINT_ERROR, f"{path}/.metadata cannot be read ({type(error).__name__}: {error})"
        ) from None


def _size(nbytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def _layout_text(layout: dict[str, int | None]) -> str:
    text = (
        f"world {layout['world_size']} = tensor {layout['tensor']} x pipeline {layout['pipeline']} "
        f"x data {layout['data']} x context {layout['context']}"
    )
    if layout.get("virtual_pipeline"):
        text += f" (virtual pipeline {layout['virtual_pipeline']})"
    if layout.get("expert", 1) != 1:
        text += f" (expert {layout['expert']})"
    return text


def _wrap(words: list[str], *, indent: int, width: int) -> str:
    lines, line = [], ""
    for word in words:
        if line and indent + len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return ("\n" + " " * indent).join(lines)


def _model_fields(model: dict[str, Any]) -> list[str]:
    """The architecture's fields that say something: unset ones left out, and the MoE ones of a dense model."""
    dense = model.get("num_moe_experts") is None
    return [
        f"{key}={value}"
        for key, value in sorted(model.items())
        if value is not None and not (dense and key.startswith("moe_"))
    ]


def format_report(report: InspectReport, *, tensors: bool = False) -> str:
    """The text ``bridgec checkpoint inspect`` prints; ``tensors`` lists every tensor (else their count and size)."""
    manifest = report.manifest
    optimizer = manifest.optimizer
    model = _wrap(_model_fields(manifest.model), indent=13, width=100)
    lines = [
        f"checkpoint   {report.path}",
        f"status       {'DAMAGED' if report.problems else 'complete'}",
        f"step         {manifest.step} ({manifest.consumed_samples} samples consumed, {manifest.skipped_steps} steps skipped)",
        f"layout       {_layout_text(manifest.layout)}",
        f"optimizer    {optimizer.get('class')} ({optimizer.get('kind')}, state {optimizer.get('sharding')}"
        f"{'' if optimizer.get('has_state') else ', no state yet'})",
        f"spec         sha256 {manifest.spec_sha256}",
        f"script       sha256 {manifest.script_sha256}",
        f"model        {model}",
        "written by   " + ", ".join(f"{name} {version}" for name, version in sorted(manifest.versions.items())),
        f"files        {len(manifest.files)}, {_size(sum(manifest.files.values()))}",
    ]
    lines += [f"  problem: {problem}" for problem in report.problems]
    if report.tensors:
        total = sum(entry.nbytes for entry in report.tensors)
        listed = "" if tensors else "; --tensors lists them"
        lines.append(
            f"tensors      {len(report.tensors)} ({_size(total)}), plus {report.objects} other entries{listed}"
        )
    if report.tensors and tensors:
        width = max(len(entry.key) for entry in report.tensors)
        for entry in report.tensors:
            shape = "x".join(str(size) for size in entry.shape) or "scalar"
            lines.append(f"  {entry.key:<{width}}  {shape:>16}  {entry.dtype:<8}  {_size(entry.nbytes):>10}")
    lines.append(f"available    {report.steps} (choose one with --step N)")
    if report.others:
        lines.append("also here    " + " ".join(report.others))
    return "\n".join(lines) + "\n"
