"""A design: an architecture, a route through the network and where the model is split on it.

The genome (a flat list of integers, what the genetic algorithm evolves) is

    [architecture genes] + [route] + [split position per hop] + [bottleneck, bits per hop]

- the architecture genes are those of the search space (:mod:`models.space`);
- the route picks one of the scenario's routes from the source to the path's last node (the
  scenario's ``path`` is route 0; other simple paths in the graph follow, sorted);
- split gene h carries a position, clipped to the architecture's depth; the positions are sorted,
  so consecutive blocks run on consecutive nodes and a node may run nothing (it forwards what it
  receives);
- compression genes h (bottleneck 1, 1/2, 1/4; 32 or 8 bits) belong to split gene h and travel
  with its position when sorting reorders the positions (a split that creeps past another keeps
  its compression). A compression applies only strictly between blocks: the raw input (position
  0) and the logits (the last position) are sent as they are, and two splits at the same
  position share the compression of the one with the lower gene index.

:meth:`GenomeLayout.decode` is a pure function; :meth:`GenomeLayout.canonical` gives the one genome
of each distinct design, so equal designs are recognised and evaluated once. The genetic
algorithm keeps the raw genomes it breeds and uses the canonical genome only as the design's
key: a compression gene on a split at an end of the model, or a position beyond a shallow
architecture's depth, has no effect now but comes back into play when a mutation moves the split
or deepens the architecture (canonicalising the population would erase that latent material).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

import networkx as nx

from models.space import SearchSpace
from models.spec import BIT_WIDTHS, BOTTLENECKS, ArchSpec, Cut
from sim.scenario import Scenario

__all__ = ["AnyDesign", "Design", "GenomeLayout", "PolicyDesign", "check_design", "check_routes",
           "design_from_description", "hosts", "policy_from_description", "scenario_routes"]


def scenario_routes(scenario: Scenario, max_routes: int = 16) -> tuple[tuple[str, ...], ...]:
    """The scenario's path first, then every other simple path from its first node to its last
    (fewest hops first, then by name), at most ``max_routes``."""
    first = tuple(scenario.path)
    if len(first) == 1:
        return (first,)
    graph = scenario.graph()
    others = sorted(
        (tuple(p) for p in nx.all_simple_paths(graph, first[0], first[-1]) if tuple(p) != first),
        key=lambda p: (len(p), p),
    )
    return (first, *others)[:max_routes]


def check_routes(scenario: Scenario, routes: Sequence[tuple[str, ...]], *,
                 back: str | None = None) -> None:
    """Refuse routes that some source cannot follow, before any work.

    One design runs on every source: a task of another source takes the same route with the
    path's first node replaced by its source (see :func:`sim.workload.stages_for_source`), so
    every route needs, for every source, a link from it to the route's second node. ``back``
    (why the reverse links are needed, e.g. training's gradients) also asks for every link in
    the other direction. Raises ``ValueError`` naming the source, the missing link and the fix.
    """
    graph = scenario.graph()
    first = scenario.path[0]
    for route in routes:
        for src in scenario.workload.sources:
            own = (src, *route[1:])
            shown = " -> ".join(route)
            if src != first and src in route[1:]:
                raise ValueError(
                    f"scenario {scenario.name!r}: source {src!r} cannot follow route {shown}: it "
                    f"is on it (every source runs the same design; move {src} off the route)")
            for u, v in itertools.pairwise(own):
                if not graph.has_edge(u, v):
                    raise ValueError(
                        f"scenario {scenario.name!r}: source {src!r} cannot follow route {shown}: "
                        f"no link {u} -> {v} (every source runs the same design: add that link, "
                        f"or remove the link {first} -> {v} that opens the route)")
                if back is not None and not graph.has_edge(v, u):
                    raise ValueError(
                        f"scenario {scenario.name!r}: {back}, so it needs a link {v} -> {u} for "
                        f"route {shown} (add duplex: true to the link {u} -> {v})")


@dataclass(frozen=True)
class Design:
    """What a genome means: the architecture, the nodes it runs on, and the cuts between them."""

    arch: ArchSpec
    route: tuple[str, ...]
    cuts: tuple[Cut, ...]

    @property
    def positions(self) -> tuple[int, ...]:
        return tuple(c.position for c in self.cuts)

    @property
    def compressing_cuts(self) -> tuple[Cut, ...]:
        """The cuts that change the trained model (accuracy depends on them)."""
        seen: dict[int, Cut] = {}
        for c in self.cuts:
            if c.compresses:
                seen.setdefault(c.position, c)
        return tuple(seen.values())

    def describe(self) -> str:
        parts = []
        for node, (a, b) in zip(self.route, self.segments(), strict=True):
            parts.append(f"{node}[{a}:{b}]")
        comp = ",".join(f"{c.position}:{c.bottleneck:g}x{c.bits}b" for c in self.compressing_cuts)
        return " -> ".join(parts) + (f" ({comp})" if comp else "")

    def segments(self) -> list[tuple[int, int]]:
        """Blocks [start, stop) run on each node of the route."""
        bounds = [0, *self.positions, self.arch.n_blocks]
        return list(itertools.pairwise(bounds))

    @property
    def hosts(self) -> tuple[str, ...]:
        """The nodes of the route that run at least one block, in route order (the others only
        forward, or receive nothing)."""
        return tuple(node for node, (a, b) in zip(self.route, self.segments(), strict=True)
                     if b > a)

    def to_json(self) -> str:
        return json.dumps({
            "arch": self.arch.to_dict(),
            "route": list(self.route),
            "cuts": [[c.position, c.bottleneck, c.bits] for c in self.cuts],
        }, sort_keys=True, separators=(",", ":"))


STATE_SEPARATOR = " | "
"""Between the state designs of a :class:`PolicyDesign`'s description."""


@dataclass(frozen=True)
class PolicyDesign:
    """A run-time split policy of one architecture: ``states[k]`` is the design (route and
    cuts) a request runs when the first node observes channel state k (worst channel first;
    :mod:`search.adaptive`). Every node holds the blocks that any state gives it."""

    states: tuple[Design, ...]

    def __post_init__(self) -> None:
        if len(self.states) < 2:
            raise ValueError("a policy design has two or more states (one is a Design)")
        if any(d.arch != self.states[0].arch for d in self.states):
            raise ValueError("every state of a policy design runs the same architecture")

    @property
    def arch(self) -> ArchSpec:
        return self.states[0].arch

    def describe(self) -> str:
        return STATE_SEPARATOR.join(d.describe() for d in self.states)

    @property
    def hosts(self) -> tuple[str, ...]:
        """Every node that runs a block in some state, in order of first appearance."""
        return tuple(dict.fromkeys(h for d in self.states for h in d.hosts))

    def to_json(self) -> str:
        return json.dumps({"states": [json.loads(d.to_json()) for d in self.states]},
                          sort_keys=True, separators=(",", ":"))


AnyDesign = Design | PolicyDesign


@dataclass(frozen=True)
class GenomeLayout:
    """Where each gene sits, and the genome <-> design mapping, for a space and a scenario."""

    space: SearchSpace
    routes: tuple[tuple[str, ...], ...]
    compression: bool = True
    fixed_arch: ArchSpec | None = None
    """If given, the genome has no architecture genes: only this architecture's route, split
    and compression are searched."""
    states: int = 1
    """Channel states of a run-time split policy: the genome carries a route, splits and
    compressions per state after the architecture genes, and decodes to a
    :class:`PolicyDesign` (1: one design, today's static search)."""

    @cached_property
    def hops(self) -> int:
        return max(len(r) for r in self.routes) - 1

    @cached_property
    def max_blocks(self) -> int:
        """Blocks of the deepest architecture: the largest depth in every stage, none skipped."""
        if self.fixed_arch is not None:
            return self.fixed_arch.n_blocks
        genes = []
        for st in self.space.stages:
            t = next(i for i, name in enumerate(st.types) if name != "skip")
            genes += [t, len(st.depths) - 1, 0]
        return self.space.decode(genes).n_blocks

    @property
    def n_arch(self) -> int:
        return 0 if self.fixed_arch is not None else self.space.n_genes

    def architectures(self) -> Iterator[ArchSpec]:
        """Every architecture the layout can express, once each."""
        if self.fixed_arch is not None:
            yield self.fixed_arch
            return
        for genes in self.space.enumerate():
            yield self.space.decode(genes)

    def decode_arch(self, arch_genes: Sequence[int]) -> ArchSpec:
        return self.fixed_arch if self.fixed_arch is not None else self.space.decode(arch_genes)

    def encode_arch(self, arch: ArchSpec) -> tuple[int, ...]:
        if self.fixed_arch is None:
            return self.space.encode(arch)
        if arch != self.fixed_arch:
            raise ValueError(f"{arch.name!r} is not the fixed architecture "
                             f"{self.fixed_arch.name!r}")
        return ()

    @property
    def state_genes(self) -> int:
        """Genes of one state's design: route, split per hop, compression pair per hop."""
        return 1 + 3 * self.hops

    @property
    def n_genes(self) -> int:
        return self.n_arch + self.states * self.state_genes

    @cached_property
    def bounds(self) -> tuple[int, ...]:
        """Number of values of each gene (gene g takes 0 .. bound - 1)."""
        comp = (len(BOTTLENECKS), len(BIT_WIDTHS)) if self.compression else (1, 1)
        arch_bounds = () if self.fixed_arch is not None else self.space.gene_bounds
        one = (len(self.routes), *([self.max_blocks + 1] * self.hops), *(comp * self.hops))
        return (*arch_bounds, *(one * self.states))

    @cached_property
    def split_genes(self) -> tuple[int, ...]:
        """Indices of the split-position genes, every state's."""
        return tuple(self.n_arch + k * self.state_genes + 1 + h
                     for k in range(self.states) for h in range(self.hops))

    def validate(self, genome: Sequence[int]) -> tuple[int, ...]:
        g = tuple(int(v) for v in genome)
        if len(g) != self.n_genes:
            raise ValueError(f"a genome has {self.n_genes} genes here, got {len(g)}")
        for i, (v, b) in enumerate(zip(g, self.bounds, strict=True)):
            if not 0 <= v < b:
                raise ValueError(f"gene {i} must be in 0..{b - 1}, got {v}")
        return g

    def decode(self, genome: Sequence[int]) -> Design:
        """The design of a genome of a static layout (``states`` 1; see :meth:`decode_any`)."""
        design = self.decode_any(genome)
        if isinstance(design, PolicyDesign):
            raise ValueError(f"a genome of {self.states} channel states is a policy design "
                             "(decode_any reads it)")
        return design

    def decode_any(self, genome: Sequence[int]) -> AnyDesign:
        """The design of a genome: a :class:`Design`, or with ``states`` > 1 a
        :class:`PolicyDesign`."""
        g = self.validate(genome)
        arch = self.decode_arch(g[: self.n_arch])
        blocks = [g[self.n_arch + k * self.state_genes: self.n_arch + (k + 1) * self.state_genes]
                  for k in range(self.states)]
        designs = tuple(self._decode_state(arch, b) for b in blocks)
        return designs[0] if self.states == 1 else PolicyDesign(designs)

    def _decode_state(self, arch: ArchSpec, g: Sequence[int]) -> Design:
        route = self.routes[g[0]]
        hops = len(route) - 1
        split = g[1: 1 + self.hops]
        comp = g[1 + self.hops:]
        # each split gene with its own compression genes, in order of position (ties: gene order)
        order = sorted(range(hops), key=lambda h: (min(split[h], arch.n_blocks), h))
        cuts: list[Cut] = []
        for h in order:
            p = min(split[h], arch.n_blocks)
            same = [c for c in cuts if c.position == p]
            if same:
                cuts.append(same[0])
            elif 0 < p < arch.n_blocks:
                cuts.append(Cut(p, BOTTLENECKS[comp[2 * h]], BIT_WIDTHS[comp[2 * h + 1]]))
            else:
                cuts.append(Cut(p))
        return Design(arch, route, tuple(cuts))

    def encode(self, design: AnyDesign) -> tuple[int, ...]:
        """The canonical genome of a design (of a policy design with ``states`` states, or of a
        design that every state runs)."""
        arch_genes = self.encode_arch(design.arch)
        states = design.states if isinstance(design, PolicyDesign) else (design,) * self.states
        if len(states) != self.states:
            raise ValueError(f"the layout has {self.states} states, the design "
                             f"{len(states)}")
        return (*arch_genes, *(g for d in states for g in self._encode_state(d)))

    def _encode_state(self, design: Design) -> tuple[int, ...]:
        route = self.routes.index(design.route)
        split = [c.position for c in design.cuts] + [0] * (self.hops - len(design.cuts))
        comp: list[int] = []
        for c in list(design.cuts) + [Cut(0)] * (self.hops - len(design.cuts)):
            comp += [BOTTLENECKS.index(c.bottleneck), BIT_WIDTHS.index(c.bits)]
        return (route, *split, *comp)

    def canonical(self, genome: Sequence[int]) -> tuple[int, ...]:
        """One genome per distinct design."""
        return self.encode(self.decode_any(genome))


_PART = re.compile(r"^([^\[\]]+)\[(\d+):(\d+)\]$")
_COMP = re.compile(r"^(\d+):([0-9.]+)x(\d+)b$")


def design_from_description(arch: ArchSpec, text: str) -> Design:
    """Parse what :meth:`Design.describe` writes (``front.csv``'s ``design`` column):
    ``phone[0:3] -> edge[3:9] (3:0.5x8b)``. A policy design's description (states separated by
    ``" | "``) is refused in one line: :func:`policy_from_description` reads it."""
    if STATE_SEPARATOR in text:
        raise ValueError(f"design {text!r} is a split policy (one design per channel state, "
                         "separated by ' | '), not one design; policy_from_description reads it")
    body, _, comp = text.partition(" (")
    compression: dict[int, Cut] = {}
    for item in filter(None, comp.rstrip(")").split(",")):
        m = _COMP.match(item.strip())
        if m is None:
            raise ValueError(f"design {text!r}: cannot read the compression {item!r}")
        p = int(m.group(1))
        compression[p] = Cut(p, float(m.group(2)), int(m.group(3)))
    route, bounds = [], []
    for part in body.split(" -> "):
        m = _PART.match(part.strip())
        if m is None:
            raise ValueError(f"design {text!r}: cannot read {part!r} (expected NODE[start:stop])")
        route.append(m.group(1))
        bounds.append((int(m.group(2)), int(m.group(3))))
    cuts = tuple(compression.get(b, Cut(b)) for _, b in bounds[:-1])
    design = check_design(Design(arch, tuple(route), cuts))
    if design.segments() != bounds:
        raise ValueError(f"design {text!r}: the blocks do not chain from 0 to {arch.n_blocks}")
    return design


def policy_from_description(arch: ArchSpec, text: str) -> AnyDesign:
    """A design or, with states separated by ``" | "``, a policy design, from what
    :meth:`Design.describe` or :meth:`PolicyDesign.describe` writes."""
    parts = text.split(STATE_SEPARATOR)
    if len(parts) == 1:
        return design_from_description(arch, text)
    return PolicyDesign(tuple(design_from_description(arch, p) for p in parts))


def hosts(text: str) -> tuple[str, ...]:
    """:attr:`Design.hosts` read from what :meth:`Design.describe` writes:
    ``phone[0:6] -> edge[6:6] -> cloud[6:9]`` runs on phone and cloud (a policy design's: the
    nodes that run a block in some state)."""
    out = []
    for state in text.split(STATE_SEPARATOR):
        for part in state.partition(" (")[0].split(" -> "):
            m = _PART.match(part.strip())
            if m is None:
                raise ValueError(f"design {text!r}: cannot read {part!r} "
                                 "(expected NODE[start:stop])")
            if int(m.group(3)) > int(m.group(2)):
                out.append(m.group(1))
    return tuple(dict.fromkeys(out))


def check_design(design: Design) -> Design:
    """``design``, if its cuts fit its route and architecture; else a ValueError."""
    if len(design.cuts) != len(design.route) - 1:
        raise ValueError(f"a design on {len(design.route)} nodes needs {len(design.route) - 1} "
                         f"cuts, got {len(design.cuts)}")
    positions = design.positions
    if list(positions) != sorted(positions) or any(
            not 0 <= p <= design.arch.n_blocks for p in positions):
        raise ValueError(f"split positions must be sorted and within 0..{design.arch.n_blocks}, "
                         f"got {list(positions)}")
    return design
