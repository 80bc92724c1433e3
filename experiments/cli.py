"""The ``jmsnas`` command line: parse, load, call the library, print.

Errors a user can fix (a bad scenario, a bad argument) print one line on stderr and exit with
status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from deploy import DeployError
from models.profile import ModelProfile, profile_model
from models.resolve import resolve_architecture
from sim import LatencyReport, ScenarioError, load_scenario, simulate
from sim.report import write_timeline_csv

__all__ = ["example_scenarios", "main", "resolve_scenario_path"]


def example_scenarios() -> dict[str, Path]:
    """The scenarios shipped with the package, by name (file name without ``.yaml``)."""
    folder = resources.files("experiments") / "scenarios"
    return {
        p.name.removesuffix(".yaml"): Path(str(p))
        for p in folder.iterdir()
        if p.name.endswith(".yaml")
    }


def resolve_scenario_path(arg: str) -> Path:
    """A scenario file path, or the name of a shipped example (``three-tier``)."""
    path = Path(arg)
    if path.exists():
        return path
    examples = example_scenarios()
    if arg in examples:
        return examples[arg]
    names = ", ".join(sorted(examples))
    raise ScenarioError(f"{arg}: no such file, nor a shipped example scenario ({names})")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _format_report(r: LatencyReport) -> str:
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
        f"  {'stage':<28} {'resource':<24} {'wait ms':>9} {'service ms':>11} {'prop ms':>9}",
    ]
    for s in r.stages:
        lines.append(
            f"  {s.label:<28} {', '.join(s.resources)[:24]:<24} {s.waiting_s * ms:>9.3f} "
            f"{s.service_s * ms:>11.3f} {s.propagation_s * ms:>9.3f}"
        )
    lines += ["", f"  {'resource':<24} {'kind':<6} {'servers':>7} {'offered':>8} {'util':>6} "
              f"{'J/task':>9}"]
    for q in r.resources:
        flag = "  overloaded" if q.offered_utilisation >= 1 else ""
        lines.append(
            f"  {q.name:<24} {q.kind:<6} {q.servers:>7} {q.offered_utilisation:>8.3f} "
            f"{q.utilisation:>6.3f} {q.energy_j_per_task:>9.4f}{flag}"
        )
    lines.append("  (offered: arrival rate x mean work / capacity; util: busy share of the run)")
    return "\n".join(lines)


def overload_warning(r: LatencyReport) -> str | None:
    """One line about the resources offered a utilisation at or over 1, or None."""
    over = r.overloaded
    if not over:
        return None
    worst = ", ".join(f"{q.kind} {q.name} at {q.offered_utilisation:.3g}" for q in over)
    return (f"warning: offered utilisation >= 1 ({worst}): its queue grows without bound, so "
            "these latencies depend on the run's length (--tasks), not only on the pipeline")


def _cmd_simulate(args: argparse.Namespace) -> int:
    scenario = load_scenario(resolve_scenario_path(args.scenario))
    result = simulate(
        scenario,
        seed=args.seed,
        replications=args.replications,
        tasks=args.tasks,
        engine=args.engine,
        keep_timeline=args.timeline is not None,
        progress=not args.json and sys.stderr.isatty(),
    )
    if args.timeline is not None:
        rows = write_timeline_csv(result.records, result.plan, args.timeline)
        print(f"wrote {rows} timeline rows to {args.timeline}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.report.to_dict(), indent=2))
    else:
        print(_format_report(result.report))
    warning = overload_warning(result.report)
    if warning is not None:
        print(warning, file=sys.stderr)
    return 0


def _format_profile(p: ModelProfile, input_bits: int) -> str:
    lines = [
        f"{p.arch}: input {'x'.join(map(str, p.input_shape))}, {p.num_classes} classes, "
        f"{p.total_flops / 1e9:.3f} GFLOPs ({p.total_flops / 2e9:.3f} G multiply-adds), "
        f"{p.total_params / 1e6:.3f} M parameters",
        f"{'split':>5}  {'block':<28} {'output':<14} {'MFLOPs':>10} {'cum %':>6} "
        f"{'params':>10} {'sent at split, bits':>20} {'peak MiB':>9}",
        f"{0:>5}  {'(input)':<28} {'x'.join(map(str, p.input_shape)):<14} {'':>10} {'':>6} "
        f"{'':>10} {p.sent_bits(0, input_bits):>20,} {'':>9}",
    ]
    cum = 0
    for b in p.blocks:
        cum += b.flops
        lines.append(
            f"{b.index + 1:>5}  {b.label[:28]:<28} {'x'.join(map(str, b.out_shape)):<14} "
            f"{b.flops / 1e6:>10.2f} {100 * cum / max(p.total_flops, 1):>6.1f} {b.params:>10,} "
            f"{p.sent_bits(b.index + 1):>20,} {b.peak_memory_bytes / 2**20:>9.2f}"
        )
    return "\n".join(lines)


def _cmd_profile(args: argparse.Namespace) -> int:
    spec = resolve_architecture(args.model)
    p = profile_model(spec, args.input_shape, args.classes)
    if args.json:
        out = {
            "arch": p.arch, "input_shape": list(p.input_shape), "num_classes": p.num_classes,
            "total_flops": p.total_flops, "total_params": p.total_params,
            "architecture": spec.to_dict(),
            "blocks": [
                {"split_after": b.index + 1, "label": b.label, "flops": b.flops,
                 "params": b.params, "out_shape": list(b.out_shape),
                 "sent_bits_float32": p.sent_bits(b.index + 1),
                 "peak_memory_bytes": b.peak_memory_bytes}
                for b in p.blocks
            ],
        }
        print(json.dumps(out, indent=2))
    else:
        print(_format_profile(p, args.input_bits))
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from search.config import SearchConfig, load_search_config, resolve_config_dataset
    from search.nsga import run_search
    from search.outputs import write_run

    scenario_path = resolve_scenario_path(args.scenario)
    scenario = load_scenario(scenario_path)
    if args.data_dir is not None:  # first in the lookup; worker processes inherit it
        os.environ["JMSNAS_DATA"] = args.data_dir
    base = load_search_config(args.config) if args.config else SearchConfig()
    config = base.with_changes(
        dataset=args.dataset, space=args.space, population=args.population,
        generations=args.generations, objective=args.objective, lam=args.lam,
        workers=args.workers, executor=args.executor, seed=args.seed, epochs=args.epochs,
        subset=args.subset, device=args.device, architecture=args.architecture,
        scheduler=args.scheduler,
    )
    if args.resume is not None and config.dataset == "auto":  # the one the run started with
        config = config.with_changes(dataset=_saved_dataset(Path(args.resume)))
    config, reason = resolve_config_dataset(config)
    print(f"jmsnas search: {reason}", file=sys.stderr)
    out = Path(args.resume or args.out or f"runs/search-{scenario.name}-seed{config.seed}")
    if args.resume is None and (out / "checkpoint.pkl").exists():
        raise ValueError(f"{out} already holds a search: pass --resume {out} to continue it, "
                         "or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    if args.resume is None:
        # Written first so that even a killed run's folder says what it was; write_run adds
        # more (a resumed run keeps the file until its checkpoint has matched).
        (out / "config.yaml").write_text(config.to_yaml(), encoding="utf-8")
    result = run_search(scenario, config, out, resume=args.resume is not None,
                        progress=sys.stderr.isatty())
    write_run(out, result, str(scenario_path))
    print(_format_front(result, config.dataset, out))
    return 0


def _format_front(result: Any, dataset: str, out: Path) -> str:
    """The printed front: re-measured latencies with their 95% confidence intervals."""
    from search.outputs import front_rows

    rows = front_rows(result)
    unstable = sum(e.status == "unstable" for e in result.evaluations.values())
    lines = [f"{len(result.evaluations)} designs evaluated ({unstable} unstable), {len(rows)} on "
             f"the front, hypervolume {result.hypervolume():.4f}; results in {out}/"]
    if rows and rows[0]["accuracy_sd"] == rows[0]["accuracy_sd"]:  # not NaN: it was measured
        lines.append(f"  proxy accuracy on {dataset}, +/- {rows[0]['accuracy_sd']:.3f} "
                     "(one training's seed-to-seed standard deviation)")
    reps = max((r["replications"] for r in rows), default=0)
    if reps:
        lines.append(f"  latencies re-measured on {reps} fresh replications (mean and p95, "
                     "+/- the 95% CI half-width); the search's own in evaluations.csv")
    lines.append(f"  {'proxy':>6} {'test':>6} {'mean ms':>16} {'p95 ms':>16} {'device J':>9}  "
                 "design")
    for r in rows:
        mean = f"{1e3 * r['mean_latency_s']:.2f}"
        p95 = f"{1e3 * r['p95_latency_s']:.2f}"
        if r["replications"]:
            mean += f" +/- {1e3 * r['mean_latency_ci95_s']:.2f}"
            p95 += f" +/- {1e3 * r['p95_latency_ci95_s']:.2f}"
        test = "" if r["test_accuracy"] != r["test_accuracy"] else f"{r['test_accuracy']:.3f}"
        lines.append(f"  {r['accuracy']:>6.3f} {test:>6} {mean:>16} {p95:>16} "
                     f"{r['energy_j']:>9.4f}  {r['design']}")
    return "\n".join(lines)


def _saved_dataset(folder: Path) -> str | None:
    """The data set recorded in a run folder's config.yaml (None when there is none)."""
    import yaml

    try:
        saved = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    if isinstance(saved, dict) and isinstance(saved.get("search"), dict):
        saved = saved["search"]  # the layout write_run leaves
    value = saved.get("dataset") if isinstance(saved, dict) else None
    return value if isinstance(value, str) else None


