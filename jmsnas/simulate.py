"""``jmsnas simulate``: a scenario's pipeline through the simulator, one table or one JSON."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._args import HelpFormatter, non_negative_int, positive_int

if TYPE_CHECKING:
    from sim import LatencyReport

__all__ = ["add_parser", "format_report", "overload_warning", "run"]


def add_parser(commands: Any) -> None:
    """Register the command on the sub-parsers ``commands``."""
    from experiments.shipped import example_scenarios

    p = commands.add_parser(
        "simulate", formatter_class=HelpFormatter,
        help="simulate a scenario's pipeline: completion latency, per stage, with a 95%% CI",
        description="Simulate the pipeline given in a scenario file. SCENARIO is a YAML file or "
        f"the name of a shipped example ({', '.join(sorted(example_scenarios()))}).",
    )
    p.add_argument("scenario", metavar="SCENARIO")
    p.add_argument("--seed", type=int, default=0, help="one seed for the whole run")
    p.add_argument("--replications", type=positive_int, default=1,
                   help="independent replications; the CI is over their means")
    p.add_argument("--tasks", type=positive_int, default=None,
                   help="tasks per source per replication, the warm-up included (default: the "
                   "scenario's workload.tasks)")
    p.add_argument("--warmup", type=non_negative_int, default=None,
                   help="first tasks of each source left out of the statistics (default: the "
                   "scenario's workload.warmup_tasks)")
    p.add_argument("--engine", choices=["simpy", "fast", "auto"], default="simpy",
                   help="simpy: discrete-event simulation; fast: exact recursion, for pipelines "
                   "that use each queue once; auto: fast where it applies")
    p.add_argument("--timeline", metavar="CSV", default=None,
                   help="also write every task's per-stage timeline to this CSV file (default: "
                   "none)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Simulate, print the report, warn on stderr about overloaded resources."""
    from sim import simulate

    from ._args import load_scenario_with

    scenario, _ = load_scenario_with(args.scenario, warmup=args.warmup, tasks=args.tasks)
    result = simulate(
        scenario,
        seed=args.seed,
        replications=args.replications,
        engine=args.engine,
        keep_timeline=args.timeline is not None,
        progress=not args.json and sys.stderr.isatty(),
    )
    if args.timeline is not None:
        from sim.report import write_timeline_csv

        rows = write_timeline_csv(result.records, result.plan, args.timeline)
        print(f"wrote {rows} timeline rows to {args.timeline}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.report.to_dict(), indent=2))
    else:
        print(format_report(result.report))
    warning = overload_warning(result.report)
    if warning is not None:
        print(warning, file=sys.stderr)
    return 0


def format_report(r: LatencyReport) -> str:
    """The printed table: latency with its CI, then per stage, then per resource (ms)."""
    ms = 1e3
    ci = "n/a" if r.ci95_half_width_s != r.ci95_half_width_s else f"{r.ci95_half_width_s * ms:.2f}"
    lines = [
        f"scenario {r.scenario}: {r.tasks} measured tasks, {r.replications} replication(s), "
        f"seed {r.seed}, engine {r.engine}",
        f"  completion latency  mean {r.mean_latency_s * ms:.2f} ms  (95% CI +/- {ci} ms, "
        f"{r.ci_method})",
        f"                      p50 {r.p50_latency_s * ms:.2f}  p95 {r.p95_latency_s * ms:.2f}  "
        f"p99 {r.p99_latency_s * ms:.2f} ms",
        f"  throughput          {r.throughput_hz:.3f} tasks/s",
        f"  energy per task     {r.energy_j_per_task:.4f} J "
        f"(devices {r.device_energy_j_per_task:.4f} J)",
        "",
    ]
    lines += _table(
        [("stage", "<", 28), ("resource", "<", 24), ("wait ms", ">", 9),
         ("service ms", ">", 11), ("prop ms", ">", 9)],
        [[s.label, ", ".join(s.resources), f"{s.waiting_s * ms:.3f}", f"{s.service_s * ms:.3f}",
          f"{s.propagation_s * ms:.3f}"] for s in r.stages],
    )
    lines.append("")
    lines += _table(
        [("resource", "<", 24), ("kind", "<", 6), ("servers", ">", 7), ("offered", ">", 8),
         ("util", ">", 6), ("J/task", ">", 9)],
        [[q.name, q.kind, str(q.servers), f"{q.offered_utilisation:.3f}", f"{q.utilisation:.3f}",
          f"{q.energy_j_per_task:.4f}"] for q in r.resources],
        ["  overloaded" if q.offered_utilisation >= 1 else "" for q in r.resources],
    )
    lines.append("  (offered: arrival rate x mean work / capacity; util: busy share of the run)")
    return "\n".join(lines)


def _table(columns: Sequence[tuple[str, str, int]], rows: Sequence[Sequence[str]],
           notes: Sequence[str] = ()) -> list[str]:
    """A header and one line per row, indented by two spaces, columns one space apart.

    ``columns``: (header, alignment ``<`` or ``>``, minimum width). Every column is as wide as
    its longest entry (the header included), and a left-aligned one keeps at least one more space
    after it, so that no name is ever cut and neighbours never touch; the minimum widths keep the
    tables of short names as they always were. ``notes[i]`` is appended to row i.
    """
    widths = [max([minimum, len(head)] + [len(row[i]) + (align == "<") for row in rows])
              for i, (head, align, minimum) in enumerate(columns)]

    def line(cells: Sequence[str]) -> str:
        return "  " + " ".join(f"{c:{a}{w}}" for c, (_, a, _), w
                               in zip(cells, columns, widths, strict=True)).rstrip()

    return [line([head for head, _, _ in columns])] + [
        line(row) + (notes[i] if notes else "") for i, row in enumerate(rows)]


def overload_warning(r: LatencyReport) -> str | None:
    """One line about the resources offered a utilisation at or over 1, or None."""
    over = r.overloaded
    if not over:
        return None
    worst = ", ".join(f"{q.kind} {q.name} at {q.offered_utilisation:.3g}" for q in over)
    return (f"warning: offered utilisation >= 1 ({worst}): its queue grows without bound, so "
            "these latencies depend on the run's length (--tasks), not only on the pipeline")
