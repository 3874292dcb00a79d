"""Rules for what the spec names on disk: data sources and their tokenizer file, checkpoints, hooks."""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from collections.abc import Generator, Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import attrs

from bridgec.compiler.errors import KeyPath, close_match, format_path, render_value
from bridgec.compiler.rule_base import (
    Finding,
    Rule,
    SpecContext,
)
from bridgec.compiler.spec import Data, InitCheckpoint, Spec
from bridgec.runtime.data_split import IDX_HEADER_SIZE, DocumentRange, empty_splits, idx_document_count
from bridgec.runtime.events import EVENTS
from bridgec.runtime.tokenizer import TokenizerError, TokenizerFacts, TokenizerKind, describe

if TYPE_CHECKING:
    from bridgec.compiler.hooks import HookFile  # imports libcst, which only specs with hooks need

# -- data -------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class TokenizerSidecar:
    """``prefix.json``, written next to an indexed dataset by ``bridgec data build``."""

    tokenizer: str
    vocab_size: int
    eod: int
    tokenizer_sha256: str | None = None
    """The sha256 of the tokenizer's files (runtime/tokenizer.py); None for the byte-level tokenizer."""


def parse_tokenizer_sidecar(text: str) -> TokenizerSidecar | str:
    """The sidecar, or what is wrong with it (in words)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"invalid JSON at line {exc.lineno}: {exc.msg}"
    if not isinstance(data, dict):
        return "it is not a JSON object"
    for key, kind, words in (
        ("tokenizer", str, "a string"),
        ("vocab_size", int, "an integer"),
        ("eod", int, "an integer"),
    ):
        if key not in data:
            return f"it has no {key!r}"
        if type(data[key]) is not kind:
            return f"{key!r} is not {words}"
    if data["vocab_size"] < 1 or not 0 <= data["eod"] < data["vocab_size"]:
        return f"eod = {data['eod']} is not a token id of vocab_size = {data['vocab_size']}"
    sha256 = data.get("tokenizer_sha256")
    if sha256 is not None and type(sha256) is not str:
        return "'tokenizer_sha256' is not a string"
    return TokenizerSidecar(
        tokenizer=data["tokenizer"], vocab_size=data["vocab_size"], eod=data["eod"], tokenizer_sha256=sha256
    )


def rule_data_sources_match_kind(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    kind, count = spec.data.kind, len(spec.data.sources)
    if kind == "indexed" and count == 0:
        yield Finding(
            about=(("data", "kind"),),
            message='$.data.kind = "indexed" needs at least one [[data.sources]] table (it names the '
            ".bin/.idx files to read)",
            hint='add [[data.sources]] with prefix = "path/to/tokens" (the files\' path without .bin/.idx)',
        )
    if kind == "sft" and count == 0:
        yield Finding(
            about=(("data", "kind"),),
            message='$.data.kind = "sft" needs at least one [[data.sources]] table (a dataset written by '
            "`bridgec data build --sft`)",
            hint='add [[data.sources]] with prefix = "path/to/sft" (several tables are blended by weight)',
        )
    if kind == "mock" and count > 0:
        yield Finding(
            about=(("data", "sources"), ("data", "kind")),
            message=f"$.data.sources has {count} entr{'y' if count == 1 else 'ies'}, but data.kind = "
            f'"mock" reads no files (mock data is synthetic)',
            hint='set kind = "indexed" under [data], or remove the [[data.sources]] tables',
        )


def rule_data_files_exist(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    if spec.data.kind == "mock" or not ctx.require_data:
        return
    # An SFT dataset also has its loss masks (bridgec data build --sft writes both).
    extensions = (".bin", ".idx") + ((".loss_mask.bin", ".loss_mask.idx") if spec.data.kind == "sft" else ())
    for i, source in enumerate(spec.data.sources):
        missing = [source.prefix + ext for ext in extensions if not ctx.files.exists(ctx.resolve(source.prefix + ext))]
        if not missing:
            continue
        relative = "" if os.path.isabs(source.prefix) else " (paths are relative to the spec's folder)"
        verb = "does" if len(missing) == 1 else "do"
        stem, ext = os.path.splitext(source.prefix)
        yield Finding(
            about=(("data", "sources", i, "prefix"),),
            message=(
                f"$.data.sources[{i}].prefix = {render_value(source.prefix)}: {' and '.join(missing)} "
                f"{verb} not exist{relative}"
            ),
            hint=(
                f"leave out the extension: prefix = {render_value(stem)}"
                if ext in (".bin", ".idx")
                else "fix the prefix, or build the files with `bridgec data build`"
            ),
        )


def rule_source_weights_positive(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    for i, source in enumerate(spec.data.sources):
        if source.weight <= 0:
            yield Finding(
                about=(("data", "sources", i, "weight"),),
                message=f"$.data.sources[{i}].weight = {render_value(source.weight)} must be greater than 0 "
                f"(weights are shares of the blend, normalised over all sources)",
                hint="weight = 1.0, or remove the source",
            )


def rule_split(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    split, about = spec.data.split, (("data", "split"),)
    shown = render_value(split)
    if spec.data.kind == "mock":
        if split != _DEFAULT_SPLIT:
            yield Finding(
                about=about + (("data", "kind"),),
                message=f'$.data.split = {shown} has no effect with data.kind = "mock": megatron-core '
                f"splits its {MOCK_SEQUENCES:,} synthetic sequences into three equal parts "
                f"whatever the split says",
                hint='remove split, or set kind = "indexed" under [data]',
            )
    elif any(share < 0 for share in split):
        yield Finding(
            about=about,
            message=f"$.data.split = {shown} must be three shares of 0 or more (train, validation, test)",
            hint="split = [98.0, 1.0, 1.0]",
        )
    elif split[0] <= 0:
        yield Finding(
            about=about,
            message=f"$.data.split = {shown} leaves no training data (the first share is the training share)",
            hint="split = [98.0, 1.0, 1.0]",
        )
    elif spec.train.eval_interval is not None and split[1] <= 0:
        yield Finding(
            about=about + (("train", "eval_interval"),),
            message=f"$.data.split = {shown} leaves no validation data, but train.eval_interval = "
            f"{spec.train.eval_interval} evaluates on it",
            hint="give validation a share, as in split = [98.0, 1.0, 1.0], or remove eval_interval",
        )


_DEFAULT_SPLIT = attrs.fields(Data).split.default
MOCK_SEQUENCES = 100_000
"""megatron-core's MockGPTLowLevelDataset.size; its config forces split "1,1,1" when there is no blend."""


