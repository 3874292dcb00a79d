"""The ``bridgec`` command line: argument parsing and I/O around the pure compiler stages.

Exit codes (documented in the README):
  0  success (for ``check``: everything is fresh)
  1  ``check`` found a stale generated file (a unified diff is printed); ``diff``: NEW cannot resume OLD's
     checkpoints
  2  the spec, the input files or the command line have errors (all are printed)
  3  internal error in bridgec (a bug; please report it)
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from bridgec.compiler.errors import Diagnostic, format_diagnostic, is_error
from bridgec.compiler.version import __version__

if TYPE_CHECKING:
    from bridgec.compiler.spec import Spec

EXIT_OK = 0
EXIT_STALE = 1
EXIT_SPEC_ERROR = 2
EXIT_INTERNAL = 3


class UserError(Exception):
    """A problem with the command line or input files: printed without a traceback, exit 2."""


@attrs.frozen
class DiskFiles:
    """The read-only file-system view validation and lowering use."""

    def exists(self, path: Path) -> bool:
        return Path(path).exists()

    def read_text(self, path: Path) -> str:
        return Path(path).read_text(encoding="utf-8")

    def read_head(self, path: Path, size: int) -> bytes:
        with Path(path).open("rb") as stream:
            return stream.read(size)

    def read_bytes(self, path: Path) -> bytes:
        return Path(path).read_bytes()


def _err(text: str) -> None:
    print(text, file=sys.stderr)


def _print_diagnostics(diagnostics: Sequence[Diagnostic]) -> None:
    for diagnostic in diagnostics:
        _err(format_diagnostic(diagnostic))


def _read_spec_text(path: Path) -> str:
    """The spec's exact text: bytes decoded without newline translation, so its sha256 is the file's."""
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not a spec file") from None
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise UserError(f"{path}: cannot be read ({error.strerror})") from None


def _overrides(words: Sequence[str]) -> tuple[Any, ...]:
    """The key=value overrides typed after the spec (compose.Override), or a UserError naming the bad one."""
    from bridgec.compiler.compose import OverrideError, parse_override

    try:
        return tuple(parse_override(word) for word in words)
    except OverrideError as error:
        raise UserError(f"override {error}") from None


def _compile(  # noqa: ANN202 - CompileResult
    spec_path: Path,
    output_path: Path,
    *,
    require_data: bool = True,
    overrides: Sequence[str] = (),
    ejected: bool = False,
):
    from bridgec.compiler.compile import compile_spec

    text = _read_spec_text(spec_path)
    return compile_spec(
        text,
        spec_name=str(spec_path),
        spec_path=spec_path,
        output_path=output_path,
        files=DiskFiles(),
        require_data=require_data,
        overrides=_overrides(overrides),
        ejected=ejected,
    )


def cmd_compile(args: argparse.Namespace) -> int:
    from bridgec.compiler.emit import write_atomic

    result = _compile(Path(args.spec), Path(args.output), overrides=args.overrides)
    _print_diagnostics(result.diagnostics)
    if result.source is None:
        _err(f"bridgec: {Path(args.output)} not written: the spec has errors")
        return EXIT_SPEC_ERROR
    output = Path(args.output)
    write_atomic(output, result.source)
    with_overrides = f" with {shlex.join(args.overrides)}" if args.overrides else ""
    print(f"wrote {args.output} from {args.spec}{with_overrides}")
    for job in result.job_files:
        write_atomic(output.parent / job.name, job.text)
        print(f"wrote {output.parent / job.name} ({job.what})")
    if result.job_files:
        print(f"submit it from {output.parent}: {SUBMIT[result.spec.launch.scheduler]} {result.job_files[0].name}")
    else:
        _how_to_launch(result.spec, args.output)
    return EXIT_OK


def cmd_eject(args: argparse.Namespace) -> int:
    from bridgec.compiler.emit import write_atomic
    from bridgec.compiler.lower import launch_command

    output = Path(args.output)
    if output.exists() and not args.force:
        raise UserError(f"{output} exists; an ejected script is hand-owned, so it is not replaced without --force")
    result = _compile(Path(args.spec), output, overrides=args.overrides, ejected=True)
    _print_diagnostics(result.diagnostics)
    if result.source is None:
        _err(f"bridgec: {output} not written: the spec has errors")
        return EXIT_SPEC_ERROR
    write_atomic(output, result.source)
    print(f"wrote {output} from {args.spec}: yours to edit; bridgec compile and check no longer manage it")
    if result.job_files:
        names = ", ".join(job.name for job in result.job_files)
        print(f"not written: {names} (a job file runs bridgec launch, which needs a generated script)")
    print(f"launch it with: {launch_command(result.spec, output.name)} (from {output.parent})")
    return EXIT_OK


SUBMIT = {"slurm": "sbatch", "kubernetes": "kubectl apply -f"}
"""How each scheduler's job file is submitted."""


def _how_to_launch(spec: Any, output: str) -> None:
    from bridgec.compiler.lower import bridgec_launch_command, launch_command

    if spec.launch.nodes == 1:
        print(f"launch it with: {bridgec_launch_command(spec, output)}  (or: {launch_command(spec, output)})")
    else:
        print(
            f"launch it on each of its {spec.launch.nodes} nodes with: {bridgec_launch_command(spec, output)}  "
            "(HOST_OF_NODE_0: the address of node 0)"
        )


