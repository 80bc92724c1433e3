"""The scalarised objective swept over lambda: the trade-off curve in the paper's form.

For each lambda (per second of latency) a single-objective run of the genetic algorithm
maximises ``accuracy - lambda * latency_s`` (:attr:`SearchConfig.lam`). All runs share one
accuracy cache, so an architecture is trained once for the whole sweep. The design reported for a
lambda is the best one among everything the sweep evaluated (the objective only ranks designs, so
a design found by a neighbouring lambda's run counts too); over one pool of designs the chosen
latency can only fall, and the accuracy only fall, as lambda grows.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from sim import Scenario

from .config import SearchConfig
from .evaluate import Evaluation, MapFn
from .nsga import SearchResult, run_search

__all__ = ["LambdaSweep", "lambda_sweep"]


@dataclass
class LambdaSweep:
    """One scalarised run per lambda, and the pooled choice for each."""

    lams: tuple[float, ...]
    runs: list[SearchResult]

    def pool(self) -> list[Evaluation]:
        """Every feasible design any run evaluated, once each."""
        seen: dict[tuple[int, ...], Evaluation] = {}
        for run in self.runs:
            for genome, ev in run.evaluations.items():
                if ev.feasible:
                    seen.setdefault(genome, ev)
        return list(seen.values())

    def choices(self) -> list[Evaluation]:
        """For each lambda, the design maximising accuracy - lambda x latency over the pool."""
        pool = self.pool()
        if not pool:
            raise ValueError("no feasible design was found for any lambda")
        return [max(pool, key=partial(_objective, config=run.config)) for run in self.runs]


def _objective(e: Evaluation, config: SearchConfig) -> float:
    return e.objectives(config)[0]


def lambda_sweep(scenario: Scenario, config: SearchConfig, lams: Sequence[float],
                 out_dir: str | os.PathLike[str], *, cache_path: str | None = None,
                 map_fn: MapFn | None = None, progress: bool = False) -> LambdaSweep:
    """Run the scalarised search for each lambda (>= 0, per second) into ``out_dir/lam-L``."""
    if not lams:
        raise ValueError("lams: give at least one lambda")
    bad = [lam for lam in lams if not lam >= 0]
    if bad:
        raise ValueError(f"lams: every lambda must be >= 0 (per second of latency), got {bad[0]}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = cache_path or str(out / "accuracy.sqlite")
    runs = []
    for lam in lams:
        cfg = config.with_changes(objective="scalarized", lam=float(lam))
        runs.append(run_search(scenario, cfg, out / f"lam-{lam:g}", cache_path=cache,
                               map_fn=map_fn, progress=progress))
    return LambdaSweep(tuple(float(lam) for lam in lams), runs)
