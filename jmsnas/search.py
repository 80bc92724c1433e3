"""``jmsnas search``: the joint search of an architecture and its split points (NSGA-II)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from ._args import HelpFormatter, positive_int

if TYPE_CHECKING:
    from search.config import SearchConfig
    from search.nsga import SearchResult
    from search.progress import SearchProgress
    from sim import Scenario

__all__ = ["CONFIG_DEFAULTS", "CONFIG_FLAGS", "add_parser", "default_workers", "format_front",
           "front_json", "run"]

CONFIG_DEFAULTS: dict[str, Any] = {
    "dataset": "auto", "space": "tiny", "population": 12, "generations": 4,
    "objective": "pareto", "lam": 1.0, "epochs": 2, "subset": 10000,
    "executor": "local", "device": "cpu", "seed": 0, "policy_states": 1,
}
"""The defaults of :class:`search.config.SearchConfig` that ``--help`` shows, written out so
that the help does not import the search (a test checks that they agree)."""

CONFIG_FLAGS: dict[str, str] = {
    "dataset": "dataset", "space": "space", "architecture": "architecture",
    "population": "population", "generations": "generations", "objective": "objective",
    "lam": "lam", "epochs": "budget.epochs", "subset": "budget.subset", "workers": "workers",
    "executor": "executor", "scheduler": "scheduler", "device": "device", "seed": "seed",
    "policy_states": "policy_states",
}
"""Options that set a search setting: argparse's name -> the setting (dotted in ``budget``)."""


def _file_sets(path: str | None, key: str) -> bool:
    """Whether the --config file at ``path`` gives ``key``."""
    if path is None:
        return False
    from sim.scenario import load_yaml

    data = load_yaml(Path(path).read_text(encoding="utf-8"))
    return isinstance(data, dict) and key in data


def default_workers() -> int:
    """The command's default training processes on the CPU with the local executor: the CPU
    cores this process may use, at most 4 (proxy training runs on one torch thread per
    process, so a pool is how a search uses the cores; the accuracies are the same with any
    number). Elsewhere (a GPU, Dask, serial) the default stays 1."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, cores or 1))


def _default(dest: str) -> str:
    return f"(default: {CONFIG_DEFAULTS[dest]}, or the --config file's)"


def add_parser(commands: Any) -> None:
    """Register the command on the sub-parsers ``commands``."""
    p = commands.add_parser(
        "search", formatter_class=HelpFormatter,
        help="jointly search an architecture and its split points (NSGA-II)",
        description="Search architectures and split points for a scenario. Writes config.yaml, "
        "front.csv, evaluations.csv, history.csv, front.png, hypervolume.png and a checkpoint "
        "into the run folder, and one progress line per generation on stderr. Options given "
        "override the --config file, which overrides the defaults. The default run folder is "
        "runs/search-STEM-seedS (STEM: the scenario file's name without .yaml); when it holds "
        "a finished or another search, the run goes to the first free runs/search-STEM-seedS-2, "
        "-3, ...; an unfinished run of the same search is continued.",
    )
    p.add_argument("scenario", metavar="SCENARIO", nargs="?",
                   help="a scenario file or the name of a shipped one (with --resume: optional, "
                   "the run's own)")
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
    p.add_argument("--policy-states", type=positive_int, metavar="K",
                   help="search a run-time split policy: each of up to K states of the uplink's "
                   f"rate gets its own split; 1: one static split {_default('policy_states')}")
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
    p.add_argument("--workers", type=positive_int,
                   help="proxy-training processes, each on one torch thread (default: on the CPU "
                   "with --executor local, the CPU cores, at most 4, else 1; or the --config "
                   "file's; the results do not depend on it)")
    p.add_argument("--executor", choices=["serial", "local", "dask"],
                   help=f"where proxy training runs; local: a process pool {_default('executor')}")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="Dask scheduler address for --executor dask, e.g. tcp://10.0.0.5:8786 "
                   "(default: none)")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], help=_default("device"))
    p.add_argument("--seed", type=int, help=f"seed of the genetic algorithm {_default('seed')}")
    p.add_argument("--out", metavar="DIR",
                   help="run folder; one that holds a finished or another search is refused "
                   "(default: runs/search-STEM-seedS, or the next free -2, -3, ...)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the search in the run folder (its accuracy cache is kept)")
    p.add_argument("--resume", metavar="DIR",
                   help="continue the search checkpointed in DIR, with the scenario and "
                   "configuration of its config.yaml; options given again must agree with "
                   "them, except --workers, --executor, --scheduler and --data-dir (default: "
                   "none)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress lines or notes on stderr (warnings and errors remain)")
    p.add_argument("--json", action="store_true",
                   help="progress, notes and warnings as one JSON object a line on stderr "
                   "(fields: see search.progress), the result as one JSON object on stdout")
    p.set_defaults(func=run)


class _Say:
    """Notes and warnings on stderr: plain lines, or JSON objects with ``--json``; notes and
    progress silenced by ``--quiet``."""

    def __init__(self, as_json: bool, quiet: bool) -> None:
        self.as_json, self.quiet = as_json, quiet

    def _write(self, event: str, text: str) -> None:
        if self.as_json:
            print(json.dumps({"event": event, "message": text}), file=sys.stderr, flush=True)
        else:
            lead = "warning: " if event == "warning" else ""
            print(f"jmsnas search: {lead}{text}", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        if not self.quiet:
            self._write("note", text)

    def warning(self, text: str) -> None:
        self._write("warning", text)

    def progress(self) -> bool | Callable[[SearchProgress], None]:
        """What :func:`search.nsga.run_search` takes: nothing, a bar on a terminal, or a
        function that writes one line (or JSON object) per generation."""
        if self.quiet:
            return False
        if self.as_json:
            return lambda p: print(json.dumps(p.to_dict()), file=sys.stderr, flush=True)
        if sys.stderr.isatty():
            return True
        return lambda p: print(f"jmsnas search: {p.line()}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Run (or resume) the search, write the run folder, print the front."""
    from search.nsga import run_search
    from search.outputs import chance_warning, write_run

    say = _Say(args.json, args.quiet)
    plan = (_resumed if args.resume is not None else _fresh)(args, say)
    out = plan.out
    with plan.lock:  # held until the run folder is written
        result = run_search(plan.scenario, plan.config, out, resume=plan.resume,
                            progress=say.progress())
        write_run(out, result, str(plan.scenario_path), plan.data_dir)
    warning = chance_warning(result)
    if warning:
        say.warning(warning)
    if args.json:
        print(json.dumps(front_json(result, out, [warning] if warning else [])))
    else:
        print(format_front(result, result.config.dataset, out))
    return 0


