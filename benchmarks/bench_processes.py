"""Starting a child process for torch work: a fresh interpreter (spawn) against a fork of the
fork server that has imported torch and the project once (:mod:`models.processes`), in one run.

Each child imports what a deployment's node and a search's training worker import, sets one
torch thread and reports back; the time (wall clock) is from creating the process to its
report; for the fork server, the first child's includes the server's start.

    python benchmarks/bench_processes.py [--children 6]

prints each method's median start time and first start, and the ratio spawn / fork server.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models import processes


def _child(answer: Any) -> None:
    import torch

    import deploy.node  # noqa: F401
    import search.evaluate  # noqa: F401

    torch.set_num_threads(1)
    answer.send(torch.get_num_threads())


def spawned(target: Any, args: tuple[Any, ...]) -> BaseProcess:
    ctx: Any = mp.get_context("spawn")
    return ctx.Process(target=target, args=args)  # type: ignore[no-any-return]


def forked(target: Any, args: tuple[Any, ...]) -> BaseProcess:
    """As a deployment and a search start theirs: the fork server also imports their modules."""
    return processes.process(target, args, ("deploy.node", "search.evaluate"))


def starts(make: Callable[[Any, tuple[Any, ...]], BaseProcess], children: int) -> list[float]:
    """Seconds from creating each of ``children`` processes, one after another, to its
    report; ``make(target, args)`` creates one."""
    out = []
    for _ in range(children):
        parent, child = mp.Pipe()
        start = time.perf_counter()
        proc = make(_child, (child,))
        proc.start()
        assert parent.recv() == 1
        out.append(time.perf_counter() - start)
        proc.join()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=6)
    args = parser.parse_args()
    results = {"spawn": starts(spawned, args.children),
               "fork server (models.processes)": starts(forked, args.children)}
    for name, times in results.items():
        print(f"{name:32s} first {times[0]:6.3f} s   median of the rest "
              f"{statistics.median(times[1:]):6.3f} s   all {sum(times):6.2f} s")
    spawn, fork = results.values()
    ratio = statistics.median(spawn[1:]) / statistics.median(fork[1:])
    print(f"ratio spawn / fork server: median {ratio:.0f}x, {args.children} children in all "
          f"{sum(spawn) / sum(fork):.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
