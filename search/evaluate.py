"""Scoring designs: accuracy from the cache or by proxy training, latency by simulation.

Accuracy depends on the architecture and its compressing cuts only, so each distinct one is
trained once per run (de-duplicated before the parallel map, and then never again thanks to the
SQLite cache). In a space with compression every design, plain or compressed, is scored as its
architecture's trained weights fine-tuned, with its codecs, for the same number of steps: no
design looks more accurate for having been trained longer. Latency and energy come from
simulating the design's pipeline on the scenario with the configuration's ``eval_seed``: every
design sees the same arrivals and channel realisations (common random numbers), so differences
come from the designs, in this run and in runs with other GA seeds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from models.cache import AccuracyCache, cache_key
from models.data import Dataset, load_dataset
from models.profile import ModelProfile, profile_model
from models.space import get_space
from models.spec import ArchSpec, Cut
from models.train import InitStateMismatch, TrainResult, device_tag, proxy_accuracy, seed_sd
from sim import Scenario, simulate
from sim.errors import UnfinishedTransferError
from sim.policy import SplitPolicy, merge_pipelines
from sim.simulate import check_transfer_times
from sim.stability import Load, offered_load, shared_load
from sim.workload import Stage

from .adaptive import ChannelStates, channel_states, policy_of
from .config import SearchConfig, resolve_config_dataset
from .design import AnyDesign, Design, GenomeLayout, check_routes, scenario_routes
from .pipeline import design_pipeline, segment_costs

__all__ = ["Evaluation", "Evaluator", "MapFn", "TrainJob", "run_train_job"]

NUM_CLASSES = 10  # every shipped data set has ten classes
MapFn = Callable[[Callable[[Any], Any], Iterable[Any]], Iterator[Any]]

_NOISE_STREAM = 0x6E6F697365
"""Mixed with ``eval_seed`` for the architectures the noise is measured on: a stream of its
own, apart from the simulation's replications."""

INFEASIBLE_ACCURACY = -1.0
INFEASIBLE_LATENCY_S = 1e6


@dataclass(frozen=True)
class TrainJob:
    """One proxy-training run, picklable for worker processes."""

    arch_json: str
    cuts: tuple[tuple[int, float, int], ...]
    dataset: str
    dataset_seed: int
    budget: tuple[tuple[str, Any], ...]
    seed: int
    device: str
    cache_path: str
    final: bool = False
    """Train on training plus validation parts and score on the held-out test set."""
    keep_weights: bool = False
    """Keep the trained weights beside the cache, for compressed variants to start from."""
    finetune: bool = False
    """Without cuts: the architecture trained, then fine-tuned from those weights exactly as a
    compressed variant is, without a codec, so that it has had as many training steps as every
    variant of it (a search with compression scores its plain designs so: otherwise a variant,
    trained for longer, would look more accurate than the model it compresses)."""


def _dataset(name: str, seed: int, final: bool = False) -> Dataset:
    """The data set of a job, loaded once per process (however the call spells ``final``)."""
    return _load(name, seed, final)


@lru_cache(maxsize=4)
def _load(name: str, seed: int, final: bool) -> Dataset:
    data = load_dataset(name, seed=seed)
    return data.final() if final else data


