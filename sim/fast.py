"""Exact fast evaluator: the FIFO queues of a pipeline solved by recursion, without events.

For a FIFO single-server queue with arrivals a_1 <= a_2 <= ... and service times S_i, the
departures follow Lindley's recursion d_i = max(a_i, d_{i-1}) + S_i, whose solution is the
max-plus sum d_n = max_{k<=n} (a_k + S_k + ... + S_n) = P_n + max_{k<=n} (a_k - P_{k-1}) with
P the prefix sums of S: one ``cumsum`` and one ``maximum.accumulate`` (Baccelli et al.,
*Synchronization and Linearity*, 1992, ch. 7).

A link of time-varying rate r(t) is the same queue in *cumulative-capacity space*: with
C(t) = integral_0^t r, a transfer of b bits that starts at s ends at C^{-1}(C(s) + b), and
C(max(a, d)) = max(C(a), C(d)) since C is non-decreasing, so D_i = max(C(a_i), D_{i-1}) + b_i is
Lindley's recursion on capacities, and d_i = C^{-1}(D_i).

A node with c > 1 servers is solved exactly with the FIFO multi-server recursion (Kiefer and
Wolfowitz 1955): task i starts at max(a_i, the earliest time a server frees), in a heap; that part
is a Python loop, not vectorised.

Stages are solved one after the other; tasks of several sources that meet at a queue are merged
in order of arrival there. Tasks that arrive at a queue at the same instant are served in the order
SimPy serves them: by when the event that brought them there was scheduled, then by task index
(a tie on both, which needs a double coincidence, may still be ordered differently; a split
policy's task that reaches a queue on arrival, having skipped the stages before, at the instant
another task does from an earlier stage is refused, see :func:`_refuse_fresh_ties`). This is exact
when every queue is visited by one stage of the pipeline (otherwise, e.g. the backward pass of
training mode on the device, tasks of different stages interleave in one queue and the
stage-by-stage order breaks: the evaluator refuses).
"""

from __future__ import annotations

import heapq

import numpy as np
from numpy.typing import NDArray

from .engine import RunRecord, Timeline, fill_skipped
from .errors import FastEvaluatorError
from .network import Plan, Resource
from .workload import TaskSet

__all__ = ["check_fast_applicable", "lindley_departures", "run_fast"]


