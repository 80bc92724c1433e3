"""``jmsnas experiment``: one experiment of ``experiments/``, or all of them with a report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ._args import HelpFormatter

__all__ = ["add_parser", "run"]

NAMES = ("validate, proxy, tradeoff, pareto, channel, adaptive, load, hops, speedup, convergence, "
         "fidelity")
"""As :data:`experiments.runner.EXPERIMENTS` lists them (a test checks), written out so that the
help does not import the experiments."""


def add_parser(commands: Any) -> None:
    """Register the command on the sub-parsers ``commands``."""
    p = commands.add_parser(
        "experiment", formatter_class=HelpFormatter,
        help=f"run an experiment ({NAMES}) or all of them with a report",
        description="Run an experiment of experiments/configs/NAME.yaml. Writes CSV and PNG files "
        "and the resolved config into OUT/NAME; 'all' also writes OUT/report.md. Rerunning with "
        "the same --out resumes finished searches.",
    )
    p.add_argument("name", metavar="NAME", help=f"{NAMES}, or all")
    p.add_argument("--quick", action="store_true",
                   help="the small size: a few minutes on two cores (default: the full size)")
    p.add_argument("--out", default="runs/experiments", help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the experiment(s), print where the files are."""
    from experiments.runner import EXPERIMENTS, run_all, run_named
    from models.data import resolve_dataset

    if args.name != "all" and args.name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {args.name!r} (allowed: {', '.join(EXPERIMENTS)}, "
                         "all)")
    out = Path(args.out)
    progress = sys.stderr.isatty()
    if args.name not in ("validate", "fidelity"):  # the others train: say on which data
        _, reason = resolve_dataset("auto")
        print(f"jmsnas experiment: {reason}", file=sys.stderr)
    if args.name == "all":
        report = run_all(out, args.quick, progress)
        print(f"all experiments done; report: {report}")
        return 0
    output, seconds = run_named(args.name, out, args.quick, progress)
    print(f"{args.name} done in {seconds:.0f} s: {output.text}")
    print("files: " + ", ".join(str(out / args.name / f)
                                for f in output.figures + output.tables))
    return 0
