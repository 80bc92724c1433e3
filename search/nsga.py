"""NSGA-II over (architecture, route, split, compression) genomes, with DEAP's selection.

DEAP supplies the fitness and individual classes (defined once, here, at import), the
non-dominated sorting and crowding distance, and ``selNSGA2`` (Deb et al. 2002). The variation
operators and the binary tournament are written here because DEAP's draw from Python's global
``random`` module, while every random choice of a run must come from its one seeded
``numpy.random.Generator`` (so that a resumed run ends exactly where an uninterrupted one does):

- tournament: two random individuals, the lower non-domination rank wins, then the larger
  crowding distance (Deb et al. 2002);
- uniform crossover of the genes, with probability ``crossover_prob`` per pair;
- offspring are fresh: one that repeats an evaluated design is mutated again (``FRESH_TRIES``);
- mutation: each gene with probability ``mutation_prob`` is redrawn uniformly in its range; a
  split position is instead, a third of the time each, moved by 1 to 3 blocks (splits creep) or
  snapped to an end of its range (the hop carries the raw input, or the request ends before the
  hop: moves that drop a node, which creeping reaches only through worse designs).

The population holds the raw genomes bred, not their canonical form: a compression gene on a
split at an end of the model, or a position beyond the architecture's depth, is latent material
that a later mutation brings back (see :mod:`search.design`); evaluations, the freshness check
and the archive are keyed by the canonical genome, so a design is still evaluated once.

With ``dp_seeding``, half of the initial population are random architectures with the cuts that
minimise their no-queueing latency (:func:`search.dp.optimal_design`), taking in turn three kinds
of cut: plain float32 (what a split that must not touch the model would do), 8-bit at full width
(almost lossless) and any compression (the lowest latency, whatever it costs in accuracy); the
rest are random genomes. With ``resplit`` (default ``mix``), an offspring whose architecture the
run has not evaluated yet drops the cuts it inherited (placed for its parents' architectures)
for that architecture's DP cuts, of the same three kinds in turn: every architecture's first
design is one a planner would pick for it, so an architecture is never judged by a split that
sends its raw input over a slow link while it would run whole on the phone in a tenth of the
time. Every generation is checkpointed (the population, the RNG state, the
history and every evaluation); ``resume`` continues a killed run. The first checkpoint is written
once generation 0 (the initial population) is scored: a run that fails before leaves none. After
each checkpoint the ``progress`` function hears how far the run is (:mod:`search.progress`).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import pickle
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from deap import base, creator, tools

from models import processes
from sim import Scenario
from sim.seeds import child

from .adaptive import dp_policy
from .config import SearchConfig, resolve_config_dataset
from .design import Design, PolicyDesign
from .dp import COMPRESSIONS, PLAIN, optimal_design
from .evaluate import NUM_CLASSES, Evaluation, Evaluator, MapFn, _init_worker
from .indicators import hypervolume, nondominated, normalise
from .progress import ProgressFn, SearchProgress, progress_bar
from .remeasure import Remeasured, remeasure_front

__all__ = ["CHECKPOINT", "UNFINGERPRINTED", "SearchResult", "executor_map", "fingerprint",
           "front_hypervolume", "history_row", "pareto_front", "run_search"]

for _name, _weights in (("Fitness1", (1.0,)), ("Fitness2", (1.0, -1.0)),
                        ("Fitness3", (1.0, -1.0, -1.0))):
    if not hasattr(creator, f"Jmsnas{_name}"):
        creator.create(f"Jmsnas{_name}", base.Fitness, weights=_weights)
        creator.create(f"JmsnasIndividual{_name[-1]}", list,
                       fitness=getattr(creator, f"Jmsnas{_name}"))

CHECKPOINT = "checkpoint.pkl"
_FORMAT = 7
"""Checkpoint format, scoring model and operators: 2 since a request ends at the node of its last
block, 3 since offspring are made fresh, 4 since evaluations carry their accuracy's noise and
compressed variants fine-tune from their parent (and ``dataset`` defaults to ``auto``), 5 since
overloaded designs are ``unstable``, training mode's backward pass comes from the design and the
hypervolume's error reference is chance, 6 since compression genes travel with their split, the
population keeps raw genomes and seeding considers compression, 7 since offspring of a new
architecture are re-split and plain designs fine-tune like their variants."""
SEED_CUTS: tuple[tuple[tuple[float, int], ...], ...] = ((PLAIN,), (PLAIN, (1.0, 8)), COMPRESSIONS)
"""The cuts the seeding DP may use, one kind per seeded genome in turn."""
UNFINGERPRINTED = frozenset({"workers", "executor", "scheduler", "remeasure_replications",
                             "remeasure_tasks", "test_accuracy"})
"""Settings a checkpoint does not depend on (a resumed run may change them): where training
runs does not change results, and the re-measurement after the search does not change the
search."""
FRESH_TRIES = 20
"""An offspring equal to a design already evaluated (or to a sibling) is mutated again, one
random gene at a time, up to this many times: otherwise a converging population spends much of
its budget re-drawing known designs, which cost nothing but also teach nothing."""


@dataclass
class SearchResult:
    """Every evaluation of the run, the final population and the per-generation history."""

    config: SearchConfig
    evaluations: dict[tuple[int, ...], Evaluation]
    population: list[tuple[int, ...]]
    """The GA's last population as bred (raw genomes: see :mod:`search.design`); the baselines'
    last batch, canonical."""
    history: list[dict[str, float]] = field(default_factory=list)
    remeasured: list[Remeasured] = field(default_factory=list)
    """The front re-measured on fresh seeds (:mod:`search.remeasure`), in the front's order."""

    def front(self) -> list[Evaluation]:
        """Non-dominated feasible evaluations, by latency (the best one if scalarized)."""
        return pareto_front(list(self.evaluations.values()), self.config)

    def hypervolume(self) -> float:
        return front_hypervolume(list(self.evaluations.values()), self.config)


