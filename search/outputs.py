"""What a search leaves in its run folder: the resolved config, CSV tables and figures.

- ``config.yaml``: the resolved search configuration, the scenario file and the package version;
- ``front.csv``: one row per non-dominated feasible design, re-measured on fresh seeds
  (:mod:`search.remeasure`): ``accuracy`` (the search's proxy) and its noise ``accuracy_sd``,
  ``test_accuracy`` on the held-out test set, ``mean_latency_s`` and ``p95_latency_s`` with the
  half-widths of their 95% confidence intervals (``*_ci95_s``) over ``replications``,
  ``latency_s`` (the configured one of the two), ``energy_j``; ``search_latency_s`` is what the
  search scored on its own sample path; then ``splits``, ``arch``, ``genome``, ``design``;
- ``evaluations.csv``: every design the search scored, feasible or not, with the search's own
  numbers (one sample path), the highest offered ``utilisation`` of any resource it uses, and
  its ``status`` (``ok``, ``infeasible``, ``unstable``: some
  resource offered a utilisation at or over 1, named in ``message``; ``failed``: training
  failed deterministically; ``error``: it failed in a way a rerun may not repeat);
- ``history.csv``: per generation: evaluations, hypervolume, best accuracy and latency;
- ``front.png`` (the front by where its designs run: which nodes hold blocks) and
  ``hypervolume.png``, drawn from those CSVs.

:func:`chance_warning` says when most designs score no better than guessing.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from .design import STATE_SEPARATOR, hosts
from .evaluate import NUM_CLASSES, Evaluation
from .nsga import SearchResult
from .runs import write_run_config

__all__ = ["EVALUATION_COLUMNS", "FRONT_COLUMNS", "HISTORY_COLUMNS", "chance_warning",
           "front_rows", "write_run"]

FRONT_COLUMNS = ["accuracy", "accuracy_sd", "test_accuracy", "latency_s", "mean_latency_s",
                 "mean_latency_ci95_s", "p95_latency_s", "p95_latency_ci95_s", "replications",
                 "energy_j", "search_latency_s", "splits", "arch", "genome", "design"]
EVALUATION_COLUMNS = ["accuracy", "accuracy_sd", "latency_s", "mean_latency_s", "p95_latency_s",
                      "energy_j", "utilisation", "splits", "arch", "genome", "design", "status",
                      "violation", "message"]
HISTORY_COLUMNS = ["generation", "evaluations", "feasible", "hypervolume", "best_accuracy",
                   "best_latency_s", "elapsed_s"]


def _splits(design: str) -> str:
    """The placement part of a design's description, every state's for a policy design."""
    return STATE_SEPARATOR.join(d.split(" (")[0] for d in design.split(STATE_SEPARATOR))


def _compression(design: str) -> str:
    """The compression part of a design's description, every state's for a policy design."""
    return STATE_SEPARATOR.join(d.partition(" (")[2] for d in design.split(STATE_SEPARATOR))


def _row(e: Evaluation) -> list[object]:
    splits = _splits(e.design)
    return [e.accuracy, e.accuracy_sd, e.latency_s, e.mean_latency_s, e.p95_latency_s,
            e.device_energy_j, e.utilisation, splits, e.arch, " ".join(map(str, e.genome)),
            e.design, e.status, e.violation, e.message]


def front_rows(result: SearchResult) -> list[dict[str, Any]]:
    """The front as reported: re-measured numbers where there are some (the search's own
    otherwise, with ``replications`` 0 and NaN intervals)."""
    again = {(r.arch, r.design): r for r in result.remeasured}
    rows = []
    nan = math.nan
    for e in result.front():
        r = again.get((e.arch, e.design))
        if r is not None and r.replications == 0:
            r = None  # not re-measured: the search's own numbers
        mean, p95 = (r.mean_latency_s, r.p95_latency_s) if r else (e.mean_latency_s,
                                                                      e.p95_latency_s)
        rows.append({
            "accuracy": e.accuracy, "accuracy_sd": e.accuracy_sd,
            "test_accuracy": r.test_accuracy if r else nan,
            "latency_s": mean if result.config.latency == "mean" else p95,
            "mean_latency_s": mean, "mean_latency_ci95_s": r.mean_ci95_s if r else nan,
            "p95_latency_s": p95, "p95_latency_ci95_s": r.p95_ci95_s if r else nan,
            "replications": r.replications if r else 0,
            "energy_j": r.device_energy_j if r else e.device_energy_j,
            "search_latency_s": e.latency_s, "splits": _splits(e.design), "arch": e.arch,
            "genome": " ".join(map(str, e.genome)), "design": e.design})
    return sorted(rows, key=lambda row: row["latency_s"])  # re-measured: the order may move


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(header)
        out.writerows(rows)


def chance_warning(result: SearchResult, num_classes: int = NUM_CLASSES) -> str | None:
    """One line when more than half of the models that were trained (an architecture with the
    compression of its cuts: the designs that only place one elsewhere share its accuracy, and
    count once) score at chance, 1 /
    ``num_classes``, within max(3 sd, chance / 2) but never more than twice chance (sd: the
    median of the proxy's seed-to-seed noise; the floor, our choice, stands in when it is not
    measured or near 0, as it is at chance; the cap keeps a very noisy proxy from calling
    everything chance): the proxy-training budget is too small for the data, and the front
    ranks noise. None otherwise."""
    models = {(e.arch, _compression(e.design)): e for e in result.evaluations.values()
              if math.isfinite(e.accuracy)}  # the compression, as the design's text says it
    scored = list(models.values())
    if not scored:
        return None
    chance = 1.0 / num_classes
    sds = [e.accuracy_sd for e in scored if math.isfinite(e.accuracy_sd)]
    limit = chance + min(max(3 * float(np.median(sds)) if sds else 0.0, chance / 2), chance)
    low = sum(e.accuracy <= limit for e in scored)
    if 2 * low <= len(scored):
        return None
    budget, cfg = result.config.budget, result.config
    images = "every image" if budget.subset is None else f"{budget.subset} images"
    epochs = f"{budget.epochs} epoch{'s' if budget.epochs > 1 else ''}"
    return (f"{low} of {len(scored)} trained models score chance accuracy (at most "
            f"{limit:.3f}; chance is {chance:.3f}): the proxy-training budget ({epochs} on "
            f"{images}) is too small for {cfg.dataset}: raise epochs or subset")


def write_run(out_dir: str | Path, result: SearchResult, scenario_file: str,
              data_dir: str | None = None) -> list[Path]:
    """Write the run folder's files (``config.yaml`` by :func:`search.runs.write_run_config`);
    returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_run_config(out, result.config, scenario_file, data_dir)
    front = front_rows(result)
    _write_csv(out / "front.csv", FRONT_COLUMNS, [[r[c] for c in FRONT_COLUMNS] for r in front])
    everything = sorted(result.evaluations.values(), key=lambda e: (not e.feasible, e.latency_s))
    _write_csv(out / "evaluations.csv", EVALUATION_COLUMNS, [_row(e) for e in everything])
    _write_csv(out / "history.csv", HISTORY_COLUMNS,
               [[row[c] for c in HISTORY_COLUMNS] for row in result.history])
    return [out / n for n in ("config.yaml", "front.csv", "evaluations.csv", "history.csv")] + \
        _plot(out, result, front)


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
"""One per placement of the front (which nodes hold blocks), with a colour each."""


