"""What a search leaves in its run folder: the resolved config, CSV tables and figures.

- ``config.yaml``: the resolved search configuration, the scenario file and the package version;
- ``front.csv``: one row per non-dominated feasible design: ``accuracy`` and its noise
  ``accuracy_sd`` (the proxy's seed-to-seed standard deviation), ``latency_s``,
  ``energy_j``, ``splits``, ``arch``, ``genome`` (and the design in words);
- ``evaluations.csv``: every design evaluated, feasible or not;
- ``history.csv``: per generation: evaluations, hypervolume, best accuracy and latency;
- ``front.png`` and ``hypervolume.png``, drawn from those CSVs.
"""

from __future__ import annotations

import csv
import math
from importlib import metadata
from pathlib import Path

import yaml

from .evaluate import Evaluation
from .nsga import SearchResult

__all__ = ["FRONT_COLUMNS", "HISTORY_COLUMNS", "write_run"]

FRONT_COLUMNS = ["accuracy", "accuracy_sd", "latency_s", "mean_latency_s", "p95_latency_s",
                 "energy_j", "splits", "arch", "genome", "design", "status", "violation"]
HISTORY_COLUMNS = ["generation", "evaluations", "feasible", "hypervolume", "best_accuracy",
                   "best_latency_s", "elapsed_s"]


def _version() -> str:
    try:
        return metadata.version("jmsnas")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def _row(e: Evaluation) -> list[object]:
    splits = e.design.split(" (")[0]
    return [e.accuracy, e.accuracy_sd, e.latency_s, e.mean_latency_s, e.p95_latency_s,
            e.device_energy_j, splits, e.arch, " ".join(map(str, e.genome)), e.design, e.status,
            e.violation]


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(header)
        out.writerows(rows)


def write_run(out_dir: str | Path, result: SearchResult, scenario_file: str) -> list[Path]:
    """Write the run folder's files; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = {"jmsnas_version": _version(), "scenario": scenario_file,
           "search": result.config.model_dump()}
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    front = result.front()
    _write_csv(out / "front.csv", FRONT_COLUMNS, [_row(e) for e in front])
    everything = sorted(result.evaluations.values(), key=lambda e: (not e.feasible, e.latency_s))
    _write_csv(out / "evaluations.csv", FRONT_COLUMNS, [_row(e) for e in everything])
    _write_csv(out / "history.csv", HISTORY_COLUMNS,
               [[row[c] for c in HISTORY_COLUMNS] for row in result.history])
    return [out / n for n in ("config.yaml", "front.csv", "evaluations.csv", "history.csv")] + \
        _plot(out, result, front)


def _plot(out: Path, result: SearchResult, front: list[Evaluation]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    feasible = [e for e in result.evaluations.values() if e.feasible]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.scatter([1e3 * e.latency_s for e in feasible], [100 * e.accuracy for e in feasible],
               s=14, color="0.7", label=f"evaluated ({len(feasible)} feasible)")
    ax.plot([1e3 * e.latency_s for e in front], [100 * e.accuracy for e in front], "o-",
            color="C3", label=f"Pareto front ({len(front)})", drawstyle="steps-post")
    sd = front[0].accuracy_sd if front else math.nan
    if math.isfinite(sd):  # one noise level for the whole run: its budget's seed-to-seed sd
        ax.errorbar([1e3 * e.latency_s for e in front], [100 * e.accuracy for e in front],
                    yerr=100 * sd, fmt="none", ecolor="C3", alpha=0.6, capsize=3,
                    label=f"+/- 1 sd of a proxy accuracy ({100 * sd:.2f} points)")
    ax.set_xscale("log")
    ax.set_xlabel(f"{result.config.latency} completion latency (ms, log scale)")
    ax.set_ylabel(f"proxy accuracy on {result.config.dataset} (%)")
    ax.set_title("Joint architecture and split search")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "front.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    evals = [row["evaluations"] for row in result.history]
    hv = [row["hypervolume"] for row in result.history]
    ax.plot(evals, hv, "o-")
    ax.set_xlabel("designs evaluated")
    ref = result.config.hv_reference()
    ax.set_ylabel(f"hypervolume (ref: error {ref[0]:g}, {ref[1]:g} s)")
    ax.set_title("Search progress")
    ax.grid(alpha=0.3)
    if hv and not any(math.isnan(h) for h in hv):
        ax.set_ylim(bottom=min(hv) * 0.98)
    fig.tight_layout()
    fig.savefig(out / "hypervolume.png", dpi=120)
    plt.close(fig)
    return [out / "front.png", out / "hypervolume.png"]