def _check_one(spec_path: Path, output_path: Path) -> int:
    from bridgec.compiler.emit import overrides_of, unified_diff

    try:
        current: str | None = output_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        current = None
    # The overrides it was compiled with are in its header: regenerate with the same ones.
    overrides = overrides_of(current) if current is not None else ()
    regenerate = shlex.join(["bridgec", "compile", str(spec_path), "-o", str(output_path), *overrides])
    # CI and pre-commit checkouts hold no data: the script depends on committed files only.
    result = _compile(spec_path, output_path, require_data=False, overrides=overrides)
    if result.source is None:
        _print_diagnostics(result.diagnostics)
        _err(f"bridgec: cannot check {output_path}: its spec {spec_path} has errors")
        return EXIT_SPEC_ERROR
    if current is None:
        _err(f"bridgec: {output_path} is missing; create it with: {regenerate}")
        return EXIT_STALE
    expected = [(output_path, current, result.source)]
    for job in result.job_files:
        path = output_path.parent / job.name
        expected.append((path, path.read_text(encoding="utf-8") if path.is_file() else None, job.text))
    code = EXIT_OK
    for path, on_disk, text in expected:
        if on_disk is None:
            _err(f"bridgec: {path} is missing; create it with: {regenerate}")
            code = EXIT_STALE
        elif on_disk != text:
            sys.stdout.write(unified_diff(on_disk, text, str(path)))
            _err(f"bridgec: {path} is stale; regenerate it with: {regenerate}")
            code = EXIT_STALE
        else:
            print(f"{path} is fresh ({spec_path})")
    return code


def cmd_check(args: argparse.Namespace) -> int:
    if args.all is not None:
        if args.spec is not None or args.output is not None:
            args.parser.error("check --all DIR takes no SPEC or OUT")
        return _check_all(Path(args.all))
    if args.spec is None or args.output is None:
        args.parser.error("check needs SPEC OUT, or --all DIR")
    return _check_one(Path(args.spec), Path(args.output))


def _check_all(root: Path) -> int:
    from bridgec.compiler.emit import find_generated, find_specs

    if not root.is_dir():
        raise UserError(f"{root}: not a folder")
    outcome: dict[int, list[str]] = {EXIT_OK: [], EXIT_STALE: [], EXIT_SPEC_ERROR: []}
    named: set[Path] = set()
    for generated in find_generated(root):
        named.add(generated.spec.resolve())
        if not generated.spec.is_file():
            _err(f"bridgec: {generated.path} names its spec {generated.spec}, which does not exist")
            outcome[EXIT_SPEC_ERROR].append(str(generated.path))
            continue
        outcome[_check_one(generated.spec, generated.path)].append(str(generated.path))
    found = sum(len(paths) for paths in outcome.values())
    if found == 0:
        _err(f"bridgec: no generated files under {root}")
    else:
        parts = [f"{len(outcome[EXIT_OK])} fresh"]
        parts += [f"{len(outcome[EXIT_STALE])} stale ({', '.join(outcome[EXIT_STALE])})"] if outcome[EXIT_STALE] else []
        parts += (
            [f"{len(outcome[EXIT_SPEC_ERROR])} with spec errors ({', '.join(outcome[EXIT_SPEC_ERROR])})"]
            if outcome[EXIT_SPEC_ERROR]
            else []
        )
        summary = "all fresh" if len(outcome[EXIT_OK]) == found else ", ".join(parts)
        print(f"checked {found} generated file(s) under {root}: {summary}")
    orphans = [spec for spec in find_specs(root) if spec.resolve() not in named]
    if orphans:
        print(
            f"spec(s) under {root} without a generated script: {', '.join(str(spec) for spec in orphans)} "
            f"(create one with: bridgec compile {orphans[0]} -o {orphans[0].parent / 'run.py'})"
        )
    return max(code for code, paths in outcome.items() if paths) if found else EXIT_OK


def _front(spec_path: Path, overrides: Sequence[str] = (), *, require_data: bool = True):  # noqa: ANN202
    from bridgec.compiler.frontend import read_spec
    from bridgec.compiler.validate import SpecContext

    text = _read_spec_text(spec_path)
    spec_dir = spec_path.resolve().parent
    context = SpecContext(file=str(spec_path), spec_dir=spec_dir, files=DiskFiles(), require_data=require_data)
    return read_spec(text, str(spec_path), context, _overrides(overrides))


def cmd_validate(args: argparse.Namespace) -> int:
    result = _front(Path(args.spec), args.overrides)
    _print_diagnostics(result.diagnostics)
    if result.spec is None or any(is_error(d) for d in result.diagnostics):
        errors = sum(1 for d in result.diagnostics if is_error(d))
        _err(f"bridgec: {args.spec}: {errors} error(s)")
        return EXIT_SPEC_ERROR
    print(f"{args.spec}: ok")
    return EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    from bridgec.compiler.explain import explain_text

    result = _front(Path(args.spec), args.overrides)
    _print_diagnostics(result.diagnostics)
    if result.spec is None or any(is_error(d) for d in result.diagnostics):
        return EXIT_SPEC_ERROR
    sys.stdout.write(explain_text(result.spec, extra=_packing_lines(result.spec, Path(args.spec).parent)))
    return EXIT_OK