def run_train_job(job: TrainJob) -> TrainResult:
    """Train one architecture (unless a worker already did: the cache is checked first).

    An uncompressed architecture is trained from scratch (its weights kept beside the cache when
    the job asks). A compressed variant, or with ``finetune`` the uncompressed one, starts from
    those weights (training the parent first if they are missing or do not fit) and fine-tunes;
    a parent whose training failed fails its variants too.
    """
    from models.train import ProxyBudget

    spec = ArchSpec.from_json(job.arch_json)
    cuts = [Cut(p, b, bits) for p, b, bits in job.cuts]
    budget = ProxyBudget(**dict(job.budget))
    data = _dataset(job.dataset, job.dataset_seed, job.final)
    cache = AccuracyCache(job.cache_path)
    device = device_tag(job.device)
    variant = bool(cuts) or job.finetune
    key = cache_key(spec, data.key, budget, job.seed, cuts, device, finetuned=job.finetune)
    hit = cache.get(key)
    parent_key = cache_key(spec, data.key, budget, job.seed, device=device)
    wants_weights = not variant and job.keep_weights and not cache.weights_path(
        parent_key).is_file()
    if hit is not None and not (wants_weights and hit.ok):
        return hit
    parent = None if wants_weights else cache.get(parent_key)  # retrained for its weights
    parent_state = cache.load_weights(parent_key) if variant else None
    result: TrainResult | None = None
    for attempt in range(2):
        if parent is None or (variant and parent.ok and parent_state is None):
            parent = proxy_accuracy(spec, data, budget, seed=job.seed, device=job.device,
                                    keep_state=variant or job.keep_weights)
            if parent.state is not None:
                cache.save_weights(parent_key, parent.state)
            cache.put(parent_key, parent, spec=spec, dataset=data.key, budget=budget,
                      seed=job.seed)
            parent_state = parent.state
        if not variant:
            return dataclasses.replace(parent, state=None)  # weights on disk, not in a pipe
        if parent_state is None:  # the parent's training failed: so does every variant
            result = TrainResult(math.nan, 0.0, parent.status, f"parent: {parent.message}")
            break
        try:
            result = proxy_accuracy(spec, data, budget, seed=job.seed, cuts=cuts,
                                    device=job.device, init_state=parent_state)
            break
        except InitStateMismatch:  # weights left by other code do not fit: train it again
            if attempt:
                raise
            parent, parent_state = None, None
    assert result is not None
    cache.put(key, result, spec=spec, dataset=data.key, budget=budget, seed=job.seed, cuts=cuts)
    return result


def _check_policy_sources(scenario: Scenario) -> None:
    """A policy's states are cut at one rate distribution and weighted by its time shares:
    every source's uplink must have the channel model of the path's first hop (independent
    realisations of it), else a ValueError naming the source."""
    if len(scenario.path) < 2:
        raise ValueError(f"scenario {scenario.name!r}: policy_states > 1 needs a path of two "
                         "or more nodes (the first node observes its uplink)")
    graph = scenario.graph()
    first, second = scenario.path[0], scenario.path[1]
    model = graph.edges[first, second]["spec"].channel
    for src in scenario.workload.sources:
        if src != first and graph.has_edge(src, second) and \
                graph.edges[src, second]["spec"].channel != model:
            raise ValueError(
                f"scenario {scenario.name!r}: policy_states > 1 needs every source's uplink to "
                f"have the channel of {first} -> {second} (the states are cut at its rate "
                f"distribution and weighted by its time shares); {src} -> {second} has another")


def _crossing(pipeline: Sequence[Stage] | SplitPolicy | None) -> bool:
    """Whether a policy's pipelines visit nodes or links in orders no single sequence holds
    (two states on routes that cross, in a mesh): :func:`sim.policy.merge_pipelines` refuses
    them, so such a design is scored infeasible instead of stopping the search."""
    if not isinstance(pipeline, SplitPolicy):
        return False
    try:
        merge_pipelines(pipeline.pipelines)
    except ValueError:
        return True
    return False


def _combined(results: Sequence[tuple[TrainResult | None, float]]) -> TrainResult:
    """One result from the weighted results of a design's trainings: the weighted accuracy,
    or the first failure."""
    if len(results) == 1:
        only = results[0][0]
        assert only is not None
        return only
    total = 0.0
    for result, weight in results:
        assert result is not None
        if not result.ok:
            return result
        total += weight * result.accuracy
    return TrainResult(total, sum(r.train_time_s for r, _ in results if r is not None), "ok")


def _init_worker() -> None:
    torch.set_num_threads(1)


