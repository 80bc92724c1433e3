"""Whole-process wall time of the command line, start-up included, in one run.

Prints the median over ``--repeat`` runs, each a fresh process, of
  - ``python -c pass`` (the interpreter alone),
  - ``jmsnas --help``,
  - ``jmsnas simulate`` of a few tasks (its start-up),
  - ``jmsnas simulate`` of ``--tasks`` tasks through a five-stage tandem (exponential computes,
    constant transfers, Poisson arrivals; a scenario written to a temporary folder),
  - a plain SimPy tandem of the same tasks and stages, written in a few lines (numpy draws the
    times, five ``simpy.Resource`` queues, the mean latency printed),
and the ratios. The issue's goal: ``jmsnas simulate`` within 1.0x of the plain tandem.

    python benchmarks/startup.py [--tasks 100000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

STAGES = 5

SCENARIO = {
    "name": "startup-bench",
    "input_shape": [3, 224, 224],
    "nodes": {"phone": {"kind": "device", "flops_per_s": 10e9},
              "edge": {"kind": "edge", "flops_per_s": 1e12},
              "cloud": {"kind": "cloud", "flops_per_s": 10e12}},
    "links": [{"src": "phone", "dst": "edge", "channel": {"model": "constant", "rate_bps": 20e6}},
              {"src": "edge", "dst": "cloud", "channel": {"model": "constant",
                                                          "rate_bps": 400e6}}],
    "path": ["phone", "edge", "cloud"],
    "workload": {"sources": ["phone"], "arrivals": {"process": "poisson", "rate_hz": 10}},
    "pipeline": [  # mean service 50, 30, 20, 10, 10 ms (as benchmarks/bench_sim.py)
        {"compute": "phone", "flops": 5e8, "distribution": "exponential"},
        {"transfer": ["phone", "edge"], "bits": 6e5},
        {"compute": "edge", "flops": 2e10, "distribution": "exponential"},
        {"transfer": ["edge", "cloud"], "bits": 4e6},
        {"compute": "cloud", "flops": 1e11, "distribution": "exponential"},
    ],
}

TANDEM = """
import sys, numpy as np, simpy
n = int(sys.argv[1]); rng = np.random.default_rng(1)
arrivals = np.cumsum(rng.exponential(0.1, n)).tolist()
services = np.column_stack([rng.exponential(0.05, n), np.full(n, 0.03), rng.exponential(0.02, n),
                            np.full(n, 0.01), rng.exponential(0.01, n)]).tolist()
env = simpy.Environment(); queues = [simpy.Resource(env) for _ in range(5)]; total = [0.0]
def task(t0, row):
    for q, s in zip(queues, row):
        with q.request() as req:
            yield req
            yield env.timeout(s)
    total[0] += env.now - t0
def source():
    for t, row in zip(arrivals, services):
        yield env.timeout(t - env.now)
        env.process(task(t, row))
env.process(source()); env.run(); print(f"mean latency {total[0] / n:.6f} s")
"""
"""The baseline, run as ``python -c TANDEM N``: 100 ms mean inter-arrival time, the same five
mean service times as :data:`SCENARIO`."""


def jmsnas() -> list[str]:
    """The installed ``jmsnas`` command beside this interpreter, else ``python -m jmsnas``."""
    script = Path(sys.executable).with_name("jmsnas")
    return [str(script)] if script.exists() else [sys.executable, "-m", "jmsnas"]


def wall_time(cmd: list[str], repeat: int) -> float:
    """Median wall time in seconds of ``repeat`` runs of ``cmd``, each a new process."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    n, reps = args.tasks, args.repeat
    with tempfile.TemporaryDirectory() as tmp:
        scenario = Path(tmp) / "tandem.yaml"
        scenario.write_text(yaml.safe_dump(SCENARIO), encoding="utf-8")
        simulate = [*jmsnas(), "simulate", str(scenario), "--warmup", "0"]
        rows = [
            ("python -c pass", wall_time([sys.executable, "-c", "pass"], reps)),
            ("jmsnas --help", wall_time([*jmsnas(), "--help"], reps)),
            ("jmsnas simulate, 10 tasks", wall_time([*simulate, "--tasks", "10"], reps)),
            (f"jmsnas simulate, {n} tasks", wall_time([*simulate, "--tasks", str(n)], reps)),
            (f"plain SimPy tandem, {n} tasks",
             wall_time([sys.executable, "-c", TANDEM, str(n)], reps)),
        ]
    base, tandem = rows[0][1], rows[-1][1]
    print(f"whole-process wall time, median of {reps} runs; {STAGES}-stage tandem, "
          f"{' '.join(jmsnas())}")
    print(f"{'':34} {'seconds':>8} {'x python -c pass':>17} {'x plain SimPy':>14}")
    for label, t in rows:
        print(f"{label:34} {t:8.3f} {t / base:17.1f} {t / tandem:14.2f}")
    print(f"jmsnas simulate / plain SimPy tandem, whole process: {rows[3][1] / tandem:.2f} "
          "(goal <= 1.0)")


if __name__ == "__main__":
    main()