def _packing_lines(spec: Spec, folder: Path) -> tuple[str, ...]:
    """[data] packing: how full the training split's packed sequences are, from the dataset's sample lengths."""
    if not spec.data.packing:
        return ()
    from bridgec.runtime.sft_pack import packing_line

    return (
        "",
        "Packing (SFT samples, first fit decreasing; each dataset of a blend packs its own samples)",
        *(
            "  " + packing_line(str(folder / source.prefix), spec.model.seq_length, spec.data.split)
            for source in spec.data.sources
        ),
    )


def cmd_new(args: argparse.Namespace) -> int:
    from bridgec.compiler import presets
    from bridgec.compiler.emit import write_atomic

    if args.list:
        if args.name is not None:
            args.parser.error("new --list takes no NAME")
        sys.stdout.write(presets.catalogue_text())
        return EXIT_OK
    if args.name is None or args.gpus is None or args.output is None:
        args.parser.error("new needs NAME --gpus N -o OUT (or --list)")
    output = Path(args.output)
    words = ["bridgec", "new", args.name, "--gpus", str(args.gpus)]
    words += ["--nodes", str(args.nodes)] if args.nodes != 1 else []
    try:
        preset = presets.find(args.name)
        text = presets.spec_text(preset, args.gpus, args.nodes, shlex.join([*words, "-o", output.name]))
    except presets.PresetError as error:
        raise UserError(str(error)) from None
    # A preset must validate as written: a spec that does not is a bug in the catalogue, and is not written.
    front = _front_text(text, output)
    if front.spec is None or any(is_error(d) for d in front.diagnostics):
        _print_diagnostics(front.diagnostics)
        raise RuntimeError(f"preset {preset.name} at --gpus {args.gpus} --nodes {args.nodes} does not validate")
    write_atomic(output, text)
    print(f"wrote {output} ({preset.summary}, {args.gpus} GPUs); review it, then: bridgec compile {output} -o run.py")
    return EXIT_OK


EXIT_INCOMPATIBLE = 1
"""bridgec diff: NEW cannot resume from OLD's checkpoints."""


def cmd_diff(args: argparse.Namespace) -> int:
    from bridgec.compiler.compile import tokenizer_info
    from bridgec.compiler.spec_diff import diff_specs, report_text
    from bridgec.compiler.validate import SpecContext

    specs = []
    for path in (Path(args.old), Path(args.new)):
        # A diff reads what a repository commits: the data itself need not be there.
        front = _front(path, require_data=False)
        _print_diagnostics(front.diagnostics)
        if front.spec is None or any(is_error(d) for d in front.diagnostics):
            _err(f"bridgec: {path} has errors; nothing compared")
            return EXIT_SPEC_ERROR
        context = SpecContext(file=str(path), spec_dir=path.resolve().parent, files=DiskFiles(), require_data=False)
        specs.append((front.spec, tokenizer_info(front.spec, context)))
    (old, old_tokenizer), (new, new_tokenizer) = specs
    diff = diff_specs(old, new, old_tokenizer=old_tokenizer, new_tokenizer=new_tokenizer)
    sys.stdout.write(report_text(diff, args.old, args.new))
    return EXIT_INCOMPATIBLE if diff.resume_blockers else EXIT_OK


def cmd_data_build(args: argparse.Namespace) -> int:
    from bridgec.runtime.data_build import DataBuildError, build_indexed_dataset

    if args.sft:
        return _sft_build(args)
    if args.pack is not None:
        raise UserError("bridgec data build --pack packs SFT samples: it needs --sft")
    try:
        report = build_indexed_dataset(
            [Path(p) for p in args.input],
            Path(args.output),
            text_key=args.text_key,
            tokenizer=None if args.tokenizer is None else Path(args.tokenizer),
            append_eod=args.append_eod,
            workers=args.workers,
            progress=not args.no_progress and sys.stderr.isatty(),
        )
    except DataBuildError as error:
        raise UserError(str(error)) from None
    print(
        f"wrote {report.prefix}.bin, {report.prefix}.idx and {report.prefix}.json: "
        f"{report.documents} document(s), {report.tokens} tokens ({report.dtype}), tokenizer {report.tokenizer} "
        f"(vocab {report.vocab_size}, eod {report.eod})"
    )
    return EXIT_OK