def pareto_front(evaluations: list[Evaluation], config: SearchConfig) -> list[Evaluation]:
    """The non-dominated feasible evaluations, by latency; with ``objective: scalarized``, the
    one with the best scalar objective."""
    feasible = [e for e in evaluations if e.feasible]
    if not feasible:
        return []
    if config.objective == "scalarized":
        return [max(feasible, key=lambda e: e.objectives(config)[0])]
    pts = normalise([e.objectives(config) for e in feasible], config.hv_reference())
    mask = nondominated(pts)
    return sorted((e for e, m in zip(feasible, mask, strict=True) if m),
                  key=lambda e: e.latency_s)


def front_hypervolume(evaluations: list[Evaluation], config: SearchConfig) -> float:
    """Normalised hypervolume of the feasible (accuracy, latency[, energy]) points."""
    feasible = [e for e in evaluations if e.feasible]
    if not feasible:
        return 0.0
    pts = [(e.accuracy, e.latency_s, e.device_energy_j)[: 3 if config.energy_objective else 2]
           for e in feasible]
    return hypervolume(normalise(pts, config.hv_reference()))


def history_row(generation: int, evaluations: list[Evaluation], config: SearchConfig,
                started: float) -> dict[str, float]:
    """One row of ``history.csv``: the archive's state after a generation (or batch)."""
    feasible = [e for e in evaluations if e.feasible]
    return {
        "generation": generation,
        "evaluations": len(evaluations),
        "feasible": len(feasible),
        "hypervolume": front_hypervolume(evaluations, config),
        "best_accuracy": max((e.accuracy for e in feasible), default=float("nan")),
        "best_latency_s": min((e.latency_s for e in feasible), default=float("nan")),
        "elapsed_s": time.perf_counter() - started,
    }


@contextlib.contextmanager
def executor_map(config: SearchConfig) -> Iterator[MapFn]:
    """The map that proxy training runs through: serial, a pool of processes
    (:mod:`models.processes`), or the workers of a Dask cluster."""
    if config.executor == "dask":
        with _dask_map(str(config.scheduler)) as dask_map:
            yield dask_map
        return
    if config.executor == "serial" or config.workers == 1:
        yield map
        return
    pool = processes.pool(config.workers, _init_worker, preload=("search.evaluate",))
    try:
        yield pool.map
    except BaseException:  # interrupted (Ctrl-C, SIGTERM through the command line) or failed:
        for worker in list((getattr(pool, "_processes", None) or {}).values()):  # stop the
            worker.terminate()  # trainings now rather than wait for them
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