def rule_splits_have_documents(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    d = spec.data
    if d.kind != "indexed" or any(share < 0 for share in d.split) or d.split[0] <= 0:
        return  # rule_split reports a split that cannot be applied at all
    counts: list[int] = []
    empty: list[tuple[int, int, tuple[DocumentRange, ...]]] = []
    for i, source in enumerate(d.sources):
        if not all(ctx.files.exists(ctx.resolve(source.prefix + ext)) for ext in (".bin", ".idx")):
            continue  # rule_data_files_exist reports it
        count = _document_count(ctx, source.prefix + ".idx")
        if isinstance(count, str):
            yield Finding(
                about=(("data", "sources", i, "prefix"),),
                message=f"$.data.sources[{i}].prefix = {render_value(source.prefix)}: "
                f"{source.prefix}.idx is not an index file megatron-core can read: {count}",
                hint="rebuild the data with `bridgec data build`",
            )
            continue
        counts.append(count)
        if gaps := empty_splits(d.split, count):
            empty.append((i, count, gaps))
    for i, count, gaps in empty:
        names = " and ".join(gap.split for gap in gaps)
        where = "; ".join(f"{gap.split} {gap.arithmetic(count)}" for gap in gaps)
        yield Finding(
            about=(("data", "split"), ("data", "sources", i, "prefix")),
            message=f"$.data.split = {render_value(d.split)} gives the {names} split{'s' if len(gaps) > 1 else ''} "
            f"of data.sources[{i}] ({d.sources[i].prefix}, {count} document{'s' if count != 1 else ''}) "
            f"no document: megatron-core gives a split documents round(start x n) to round(end x n), here "
            f"{where}, and never finishes building a split without documents",
            hint=_split_hint(spec, counts),
        )


def _document_count(ctx: SpecContext, name: str) -> int | str:
    try:
        return idx_document_count(ctx.files.read_head(ctx.resolve(name), IDX_HEADER_SIZE))
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or type(exc).__name__})"


