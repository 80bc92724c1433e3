"""Summary statistics of simulated completion latency over replications."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .engine import RunRecord
from .network import Plan
from .workload import Phase

__all__ = [
    "LatencyReport",
    "ResourceStats",
    "StageStats",
    "confidence_half_width",
    "summarise",
    "write_timeline_csv",
]

BATCHES = 20
"""Batches for the batch-means confidence interval of a single replication."""


@dataclass(frozen=True)
class StageStats:
    """Mean time per measured task in one stage of the pipeline (seconds)."""

    index: int
    label: str
    """The stage's label, e.g. ``transfer phone->edge``; in training mode with its pass:
    ``compute@edge (forward)``, ``compute@edge (backward)``, ``transfer edge->phone (gradient)``."""
    resources: list[str]
    waiting_s: float
    service_s: float
    propagation_s: float
    phase: Phase | None = None
    """``forward`` or ``backward`` in training mode, else None."""


@dataclass(frozen=True)
class ResourceStats:
    """A node or a link over the whole run: utilisation and energy."""

    name: str
    kind: str
    servers: int
    utilisation: float
    """Busy server-seconds / (servers x time from the first arrival to the last completion)."""
    busy_s: float
    """Busy server-seconds per replication."""
    energy_j_per_task: float
    """power_w x busy time, per measured task."""
    offered_utilisation: float = math.nan
    """Arrival rate x mean work / capacity (:mod:`sim.stability`): at or over 1 the queue has
    no steady state and the run's latencies depend on its length."""


