"""Tasks: pipelines of compute and transfer stages, and the streams in which they arrive."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from .scenario import (
    ComputeStageSpec,
    FileArrivals,
    PeriodicArrivals,
    PoissonArrivals,
    Scenario,
    TransferStageSpec,
    WorkloadSpec,
)
from .seeds import children

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

Distribution = Literal["constant", "exponential", "lognormal"]
Phase = Literal["forward", "backward"]
"""Which pass of a training step a stage belongs to (None: an inference, no pass to name)."""


def _check_phase(owner: str, phase: object) -> None:
    if phase not in (None, "forward", "backward"):
        raise ValueError(f"{owner}.phase must be None, 'forward' or 'backward', got {phase!r}")


@dataclass(frozen=True)
class Compute:
    """Run ``work_flops`` FLOPs on ``node`` (one server of it); ``phase`` names the pass of a
    training step it belongs to (only its label shows it)."""

    node: str
    work_flops: float
    distribution: Distribution = "constant"
    cv: float = 0.5
    phase: Phase | None = None

    def __post_init__(self) -> None:
        if not self.work_flops > 0 or not math.isfinite(self.work_flops):
            raise ValueError(
                f"Compute.work_flops must be a finite number > 0, got {self.work_flops}"
            )
        if self.distribution not in ("constant", "exponential", "lognormal"):
            raise ValueError(
                f"Compute.distribution must be constant, exponential or lognormal, "
                f"got {self.distribution!r}"
            )
        if not self.cv > 0:
            raise ValueError(f"Compute.cv must be > 0, got {self.cv}")
        _check_phase("Compute", self.phase)

    @property
    def label(self) -> str:
        """``compute@NODE``, in training ``compute@NODE (forward)`` or ``(backward)``."""
        return f"compute@{self.node}" + (f" ({self.phase})" if self.phase else "")


@dataclass(frozen=True)
class Transfer:
    """Send ``size_bits`` over the link ``src -> dst``; ``phase`` as for :class:`Compute` (a
    backward transfer carries a gradient)."""

    src: str
    dst: str
    size_bits: float
    phase: Phase | None = None

    def __post_init__(self) -> None:
        if not self.size_bits > 0 or not math.isfinite(self.size_bits):
            raise ValueError(
                f"Transfer.size_bits must be a finite number > 0, got {self.size_bits}"
            )
        _check_phase("Transfer", self.phase)

    @property
    def label(self) -> str:
        """``transfer SRC->DST``, in training ``(forward)``, or ``(gradient)`` going back."""
        tag = {None: "", "forward": " (forward)", "backward": " (gradient)"}[self.phase]
        return f"transfer {self.src}->{self.dst}{tag}"


Stage = Compute | Transfer
Pipeline = tuple[Stage, ...]


def pipeline_from_specs(specs: Sequence[ComputeStageSpec | TransferStageSpec]) -> Pipeline:
    """Turn the scenario's ``pipeline`` entries into stages."""
    out: list[Stage] = []
    for spec in specs:
        if isinstance(spec, ComputeStageSpec):
            out.append(Compute(spec.compute, spec.flops, spec.distribution, spec.cv))
        else:
            out.append(Transfer(spec.transfer[0], spec.transfer[1], spec.bits))
    return tuple(out)


def training_pipeline(forward: Sequence[Stage], backward_flops_factor: float = 2.0) -> Pipeline:
    """Split learning: the forward stages, then the backward pass in reverse order.

    Backward compute does ``backward_flops_factor`` times the forward work on the same node (about
    2 for convolutional and dense layers: gradients with respect to inputs and to weights);
    gradients of an activation have its size, so each transfer is repeated in the reverse
    direction with the same number of bits. Our modelling choice. Every stage is marked with its
    ``phase``, so that reports tell the two passes apart (``compute@edge (forward)``,
    ``compute@edge (backward)``, ``transfer edge->phone (gradient)``).
    """
    backward: list[Stage] = []
    for stage in reversed(forward):
        if isinstance(stage, Compute):
            backward.append(replace(stage, work_flops=stage.work_flops * backward_flops_factor,
                                    phase="backward"))
        else:
            backward.append(Transfer(stage.dst, stage.src, stage.size_bits, phase="backward"))
    return (*(replace(stage, phase="forward") for stage in forward), *backward)


def stages_for_source(pipeline: Sequence[Stage], first: str, source: str) -> Pipeline:
    """The pipeline as run for a task of ``source``: the path's first node stands for it."""
    if source == first:
        return tuple(pipeline)
    out: list[Stage] = []
    for stage in pipeline:
        if isinstance(stage, Compute):
            out.append(replace(stage, node=source) if stage.node == first else stage)
        else:
            src = source if stage.src == first else stage.src
            dst = source if stage.dst == first else stage.dst
            out.append(replace(stage, src=src, dst=dst))
    return tuple(out)


@lru_cache(maxsize=16)
def _read_arrivals_cached(path: str, mtime_ns: int) -> tuple[tuple[str, ...], tuple[float, ...]]:
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        if "time_s" not in fields:
            raise ValueError(f"needs a time_s column (found: {', '.join(fields)})")
        sources, times = [], []
        for line, row in enumerate(reader, start=2):
            try:
                t = float(row["time_s"])
            except (TypeError, ValueError):
                raise ValueError(f"line {line}: time_s must be a number, "
                                 f"got {row['time_s']!r}") from None
            if not math.isfinite(t) or t < 0:
                raise ValueError(f"line {line}: arrival times must be finite and >= 0, got {t}")
            times.append(t)
            sources.append(row.get("source") or "")
    if not times:
        raise ValueError("no arrival times")
    return tuple(sources), tuple(times)


def read_arrival_file(path: str, sources: Sequence[str]) -> dict[str, NDArray[np.float64]]:
    """Arrival times per source from a CSV with ``time_s`` and an optional ``source`` column.

    Without a ``source`` column every source replays the same times.
    """
    import os

    names, times = _read_arrivals_cached(path, os.stat(path).st_mtime_ns)
    t = np.asarray(times)
    if not any(names):
        per = {s: np.sort(t) for s in sources}
    else:
        unknown = sorted(set(names) - set(sources))
        if unknown:
            raise ValueError(f"source {unknown[0]!r} is not in workload.sources")
        col = np.asarray(names)
        per = {s: np.sort(t[col == s]) for s in sources}
    for s, arr in per.items():
        if arr.size == 0:
            raise ValueError(f"no arrival times for source {s!r}")
    return per


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
