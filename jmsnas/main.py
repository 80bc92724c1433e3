"""The ``jmsnas`` command: its parser and its entry point.

Errors a user can fix (a bad scenario, a bad argument) print one line on stderr and exit with
status 2, without a traceback; a deployment that failed exits with 1 (see :mod:`jmsnas.deploy`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from . import deploy, experiment, node, profile, search, simulate
from ._args import HelpFormatter

__all__ = ["COMMANDS", "build_parser", "cli", "main", "version"]

COMMANDS = (simulate, profile, search, deploy, node, experiment)
"""The command modules, in the order of ``jmsnas --help``."""


def version() -> str:
    """The installed package's version ("unknown" when run from a tree not installed)."""
    from importlib import metadata

    try:
        return metadata.version("jmsnas")
    except metadata.PackageNotFoundError:
        return "unknown"


class _Version(argparse.Action):
    """``--version``, looked up only when asked for (the package metadata is slow to read)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        print(f"{parser.prog} {version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The ``jmsnas`` parser with one sub-command per module of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="jmsnas", formatter_class=HelpFormatter,
        description="Joint model split and architecture search over mobile edge networks.",
    )
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jmsnas`` command: the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, OSError) as exc:  # sim.ScenarioError and pydantic's errors included
        print(f"jmsnas: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jmsnas: interrupted", file=sys.stderr)
        return 130


def _terminated(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def cli() -> int:
    """The console entry point: :func:`main`, with SIGTERM (``kill``, a job scheduler's stop)
    turned into an orderly exit, so that the run stops its training workers and releases its
    folder as on Ctrl-C, instead of dying and leaving the workers running."""
    import signal
    import warnings

    from sim.scenario import ScenarioDeprecation

    default = warnings.showwarning

    def one_line(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, ScenarioDeprecation):  # the user's file, not our source line
            print(f"jmsnas: warning: {message}", file=sys.stderr)
        else:
            default(message, category, *args, **kwargs)

    warnings.showwarning = one_line
    signal.signal(signal.SIGTERM, _terminated)
    return main()
