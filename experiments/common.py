"""What every experiment shares: configs, scenario variants, searches that resume, CSV, figures.

An experiment is a module of this package with ``TITLE``, ``run(ctx) -> Output`` and ``main``;
its config is ``experiments/configs/NAME.yaml`` with a ``full`` mapping and a ``quick`` mapping of
changes to it (``--quick``). Every experiment writes into ``OUT/NAME/``: ``config.yaml`` (the
resolved config and the package version), CSV files and a PNG beside each. Searches keep their
checkpoints in the experiment's folder and share one accuracy cache (``OUT/accuracy.sqlite``), so
a killed experiment resumes where it stopped and no architecture is trained twice.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import json
import math
import os
import statistics
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import yaml
from matplotlib.figure import Figure

from search.config import SearchConfig, resolve_config_dataset, validate_config
from search.evaluate import Evaluation, Evaluator
from search.nsga import CHECKPOINT, SearchResult, executor_map, fingerprint, run_search
from search.pipeline import segment_costs
from search.remeasure import Remeasured, remeasure_front
from search.runs import lock_run_folder
from sim import Scenario, ScenarioError, read_scenario_dict, scenario_from_dict
from sim.report import confidence_half_width
from sim.scenario import ScenarioDeprecation, load_yaml

from .shipped import resolve_scenario_path

__all__ = ["SEED_STATS", "Context", "Output", "device_share", "experiment_main", "front_axes",
           "front_of", "latency_label", "load_experiment_config", "median_seed", "over_seeds",
           "remeasure", "scenario_variant", "search", "seed_list", "seed_panel", "variant_dict",
           "write_csv"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def _merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_experiment_config(name: str, quick: bool) -> dict[str, Any]:
    """``configs/NAME.yaml``: its ``full`` mapping, with ``quick`` merged over it if asked."""
    path = CONFIG_DIR / f"{name}.yaml"
    data = load_yaml(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("full"), dict):
        raise ValueError(f"{path}: an experiment config needs a 'full' mapping")
    return _merge(data["full"], data.get("quick") or {}) if quick else data["full"]


def variant_dict(name: str, overrides: Mapping[str, Any] | None = None
                 ) -> tuple[dict[str, Any], Path]:
    """A shipped (or file) scenario's dict with dotted-path values replaced, e.g.
    ``{"nodes.phone.flops_per_s": 1e9, "links.0.channel.distance_m": 200}`` (a value ``None``
    deletes the key), and the folder its relative paths start from. Not validated yet."""
    path = resolve_scenario_path(name)
    data = read_scenario_dict(path)
    for dotted, value in (overrides or {}).items():
        target: Any = data
        parts = dotted.split(".")
        if len(parts) == 3 and parts[0] == "nodes" and parts[2] == "flops":  # the old name
            warnings.warn(f"override {dotted!r}: the key is now flops_per_s (FLOP/s of one "
                          f"server); read as that, rename it", ScenarioDeprecation, stacklevel=2)
            parts[2] = "flops_per_s"
        try:
            for part in parts[:-1]:
                target = target[int(part)] if isinstance(target, list) else target[part]
            if isinstance(target, list):
                index = int(parts[-1])
                if value is None:
                    del target[index]
                else:
                    target[index] = copy.deepcopy(value)
            elif isinstance(target, dict):
                if value is None:
                    target.pop(parts[-1], None)
                else:
                    target[parts[-1]] = copy.deepcopy(value)
            else:
                raise TypeError
        except (KeyError, IndexError, ValueError, TypeError):
            raise ValueError(f"override {dotted!r}: no such place in scenario {name!r}") from None
    return data, path.parent


def scenario_variant(name: str, overrides: Mapping[str, Any] | None = None) -> Scenario:
    """:func:`variant_dict`, validated like a scenario file."""
    data, base_dir = variant_dict(name, overrides)
    return scenario_from_dict(data, base_dir=base_dir, where=f"{name} with {dict(overrides or {})}")


@dataclass
class Output:
    """What an experiment made, for the report."""

    name: str
    title: str
    text: str
    """Markdown: what the figure shows, with the numbers behind it."""
    figures: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)


@dataclass
class Context:
    """Where an experiment writes, at what size, with which shared cache."""

    name: str
    out: Path
    quick: bool
    progress: bool
    config: dict[str, Any]

    @property
    def cache(self) -> str:
        return str(self.out.parent / "accuracy.sqlite")

    def search_config(self, **changes: Any) -> SearchConfig:
        """The experiment's ``search`` mapping as a validated :class:`SearchConfig`, its
        ``dataset: auto`` resolved (once per process: see :func:`models.data.resolve_dataset`)."""
        data = copy.deepcopy(self.config.get("search", {}))
        cfg = validate_config(data, f"{self.name} config: search")
        cfg, _ = resolve_config_dataset(cfg)  # auto: Fashion-MNIST where it can be had
        return cfg.with_changes(**changes) if changes else cfg

    def write_config(self) -> None:
        try:
            version = metadata.version("jmsnas")
        except metadata.PackageNotFoundError:
            version = "unknown"
        record = {"experiment": self.name, "quick": self.quick, "jmsnas_version": version,
                  "command": " ".join(sys.argv), "config": self.config}
        if "search" in self.config:  # the data set its searches train on, resolved
            record["dataset"] = self.search_config().dataset
        (self.out / "config.yaml").write_text(yaml.safe_dump(record, sort_keys=False),
                                              encoding="utf-8")

    def path(self, name: str) -> Path:
        return self.out / name

    def seeds(self) -> list[int]:
        """The config's ``seeds``, checked (see :func:`seed_list`)."""
        return seed_list(self.config.get("seeds"), f"{self.name} config: seeds")