@contextlib.contextmanager
def _dask_map(address: str) -> Iterator[MapFn]:
    try:
        from dask.distributed import Client
    except ImportError:
        raise ValueError("executor dask needs the dask extra: pip install -e '.[dask]'") from None
    try:
        client = Client(address, timeout=10)
    except OSError as exc:
        raise ValueError(f"cannot reach the Dask scheduler at {address!r} ({exc})") from None
    with client:
        client.run(_init_worker)  # one torch thread per worker process

        def dask_map(fn: Any, jobs: Any) -> Iterator[Any]:
            futures = client.map(fn, list(jobs), pure=False)
            return iter(client.gather(futures))

        yield dask_map


def fingerprint(scenario: Scenario, config: SearchConfig) -> str:
    """What a checkpoint must match to be resumed: the scenario and every setting that changes
    results."""
    arch = config.fixed_architecture()  # its blocks, not the name of a file that may change
    text = (f"format {_FORMAT}\n" + scenario.model_dump_json()
            + config.model_dump_json(exclude=set(UNFINGERPRINTED))
            + (arch.to_json() if arch else ""))
    return hashlib.sha256(text.encode()).hexdigest()


def _individual(config: SearchConfig, genome: tuple[int, ...], ev: Evaluation) -> Any:
    n = 1 if config.objective == "scalarized" else 3 if config.energy_objective else 2
    ind = getattr(creator, f"JmsnasIndividual{n}")(genome)
    ind.fitness.values = ev.fitness(config)
    return ind


