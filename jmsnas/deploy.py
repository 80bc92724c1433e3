"""``jmsnas deploy``: a split design run for real, one process per node, over paced loopback."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from ._args import HelpFormatter, non_negative_int, positive_int

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    """Register the command on the sub-parsers ``commands``."""
    p = commands.add_parser(
        "deploy", formatter_class=HelpFormatter,
        help="run a split design or policy for real: one process per node, paced loopback "
        "TCP links",
        description="Deploy a design over loopback sockets and measure it: each node of the "
        "route runs its segment in its own process, links are paced to the scenario's channel "
        "(same sample path as `simulate --seed`), requests follow the scenario's arrivals. "
        "Writes requests.csv, summary.json and design.json into --out.",
    )
    p.add_argument("scenario", metavar="SCENARIO")
    p.add_argument("--design", required=True, metavar="DESIGN",
                   help="a search's front.csv (see --row), a design JSON file, or an "
                   "architecture (reference model, SPACE:G,..., name, JSON) with --splits "
                   "(required)")
    p.add_argument("--row", type=int, default=0, help="row of front.csv, 0 = first")
    p.add_argument("--splits", metavar="P1,P2,...",
                   help="block positions of the cuts along the scenario's path, for an "
                   "architecture given as --design (default: none); a split policy gives one "
                   "list per channel state, worst first, separated by | (e.g. '8|4')")
    p.add_argument("--policy-states", type=positive_int, metavar="K",
                   help="a split policy's states are the uplink's rate cut into K (default: "
                   "the search's policy_states for a front.csv row, else the design's states)")
    p.add_argument("--observe-delay", type=float, metavar="S",
                   help="a split policy reads the uplink's rate S seconds before each request "
                   "arrives (default: the search's policy_observe_delay_s, else 0)")
    p.add_argument("--tasks", type=positive_int,
                   help="requests, the warm-up included (default: the scenario's)")
    p.add_argument("--warmup", type=non_negative_int,
                   help="requests not measured (default: the scenario's)")
    p.add_argument("--classes", type=positive_int, default=10,
                   help="classes of the output layer")
    p.add_argument("--shaper", choices=["pace", "tc"], default="pace",
                   help="pace: token-bucket senders in the nodes; tc: network namespaces and tbf "
                   "qdiscs, set up and removed by the command (root only)")
    p.add_argument("--hosts", metavar="HOSTS.yaml",
                   help="run each node on a node server (`jmsnas node`) instead of a local "
                   "process: a YAML mapping of node name to HOST:PORT (needs --token-file; "
                   "default: every node a local process)")
    p.add_argument("--token-file", metavar="FILE",
                   help="the secret shared with the node servers of --hosts (default: none; a "
                   "local run makes its own)")
    p.add_argument("--seed", type=int, default=0, help="arrivals, channel path and weights")
    p.add_argument("--out", metavar="DIR", help="output folder (default: runs/deploy-NAME-seedS)")
    p.add_argument("--predict", action="store_true",
                   help="also calibrate the simulator to this machine before the run and print "
                   "its prediction beside the measurement (writes prediction.json)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Deploy and measure; a deployment that fails prints one line and exits with 1."""
    from deploy import DeployError

    try:
        return _deploy(args)
    except DeployError as exc:  # the message names the node
        print(f"jmsnas: error: {exc}", file=sys.stderr)
        return 1


