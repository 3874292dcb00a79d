"""``bridgec plot``: the curves of one or more metrics files, overlaid, as a PNG or a self-contained HTML page.

Reads the JSON-lines files a run writes (``<spec>.metrics.jsonl``): training
loss (validation loss as points), learning rate, gradient norm and tokens per
second against the step, one colour per run. matplotlib is the optional
``bridgec[plot]`` extra; it is imported only here.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:  # matplotlib is optional: imported only when a report is drawn
    from matplotlib.figure import Figure

PANELS = (
    ("loss", "loss"),
    ("lr", "learning rate"),
    ("grad_norm", "grad norm"),
    ("tokens_per_second", "tokens/s"),
)
"""The metrics file's key and the panel title, in reading order (a 2 x 2 grid)."""


class PlotError(Exception):
    """Bad input: the message names the file (and line) and what is wrong."""


@attrs.frozen(kw_only=True)
class Curves:
    """One run's training and validation records."""

    label: str
    path: Path
    train: tuple[dict[str, Any], ...]
    valid: tuple[dict[str, Any], ...]


def label_of(path: Path) -> str:
    """``out/quickstart/spec.metrics.jsonl`` -> ``quickstart/spec``: the output folder and the spec's name."""
    stem = path.name.removesuffix(".jsonl").removesuffix(".metrics")
    return f"{path.parent.name}/{stem}" if path.parent.name else stem


def read_curves(path: Path, label: str) -> Curves:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PlotError(f"cannot read {path}: {getattr(error, 'strerror', None) or error}") from None
    train: list[dict[str, Any]] = []
    valid: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise PlotError(f"{path}:{number}: not a JSON record ({error})") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise PlotError(f"{path}:{number}: not a metrics record (a JSON object with an integer step)")
        if record.get("kind") == "train":
            train.append(record)
        elif record.get("kind") == "valid":
            valid.append(record)
    if not train:
        raise PlotError(f"{path}: no training records (kind = train): is it a bridgec metrics file?")
    return Curves(label=label, path=path, train=tuple(train), valid=tuple(valid))


def _value(record: dict[str, Any], key: str) -> float:
    value = record.get(key)
    try:
        return float(value)  # "nan"/"inf" strings are how the file writes them
    except (TypeError, ValueError):
        return math.nan


def _figure(runs: Sequence[Curves]) -> Figure:
    try:
        import matplotlib
    except ImportError:
        raise PlotError("bridgec plot needs matplotlib: pip install 'bridgec[plot]'") from None
    matplotlib.use("Agg")  # files only, no display
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 7.5), layout="constrained")
    axes = figure.subplots(2, 2)
    for axis, (key, title) in zip(axes.flat, PANELS):
        for index, run in enumerate(runs):
            colour = f"C{index}"
            steps = [int(r["step"]) for r in run.train]
            axis.plot(steps, [_value(r, key) for r in run.train], color=colour, label=run.label, linewidth=1.2)
            if key == "loss" and run.valid:
                axis.plot(
                    [int(r["step"]) for r in run.valid],
                    [_value(r, "loss") for r in run.valid],
                    "o--",
                    color=colour,
                    markersize=4,
                    linewidth=0.8,
                    label=f"{run.label} (validation)",
                )
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    axes.flat[0].legend(fontsize="small")
    return figure


def write_report(runs: Sequence[Curves], output: Path) -> None:
    """Write the figure as ``output`` (.png, or .html with the runs listed and the figure inline), atomically."""
    suffix = output.suffix.lower()
    if suffix not in (".png", ".html"):
        raise PlotError(f"{output}: the report must end in .png or .html")
    figure = _figure(runs)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png" if suffix == ".png" else "svg")
    if suffix == ".png":
        data = buffer.getvalue()
    else:
        data = _html(runs, buffer.getvalue().decode("utf-8")).encode("utf-8")
    temporary = output.with_name(output.name + ".tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, output)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise PlotError(f"cannot write {output}: {error.strerror or error}") from None


def _html(runs: Sequence[Curves], svg: str) -> str:
    items = "\n".join(
        f"<li><b>{html.escape(run.label)}</b>: {html.escape(str(run.path))}, {len(run.train)} steps "
        f"(last loss {_value(run.train[-1], 'loss'):.6g})</li>"
        for run in runs
    )
    svg = svg[svg.index("<svg") :]  # drop the XML prologue: the figure sits inside the page
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>bridgec runs</title></head><body>\n"
        f"<h1>bridgec runs</h1>\n<ul>\n{items}\n</ul>\n{svg}\n</body></html>\n"
    )