def _split_hint(spec: Spec, counts: list[int]) -> str:
    """A split that gives every split with a share at least one document of every source, when there is one."""
    needs_valid = spec.train.eval_interval is not None or spec.data.split[1] > 0
    smallest = min(counts)
    suggestion = (float(smallest - needs_valid), float(needs_valid), 0.0)
    if suggestion[0] >= 1 and not any(empty_splits(suggestion, count) for count in counts):
        return (
            f"split = {render_value(list(suggestion))} (shares are normalised; bridgec never reads the test "
            f"split), or build the data from more documents"
        )
    return "build the data from more documents: every split with a share needs at least one document of each source"


def rule_eod_token_in_vocab(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    eod, vocab = spec.data.eod_token, spec.model.vocab_size
    if eod is not None and vocab >= 1 and eod >= vocab:
        yield Finding(
            about=(("data", "eod_token"),),
            message=f"$.data.eod_token = {eod} is not a token id of model.vocab_size = {vocab} (ids run "
            f"from 0 to {vocab - 1})",
            hint=f"eod_token = {vocab - 1} or less, or a larger vocab_size",
        )


def rule_tokenizer_sidecar(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    data = spec.data
    if data.kind == "mock" or not data.sources or data.tokenizer is not None:
        return  # with data.tokenizer, the rule_tokenizer_* rules check every source's tokenizer file
    prefix = data.sources[0].prefix
    if ctx.require_data and not all(ctx.files.exists(ctx.resolve(prefix + ext)) for ext in (".bin", ".idx")):
        return  # rule_data_files_exist reports it; a missing dataset has no tokenizer file either
    name, about = prefix + ".json", (("data", "sources", 0, "prefix"),)
    if not ctx.files.exists(ctx.resolve(name)):
        if data.eod_token is None:
            yield Finding(
                about=(("data", "eod_token"),) + about,
                message=f"$.data.eod_token is not set, and there is no tokenizer file {name} next to the "
                f"first source to read it from",
                hint=f"set eod_token under [data] to your tokenizer's end-of-document id, or rebuild the "
                f"data with `bridgec data build`, which writes {name}",
            )
        return
    sidecar = _read_sidecar(ctx, name)
    if isinstance(sidecar, str):
        yield Finding(
            about=about,
            message=f"{name} is not a tokenizer file bridgec can read: {sidecar}",
            hint="rebuild the data with `bridgec data build`, or delete the file and set eod_token under [data]",
        )
        return
    if spec.model.vocab_size < sidecar.vocab_size:
        yield Finding(
            about=(("model", "vocab_size"),),
            message=f"$.model.vocab_size = {spec.model.vocab_size} is smaller than the vocabulary of the "
            f"data's tokenizer, {sidecar.vocab_size} ({name}), so some token ids would fall outside "
            f"the embedding",
            hint=f"vocab_size = {sidecar.vocab_size}",
        )
    if data.eod_token is not None and data.eod_token != sidecar.eod:
        yield Finding(
            about=(("data", "eod_token"),),
            severity="warning",
            message=f"$.data.eod_token = {data.eod_token} differs from the end-of-document id of the "
            f"data's tokenizer, {sidecar.eod} ({name})",
            hint=f"remove eod_token to use {sidecar.eod}",
        )


def read_sidecar(ctx: SpecContext, prefix: str) -> TokenizerSidecar | str | None:
    """The tokenizer file of the indexed dataset at ``prefix`` (PREFIX.json): parsed, what is wrong with it, or None."""
    name = prefix + ".json"
    return _read_sidecar(ctx, name) if ctx.files.exists(ctx.resolve(name)) else None


def _read_sidecar(ctx: SpecContext, name: str) -> TokenizerSidecar | str:
    try:
        return parse_tokenizer_sidecar(ctx.files.read_text(ctx.resolve(name)))
    except UnicodeDecodeError:
        return "it is not UTF-8 text"
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or type(exc).__name__})"


