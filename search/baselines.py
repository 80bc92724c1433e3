"""Searches to compare against, through the very same evaluation.

- :func:`random_search`: distinct random genomes, as many evaluations as the GA used;
- :func:`exhaustive_search`: every design of a small space (all architectures, routes, split
  vectors and, if enabled, compressions): the true Pareto front.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from models.build import BIT_WIDTHS, BOTTLENECKS, Cut
from sim import Scenario
from sim.seeds import child

from .config import SearchConfig
from .design import Design, GenomeLayout
from .evaluate import Evaluation, Evaluator
from .nsga import SearchResult, executor_map, history_row

__all__ = ["all_designs", "exhaustive_search", "random_search"]


def _evaluate_in_batches(evaluator: Evaluator, genomes: list[tuple[int, ...]], batch: int,
                         config: SearchConfig) -> SearchResult:
    evaluations: dict[tuple[int, ...], Evaluation] = {}
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    with executor_map(config) as map_fn:
        for i in range(0, len(genomes), batch):
            for ev in evaluator.evaluate(genomes[i:i + batch], map_fn):
                evaluations[ev.genome] = ev
            history.append(history_row(i // batch, list(evaluations.values()), config, started))
    return SearchResult(config, evaluations, list(evaluations)[-config.population:], history)


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
    return _evaluate_in_batches(evaluator, list(seen), config.population, config)


def all_designs(layout: GenomeLayout) -> Iterator[tuple[int, ...]]:
    """The canonical genome of every design of the layout, once each."""
    for arch_genes in layout.space.enumerate():
        arch = layout.space.decode(arch_genes)
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
    return _evaluate_in_batches(evaluator, genomes, 512, config)
