"""``bridgec convert``: move checkpoints between Orbax (MaxText's layout) and bridgec, with a compiled script's model.

The work happens in :mod:`bridgec.runtime.convert`, under torchrun with the
script's compiled layout (each rank reads and writes only its shard). This
module reads the script statically (:func:`bridgec.compiler.torchrun.read_launch`),
checks the paths, then either launches torchrun (one node) or prints the command
every node must run (several nodes). Workers' output is relayed as it comes;
torchrun's own failure report (a traceback of the launcher) is replaced by one line.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridgec.compiler import torchrun
from bridgec.compiler.cli import EXIT_INTERNAL, EXIT_OK, EXIT_SPEC_ERROR
from bridgec.compiler.torchrun import InputError, ScriptLaunch, read_launch
from bridgec.runtime.models import gpt

RUNTIME_MODULE = "bridgec.runtime.convert"
USER_ERROR_CODES = frozenset({4, 5, 6, 11})
"""bridgec.runtime.errors codes a conversion exits with for problems the user can fix
(launch mismatch, unreadable script, checkpoint that does not fit, script of another bridgec version)."""


# --------------------------------------------------------------------------------------------
# Launching.


def launch(script: ScriptLaunch, arguments: list[str]) -> int:
    """Run the conversion: torchrun on this machine, or (several nodes) print each node's command and exit 2."""
    if script.nodes > 1:
        command = ["torchrun", *script.torchrun_options, "-m", RUNTIME_MODULE, *arguments]
        print(
            f"{script.path} is compiled for {script.nodes} nodes x {script.procs_per_node} processes: the "
            "conversion runs in that layout. Run this on every node (HOST_OF_NODE_0: the address of node 0):\n"
            f"  {shlex.join(command)}"
        )
        return EXIT_SPEC_ERROR
    finished = torchrun.run(
        ["--standalone", "--nproc-per-node", str(script.procs_per_node), "-m", RUNTIME_MODULE, *arguments]
    )
    code = finished.returncode
    if code == 0:
        return EXIT_OK
    worker_codes = set(finished.worker_codes)
    if worker_codes and worker_codes <= USER_ERROR_CODES:
        print(
            "bridgec: the conversion stopped (the message above says why); nothing usable was written", file=sys.stderr
        )
        return EXIT_SPEC_ERROR
    sys.stderr.write(finished.launcher_output)
    print(
        f"bridgec: internal error: the conversion exited with code(s) {sorted(worker_codes) or [code]}; "
        "this is a bug in bridgec, please report it with the output above",
        file=sys.stderr,
    )
    return EXIT_INTERNAL


# --------------------------------------------------------------------------------------------
# The commands.


def _existing(path: Path, what: str) -> Path:
    if not path.exists():
        raise InputError(f"{path}: no such {what}")
    return path.resolve()


def orbax_to_megatron_arguments(args: argparse.Namespace) -> tuple[ScriptLaunch, list[str]]:
    """The script and the runtime's arguments (absolute paths), after checking what can be checked here."""
    script = read_launch(Path(args.script))
    items = _existing(Path(args.checkpoint), "Orbax item folder")
    if not (items / "_METADATA").is_file():
        raise InputError(f"{args.checkpoint}: not an Orbax item folder (no _METADATA); give <checkpoint>/<step>/items")
    output = Path(args.output).resolve()
    if output.is_file():
        raise InputError(f"{args.output}: is a file; --output is the bridgec checkpoint folder to create")
    if output.is_dir() and any(child.name == "latest" or child.name.startswith("iter_") for child in output.iterdir()):
        raise InputError(f"{args.output}: already holds bridgec checkpoints; convert into an empty or new folder")
    arguments = [
        "orbax-to-megatron",
        "--script",
        str(script.path.resolve()),
        "--checkpoint",
        str(items),
        "--output",
        str(output),
        "--optimizer-type",
        args.optimizer_type,
        "--rope-layout",
        args.rope_layout,
        "--param-scan-axis",
        str(args.param_scan_axis),
    ]
    if args.optimizer_state:
        arguments.append("--optimizer-state")
    return script, arguments


def megatron_to_orbax_arguments(args: argparse.Namespace) -> tuple[ScriptLaunch, list[str]]:
    """The script and the runtime's arguments (absolute paths); the checkpoint itself is checked by the run."""
    script = read_launch(Path(args.script))
    directory = _existing(Path(args.checkpoint), "checkpoint folder")
    _check_step(directory, args.step)
    arguments = [
        "megatron-to-orbax",
        "--script",
        str(script.path.resolve()),
        "--checkpoint",
        str(directory),
        "--output",
        str(Path(args.output).resolve()),
        "--dtype",
        args.dtype,
        "--rope-layout",
        args.rope_layout,
        "--param-scan-axis",
        str(args.param_scan_axis),
    ]
    if args.step is not None:
        arguments += ["--step", str(args.step)]
    if args.unscanned:
        arguments.append("--unscanned")
    arguments += ["--decoder-block", args.decoder_block]
    return script, arguments


