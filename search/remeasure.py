"""Fronts re-measured on fresh seeds: the numbers a search reports.

A search scores every design on one sample path (``eval_seed``) and picks its front on that same
path, so the front's latencies are biased low (the winner's curse: a design is on the front
partly because its path was kind to it) and carry no uncertainty. After the search, every front
design is simulated again on ``remeasure_replications`` independent replications of a seed the
search never used (common to the front's designs, so they still compare on equal paths), and
the report gives:

- the mean latency with the Student-t 95% confidence interval over replication means;
- the p95 latency as the mean of the replications' p95s, with the same kind of interval (our
  choice: replications are independent, so their p95s are i.i.d. estimates of the p95);
- the accuracy on the data set's held-out test set, trained on training plus validation data
  with the search's budget (where the data set has a test set; NaN otherwise).

The search's own scores stay in ``evaluations.csv``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.resolve import resolve_architecture
from sim import simulate
from sim.report import confidence_half_width

from .design import AnyDesign, policy_from_description
from .evaluate import Evaluation, Evaluator, MapFn

__all__ = ["REMEASURE_STREAM", "Remeasured", "design_of", "remeasure_front", "remeasure_seed"]

REMEASURE_STREAM = 0x72656D65
"""Mixed with ``eval_seed`` into the seed of the re-measurement: a stream of its own."""


def remeasure_seed(eval_seed: int) -> int:
    """The simulation seed of the re-measurement: derived from ``eval_seed``, never equal to it
    (so no replication shares the search's sample path)."""
    seed = int(np.random.SeedSequence([eval_seed, REMEASURE_STREAM]).generate_state(1)[0])
    return seed if seed != eval_seed else seed + 1


@dataclass(frozen=True)
class Remeasured:
    """A front design simulated again on fresh seeds (times in seconds)."""

    genome: tuple[int, ...]
    design: str
    """:meth:`Design.describe` of the design (with ``arch``, what names a genome-less one)."""
    arch: str
    replications: int
    seed: int
    mean_latency_s: float
    mean_ci95_s: float
    """Half-width of the 95% confidence interval of the mean latency."""
    p95_latency_s: float
    p95_ci95_s: float
    device_energy_j: float
    test_accuracy: float
    """Accuracy on the held-out test set (NaN where the data set has none, or training failed)."""


def design_of(evaluator: Evaluator, e: Evaluation) -> AnyDesign:
    """The design an evaluation scored: from its genome where the evaluator's layout reads it
    as that design, else (a baseline's genome of another layout, or a reference model that no
    genome expresses) from its architecture's name and its description."""
    if e.genome:
        try:
            design = evaluator.layout.decode_any(e.genome)
        except ValueError:
            pass
        else:
            if design.describe() == e.design and design.arch.name == e.arch:
                return design
    return policy_from_description(resolve_architecture(e.arch), e.design)


def remeasure_front(evaluator: Evaluator, front: Sequence[Evaluation], map_fn: MapFn = map
                    ) -> list[Remeasured]:
    """Re-measure each design of ``front`` (see the module docstring), in its order. With
    ``remeasure_replications`` 0 nothing is simulated or trained: each entry repeats the
    search's own numbers, with 0 replications and NaN intervals."""
    config = evaluator.config
    reps = config.remeasure_replications
    chosen = list(front)
    if reps == 0:
        nan = math.nan
        return [Remeasured(e.genome, e.design, e.arch, 0, config.eval_seed, e.mean_latency_s,
                           nan, e.p95_latency_s, nan, e.device_energy_j, nan) for e in chosen]
    if not chosen:
        return []
    seed = remeasure_seed(config.eval_seed)
    designs = [design_of(evaluator, e) for e in chosen]
    if config.test_accuracy and evaluator.has_test_set:
        tests = [r.accuracy if r.ok else math.nan
                 for r in evaluator.test_accuracies(designs, map_fn)]
    else:
        tests = [math.nan] * len(designs)
    tasks = evaluator.scenario.workload.warmup_tasks + config.remeasure_tasks
    out = []
    for e, design, test in zip(chosen, designs, tests, strict=True):
        result = simulate(evaluator.scenario, evaluator.simulated(design), seed=seed,
                          replications=reps, tasks=tasks, engine="auto", backward_included=True)
        means = [float(r.latency_s.mean()) for r in result.records]
        p95s = [float(np.percentile(r.latency_s, 95)) for r in result.records]
        out.append(Remeasured(
            genome=e.genome, design=e.design, arch=e.arch, replications=reps, seed=seed,
            mean_latency_s=float(np.mean(means)), mean_ci95_s=confidence_half_width(means),
            p95_latency_s=float(np.mean(p95s)), p95_ci95_s=confidence_half_width(p95s),
            device_energy_j=result.report.device_energy_j_per_task, test_accuracy=test))
    return out
