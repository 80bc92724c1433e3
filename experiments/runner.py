"""``jmsnas experiment NAME|all``: run experiments and, for ``all``, write one Markdown report."""

from __future__ import annotations

import importlib
import time
from pathlib import Path

from .common import Output, run_experiment

__all__ = ["EXPERIMENTS", "run_all", "run_named"]

EXPERIMENTS = ("validate", "proxy", "tradeoff", "pareto", "channel", "adaptive", "load", "hops",
               "speedup", "convergence", "fidelity")
"""In the order of the report."""


def run_named(name: str, out: Path, quick: bool, progress: bool) -> tuple[Output, float]:
    """One experiment by name, and its wall time in seconds."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r} (allowed: {', '.join(EXPERIMENTS)}, all)")
    module = importlib.import_module(f"experiments.{name}")
    started = time.perf_counter()
    output = run_experiment(name, module.run, out, quick, progress)
    return output, time.perf_counter() - started


def run_all(out: Path, quick: bool, progress: bool) -> Path:
    """Every experiment into ``out``, then ``out/report.md``."""
    parts = []
    total = 0.0
    for name in EXPERIMENTS:
        output, seconds = run_named(name, out, quick, progress)
        total += seconds
        figures = "\n\n".join(f"![{output.title}]({name}/{f})" for f in output.figures)
        tables = ", ".join(f"[{t}]({name}/{t})" for t in output.tables)
        parts.append(f"## {output.title} (`{name}`)\n\n{figures}\n\n{output.text}\n\n"
                     f"Data: {tables}; configuration: [{name}/config.yaml]({name}/config.yaml). "
                     f"Wall time {seconds:.0f} s.\n")
    size = "quick" if quick else "full"
    head = (f"# JMSNAS experiments ({size} size)\n\nMade by `jmsnas experiment all"
            f"{' --quick' if quick else ''} --out {out}` in {total / 60:.1f} minutes. Every figure "
            "has its CSV beside it; every folder holds the resolved configuration.\n")
    report = out / "report.md"
    report.write_text(head + "\n" + "\n".join(parts), encoding="utf-8")
    return report