def _sft_build(args: argparse.Namespace) -> int:
    from bridgec.runtime.data_build import DataBuildError
    from bridgec.runtime.sft_build import SftSettings, build_sft_dataset

    if args.tokenizer is None:
        raise UserError("bridgec data build --sft needs --tokenizer (a Hugging Face tokenizer folder)")
    if args.workers != 1 or args.text_key != "text":
        raise UserError(
            "bridgec data build --sft tokenizes in one process and reads --messages-key or --prompt-key and "
            "--completion-key: --workers and --text-key apply to pretraining data only"
        )
    max_length = args.max_length
    if args.pack is not None:
        # A packed sequence of N positions holds a sample of at most N + 1 tokens (its last token is a label only).
        if args.pack < 1 or (max_length is not None and max_length > args.pack + 1):
            raise UserError(
                f"bridgec data build --sft --pack {args.pack}: a sequence of {args.pack} positions holds samples of "
                f"at most {args.pack + 1} tokens; give --max-length {args.pack + 1} or less (or leave it out)"
            )
        max_length = args.pack + 1 if max_length is None else max_length
    settings = SftSettings(
        loss_mode=args.loss_mode,
        messages_key=args.messages_key,
        prompt_key=args.prompt_key,
        completion_key=args.completion_key,
        template=None if args.chat_template is None else Path(args.chat_template),
        max_length=max_length,
        overlong=args.overlong,
        append_eod=args.append_eod,
    )
    try:
        report = build_sft_dataset(
            [Path(p) for p in args.input], Path(args.output), tokenizer=Path(args.tokenizer), settings=settings
        )
    except DataBuildError as error:
        raise UserError(str(error)) from None
    print(
        f"wrote {report.prefix}.bin/.idx, {report.prefix}.loss_mask.bin/.idx and {report.prefix}.json: "
        f"{report.samples} sample(s), {report.tokens} tokens, {report.loss_tokens} in the loss "
        f'(loss_mode "{args.loss_mode}"); {report.truncated} truncated, {report.dropped} dropped'
    )
    if args.pack is not None:
        from bridgec.runtime.sft_pack import packing_line

        print(packing_line(str(report.prefix), args.pack, (1.0, 0.0, 0.0)).replace("training samples", "samples"))
    return EXIT_OK


def cmd_checkpoint_inspect(args: argparse.Namespace) -> int:
    from bridgec.runtime.checkpoint_files import format_report, inspect
    from bridgec.runtime.errors import RunError

    try:
        sys.stdout.write(format_report(inspect(Path(args.directory), step=args.step), tensors=args.tensors))
    except RunError as error:
        _err(f"bridgec: {error.message}")
        return EXIT_SPEC_ERROR
    return EXIT_OK


def _read_input(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file ({what})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: cannot be read ({what}): {error}") from None


_OVERRIDE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
"""A MaxText command-line override, key=value: MaxText's keys are identifiers (a path never starts like one)."""


def _base_and_overrides(words: Sequence[str]) -> tuple[str, list[str]]:
    """BASE.yml and the key=value overrides, from the words in the order typed (MaxText's ``train.py base.yml
    key=value ...``; here they may also come before the base or among the options)."""
    overrides = [word for word in words if _OVERRIDE.match(word)]
    bases = [word for word in words if not _OVERRIDE.match(word)]
    if len(bases) == 1:
        return bases[0], overrides
    if not bases:
        raise UserError(
            "import maxtext: no BASE.yml (MaxText's base config, configs/base.yml) among the arguments; "
            "the others are key=value overrides"
        )
    raise UserError(
        f"import maxtext: {len(bases)} arguments are not key=value ({', '.join(map(repr, bases))}): "
        "give one BASE.yml, and each override as key=value with a MaxText key"
    )


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "merges.txt")
"""Tokenizer files a Hugging Face folder may hold (named in the imported spec's tokenizer comment)."""


def cmd_import_hf(args: argparse.Namespace) -> int:
    from bridgec.compiler.emit import write_atomic
    from bridgec.compiler.hf import import_hf

    model_dir = Path(args.model_dir)
    config_text = _read_input(model_dir / "config.json", "Hugging Face config")
    output = Path(args.output)
    folder = Path(os.path.relpath(model_dir.resolve(), output.resolve().parent)).as_posix()
    words = [folder, "--devices", str(args.devices), "--nodes", str(args.nodes), "--device", args.device]
    result = import_hf(
        config_text,
        folder=folder,
        devices=args.devices,
        nodes=args.nodes,
        device=args.device,
        tokenizer_files=[name for name in TOKENIZER_FILES if (model_dir / name).is_file()],
        command=f"(from this spec's folder) bridgec import hf {shlex.join([*words, '-o', output.name])}",
    )
    for problem in result.errors:
        hint = f"; hint: {problem.hint}" if problem.hint else ""
        key = f"{problem.key}: " if problem.key else ""
        _err(f"{model_dir / 'config.json'}: {key}{problem.message}{hint}")
    if result.toml is None:
        _err(f"bridgec: {args.output} not written: the Hugging Face config does not import")
        return EXIT_SPEC_ERROR
    for note in result.notes:
        _err(f"note: {note}")
    write_atomic(output, result.toml)
    print(f"wrote {output}")
    return _validate_import(output, result.toml)


