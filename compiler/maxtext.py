"""``bridgec import maxtext``: a MaxText config (base.yml <- model file <- key=value overrides) as a spec.

Pure: YAML text in, TOML text out (with notes and errors); the command reads
and writes the files. MaxText's rules are followed as pyconfig.py (commit
e591f30) applies them:

* merge order base <- model file <- overrides; a key set in both the model
  file and the overrides with different values is an error unless
  ``override_model_config=true`` (then the override wins);
* YAML as OmegaConf reads it (``1e-5`` is a float), and "None" strings are None;
* ``global_parameter_scale`` (a power of two) scales the base_* dimensions;
* devices come from the hardware in MaxText: here the caller gives ``devices``
  (the command's ``--devices N``; ``--nodes M`` for the slices/nodes, default
  MaxText's num_slices or 1). Global batch = int(devices x
  per_device_batch_size) x gradient_accumulation_steps; each accumulation step
  is one Megatron microbatch per data-parallel rank (split further into
  num_pipeline_microbatches with pipeline stages).

Every key of the merged config is mapped into the spec (with a comment naming
its MaxText source) or listed in the closing comment block with what was done
(:mod:`bridgec.compiler.maxtext_keys`). What cannot be reproduced is refused
with the key, the value and what would import.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import Any

import attrs
import yaml

from bridgec.compiler.maxtext_keys import GATES, ignored_reason
from bridgec.compiler.maxtext_map import map_config
from bridgec.compiler.maxtext_read import ImportProblem, MappedConfig, maxtext_value, show
from bridgec.compiler.spec_text import comment_bullets, toml_value, wrap_words

__all__ = ["ImportProblem", "ImportResult", "import_maxtext", "model_file_name", "parse_overrides"]


@attrs.frozen(kw_only=True)
class ImportResult:
    toml: str | None
    """The spec text; None when there are errors."""
    notes: tuple[str, ...]
    """What needs the user's attention (also in the spec's comments), for the command to print."""
    errors: tuple[ImportProblem, ...]
    ledger: str | None = None
    """With ``ledger_file``: the MaxText keys without a counterpart and what was done about each, for that file."""


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml when built with it
    """YAML as OmegaConf reads MaxText's files: ``1e-5`` and ``1.e-5`` are floats."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9][0-9_]*(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _parse_yaml(text: str, name: str, errors: list[ImportProblem]) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        errors.append(ImportProblem(key="", message=f"{name}: not valid YAML ({error})"))
        return {}
    if data is None:
        return {}
    if not isinstance(data, dict):
        errors.append(ImportProblem(key="", message=f"{name}: a MaxText config is a mapping of keys to values"))
        return {}
    return data


def parse_overrides(overrides: Sequence[str], errors: list[ImportProblem]) -> dict[str, Any]:
    """``key=value`` arguments, values read as YAML (as MaxText's command line reads them)."""
    parsed: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            errors.append(ImportProblem(key=item, message=f"override {item!r} is not key=value"))
            continue
        try:
            parsed[key.strip()] = yaml.load(text, Loader=_Loader) if text else ""  # noqa: S506
        except yaml.YAMLError:
            parsed[key.strip()] = text
    return parsed


def model_file_name(base_text: str, overrides: Sequence[str]) -> str | None:
    """The model_name the merged base and overrides name (MaxText reads models/<model_name>.yml), or None for 'default'."""
    errors: list[ImportProblem] = []
    name = {**_parse_yaml(base_text, "base", errors), **parse_overrides(overrides, errors)}.get("model_name", "default")
    return None if name in (None, "default") else str(name).replace("-Instruct", "")


def import_maxtext(
    base_text: str,
    model_text: str | None,
    overrides: Sequence[str],
    *,
    devices: int,
    nodes: int | None = None,
    device: str = "cuda",
    base_name: str = "base.yml",
    model_name: str | None = None,
    schedule_variant: str | None = None,
    command: str | None = None,
    ledger_file: str | None = None,
) -> ImportResult:
    """Merge and map a MaxText config; see the module docstring for the rules.

    ``base_name`` / ``model_name`` name the files in comments and messages (pass
    them as the user wrote them: no absolute paths, so output is portable).
    ``schedule_variant`` picks MaxText's learning-rate formula (2026-02, 2026-01,
    2025); default 2026-02, or 2025 when the base still has
    cosine_learning_rate_final_fraction. ``command`` is echoed in the header.
    ``ledger_file``: the keys without a counterpart go to ``ImportResult.ledger``
    (for that file, which the spec names) instead of a comment block closing the
    spec, so the spec stays short.
    """
    errors: list[ImportProblem] = []
    base = _parse_yaml(base_text, base_name, errors)
    model = _parse_yaml(model_text, model_name or "model file", errors) if model_text is not None else {}
    cli = parse_overrides(overrides, errors)
    if "base_config" in base:
        errors.append(
            ImportProblem(
                key="base_config",
                message=f"{base_name} inherits from {base['base_config']!r}; the import reads one base file",
                hint="merge the chain into one file, or import the root base.yml with the differences as overrides",
            )
        )
    for source, keys in ((model_name or "model file", model), ("the command line", cli)):
        for key in keys:
            if key not in base and key != "cosine_learning_rate_final_fraction":
                close = difflib.get_close_matches(key, list(base), n=1)
                errors.append(
                    ImportProblem(
                        key=key,
                        message=f"{key!r} (from {source}) is not a MaxText key: {base_name} does not define it",
                        hint=f"did you mean {close[0]}?" if close else None,
                    )
                )
    override_model = bool(maxtext_value({**base, **cli}.get("override_model_config", False)))
    if override_model:
        model = {k: v for k, v in model.items() if k not in cli}
    else:
        clashing = [k for k in model if k in cli and model[k] != cli[k]]
        if clashing:
            errors.append(
                ImportProblem(
                    key=clashing[0],
                    message=f"Keys {clashing} are overridden by both model config and CLI/kwargs with different "
                    "values. This is not allowed, unless setting `override_model_config=True`.",
                    hint="drop the override, or add override_model_config=true to let it win (MaxText's rule)",
                )
            )
    if errors:
        return ImportResult(toml=None, notes=(), errors=tuple(errors))
    config = {key: maxtext_value(value) for key, value in {**base, **model, **cli}.items()}
    origin = {key: "base" for key in base} | {key: "model" for key in model} | {key: "cli" for key in cli}
    mapped = map_config(
        config=config,
        origin=origin,
        names={"base": base_name, "model": model_name or "model file", "cli": "command line"},
        model_label=re.sub(r"\.ya?ml$", "", model_name.replace("\\", "/").rsplit("/", 1)[-1]) if model_name else None,
        devices=devices,
        nodes=nodes,
        device=device,
        schedule_variant=schedule_variant,
    )
    if mapped.errors:
        return ImportResult(toml=None, notes=mapped.notes, errors=mapped.errors)
    header = _header(base_name, model_name, overrides, command)
    if ledger_file is None:
        return ImportResult(toml=render(mapped, header), notes=mapped.notes, errors=())
    pointer = [f"# The MaxText keys with no counterpart in this spec, and what was done about each: {ledger_file}"]
    ledger = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in _closing_block(mapped))
    return ImportResult(
        toml=render(mapped, header, closing=pointer), notes=mapped.notes, errors=(), ledger=ledger + "\n"
    )


