"""Searches and fixed designs to compare against, through the very same evaluation.

- :func:`random_search`: distinct random genomes, as many evaluations as the GA used;
- :func:`exhaustive_search`: every design of a small space (all architectures, routes, split
  vectors and, if enabled, compressions): the true Pareto front;
- :func:`placement_baseline`: given architectures run whole on one node of the path (device
  only, edge only, cloud only);
- :func:`neurosurgeon_baseline`: fixed reference models, each with its lowest-latency single
  split (the model's head on the device, its tail on one other node of the path), in the manner
  of Neurosurgeon (Kang et al. 2017);
- :func:`two_stage_baseline`: architectures searched for accuracy and FLOPs alone (NSGA-II, no
  network), then each front architecture split optimally (:func:`search.dp.optimal_split`).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.profile import ModelProfile
from models.spec import BIT_WIDTHS, BOTTLENECKS, ArchSpec, Cut
from models.train import TrainResult
from sim import Scenario
from sim.policy import SplitPolicy
from sim.seeds import child
from sim.stability import Load
from sim.workload import Stage

from .config import SearchConfig
from .design import AnyDesign, Design, GenomeLayout
from .dp import optimal_split
from .evaluate import Evaluation, Evaluator, MapFn
from .nsga import (
    SearchResult,
    executor_map,
    front_hypervolume,
    history_row,
    pareto_front,
    run_search,
)

__all__ = ["BaselineResult", "all_designs", "exhaustive_search", "neurosurgeon_baseline",
           "placement_baseline", "random_search", "two_stage_baseline"]

NEUROSURGEON_MODELS = ("mobilenet_v2", "resnet18")


@dataclass
class BaselineResult:
    """What a baseline evaluated, and the designs it hands its user (``offered``)."""

    name: str
    config: SearchConfig
    evaluations: list[Evaluation]
    offered: list[Evaluation]
    first_stage: list[Evaluation] = field(default_factory=list)
    """Two-stage only: stage one's evaluations, whose ``latency_s`` is compute time alone."""

    def front(self) -> list[Evaluation]:
        return pareto_front(self.offered, self.config)

    def hypervolume(self) -> float:
        return front_hypervolume(self.offered, self.config)


def _evaluate_in_batches(evaluator: Evaluator, batches: Iterable[Sequence[tuple[int, ...]]],
                         config: SearchConfig, map_fn: MapFn | None = None,
                         scored: Callable[[list[Evaluation]], None] | None = None
                         ) -> SearchResult:
    """Evaluate ``batches`` in turn, one history row after each; ``scored`` hears each batch's
    evaluations before the next batch is drawn (a sampler that learns from them)."""
    evaluations: dict[tuple[int, ...], Evaluation] = {}
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    with _map_or_pool(config, map_fn) as pool_map:
        for i, batch in enumerate(batches):
            new = evaluator.evaluate(batch, pool_map)
            for ev in new:
                evaluations[ev.genome] = ev
            if scored is not None:
                scored(new)
            history.append(history_row(i, list(evaluations.values()), config, started))
    return SearchResult(config, evaluations, list(evaluations)[-config.population:], history)


def _chunks(genomes: list[tuple[int, ...]], size: int) -> Iterator[list[tuple[int, ...]]]:
    return (genomes[i:i + size] for i in range(0, len(genomes), size))