def cmd_import_maxtext(args: argparse.Namespace) -> int:
    from bridgec.compiler.emit import write_atomic
    from bridgec.compiler.maxtext import import_maxtext, model_file_name

    base, overrides = _base_and_overrides(args.words)
    base_path = Path(base)
    base_text = _read_input(base_path, "MaxText base config")
    model_path: Path | None = Path(args.model) if args.model else None
    if model_path is None:
        name = model_file_name(base_text, overrides)
        if name is not None:
            # MaxText reads configs/models/<model_name>.yml beside base.yml (and ../models from a subfolder).
            candidates = [
                base_path.parent / "models" / f"{name}.yml",
                base_path.parent.parent / "models" / f"{name}.yml",
            ]
            model_path = next((c for c in candidates if c.is_file()), None)
            if model_path is None:
                raise UserError(
                    f"model_name {name!r}: no {candidates[0]} (nor {candidates[1]}); pass the file with --model"
                )
    model_text = _read_input(model_path, "MaxText model config") if model_path is not None else None
    output = Path(args.output)
    spec_dir = output.resolve().parent
    # No absolute paths in the spec: the echoed command names the files relative to the spec's folder, and
    # the comments by short labels (base.yml, models/<model>.yml: the model file relative to base.yml's folder).
    base_name = Path(os.path.relpath(base_path.resolve(), spec_dir)).as_posix()
    model_name = Path(os.path.relpath(model_path.resolve(), spec_dir)).as_posix() if model_path else None
    model_label = None
    if model_path is not None:
        beside_base = Path(os.path.relpath(model_path.resolve(), base_path.resolve().parent)).as_posix()
        model_label = model_name if beside_base.startswith("..") else beside_base
    ledger_file = None if args.ledger == "inline" else f"{output.stem}.maxtext-keys.txt"
    words = (
        [base_name]
        + (["--model", model_name] if model_name else [])
        + overrides
        + ["--devices", str(args.devices)]
        + (["--nodes", str(args.nodes)] if args.nodes else [])
        + ["--device", args.device]
        + (["--schedule-variant", args.schedule_variant] if args.schedule_variant else [])
        + (["--ledger", "inline"] if ledger_file is None else [])
        + ["-o", output.name]
    )
    result = import_maxtext(
        base_text,
        model_text,
        overrides,
        devices=args.devices,
        nodes=args.nodes,
        device=args.device,
        base_name=base_path.name,
        model_name=model_label,
        schedule_variant=args.schedule_variant,
        command=f"(from this spec's folder) bridgec import maxtext {shlex.join(words)}",
        ledger_file=ledger_file,
    )
    for problem in result.errors:
        hint = f"; hint: {problem.hint}" if problem.hint else ""
        _err(f"{base_path}: {problem.key}: {problem.message}{hint}")
    if result.toml is None:
        _err(f"bridgec: {args.output} not written: the MaxText config does not import")
        return EXIT_SPEC_ERROR
    for note in result.notes:
        _err(f"note: {note}")
    write_atomic(output, result.toml)
    if ledger_file is not None and result.ledger is not None:
        write_atomic(output.parent / ledger_file, result.ledger)
        print(f"wrote {output} and {output.parent / ledger_file} (the MaxText keys without a counterpart)")
    else:
        print(f"wrote {output}")
    return _validate_import(output, result.toml)


def _front_text(text: str, path: Path):  # noqa: ANN202 - FrontendResult
    """The front end over ``text`` that is to be written to ``path`` (its data need not exist yet)."""
    from bridgec.compiler.frontend import read_spec
    from bridgec.compiler.validate import SpecContext

    context = SpecContext(file=str(path), spec_dir=path.resolve().parent, files=DiskFiles(), require_data=False)
    return read_spec(text, str(path), context)


def _validate_import(output: Path, text: str) -> int:
    """Validate the spec an import wrote, as compile will (without needing its data): say now what will not compile."""
    from bridgec.compiler.frontend import read_spec
    from bridgec.compiler.validate import SpecContext

    context = SpecContext(file=str(output), spec_dir=output.resolve().parent, files=DiskFiles(), require_data=False)
    front = read_spec(text, str(output), context)
    _print_diagnostics(front.diagnostics)
    errors = sum(1 for d in front.diagnostics if is_error(d))
    if front.spec is None or errors:
        _err(
            f"bridgec: {output} is written, but it does not validate yet ({errors} error(s) above): change what "
            f"they name (or import again with other options), then: bridgec compile {output} -o run.py"
        )
        return EXIT_SPEC_ERROR
    print(f"review it, then: bridgec compile {output} -o run.py")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from bridgec.compiler.emit import write_atomic
    from bridgec.compiler.schema import schema_text

    if args.output is None:
        sys.stdout.write(schema_text())
    else:
        write_atomic(Path(args.output), schema_text())
        print(f"wrote {args.output}")
    return EXIT_OK


EXITS_SPEC = "exit codes: 0 ok; 2 the spec or the command line has errors (all are printed); 3 internal error"


def _command(commands: Any, name: str, summary: str, description: str, exits: str = EXITS_SPEC) -> Any:
    """A subcommand with its one-line help (in ``bridgec --help``), a description and its exit codes."""
    return commands.add_parser(name, help=summary, description=description, epilog=exits)


OVERRIDES_HELP = (
    "key=value overrides applied on top of SPEC (dotted keys, TOML values: train.iters=10 "
    "optimizer.betas=[0.9,0.95] model.normalization=rmsnorm); later ones win"
)


