"""Tasks: pipelines of compute and transfer stages, and the streams in which they arrive."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .scenario import (
    FileArrivals,
    PeriodicArrivals,
    PoissonArrivals,
    Scenario,
    WorkloadSpec,
    pipeline_from_specs,
)
from .seeds import children
from .stages import (
    Compute,
    Phase,
    Pipeline,
    Stage,
    Transfer,
    read_arrival_file,
    stages_for_source,
    training_pipeline,
)

__all__ = [
    "Compute",
    "Phase",
    "Pipeline",
    "Stage",
    "TaskSet",
    "Transfer",
    "pipeline_from_specs",
    "read_arrival_file",
    "sample_tasks",
    "stages_for_source",
    "training_pipeline",
]

@dataclass(frozen=True)
class TaskSet:
    """The tasks of one replication, in order of arrival (ties: in order of source).

    ``multipliers[i, k]`` scales the work of stage k of task i (1 for constant work).
    ``variant[i]``: which pipeline of a split policy task i runs (None: there is one pipeline;
    set by :meth:`sim.network.Plan.choose`).
    """

    arrival_s: NDArray[np.float64]
    source: NDArray[np.intp]
    measured: NDArray[np.bool_]
    multipliers: NDArray[np.float64]
    variant: NDArray[np.intp] | None = None

    @property
    def n(self) -> int:
        return int(self.arrival_s.size)


def _arrivals(
    spec: WorkloadSpec, scenario: Scenario, n: int, seeds: Sequence[np.random.SeedSequence]
) -> list[NDArray[np.float64]]:
    a = spec.arrivals
    out: list[NDArray[np.float64]] = []
    if isinstance(a, FileArrivals):
        per = read_arrival_file(str(scenario.resolve(a.file)), spec.sources)
        return [per[s][:n] for s in spec.sources]
    for seq in seeds:
        rng = np.random.default_rng(seq)
        if isinstance(a, PoissonArrivals):
            out.append(np.cumsum(rng.exponential(1.0 / a.rate_hz, n)))
        elif isinstance(a, PeriodicArrivals):
            period = 1.0 / a.rate_hz
            phase = a.phase_s if a.phase_s is not None else rng.uniform(0.0, period)
            out.append(phase + period * np.arange(n, dtype=np.float64))
        else:  # pragma: no cover - the schema admits no other process
            raise AssertionError(a)
    return out


def _multipliers(stages: Sequence[Stage], n: int, rng: np.random.Generator) -> NDArray[np.float64]:
    m = np.ones((n, len(stages)))
    for k, stage in enumerate(stages):
        if isinstance(stage, Compute) and stage.distribution != "constant":
            if stage.distribution == "exponential":
                m[:, k] = rng.standard_exponential(n)
            else:  # lognormal with mean 1 and the given coefficient of variation
                sigma2 = math.log1p(stage.cv**2)
                m[:, k] = rng.lognormal(-sigma2 / 2.0, math.sqrt(sigma2), n)
    return m


def sample_tasks(
    scenario: Scenario,
    stages: Sequence[Stage],
    tasks_per_source: int,
    arrival_seed: np.random.SeedSequence,
    service_seed: np.random.SeedSequence,
) -> TaskSet:
    """Draw one replication's tasks: arrivals of every source, merged, and work multipliers.

    Arrivals of source j come from the j-th child of ``arrival_seed`` whatever the pipeline, so
    two pipelines simulated with the same seed see the same arrivals (common random numbers).
    """
    w = scenario.workload
    per_source = _arrivals(w, scenario, tasks_per_source, children(arrival_seed, len(w.sources)))
    arrival = np.concatenate(per_source)
    source = np.concatenate([np.full(a.size, j, dtype=np.intp) for j, a in enumerate(per_source)])
    local = np.concatenate([np.arange(a.size) for a in per_source])
    order = np.lexsort((source, arrival))
    n = arrival.size
    multipliers = _multipliers(stages, n, np.random.default_rng(service_seed))
    return TaskSet(
        arrival_s=arrival[order],
        source=source[order],
        measured=local[order] >= w.warmup_tasks,
        multipliers=multipliers,
    )
