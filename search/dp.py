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
sends: O(H n^2) instead of the C(n + H, H) split vectors (O(H n^2 K^2) with K compression
options per cut, :func:`optimal_design`). A node whose segment does not fit its
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
from collections.abc import Sequence
from dataclasses import dataclass

from models.profile import ModelProfile, profile_model
from models.spec import BIT_WIDTHS, BOTTLENECKS, ArchSpec, Cut
from sim.network import mean_rate_bps
from sim.scenario import Scenario
from sim.workload import Compute

from .design import Design
from .pipeline import design_pipeline, segment_costs

__all__ = ["COMPRESSIONS", "PLAIN", "SplitPlan", "brute_force_design", "brute_force_split",
           "no_queue_latency", "optimal_design", "optimal_split"]


@dataclass(frozen=True)
class SplitPlan:
    cuts: tuple[Cut, ...]
    latency_s: float

    @property
    def positions(self) -> tuple[int, ...]:
        return tuple(c.position for c in self.cuts)


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
    r = _Route([scenario.nodes[v].flops_per_s for v in route],
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
            total += stage.work_flops / scenario.nodes[stage.node].flops_per_s
        elif not graph.has_edge(stage.src, stage.dst):
            return math.inf
        else:
            spec = graph.edges[stage.src, stage.dst]["spec"]
            total += stage.size_bits / mean_rate_bps(spec, scenario) + spec.propagation_s
    return total


PLAIN: tuple[float, int] = (1.0, 32)
"""A cut without compression: (bottleneck, bits)."""
COMPRESSIONS: tuple[tuple[float, int], ...] = tuple(
    (b, bits) for b in BOTTLENECKS for bits in BIT_WIDTHS)
"""Every compression a cut may carry, the plain one first."""


def optimal_split(profile: ModelProfile, scenario: Scenario, route: tuple[str, ...],
                  arch_blocks: int | None = None) -> SplitPlan:
    """The split positions that minimise :func:`no_queue_latency` (plain cuts, no compression;
    in training mode with the backward pass)."""
    n = len(profile.blocks) if arch_blocks is None else arch_blocks
    return _plan(_route_rates(scenario, route), n, [profile], scenario)


def optimal_design(arch: ArchSpec, scenario: Scenario, route: tuple[str, ...],
                   compressions: Sequence[tuple[float, int]] = COMPRESSIONS,
                   num_classes: int = 10) -> tuple[Design, float]:
    """The cuts (positions and, at each, one of ``compressions``: (bottleneck, bits) pairs,
    the plain cut always allowed) that minimise :func:`no_queue_latency`, and that latency.

    The same recursion as :func:`optimal_split` over states (position, compression of the cut
    at it): a node that runs blocks [q, p) pays the decoder of the cut at q and the encoder of
    the cut at p; a node that runs nothing forwards the cut as it came (two hops at one position
    share its compression). Accuracy is not considered: the lowest latency wins, codec FLOPs
    and memory included (a plain cut where compressing would not pay)."""
    options = [PLAIN, *(c for c in dict.fromkeys(compressions) if c != PLAIN)]
    n = arch.n_blocks
    profiles = [profile_model(arch, scenario.input_shape, num_classes)]
    profiles += [profile_model(arch, scenario.input_shape, num_classes,
                               cuts=[Cut(p, b, bits) for p in range(1, n)])
                 for b, bits in options[1:]]
    plan = _plan(_route_rates(scenario, route), n, profiles, scenario)
    return Design(arch, route, plan.cuts), plan.latency_s


@dataclass(frozen=True)
class _Codec:
    """Per position: what a cut of one compression option sends and costs (zeros: none)."""

    bits: list[int]
    grads: list[int]
    enc_flops: list[int]
    dec_flops: list[int]
    enc_bytes: list[int]
    dec_bytes: list[int]


def _codec_table(profile: ModelProfile, n: int, input_bits: int, training: bool) -> _Codec:
    t = _Codec([], [], [], [], [], [])
    for p in range(n + 1):
        t.bits.append(profile.sent_bits(p, input_bits))
        t.grads.append(profile.gradient_bits(p) if training else 0)
        c = profile.codec(p)
        t.enc_flops.append(c.encoder_flops if c else 0)
        t.dec_flops.append(c.decoder_flops if c else 0)
        t.enc_bytes.append(4 * c.encoder_params if c else 0)
        t.dec_bytes.append(4 * c.decoder_params if c else 0)
    return t


def _plan(r: _Route, n: int, profiles: Sequence[ModelProfile], scenario: Scenario) -> SplitPlan:
    """The recursion of the module docstring over states (position p, compression option k):
    ``profiles[k]`` carries option k's codec at every interior position (``profiles[0]``: none).
    """
    hops = len(r.node_rate) - 1
    factor = _backward_factor(scenario)
    work = 1.0 + (factor or 0.0)  # forward and, in training mode, backward
    plain = profiles[0]
    prefix = [0]
    for block in plain.blocks[:n]:
        prefix.append(prefix[-1] + block.flops)
    tables = [_codec_table(pr, n, scenario.input_bits_per_element, factor is not None)
              for pr in profiles]
    options = range(len(profiles))
    # option k at position p: only strictly between blocks may a cut compress
    valid = [[k == 0 or 0 < p < n for k in options] for p in range(n + 1)]

    def compute(j: int, q: int, kin: int, p: int, kout: int) -> float:
        a, b = tables[kin], tables[kout]
        memory = plain.segment_memory_bytes(q, p) + a.dec_bytes[q] + b.enc_bytes[p]
        if memory > r.memory[j]:
            return math.inf
        flops = prefix[p] - prefix[q] + a.dec_flops[q] + b.enc_flops[p]
        return work * flops / r.node_rate[j]

    def hop(j: int, p: int, k: int) -> float:
        t = tables[k].bits[p] / r.link_rate[j] + r.prop[j]
        grad = tables[k].grads[p]
        if grad > 0:
            t += grad / r.back_rate[j] + r.back_prop[j] if r.back_rate[j] > 0 else math.inf
        return t

    inf = math.inf
    # arrive[p][k]: the lowest time at which node j holds the output of blocks [0, p), sent
    # through a cut of option k
    arrive = [[0.0 if p == 0 and k == 0 else inf for k in options] for p in range(n + 1)]
    back: list[list[list[tuple[int, int]]]] = []  # per node: (q, kin) behind done[p][k]
    best, end = inf, 0
    for j in range(hops + 1):
        done = [row[:] for row in arrive]  # running nothing forwards what came, as it came
        arg = [[(p, k) for k in options] for p in range(n + 1)]
        for p in range(1, n + 1):
            for kout in options:
                if not valid[p][kout]:
                    continue
                for q in range(p):
                    for kin in options:
                        if arrive[q][kin] < inf:
                            c = arrive[q][kin] + compute(j, q, kin, p, kout)
                            if c < done[p][kout]:
                                done[p][kout], arg[p][kout] = c, (q, kin)
        back.append(arg)
        if done[n][0] < best:  # the request may end at node j (later nodes receive nothing)
            best, end = done[n][0], j
        if j < hops:
            arrive = [[done[p][k] + hop(j, p, k) if valid[p][k] and done[p][k] < inf else inf
                       for k in options] for p in range(n + 1)]
    cuts: list[Cut] = []
    p, k = n, 0
    for j in range(end, 0, -1):
        p, k = back[j][p][k]  # node j starts at blocks [p, ...): hop j - 1 carries that cut
        cuts.append(Cut(p, *_option(profiles[k], p)))
    cuts.reverse()
    return SplitPlan((*cuts, *[Cut(n)] * (hops - end)), best)


def _option(profile: ModelProfile, position: int) -> tuple[float, int]:
    codec = profile.codec(position)
    return PLAIN if codec is None else (codec.cut.bottleneck, codec.cut.bits)


def brute_force_split(profile: ModelProfile, scenario: Scenario, route: tuple[str, ...],
                      arch: ArchSpec) -> SplitPlan:
    """The same optimum by trying every split vector (for tests: C(n + H, H) designs)."""
    n, hops = arch.n_blocks, len(route) - 1
    best = SplitPlan((), math.inf)  # cuts plain: see brute_force_design for compression
    for positions in itertools.combinations_with_replacement(range(n + 1), hops):
        design = Design(arch, route, tuple(Cut(p) for p in positions))
        latency = no_queue_latency(design, profile, scenario)
        if latency < best.latency_s:
            best = SplitPlan(design.cuts, latency)
    return best


def brute_force_design(arch: ArchSpec, scenario: Scenario, route: tuple[str, ...],
                       compressions: Sequence[tuple[float, int]] = COMPRESSIONS,
                       num_classes: int = 10) -> tuple[Design, float]:
    """The optimum of :func:`optimal_design` by trying every split vector and every
    compression of every interior cut, each scored by :func:`no_queue_latency` (for tests)."""
    n, hops = arch.n_blocks, len(route) - 1
    options = list(dict.fromkeys([PLAIN, *compressions]))
    best: tuple[Design | None, float] = (None, math.inf)
    for positions in itertools.combinations_with_replacement(range(n + 1), hops):
        interior = sorted({p for p in positions if 0 < p < n})
        for choice in itertools.product(options, repeat=len(interior)):
            comp = dict(zip(interior, choice, strict=True))
            cuts = tuple(Cut(p, *comp[p]) if p in comp else Cut(p) for p in positions)
            design = Design(arch, route, cuts)
            profile = profile_model(arch, scenario.input_shape, num_classes,
                                    cuts=design.compressing_cuts)
            latency = no_queue_latency(design, profile, scenario)
            if latency < best[1]:
                best = (design, latency)
    assert best[0] is not None, "no design at all"
    return best[0], best[1]