@dataclass(frozen=True)
class Evaluation:
    """A scored design. ``violation`` > 0 means infeasible: ``status`` ``infeasible`` (memory,
    deadline, a policy's crossing routes, or a transfer its link would not finish: violation 1),
    ``unstable`` (some resource offered a utilisation at or over 1; the violation is
    that utilisation), ``failed`` (training, deterministically) or ``error`` (training, in a way
    that another run may not repeat: out of memory, say; not cached)."""

    genome: tuple[int, ...]
    design: str
    arch: str
    accuracy: float
    latency_s: float
    mean_latency_s: float
    p95_latency_s: float
    device_energy_j: float
    violation: float
    status: str
    message: str = ""
    utilisation: float = field(default=math.nan, compare=False)
    """The highest offered utilisation of any resource the design uses (:mod:`sim.stability`;
    at or over 1 the design is ``unstable``); NaN when not computed (memory violations)."""
    accuracy_sd: float = field(default=math.nan, compare=False)
    """Seed-to-seed standard deviation of one proxy accuracy under this run's budget, data set
    and space (measured once for them; NaN when not measured). Not part of equality: it
    describes the budget, not the design, and NaN never equals itself after a pickle."""

    @property
    def feasible(self) -> bool:
        return self.violation == 0.0

    def objectives(self, config: SearchConfig) -> tuple[float, ...]:
        """The true objective values (accuracy first, maximised; the rest minimised)."""
        if config.objective == "scalarized":
            return (self.accuracy - config.lam * self.latency_s,)
        if config.energy_objective:
            return (self.accuracy, self.latency_s, self.device_energy_j)
        return (self.accuracy, self.latency_s)

    def fitness(self, config: SearchConfig) -> tuple[float, ...]:
        """Values for selection: the objectives when feasible, otherwise values worse than any
        feasible design's, worse still the larger the violation (constrained domination)."""
        if self.feasible:
            return self.objectives(config)
        v = self.violation
        if config.objective == "scalarized":
            return (INFEASIBLE_ACCURACY - INFEASIBLE_LATENCY_S - v,)
        worst = (INFEASIBLE_ACCURACY - v, INFEASIBLE_LATENCY_S + v)
        return (*worst, INFEASIBLE_LATENCY_S + v) if config.energy_objective else worst