def seed_list(value: Any, where: str) -> list[int]:
    """GA seeds: a non-empty list of distinct non-negative integers, else a ValueError that
    says where and what was given."""
    if (not isinstance(value, list) or not value
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value)
            or len(set(value)) != len(value)):
        raise ValueError(f"{where}: a non-empty list of distinct non-negative integers is "
                         f"needed, got {value!r}")
    return list(value)


SEED_STATS = ["seeds", "hv_mean", "hv_sd", "hv_ci95_lo", "hv_ci95_hi", "hv_min", "hv_max"]
"""Summary columns of a hypervolume over seeds (see :func:`over_seeds`)."""


def over_seeds(values: Sequence[float]) -> dict[str, float | int]:
    """A hypervolume over GA seeds (:data:`SEED_STATS`): the number of seeds, the mean, the
    sample standard deviation (n - 1), the Student-t 95% confidence interval of the mean,
    mean +- t(0.975, n - 1) sd / sqrt(n) (the seeds are independent runs and the interval
    assumes their hypervolumes roughly normal: the textbook t interval, as in
    :func:`sim.report.confidence_half_width`), the smallest and the largest. One seed: sd and
    interval NaN (no spread is claimed)."""
    if not values:
        raise ValueError("over_seeds: no values")
    x = [float(v) for v in values]
    mean = statistics.fmean(x)
    half = confidence_half_width(x)
    return {"seeds": len(x), "hv_mean": mean,
            "hv_sd": statistics.stdev(x) if len(x) > 1 else math.nan,
            "hv_ci95_lo": mean - half, "hv_ci95_hi": mean + half, "hv_min": min(x),
            "hv_max": max(x)}


def median_seed(values: Mapping[int, float]) -> int:
    """The seed whose value is the (lower) median: a representative run, not the best one."""
    ranked = sorted(values, key=lambda s: (values[s], s))
    return ranked[(len(ranked) - 1) // 2]


def seed_panel(ax: Any, per_seed: Mapping[str, Sequence[float]], xlabel: str,
               title: str) -> None:
    """One row per label: its value for each seed (listed in seed order) as points, spread
    vertically in that order so that none hides another; its mean as a black tick with the
    95% CI over seeds (:func:`over_seeds`) as an error bar (none for a label of one value)."""
    labels = list(per_seed)
    legend: set[str] = set()

    def once(name: str) -> str | None:
        if name in legend:
            return None
        legend.add(name)
        return name

    for row, label in enumerate(labels):
        values = list(per_seed[label])
        n = len(values)
        offsets = [0.0] if n == 1 else [-0.2 + 0.4 * i / (n - 1) for i in range(n)]
        ax.plot(values, [row + o for o in offsets], "o", color="tab:blue", ms=4, alpha=0.7,
                label=once("one seed"))
        stats = over_seeds(values)
        mean, lo, hi = stats["hv_mean"], stats["hv_ci95_lo"], stats["hv_ci95_hi"]
        if math.isnan(lo):
            ax.plot([mean], [row], "|", color="black", ms=16, mew=2)
        else:
            ax.errorbar([mean], [row], xerr=[[mean - lo], [hi - mean]], fmt="|", color="black",
                        ms=16, mew=2, capsize=4, elinewidth=1.2,
                        label=once("mean, 95% CI over seeds"))
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylim(len(labels) - 0.5, -0.5)  # the first label on top
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8)


