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

from .design import Design
from .pipeline import segment_costs

__all__ = ["SplitPlan", "brute_force_split", "no_queue_latency", "optimal_split"]


@dataclass(frozen=True)
class SplitPlan:
    positions: tuple[int, ...]
    latency_s: float


def _route_rates(scenario: Scenario, route: tuple[str, ...]) -> tuple[list[float], list[float],
                                                                        list[float], list[float]]:
    graph = scenario.graph()
    node_rate = [scenario.nodes[v].flops for v in route]
    memory = [scenario.nodes[v].memory_bytes or math.inf for v in route]
    link_rate, prop = [], []
    for u, v in itertools.pairwise(route):
        spec = graph.edges[u, v]["spec"]
        link_rate.append(mean_rate_bps(spec, scenario))
        prop.append(spec.propagation_s)
    return node_rate, memory, link_rate, prop


def no_queue_latency(design: Design, profile: ModelProfile, scenario: Scenario) -> float:
    """Latency of one request alone on the network, under the planning model above."""
    node_rate, memory, link_rate, prop = _route_rates(scenario, design.route)
    total = 0.0
    costs = segment_costs(design, profile, scenario.input_bits_per_element)
    for j, cost in enumerate(costs):
        if cost.memory_bytes > memory[j]:
            return math.inf
        total += cost.flops / node_rate[j]
        if j < len(costs) - 1:  # the request is done at the last node that computes
            total += cost.sent_bits / link_rate[j] + prop[j]
    return total


def optimal_split(profile: ModelProfile, scenario: Scenario, route: tuple[str, ...],
                  arch_blocks: int | None = None) -> SplitPlan:
    """The split positions that minimise :func:`no_queue_latency` (plain cuts, no compression)."""
    n = len(profile.blocks) if arch_blocks is None else arch_blocks
    hops = len(route) - 1
    node_rate, memory, link_rate, prop = _route_rates(scenario, route)
    prefix = [0]
    for b in profile.blocks:
        prefix.append(prefix[-1] + b.flops)
    bits = [profile.sent_bits(p, scenario.input_bits_per_element) for p in range(n + 1)]

    def compute(j: int, a: int, b: int) -> float:
        if profile.segment_memory_bytes(a, b) > memory[j]:
            return math.inf
        return (prefix[b] - prefix[a]) / node_rate[j]

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
            arrive = [done[p] + bits[p] / link_rate[j] + prop[j] for p in range(n + 1)]
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
