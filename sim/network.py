"""The network of one replication: queues (nodes and links) and where each stage runs.

A :class:`Plan` is what both engines read: a flat list of resources (a node with its servers and
FLOP/s, or a link with its rate process and propagation delay) and, for every source and stage,
the resource the stage uses and its base service (seconds of compute at multiplier 1, or bits).
A split policy (:mod:`sim.policy`) has one row per (pipeline, source) over the merged stages,
and a task of pipeline v and source j runs row ``v * sources + j``, skipping the stages whose
resource there is -1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from .channels import (
    BlockFadingRate,
    ConstantRate,
    GilbertElliottRate,
    RateProcess,
    TraceRate,
    rayleigh_ergodic_rate_bps,
    read_trace,
    shannon_rate_bps,
)
from .policy import OraclePolicy, Policy, SplitPolicy, merge_pipelines
from .scenario import (
    ConstantChannel,
    GilbertElliottChannel,
    LinkSpec,
    RayleighChannel,
    Scenario,
    ShannonChannel,
    TraceChannel,
)
from .seeds import children
from .workload import Compute, Stage, TaskSet, stages_for_source

__all__ = ["Plan", "Resource", "compile_plan", "make_rate_process", "mean_rate_bps"]


def make_rate_process(
    link: LinkSpec, scenario: Scenario, seed: np.random.SeedSequence
) -> RateProcess:
    """One realisation of a link's channel."""
    ch = link.channel
    if isinstance(ch, ConstantChannel):
        return ConstantRate(ch.rate_bps)
    if isinstance(ch, ShannonChannel):
        return ConstantRate(shannon_rate_bps(ch.bandwidth_hz, ch.snr_linear()))
    if isinstance(ch, RayleighChannel):
        return BlockFadingRate(
            bandwidth_hz=ch.bandwidth_hz,
            snr_linear=ch.snr_linear(),
            coherence_s=ch.coherence_s,
            shadowing_db=ch.shadowing_db,
            seed=seed,
        )
    if isinstance(ch, GilbertElliottChannel):
        return GilbertElliottRate(
            good_rate_bps=ch.good_rate_bps,
            bad_rate_bps=ch.bad_rate_bps,
            mean_good_s=ch.mean_good_s,
            mean_bad_s=ch.mean_bad_s,
            seed=seed,
        )
    if isinstance(ch, TraceChannel):
        times, rates = read_trace(str(scenario.resolve(ch.file)))
        return TraceRate(times, np.asarray(rates) * ch.scale)
    raise AssertionError(f"unhandled channel {ch!r}")  # pragma: no cover


@dataclass(frozen=True)
class Resource:
    """A FIFO queue: a node (``servers`` servers of ``flops_per_s`` FLOP/s) or a link (one
    sender)."""

    name: str
    kind: str  # "node" or "link"
    servers: int
    power_w: float
    node_kind: str = ""
    """Kind of the node that spends the energy: the node itself, or a link's sender."""
    channel: RateProcess | None = None
    propagation_s: float = 0.0


