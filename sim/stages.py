"""The building blocks of a task, which need nothing of a scenario: compute and transfer
stages, pipelines of them, and arrival times read from a file (:mod:`sim.scenario` builds
and checks with them; :mod:`sim.workload` samples tasks from them)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Literal

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "Compute",
    "Distribution",
    "Phase",
    "Pipeline",
    "Stage",
    "Transfer",
    "read_arrival_file",
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
