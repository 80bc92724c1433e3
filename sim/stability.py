"""Offered load: is a pipeline stable on a scenario's network, before simulating it?

A queue whose offered utilisation rho = (arrival rate x mean work per arrival) / (servers x
service rate) is at or over 1 has no steady state (Kleinrock, Queueing Systems I, section 2.1 for
G/G/1; the same condition per server for G/G/c): its queue grows with the run, so the latency a
finite run reports measures the run's length, not the design. For each resource of the plan:

- a node: rho = sum over sources of rate_hz x work_flops x E[work multiplier] / (servers x
  FLOP/s), where every work distribution has mean multiplier 1 (:mod:`sim.workload`);
- a link: rho = sum over sources of rate_hz x size_bits / the channel's long-run mean rate
  (:func:`sim.network.mean_rate_bps`): over a long run a time-varying link carries its mean rate.
  Rayleigh fading with log-normal shadowing is the exception: the shadowing is drawn once per
  realisation, so each run's long-run rate is the ergodic rate at its own shadowing. There the
  check uses the rate at two standard deviations of bad shadowing (our choice: a design called
  stable is stable in about 98% of realisations).

A stage that visits a resource twice (training mode's backward pass) adds twice. The arrival rate
of a source is ``rate_hz`` for Poisson and periodic arrivals; from an arrival file it is
(n - 1) / (last - first) over the first ``tasks`` times that a run replays (0 for one arrival).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .channels import rayleigh_ergodic_rate_bps
from .network import mean_rate_bps
from .scenario import FileArrivals, LinkSpec, RayleighChannel, Scenario
from .workload import Compute, Stage, read_arrival_file, stages_for_source

__all__ = ["SHADOWING_Z", "Load", "arrival_rates_hz", "offered_load", "overloaded",
           "shared_load", "stability_rate_bps"]


@dataclass(frozen=True)
class Load:
    """Offered utilisation of one resource (a node, or a link ``src->dst``)."""

    resource: str
    kind: str  # "node" or "link"
    utilisation: float

    @property
    def stable(self) -> bool:
        return self.utilisation < 1.0

    def describe(self) -> str:
        what = "node" if self.kind == "node" else "link"
        return f"{what} {self.resource} at utilisation {self.utilisation:.3g}"


SHADOWING_Z = -2.0
"""Standard deviations of shadowing at which a shadowed Rayleigh link's rate is taken."""


def arrival_rates_hz(scenario: Scenario, tasks: int | None = None) -> dict[str, float]:
    """The long-run arrival rate of each source (requests per second); from an arrival file,
    over the first ``tasks`` arrivals (default ``workload.tasks``) that a run replays."""
    w = scenario.workload
    a = w.arrivals
    if not isinstance(a, FileArrivals):
        return {s: a.rate_hz for s in w.sources}
    per = read_arrival_file(str(scenario.resolve(a.file)), w.sources)
    n = w.tasks if tasks is None else tasks
    out = {}
    for s, times in per.items():
        t = times[:n]
        span = float(t[-1] - t[0]) if t.size > 1 else 0.0
        out[s] = (t.size - 1) / span if span > 0 else 0.0 if t.size < 2 else math.inf
    return out


def stability_rate_bps(link: LinkSpec, scenario: Scenario) -> float:
    """The long-run rate a link is held to: its mean rate, or for shadowed Rayleigh fading the
    ergodic rate at :data:`SHADOWING_Z` standard deviations of shadowing (see above)."""
    ch = link.channel
    if isinstance(ch, RayleighChannel) and ch.shadowing_db > 0:
        snr = ch.snr_linear() * 10.0 ** (SHADOWING_Z * ch.shadowing_db / 10.0)
        return rayleigh_ergodic_rate_bps(ch.bandwidth_hz, snr)
    return mean_rate_bps(link, scenario)


def offered_load(scenario: Scenario, stages: Sequence[Stage],
                 tasks: int | None = None) -> list[Load]:
    """Offered utilisation of every resource the pipeline uses, in order of first use.

    ``stages`` are the stages as simulated (with training mode's backward pass, if any);
    ``tasks``: per source per run, for arrival files. A pipeline naming a node or link the
    scenario lacks raises ``ValueError``.
    """
    rates = arrival_rates_hz(scenario, tasks)
    graph = scenario.graph()
    work: dict[tuple[str, str], float] = {}
    for src in scenario.workload.sources:
        lam = rates[src]
        for stage in stages_for_source(stages, scenario.path[0], src):
            if isinstance(stage, Compute):
                if stage.node not in scenario.nodes:
                    raise ValueError(f"the pipeline computes on {stage.node!r}, "
                                     "which is not a node")
                node = scenario.nodes[stage.node]
                key = ("node", stage.node)
                rho = lam * stage.work_flops / (node.servers * node.flops_per_s)
            else:
                if not graph.has_edge(stage.src, stage.dst):
                    raise ValueError(f"the pipeline sends over {stage.src} -> {stage.dst}, "
                                     "which is not a link")
                key = ("link", f"{stage.src}->{stage.dst}")
                rate = stability_rate_bps(graph.edges[stage.src, stage.dst]["spec"], scenario)
                rho = lam * stage.size_bits / rate if rate > 0 else math.inf
            work[key] = work.get(key, 0.0) + rho
    return [Load(name, kind, rho) for (kind, name), rho in work.items()]


def shared_load(scenario: Scenario, pipelines: Sequence[Sequence[Stage]],
                shares: Sequence[float], tasks: int | None = None) -> list[Load]:
    """Offered utilisation when a share of the requests runs each pipeline (a split policy's
    states): the share-weighted sum of each pipeline's :func:`offered_load`."""
    total: dict[tuple[str, str], float] = {}
    for share, stages in zip(shares, pipelines, strict=True):
        for x in offered_load(scenario, stages, tasks):
            total[x.kind, x.resource] = total.get((x.kind, x.resource), 0.0) + share * x.utilisation
    return [Load(name, kind, rho) for (kind, name), rho in total.items()]


def overloaded(loads: Sequence[Load]) -> list[Load]:
    """The resources at or over utilisation 1, most loaded first."""
    return sorted((x for x in loads if not x.stable), key=lambda x: -x.utilisation)
