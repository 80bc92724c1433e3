"""Run-time split policies for one architecture: the split chosen per request from the channel.

The first node of the route observes its uplink's current rate (:mod:`sim.policy`), which falls
in one of K states cut at quantiles of the link's rate distribution (:func:`channel_states`).
Each state has a representative rate, the *harmonic* mean of the rates in it: a transfer of b
bits that meets rates r takes b E[1/r] on average when the state outlasts it, so the harmonic
mean is the rate at which the no-queueing plan (:mod:`search.dp`) prices a transfer right. The
planners here build the designs of a policy from those rates:

- :func:`dp_policy`: the DP's optimal cuts for each state's rate (the policy a joint search
  seeds from);
- :func:`oracle_policy`: per request, the best of the DP designs for a fine grid of rates, on
  the channel realisation itself (:class:`sim.policy.OraclePolicy`);
- :func:`threshold_policy`: the LENS-style policy: three fixed options (everything on the first
  node, the static DP design, the raw input offloaded) switched at the rates where the best of
  them changes;
- :func:`bottleneck_policy`: per state, the best design among those whose first cut sends less
  than the raw input (the natural bottlenecks of the architecture), or nothing at all.

A state whose harmonic-mean rate is zero (an outage) is priced at 1 bit/s: nothing is sent.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from models.profile import ModelProfile, profile_model
from models.spec import ArchSpec, Cut
from sim.network import make_rate_process
from sim.policy import OraclePolicy, SplitPolicy, thresholds_of
from sim.scenario import (
    ConstantChannel,
    GilbertElliottChannel,
    LinkSpec,
    RayleighChannel,
    Scenario,
    TraceChannel,
)
from sim.workload import Stage

from .design import Design
from .dp import PLAIN, no_queue_latency, optimal_design

__all__ = ["ChannelStates", "bottleneck_policy", "channel_states", "dp_policy", "oracle_policy",
           "policy_of", "state_scenario", "threshold_policy"]

PipelineFn = Callable[[Design, ModelProfile], tuple[Stage, ...]]
"""Builds the stages of a design (:meth:`search.evaluate.Evaluator.pipeline`)."""

_HORIZON_UNITS = 2000
"""The rate distribution is estimated over this many coherence times, sojourn cycles or trace
lengths of the channel."""


@dataclass(frozen=True)
class ChannelStates:
    """The states of an observed link: thresholds between them, each one's time share and
    representative (harmonic-mean) rate."""

    link: tuple[str, str]
    thresholds_bps: tuple[float, ...]
    shares: tuple[float, ...]
    rates_bps: tuple[float, ...]

    @property
    def count(self) -> int:
        return len(self.rates_bps)


def _link(scenario: Scenario, link: tuple[str, str]) -> LinkSpec:
    graph = scenario.graph()
    if not graph.has_edge(*link):
        raise ValueError(f"scenario {scenario.name!r} has no link {link[0]} -> {link[1]} to "
                         "observe")
    spec: LinkSpec = graph.edges[link]["spec"]
    return spec


def _horizon_s(spec: LinkSpec, scenario: Scenario) -> float:
    ch = spec.channel
    if isinstance(ch, RayleighChannel):
        return _HORIZON_UNITS * ch.coherence_s
    if isinstance(ch, GilbertElliottChannel):
        return _HORIZON_UNITS * (ch.mean_good_s + ch.mean_bad_s)
    if isinstance(ch, TraceChannel):
        from sim.channels import read_trace

        times, _ = read_trace(str(scenario.resolve(ch.file)))
        return float(times[-1] - times[0]) or 1.0  # the trace once: it repeats after
    return 1.0


def channel_states(scenario: Scenario, states: int, link: tuple[str, str] | None = None,
                   seed: int = 0, samples: int = 50_000) -> ChannelStates:
    """Cut the rate of ``link`` (default: the path's first hop) into at most ``states`` states
    of about equal time share (:func:`sim.policy.thresholds_of`: a Gilbert-Elliott link has
    two states for any ``states`` >= 2), from one long realisation drawn with ``seed``."""
    if states < 1:
        raise ValueError(f"states must be >= 1, got {states}")
    if link is None:
        if len(scenario.path) < 2:
            raise ValueError(f"scenario {scenario.name!r}: a split policy observes the uplink "
                             "of the path's first node, and the path has one node")
        link = (scenario.path[0], scenario.path[1])
    spec = _link(scenario, link)
    channel = make_rate_process(spec, scenario, np.random.SeedSequence([seed, 15]))
    horizon = _horizon_s(spec, scenario)
    t = np.linspace(0.0, horizon, samples, endpoint=False)
    rates = np.asarray(channel.rate_at(t), dtype=np.float64)
    thresholds = thresholds_of(rates, states)
    state = np.searchsorted(np.asarray(thresholds), rates, side="right")
    shares, means = [], []
    for k in range(len(thresholds) + 1):
        r = rates[state == k]
        shares.append(r.size / rates.size)
        means.append(0.0 if np.any(r <= 0) else float(r.size / np.sum(1.0 / r)))
    return ChannelStates(link, thresholds, tuple(shares), tuple(means))


def state_scenario(scenario: Scenario, link: tuple[str, str], rate_bps: float) -> Scenario:
    """``scenario`` with ``link`` at the constant ``rate_bps`` (1 bit/s for an outage), for
    planning a state."""
    index = scenario.graph().edges[link]["index"]
    old = scenario.links[index]
    channel = ConstantChannel(model="constant", rate_bps=max(rate_bps, 1.0),
                              tx_power_w=old.tx_power_w())
    links = list(scenario.links)
    links[index] = old.model_copy(update={"channel": channel})
    return scenario.model_copy(update={"links": links})


def policy_of(designs: Sequence[Design], states: ChannelStates, scenario: Scenario,
              pipeline: PipelineFn, num_classes: int = 10,
              observe_delay_s: float = 0.0) -> SplitPolicy:
    """The split policy that runs ``designs[k]`` in state k."""
    if len(designs) != states.count:
        raise ValueError(f"{states.count} states need {states.count} designs, "
                         f"got {len(designs)}")
    pipelines = tuple(pipeline(d, profile_model(d.arch, scenario.input_shape, num_classes,
                                                cuts=d.compressing_cuts)) for d in designs)
    return SplitPolicy(pipelines, states.thresholds_bps, states.link, observe_delay_s,
                       shares=states.shares)


def dp_policy(arch: ArchSpec, scenario: Scenario, route: tuple[str, ...], states: ChannelStates,
              compressions: Sequence[tuple[float, int]] = (PLAIN,),
              num_classes: int = 10) -> list[Design]:
    """Per state, the cuts of least no-queueing latency at the state's rate."""
    return [optimal_design(arch, state_scenario(scenario, states.link, rate), route,
                           compressions, num_classes)[0] for rate in states.rates_bps]


def oracle_policy(arch: ArchSpec, scenario: Scenario, route: tuple[str, ...],
                  pipeline: PipelineFn, compressions: Sequence[tuple[float, int]] = (PLAIN,),
                  grid: int = 32, num_classes: int = 10) -> OraclePolicy:
    """Every design the DP picks for a rate of the link (``grid`` quantile states, plus the
    static design at the mean rate), each request on whichever would finish it first alone."""
    states = channel_states(scenario, grid)
    designs = dp_policy(arch, scenario, route, states, compressions, num_classes)
    designs.append(optimal_design(arch, scenario, route, compressions, num_classes)[0])
    unique = list(dict.fromkeys(designs))
    return OraclePolicy(tuple(
        pipeline(d, profile_model(arch, scenario.input_shape, num_classes,
                                  cuts=d.compressing_cuts)) for d in unique))


def _best_per_state(options: Sequence[Design], scenario: Scenario, states: ChannelStates,
                    num_classes: int) -> list[Design]:
    out = []
    for rate in states.rates_bps:
        planned = state_scenario(scenario, states.link, rate)
        out.append(min(options, key=lambda d: no_queue_latency(
            d, profile_model(d.arch, scenario.input_shape, num_classes,
                             cuts=d.compressing_cuts), planned)))
    return out


def _merge_runs(designs: Sequence[Design], states: ChannelStates
                ) -> tuple[list[Design], ChannelStates]:
    """Neighbouring states with one design become one state (a threshold policy)."""
    keep = [0] + [k for k in range(1, len(designs)) if designs[k] != designs[k - 1]]
    thresholds = tuple(states.thresholds_bps[k - 1] for k in keep[1:])
    bounds = [*keep, len(designs)]
    shares = tuple(sum(states.shares[a:b]) for a, b in itertools.pairwise(bounds))
    rates = tuple(states.rates_bps[a] for a in keep)  # a label only: planning is done
    return [designs[k] for k in keep], ChannelStates(states.link, thresholds, shares, rates)


def threshold_policy(arch: ArchSpec, scenario: Scenario, route: tuple[str, ...],
                     grid: int = 32, num_classes: int = 10
                     ) -> tuple[list[Design], ChannelStates]:
    """The LENS-style policy: all on the first node, the static DP design (plain cuts, at the
    link's mean rate) or the raw input sent on (the rest placed by the DP), whichever is fastest
    alone at each of ``grid`` quantile states' rates; the states where it does not change
    merge, so at most three remain, split at two thresholds."""
    n = arch.n_blocks
    hops = len(route) - 1
    local = Design(arch, route, tuple(Cut(n) for _ in range(hops)))
    static = optimal_design(arch, scenario, route, (PLAIN,), num_classes)[0]
    if hops == 1:
        offload = Design(arch, route, (Cut(0),))
    else:  # the raw input to the second node, the rest as the DP places it from there
        rest = optimal_design(arch, scenario, route[1:], (PLAIN,), num_classes)[0]
        offload = Design(arch, route, (Cut(0), *rest.cuts))
    states = channel_states(scenario, grid)
    picks = _best_per_state([local, static, offload], scenario, states, num_classes)
    return _merge_runs(picks, states)


def bottleneck_policy(arch: ArchSpec, scenario: Scenario, route: tuple[str, ...],
                      states: ChannelStates, num_classes: int = 10) -> list[Design]:
    """Per state, the fastest design alone at its rate whose first cut is at a natural
    bottleneck (it sends fewer bits than the raw input) or that sends nothing (all on the first
    node); later cuts anywhere (plain)."""
    profile = profile_model(arch, scenario.input_shape, num_classes)
    n, hops = arch.n_blocks, len(route) - 1
    raw = profile.sent_bits(0, scenario.input_bits_per_element)
    natural = [p for p in range(1, n)
               if profile.sent_bits(p, scenario.input_bits_per_element) < raw]
    options = []
    for first in [*natural, n]:
        for rest in itertools.combinations_with_replacement(range(first, n + 1), hops - 1):
            options.append(Design(arch, route, tuple(Cut(p) for p in (first, *rest))))
    return _best_per_state(options, scenario, states, num_classes)
