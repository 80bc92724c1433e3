"""A search sharing the machine: alone, then beside one CPU-bound process, in one run.

A one-generation search (``jmsnas search`` as a user runs it, cold cache, the default pool of
training workers) is timed alone and then with a busy process beside it (a Python loop that
never sleeps). Proxy training runs one torch thread per worker process
(:func:`models.train.one_thread`), so beside one busy process on two cores the search should
get about two thirds of the machine: about 1.5x its time alone, and the same CPU time. With
several torch threads per process, threads that wait on each other burn CPU instead (3.0x the
time and twice the CPU time were measured so before that choice).

    python benchmarks/bench_busy.py [--repeats 2] [--population 8]

prints, per condition, the median wall time and CPU time of the search's processes, and the
ratios beside / alone.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one_search(population: int, out: Path) -> tuple[float, float]:
    """(wall s, CPU s of the search and its workers) of one cold search."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "jmsnas", "search", "three-tier", "--dataset",
                    "mnist5k", "--generations", "1", "--population", str(population),
                    "--out", str(out), "--quiet"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--population", type=int, default=8)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPU cores; one-generation search of {args.population} designs, "
          f"cold cache, {args.repeats} runs per condition (median)")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for condition in ("alone", "beside a busy process"):
            busy = None
            if condition != "alone":
                busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            try:
                runs = [one_search(args.population, Path(tmp) / f"{condition[:5]}-{k}")
                        for k in range(args.repeats)]
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
            wall = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            results[condition] = (wall, cpu)
            print(f"{condition:>22}: {wall:6.1f} s wall, {cpu:6.1f} s CPU "
                  f"(runs: {', '.join(f'{r[0]:.1f}' for r in runs)} s)")
    (wa, ca), (wb, cb) = results["alone"], results["beside a busy process"]
    print(f"beside / alone: {wb / wa:.2f}x the wall time (a fair share of two cores among three "
          f"busy processes: 1.5x), {cb / ca:.2f}x the CPU time")


if __name__ == "__main__":
    main()
