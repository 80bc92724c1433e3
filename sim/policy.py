"""Split policies: a pipeline chosen per task from the channel state the first node observes.

A :class:`SplitPolicy` holds one pipeline per channel state and the rate thresholds between the
states. When a task arrives at time ``t`` on source ``j``, its first node looks at the rate of
its uplink (the policy's ``link``, ``path[0] -> next``, with the source in place of the path's
first node) at ``t - observe_delay_s``: the rate of the fading block, Markov state or trace
interval it was in then. State ``k`` is the number of thresholds at or below that rate (state 0
is the worst channel), and the task runs ``pipelines[k]``. The channel is exogenous (no task
changes it), so the choice of every task is known before the simulation starts and both engines
run the same choices; designs simulated with the same seed see the same channel, so two policies
are compared on the same sample paths (common random numbers).

The states come from the channel's own rate distribution (:func:`rate_thresholds`): K - 1
quantiles of the rate over time, estimated from a long realisation, duplicates dropped; a
channel of K or fewer distinct rates (Gilbert-Elliott: two) is cut between them.

Both engines run the *merged* pipeline (:func:`merge_pipelines`): every policy pipeline is a
subsequence of one sequence of stages, and a task skips the stages its own pipeline lacks
(no queue, no time). Reports are per merged stage, averaged over all measured tasks.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
from numpy.typing import ArrayLike, NDArray

from .channels import RateProcess
from .workload import Compute, Pipeline, Stage

__all__ = ["OraclePolicy", "Policy", "SplitPolicy", "check_thresholds", "merge_pipelines",
           "rate_thresholds", "stage_key", "states_of", "thresholds_of"]


def _check_pipelines(owner: str, pipelines: tuple[Pipeline, ...]) -> None:
    """A ValueError naming the field unless there is a pipeline and each has a stage."""
    if not pipelines:
        raise ValueError(f"{owner}.pipelines: needs at least one pipeline")
    for k, p in enumerate(pipelines):
        if not p:
            raise ValueError(f"{owner}.pipelines[{k}]: needs at least one stage")


def check_thresholds(field: str, thresholds: Sequence[float]) -> None:
    """A ValueError naming ``field`` unless the rate thresholds are finite, > 0 and
    increasing."""
    if any(not math.isfinite(x) or x <= 0 for x in thresholds) or any(
            b <= a for a, b in itertools.pairwise(thresholds)):
        raise ValueError(f"{field} must be finite, > 0 and increasing, got {list(thresholds)}")


def states_of(thresholds: Sequence[float], rate_bps: ArrayLike) -> NDArray[np.intp]:
    """The state of each observed rate: how many of ``thresholds`` are at or below it."""
    return np.searchsorted(np.asarray(thresholds, dtype=np.float64), rate_bps, side="right")


@dataclass(frozen=True)
class SplitPolicy:
    """One pipeline per channel state of ``link`` (see the module docstring).

    ``pipelines[k]`` runs in state k; ``thresholds_bps`` (K - 1 increasing rates) separate the
    states; ``link`` is the observed link as (first node of the path, next node); the rate is
    read ``observe_delay_s`` before the arrival (0: the current rate; a negative time reads the
    rate at 0).
    """

    pipelines: tuple[Pipeline, ...]
    thresholds_bps: tuple[float, ...]
    link: tuple[str, str]
    observe_delay_s: float = 0.0
    shares: tuple[float, ...] | None = field(default=None, compare=False)
    """Optional: the long-run share of time in each state (the search weighs its states'
    accuracies and offered loads by them; the simulator does not use them)."""

    def __post_init__(self) -> None:
        _check_pipelines("SplitPolicy", self.pipelines)
        if len(self.thresholds_bps) != len(self.pipelines) - 1:
            raise ValueError(f"SplitPolicy.thresholds_bps: {len(self.pipelines)} pipelines need "
                             f"{len(self.pipelines) - 1} thresholds, got "
                             f"{len(self.thresholds_bps)}")
        check_thresholds("SplitPolicy.thresholds_bps", self.thresholds_bps)
        if len(self.link) != 2 or self.link[0] == self.link[1]:
            raise ValueError(f"SplitPolicy.link must be (src, dst) of one link, got {self.link}")
        if not (math.isfinite(self.observe_delay_s) and self.observe_delay_s >= 0):
            raise ValueError(f"SplitPolicy.observe_delay_s must be >= 0, "
                             f"got {self.observe_delay_s}")

    @property
    def states(self) -> int:
        return len(self.pipelines)

    def state_of(self, rate_bps: NDArray[np.float64]) -> NDArray[np.intp]:
        """The state of each observed rate: how many thresholds are at or below it."""
        return states_of(self.thresholds_bps, rate_bps)

    def choose(self, channel: RateProcess, arrival_s: NDArray[np.float64]) -> NDArray[np.intp]:
        """The state (and so the pipeline) of tasks arriving at ``arrival_s`` on ``channel``."""
        if self.states == 1:
            return np.zeros(arrival_s.size, dtype=np.intp)
        seen = np.maximum(arrival_s - self.observe_delay_s, 0.0)
        return self.state_of(np.asarray(channel.rate_at(seen), dtype=np.float64))


@dataclass(frozen=True)
class OraclePolicy:
    """A reference no real node can run: each task takes, of ``pipelines``, the one that would
    finish it first if it met no queue, knowing the rate every link will have while it sends
    (the channel's realisation) and its own work. Without queueing no policy over the same
    pipelines does better for any task, so it bounds them all from below at light load; under
    load it is a reference, not a bound (sending everyone the same way can queue)."""

    pipelines: tuple[Pipeline, ...]

    def __post_init__(self) -> None:
        _check_pipelines("OraclePolicy", self.pipelines)

    @property
    def states(self) -> int:
        return len(self.pipelines)


Policy = SplitPolicy | OraclePolicy
"""What :func:`sim.simulate` runs besides a plain pipeline: one pipeline per task, chosen."""


def thresholds_of(rates: NDArray[np.float64], states: int) -> tuple[float, ...]:
    """Thresholds that cut sampled ``rates`` into at most ``states`` states: between its
    distinct rates where it has ``states`` or fewer (a Gilbert-Elliott link: its two rates,
    whatever their time shares), else at the quantiles k / states (equal quantiles merge).
    State k holds the rates with k thresholds at or below them."""
    if states < 1:
        raise ValueError(f"states must be >= 1, got {states}")
    distinct = np.unique(rates)
    if distinct.size <= states:
        return tuple(float(r) for r in distinct[1:])
    cuts = np.quantile(rates, np.arange(1, states) / states, method="higher")
    return tuple(sorted({float(c) for c in cuts if c > distinct[0]}))


def rate_thresholds(channel: RateProcess, states: int, *, horizon_s: float,
                    samples: int = 20_000) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Thresholds that cut ``channel``'s rate into at most ``states`` states
    (:func:`thresholds_of`), and the share of time in each, from the rate sampled at
    ``samples`` evenly spaced times over ``[0, horizon_s)`` (take a horizon of many coherence
    times or sojourns)."""
    if not (horizon_s > 0 and math.isfinite(horizon_s)):
        raise ValueError(f"horizon_s must be > 0, got {horizon_s}")
    rates = np.asarray(channel.rate_at(np.linspace(0.0, horizon_s, samples, endpoint=False)),
                       dtype=np.float64)
    thresholds = thresholds_of(rates, states)
    state = np.searchsorted(np.asarray(thresholds), rates, side="right")
    shares = np.bincount(state, minlength=len(thresholds) + 1) / rates.size
    return thresholds, tuple(float(s) for s in shares)


def stage_key(stage: Stage) -> tuple[str, ...]:
    """What makes two stages of different pipelines the same queue visit: the node or the
    link's direction, and the pass (forward, backward or none)."""
    phase = stage.phase or ""
    if isinstance(stage, Compute):
        return ("compute", stage.node, phase)
    return ("transfer", stage.src, stage.dst, phase)


def merge_pipelines(pipelines: Sequence[Pipeline]) -> tuple[Pipeline, list[list[int]]]:
    """One sequence of stages of which every pipeline is a subsequence, and for each pipeline
    the merged position of each of its stages.

    The merged stage holds the first pipeline's stage of its key (the label; work is per
    pipeline, in :class:`sim.network.Plan`). Pipelines that visit the same key twice, or in
    orders no single sequence can hold (A before B in one, B before A in another), or give one
    compute stage different work distributions, raise ``ValueError``.
    """
    order = nx.DiGraph()
    first: dict[tuple[str, ...], Stage] = {}
    rank: dict[tuple[str, ...], tuple[int, int]] = {}
    for k, pipeline in enumerate(pipelines):
        keys = [stage_key(s) for s in pipeline]
        if len(set(keys)) != len(keys):
            raise ValueError(f"pipeline {k} visits a stage twice; a policy's pipelines must "
                             "each visit a node or link (per pass) at most once")
        for pos, (key, stage) in enumerate(zip(keys, pipeline, strict=True)):
            order.add_node(key)
            rank.setdefault(key, (k, pos))
            held = first.setdefault(key, stage)
            if isinstance(stage, Compute) and isinstance(held, Compute) and (
                    (stage.distribution, stage.cv) != (held.distribution, held.cv)):
                raise ValueError(f"pipelines {rank[key][0]} and {k} give {stage.label} different "
                                 "work distributions")
        order.add_edges_from(itertools.pairwise(keys))
    try:
        merged = list(nx.lexicographical_topological_sort(order, key=lambda key: rank[key]))
    except nx.NetworkXUnfeasible:
        raise ValueError("the policy's pipelines visit nodes and links in orders that no single "
                         "sequence holds (A before B in one, B before A in another)") from None
    where = {key: i for i, key in enumerate(merged)}
    positions = [[where[stage_key(s)] for s in p] for p in pipelines]
    return tuple(first[key] for key in merged), positions
