"""Simulator speed and memory, against a plain-SimPy baseline measured in the same run.

Prints stage visits per second for
  - baseline: a minimal tandem of five FIFO queues written directly in SimPy (no statistics),
  - sim (simpy engine): ``sim.simulate`` on the same five-stage pipeline,
  - sim (fast evaluator): the exact recursion on the same pipeline,
  - the fast evaluator again with a Rayleigh block-fading uplink (capacity space),
and the ratios; then the peak resident memory of a 10^6-task run of the simpy engine, measured in
a child process.

    python benchmarks/bench_sim.py [--tasks 100000] [--memory-tasks 1000000] [--skip-memory]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from collections.abc import Generator
from typing import Any

import numpy as np
import simpy

from sim import Compute, Scenario, Transfer, scenario_from_dict, simulate

STAGES = 5


def scenario(tasks: int, fading: bool = False) -> Scenario:
    uplink: dict[str, Any] = {"model": "constant", "rate_bps": 20e6}
    if fading:
        uplink = {"model": "rayleigh", "bandwidth_hz": 20e6, "tx_power_dbm": 23,
                  "distance_m": 80, "coherence_s": 0.01}
    return scenario_from_dict({
        "name": "bench",
        "input_shape": [3, 224, 224],
        "nodes": {"phone": {"kind": "device", "flops_per_s": 10e9},
                  "edge": {"kind": "edge", "flops_per_s": 1e12},
                  "cloud": {"kind": "cloud", "flops_per_s": 10e12}},
        "links": [{"src": "phone", "dst": "edge", "channel": uplink},
                  {"src": "edge", "dst": "cloud", "channel": {"model": "constant",
                                                              "rate_bps": 400e6}}],
        "path": ["phone", "edge", "cloud"],
        "workload": {"sources": ["phone"], "arrivals": {"process": "poisson", "rate_hz": 10},
                     "tasks": tasks, "warmup_tasks": 0},
    })


PIPELINE = (
    Compute("phone", 5e8, "exponential"),       # 50 ms mean, rho 0.5
    Transfer("phone", "edge", 6e5),             # 30 ms at 20 Mbit/s
    Compute("edge", 2e10, "exponential"),       # 20 ms
    Transfer("edge", "cloud", 4e6),             # 10 ms
    Compute("cloud", 1e11, "exponential"),      # 10 ms
)


def plain_simpy_tandem(arrivals: np.ndarray, services: np.ndarray) -> float:
    """The baseline: tasks through five FIFO queues, plain SimPy, returns the mean latency."""
    env = simpy.Environment()
    queues = [simpy.Resource(env, capacity=1) for _ in range(services.shape[1])]
    total = [0.0]

    def task(t0: float, row: list[float]) -> Generator[simpy.Event, Any, None]:
        for q, s in zip(queues, row, strict=True):
            with q.request() as req:
                yield req
                yield env.timeout(s)
        total[0] += env.now - t0

    def source() -> Generator[simpy.Event, Any, None]:
        for t, row in zip(arrivals.tolist(), services.tolist(), strict=True):
            yield env.timeout(t - env.now)
            env.process(task(t, row))

    env.process(source())
    env.run()
    return total[0] / arrivals.size


def timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def memory_child(tasks: int) -> None:
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    elapsed, result = timed(lambda: simulate(scenario(tasks), PIPELINE, seed=1))
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{peak_rss / 1024:.0f} {base_rss / 1024:.0f} {elapsed:.1f} "
          f"{result.report.mean_latency_s:.6f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--memory-tasks", type=int, default=1_000_000)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return

    n = args.tasks
    visits = n * STAGES
    sc = scenario(n)
    # The baseline replays exactly the arrivals and service times of the simulator's run.
    rec = simulate(sc, PIPELINE, seed=1, engine="fast", keep_timeline=True).records[0]
    assert rec.timeline is not None
    services = rec.timeline.service_s
    t_base, base_mean = timed(lambda: plain_simpy_tandem(rec.arrival_s, services))
    t_sim, res_sim = timed(lambda: simulate(sc, PIPELINE, seed=1, engine="simpy"))
    t_fast, res_fast = timed(lambda: simulate(sc, PIPELINE, seed=1, engine="fast"))
    sc_fading = scenario(n, fading=True)
    t_fade_sim, _ = timed(lambda: simulate(sc_fading, PIPELINE, seed=1, engine="simpy"))
    t_fade, _ = timed(lambda: simulate(sc_fading, PIPELINE, seed=1, engine="fast"))

    print(f"{n} tasks x {STAGES} stages = {visits} stage visits (one replication)")
    print(f"{'':34} {'seconds':>8} {'visits/s':>12}")
    rows = [("baseline: plain SimPy tandem", t_base), ("sim, simpy engine", t_sim),
            ("sim, fast evaluator", t_fast), ("sim, simpy engine, fading uplink", t_fade_sim),
            ("sim, fast evaluator, fading uplink", t_fade)]
    for label, t in rows:
        print(f"{label:34} {t:8.3f} {visits / t:12,.0f}")
    print(f"simpy engine / baseline speed:  {t_base / t_sim:.2f}  (target >= 0.5)")
    print(f"fast / simpy engine speed:      {t_sim / t_fast:.0f}x (target >= 50)")
    print(f"fast / simpy, fading uplink:    {t_fade_sim / t_fade:.0f}x")
    print(f"mean latency: baseline {base_mean:.6f} s, simpy {res_sim.report.mean_latency_s:.6f} s, "
          f"fast {res_fast.report.mean_latency_s:.6f} s")

    if not args.skip_memory:
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", str(args.memory_tasks)],
            capture_output=True, text=True, check=True,
        ).stdout.split()
        peak, base, secs, mean = out
        print(f"{args.memory_tasks} tasks, simpy engine: peak RSS {peak} MiB (after imports "
              f"{base} MiB), {secs} s ({args.memory_tasks * STAGES / float(secs):,.0f} visits/s), "
              f"mean latency {mean} s")


if __name__ == "__main__":
    main()