class _Search:
    def __init__(self, scenario: Scenario, config: SearchConfig, out: Path,
                 map_fn: MapFn, progress: ProgressFn | None, cache_path: str | None = None,
                 evaluator: Evaluator | None = None) -> None:
        self.scenario, self.config, self.out = scenario, config, out
        self.map_fn, self.progress = map_fn, progress
        self.evaluator = evaluator or Evaluator(scenario, config,
                                                cache_path or str(out / "accuracy.sqlite"))
        self.layout = self.evaluator.layout
        self.bounds = np.array(self.layout.bounds)
        n = self.layout.n_genes
        self.pm = config.mutation_prob if config.mutation_prob is not None else 1.0 / n
        self.split_genes = set(self.layout.split_genes)
        self.evaluations: dict[tuple[int, ...], Evaluation] = {}
        self.history: list[dict[str, float]] = []
        self.rng = np.random.default_rng(child(np.random.SeedSequence(config.seed), 7))
        self.fingerprint = fingerprint(scenario, config)

    # -- genomes --------------------------------------------------------------------------

    def random_genome(self) -> tuple[int, ...]:
        return tuple(int(self.rng.integers(b)) for b in self.bounds)

    def dp_genome(self, kind: int, genome: tuple[int, ...] | None = None) -> tuple[int, ...]:
        """The architecture and route of ``genome`` (default: a random one) with the cuts of
        least no-queueing latency, of one of three kinds (see the module docstring)."""
        design = self.layout.decode_any(self.random_genome() if genome is None else genome)
        options = (PLAIN,) if not self.layout.compression else SEED_CUTS[kind % len(SEED_CUTS)]
        route = (design if isinstance(design, Design) else design.states[0]).route
        states = self.evaluator.states
        if states is None or states.count == 1:
            best, _ = optimal_design(design.arch, self.scenario, route, options,
                                     num_classes=NUM_CLASSES)
            return self.layout.encode(best)
        # a policy: each state's cuts planned at the state's rate (search.adaptive)
        return self.layout.encode(PolicyDesign(tuple(
            dp_policy(design.arch, self.scenario, route, states, options, NUM_CLASSES))))

    def initial_population(self) -> list[tuple[int, ...]]:
        pop: dict[tuple[int, ...], tuple[int, ...]] = {}  # canonical -> the genome bred
        half = self.config.population // 2 if self.config.dp_seeding else 0
        for kind in range(3 * half):  # seeds until half the population (or enough tries)
            if len(pop) >= half:
                break
            g = self.dp_genome(kind)
            pop.setdefault(self.layout.canonical(g), g)
        tries = 0
        while len(pop) < self.config.population and tries < 50 * self.config.population:
            tries += 1
            g = self.random_genome()
            pop.setdefault(self.layout.canonical(g), g)
        genomes = list(pop.values())
        while len(genomes) < self.config.population:  # a space too small for distinct designs
            genomes.append(self.random_genome())
        return genomes

    def vary(self, parents: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        kids: list[tuple[int, ...]] = []
        keys: set[tuple[int, ...]] = set()
        n_arch = self.layout.n_arch
        archs = {k[:n_arch] for k in self.evaluations} if n_arch else set()
        for a, b in zip(parents[::2], parents[1::2], strict=True):
            x, y = np.array(a), np.array(b)
            if self.rng.random() < self.config.crossover_prob:
                swap = self.rng.random(x.size) < 0.5
                x[swap], y[swap] = y[swap], x[swap]
            for z in (x, y):
                for i in np.flatnonzero(self.rng.random(z.size) < self.pm):
                    self.mutate_gene(z, int(i))
                key = self.layout.canonical(z.tolist())
                for _ in range(FRESH_TRIES):  # spend evaluations on designs not seen yet
                    if key not in self.evaluations and key not in keys:
                        break
                    self.mutate_gene(z, int(self.rng.integers(z.size)))
                    key = self.layout.canonical(z.tolist())
                kid = tuple(int(v) for v in z)
                if n_arch and self.config.resplit != "none" and key[:n_arch] not in archs:
                    kid = self.dp_genome(0 if self.config.resplit == "plain" else len(archs),
                                         kid)  # kinds in turn, the same on a resume
                    key = self.layout.canonical(kid)
                    archs.add(key[:n_arch])
                kids.append(kid)
                keys.add(key)
        return kids

    def mutate_gene(self, z: np.ndarray[Any, Any], i: int) -> None:
        move = self.rng.random() if i in self.split_genes else 1.0
        if move < 1 / 3:  # creep
            step = int(self.rng.integers(1, 4)) * (1 if self.rng.random() < 0.5 else -1)
            z[i] = min(max(z[i] + step, 0), self.bounds[i] - 1)
        elif move < 2 / 3:  # snap to an end: the hop carries the raw input, or the request is
            # done before it (decoding clips to the depth)
            z[i] = 0 if self.rng.random() < 0.5 else self.bounds[i] - 1
        else:
            z[i] = self.rng.integers(self.bounds[i])

    def tournament(self, pop: list[Any]) -> list[tuple[int, ...]]:
        fronts = tools.sortNondominated(pop, len(pop))
        rank = {}
        for r, front in enumerate(fronts):
            tools.emo.assignCrowdingDist(front)
            for ind in front:
                rank[id(ind)] = r
        chosen = []
        for _ in range(len(pop)):
            i, j = self.rng.choice(len(pop), size=2, replace=False)
            a, b = pop[int(i)], pop[int(j)]
            if rank[id(a)] != rank[id(b)]:
                win = a if rank[id(a)] < rank[id(b)] else b
            else:
                win = a if a.fitness.crowding_dist >= b.fitness.crowding_dist else b
            chosen.append(tuple(win))
        return chosen

    # -- evaluation and selection ---------------------------------------------------------

    def evaluation(self, genome: tuple[int, ...]) -> Evaluation:
        return self.evaluations[self.layout.canonical(genome)]

    def evaluate(self, genomes: list[tuple[int, ...]]) -> None:
        keys = (self.layout.canonical(g) for g in genomes)
        new = list(dict.fromkeys(k for k in keys if k not in self.evaluations))
        if new:
            for ev in self.evaluator.evaluate(new, self.map_fn):
                self.evaluations[ev.genome] = ev

    def select(self, genomes: list[tuple[int, ...]]) -> list[Any]:
        inds = [_individual(self.config, g, self.evaluation(g)) for g in genomes]
        return list(tools.selNSGA2(inds, self.config.population))

    def record(self, generation: int, started: float) -> dict[str, float]:
        row = history_row(generation, list(self.evaluations.values()), self.config, started)
        self.history.append(row)
        return row

    # -- checkpoints ----------------------------------------------------------------------

    def save(self, generation: int, population: list[tuple[int, ...]]) -> None:
        state = {"format": _FORMAT, "fingerprint": self.fingerprint, "generation": generation,
                 "population": population, "rng": self.rng.bit_generator.state,
                 "history": self.history, "evaluations": self.evaluations}
        tmp = self.out / f"{CHECKPOINT}.{os.getpid()}.tmp"  # one per process
        with open(tmp, "wb") as fh:
            pickle.dump(state, fh)
        os.replace(tmp, self.out / CHECKPOINT)  # a kill never leaves half a checkpoint

    def load(self) -> tuple[int, list[tuple[int, ...]]]:
        path = self.out / CHECKPOINT
        try:
            with open(path, "rb") as fh:
                state = pickle.load(fh)
        except FileNotFoundError:
            raise ValueError(f"cannot resume from {self.out}: no readable {CHECKPOINT} (none "
                             "was written: a run leaves one once its generation 0 is scored; "
                             "start it afresh)") from None
        except OSError as exc:
            raise ValueError(f"cannot resume from {self.out}: no readable {CHECKPOINT} "
                             f"({exc.strerror})") from None
        except Exception as exc:  # truncated or garbled: pickle raises many kinds
            raise ValueError(f"cannot resume from {self.out}: {CHECKPOINT} is damaged "
                             f"({type(exc).__name__}); start the run afresh") from None
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise ValueError(f"cannot resume from {self.out}: unknown checkpoint format")
        if state["fingerprint"] != self.fingerprint:
            raise ValueError(f"cannot resume from {self.out}: it was made with another scenario "
                             "or configuration (compare its config.yaml)")
        self.rng.bit_generator.state = state["rng"]
        self.history = state["history"]
        self.evaluations = state["evaluations"]
        return int(state["generation"]), list(state["population"])

    # -- the loop -------------------------------------------------------------------------

    def tell(self, event: Literal["generation", "front"], generation: int,
             row: dict[str, float], started: float, done_before: int) -> None:
        """Report a checkpointed generation (or the start of the front's re-measurement) to the
        ``progress`` function; ``done_before``: the last generation done before this process
        started (-1 for a fresh run), for the estimate of the time left."""
        if not self.progress:
            return
        elapsed = time.perf_counter() - started
        left = self.config.generations - generation
        here = generation - done_before  # generations this process has run
        self.progress(SearchProgress(
            event=event, generation=generation,
            generations=self.config.generations, evaluated=int(row["evaluations"]),
            feasible=int(row["feasible"]), trained=self.evaluator.trained,
            cached=self.evaluator.cached, designs_left=self.config.population * left,
            best_accuracy=row["best_accuracy"], best_latency_s=row["best_latency_s"],
            hypervolume=row["hypervolume"], elapsed_s=elapsed,
            eta_s=elapsed / here * left if here > 0 and event == "generation" else math.nan))

    def run(self, resume: bool) -> SearchResult:
        started = time.perf_counter()
        if resume:
            generation, population = self.load()
            done_before = generation
        else:
            generation, population, done_before = 0, self.initial_population(), -1
            self.evaluate(population)
            population = [tuple(i) for i in self.select(population)]
            self.record(0, started)
            self.save(0, population)
            self.tell("generation", 0, self.history[-1], started, done_before)
        while generation < self.config.generations:
            generation += 1
            inds = [_individual(self.config, g, self.evaluation(g)) for g in population]
            offspring = self.vary(self.tournament(inds))
            self.evaluate(offspring)
            population = [tuple(i) for i in self.select(population + offspring)]
            row = self.record(generation, started)
            self.save(generation, population)
            self.tell("generation", generation, row, started, done_before)
        result = SearchResult(self.config, self.evaluations, population, self.history)
        front = result.front()
        if front and self.config.remeasure_replications and self.history:
            self.tell("front", generation, self.history[-1], started, done_before)
        result.remeasured = remeasure_front(self.evaluator, front, self.map_fn)
        return result


def run_search(scenario: Scenario, config: SearchConfig, out_dir: str | os.PathLike[str], *,
               resume: bool = False, map_fn: MapFn | None = None,
               progress: bool | ProgressFn = False, cache_path: str | None = None,
               evaluator: Evaluator | None = None) -> SearchResult:
    """Run (or, with ``resume``, continue) the NSGA-II search; checkpoints go to ``out_dir``.

    ``map_fn`` runs the proxy-training jobs (default: per ``config.executor`` and ``workers``).
    ``progress``: a function called with a :class:`search.progress.SearchProgress` after every
    generation, or True for a progress bar (:func:`search.progress.progress_bar`).
    ``cache_path``: the accuracy cache (default ``out_dir/accuracy.sqlite``); runs may share one.
    ``evaluator``: score genomes another way (the two-stage baseline's first stage does).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config, _ = resolve_config_dataset(config)  # the run and its checkpoint name the real one
    with contextlib.ExitStack() as stack:
        report: ProgressFn | None = None
        if progress is True:
            report = stack.enter_context(progress_bar(config.generations))
        elif callable(progress):
            report = progress
        if map_fn is None:
            map_fn = stack.enter_context(executor_map(config))
        return _Search(scenario, config, out, map_fn, report, cache_path, evaluator).run(resume)