def _check_step(directory: Path, step: int | None) -> None:
    """Refuse a --step the folder has no checkpoint of, listing the ones it has, before torchrun starts."""
    from bridgec.runtime.checkpoint_files import find_step
    from bridgec.runtime.errors import RunError

    try:
        found = find_step(directory, step)
    except RunError as error:
        raise InputError(error.message) from None
    if found is None:
        raise InputError(
            f"{directory}: holds no complete bridgec checkpoint (give the [checkpoint] dir, not an iter_* folder)"
        )


def hf_to_megatron_arguments(args: argparse.Namespace) -> tuple[ScriptLaunch, list[str]]:
    """The script and the runtime's arguments; the script's Hugging Face folder is checked by the run."""
    script = read_launch(Path(args.script))
    output = Path(args.output).resolve()
    if output.is_file():
        raise InputError(f"{args.output}: is a file; --output is the bridgec checkpoint folder to create")
    if output.is_dir() and any(child.name == "latest" or child.name.startswith("iter_") for child in output.iterdir()):
        raise InputError(f"{args.output}: already holds bridgec checkpoints; convert into an empty or new folder")
    return script, ["hf-to-megatron", "--script", str(script.path.resolve()), "--output", str(output)]


def megatron_to_hf_arguments(args: argparse.Namespace) -> tuple[ScriptLaunch, list[str]]:
    """The script and the runtime's arguments (absolute paths); refuses an existing --output before launching."""
    script = read_launch(Path(args.script))
    directory = _existing(Path(args.checkpoint), "checkpoint folder")
    _check_step(directory, args.step)
    output = Path(args.output).resolve()
    if output.exists():
        raise InputError(f"{args.output}: already exists; the Hugging Face folder is written new (choose another)")
    arguments = ["megatron-to-hf", "--script", str(script.path.resolve()), "--checkpoint", str(directory)]
    arguments += ["--output", str(output), "--dtype", args.dtype]
    if args.adapter:
        arguments.append("--adapter")
    if args.step is not None:
        arguments += ["--step", str(args.step)]
    return script, arguments


def cmd_hf_to_megatron(args: argparse.Namespace) -> int:
    return _launch_checked(hf_to_megatron_arguments, args)


def cmd_megatron_to_hf(args: argparse.Namespace) -> int:
    return _launch_checked(megatron_to_hf_arguments, args)


def cmd_orbax_to_megatron(args: argparse.Namespace) -> int:
    return _launch_checked(orbax_to_megatron_arguments, args)


def cmd_megatron_to_orbax(args: argparse.Namespace) -> int:
    return _launch_checked(megatron_to_orbax_arguments, args)


def _launch_checked(
    arguments_of: Callable[[argparse.Namespace], tuple[ScriptLaunch, list[str]]], args: argparse.Namespace
) -> int:
    try:
        script, arguments = arguments_of(args)
    except InputError as error:
        print(f"bridgec: {error}", file=sys.stderr)
        return EXIT_SPEC_ERROR
    return launch(script, arguments)


def _layout_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rope-layout",
        choices=("rotate_half", "interleaved"),
        default="rotate_half",
        help="MaxText's RoPE pairing: rotate_half (default RoPE) or interleaved (its llama3.1 path)",
    )
    parser.add_argument(
        "--param-scan-axis",
        type=int,
        default=1,
        metavar="AXIS",
        help="the axis stacking the layers of a scanned checkpoint (MaxText's param_scan_axis, default 1)",
    )


CONVERT_EXITS = (
    "exit codes: 0 converted; 2 a path, the script or the checkpoint does not fit (the message says "
    "which), or a multi-node script (each node's command is printed); 3 internal error"
)