class _Plan(NamedTuple):
    """What a run starts from."""

    scenario: Scenario
    scenario_path: Path
    config: SearchConfig
    out: Path
    resume: bool
    data_dir: str | None
    lock: IO[str]
    """The run folder's lock (:func:`search.runs.lock_run_folder`), held while the run lasts."""


def _changes(args: argparse.Namespace) -> dict[str, Any]:
    return {flag: getattr(args, flag) for flag in CONFIG_FLAGS if getattr(args, flag) is not None}


def _use_data_dir(data_dir: str | None) -> None:
    if data_dir is not None:  # first in the lookup; worker processes inherit it
        os.environ["JMSNAS_DATA"] = data_dir


def _fresh(args: argparse.Namespace, say: _Say) -> _Plan:
    """A new run: its folder by the rule of :mod:`search.runs` (or an unfinished run of the
    same search, continued)."""
    from experiments.shipped import resolve_scenario_path
    from search.config import SearchConfig, load_search_config, resolve_config_dataset
    from search.nsga import fingerprint
    from search.runs import (
        choose_run_folder,
        clear_run,
        default_run_folder,
        folder_state,
        lock_run_folder,
        write_run_config,
    )
    from sim import load_scenario

    if args.scenario is None:
        raise ValueError("give a SCENARIO (a scenario file or a shipped name), or --resume DIR "
                         "to continue a run")
    scenario_path = resolve_scenario_path(args.scenario)
    scenario = load_scenario(scenario_path)
    _use_data_dir(args.data_dir)
    base = load_search_config(args.config) if args.config else SearchConfig()
    config = base.with_changes(**_changes(args))
    if (args.workers is None and config.device == "cpu" and config.executor == "local"
            and not _file_sets(args.config, "workers")):  # the library's default is one
        config = config.with_changes(workers=default_workers())
    config, reason = resolve_config_dataset(config)
    say.note(reason)
    named = args.out is not None
    target = Path(args.out) if named else default_run_folder(scenario_path, config.seed)
    if args.overwrite:
        lock = lock_run_folder(target)  # never clear a folder a running search writes
        if (target / "checkpoint.pkl").exists():
            say.note(f"replacing the search in {target} (--overwrite; its accuracy cache is "
                     "kept)")
        clear_run(target)
        out, state = target, "free"
    else:
        out, state, lock = choose_run_folder(target, fingerprint(scenario, config),
                                             named=named)
    if out != target:
        busy = folder_state(target, fingerprint(scenario, config)) in ("free", "unfinished")
        say.note(f"{target} is in use by a running search; this run goes to {out}" if busy else
                 f"{target} holds an earlier search; this run goes to {out} (--overwrite "
                 "replaces the earlier one instead)")
        _copy_cache(target, out)
    resume = state == "unfinished"
    if resume:
        say.note(f"continuing the unfinished run of this search in {out} (--overwrite starts "
                 "it afresh)")
    else:
        out.mkdir(parents=True, exist_ok=True)
        # Written first so that even a killed run's folder says what it was (--resume reads
        # it); write_run writes it again at the end.
        write_run_config(out, config, scenario_path, args.data_dir)
    return _Plan(scenario, scenario_path, config, out, resume, args.data_dir, lock)