def random_search(scenario: Scenario, config: SearchConfig, evaluations: int,
                  out_dir: str | os.PathLike[str], *, cache_path: str | None = None
                  ) -> SearchResult:
    """``evaluations`` distinct random designs (fewer if the space is smaller), evaluated in
    batches of ``config.population``, drawn from the run's seed."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    evaluator = Evaluator(scenario, config, cache_path or str(out / "accuracy.sqlite"))
    layout = evaluator.layout
    rng = np.random.default_rng(child(np.random.SeedSequence(config.seed), 8))
    seen: dict[tuple[int, ...], None] = {}
    tries = 0
    while len(seen) < evaluations and tries < 100 * evaluations:
        tries += 1
        seen.setdefault(layout.canonical([int(rng.integers(b)) for b in layout.bounds]), None)
    return _evaluate_in_batches(evaluator, _chunks(list(seen), config.population), config)


def all_designs(layout: GenomeLayout) -> Iterator[tuple[int, ...]]:
    """The canonical genome of every design of the layout, once each."""
    for arch in layout.architectures():
        for route in layout.routes:
            hops = len(route) - 1
            for positions in itertools.combinations_with_replacement(range(arch.n_blocks + 1),
                                                                     hops):
                interior = sorted({p for p in positions if 0 < p < arch.n_blocks})
                options = [(1.0, 32)]
                if layout.compression:
                    options = [(b, bits) for b in BOTTLENECKS for bits in BIT_WIDTHS]
                for choice in itertools.product(options, repeat=len(interior)):
                    comp = dict(zip(interior, choice, strict=True))
                    cuts = tuple(Cut(p, *comp[p]) if p in comp else Cut(p) for p in positions)
                    yield layout.encode(Design(arch, route, cuts))


def exhaustive_search(scenario: Scenario, config: SearchConfig,
                      out_dir: str | os.PathLike[str], *, cache_path: str | None = None,
                      limit: int = 200_000) -> SearchResult:
    """Evaluate every design (refuses spaces of more than ``limit`` designs)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    evaluator = Evaluator(scenario, config, cache_path or str(out / "accuracy.sqlite"))
    genomes = []
    for g in all_designs(evaluator.layout):
        genomes.append(g)
        if len(genomes) > limit:
            raise ValueError(f"more than {limit} designs: exhaustive search is for small spaces "
                             "(space: tiny, compression: false)")
    return _evaluate_in_batches(evaluator, _chunks(genomes, 512), config)


def _placed(arch: ArchSpec, route: tuple[str, ...], node: int, head: int = 0) -> Design:
    """Blocks [0, head) on the route's first node, the rest on node ``node`` (nodes in between
    forward)."""
    hops, n = len(route) - 1, arch.n_blocks
    positions = [head] * node + [n] * (hops - node)
    return Design(arch, route, tuple(Cut(p) for p in positions))


def _path_index(scenario: Scenario, node: str) -> int:
    if node not in scenario.path:
        raise ValueError(f"node {node!r} is not on the path of scenario {scenario.name!r} "
                         f"(allowed: {', '.join(scenario.path)})")
    return scenario.path.index(node)


def placement_baseline(scenario: Scenario, config: SearchConfig, node: str,
                       archs: Sequence[ArchSpec], out_dir: str | os.PathLike[str], *,
                       cache_path: str | None = None, map_fn: MapFn | None = None
                       ) -> BaselineResult:
    """Each architecture whole on ``node`` of the scenario's path (the raw input travels there;
    nodes before it forward). ``archs`` are usually those the joint search trained, to show
    what splitting buys; an architecture the search trained only with a compressing cut is
    trained once more without it."""
    evaluator = _evaluator(scenario, config, out_dir, cache_path)
    k = _path_index(scenario, node)
    route = tuple(scenario.path)
    designs = [_placed(a, route, k) for a in dict.fromkeys(archs)]
    evaluations = _evaluate(evaluator, designs, config, map_fn)
    return BaselineResult(f"{node} only", config, evaluations, evaluations)


def neurosurgeon_baseline(scenario: Scenario, config: SearchConfig,
                          out_dir: str | os.PathLike[str], *,
                          models: Sequence[str] = NEUROSURGEON_MODELS,
                          cache_path: str | None = None, map_fn: MapFn | None = None
                          ) -> BaselineResult:
    """Each fixed model with the single split of lowest simulated latency: blocks [0, p) on the
    device, the rest on one later node of the path, every p and every such node tried."""
    evaluations: list[Evaluation] = []
    offered: list[Evaluation] = []
    route = tuple(scenario.path)
    for name in models:
        cfg = config.with_changes(architecture=name, compression=False,  # trained as the
                                  finetune_plain=config.plain_finetuned)  # compared designs
        evaluator = _evaluator(scenario, cfg, out_dir, cache_path)
        arch = cfg.fixed_architecture()
        assert arch is not None
        designs = list(dict.fromkeys(_placed(arch, route, k, head)
                                     for k in range(1, len(route))
                                     for head in range(arch.n_blocks + 1)))
        scored = _evaluate(evaluator, designs, cfg, map_fn)
        evaluations += scored
        feasible = [e for e in scored if e.feasible]
        if feasible:
            offered.append(min(feasible, key=lambda e: e.latency_s))
    return BaselineResult("neurosurgeon", config, evaluations, offered)