def _header(base_name: str, model_name: str | None, overrides: Sequence[str], command: str | None) -> list[str]:
    chain = " <- ".join([base_name, *([model_name] if model_name else []), *(["command line"] if overrides else [])])
    lines = ["# Imported from MaxText by `bridgec import maxtext`; the comments say where each value came from."]
    if command:
        lines.append(f"#   {command}")
    lines.append(f"# MaxText merge order: {chain}" + (f" ({', '.join(overrides)})" if overrides else ""))
    lines.append("# Each mapped value names its MaxText key; every other key is listed with what was done about it.")
    return lines


def render(mapped: MappedConfig, header: list[str], closing: list[str] | None = None) -> str:
    """The spec: header, notes, the tables, then ``closing`` (default: the comment block of unmapped keys)."""
    lines = list(header)
    if mapped.notes:
        lines += ["#", "# NEEDS YOUR ACTION:", *comment_bullets(mapped.notes)]
    for table, entries in mapped.tables.items():
        lines += ["", f"[{table}]"]
        for key, value, comment in entries:
            text = f"{key} = {toml_value(value)}"
            lines.append(f"{text}  # {comment}" if comment else text)
    lines += ["", *(_closing_block(mapped) if closing is None else closing)]
    return "\n".join(lines) + "\n"


def _closing_block(mapped: MappedConfig) -> list[str]:
    unmapped = [key for key in mapped.config if key not in mapped.used]
    chosen, neutral, unreviewed = [], [], []
    ignored: dict[str, list[str]] = {}
    for key in unmapped:
        reason = mapped.inactive.get(key) or ("gate" if key in GATES else ignored_reason(key))
        if reason is None:
            unreviewed.append(key)
            continue
        if reason == "gate":
            neutral.append(key)
            continue
        if mapped.origin.get(key) in ("model", "cli"):
            chosen.append(f"{key} = {show(mapped.config[key])} ({mapped.names[mapped.origin[key]]}): ignored, {reason}")
        else:
            ignored.setdefault(reason, []).append(key)
    for key in sorted(k for k in mapped.inactive if k in mapped.used):
        if mapped.origin.get(key) in ("model", "cli"):
            chosen.append(
                f"{key} = {show(mapped.config[key])} ({mapped.names[mapped.origin[key]]}): ignored, "
                f"{mapped.inactive[key]}"
            )
        else:
            ignored.setdefault(mapped.inactive[key], []).append(key)
    said = " ".join(
        [comment for entries in mapped.tables.values() for _, _, comment in entries]
        + [*mapped.notes, *mapped.caveats, *chosen]
    )
    implied = [
        f"{key} = {show(mapped.config[key])}"
        for key in sorted(mapped.used)
        if key in mapped.config and key not in mapped.inactive and not re.search(rf"\b{re.escape(key)}\b", said)
    ]
    rule = "# " + "-" * 98
    lines = [rule, "# MaxText keys with no counterpart in this spec, and what was done about each.", rule]
    if mapped.caveats:
        lines += ["# Mapped, with a caveat:", *comment_bullets(mapped.caveats)]
    if chosen:
        lines += ["# Set in the model file or on the command line, no effect here:", *comment_bullets(sorted(chosen))]
    if implied:
        lines += ["# Read, and nothing to set for them (the spec's defaults or implied by the values above):"]
        lines += [f"#   {line}" for line in wrap_words(", ".join(implied), 96, "")]
    if unreviewed:
        lines += ["# NOT REVIEWED by this bridgec (a newer MaxText?): check that these change nothing:"]
        lines += [f"#   - {key} = {show(mapped.config[key])}" for key in sorted(unreviewed)]
    if neutral:
        lines += [f"# Checked, at values that change nothing ({len(neutral)}):"]
        lines += [f"#   {line}" for line in wrap_words(", ".join(sorted(neutral)), 96, "")]
    for reason in sorted(ignored):
        keys = sorted(ignored[reason])
        lines += [f"# Ignored, {reason} ({len(keys)}):"]
        lines += [f"#   {line}" for line in wrap_words(", ".join(keys), 96, "")]
    return lines