def _copy_cache(source: Path, folder: Path) -> None:
    """Start ``folder``'s accuracy cache as a copy of ``source``'s (a rerun then trains nothing
    twice; the cache is keyed by everything an accuracy depends on, so a copy is never stale)."""
    import shutil
    import sqlite3
    from contextlib import closing

    if (source / "accuracy.sqlite").exists() and not (folder / "accuracy.sqlite").exists():
        folder.mkdir(parents=True, exist_ok=True)
        # SQLite's own backup: a consistent copy even while a run in source writes to it
        with closing(sqlite3.connect(source / "accuracy.sqlite")) as src, \
                closing(sqlite3.connect(folder / "accuracy.sqlite")) as dst:
            src.backup(dst)
        if (source / "accuracy.weights").is_dir():  # written by rename: skip the temporaries
            shutil.copytree(source / "accuracy.weights", folder / "accuracy.weights",
                            ignore=shutil.ignore_patterns(".tmp-*"), dirs_exist_ok=True)


def _resumed(args: argparse.Namespace, say: _Say) -> _Plan:
    """``--resume DIR``: the scenario and configuration saved in DIR; options given again must
    agree with them (those of :data:`search.nsga.UNFINGERPRINTED` may change)."""
    from experiments.shipped import resolve_scenario_path
    from search.config import load_search_config, resolve_config_dataset
    from search.nsga import UNFINGERPRINTED
    from search.runs import config_differences, lock_run_folder, read_run_config
    from sim import load_scenario

    folder = Path(args.resume)
    if args.overwrite:
        raise ValueError("--overwrite replaces a run and --resume continues one: give one of "
                         "them")
    if args.out is not None and Path(args.out).resolve() != folder.resolve():
        raise ValueError(f"--out {args.out} and --resume {folder} name different folders: a "
                         "resumed run stays in its folder")
    if not folder.is_dir():
        raise ValueError(f"cannot resume from {folder}: no such folder")
    lock = lock_run_folder(folder)  # before reading: a run ending there rewrites config.yaml
    saved = read_run_config(folder)
    if args.scenario is not None:
        scenario_path = resolve_scenario_path(args.scenario)
        scenario = load_scenario(scenario_path)
        if saved.scenario is not None and saved.scenario.exists():
            if load_scenario(saved.scenario) != scenario:
                raise ValueError(f"scenario {args.scenario} differs from the run's "
                                 f"{saved.scenario} ({folder}/config.yaml): leave SCENARIO out "
                                 "to resume the run")
    elif saved.scenario is None:
        raise ValueError(f"{folder}/config.yaml does not record the scenario (a run of an older "
                         f"version): give it, jmsnas search SCENARIO --resume {folder}")
    elif not saved.scenario.exists():
        raise ValueError(f"the run's scenario file {saved.scenario} is gone: give the scenario, "
                         f"jmsnas search SCENARIO --resume {folder}")
    else:
        scenario_path = saved.scenario
        scenario = load_scenario(scenario_path)
    data_dir = args.data_dir if args.data_dir is not None else saved.data_dir
    _use_data_dir(data_dir)
    changes = _changes(args)
    given = (load_search_config(args.config, base=saved.config) if args.config
             else saved.config).with_changes(**changes)  # what the file leaves out: the run's
    differ = config_differences(saved.config, given, ignore=UNFINGERPRINTED)
    if differ:
        flags = {setting: f"--{flag}" for flag, setting in CONFIG_FLAGS.items()
                 if flag in changes}
        shown = ", ".join(f"{flags.get(name, f'{name} in --config {args.config}')} {new} "
                          f"(the run's: {old})" for name, old, new in differ)
        raise ValueError(f"--resume {folder}: {shown} differ from the run's {folder}/config.yaml;"
                         " leave them out to resume the run as it was, or start a new run")
    config = saved.config.with_changes(**{k: getattr(given, k) for k in UNFINGERPRINTED})
    config, reason = resolve_config_dataset(config)
    say.note(reason)
    return _Plan(scenario, scenario_path, config, folder, True, data_dir, lock)


