"""Where a deployment sends each request: one design per channel state.

A static :class:`~search.design.Design` is a routing of one state. A
:class:`~search.design.PolicyDesign` has one design per state of the uplink the first node
observes (``path[0] -> path[1]``); the states are cut from the scenario's channel exactly as the
search cut them (:func:`search.adaptive.channel_states` with the search's ``policy_states``), so
a deployed policy switches where the simulated one does. The first node reads the rate of that
link ``observe_delay_s`` before a request arrives, picks the state and writes it into the
request's frames; every node then looks up what it runs in that state and where it sends the
result.

The nodes of a routing are those of every state's used route, and its links every hop some state
crosses: a graph with no cycle (the states' routes must visit nodes in orders one sequence holds,
as in the simulator, :func:`sim.policy.merge_pipelines`).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from functools import cached_property

from search.adaptive import channel_states
from search.design import AnyDesign, Design, PolicyDesign
from sim.policy import check_thresholds, merge_pipelines
from sim.scenario import Scenario
from sim.workload import Compute, Stage, Transfer

__all__ = ["Routing", "deploy_plan", "used_route"]


def used_route(design: Design) -> tuple[str, ...]:
    """The nodes a request visits: the route up to the node that runs the last block (as in
    :func:`search.pipeline.segment_costs`)."""
    last = max(j for j, (a, b) in enumerate(design.segments()) if b > a)
    return design.route[: last + 1]


def deploy_plan(design: Design) -> tuple[Stage, ...]:
    """The stages a deployed request goes through, with placeholder work: what the run measures,
    in the simulator's labels and order (compute on every node that runs blocks, a transfer per
    hop)."""
    route = used_route(design)
    stages: list[Stage] = []
    for j, (node, (a, b)) in enumerate(zip(route, design.segments(), strict=False)):
        if b > a:
            stages.append(Compute(node, 1.0))
        if j < len(route) - 1:
            stages.append(Transfer(node, route[j + 1], 1.0))
    return tuple(stages)


@dataclass(frozen=True)
class Routing:
    """The designs a deployment runs, one per channel state (worst channel first), and how the
    first node picks among them: state k when k of ``thresholds_bps`` are at or below the rate
    of ``link`` it observes ``observe_delay_s`` before the request arrived."""

    designs: tuple[Design, ...]
    thresholds_bps: tuple[float, ...] = ()
    link: tuple[str, str] | None = None
    observe_delay_s: float = 0.0
    shares: tuple[float, ...] | None = None
    """The long-run share of time in each state (weights of what the calibrated prediction
    pools over the states; None: equal)."""

    def __post_init__(self) -> None:
        n = len(self.designs)
        if n < 1:
            raise ValueError("Routing.designs: needs at least one design")
        t = self.thresholds_bps
        if len(t) != n - 1:
            raise ValueError(f"Routing.thresholds_bps: {n} states need {n - 1} thresholds, "
                             f"got {len(t)}")
        check_thresholds("Routing.thresholds_bps", t)
        if not (math.isfinite(self.observe_delay_s) and self.observe_delay_s >= 0):
            raise ValueError(f"Routing.observe_delay_s must be >= 0, got {self.observe_delay_s}")
        if n > 1 and self.link is None:
            raise ValueError("Routing.link: a routing of several states needs the observed link")
        if self.shares is not None and len(self.shares) != n:
            raise ValueError(f"Routing.shares: {n} states need {n} shares, "
                             f"got {len(self.shares)}")
        firsts = sorted({d.route[0] for d in self.designs})
        if len(firsts) != 1:
            raise ValueError(f"Routing.designs: every state starts on the same node, got {firsts}")
        if any(d.arch != self.designs[0].arch for d in self.designs):
            raise ValueError("Routing.designs: every state runs the same architecture")
        _ = self.stages  # refuses routes that cross, naming the problem

    @classmethod
    def of(cls, design: AnyDesign, scenario: Scenario, *, policy_states: int | None = None,
           observe_delay_s: float = 0.0) -> Routing:
        """The routing of ``design`` on ``scenario``. A policy design's thresholds come from
        the scenario's uplink cut into ``policy_states`` states (the search's setting; default:
        the design's number of states); a ValueError if that cut does not give the design's
        number of states."""
        if isinstance(design, Design):
            return cls((design,))
        k = len(design.states) if policy_states is None else policy_states
        states = channel_states(scenario, k)
        if states.count != len(design.states):
            raise ValueError(
                f"policy_states: the design has {len(design.states)} states, and the scenario's "
                f"uplink {states.link[0]} -> {states.link[1]} cut into {k} gives {states.count}; "
                "give the policy_states the search ran with")
        return cls(design.states, states.thresholds_bps, states.link, observe_delay_s,
                   states.shares)

    @property
    def count(self) -> int:
        return len(self.designs)

    @property
    def first(self) -> str:
        return self.designs[0].route[0]

    @cached_property
    def routes(self) -> tuple[tuple[str, ...], ...]:
        """Each state's used route."""
        return tuple(used_route(d) for d in self.designs)

    @cached_property
    def stages(self) -> tuple[tuple[Stage, ...], list[list[int]]]:
        """The merged sequence of every state's stages (:func:`deploy_plan`), and where each
        state's stages sit in it (:func:`sim.policy.merge_pipelines`)."""
        try:
            return merge_pipelines([deploy_plan(d) for d in self.designs])
        except ValueError as exc:
            raise ValueError(f"the policy cannot be deployed: {exc}") from None

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self.stages[0]]

    @cached_property
    def nodes(self) -> tuple[str, ...]:
        """Every node some state visits, in the merged order."""
        order = [s.node if isinstance(s, Compute) else s.src for s in self.stages[0]]
        order += [r[-1] for r in self.routes]
        return tuple(dict.fromkeys(order))

    def next_hop(self, node: str, state: int) -> str | None:
        """Where ``node`` sends a request of ``state``: the next node, or None (the result,
        to the sink). A KeyError if the state does not visit the node."""
        route = self.routes[state]
        j = route.index(node)
        return route[j + 1] if j + 1 < len(route) else None

    def visits(self, node: str) -> list[int]:
        """The states whose requests visit ``node``."""
        return [k for k, r in enumerate(self.routes) if node in r]

    def downstream(self, node: str) -> list[str | None]:
        """Where ``node`` may send (None: the result sink), once each."""
        return list(dict.fromkeys(self.next_hop(node, k) for k in self.visits(node)))

    def upstream(self, node: str) -> list[str]:
        """The nodes that may send to ``node`` (none for the first: the client does)."""
        return [u for u in self.nodes if node in self.downstream(u)]

    @property
    def sinks(self) -> list[str]:
        """The nodes that send results, in order."""
        return [n for n in self.nodes if None in self.downstream(n)]

    @cached_property
    def hops(self) -> list[tuple[str, str]]:
        """Every link some state crosses, in the merged order."""
        return [(s.src, s.dst) for s in self.stages[0] if isinstance(s, Transfer)]

    @property
    def design(self) -> AnyDesign:
        """The design, or the policy design, that the routing runs."""
        return self.designs[0] if self.count == 1 else PolicyDesign(self.designs)

    def describe(self) -> str:
        return self.design.describe()

    def to_json(self) -> str:
        """The design's JSON (:meth:`Design.to_json`, :meth:`PolicyDesign.to_json`); a split
        policy's adds ``policy``: the observed link, thresholds, observation delay and shares,
        so that :func:`deploy.designs.load_routing` runs the same policy again."""
        data = json.loads(self.design.to_json())
        if self.count > 1:
            data["policy"] = {"link": list(self.link or ()),
                              "thresholds_bps": list(self.thresholds_bps),
                              "observe_delay_s": self.observe_delay_s,
                              "shares": None if self.shares is None else list(self.shares)}
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def check_links(self, scenario: Scenario) -> None:
        """A ValueError naming the node or link the scenario lacks."""
        graph = scenario.graph()
        for design in self.designs:
            for node in design.route:
                if node not in scenario.nodes:
                    raise ValueError(f"the design runs on {node!r}, which is not a node of the "
                                     "scenario")
            for u, v in itertools.pairwise(design.route):
                if not graph.has_edge(u, v):
                    raise ValueError(f"the design sends over {u} -> {v}, which is not a link")