def _cmd_deploy(args: argparse.Namespace) -> int:
    from deploy import deploy, load_design
    from deploy.calibrate import calibrate, predict, stage_means
    from sim.scenario import read_scenario_dict, scenario_from_dict

    path = resolve_scenario_path(args.scenario)
    data = read_scenario_dict(path)
    if args.warmup is not None:
        data.setdefault("workload", {})["warmup_tasks"] = args.warmup
    scenario = scenario_from_dict(data, base_dir=path.parent, where=str(path))
    design = load_design(args.design, scenario, row=args.row, splits=args.splits)
    out = Path(args.out or f"runs/deploy-{scenario.name}-seed{args.seed}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "prediction.json").unlink(missing_ok=True)
    (out / "design.json").write_text(design.to_json() + "\n", encoding="utf-8")
    # calibrated before the run, in isolation from it
    cal = calibrate(scenario, design, seed=args.seed, num_classes=args.classes) \
        if args.predict else None
    result = deploy(scenario, design, out, tasks=args.tasks, seed=args.seed,
                    num_classes=args.classes, shaper=args.shaper,
                    progress=not args.json and sys.stderr.isatty())
    result.write(out)
    summary = result.summary()
    predicted: dict[str, Any] | None = None
    if cal is not None:
        tasks = args.tasks or scenario.workload.tasks
        report = predict(scenario, design, cal, tasks=tasks, seed=args.seed)
        predicted = {"calibration": dataclasses.asdict(cal), "stages": stage_means(report)}
        for key in ("mean_latency_s", "p50_latency_s", "p95_latency_s", "p99_latency_s"):
            predicted[key] = getattr(report, key)
            predicted[key.replace("latency_s", "relative_error")] = \
                getattr(report, key) / summary[key] - 1
        tmp = out / "prediction.json.tmp"
        tmp.write_text(json.dumps(predicted, indent=2) + "\n", encoding="utf-8")
        tmp.replace(out / "prediction.json")
    if args.json:
        print(json.dumps(summary if predicted is None else {**summary, "predicted": predicted},
                         indent=2))
        return 0
    ms = 1e3
    print(f"deployed {design.describe()} over loopback: {summary['tasks']} measured requests")
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


def _cmd_experiment(args: argparse.Namespace) -> int:
    from models.data import resolve_dataset

    from .runner import run_all, run_named

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jmsnas",
        description="Joint model split and architecture search over mobile edge networks.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "simulate",
        help="simulate a scenario's pipeline: completion latency, per stage, with a 95%% CI",
        description="Simulate the pipeline given in a scenario file. SCENARIO is a YAML file or "
        f"the name of a shipped example ({', '.join(sorted(example_scenarios()))}).",
    )
    p.add_argument("scenario", metavar="SCENARIO")
    p.add_argument("--seed", type=int, default=0, help="one seed for the whole run (default 0)")
    p.add_argument("--replications", type=_positive_int, default=1,
                   help="independent replications; the CI is over their means (default 1)")
    p.add_argument("--tasks", type=_positive_int, default=None,
                   help="tasks per source per replication (default: the scenario's)")
    p.add_argument("--engine", choices=["simpy", "fast", "auto"], default="simpy",
                   help="simpy: discrete-event simulation (default); fast: exact recursion, "
                   "for pipelines that use each queue once; auto: fast where it applies")
    p.add_argument("--timeline", metavar="CSV", default=None,
                   help="also write every task's per-stage timeline to this CSV file")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser(
        "profile",
        help="per-block FLOPs, parameters and split sizes of an architecture",
        description="Profile an architecture at an input shape. MODEL_OR_GENOME is a reference "
        "model (alexnet, vgg16, resnet18, resnet50, mobilenet_v2), SPACE:G,G,... (e.g. "
        "tiny:0,1,0,1,0,0,0,0,0), an architecture name such as tiny-010100000, or a JSON file.",
    )
    p.add_argument("model", metavar="MODEL_OR_GENOME")
    p.add_argument("--input-shape", nargs=3, type=_positive_int, metavar=("C", "H", "W"),
                   required=True)
    p.add_argument("--classes", type=_positive_int, default=1000,
                   help="classes of the output layer (default 1000)")
    p.add_argument("--input-bits", type=_positive_int, default=8,
                   help="bits per input element when the raw input is sent (default 8)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=_cmd_profile)

    p = sub.add_parser(
        "search",
        help="jointly search an architecture and its split points (NSGA-II)",
        description="Search architectures and split points for a scenario. Writes config.yaml, "
        "front.csv, evaluations.csv, history.csv, front.png, hypervolume.png and a checkpoint "
        "into --out.",
    )
    p.add_argument("scenario", metavar="SCENARIO")
    p.add_argument("--config", metavar="YAML", help="search configuration file (see README)")
    p.add_argument("--dataset", choices=["auto", "fashion-mnist", "mnist5k", "digits",
                                         "mnist1d", "cifar10"],
                   help="auto (default): Fashion-MNIST if it is on disk or can be downloaded, "
                   "else mnist5k")
    p.add_argument("--data-dir", metavar="DIR",
                   help="folder holding the Fashion-MNIST idx files (looked in instead of "
                   "$JMSNAS_DATA, before ~/.cache/jmsnas and /usr/share/datasets)")
    p.add_argument("--space", choices=["tiny", "mobile"])
    p.add_argument("--architecture", metavar="MODEL_OR_GENOME",
                   help="fix the architecture (a reference model, SPACE:G,G,..., a name such as "
                   "tiny-010100000, or a JSON file) and search only its route and splits")
    p.add_argument("--population", type=_positive_int)
    p.add_argument("--generations", type=_positive_int)
    p.add_argument("--objective", choices=["pareto", "scalarized"])
    p.add_argument("--lam", type=float, help="scalarized: accuracy - lam x latency_s")
    p.add_argument("--epochs", type=_positive_int, help="proxy-training epochs")
    p.add_argument("--subset", type=_positive_int, help="proxy-training images")
    p.add_argument("--workers", type=_positive_int, help="proxy-training processes")
    p.add_argument("--executor", choices=["serial", "local", "dask"],
                   help="where proxy training runs (default local: a process pool)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="Dask scheduler address for --executor dask, e.g. tcp://10.0.0.5:8786")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"])
    p.add_argument("--seed", type=int)
    p.add_argument("--out", metavar="DIR", help="run folder (default runs/search-NAME-seedS)")
    p.add_argument("--resume", metavar="DIR", help="continue the search checkpointed in DIR")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser(
        "deploy",
        help="run a split design for real: one process per node, paced loopback TCP links",
        description="Deploy a design over loopback sockets and measure it: each node of the "
        "route runs its segment in its own process, links are paced to the scenario's channel "
        "(same sample path as `simulate --seed`), requests follow the scenario's arrivals. "
        "Writes requests.csv, summary.json and design.json into --out.",
    )
    p.add_argument("scenario", metavar="SCENARIO")
    p.add_argument("--design", required=True, metavar="DESIGN",
                   help="a search's front.csv (see --row), a design JSON file, or an "
                   "architecture (reference model, SPACE:G,..., name, JSON) with --splits")
    p.add_argument("--row", type=int, default=0, help="row of front.csv, 0 = first (default 0)")
    p.add_argument("--splits", metavar="P1,P2,...",
                   help="block positions of the cuts along the scenario's path, for an "
                   "architecture given as --design")
    p.add_argument("--tasks", type=_positive_int, help="requests (default: the scenario's)")
    p.add_argument("--warmup", type=int, help="requests not measured (default: the scenario's)")
    p.add_argument("--classes", type=_positive_int, default=10,
                   help="classes of the output layer (default 10)")
    p.add_argument("--shaper", choices=["pace", "tc"], default="pace",
                   help="pace: token-bucket senders in the nodes (default); tc: network "
                   "namespaces and tbf qdiscs, set up and removed by the command (root only)")
    p.add_argument("--seed", type=int, default=0,
                   help="arrivals, channel path and weights (default 0)")
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/deploy-NAME-seedS)")
    p.add_argument("--predict", action="store_true",
                   help="also calibrate the simulator to this machine before the run and print "
                   "its prediction beside the measurement (writes prediction.json)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=_cmd_deploy)

    p = sub.add_parser(
        "experiment",
        help="run an experiment (tradeoff, pareto, channel, load, hops, speedup, convergence, "
        "validate, fidelity) or all of them with a report",
        description="Run an experiment of experiments/configs/NAME.yaml. Writes CSV and PNG files "
        "and the resolved config into OUT/NAME; 'all' also writes OUT/report.md. Rerunning with "
        "the same --out resumes finished searches.",
    )
    p.add_argument("name", metavar="NAME", help="validate, tradeoff, pareto, channel, load, hops, "
                   "speedup, convergence, fidelity, or all")
    p.add_argument("--quick", action="store_true",
                   help="the small size: a few minutes on two cores")
    p.add_argument("--out", default="runs/experiments", help="output folder "
                   "(default runs/experiments)")
    p.set_defaults(func=_cmd_experiment)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jmsnas`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ScenarioError, ValueError, OSError) as exc:
        print(f"jmsnas: error: {exc}", file=sys.stderr)
        return 2
    except DeployError as exc:  # a deployment that failed: the message names the node
        print(f"jmsnas: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("jmsnas: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