def _add_overrides(command: argparse.ArgumentParser) -> None:
    command.add_argument("overrides", metavar="KEY=VALUE", nargs="*", help=OVERRIDES_HELP)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bridgec",
        description="Compile a training spec (spec.toml) into a readable megatron-core training script.",
        epilog="exit codes: 0 ok, 1 stale (check) or not resumable (diff), 2 spec or input error, 3 internal error; "
        "bridgec launch: the workers' own code. Every command has --help.",
    )
    parser.add_argument("--version", action="version", version=f"bridgec {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    compile_ = _command(
        commands,
        "compile",
        "validate SPEC and write the training script",
        "Validate SPEC, derive every value, render the script, verify it and write OUT atomically (nothing is "
        "written when the spec has errors). Prints what it wrote and how to launch it.",
    )
    compile_.add_argument("spec", metavar="SPEC", help="the spec file (spec.toml)")
    compile_.add_argument("-o", "--output", metavar="OUT", required=True, help="the script to write (e.g. run.py)")
    _add_overrides(compile_)
    compile_.set_defaults(handler=cmd_compile)

    check = _command(
        commands,
        "check",
        "regenerate in memory and compare (exit 1 with a diff when stale)",
        "Regenerate OUT from SPEC in memory, through the same code path as compile, and compare. Needs only "
        "what a repository commits (the spec, the hooks file, each dataset's PREFIX.json), not the data. With "
        "--all DIR: every generated file under DIR (found by its header) against the spec it names; specs "
        "without a generated script are listed.",
        "exit codes: 0 fresh; 1 stale or missing (a diff is printed); 2 a spec has errors; 3 internal error",
    )
    check.add_argument("spec", metavar="SPEC", nargs="?", help="the spec file")
    check.add_argument("output", metavar="OUT", nargs="?", help="the generated script to compare")
    check.add_argument("--all", metavar="DIR", help="check every generated file under DIR against its spec")
    check.set_defaults(handler=cmd_check, parser=check)

    validate = _command(
        commands,
        "validate",
        "print every diagnostic of SPEC (exit 2 on errors)",
        "Load and validate SPEC and print every problem at once, each with file:line, key path and a fix; "
        "the data and hook files it names must exist.",
    )
    validate.add_argument("spec", metavar="SPEC", help="the spec file")
    _add_overrides(validate)
    validate.set_defaults(handler=cmd_validate)

    explain = _command(
        commands,
        "explain",
        "rank layout, batch arithmetic, parameters, FLOPs and memory of SPEC",
        "Print the resolved plan of SPEC for a human: which global rank holds which tensor/context/expert/"
        "data/pipeline coordinate, the batch arithmetic, parameters, FLOPs per token and memory per GPU.",
    )
    explain.add_argument("spec", metavar="SPEC", help="the spec file")
    _add_overrides(explain)
    explain.set_defaults(handler=cmd_explain)

    new = _command(
        commands,
        "new",
        "write a commented spec from a preset (Llama 3, Qwen3, Mixtral, GPT-3; pretrain or finetune)",
        "Write OUT from the preset NAME laid out on --gpus GPUs over --nodes machines: the model shape, the "
        "smallest model-parallel layout it runs with (data parallel is the rest), a batch that divides, and a "
        "training recipe, each with a comment. The spec is validated after writing. --list shows the presets.",
        "exit codes: 0 written and valid; 2 no such preset (with a did-you-mean), or a GPU count it cannot use; "
        "3 internal error",
    )
    new.add_argument("name", metavar="NAME", nargs="?", help="the preset (see --list)")
    new.add_argument("--list", action="store_true", help="list the presets and their smallest GPU counts")
    new.add_argument("--gpus", type=int, metavar="N", help="GPUs in the run, over all nodes")
    new.add_argument("--nodes", type=int, default=1, metavar="M", help="machines (default 1)")
    new.add_argument("-o", "--output", metavar="OUT", help="the spec to write")
    new.set_defaults(handler=cmd_new, parser=new)

    eject = _command(
        commands,
        "eject",
        "write a hand-owned copy of the script (no DO-NOT-EDIT header; compile and check leave it alone)",
        "Compile SPEC as compile does, and write the script as a file that is yours: without the generated-file "
        "header that bridgec check and bridgec launch read, and without the advice to regenerate it. For teams "
        "that leave the compiler; it still imports bridgec.runtime. Launch it with torchrun.",
        "exit codes: 0 written; 2 the spec has errors, or OUT exists (without --force); 3 internal error",
    )
    eject.add_argument("spec", metavar="SPEC", help="the spec file")
    eject.add_argument("-o", "--output", metavar="OUT", required=True, help="the script to write (e.g. train.py)")
    eject.add_argument("--force", action="store_true", help="replace OUT when it exists")
    _add_overrides(eject)
    eject.set_defaults(handler=cmd_eject)

    diff = _command(
        commands,
        "diff",
        "what changing OLD into NEW does: keys, derived values, learning rate, resumability",
        "Compare two specs: the keys whose effective values differ (defaults filled in), the derived values "
        "(world size, data parallel, microbatches, tokens per step, parameters, memory per GPU), the learning-"
        "rate curve (the largest difference and the update where), and whether NEW can resume from OLD's "
        "checkpoints (the same parameters and shapes, the same optimizer, a layout they reshard into).",
        "exit codes: 0 NEW can resume from OLD's checkpoints; 1 it cannot (the reasons are printed); "
        "2 a spec has errors; 3 internal error",
    )
    diff.add_argument("old", metavar="OLD", help="the spec as it was (e.g. the one the checkpoints come from)")
    diff.add_argument("new", metavar="NEW", help="the changed spec")
    diff.set_defaults(handler=cmd_diff)

    schema = _command(
        commands,
        "schema",
        "print the JSON Schema of spec.toml (for Taplo / Even Better TOML)",
        "Print (or write to OUT) a JSON Schema (draft-07) of spec files, generated from the spec classes: every "
        "table and key with its type, choices, default and documentation, so TOML editors complete and explain "
        "keys. Cross-field rules are bridgec validate's.",
        "exit codes: 0 written; 3 internal error",
    )
    schema.add_argument("-o", "--output", metavar="OUT", help="write the schema here instead of printing it")
    schema.set_defaults(handler=cmd_schema)

    data = commands.add_parser("data", help="data tools", description="Data tools: bridgec data build.")
    data_commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    build = _command(
        data_commands,
        "build",
        "tokenize JSON-lines, Parquet or text files into a megatron indexed dataset",
        "Tokenize every document of the inputs (DOCS.jsonl: the text under --text-key of each line; DOCS.parquet: "
        "the column --text-key; DOC.txt: the whole file is one document) into PREFIX.bin and PREFIX.idx, "
        "megatron's indexed dataset, in the smallest token dtype the vocabulary allows, and write PREFIX.json "
        "(tokenizer, vocab_size, eod, bos, pad, the tokenizer's sha256), which the compiler reads. Without "
        "--tokenizer the tokenizer is byte-level (no download; vocabulary 257, id 256 ends every document). "
        "The output is byte-identical whatever --workers is. Commit PREFIX.json with the spec.",
        "exit codes: 0 written; 2 an input or the tokenizer cannot be read (file and line named), or no "
        "documents, or a package is missing (with the install command); 3 internal error. Nothing is written "
        "unless everything is.",
    )
    build.add_argument(
        "--input", required=True, action="append", metavar="DOCS", help="a .jsonl, .parquet or .txt file; repeatable"
    )
    build.add_argument("--output", required=True, metavar="PREFIX", help="writes PREFIX.bin, PREFIX.idx, PREFIX.json")
    build.add_argument(
        "--text-key", default="text", help="the JSON key or Parquet column holding each document's text (default: text)"
    )
    build.add_argument(
        "--tokenizer",
        metavar="PATH",
        help="a Hugging Face tokenizer folder (tokenizer.json), a SentencePiece .model or a tiktoken rank file",
    )
    build.add_argument("--append-eod", action="store_true", help="end every document with the tokenizer's eod id")
    build.add_argument("--workers", type=int, default=1, metavar="N", help="tokenizing processes (default: 1)")
    build.add_argument("--no-progress", action="store_true", help="no progress bar (it is shown only on a terminal)")
    sft = build.add_argument_group("instruction data (--sft)")
    sft.add_argument(
        "--sft",
        action="store_true",
        help="JSONL or Parquet records with messages (rendered with the chat template) or prompt/completion: writes tokens, "
        "PREFIX.loss_mask.bin/.idx and PREFIX.json",
    )
    sft.add_argument(
        "--loss-mode", choices=("assistant", "last_turn", "completion", "full"), default="assistant",
        help="tokens in the loss (default: assistant, every {%% generation %%} span or the completion)",
    )  # fmt: skip
    sft.add_argument(
        "--messages-key", default="messages", help="the record's list of {role, content} (default: messages)"
    )
    sft.add_argument("--prompt-key", default="prompt", help="(default: prompt)")
    sft.add_argument("--completion-key", default="completion", help="(default: completion)")
    sft.add_argument("--chat-template", metavar="FILE", help="a Jinja chat template instead of tokenizer_config.json's")
    sft.add_argument("--max-length", type=int, metavar="N", help="samples longer than N tokens are --overlong")
    sft.add_argument(
        "--overlong", choices=("error", "truncate", "drop"), default="error",
        help="what happens to a sample longer than --max-length (default: error, naming its line)",
    )  # fmt: skip
    sft.add_argument(
        "--pack", type=int, metavar="SEQ_LENGTH",
        help="report how well the samples pack first-fit-decreasing into sequences of SEQ_LENGTH (as [data] "
        "packing = true packs them when the run starts); --max-length defaults to SEQ_LENGTH + 1",
    )  # fmt: skip
    build.set_defaults(handler=cmd_data_build)

    checkpoint = commands.add_parser(
        "checkpoint", help="checkpoint tools", description="Checkpoint tools: bridgec checkpoint inspect."
    )
    checkpoint_commands = checkpoint.add_subparsers(
        dest="checkpoint_command", metavar="CHECKPOINT_COMMAND", required=True
    )
    inspect_ = _command(
        checkpoint_commands,
        "inspect",
        "step, layout, spec hash, tensors and sizes of a checkpoint, without a run",
        "Describe a checkpoint without launching anything: its step, layout, optimizer, spec and script hashes, "
        "model shape, and every tensor with its shape, dtype and size.",
        "exit codes: 0 described; 2 DIR holds no checkpoint, or a damaged one; 3 internal error",
    )
    inspect_.add_argument("directory", metavar="DIR", help="a [checkpoint] dir (its latest) or one iter_* folder")
    inspect_.add_argument(
        "--step",
        type=int,
        metavar="N",
        help="the checkpoint of step N of DIR (default: the latest); the report lists the steps",
    )
    inspect_.add_argument("--tensors", action="store_true", help="also list every tensor: name, shape, dtype, size")
    inspect_.set_defaults(handler=cmd_checkpoint_inspect)

    importer = commands.add_parser(
        "import",
        help="write a spec from another framework's config",
        description="Write a spec from another framework's config: bridgec import maxtext.",
    )
    import_commands = importer.add_subparsers(dest="import_command", metavar="FORMAT", required=True)
    maxtext = _command(
        import_commands,
        "maxtext",
        "a MaxText config (base.yml <- model file <- key=value overrides) as a commented spec",
        "Merge a MaxText config the way MaxText does, write the equivalent spec and validate it. Every mapped "
        "value names its MaxText key; the MaxText keys without a counterpart are listed, with what was done "
        "about each, in OUT's ledger file (<OUT stem>.maxtext-keys.txt), or in the spec with --ledger inline.",
        "exit codes: 0 written and valid; 2 the config does not import (nothing written), or the written spec "
        "does not validate yet (its errors are printed); 3 internal error",
    )
    maxtext.add_argument(
        "words",
        metavar="BASE.yml|key=value",
        nargs="*",
        help="MaxText's base config (configs/base.yml) and MaxText command-line overrides, in any "
        "order, before or after the options (as MaxText's `train.py base.yml key=value` reads them)",
    )
    maxtext.add_argument("--model", metavar="MODEL.yml", help="default: models/<model_name>.yml beside BASE.yml")
    maxtext.add_argument(
        "--devices",
        type=int,
        required=True,
        help="accelerators in the run (MaxText reads this from the hardware); sets the batch and fills mesh -1s",
    )
    maxtext.add_argument("--nodes", type=int, help="machines (MaxText's slices); default 1")
    maxtext.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="the spec's [launch] device")
    maxtext.add_argument(
        "--schedule-variant",
        choices=("2026-02", "2026-01", "2025"),
        help="which MaxText version's learning-rate formula (default: the current one)",
    )
    maxtext.add_argument(
        "--ledger",
        choices=("file", "inline"),
        default="file",
        help="where the MaxText keys without a counterpart are listed: a file beside OUT "
        "(default) or a comment block closing OUT",
    )
    maxtext.add_argument("-o", "--output", metavar="OUT", required=True, help="the spec to write")
    maxtext.set_defaults(handler=cmd_import_maxtext)
    hf = _command(
        import_commands,
        "hf",
        "a Hugging Face model folder (config.json + safetensors) as a spec that fine-tunes from its weights",
        "Read MODEL_DIR/config.json, write the equivalent spec (every mapped value names its config.json key; "
        "the keys without a counterpart are listed at its end, with what was done about each), with "
        '[init.checkpoint] format = "huggingface" loading the folder\'s weights, and validate it. An '
        "architecture or option bridgec cannot reproduce is refused, naming it.",
        "exit codes: 0 written and valid; 2 the config does not import (nothing written), or the written spec "
        "does not validate yet (its errors are printed); 3 internal error",
    )
    hf.add_argument("model_dir", metavar="MODEL_DIR", help="the Hugging Face model folder (config.json, weights)")
    hf.add_argument("--devices", type=int, required=True, help="processes (GPUs) in the run, over all nodes")
    hf.add_argument("--nodes", type=int, default=1, help="machines; default 1")
    hf.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="the spec's [launch] device")
    hf.add_argument("-o", "--output", metavar="OUT", required=True, help="the spec to write")
    hf.set_defaults(handler=cmd_import_hf)
    from bridgec.compiler.convert_cli import add_convert_parser
    from bridgec.compiler.launch_cli import add_launch_parser
    from bridgec.compiler.plot_cli import add_plot_parser

    add_launch_parser(commands)
    add_convert_parser(commands)
    add_plot_parser(commands)
    return parser