@dataclass(frozen=True)
class LatencyReport:
    """Completion latency of a pipeline on a scenario: mean, tail, per stage, with a 95% CI."""

    scenario: str
    engine: str
    seed: int
    replications: int
    tasks: int
    mean_latency_s: float
    p50_latency_s: float
    p95_latency_s: float
    p99_latency_s: float
    ci95_half_width_s: float
    ci_method: str
    throughput_hz: float
    energy_j_per_task: float
    device_energy_j_per_task: float
    stages: list[StageStats]
    resources: list[ResourceStats]
    replication_means_s: list[float] = field(default_factory=list)

    @property
    def overloaded(self) -> list[ResourceStats]:
        """Resources offered a utilisation at or over 1, most loaded first."""
        return sorted((r for r in self.resources if r.offered_utilisation >= 1.0),
                      key=lambda r: -r.offered_utilisation)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (NaN becomes None)."""

        def clean(x: Any) -> Any:  # NaN is not JSON
            if isinstance(x, float) and not math.isfinite(x):
                return None
            if isinstance(x, dict):
                return {k: clean(v) for k, v in x.items()}
            if isinstance(x, list):
                return [clean(v) for v in x]
            return x

        return clean(asdict(self))


def confidence_half_width(means: Sequence[float] | NDArray[np.float64]) -> float:
    """Half-width of the Student-t 95% confidence interval of the mean of ``means``:
    t(0.975, n - 1) sd / sqrt(n), NaN for fewer than two values. The quantile is
    ``scipy.special.stdtrit``, the inverse Student-t CDF that ``scipy.stats.t.ppf`` calls, so
    that simulating does not import ``scipy.stats`` (half a second at start-up)."""
    from scipy.special import stdtrit

    x = np.asarray(means, dtype=np.float64)
    if x.size < 2:
        return math.nan
    return float(stdtrit(x.size - 1, 0.975) * x.std(ddof=1) / math.sqrt(x.size))


def summarise(
    records: Sequence[RunRecord], plan: Plan, *, scenario: str, engine: str, seed: int,
    offered: dict[str, float] | None = None,
) -> LatencyReport:
    """Pool replications into one report.

    The CI is over replication means when there are two or more replications, else over
    ``BATCHES`` batch means of the single run (consecutive tasks in order of arrival).
    Percentiles are of the pooled measured latencies. ``offered``: each resource's offered
    utilisation, by name.
    """
    lat = [r.latency_s for r in records]
    counts = np.array([x.size for x in lat])
    if np.any(counts == 0):
        raise ValueError("no measured tasks: workload.warmup_tasks leaves none")
    pooled = np.concatenate(lat)
    rep_means = [float(x.mean()) for x in lat]
    if len(records) >= 2:
        half, method = confidence_half_width(rep_means), "replications"
    elif pooled.size >= 2 * BATCHES:
        batches = np.array_split(pooled, BATCHES)
        half, method = confidence_half_width([b.mean() for b in batches]), "batch_means"
    else:
        half, method = math.nan, "none"
    n_meas = int(counts.sum())
    p50, p95, p99 = np.percentile(pooled, [50, 95, 99])
    throughput = []
    span = []
    for r in records:
        m = r.measured
        throughput.append(m.sum() / (r.completion_s[m].max() - r.arrival_s[m].min()))
        span.append(r.completion_s.max() - r.arrival_s.min())
    busy = np.sum([r.busy_s for r in records], axis=0)
    mbusy = np.sum([r.measured_busy_s for r in records], axis=0)
    resources = []
    energy = device_energy = 0.0
    used = set(plan.resource[plan.resource >= 0].tolist())  # not a link only observed
    for i, res in enumerate(plan.resources):
        if i not in used:
            continue
        e = float(mbusy[i] * res.power_w / n_meas)
        energy += e
        if res.node_kind == "device":
            device_energy += e
        resources.append(
            ResourceStats(
                name=res.name,
                kind=res.kind,
                servers=res.servers,
                utilisation=float(busy[i] / (res.servers * float(np.sum(span)))),
                busy_s=float(busy[i] / len(records)),
                energy_j_per_task=e,
                offered_utilisation=(offered or {}).get(res.name, math.nan),
            )
        )
    wait = np.sum([r.stage_wait_s for r in records], axis=0) / n_meas
    serv = np.sum([r.stage_service_s for r in records], axis=0) / n_meas
    prop = np.sum([r.stage_propagation_s for r in records], axis=0) / n_meas
    stage_stats = [
        StageStats(
            index=s,
            label=plan.stages[s].label,
            resources=sorted({plan.resources[int(r)].name for r in plan.resource[:, s]
                              if r >= 0}),
            waiting_s=float(wait[s]),
            service_s=float(serv[s]),
            propagation_s=float(prop[s]),
            phase=plan.stages[s].phase,
        )
        for s in range(len(plan.stages))
    ]
    return LatencyReport(
        scenario=scenario,
        engine=engine,
        seed=seed,
        replications=len(records),
        tasks=n_meas,
        mean_latency_s=float(pooled.mean()),
        p50_latency_s=float(p50),
        p95_latency_s=float(p95),
        p99_latency_s=float(p99),
        ci95_half_width_s=half,
        ci_method=method,
        throughput_hz=float(np.mean(throughput)),
        energy_j_per_task=energy,
        device_energy_j_per_task=device_energy,
        stages=stage_stats,
        resources=resources,
        replication_means_s=rep_means,
    )


def write_timeline_csv(records: Sequence[RunRecord], plan: Plan, path: str) -> int:
    """Write every kept timeline as CSV, one row per (replication, task, stage); returns rows.

    Columns: replication, task, source, stage, label, resource, queued_s, start_s, end_s,
    waiting_s, service_s, completion_s. ``label`` is the stage's (:attr:`StageStats.label`: with
    its pass in training mode). A stage a task skips (a split policy's) has no row.
    """
    import csv

    rows = 0
    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["replication", "task", "source", "stage", "label", "resource", "queued_s",
                      "start_s", "end_s", "waiting_s", "service_s", "completion_s"])
        for rep, rec in enumerate(records):
            tl = rec.timeline
            if tl is None:
                raise ValueError("no timeline kept: simulate with keep_timeline=True")
            for i in range(tl.start_s.shape[0]):
                for s in range(tl.start_s.shape[1]):
                    if tl.resource[i, s] < 0:
                        continue
                    out.writerow([
                        rep, i, int(tl.source[i]), s, plan.stages[s].label,
                        plan.resources[int(tl.resource[i, s])].name,
                        repr(float(tl.queued_s[i, s])), repr(float(tl.start_s[i, s])),
                        repr(float(tl.end_s[i, s])),
                        repr(float(tl.start_s[i, s] - tl.queued_s[i, s])),
                        repr(float(tl.end_s[i, s] - tl.start_s[i, s])),
                        repr(float(tl.completion_s[i])),
                    ])
                    rows += 1
    return rows