def tokenizer_facts(spec: Spec, ctx: SpecContext) -> TokenizerFacts | str | None:
    """What data.tokenizer is (runtime/tokenizer.py's facts), what is wrong with it (in words), or None when unset."""
    name = spec.data.tokenizer
    if name is None:
        return None
    path = ctx.resolve(name)
    kind = _tokenizer_kind(ctx, path)
    try:
        return describe(path, ctx.files.read_bytes, kind=kind)
    except TokenizerError as error:
        return str(error).replace(str(path), name)  # the path as the spec writes it


def _tokenizer_kind(ctx: SpecContext, path: Path) -> TokenizerKind:
    if ctx.files.exists(path / "tokenizer.json"):
        return "huggingface"
    return "sentencepiece" if path.suffix == ".model" else "tiktoken"


def rule_tokenizer_readable(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    facts = tokenizer_facts(spec, ctx)
    if isinstance(facts, str):
        relative = "" if os.path.isabs(spec.data.tokenizer) else " (paths are relative to the spec's folder)"
        yield Finding(
            about=(("data", "tokenizer"),),
            message=f"$.data.tokenizer = {render_value(spec.data.tokenizer)} cannot be read{relative}: {facts}",
            hint="name a Hugging Face tokenizer folder (with tokenizer.json), a SentencePiece .model or a tiktoken "
            "rank file",
        )


def rule_tokenizer_fits_vocab(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    facts = tokenizer_facts(spec, ctx)
    if isinstance(facts, TokenizerFacts) and spec.model.vocab_size < facts.vocab_size:
        yield Finding(
            about=(("model", "vocab_size"), ("data", "tokenizer")),
            message=f"$.model.vocab_size = {spec.model.vocab_size} is smaller than the vocabulary of data.tokenizer "
            f"= {render_value(spec.data.tokenizer)}, {facts.vocab_size}, so some token ids would fall outside the "
            f"embedding",
            hint=f"vocab_size = {facts.vocab_size}",
        )


def rule_tokenizer_eod(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    facts, eod = tokenizer_facts(spec, ctx), spec.data.eod_token
    if isinstance(facts, TokenizerFacts) and eod is not None and eod != facts.eod:
        yield Finding(
            about=(("data", "eod_token"),),
            severity="warning",
            message=f"$.data.eod_token = {eod} differs from the end-of-document id of data.tokenizer = "
            f"{render_value(spec.data.tokenizer)}, {facts.eod}",
            hint=f"remove eod_token to use {facts.eod}",
        )


def rule_tokenizer_built_the_data(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    facts, data = tokenizer_facts(spec, ctx), spec.data
    if not isinstance(facts, TokenizerFacts) or data.kind == "mock":
        return
    shown = render_value(data.tokenizer)
    for i, source in enumerate(data.sources):
        if ctx.require_data and not all(ctx.files.exists(ctx.resolve(source.prefix + e)) for e in (".bin", ".idx")):
            continue  # rule_data_files_exist reports it
        name, about = source.prefix + ".json", (("data", "sources", i, "prefix"), ("data", "tokenizer"))
        rebuild = f"rebuild it: bridgec data build --input DOCS --tokenizer {data.tokenizer} --output {source.prefix}"
        sidecar = read_sidecar(ctx, source.prefix)
        if sidecar is None or isinstance(sidecar, str):
            what = "there is no such file" if sidecar is None else sidecar
            yield Finding(
                about=about,
                message=f"$.data.sources[{i}].prefix = {render_value(source.prefix)}: bridgec cannot tell which "
                f"tokenizer built it, because {name} (written by `bridgec data build`) cannot be read: {what}",
                hint=rebuild,
            )
        elif sidecar.tokenizer_sha256 != facts.sha256:
            built = (
                "the byte-level tokenizer"
                if sidecar.tokenizer_sha256 is None
                else f"a {sidecar.tokenizer} tokenizer with sha256 {sidecar.tokenizer_sha256[:12]}"
            )
            yield Finding(
                about=about,
                message=f"$.data.sources[{i}].prefix = {render_value(source.prefix)} was built with {built} "
                f"({name}), not with data.tokenizer = {shown} ({facts.kind}, sha256 {facts.sha256[:12]}), so its "
                f"token ids mean other text",
                hint=rebuild,
            )


# -- checkpoints ----------------------------------------------------------------------------------


def rule_checkpoint_needs_dir(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    c = spec.checkpoint
    if c.dir is not None:
        return
    used: dict[KeyPath, object] = {
        ("checkpoint", "save_interval"): c.save_interval,
        ("checkpoint", "resume"): c.resume or None,
        ("checkpoint", "keep_last"): c.keep_last,
        ("checkpoint", "overwrite"): c.overwrite or None,
        ("checkpoint", "async_save"): c.async_save or None,
    }
    for path, value in used.items():
        if value is not None:
            yield Finding(
                about=(path,),
                message=f"{format_path(path)} = {render_value(value)} needs checkpoint.dir (the folder "
                f"checkpoints are saved in and resumed from)",
                hint='add dir = "checkpoints" under [checkpoint]',
            )


def rule_overwrite_needs_a_fresh_start(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    c = spec.checkpoint
    if c.dir is not None and c.overwrite and c.resume:
        yield Finding(
            about=(("checkpoint", "overwrite"), ("checkpoint", "resume")),
            message="$.checkpoint.overwrite = true deletes the checkpoints a fresh start finds, but "
            "checkpoint.resume = true continues from them, so it would never act",
            hint="remove overwrite (to continue), or set resume = false (to start over)",
        )


def rule_checkpoints_need_adam(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    if spec.checkpoint.dir is not None and spec.optimizer.name != "adam":
        yield Finding(
            about=(("checkpoint", "dir"), ("optimizer", "name")),
            message=f'$.checkpoint.dir is set, but optimizer.name = "{spec.optimizer.name}": megatron-core '
            f"0.16 cannot checkpoint its SGD optimizer (it has no state initialiser to load into)",
            hint='use name = "adam" under [optimizer], or remove [checkpoint] dir',
        )
    init = spec.init.checkpoint
    if init is not None and init.optimizer_state and spec.optimizer.name != "adam":
        yield Finding(
            about=(("init", "checkpoint", "optimizer_state"), ("optimizer", "name")),
            message=f"$.init.checkpoint.optimizer_state = true loads Adam moments, but optimizer.name = "
            f'"{spec.optimizer.name}"',
            hint='use name = "adam" under [optimizer], or set optimizer_state = false',
        )


def rule_megatron_init_settings(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    """format = "megatron" reads Megatron-LM's own names and layout: the Orbax settings would change nothing."""
    init = spec.init.checkpoint
    if init is None or init.format != "megatron":
        return
    defaults = InitCheckpoint(format="megatron", path=init.path)
    for key in ("layout", "rope_layout", "param_scan_axis", "optimizer_type"):
        value = getattr(init, key)
        if value != getattr(defaults, key):
            yield Finding(
                about=(("init", "checkpoint", key), ("init", "checkpoint", "format")),
                message=f"$.init.checkpoint.{key} = {render_value(value)} applies to Orbax checkpoints only; "
                'format = "megatron" reads megatron-core\'s own tensor names and layout',
                hint=f"remove {key} from [init.checkpoint]",
            )


def rule_stopping_saves_a_checkpoint(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    """A planned stop exits 75 ("launch again to resume"); without checkpoint.dir there is nothing to resume from.

    exit_interval and exit_duration_minutes would then stop every launch at the same point and a scheduler
    that requeues on 75 would start the run over forever: refused. on_nonfinite = "stop" ends with its own
    code (not 75), so it only loses the run's progress: a warning.
    """
    if spec.checkpoint.dir is not None:
        return
    t = spec.train
    loops = (
        "each launch would start over from step 0 and stop again (a scheduler that requeues on exit 75 loops forever)"
    )
    stops: dict[KeyPath, object] = {
        ("train", "exit_interval"): t.exit_interval,
        ("train", "exit_duration_minutes"): t.exit_duration_minutes,
    }
    for path, value in stops.items():
        if value is not None:
            yield Finding(
                about=(path,),
                message=f"{format_path(path)} = {render_value(value)} stops the run to resume it later, "
                f"but checkpoint.dir is not set: nothing is saved, and {loops}",
                hint='add dir = "checkpoints" under [checkpoint]',
            )
    if t.on_nonfinite == "stop":
        yield Finding(
            about=(("train", "on_nonfinite"),),
            severity="warning",
            message='$.train.on_nonfinite = "stop" saves a checkpoint before stopping, but checkpoint.dir '
            "is not set: nothing is saved and the run cannot resume",
            hint='add dir = "checkpoints" under [checkpoint]',
        )


def rule_init_checkpoint_exists(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    checkpoint = spec.init.checkpoint
    if checkpoint is None or not ctx.require_data or ctx.files.exists(ctx.resolve(checkpoint.path)):
        return
    relative = "" if os.path.isabs(checkpoint.path) else " (paths are relative to the spec's folder)"
    yield Finding(
        about=(("init", "checkpoint", "path"),),
        message=f"$.init.checkpoint.path = {render_value(checkpoint.path)} does not exist{relative}",
        hint=_INIT_PATH_HINT[checkpoint.format],
    )


_INIT_PATH_HINT = {
    "orbax": "point it at the checkpoint's item folder, e.g. ckpt/1000/items",
    "huggingface": "point it at the Hugging Face model folder (the one holding config.json and the safetensors)",
    "megatron": "point it at Megatron-LM's save folder (the one holding latest_checkpointed_iteration.txt), a "
    "bridgec [checkpoint] dir or one iter_* folder",
}


# -- hooks ----------------------------------------------------------------------------------------


def _named_hooks(spec: Spec) -> dict[str, str]:
    """[hooks] key -> function name, for the hooks the spec names."""
    named = {"forward_step": spec.hooks.forward_step, "loss": spec.hooks.loss}
    return {key: name for key, name in named.items() if name is not None}


def rule_hooks_need_file(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    if spec.hooks.file is not None:
        return
    for key, name in _named_hooks(spec).items():
        yield Finding(
            about=(("hooks", key),),
            message=f"$.hooks.{key} = {render_value(name)} needs hooks.file (the Python file that defines it)",
            hint='add file = "hooks.py" under [hooks]',
        )


def rule_hooks_file_name(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    file = spec.hooks.file
    if file is None:
        return
    yield from _module_file_name(file, about=("hooks", "file"), shown=f"$.hooks.file = {render_value(file)}")


def _module_file_name(file: str, *, about: KeyPath, shown: str) -> Iterator[Finding]:
    """A Python file the script imports must be named like a module, and not like one it needs."""
    stem = PurePosixPath(file).stem
    if not file.endswith(".py") or not stem.isidentifier():
        yield Finding(
            about=(about,),
            message=f"{shown} must be a Python file whose name is an identifier (it is imported as a module)",
            hint='rename it, e.g. file = "my_hooks.py"',
        )
    elif stem in sys.stdlib_module_names:
        yield Finding(
            about=(about,),
            message=f"{shown} has the name of the standard library module "
            f"{stem!r}; beside the generated script it would shadow that module for torch and "
            f"everything else the script imports",
            hint=f'rename it, e.g. file = "my_{stem}.py"',
        )
    elif (distribution := script_modules().get(stem)) is not None:
        yield Finding(
            about=(about,),
            message=f"{shown} has the name of the module {stem!r} (from "
            f"{distribution}, which the generated script needs); beside the generated script "
            f"it would shadow that module for the script and everything it imports",
            hint=f'rename it, e.g. file = "my_{stem}.py"',
        )


@functools.cache
def script_modules() -> dict[str, str]:
    """Top-level module -> the installed distribution providing it, for bridgec and all it depends on.

    A generated script runs with its own folder first on the import path, so a
    hooks file there named like any of these would be imported in its place
    (by the script, by torch, by megatron-core, ...). Derived from the
    installed packages' metadata (bridgec's requirements, recursively, extras
    left out), so nothing is imported to find them.
    """
    from importlib import metadata

    needed: set[str] = set()
    pending = [_OWN_DISTRIBUTION]
    while pending:
        name = _canonical(pending.pop())
        if name in needed:
            continue
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue  # not installed here, so not imported either
        needed.add(name)
        pending += [
            match[1]
            for requirement in requires
            if not _EXTRA.search(requirement)
            if (match := _REQUIREMENT_NAME.match(requirement))
        ]
    modules = {_OWN_DISTRIBUTION: _OWN_DISTRIBUTION}  # also when bridgec runs from a source tree
    for module, distributions in metadata.packages_distributions().items():
        provider = next((d for d in distributions if _canonical(d) in needed), None)
        if provider is not None:
            modules.setdefault(module, provider)
    return modules


_OWN_DISTRIBUTION = __name__.split(".")[0]
_REQUIREMENT_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_EXTRA = re.compile(r"\bextra\s*==")  # a requirement of an optional extra (bridgec's "test"): not imported


def _canonical(name: str) -> str:
    """A distribution name as the packaging standards compare them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def rule_both_hooks(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    h = spec.hooks
    if h.forward_step is not None and h.loss is not None:
        yield Finding(
            about=(("hooks", "loss"), ("hooks", "forward_step")),
            message="hooks.forward_step and hooks.loss are both set, but a forward_step returns its own "
            "loss function, so hooks.loss would never be called",
            hint="remove hooks.loss and return your loss function from your forward_step",
        )


def rule_hook_functions(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    file, named = spec.hooks.file, _named_hooks(spec)
    if file is None:
        return
    about, shown = (("hooks", "file"),), f"$.hooks.file = {render_value(file)}"
    if not named:
        yield Finding(
            about=about,
            severity="warning",
            message=f"{shown} is not used: neither hooks.forward_step nor hooks.loss names a function in it",
            hint='name one, as forward_step = "my_forward_step", or remove file',
        )
        return
    parsed = yield from _read_hook_file(file, ctx, about=about, shown=shown)
    if parsed is None:
        return
    # libcst takes a noticeable part of a second to import: only specs that name a hook file pay for it.
    from bridgec.compiler import hooks

    for key, name in named.items():
        signature = hooks.SIGNATURES[key]
        found = hooks.find_hook(parsed, name, signature)
        hook, shown = (("hooks", key),), f"$.hooks.{key} = {render_value(name)}"
        if isinstance(found, hooks.NotFound):
            yield Finding(
                about=hook,
                message=f"{shown} is not a top-level function of {file}",
                hint=f"did you mean {found.suggestion!r}?"
                if found.suggestion
                else f"define def {name}({signature.render()}) at the top level of {file}",
            )
        elif isinstance(found, hooks.BadSignature):
            function = found.function
            yield Finding(
                about=hook,
                message=f"{shown}: {function.render()} at {file}:{function.line} {found.problem}",
                hint=f"define it as def {name}({signature.render()})",
            )


def _read_hook_file(
    file: str, ctx: SpecContext, *, about: tuple[KeyPath, ...], shown: str
) -> Generator[Finding, None, HookFile | None]:
    """Parse a Python file the spec names; yield why not and return None when it cannot be."""
    if not ctx.files.exists(ctx.resolve(file)):
        relative = "" if os.path.isabs(file) else " (paths are relative to the spec's folder)"
        yield Finding(about=about, message=f"{shown} does not exist{relative}", hint="create it, or fix the path")
        return None
    # libcst takes a noticeable part of a second to import: only specs that name a hook file pay for it.
    from bridgec.compiler import hooks

    try:
        parsed = hooks.read_hook_file(ctx.files.read_text(ctx.resolve(file)))
    except UnicodeDecodeError:
        yield Finding(about=about, message=f"{shown} is not UTF-8 text", hint="save it as UTF-8")
        return None
    except OSError as exc:
        yield Finding(
            about=about,
            message=f"{shown} cannot be read ({exc.strerror or type(exc).__name__})",
            hint="check the file's permissions",
        )
        return None
    if isinstance(parsed, hooks.Unparsable):
        where = file if parsed.line is None else f"{file}:{parsed.line}:{parsed.column}"
        yield Finding(
            about=about,
            message=f"{shown} is not valid Python: {where}: {parsed.message}",
            hint=f"fix line {parsed.line} of {file}" if parsed.line else f"fix {file}",
        )
        return None
    return parsed


def rule_callbacks(spec: Spec, ctx: SpecContext) -> Iterator[Finding]:
    """Each callback names a class in a Python file, and every public method of it is an event."""
    for index, entry in enumerate(spec.hooks.callbacks):
        about: KeyPath = ("hooks", "callbacks", index)
        shown = f"$.hooks.callbacks[{index}] = {render_value(entry)}"
        file, colon, name = entry.rpartition(":")
        if not colon or not file or not name.isidentifier():
            yield Finding(
                about=(about,),
                message=f'{shown} must be "file.py:Class": a Python file (relative to the spec\'s folder) '
                "and the name of a class in it",
                hint='write it as callbacks = ["my_callbacks.py:MyCallback"]',
            )
            continue
        named_badly = list(_module_file_name(file, about=about, shown=shown))
        if named_badly:
            yield from named_badly
            continue
        parsed = yield from _read_hook_file(file, ctx, about=(about,), shown=shown)
        if parsed is None:
            continue
        yield from _callback_class(parsed, file, name, about=about, shown=shown)


def _callback_class(parsed: HookFile, file: str, name: str, *, about: KeyPath, shown: str) -> Iterator[Finding]:
    from bridgec.compiler import hooks

    cls = parsed.classes.get(name)
    if cls is None:
        near = close_match(name, sorted(parsed.classes))
        yield Finding(
            about=(about,),
            message=f"{shown}: {file} has no top-level class {name!r}",
            hint=f"did you mean {near!r}?" if near else f"define class {name}: at the top level of {file}",
        )
        return
    for problem in hooks.callback_problems(cls, EVENTS):
        yield Finding(
            about=(about,),
            message=f"{shown}: {name}.{problem.method.name} ({file}:{problem.method.line}) {problem.message}",
            hint=problem.hint,
        )


FILE_RULES: tuple[Rule, ...] = (
    rule_data_sources_match_kind,
    rule_data_files_exist,
    rule_source_weights_positive,
    rule_split,
    rule_splits_have_documents,
    rule_eod_token_in_vocab,
    rule_tokenizer_sidecar,
    rule_tokenizer_readable,
    rule_tokenizer_fits_vocab,
    rule_tokenizer_eod,
    rule_tokenizer_built_the_data,
    rule_checkpoint_needs_dir,
    rule_overwrite_needs_a_fresh_start,
    rule_checkpoints_need_adam,
    rule_stopping_saves_a_checkpoint,
    rule_init_checkpoint_exists,
    rule_megatron_init_settings,
    rule_hooks_need_file,
    rule_hooks_file_name,
    rule_both_hooks,
    rule_hook_functions,
    rule_callbacks,
)