def run_command(argv: Sequence[str] | None, extra: Callable[[argparse.ArgumentParser], None] | None = None) -> int:
    from bridgec.runtime.quiet import silence_third_party_noise

    # The commands that load megatron-core (data build, checkpoint inspect) never need Transformer Engine.
    silence_third_party_noise("cpu")
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.handler is cmd_import_maxtext and not any(word.startswith("-") for word in unknown):
        # argparse takes one run of positionals; MaxText's users type overrides anywhere on the line.
        args.words += unknown
    elif unknown and hasattr(args, "overrides") and not any(word.startswith("-") for word in unknown):
        args.overrides += unknown  # overrides typed after -o OUT
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return int(args.handler(args))
    except UserError as error:
        _err(f"bridgec: {error}")
        return EXIT_SPEC_ERROR
    except KeyboardInterrupt:
        _err("bridgec: interrupted")
        return 130
    except Exception as error:  # noqa: BLE001 - the last line of defence: no traceback for users
        if os.environ.get("BRIDGEC_DEBUG"):
            traceback.print_exc()
        _err(
            f"bridgec: internal error: {type(error).__name__}: {error}\n"
            "this is a bug in bridgec; rerun with BRIDGEC_DEBUG=1 for the traceback and report it"
        )
        return EXIT_INTERNAL


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(argv)


if __name__ == "__main__":
    sys.exit(main())