class Evaluator:
    """Turns genomes into :class:`Evaluation` objects for one scenario and configuration."""

    def __init__(self, scenario: Scenario, config: SearchConfig, cache_path: str) -> None:
        self.scenario = scenario
        self.config, _ = resolve_config_dataset(config)
        self.cache_path = cache_path
        self.states: ChannelStates | None = None
        """The observed link's channel states, for a policy search (``policy_states`` > 1)."""
        if config.policy_states > 1:
            _check_policy_sources(scenario)
            self.states = channel_states(scenario, config.policy_states)
        self.layout = GenomeLayout(get_space(config.space), scenario_routes(scenario),
                                   compression=config.compression,
                                   fixed_arch=config.fixed_architecture(),
                                   states=self.states.count if self.states else 1)
        self._budget = self.config.budget.to_budget()
        self._device = device_tag(self.config.device)
        self._cache = AccuracyCache(cache_path)
        self.accuracy_sd = math.nan
        self.trained = 0
        """Proxy trainings this evaluator sent to the map (parents trained for their compressed
        variants included)."""
        self.cached = 0
        """Accuracies this evaluator found in the cache instead of training."""
        self._noise_checked = False
        self._check_scenario()

    def _check_scenario(self) -> None:
        training = self.scenario.workload.mode == "training"
        if training and self.config.return_result:
            raise ValueError(f"return_result applies to inference; scenario "
                             f"{self.scenario.name!r} is in training mode, where a request ends "
                             "with its backward pass (set return_result: false)")
        back = ("training mode sends gradients back" if training
                else "return_result sends the result back" if self.config.return_result
                else None)
        check_routes(self.scenario, self.layout.routes, back=back)
        self._check_some_design_fits()

    def _check_some_design_fits(self) -> None:
        """Refuse, before any work, a scenario where not even the smallest architecture of the
        space fits the nodes' memory, on any route, split anywhere (the exact DP decides)."""
        from .dp import optimal_split

        nodes = self.scenario.nodes
        if any(nodes[v].memory_bytes is None for route in self.layout.routes for v in route):
            return  # a node without a limit can take every block (the others just forward)
        arch = self.layout.fixed_arch
        if arch is None:
            space = self.layout.space
            genes: list[int] = []
            for st in space.stages:  # the smallest choice of every stage, skipped where allowed
                genes += [st.types.index("skip") if "skip" in st.types else 0, 0, 0]
            arch = space.decode(genes)
        for route in self.layout.routes:
            profile = self.profile(Design(arch, route, ()))
            if math.isfinite(optimal_split(profile, self.scenario, route).latency_s):
                return
        need = profile_model(arch, self.scenario.input_shape, NUM_CLASSES)
        raise ValueError(
            f"no design fits the memory limits of scenario {self.scenario.name!r}: even "
            f"{arch.name} ({need.total_params * 4 / 2**20:.2f} MiB of weights) cannot be split "
            f"so that every node's segment fits its memory_bytes"
        )

    def profile(self, design: Design) -> ModelProfile:
        return profile_model(design.arch, self.scenario.input_shape, NUM_CLASSES,
                             cuts=design.compressing_cuts)

    def pipeline(self, design: Design, profile: ModelProfile) -> tuple[Stage, ...]:
        """The stages one request of the design runs: an inference, or in training mode a
        training step (the backward pass built from the design, :mod:`search.pipeline`)."""
        w = self.scenario.workload
        return design_pipeline(design, profile, self.scenario.input_bits_per_element,
                               return_result=self.config.return_result,
                               backward_flops_factor=(w.backward_flops_factor
                                                      if w.mode == "training" else None))

    def simulated(self, design: AnyDesign) -> tuple[Stage, ...] | SplitPolicy:
        """What :func:`sim.simulate` runs for a design: its pipeline, or a policy design's
        split policy (one pipeline per channel state, :mod:`search.adaptive`)."""
        if isinstance(design, Design):
            return self.pipeline(design, self.profile(design))
        assert self.states is not None, "a policy design needs a policy search's states"
        return policy_of(design.states, self.states, self.scenario, self.pipeline, NUM_CLASSES,
                         self.config.policy_observe_delay_s)

    def busiest(self, pipeline: Sequence[Stage] | SplitPolicy) -> Load | None:
        """The resource a design's ``pipeline`` offers the highest utilisation
        (:mod:`sim.stability`; at or over 1 there is no steady state, so no latency to score).
        A policy's pipelines load their resources at the share of time of their state."""
        tasks = self.scenario.workload.warmup_tasks + self.config.sim_tasks
        if not isinstance(pipeline, SplitPolicy):
            loads = offered_load(self.scenario, pipeline, tasks)
        else:
            assert pipeline.shares is not None
            loads = shared_load(self.scenario, pipeline.pipelines, pipeline.shares, tasks)
        return max(loads, key=lambda x: x.utilisation) if loads else None

    def dead_link(self, pipeline: Sequence[Stage] | SplitPolicy) -> str:
        """Why the simulator would refuse a transfer of ``pipeline`` (a dead or nearly dead
        link: :func:`sim.simulate.check_transfer_times`), or "" if it would not."""
        try:
            check_transfer_times(self.scenario, pipeline.pipelines
                                 if isinstance(pipeline, SplitPolicy) else [pipeline])
        except UnfinishedTransferError as exc:
            return str(exc).split(": ", 1)[-1]  # without the scenario's name
        return ""

    def memory_violation(self, design: AnyDesign, profile: ModelProfile | None = None) -> float:
        """How far the design's segments overrun their nodes' ``memory_bytes`` (0: they fit).
        A policy design's node holds every block some state gives it, once per model (states
        with another compression run other fine-tuned weights): our estimate is, per model, the
        memory of the span from the node's first such block to its last, plus every encoder and
        decoder it holds."""
        if isinstance(design, Design):
            return self._overrun(
                (c.node, c.memory_bytes) for c in segment_costs(
                    design, profile or self.profile(design), self.scenario.input_bits_per_element))
        plain = self.profile(Design(design.arch, design.states[0].route, ()))
        # states with the same compression run one model; each other compression is a model
        # of its own (fine-tuned weights), which a node serving it holds as well
        models: dict[tuple[Cut, ...], list[Design]] = {}
        for d in design.states:
            models.setdefault(d.compressing_cuts, []).append(d)
        need: dict[str, float] = {}
        for states in models.values():
            spans: dict[str, tuple[int, int]] = {}
            codecs: dict[str, dict[tuple[int, str], int]] = {}  # node: (position, end): bytes
            for d in states:
                prof = self.profile(d)
                for node, (a, b) in zip(d.route, d.segments(), strict=True):
                    if b <= a:
                        continue
                    lo, hi = spans.get(node, (a, b))
                    spans[node] = (min(lo, a), max(hi, b))
                    held = codecs.setdefault(node, {})
                    if (dec := prof.codec(a)) is not None:
                        held[a, "decoder"] = 4 * dec.decoder_params
                    if (enc := prof.codec(b)) is not None:
                        held[b, "encoder"] = 4 * enc.encoder_params
            for node, (a, b) in spans.items():
                need[node] = need.get(node, 0.0) + plain.segment_memory_bytes(a, b) \
                    + sum(codecs.get(node, {}).values())
        return self._overrun(need.items())

    def _overrun(self, needs: Iterable[tuple[str, float]]) -> float:
        total = 0.0
        for node, memory in needs:
            limit = self.scenario.nodes[node].memory_bytes
            if limit is not None and memory > limit:
                total += memory / limit - 1.0
        return total

    def _noise_population(self) -> str:
        """What the noise was measured on: the space's architectures, or the fixed one, as
        trained from scratch or, with compression, fine-tuned (:attr:`TrainJob.finetune`)."""
        arch = self.layout.fixed_arch
        b = self._budget
        tuned = (f",fine-tuned({b.finetune_fraction:g},{b.finetune_lr_scale:g})"
                 if self.config.plain_finetuned else "")
        if arch is None:
            return f"space:{self.layout.space.name}{tuned}"
        blocks = json.dumps(arch.to_dict()["blocks"], sort_keys=True)
        return f"architecture:{hashlib.sha256(blocks.encode()).hexdigest()[:16]}{tuned}"

    def _noise_jobs(self, designs: Sequence[AnyDesign]) -> list[list[TrainJob]]:
        """Trainings that measure the proxy's seed-to-seed noise, per seed (rows) and
        architecture (columns): the first ``noise_architectures`` distinct architectures of
        ``designs`` (topped up with architectures drawn from the space with ``eval_seed``) at
        ``eval_seed`` and the next seed, so that only the second seed costs extra; a fixed
        architecture with three seeds. Empty when the cache already holds a measurement for
        this budget, data set and population, or once measured by this evaluator."""
        self._noise_checked = True
        known = self._cache.noise(self._data_key, self._budget, self._noise_population())
        if known is not None:
            self.accuracy_sd = known[0]
            return []
        n = self.config.noise_architectures
        if n == 0:
            return []
        if self.layout.fixed_arch is not None:
            archs, seeds = [self.layout.fixed_arch], 3
        else:
            archs = list(dict.fromkeys(d.arch for d in designs))[:n]
            space = self.layout.space
            rng = np.random.default_rng([self.config.eval_seed, _NOISE_STREAM])
            for _ in range(100 * n):
                if len(archs) >= min(n, space.size):
                    break
                a = space.decode(space.canonical([int(rng.integers(b))
                                                  for b in space.gene_bounds]))
                if a not in archs:
                    archs.append(a)
            seeds = 2
        base = self.train_job(Design(archs[0], self.layout.routes[0], ()))
        return [[dataclasses.replace(base, arch_json=a.to_json(), seed=self.config.eval_seed + k)
                 for a in archs] for k in range(seeds)]  # (a seed's weights: its own key)

    def train_jobs(self, design: AnyDesign) -> list[tuple[TrainJob, float]]:
        """The trainings a design's accuracy comes from, with their weights: one for a
        design; for a policy design one per state, weighted by the state's share of time
        (a request's expected accuracy), states with the same compression sharing a training."""
        if isinstance(design, Design):
            return [(self.train_job(design), 1.0)]
        assert self.states is not None
        weights: dict[TrainJob, float] = {}
        for d, share in zip(design.states, self.states.shares, strict=True):
            job = self.train_job(d)
            weights[job] = weights.get(job, 0.0) + share
        return list(weights.items())

    def train_job(self, design: Design) -> TrainJob:
        return TrainJob(
            arch_json=design.arch.to_json(),
            cuts=tuple((c.position, c.bottleneck, c.bits) for c in design.compressing_cuts),
            dataset=self.config.dataset,
            dataset_seed=self.config.dataset_seed,
            budget=tuple(sorted(self._budget.to_dict().items())),
            seed=self.config.eval_seed,
            device=self.config.device,
            cache_path=self.cache_path,
            keep_weights=self.config.compression,  # variants will want to start from them
            finetune=self.config.plain_finetuned and not design.compressing_cuts,
        )

    @property
    def _data_key(self) -> str:
        return _dataset(self.config.dataset, self.config.dataset_seed).key

    def _job_key(self, job: TrainJob) -> str:
        data = _dataset(job.dataset, job.dataset_seed, job.final)
        return cache_key(ArchSpec.from_json(job.arch_json), data.key, self._budget, job.seed,
                         [Cut(p, b, bits) for p, b, bits in job.cuts], self._device,
                         finetuned=job.finetune)

    def _cached_accuracy(self, job: TrainJob) -> TrainResult | None:
        return self._cache.get(self._job_key(job))

    @staticmethod
    def _parent(job: TrainJob) -> TrainJob:
        return dataclasses.replace(job, cuts=(), finetune=False, keep_weights=True)

    def _has_weights(self, job: TrainJob) -> bool:
        return self._cache.weights_path(self._job_key(job)).is_file()

    def _train_all(self, jobs: dict[TrainJob, TrainResult | None], map_fn: MapFn) -> None:
        """Fill ``jobs`` with results: from the cache, else trained through ``map_fn``."""
        todo = []
        for job in jobs:
            jobs[job] = self._cached_accuracy(job)
            if jobs[job] is None:
                todo.append(job)
        self.cached += len(jobs) - len(todo)
        # Parents whose variants are to be trained go first, in a map of their own: otherwise
        # two workers could each train the same parent for its variants (or for itself).
        first = list(dict.fromkeys(
            parent for job in todo if job.cuts or job.finetune
            if not (self._has_weights(parent := self._parent(job))
                    and self._cached_accuracy(parent) is not None)))
        for job, result in zip(first, map_fn(run_train_job, first), strict=True):
            if job in jobs:
                jobs[job] = result
        rest = [job for job in todo if jobs[job] is None]
        for job, result in zip(rest, map_fn(run_train_job, rest), strict=True):
            jobs[job] = result
        self.trained += len(first) + len(rest)

    @property
    def has_test_set(self) -> bool:
        """Whether the data set keeps a held-out test set (for :meth:`test_accuracies`)."""
        return _dataset(self.config.dataset, self.config.dataset_seed).x_test is not None

    def test_accuracies(self, designs: Sequence[AnyDesign], map_fn: MapFn = map
                        ) -> list[TrainResult]:
        """Each design's accuracy on the held-out test set, trained on the training and
        validation parts with the search's budget and seed (cached like any training; a policy
        design's, weighted over its states). A ValueError when the data set has no test set."""
        if not self.has_test_set:
            raise ValueError(f"data set {self.config.dataset!r} has no held-out test set")
        wanted = [[(dataclasses.replace(job, final=True), w) for job, w in self.train_jobs(d)]
                  for d in designs]
        jobs: dict[TrainJob, TrainResult | None] = {
            job: None for weighted in wanted for job, _ in weighted}
        self._train_all(jobs, map_fn)
        return [_combined([(jobs[job], w) for job, w in weighted]) for weighted in wanted]

    def evaluate(self, genomes: Sequence[Sequence[int]], map_fn: MapFn = map) -> list[Evaluation]:
        """Score genomes: distinct accuracies are trained through ``map_fn``, then each design is
        simulated here."""
        return self.evaluate_designs([self.layout.decode_any(g) for g in genomes], map_fn)

    def evaluate_designs(self, designs: Sequence[AnyDesign], map_fn: MapFn = map
                         ) -> list[Evaluation]:
        """Score designs, also ones the genome cannot express (a reference model, for the
        baselines; their :attr:`Evaluation.genome` is empty)."""
        mem = [self.memory_violation(d) for d in designs]
        pipes = [self.simulated(d) if m == 0.0 else None  # built once: checked, simulated
                 for d, m in zip(designs, mem, strict=True)]
        crossing = [_crossing(pipe) for pipe in pipes]
        busiest = [None if pipe is None or cross else self.busiest(pipe)
                   for pipe, cross in zip(pipes, crossing, strict=True)]
        dead = ["" if pipe is None or cross else self.dead_link(pipe)
                for pipe, cross in zip(pipes, crossing, strict=True)]
        scored = [m == 0.0 and (b is None or b.stable) and not cross and not why
                  for m, b, cross, why in zip(mem, busiest, crossing, dead, strict=True)]
        design_jobs = [self.train_jobs(d) if ok else None
                       for d, ok in zip(designs, scored, strict=True)]
        jobs: dict[TrainJob, TrainResult | None] = {}
        for weighted in design_jobs:
            for job, _ in weighted or ():
                jobs.setdefault(job, None)
        noise = ([] if self._noise_checked else
                 self._noise_jobs([d for d, ok in zip(designs, scored, strict=True) if ok]))
        for job in (j for row in noise for j in row):
            jobs.setdefault(job, None)
        self._train_all(jobs, map_fn)
        if noise:
            acc = np.array([[r.accuracy if (r := jobs[j]) is not None else math.nan
                             for j in row] for row in noise])
            self.accuracy_sd = seed_sd(acc)
            measured = int(np.all(np.isfinite(acc), axis=0).sum())  # seed_sd drops the rest
            self._cache.put_noise(self._data_key, self._budget, self._noise_population(),
                                  self.accuracy_sd, measured, len(noise), "search")
        out = []
        for d, m, pipe, b, why, weighted in zip(designs, mem, pipes, busiest, dead, design_jobs,
                                                strict=True):
            trained = None if weighted is None else _combined(
                [(jobs[job], w) for job, w in weighted])
            out.append(self._score(d, m, pipe, b, trained, why))
        return out

    def _score(self, design: AnyDesign, memory_violation: float,
               pipeline: Sequence[Stage] | SplitPolicy | None,
               busiest: Load | None, trained: TrainResult | None,
               dead_link: str = "") -> Evaluation:
        nan = math.nan
        try:
            canon = self.layout.encode(design)
        except ValueError:  # not in the layout's space (a baseline's reference model)
            canon = ()
        desc, arch = design.describe(), design.arch.name
        if memory_violation > 0:
            return Evaluation(canon, desc, arch, accuracy=nan, latency_s=nan, mean_latency_s=nan,
                              p95_latency_s=nan, device_energy_j=nan,
                              violation=memory_violation, status="infeasible",
                              message="a segment does not fit its node's memory_bytes")
        if _crossing(pipeline):
            return Evaluation(canon, desc, arch, accuracy=nan, latency_s=nan, mean_latency_s=nan,
                              p95_latency_s=nan, device_energy_j=nan, violation=1.0,
                              status="infeasible",
                              message="its states' routes visit nodes in opposite orders (the "
                                      "simulator runs a policy's pipelines as one sequence)")
        rho = nan if busiest is None else busiest.utilisation
        if busiest is not None and not busiest.stable:  # no steady state: a finite run's
            return Evaluation(canon, desc, arch, accuracy=nan, latency_s=nan,  # latency means
                              mean_latency_s=nan, p95_latency_s=nan,  # nothing
                              device_energy_j=nan, violation=rho, status="unstable",
                              message=f"{busiest.describe()} (>= 1: its queue grows without "
                                      "bound)", utilisation=rho)
        if dead_link:  # a stable queue (requests a year apart, say) behind a dead link
            return Evaluation(canon, desc, arch, accuracy=nan, latency_s=nan,
                              mean_latency_s=nan, p95_latency_s=nan, device_energy_j=nan,
                              violation=1.0, status="infeasible", message=dead_link,
                              utilisation=rho)
        assert trained is not None and pipeline is not None
        report = simulate(self.scenario, pipeline,
                          seed=self.config.eval_seed, replications=self.config.sim_replications,
                          tasks=self.scenario.workload.warmup_tasks + self.config.sim_tasks,
                          engine="auto", backward_included=True).report
        latency = report.mean_latency_s if self.config.latency == "mean" else report.p95_latency_s
        violation, status, message = 0.0, "ok", ""
        if not trained.ok:  # a transient error is not cached: another run trains it again
            violation, status, message = 10.0, "failed", trained.message
            if not trained.deterministic:
                status, message = "error", f"{message} (transient: not cached)"
        elif self.config.deadline_s is not None and latency > self.config.deadline_s:
            violation = latency / self.config.deadline_s - 1.0
            status, message = "infeasible", f"latency over the {self.config.deadline_s} s deadline"
        return Evaluation(canon, desc, arch, accuracy=trained.accuracy, latency_s=latency,
                          mean_latency_s=report.mean_latency_s,
                          p95_latency_s=report.p95_latency_s,
                          device_energy_j=report.device_energy_j_per_task,
                          violation=violation, status=status, message=message,
                          utilisation=rho, accuracy_sd=self.accuracy_sd)
