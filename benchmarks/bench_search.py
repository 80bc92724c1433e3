"""Search throughput and quality, measured in one run.

1. Designs evaluated per second with a warm accuracy cache (what is left is profiling and
   simulation), on the shipped three-tier scenario and the ``tiny`` space.
2. Proxy training of twelve cold architectures at the search's default budget: serial against a
   pool of two processes (one torch thread each; the pool's start-up is included).
3. Hypervolume after the same number of evaluations, default budget: NSGA-II against random
   search, a few seeds.

    python benchmarks/bench_search.py [--designs 200] [--seeds 3] [--generations 6]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np

from search.baselines import random_search
from search.config import SearchConfig
from search.evaluate import Evaluator
from search.nsga import executor_map, run_search
from sim import load_scenario

SCENARIO = Path(__file__).resolve().parent.parent / "experiments" / "scenarios" / "three-tier.yaml"
QUICK = {"epochs": 1, "subset": 300, "batch_size": 64}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--designs", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--generations", type=int, default=6)
    args = parser.parse_args()
    scenario = load_scenario(SCENARIO)
    tmp = Path(tempfile.mkdtemp())
    cfg = SearchConfig(budget=QUICK, executor="serial", sim_tasks=300)  # type: ignore[arg-type]
    ev = Evaluator(scenario, cfg, str(tmp / "warm.sqlite"))
    rng = np.random.default_rng(0)
    genomes = list(dict.fromkeys(
        ev.layout.canonical([int(rng.integers(b)) for b in ev.layout.bounds])
        for _ in range(args.designs)))
    ev.evaluate(genomes)  # fills the cache (and the profiler's memo)
    start = time.perf_counter()
    ev.evaluate(genomes)
    warm = len(genomes) / (time.perf_counter() - start)
    print(f"warm cache: {warm:.1f} designs/s ({len(genomes)} designs, 300 simulated tasks each)")

    full = SearchConfig(executor="serial")
    ev_full = Evaluator(scenario, full, str(tmp / "unused.sqlite"))
    jobs = list(dict.fromkeys(ev_full.train_job(ev_full.layout.decode(g)) for g in genomes))[:12]
    from search.evaluate import run_train_job

    times = {}
    for name, c in (("serial", full), ("pool of 2", full.with_changes(executor="local",
                                                                          workers=2))):
        fresh = [dataclasses.replace(j, cache_path=str(tmp / f"{name}.sqlite")) for j in jobs]
        start = time.perf_counter()
        with executor_map(c) as map_fn:
            list(map_fn(run_train_job, fresh))
        times[name] = time.perf_counter() - start
        print(f"proxy training, {name}: {len(jobs) / times[name] * 60:.1f} architectures/min")
    print(f"pool / serial speed-up: {times['serial'] / times['pool of 2']:.2f}x")

    ga_hv, rs_hv, evals = [], [], []
    shared = str(tmp / "shared.sqlite")
    for seed in range(args.seeds):
        c = full.with_changes(seed=seed, generations=args.generations)
        r = run_search(scenario, c, tmp / f"ga{seed}", cache_path=shared)
        rs = random_search(scenario, c, len(r.evaluations), tmp / f"rs{seed}", cache_path=shared)
        ga_hv.append(r.hypervolume())
        rs_hv.append(rs.hypervolume())
        evals.append(len(r.evaluations))
    print(f"hypervolume after {np.mean(evals):.0f} evaluations (mean of {args.seeds} seeds): "
          f"NSGA-II {np.mean(ga_hv):.4f} (min {min(ga_hv):.4f}), random search "
          f"{np.mean(rs_hv):.4f} (min {min(rs_hv):.4f}); "
          f"per 100 evaluations: {100 * np.mean(ga_hv) / np.mean(evals):.4f} vs "
          f"{100 * np.mean(rs_hv) / np.mean(evals):.4f}")


if __name__ == "__main__":
    main()
