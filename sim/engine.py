"""The SimPy engine: tasks as processes moving through FIFO queues.

One call of :func:`run_simpy` is one replication in its own ``simpy.Environment``. A node is a
``simpy.Resource`` with one slot per server; a link is a ``simpy.Resource`` with one slot (one
sender), held only while bits are being sent: propagation happens after the link is released, so
the next transfer can start while earlier bits are still in flight.

Nodes given a :class:`CpuShare` run on one host's processors: every request in service on any
of them shares the host's ``cores`` with ``background`` always-busy outside processes, each
progressing at ``min(1, cores / (in service + background))`` of its full speed (processor
sharing, as a fair scheduler gives runnable processes equal shares). Without one, each node has
processors of its own, as across machines.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import simpy
from numpy.typing import NDArray

from .network import Plan
from .workload import TaskSet

__all__ = ["CpuShare", "RunRecord", "Timeline", "fill_skipped", "run_simpy"]


@dataclass(frozen=True)
class CpuShare:
    """Nodes that run on one host (see the module docstring)."""

    nodes: frozenset[str]
    cores: float
    """Processors of the host (> 0)."""
    background: float = 0.0
    """Outside processes that are always runnable, on average (>= 0; fractions allowed)."""

    def __post_init__(self) -> None:
        if not self.cores > 0 or not 0 <= self.background < float("inf"):
            raise ValueError(f"CpuShare: cores must be > 0 and background >= 0 and finite, "
                             f"got {self.cores} and {self.background}")


class _SharedCpu:
    """Processor sharing on one host: :meth:`run` returns an event that fires once ``work``
    seconds of full-speed work are done at the rate the host gives each running job."""

    def __init__(self, env: simpy.Environment, share: CpuShare) -> None:
        self.env = env
        self.cores, self.background = share.cores, share.background
        self.jobs: dict[int, list[Any]] = {}  # id -> [work left (s at full speed), event]
        self.next_id = 0
        self.last = 0.0
        self.version = 0  # stale completion timers are ignored

    def _rate(self) -> float:
        return min(1.0, self.cores / (len(self.jobs) + self.background))

    def _advance(self) -> None:
        if self.jobs:
            done = (self.env.now - self.last) * self._rate()
            for job in self.jobs.values():
                job[0] -= done
        self.last = self.env.now

    def _schedule(self) -> None:
        self.version += 1
        if not self.jobs:
            return
        version = self.version
        left = min(job[0] for job in self.jobs.values())
        timer = self.env.timeout(max(left, 0.0) / self._rate())
        timer.callbacks.append(lambda _: self._finish(version))

    def _finish(self, version: int) -> None:
        if version != self.version:
            return
        self._advance()
        least = min(job[0] for job in self.jobs.values())
        for key in [k for k, job in self.jobs.items() if job[0] <= least + 1e-12]:
            self.jobs.pop(key)[1].succeed()
        self._schedule()

    def run(self, work: float) -> simpy.Event:
        self._advance()
        event = self.env.event()
        self.jobs[self.next_id] = [work, event]
        self.next_id += 1
        self._schedule()
        return event


@dataclass(frozen=True)
class Timeline:
    """Per task and stage: when the task joined the queue, started service and ended service.

    Arrays have shape (tasks, stages), tasks in order of arrival. For a transfer, ``end`` is when
    the last bit left the sender; propagation follows. A stage a task skips (a split policy's
    other pipelines) has ``resource`` -1 and takes no time (see :func:`fill_skipped`).
    """

    task_arrival_s: NDArray[np.float64]
    source: NDArray[np.intp]
    resource: NDArray[np.intp]
    queued_s: NDArray[np.float64]
    start_s: NDArray[np.float64]
    end_s: NDArray[np.float64]
    completion_s: NDArray[np.float64]

    @property
    def waiting_s(self) -> NDArray[np.float64]:
        return self.start_s - self.queued_s

    @property
    def service_s(self) -> NDArray[np.float64]:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class RunRecord:
    """What one replication produced, enough for every statistic of the report.

    Stage sums are over measured tasks (warm-up excluded); ``busy_s`` is per resource over all
    tasks (for utilisation), ``measured_busy_s`` over measured tasks (for energy per task).
    Under processor sharing (:class:`CpuShare`) the two differ in kind: a request holds its node
    for the stretched time (``busy_s``) but uses a processor only for its work at full speed
    (``measured_busy_s``), so sharing does not add energy.
    """

    arrival_s: NDArray[np.float64]
    completion_s: NDArray[np.float64]
    measured: NDArray[np.bool_]
    stage_wait_s: NDArray[np.float64]
    stage_service_s: NDArray[np.float64]
    stage_propagation_s: NDArray[np.float64]
    busy_s: NDArray[np.float64]
    measured_busy_s: NDArray[np.float64]
    timeline: Timeline | None = None

    @property
    def latency_s(self) -> NDArray[np.float64]:
        """Completion latency of every measured task, in order of arrival."""
        return (self.completion_s - self.arrival_s)[self.measured]


def fill_skipped(resource: NDArray[np.intp], propagation: NDArray[np.float64],
                 arrival_s: NDArray[np.float64], queued: NDArray[np.float64],
                 start: NDArray[np.float64], end: NDArray[np.float64]) -> None:
    """Give every stage a task skips (resource -1, a split policy's) the instant the task
    passed it: queued, started and ended when its previous stage's output arrived (its own
    arrival before the first stage). Arrays are (tasks, stages), changed in place."""
    skipped = resource < 0
    if not skipped.any():
        return
    for s in range(resource.shape[1]):
        rows = np.flatnonzero(skipped[:, s])
        if rows.size:
            passed = end[rows, s - 1] + propagation[rows, s - 1] if s else arrival_s[rows]
            queued[rows, s] = start[rows, s] = end[rows, s] = passed


def run_simpy(
    plan: Plan,
    tasks: TaskSet,
    *,
    keep_timeline: bool = False,
    on_complete: Callable[[], None] | None = None,
    cpu_share: CpuShare | None = None,
) -> RunRecord:
    """Simulate one replication with SimPy and return its record.

    Statistics are accumulated as tasks finish; per-stage timelines are kept only when asked
    (memory then grows with tasks x stages). ``cpu_share``: nodes that share a host's processors
    (module docstring); a stage's service time is then the time it took at the shared rate.
    """
    env = simpy.Environment()
    queues = [simpy.Resource(env, capacity=r.servers) for r in plan.resources]
    host = _SharedCpu(env, cpu_share) if cpu_share is not None else None
    on_host = {j for j, r in enumerate(plan.resources)
               if cpu_share is not None and r.kind == "node" and r.name in cpu_share.nodes}
    n, k = tasks.n, len(plan.stages)
    rows = plan.rows(tasks)
    # Per plan row: its stages as plain Python tuples (fast to unpack in the hot loop); a
    # policy's row leaves out the merged stages it skips.
    table = [
        tuple(
            (
                s,
                queues[int(plan.resource[j, s])],
                int(plan.resource[j, s]),
                plan.resources[int(plan.resource[j, s])].channel,
                float(plan.base[j, s]),
                float(plan.propagation[j, s]),
            )
            for s in range(k)
            if plan.resource[j, s] >= 0
        )
        for j in range(plan.resource.shape[0])
    ]
    jitter = bool(np.any(tasks.multipliers != 1.0))
    arrival = tasks.arrival_s.tolist()
    route = rows.tolist()
    measured = tasks.measured.tolist()
    completion = np.zeros(n)
    wait = [0.0] * k
    serv = [0.0] * k
    prop_sum = [0.0] * k
    busy = [0.0] * len(queues)
    mbusy = [0.0] * len(queues)
    if keep_timeline:
        queued_t, start_t, end_t = np.zeros((n, k)), np.zeros((n, k)), np.zeros((n, k))

    def task(i: int) -> Generator[simpy.Event, Any, None]:
        mult = tasks.multipliers[i].tolist() if jitter else None
        meas = measured[i]
        for s, queue, r, channel, base, prop in table[route[i]]:
            queued = env.now
            with queue.request() as req:
                yield req
                start = env.now
                if channel is not None:
                    dur = channel.finish_time(start, base) - start
                else:
                    dur = base * mult[s] if mult is not None else base
                work = dur
                if host is not None and r in on_host:
                    yield host.run(dur)
                    dur = env.now - start
                else:
                    yield env.timeout(dur)
            busy[r] += dur
            if meas:
                wait[s] += start - queued
                serv[s] += dur
                mbusy[r] += work
                prop_sum[s] += prop
            if keep_timeline:
                queued_t[i, s], start_t[i, s], end_t[i, s] = queued, start, env.now
            if prop:
                yield env.timeout(prop)
        completion[i] = env.now
        if on_complete is not None:
            on_complete()

    def arrivals() -> Generator[simpy.Event, Any, None]:
        for i in range(n):
            delay = arrival[i] - env.now
            if delay > 0:
                yield env.timeout(delay)
            env.process(task(i))

    env.process(arrivals())
    env.run()
    timeline = None
    if keep_timeline:
        resource = plan.resource[rows]
        fill_skipped(resource, plan.propagation[rows], tasks.arrival_s, queued_t, start_t, end_t)
        timeline = Timeline(tasks.arrival_s, tasks.source, resource, queued_t, start_t, end_t,
                            completion)
    return RunRecord(
        arrival_s=tasks.arrival_s,
        completion_s=completion,
        measured=tasks.measured,
        stage_wait_s=np.array(wait),
        stage_service_s=np.array(serv),
        stage_propagation_s=np.array(prop_sum),
        busy_s=np.array(busy),
        measured_busy_s=np.array(mbusy),
        timeline=timeline,
    )