FRONT_HEAD = ("proxy", "test", "mean ms", "p95 ms", "device J", "architecture", "design")
"""The columns of the printed front."""


def format_front(result: SearchResult, dataset: str, out: Path) -> str:
    """The printed front: each design's architecture and placement, its proxy accuracy with
    the proxy's noise, and re-measured latencies with their 95% confidence intervals."""
    from search.outputs import front_rows

    rows = front_rows(result)
    unstable = sum(e.status == "unstable" for e in result.evaluations.values())
    lines = [f"{len(result.evaluations)} designs evaluated ({unstable} unstable), {len(rows)} on "
             f"the front, hypervolume {result.hypervolume():.4f}; results in {out}/"]
    sd = rows[0]["accuracy_sd"] if rows else math.nan
    if math.isfinite(sd):
        lines.append(f"  proxy accuracy on {dataset}, +/- {sd:.3f} (one training's seed-to-seed "
                     "standard deviation)")
    reps = max((r["replications"] for r in rows), default=0)
    if reps:
        lines.append(f"  latencies re-measured on {reps} fresh replications (mean and p95, "
                     "+/- the 95% CI half-width); the search's own in evaluations.csv")
    cells = []
    for r in rows:
        acc = f"{r['accuracy']:.3f}" + (f" +/- {sd:.3f}" if math.isfinite(sd) else "")
        mean = f"{1e3 * r['mean_latency_s']:.2f}"
        p95 = f"{1e3 * r['p95_latency_s']:.2f}"
        if r["replications"]:
            mean += f" +/- {1e3 * r['mean_latency_ci95_s']:.2f}"
            p95 += f" +/- {1e3 * r['p95_latency_ci95_s']:.2f}"
        test = f"{r['test_accuracy']:.3f}" if math.isfinite(r["test_accuracy"]) else ""
        cells.append((acc, test, mean, p95, f"{r['energy_j']:.4f}", r["arch"], r["design"]))
    head = FRONT_HEAD
    width = [max(len(c[i]) for c in [head, *cells]) for i in range(len(head))]
    for c in [head, *cells]:
        lines.append("  " + "  ".join([*(c[i].rjust(width[i]) for i in range(5)),
                                       c[5].ljust(width[5]), c[6]]).rstrip())
    return "\n".join(lines)


def front_json(result: SearchResult, out: Path, warnings: list[str]) -> dict[str, Any]:
    """The result for ``--json``: the run's totals and the front's rows (the columns of
    ``front.csv`` and ``hosts``, the nodes that run blocks), NaN as ``null``."""
    from search.design import hosts
    from search.outputs import front_rows

    def plain(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value.item() if hasattr(value, "item") else value  # numpy scalars

    rows = front_rows(result)
    return {
        "out": str(out), "dataset": result.config.dataset,
        "evaluated": len(result.evaluations),
        "unstable": sum(e.status == "unstable" for e in result.evaluations.values()),
        "hypervolume": plain(result.hypervolume()),
        "accuracy_sd": plain(rows[0]["accuracy_sd"]) if rows else None,
        "front": [{**{k: plain(v) for k, v in r.items()}, "hosts": list(hosts(r["design"]))}
                  for r in rows],
        "warnings": warnings,
    }