def _deploy(args: argparse.Namespace) -> int:
    from deploy import deploy, load_routing
    from deploy.calibrate import (
        Calibration,
        PolicyCalibration,
        calibrate,
        calibrate_policy,
        predict,
        stage_means,
    )
    from deploy.run import check_deployable

    from ._args import load_scenario_with

    if args.observe_delay is not None and not args.observe_delay >= 0:
        raise ValueError(f"--observe-delay must be >= 0, got {args.observe_delay}")
    hosts = secret = None
    if args.hosts is not None:
        from deploy.auth import read_token
        from deploy.remote import load_hosts

        if args.token_file is None:
            raise ValueError("--hosts needs --token-file (the node servers' shared secret)")
        if args.predict:
            raise ValueError("--predict calibrates the simulator on this machine; it does "
                             "not describe the hosts of --hosts")
        hosts, secret = load_hosts(args.hosts), read_token(args.token_file)
    elif args.token_file is not None:
        raise ValueError("--token-file is for --hosts (a local run makes its own secret)")
    scenario, _ = load_scenario_with(args.scenario, warmup=args.warmup, tasks=args.tasks)
    routing = load_routing(args.design, scenario, row=args.row, splits=args.splits,
                           policy_states=args.policy_states, observe_delay_s=args.observe_delay)
    out = Path(args.out or f"runs/deploy-{scenario.name}-seed{args.seed}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "prediction.json").unlink(missing_ok=True)
    check_deployable(scenario, routing, args.shaper)  # before the calibration's minute
    (out / "design.json").write_text(routing.to_json() + "\n", encoding="utf-8")
    # calibrated before the run, in isolation from it
    cal: Calibration | PolicyCalibration | None = None
    if args.predict:
        cal = calibrate(scenario, routing.designs[0], seed=args.seed, num_classes=args.classes) \
            if routing.count == 1 else \
            calibrate_policy(scenario, routing, seed=args.seed, num_classes=args.classes)
    result = deploy(scenario, routing, out, tasks=args.tasks, seed=args.seed,
                    num_classes=args.classes, shaper=args.shaper,
                    progress=not args.json and sys.stderr.isatty(), hosts=hosts, secret=secret)
    result.write(out)
    summary = result.summary()
    predicted: dict[str, Any] | None = None
    if cal is not None:
        tasks = args.tasks or scenario.workload.tasks
        report = predict(scenario, routing, cal, tasks=tasks, seed=args.seed)
        predicted = {"calibration": dataclasses.asdict(cal), "stages": stage_means(report)}
        for key in ("mean_latency_s", "p50_latency_s", "p95_latency_s", "p99_latency_s"):
            predicted[key] = getattr(report, key)
            predicted[key.replace("latency_s", "relative_error")] = \
                getattr(report, key) / summary[key] - 1
        tmp = out / "prediction.json.tmp"
        tmp.write_text(json.dumps(predicted, indent=2) + "\n", encoding="utf-8")
        tmp.replace(out / "prediction.json")
    ms = 1e3
    if args.json:
        print(json.dumps(summary if predicted is None else {**summary, "predicted": predicted},
                         indent=2))
        return 0
    where = "over loopback" if hosts is None else f"on {len(summary['clock'])} node servers"
    print(f"deployed {routing.describe()} {where}: {summary['tasks']} measured requests")
    if "clock" in summary:
        print(f"  clocks: every node's times moved onto this machine's, each time within "
              f"{summary['clock_error_bound_s'] * ms:.3f} ms (offsets in summary.json)")
    if routing.count > 1:
        assert routing.link is not None
        cuts = ", ".join(f"{t / 1e6:.3g}" for t in routing.thresholds_bps)
        print(f"  split policy on {routing.link[0]} -> {routing.link[1]}: {routing.count} states "
              f"cut at {cuts} Mbit/s, measured requests per state (worst first) "
              + ", ".join(map(str, summary["state_requests"])))
        print(f"  {summary['state_mismatches']} request(s) took another state than the rate at "
              "their nominal arrival time names")
    print(f"  completion latency  mean {summary['mean_latency_s'] * ms:.2f} ms  (95% CI +/- "
          f"{summary['ci95_half_width_s'] * ms:.2f} ms, batch means)")
    print(f"                      p50 {summary['p50_latency_s'] * ms:.2f}  p95 "
          f"{summary['p95_latency_s'] * ms:.2f}  p99 {summary['p99_latency_s'] * ms:.2f} ms")
    print(f"  {'stage':<28} {'wait ms':>9} {'service ms':>11} {'prop ms':>9}")
    for st in summary["stages"]:
        print(f"  {st['label']:<28} {st['waiting_s'] * ms:>9.3f} {st['service_s'] * ms:>11.3f} "
              f"{st['propagation_s'] * ms:>9.3f}")
    files = "requests.csv, summary.json, design.json"
    if predicted is not None:
        print("  predicted by the calibrated simulator (error against the measurement):")
        print("   " + "  ".join(f"{m} {predicted[f'{m}_latency_s'] * ms:.2f} ms "
                               f"({predicted[f'{m}_relative_error']:+.1%})"
                               for m in ("mean", "p50", "p95")))
        files += ", prediction.json"
    print(f"results in {out}/ ({files})")
    return 0
