"""Optuna's multi-objective samplers as baselines, through the same evaluation as the GA.

:func:`optuna_search` runs Optuna's TPE (Bergstra et al. 2011; multi-objective: Ozaki et al.
2020) or its NSGA-II (Deb et al. 2002) over the genome of :class:`search.design.GenomeLayout`:
one integer parameter ``g0, g1, ...`` per gene. Trials are asked a batch at a time, their
canonical designs evaluated together by :class:`search.evaluate.Evaluator` (the same accuracy
cache and simulation as :func:`search.nsga.run_search` and :func:`search.baselines.random_search`)
and each trial told its values. Infeasible designs (memory, deadline, unstable, failed training)
are told as such through the constraint ``violation`` (> 0: infeasible), which both samplers
rank by (constrained domination, Deb et al. 2002), with the finite values
:meth:`search.evaluate.Evaluation.fitness` gives them (their objectives may be NaN).

TPE models the genes jointly (``multivariate``, our choice: a split position means something
only with its architecture's depth); a batch's trials are kept apart by Optuna's constant
liar. Optuna is an optional dependency, 5.0 or later for ``Trial.set_constraint`` (which
replaced the samplers' ``constraints_func``): ``pip install -e '.[compare]'``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

import numpy as np

from sim import Scenario
from sim.seeds import child

from .baselines import _evaluate_in_batches, _evaluator
from .config import SearchConfig
from .evaluate import Evaluation, Evaluator, MapFn
from .nsga import SearchResult

if TYPE_CHECKING:
    import optuna

__all__ = ["SAMPLERS", "optuna_search"]

SAMPLERS = ("tpe", "nsga2")
MAX_TRIES_PER_EVALUATION = 50
"""Trials asked per distinct design wanted, at most, so that a small space ends (our choice)."""
_SEED_STREAM = 9  # child of the run's seed; 7: the GA, 8: random search


def optuna_search(scenario: Scenario, config: SearchConfig, evaluations: int,
                  out_dir: str | os.PathLike[str], *, sampler: Literal["tpe", "nsga2"],
                  cache_path: str | None = None, map_fn: MapFn | None = None) -> SearchResult:
    """``evaluations`` distinct designs (fewer if the space runs out) chosen by Optuna's
    ``sampler``, evaluated in batches of ``config.population``: one history row per batch.

    A trial whose canonical design was evaluated before is told the known values at once and
    does not count; at most ``MAX_TRIES_PER_EVALUATION`` x ``evaluations`` trials are asked.
    ``tpe``: multivariate TPE; ``nsga2``: Optuna's NSGA-II with ``config.population``. Both are
    seeded from ``config.seed``: the same seed gives the same designs. ``map_fn`` and
    ``cache_path`` as for :func:`search.nsga.run_search`.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    try:
        import optuna
    except ImportError:
        raise ValueError("optuna_search needs the compare extra: "
                         "pip install -e '.[compare]'") from None
    evaluator = _evaluator(scenario, config, out_dir, cache_path)
    n_objectives = 1 if config.objective == "scalarized" else 3 if config.energy_objective else 2
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per trial (restored)
    try:
        up, down = optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE
        study = optuna.create_study(directions=[up] + [down] * (n_objectives - 1),
                                    sampler=_sampler(sampler, config))
        batches = _TrialBatches(study, evaluator, evaluations)
        return _evaluate_in_batches(evaluator, batches, config, map_fn, scored=batches.tell)
    finally:
        optuna.logging.set_verbosity(verbosity)


def _sampler(name: str, config: SearchConfig) -> optuna.samplers.BaseSampler:
    import optuna

    seed = int(child(np.random.SeedSequence(config.seed), _SEED_STREAM).generate_state(1)[0])
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    return optuna.samplers.NSGAIISampler(population_size=config.population, seed=seed)


class _TrialBatches:
    """Iterating asks trials until ``config.population`` new designs (or those still wanted)
    are pending, and yields them; :meth:`tell` hands their evaluations back to their trials."""

    def __init__(self, study: optuna.Study, evaluator: Evaluator, evaluations: int) -> None:
        from optuna.distributions import BaseDistribution, IntDistribution

        self.study, self.layout, self.config = study, evaluator.layout, evaluator.config
        self.wanted, self.batch = evaluations, evaluator.config.population
        self.params: dict[str, BaseDistribution] = {
            f"g{i}": IntDistribution(0, b - 1) for i, b in enumerate(self.layout.bounds)}
        self.known: dict[tuple[int, ...], Evaluation] = {}
        self.pending: dict[tuple[int, ...], list[optuna.Trial]] = {}
        self.tries = 0

    def __iter__(self) -> Iterator[list[tuple[int, ...]]]:
        limit = MAX_TRIES_PER_EVALUATION * self.wanted
        while len(self.known) < self.wanted and self.tries < limit:
            size = min(self.batch, self.wanted - len(self.known))
            while len(self.pending) < size and self.tries < limit:
                self.tries += 1
                trial = self.study.ask(self.params)
                genome = self.layout.canonical([trial.params[p] for p in self.params])
                if genome in self.known:
                    self._tell(trial, self.known[genome])
                else:
                    self.pending.setdefault(genome, []).append(trial)
            if not self.pending:
                return
            yield list(self.pending)

    def tell(self, evaluations: list[Evaluation]) -> None:
        for ev in evaluations:
            self.known[ev.genome] = ev
            for trial in self.pending.pop(ev.genome):
                self._tell(trial, ev)

    def _tell(self, trial: optuna.Trial, ev: Evaluation) -> None:
        trial.set_constraint("violation", ev.violation)
        trial.set_user_attr("design", ev.design)
        trial.set_user_attr("status", ev.status)
        self.study.tell(trial, list(ev.fitness(self.config)))