def _plot(out: Path, result: SearchResult, front: list[dict[str, Any]]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result.config
    evals = list(result.evaluations.values())
    feasible = [e for e in evals if e.feasible]
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    ax.scatter([1e3 * e.latency_s for e in feasible], [100 * e.accuracy for e in feasible],
               s=14, color="0.7", label=f"evaluated, search's path ({len(feasible)} feasible)")
    x = np.array([1e3 * float(r["latency_s"]) for r in front])
    y = np.array([100 * float(r["accuracy"]) for r in front])
    ci = np.array([1e3 * float(r[f"{cfg.latency}_latency_ci95_s"])
                   for r in front])
    reps = max((int(r["replications"]) for r in front), default=0)
    sd = float(front[0]["accuracy_sd"]) if front else math.nan
    where = f"re-measured, {reps} fresh replications" if reps else "search's path"
    best, keep = -math.inf, []  # rows are by latency: the line joins those still ahead
    for i, yi in enumerate(y):  # in accuracy once re-measured (markers: the whole front)
        if yi > best:
            best = yi
            keep.append(i)
    ax.plot(x[keep], y[keep], "-", color="0.3", drawstyle="steps-post",
            label=f"Pareto front ({len(front)}; {where})")
    placed = [hosts(str(r["design"])) for r in front]
    for k, nodes in enumerate(dict.fromkeys(placed)):  # by where they run, first seen first
        mask = np.array([p == nodes for p in placed])
        ax.plot(x[mask], y[mask], _MARKERS[k % len(_MARKERS)], color=f"C{k % 10}",
                markersize=7, zorder=4, label="runs on " + " + ".join(nodes))
    if reps or math.isfinite(sd):  # latency: 95% CI; accuracy: the budget's seed-to-seed sd
        ax.errorbar(x, y, xerr=np.nan_to_num(ci) if reps else None,
                    yerr=100 * sd if math.isfinite(sd) else None, fmt="none", ecolor="0.3",
                    alpha=0.6, capsize=3,
                    label="95% CI of the latency" + (f"; +/- 1 sd of a proxy accuracy "
                                                     f"({100 * sd:.2f} points)"
                                                     if math.isfinite(sd) else ""))
    test = np.array([100 * float(r["test_accuracy"]) for r in front])
    if np.any(np.isfinite(test)):
        ax.scatter(x, test, marker="x", color="k", zorder=3,
                   label="accuracy on the held-out test set")
    unstable = sum(e.status == "unstable" for e in evals)
    if unstable:
        ax.text(0.01, 0.99, f"{unstable} unstable design(s) left out: some resource offered "
                "utilisation >= 1", transform=ax.transAxes, fontsize=7, color="0.3", va="top")
    ax.set_xscale("log")
    ax.set_xlabel(f"{cfg.latency} completion latency (ms, log scale)")
    ax.set_ylabel(f"accuracy on {cfg.dataset} (%)")
    ax.set_title("Joint architecture and split search")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "front.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    counts = [row["evaluations"] for row in result.history]
    hv = [row["hypervolume"] for row in result.history]
    ax.plot(counts, hv, "o-")
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