def add_convert_parser(commands: Any) -> None:
    """Add ``convert orbax-to-megatron`` and ``convert megatron-to-orbax`` to bridgec's subcommands."""
    convert = commands.add_parser(
        "convert",
        help="checkpoints between Orbax (MaxText) and bridgec, with a compiled script's model and layout",
        description="Convert checkpoints with the model and layout of a compiled script. The conversion runs "
        "under torchrun with the script's number of processes; for a multi-node script the command for every "
        "node is printed instead (exit 2).",
    )
    directions = convert.add_subparsers(dest="convert_command", metavar="DIRECTION", required=True)
    to_megatron = directions.add_parser(
        "orbax-to-megatron",
        help="an Orbax MaxText checkpoint as a bridgec checkpoint the script resumes from",
        description="Load an Orbax checkpoint in MaxText's layout into RUN.py's model (and, with "
        "--optimizer-state, Adam's moments and count into its optimizer) and save it as a bridgec checkpoint in "
        "DIR; set [checkpoint] dir = DIR and resume = true in the spec to continue training from it.",
        epilog=CONVERT_EXITS,
    )
    to_megatron.add_argument("script", metavar="RUN.py", help="the script bridgec compile wrote")
    to_megatron.add_argument(
        "--checkpoint", required=True, metavar="ITEMS", help="the Orbax item folder, <checkpoint>/<step>/items"
    )
    to_megatron.add_argument("--output", required=True, metavar="DIR", help="the bridgec checkpoint folder to create")
    to_megatron.add_argument(
        "--optimizer-state",
        action="store_true",
        help="also load Adam's moments and count (a full-state checkpoint); the checkpoint's "
        "step is then the count, else 0",
    )
    to_megatron.add_argument(
        "--optimizer-type",
        choices=("adamw", "adam_pax"),
        default="adamw",
        help="MaxText's opt_type that wrote the moments (adam_pax keeps bias-corrected ones)",
    )
    _layout_options(to_megatron)
    to_megatron.set_defaults(handler=cmd_orbax_to_megatron)

    to_orbax = directions.add_parser(
        "megatron-to-orbax",
        help="a bridgec checkpoint (the latest, or --step N) as an Orbax checkpoint MaxText loads",
        description="Load the checkpoint of step N of DIR (default: its latest) into RUN.py's model and write "
        "OUT/<step>/items, named after the step it holds, which MaxText takes as load_parameters_path. "
        "bridgec checkpoint inspect DIR lists the steps DIR holds.",
        epilog=CONVERT_EXITS,
    )
    to_orbax.add_argument("script", metavar="RUN.py", help="the script bridgec compile wrote")
    to_orbax.add_argument("--checkpoint", required=True, metavar="DIR", help="a [checkpoint] dir")
    to_orbax.add_argument("--output", required=True, metavar="OUT", help="writes OUT/<step>/items")
    to_orbax.add_argument(
        "--step", type=int, metavar="N", help="export the checkpoint of step N (DIR/iter_N); default: the latest"
    )
    to_orbax.add_argument(
        "--dtype",
        choices=("fp32", "bf16"),
        default="fp32",
        help="the leaves' dtype (fp32 main weights of a mixed-precision run are used)",
    )
    to_orbax.add_argument(
        "--unscanned", action="store_true", help="one decoder/layers_<i> subtree per layer (MaxText scan_layers=false)"
    )
    to_orbax.add_argument(
        "--decoder-block",
        choices=gpt.MAXTEXT_BLOCKS,
        default="llama2",
        help="MaxText's decoder_block, which names the leaves (gemma names its layer norms apart; llama2, "
        "mistral and qwen3 share names)",
    )
    _layout_options(to_orbax)
    to_orbax.set_defaults(handler=cmd_megatron_to_orbax)

    from_hf = directions.add_parser(
        "hf-to-megatron",
        help="the script's [init.checkpoint] Hugging Face folder as a bridgec checkpoint (step 0)",
        description='Load the Hugging Face folder RUN.py starts from ([init.checkpoint] format = "huggingface") '
        "into its model and save it as a bridgec checkpoint in DIR, once; set [checkpoint] dir = DIR and "
        "resume = true to train from it without reading the folder again.",
        epilog=CONVERT_EXITS,
    )
    from_hf.add_argument("script", metavar="RUN.py", help="the script bridgec compile wrote")
    from_hf.add_argument("--output", required=True, metavar="DIR", help="the bridgec checkpoint folder to create")
    from_hf.set_defaults(handler=cmd_hf_to_megatron)

    to_hf = directions.add_parser(
        "megatron-to-hf",
        help="a bridgec checkpoint (the latest, or --step N) as a Hugging Face folder transformers loads",
        description="Load the checkpoint of step N of DIR (default: its latest) into RUN.py's model and write OUT: "
        "config.json (the one of the folder RUN.py started from), sharded safetensors with "
        "model.safetensors.index.json, and that folder's tokenizer and generation files. OUT is written under a "
        "temporary name and renamed when complete.",
        epilog=CONVERT_EXITS,
    )
    to_hf.add_argument("script", metavar="RUN.py", help="the script bridgec compile wrote")
    to_hf.add_argument("--checkpoint", required=True, metavar="DIR", help="a [checkpoint] dir")
    to_hf.add_argument("--output", required=True, metavar="OUT", help="the Hugging Face folder to create")
    to_hf.add_argument(
        "--step", type=int, metavar="N", help="export the checkpoint of step N (DIR/iter_N); default: the latest"
    )
    to_hf.add_argument(
        "--dtype",
        choices=("fp32", "bf16"),
        default="fp32",
        help="the tensors' dtype (fp32 main weights of a mixed-precision run are used)",
    )
    to_hf.add_argument(
        "--adapter",
        action="store_true",
        help="[peft] scripts: write the adapters as a Hugging Face PEFT folder (adapter_config.json, "
        "adapter_model.safetensors) instead of the base model with the adapters merged into its weights",
    )
    to_hf.set_defaults(handler=cmd_megatron_to_hf)
