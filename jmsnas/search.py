"""``jmsnas search``: the joint search of an architecture and its split points (NSGA-II)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ._args import HelpFormatter, positive_int

__all__ = ["CONFIG_DEFAULTS", "add_parser", "format_front", "run"]

CONFIG_DEFAULTS: dict[str, Any] = {
    "dataset": "auto", "space": "tiny", "population": 12, "generations": 4,
    "objective": "pareto", "lam": 1.0, "epochs": 2, "subset": 10000, "workers": 1,
    "executor": "local", "device": "cpu", "seed": 0,
}
"""The defaults of :class:`search.config.SearchConfig` that ``--help`` shows, written out so
that the help does not import the search (a test checks that they agree)."""


def _default(dest: str) -> str:
    return f"(default: {CONFIG_DEFAULTS[dest]}, or the --config file's)"


def add_parser(commands: Any) -> None:
    """Register the command on the sub-parsers ``commands``."""
    p = commands.add_parser(
        "search", formatter_class=HelpFormatter,
        help="jointly search an architecture and its split points (NSGA-II)",
        description="Search architectures and split points for a scenario. Writes config.yaml, "
        "front.csv, evaluations.csv, history.csv, front.png, hypervolume.png and a checkpoint "
        "into --out. Options given override the --config file, which overrides the defaults.",
    )
    p.add_argument("scenario", metavar="SCENARIO")
    p.add_argument("--config", metavar="YAML",
                   help="search configuration file (see README; default: none)")
    p.add_argument("--dataset", choices=["auto", "fashion-mnist", "mnist5k", "digits",
                                         "mnist1d", "cifar10"],
                   help="auto: Fashion-MNIST if it is on disk or can be downloaded, else "
                   f"mnist5k {_default('dataset')}")
    p.add_argument("--data-dir", metavar="DIR",
                   help="folder holding the Fashion-MNIST idx files (looked in instead of "
                   "$JMSNAS_DATA, before ~/.cache/jmsnas and /usr/share/datasets; default: "
                   "none)")
    p.add_argument("--space", choices=["tiny", "mobile"], help=f"search space {_default('space')}")
    p.add_argument("--architecture", metavar="MODEL_OR_GENOME",
                   help="fix the architecture (a reference model, SPACE:G,G,..., a name such as "
                   "tiny-010100000, or a JSON file) and search only its route and splits "
                   "(default: none, the architecture is searched)")
    p.add_argument("--population", type=positive_int,
                   help=f"designs per generation, even {_default('population')}")
    p.add_argument("--generations", type=positive_int, help=_default("generations"))
    p.add_argument("--objective", choices=["pareto", "scalarized"], help=_default("objective"))
    p.add_argument("--lam", type=float,
                   help=f"scalarized: accuracy - lam x latency_s {_default('lam')}")
    p.add_argument("--epochs", type=positive_int, help=f"proxy-training epochs "
                   f"{_default('epochs')}")
    p.add_argument("--subset", type=positive_int, help=f"proxy-training images "
                   f"{_default('subset')}")
    p.add_argument("--workers", type=positive_int, help=f"proxy-training processes "
                   f"{_default('workers')}")
    p.add_argument("--executor", choices=["serial", "local", "dask"],
                   help=f"where proxy training runs; local: a process pool {_default('executor')}")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="Dask scheduler address for --executor dask, e.g. tcp://10.0.0.5:8786 "
                   "(default: none)")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], help=_default("device"))
    p.add_argument("--seed", type=int, help=f"seed of the genetic algorithm {_default('seed')}")
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/search-NAME-seedS)")
    p.add_argument("--resume", metavar="DIR",
                   help="continue the search checkpointed in DIR (default: none)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run (or resume) the search, write the run folder, print the front."""
    from experiments.shipped import resolve_scenario_path
    from search.config import SearchConfig, load_search_config, resolve_config_dataset
    from search.nsga import run_search
    from search.outputs import write_run
    from sim import load_scenario

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
    print(format_front(result, config.dataset, out))
    return 0


def format_front(result: Any, dataset: str, out: Path) -> str:
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