@dataclass(frozen=True)
class Plan:
    """Where every stage of every source's pipeline runs, for one replication.

    ``resource[j, k]``: index into ``resources`` of stage k for source j (row ``v * sources +
    j`` for pipeline v of a policy; -1: that row skips the stage).
    ``base[j, k]``: service at multiplier 1: seconds for compute, bits for transfers.
    ``propagation[j, k]``: delay after a transfer (0 for compute).
    ``policy``: the policy whose merged pipeline ``stages`` is (None: one pipeline);
    ``observed[j]``: the resource whose rate source j's first node observes for a
    :class:`~sim.policy.SplitPolicy`.
    """

    resources: tuple[Resource, ...]
    stages: tuple[Stage, ...]
    resource: NDArray[np.intp]
    base: NDArray[np.float64]
    propagation: NDArray[np.float64]
    is_link: NDArray[np.bool_]
    policy: Policy | None = None
    observed: tuple[int, ...] = ()

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self.stages]

    @property
    def variants(self) -> int:
        return 1 if self.policy is None else self.policy.states

    def rows(self, tasks: TaskSet) -> NDArray[np.intp]:
        """The plan row each task runs."""
        if tasks.variant is None or self.policy is None:
            return tasks.source
        return tasks.variant * (self.resource.shape[0] // self.variants) + tasks.source

    def choose(self, tasks: TaskSet) -> TaskSet:
        """``tasks`` with each one's pipeline chosen by the policy: from the rate its first node
        observes at its arrival, or (the oracle) the one that would finish it first alone
        (unchanged without a policy)."""
        if self.policy is None:
            return tasks
        variant = np.zeros(tasks.n, dtype=np.intp)
        if isinstance(self.policy, OraclePolicy):
            sources = self.resource.shape[0] // self.variants
            for j in range(sources):
                mine = np.flatnonzero(tasks.source == j)
                finish = np.stack([self.unqueued_finish(v * sources + j, tasks, mine)
                                   for v in range(self.variants)])
                variant[mine] = np.argmin(finish, axis=0)
            return replace(tasks, variant=variant)
        for j, r in enumerate(self.observed):
            mine = tasks.source == j
            channel = self.resources[r].channel
            assert channel is not None
            variant[mine] = self.policy.choose(channel, tasks.arrival_s[mine])
        return replace(tasks, variant=variant)

    def unqueued_finish(self, row: int, tasks: TaskSet, which: NDArray[np.intp]
                        ) -> NDArray[np.float64]:
        """When tasks ``which`` would finish on plan row ``row`` if they met no queue: compute
        for its (jittered) work, each transfer on the link's realised rate from when it starts
        (``C^-1(C(start) + bits)``), propagation after it."""
        t = tasks.arrival_s[which].copy()
        for s in range(self.resource.shape[1]):
            r = int(self.resource[row, s])
            if r < 0:
                continue
            channel = self.resources[r].channel
            if channel is None:
                t += self.base[row, s] * tasks.multipliers[which, s]
            else:
                sent = channel.inverse_capacity(channel.capacity(t) + self.base[row, s])
                t = np.maximum(sent, t) + self.propagation[row, s]
        return t


def compile_plan(
    scenario: Scenario, stages: Sequence[Stage] | Policy,
    channel_seed: np.random.SeedSequence
) -> Plan:
    """Resolve a pipeline, or a split policy's pipelines, against the scenario's network for
    one replication.

    The channel of the i-th entry of ``scenario.links`` comes from the i-th child of
    ``channel_seed`` (its two directions from that child's children 0 and 1), whatever the pipeline:
    two pipelines simulated with the same seed see the same channel realisations.
    """
    graph = scenario.graph()
    link_seeds = children(channel_seed, len(scenario.links))
    duplex_seeds = {i: children(link_seeds[i], 2) for i in range(len(scenario.links))}
    index: dict[tuple[str, ...], int] = {}
    resources: list[Resource] = []

    def node_resource(name: str) -> int:
        key = ("node", name)
        if key not in index:
            spec = scenario.nodes[name]
            index[key] = len(resources)
            resources.append(Resource(name, "node", spec.servers, spec.power_w, spec.kind))
        return index[key]

    def link_resource(src: str, dst: str) -> int:
        key = ("link", src, dst)
        if key not in index:
            if not graph.has_edge(src, dst):
                raise ValueError(f"the pipeline sends over {src} -> {dst}, which is not a link")
            edge = graph.edges[src, dst]
            link: LinkSpec = edge["spec"]
            i = edge["index"]
            seed = duplex_seeds[i][1] if edge["reverse"] else duplex_seeds[i][0]
            index[key] = len(resources)
            resources.append(
                Resource(
                    f"{src}->{dst}",
                    "link",
                    1,
                    link.tx_power_w(),
                    scenario.nodes[src].kind,
                    channel=make_rate_process(link, scenario, seed),
                    propagation_s=link.propagation_s,
                )
            )
        return index[key]

    policy = stages if isinstance(stages, SplitPolicy | OraclePolicy) else None
    if not isinstance(stages, SplitPolicy | OraclePolicy):
        variants: Sequence[Sequence[Stage]] = (tuple(stages),)
        merged = tuple(stages)
        positions = [list(range(len(merged)))]
    else:
        variants = stages.pipelines
        merged, positions = merge_pipelines(stages.pipelines)
    first = scenario.path[0]
    sources = scenario.workload.sources
    n, k = len(sources), len(merged)
    res = np.full((len(variants) * n, k), -1, dtype=np.intp)
    base = np.zeros((len(variants) * n, k))
    prop = np.zeros((len(variants) * n, k))
    for v, pipeline in enumerate(variants):
        for j, src in enumerate(sources):
            row = v * n + j
            for s, stage in zip(positions[v], stages_for_source(pipeline, first, src),
                                strict=True):
                if isinstance(stage, Compute):
                    if stage.node not in scenario.nodes:
                        raise ValueError(
                            f"the pipeline computes on {stage.node!r}, which is not a node"
                        )
                    r = node_resource(stage.node)
                    base[row, s] = stage.work_flops / scenario.nodes[stage.node].flops_per_s
                else:
                    r = link_resource(stage.src, stage.dst)
                    base[row, s] = stage.size_bits
                    prop[row, s] = resources[r].propagation_s
                res[row, s] = r
    observed: tuple[int, ...] = ()
    if isinstance(policy, SplitPolicy) and policy.states > 1:
        a, b = policy.link
        links = [(src if a == first else a, b) for src in sources]
        for u, w in links:
            if not graph.has_edge(u, w):
                raise ValueError(f"the policy observes {u} -> {w}, which is not a link")
        observed = tuple(link_resource(u, w) for u, w in links)
    is_link = np.array([not isinstance(s, Compute) for s in merged], dtype=bool)
    return Plan(tuple(resources), tuple(merged), res, base, prop, is_link, policy, observed)


def mean_rate_bps(link: LinkSpec, scenario: Scenario) -> float:
    """The long-run mean rate of a link's channel (bit/s), for planning without simulation.

    Constant and Shannon: the rate; Rayleigh: the ergodic rate (closed form, see
    :func:`sim.channels.rayleigh_ergodic_rate_bps`); Gilbert-Elliott: the stationary mean
    (rate_good T_good + rate_bad T_bad) / (T_good + T_bad); trace: its time average.
    """
    ch = link.channel
    if isinstance(ch, ConstantChannel):
        return ch.rate_bps
    if isinstance(ch, ShannonChannel):
        return shannon_rate_bps(ch.bandwidth_hz, ch.snr_linear())
    if isinstance(ch, RayleighChannel):
        return rayleigh_ergodic_rate_bps(ch.bandwidth_hz, ch.snr_linear(), ch.shadowing_db)
    if isinstance(ch, GilbertElliottChannel):
        return (ch.good_rate_bps * ch.mean_good_s + ch.bad_rate_bps * ch.mean_bad_s) / (
            ch.mean_good_s + ch.mean_bad_s)
    if isinstance(ch, TraceChannel):
        times, rates = read_trace(str(scenario.resolve(ch.file)))
        return TraceRate(times, np.asarray(rates) * ch.scale).mean_rate_bps
    raise AssertionError(f"unhandled channel {ch!r}")  # pragma: no cover
