"""The exact optimal split of a fixed architecture along a route, by dynamic programming.

Latency model (no queueing, our choice for planning): a node runs its blocks at its per-server
FLOP/s; a hop sends its bits at the link's long-run mean rate (:func:`sim.network.mean_rate_bps`)
and adds its propagation delay; the request is done at the node that runs the last block (see
:mod:`search.pipeline`). With positions 0 <= p_1 <= ... <= p_H <= n (H hops, n blocks),

    A_0(q)     = 0 if q = 0, else infinity       (node j holds blocks [0, q) at time A_j(q))
    D_j(p)     = min_{q <= p} A_j(q) + C_j(q, p)
    A_{j+1}(p) = D_j(p) + T_j(p)
    best       = min_j D_j(n)

where C_j(a, b) is node j's time for blocks [a, b) and T_j(p) hop j's time for what a split at p
sends: O(H n^2) instead of the C(n + H, H) split vectors. A node whose segment does not fit its
``memory_bytes`` makes that choice infeasible (infinite cost).

In training mode (split learning, :mod:`search.pipeline`) a request also runs the backward pass:
with no queueing its stages add up, so node j's cost becomes (1 + factor) C_j(a, b) and hop j's
T_j(p) gains the gradient's trip back over the reverse link, G(p) / rate + propagation, for
p > 0 (nothing goes back to a node that holds no block). A route whose reverse link is missing
cannot train across that hop.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from models.build import Cut
from models.profile import ModelProfile
from models.spec import ArchSpec
from sim.network import mean_rate_bps
from sim.scenario import Scenario
from sim.workload import Compute

from .design import Design
from .pipeline import design_pipeline, segment_costs

__all__ = ["SplitPlan", "brute_force_split", "no_queue_latency", "optimal_split"]


@dataclass(frozen=True)
class SplitPlan:
    positions: tuple[int, ...]
    latency_s: float


@dataclass(frozen=True)
class _Route:
    node_rate: list[float]
    memory: list[float]
    link_rate: list[float]
    prop: list[float]
    back_rate: list[float]  # the reverse links, for training's gradients (0: no such link)
    back_prop: list[float]


def _route_rates(scenario: Scenario, route: tuple[str, ...]) -> _Route:
    graph = scenario.graph()
    r = _Route([scenario.nodes[v].flops for v in route],
               [scenario.nodes[v].memory_bytes or math.inf for v in route], [], [], [], [])
    for u, v in itertools.pairwise(route):
        spec = graph.edges[u, v]["spec"]
        r.link_rate.append(mean_rate_bps(spec, scenario))
        r.prop.append(spec.propagation_s)
        back = graph.edges[v, u]["spec"] if graph.has_edge(v, u) else None
        r.back_rate.append(0.0 if back is None else mean_rate_bps(back, scenario))
        r.back_prop.append(0.0 if back is None else back.propagation_s)
    return r


def _backward_factor(scenario: Scenario) -> float | None:
    w = scenario.workload
    return w.backward_flops_factor if w.mode == "training" else None


def no_queue_latency(design: Design, profile: ModelProfile, scenario: Scenario) -> float:
    """Latency of one request alone on the network: the sum of its pipeline's stages
    (:func:`search.pipeline.design_pipeline`, with training's backward pass in training mode),
    compute at one server's FLOP/s, transfers at the link's mean rate plus propagation.
    Infinite when a segment does not fit its node's memory or a link is missing."""
    route = _route_rates(scenario, design.route)
    for cost, limit in zip(segment_costs(design, profile, scenario.input_bits_per_element),
                           route.memory, strict=False):
        if cost.memory_bytes > limit:
            return math.inf
    graph = scenario.graph()
    total = 0.0
    for stage in design_pipeline(design, profile, scenario.input_bits_per_element,
                                 backward_flops_factor=_backward_factor(scenario)):
        if isinstance(stage, Compute):
            total += stage.work_flops / scenario.nodes[stage.node].flops
        elif not graph.has_edge(stage.src, stage.dst):
            return math.inf
        else:
            spec = graph.edges[stage.src, stage.dst]["spec"]
            total += stage.size_bits / mean_rate_bps(spec, scenario) + spec.propagation_s
    return total


def optimal_split(profile: ModelProfile, scenario: Scenario, route: tuple[str, ...],
                  arch_blocks: int | None = None) -> SplitPlan:
    """The split positions that minimise :func:`no_queue_latency` (plain cuts, no compression;
    in training mode with the backward pass)."""
    n = len(profile.blocks) if arch_blocks is None else arch_blocks
    hops = len(route) - 1
    r = _route_rates(scenario, route)
    factor = _backward_factor(scenario)
    work = 1.0 + (factor or 0.0)  # forward and, in training mode, backward
    prefix = [0]
    for b in profile.blocks:
        prefix.append(prefix[-1] + b.flops)
    bits = [profile.sent_bits(p, scenario.input_bits_per_element) for p in range(n + 1)]
    grads = [profile.gradient_bits(p) if factor is not None else 0 for p in range(n + 1)]

    def compute(j: int, a: int, b: int) -> float:
        if profile.segment_memory_bytes(a, b) > r.memory[j]:
            return math.inf
        return work * (prefix[b] - prefix[a]) / r.node_rate[j]

    def hop(j: int, p: int) -> float:
        t = bits[p] / r.link_rate[j] + r.prop[j]
        if grads[p] > 0:
            back = r.back_rate[j]
            t += grads[p] / back + r.back_prop[j] if back > 0 else math.inf
        return t

    # arrive[q]: the lowest time at which node j holds the output of blocks [0, q)
    arrive = [0.0] + [math.inf] * n
    back: list[list[int]] = []
    best, end = math.inf, 0
    for j in range(hops + 1):
        done, arg = [], []  # done[p]: node j has run blocks [q, p) for the best q
        for p in range(n + 1):
            cost, where = math.inf, 0
            for q in range(p + 1):
                c = arrive[q] + compute(j, q, p)
                if c < cost:
                    cost, where = c, q
            done.append(cost)
            arg.append(where)
        back.append(arg)
        if done[n] < best:  # the request may end at node j (later nodes receive nothing)
            best, end = done[n], j
        if j < hops:
            arrive = [done[p] + hop(j, p) for p in range(n + 1)]
    starts, p = [], n
    for j in range(end, 0, -1):
        p = back[j][p]  # node j ran blocks [p, ...): hop j - 1 carries position p
        starts.append(p)
    return SplitPlan((*reversed(starts), *[n] * (hops - end)), best)


def brute_force_split(profile: ModelProfile, scenario: Scenario, route: tuple[str, ...],
                      arch: ArchSpec) -> SplitPlan:
    """The same optimum by trying every split vector (for tests: C(n + H, H) designs)."""
    n, hops = arch.n_blocks, len(route) - 1
    best = SplitPlan((), math.inf)
    for positions in itertools.combinations_with_replacement(range(n + 1), hops):
        design = Design(arch, route, tuple(Cut(p) for p in positions))
        latency = no_queue_latency(design, profile, scenario)
        if latency < best.latency_s:
            best = SplitPlan(positions, latency)
    return best
