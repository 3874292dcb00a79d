"""The ``bridgec plot`` command line: arguments, labels, errors as messages (exit 2)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

PLOT_EXITS = (
    "exit codes: 0 written; 2 a metrics file cannot be read or is malformed, or OUT is not .png/.html; 3 internal error"
)


def cmd_plot(args: argparse.Namespace) -> int:
    from bridgec.compiler.plot import PlotError, label_of, read_curves, write_report

    paths = [Path(p) for p in args.metrics]
    labels = args.label or []
    if len(labels) > len(paths):
        print(f"bridgec: plot: {len(labels)} --label for {len(paths)} metrics file(s)", file=sys.stderr)
        return 2
    labels += [label_of(path) for path in paths[len(labels) :]]
    try:
        runs = [read_curves(path, label) for path, label in zip(paths, labels)]
        write_report(runs, Path(args.output))
    except PlotError as error:
        print(f"bridgec: plot: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: {', '.join(run.label for run in runs)}")
    return 0


def add_plot_parser(commands: Any) -> None:
    plot = commands.add_parser(
        "plot",
        help="loss, learning rate, grad norm and throughput curves of metrics files, overlaid",
        description="Plot the training loss (validation loss as points), learning rate, gradient norm and tokens/s "
        "of one or more <spec>.metrics.jsonl files against the step, one colour per run, into OUT: a PNG, or an "
        "HTML page listing the runs with the figure inline. Needs matplotlib (pip install 'bridgec[plot]').",
        epilog=PLOT_EXITS,
    )
    plot.add_argument("metrics", metavar="METRICS.jsonl", nargs="+", help="metrics files a run wrote")
    plot.add_argument("-o", "--output", metavar="OUT", required=True, help="report.png or report.html")
    plot.add_argument(
        "--label",
        action="append",
        metavar="NAME",
        help="the name of the next run, in order (default: <output folder>/<spec name>)",
    )
    plot.set_defaults(handler=cmd_plot)