def search(ctx: Context, scenario: Scenario, config: SearchConfig, label: str) -> SearchResult:
    """A search in ``ctx.out/searches/LABEL-HASH`` (the hash of its scenario and config):
    resumed if a checkpoint is there (a finished one just loads); a changed config starts anew
    in its own folder."""
    folder = ctx.out / "searches" / f"{label}-{fingerprint(scenario, config)[:10]}"
    resume = (folder / CHECKPOINT).exists()
    return run_search(scenario, config, folder, resume=resume, cache_path=ctx.cache,
                      progress=ctx.progress)


def front_of(result: SearchResult, what: str) -> list[Evaluation]:
    """The result's front, or a clear error when no design was feasible."""
    front = result.front()
    if not front:
        raise ValueError(f"{what}: no feasible design was found (memory limits or deadline too "
                         "tight, every design overloading some node or link, or every training "
                         "failed); see its evaluations")
    return front


def remeasure(ctx: Context, scenario: Scenario, config: SearchConfig,
              front: Sequence[Evaluation]) -> list[Remeasured]:
    """``front`` re-measured on fresh seeds with confidence intervals and test-set accuracy
    (:mod:`search.remeasure`), for fronts that no search re-measured (a baseline's)."""
    with executor_map(config) as pool:
        return remeasure_front(Evaluator(scenario, config, ctx.cache), front, pool)


def latency_label(config: SearchConfig) -> str:
    """Axis label of the latency objective."""
    return f"{config.latency} completion latency (ms, log scale)"


def front_axes(ax: Any, config: SearchConfig, title: str, legend_size: float = 10) -> None:
    """Label an accuracy-against-latency plot (latency in ms on a log axis)."""
    ax.set_xscale("log")
    ax.set_xlabel(latency_label(config))
    ax.set_ylabel(f"proxy accuracy on {config.dataset} (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)


def device_share(evaluator: Evaluator, ev: Evaluation) -> list[float]:
    """Share of the design's FLOPs run by each node of its route (0 for nodes after the end)."""
    design = evaluator.layout.decode(ev.genome)
    costs = segment_costs(design, evaluator.profile(design),
                          evaluator.scenario.input_bits_per_element)
    total = sum(c.flops for c in costs) or 1
    shares = [c.flops / total for c in costs]
    return shares + [0.0] * (len(design.route) - len(shares))


def write_csv(path: Path, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """Rows with exactly ``columns`` (a missing or extra key is a bug, so it raises)."""
    rows = list(rows)
    for row in rows:
        if set(row) != set(columns):
            raise KeyError(f"{path.name}: row keys {sorted(row)} are not {sorted(columns)}")
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(v) for k, v in row.items()})
    os.replace(tmp, path)


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return value


def save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def experiment_main(name: str, run: Callable[[Context], Output],
                    argv: Sequence[str] | None = None) -> int:
    """``python -m experiments.NAME [--quick] [--out DIR]``: SIGTERM exits as Ctrl-C does, so
    the searches' training workers stop with the run (see :func:`jmsnas.main.cli`)."""
    import signal

    def terminated(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminated)
    parser = argparse.ArgumentParser(prog=f"python -m experiments.{name}")
    parser.add_argument("--quick", action="store_true", help="the small size (minutes)")
    parser.add_argument("--out", default="runs/experiments", help="output folder")
    args = parser.parse_args(argv)
    try:
        output = run_experiment(name, run, Path(args.out), args.quick, sys.stderr.isatty())
    except (ScenarioError, ValueError, OSError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"experiment": output.name, "figures": output.figures,
                      "tables": output.tables}))
    return 0


def run_experiment(name: str, run: Callable[[Context], Output], out: Path, quick: bool,
                   progress: bool) -> Output:
    """Run one experiment into ``out/NAME``, which it holds locked while it runs: a second run
    into the same folder is refused in one line instead of resuming the same searches at once."""
    folder = out / name
    with contextlib.closing(lock_run_folder(folder)):
        ctx = Context(name, folder, quick, progress, load_experiment_config(name, quick))
        ctx.write_config()
        return run(ctx)