def lindley_departures(
    arrival: NDArray[np.float64], service: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Departures of a FIFO single-server queue (arrivals sorted), vectorised max-plus form."""
    prefix = np.cumsum(service)
    return prefix + np.maximum.accumulate(arrival - (prefix - service))


def _multi_server_departures(
    arrival: NDArray[np.float64], service: NDArray[np.float64], servers: int
) -> NDArray[np.float64]:
    free = [0.0] * servers  # times at which each server frees, as a heap
    out = np.empty(arrival.size)
    for i, (a, s) in enumerate(zip(arrival.tolist(), service.tolist(), strict=True)):
        start = max(a, free[0])
        out[i] = start + s
        heapq.heapreplace(free, out[i])
    return out


def check_fast_applicable(plan: Plan) -> None:
    """Raise :class:`FastEvaluatorError` unless every queue is used by one stage index only."""
    used_at: dict[int, int] = {}
    for s in range(plan.resource.shape[1]):
        for r in np.unique(plan.resource[:, s][plan.resource[:, s] >= 0]).tolist():
            if r in used_at and used_at[r] != s:
                name = plan.resources[r].name
                raise FastEvaluatorError(
                    f"the fast evaluator needs every node and link used by one stage only; "
                    f"{name!r} serves stages {used_at[r]} and {s} (use the simpy engine)"
                )
            used_at[r] = s


def _solve_queue(
    resource: Resource, a: NDArray[np.float64], work: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(start, end) of tasks arriving at ``a`` (sorted) with ``work`` (s, or bits on a link)."""
    if resource.channel is not None:
        ch = resource.channel
        d = ch.inverse_capacity(lindley_departures(ch.capacity(a), work))
        d = np.maximum(d, a)  # guards C^-1 rounding below the arrival
    elif resource.servers == 1:
        d = lindley_departures(a, work)
    else:
        d = _multi_server_departures(a, work, resource.servers)
        return d - work, d
    start = np.empty_like(a)
    start[0] = a[0]
    np.maximum(a[1:], d[:-1], out=start[1:])
    return start, d


def _refuse_fresh_ties(plan: Plan, s: int, res_s: NDArray[np.intp],
                       ready: NDArray[np.float64], fresh: NDArray[np.bool_]) -> None:
    """Raise :class:`FastEvaluatorError` where a task that skipped every stage so far reaches
    a queue at the very instant another task, from an earlier stage, does: SimPy orders the
    two by when the events that woke them were scheduled (an arrival's by the arrival before
    it), an order the recursion does not track. Needs exact ties: periodic or replayed
    arrivals with constant work, not Poisson ones."""
    for r in np.unique(res_s[res_s >= 0]).tolist():
        here = res_s == r
        new, old = ready[here & fresh], ready[here & ~fresh]
        if new.size and old.size and np.intersect1d(new, old).size:
            raise FastEvaluatorError(
                f"the fast evaluator cannot order tasks that reach {plan.resources[r].name!r} "
                f"(stage {s}) at the same instant, one on arrival and one from an earlier stage "
                "(use the simpy engine)")


def _strictly_increasing(x: NDArray[np.float64]) -> bool:
    return bool(np.all(x[1:] > x[:-1]))


def run_fast(plan: Plan, tasks: TaskSet, *, keep_timeline: bool = False) -> RunRecord:
    """Evaluate one replication exactly, stage by stage, with the recursions above.

    A split policy's tasks skip the merged stages their own pipeline lacks: at each stage only
    the tasks that visit it queue, the others keep the time and the tie-break of their last
    stage. Every pipeline is a subsequence of the merged one, so a queue's visitors have all
    finished their earlier stages when it is solved.
    """
    check_fast_applicable(plan)
    n, k = tasks.n, len(plan.stages)
    m = tasks.measured
    rows = plan.rows(tasks)
    queued = np.empty((k, n))
    start = np.empty((k, n))
    end = np.empty((k, n))
    busy = np.zeros(len(plan.resources))
    mbusy = np.zeros(len(plan.resources))
    single_row = plan.resource.shape[0] == 1
    ready = tasks.arrival_s
    # When the event that makes each task ask for the current stage was scheduled: SimPy serves
    # requests made at the same instant in that order (then by task index), and so do we.
    woke = tasks.arrival_s
    fresh = np.ones(n, dtype=bool)  # has not yet visited a stage (a policy's may skip some)
    for s in range(k):
        queued[s] = ready
        res_s = np.full(n, plan.resource[0, s]) if single_row else plan.resource[:, s][rows]
        if plan.policy is not None:
            _refuse_fresh_ties(plan, s, res_s, ready, fresh)
            fresh &= res_s < 0
        work = np.full(n, plan.base[0, s]) if single_row else plan.base[:, s][rows]
        if not plan.is_link[s]:
            work *= tasks.multipliers[:, s]
        # the queues of the stage: every row's, or (a policy's rows may go unused) the tasks'
        groups = np.unique(plan.resource[:, s] if plan.policy is None else res_s).tolist()
        if groups == [-1]:  # no task visits it
            start[s] = end[s] = ready
            continue
        if len(groups) == 1 and _strictly_increasing(ready):
            # One queue, tasks already in order of arrival (the usual case after a FIFO stage).
            start[s], end[s] = _solve_queue(plan.resources[groups[0]], ready, work)
        else:
            for r in groups:
                members = np.flatnonzero(res_s == r)
                if r < 0:  # they skip the stage: no queue, no time
                    start[s, members] = end[s, members] = ready[members]
                    continue
                members = members[np.lexsort((members, woke[members], ready[members]))]
                start[s, members], end[s, members] = _solve_queue(
                    plan.resources[r], ready[members], work[members]
                )
        service = end[s] - start[s]
        if len(groups) == 1:
            busy[groups[0]] += service.sum()
            mbusy[groups[0]] += service[m].sum()
        else:
            used = res_s >= 0
            busy += np.bincount(res_s[used], weights=service[used], minlength=busy.size)
            mbusy += np.bincount(res_s[used & m], weights=service[used & m], minlength=busy.size)
        prop = plan.propagation[:, s]
        visits = res_s >= 0
        if np.any(prop):
            task_prop = np.full(n, prop[0]) if single_row else prop[rows]
            ready = end[s] + task_prop
            woke = np.where(visits, np.where(task_prop > 0, end[s], start[s]), woke)
        else:
            ready = end[s]
            woke = np.where(visits, start[s], woke) if not visits.all() else start[s]
    completion = ready
    timeline = None
    if keep_timeline:
        resource = plan.resource[rows]
        queued_t, start_t, end_t = queued.T.copy(), start.T.copy(), end.T.copy()
        fill_skipped(resource, plan.propagation[rows], tasks.arrival_s, queued_t, start_t, end_t)
        timeline = Timeline(tasks.arrival_s, tasks.source, resource, queued_t, start_t, end_t,
                            completion)
    return RunRecord(
        arrival_s=tasks.arrival_s,
        completion_s=completion,
        measured=m,
        stage_wait_s=(start[:, m] - queued[:, m]).sum(axis=1),
        stage_service_s=(end[:, m] - start[:, m]).sum(axis=1),
        stage_propagation_s=plan.propagation[rows[m]].sum(axis=0),
        busy_s=busy,
        measured_busy_s=mbusy,
        timeline=timeline,
    )