class ArchitectureEvaluator(Evaluator):
    """Stage one of the two-stage baseline: accuracy and compute alone, no network. The
    "latency" of an architecture is its FLOPs at the device's FLOP/s (FLOPs, in seconds, so the
    hypervolume's normalisation still applies); memory limits wait for the split."""

    def __init__(self, scenario: Scenario, config: SearchConfig, cache_path: str) -> None:
        super().__init__(scenario, config, cache_path)
        source = (scenario.path[0],)
        self.layout = GenomeLayout(self.layout.space, (source,), compression=False,
                                   fixed_arch=self.layout.fixed_arch)
        self._device_flops = scenario.nodes[source[0]].flops_per_s

    def memory_violation(self, design: AnyDesign, profile: ModelProfile | None = None) -> float:
        return 0.0

    def busiest(self, pipeline: Sequence[Stage] | SplitPolicy) -> Load | None:
        return None  # no network yet: the split, in stage two, is checked

    def dead_link(self, pipeline: Sequence[Stage] | SplitPolicy) -> str:
        return ""  # as busiest

    def _score(self, design: AnyDesign, memory_violation: float,
               pipeline: Sequence[Stage] | SplitPolicy | None,
               busiest: Load | None, trained: TrainResult | None,
               dead_link: str = "") -> Evaluation:
        assert trained is not None and isinstance(design, Design)
        t = self.profile(design).total_flops / self._device_flops
        failed = not trained.ok
        return Evaluation(self.layout.encode(design), design.describe(), design.arch.name,
                          accuracy=trained.accuracy, latency_s=t, mean_latency_s=t,
                          p95_latency_s=t, device_energy_j=math.nan,
                          violation=10.0 if failed else 0.0,
                          status="failed" if failed else "ok", message=trained.message,
                          accuracy_sd=self.accuracy_sd)


def two_stage_baseline(scenario: Scenario, config: SearchConfig,
                       out_dir: str | os.PathLike[str], *, cache_path: str | None = None,
                       map_fn: MapFn | None = None) -> BaselineResult:
    """NSGA-II over architectures for (accuracy, FLOPs) with the config's population and
    generations, then every architecture of that front split optimally on its best route and
    evaluated like any design."""
    out = Path(out_dir)
    stage1_cfg = config.with_changes(compression=False, dp_seeding=False, resplit="none",
                                     energy_objective=False, objective="pareto",
                                     remeasure_replications=0)  # no network to re-measure on
    cache = cache_path or str(out / "accuracy.sqlite")
    stage1 = run_search(scenario, stage1_cfg, out / "stage1", cache_path=cache, map_fn=map_fn,
                        evaluator=ArchitectureEvaluator(scenario, stage1_cfg, cache))
    evaluator = _evaluator(scenario, config, out, cache)
    designs = []
    for e in stage1.front():
        arch = evaluator.layout.decode_arch(e.genome[: evaluator.layout.n_arch])
        best: tuple[float, Design] | None = None
        for route in evaluator.layout.routes:
            plan = optimal_split(evaluator.profile(Design(arch, route, ())), scenario, route)
            if best is None or plan.latency_s < best[0]:
                best = (plan.latency_s, Design(arch, route, tuple(Cut(p) for p in plan.positions)))
        assert best is not None
        designs.append(best[1])
    offered = _evaluate(evaluator, designs, config, map_fn)
    return BaselineResult("two-stage", config, offered, offered,
                          first_stage=list(stage1.evaluations.values()))


def _evaluator(scenario: Scenario, config: SearchConfig, out_dir: str | os.PathLike[str],
               cache_path: str | None) -> Evaluator:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return Evaluator(scenario, config, cache_path or str(out / "accuracy.sqlite"))


def _evaluate(evaluator: Evaluator, designs: list[Design], config: SearchConfig,
              map_fn: MapFn | None) -> list[Evaluation]:
    with _map_or_pool(config, map_fn) as pool_map:
        return evaluator.evaluate_designs(designs, pool_map)


@contextlib.contextmanager
def _map_or_pool(config: SearchConfig, map_fn: MapFn | None) -> Iterator[MapFn]:
    """``map_fn`` if given, else the map of ``config.executor``."""
    if map_fn is not None:
        yield map_fn
        return
    with executor_map(config) as pool_map:
        yield pool_map
