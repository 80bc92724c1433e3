"""Calibrate the simulator to a deployment, and predict what the deployment will measure.

Two measurements on this machine, taken before the deployment runs and in isolation from it:

- each node's work per request, timed the way a node worker does it (decode the payload, run the
  segment on one torch thread, encode the frame), ``reps`` times after a warm-up: its mean and
  coefficient of variation;
- the transport's fixed cost per message on each hop: from the hand-over of the frame's last
  chunk to the frame delivered past the propagation hold, on a real loopback socket (kernel
  copy, receiver wake-up, frame parsing, the hand-off to a worker, sleep overshoot), and the
  same from a request's arrival time to the first node's worker.

:meth:`Calibration.pipeline` turns them into a pipeline (compute work = mean seconds x the node's
FLOP/s, lognormal with the measured variation; transfers = the bits of the whole frame, header
included) and :meth:`Calibration.scenario` adds the transport cost to each link's propagation, so
that :func:`predict` simulates this very deployment on the same arrival and channel sample path.
Every node of a local deployment runs on this machine: the prediction shares its processors
among them and the outside load measured during the calibration (:class:`sim.engine.CpuShare`),
so that two nodes busy at once beside a busy process each run slower, as they do.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from scipy import stats
from torch import Tensor

from models import processes
from models.build import build_model
from models.split import Segment, split_model
from search.design import Design
from sim.engine import CpuShare
from sim.policy import SplitPolicy
from sim.report import LatencyReport
from sim.scenario import Scenario
from sim.simulate import simulate
from sim.workload import Compute, Stage, Transfer

from .node import run_stage
from .pacing import sleep_until
from .routing import Routing, used_route
from .run import request_input
from .wire import DATA, Message, decode_payload, encode, payload_tensors, recv_message

__all__ = ["Calibration", "PolicyCalibration", "StageTiming", "calibrate", "calibrate_policy",
           "handoff_s", "predict", "stage_means"]

_MIN_CV = 0.01
_WARMUP = 3
_HANDOFF_REPS = 13


@dataclass(frozen=True)
class StageTiming:
    """One node's measured work per request (seconds)."""

    node: str
    mean_s: float
    cv: float
    samples: int


@dataclass(frozen=True)
class Calibration:
    compute: tuple[StageTiming, ...]
    """Nodes that run blocks, in route order."""
    frame_bits: tuple[float, ...]
    """Bits of the frame each hop carries, header included."""
    overhead_s: tuple[float, ...]
    """Measured fixed transport cost per message, per hop."""
    dispatch_s: float = 0.0
    """Measured time from a request's arrival time to the first node's worker starting on it
    (the client's send, the node's receive and hand-off). The simulator has no stage for it: it
    is added to the first compute stage's work (exact without queueing, our choice; under
    processor sharing it is then shared like the work)."""
    host_cores: float = 0.0
    """Processors of this machine, which every node of the deployment shares: those this
    process may run on (0: not known; the simulator then gives each node processors of its
    own). A control group's CPU quota is not seen (see :func:`_busy_cores_s`)."""
    outside_cores: float = 0.0
    """Processors kept busy by other processes while the calibration ran, on average (from
    ``/proc/stat`` less the calibration's own CPU time; 0 where there is no ``/proc/stat``)."""

    def cpu_share(self, scenario: Scenario) -> CpuShare | None:
        """The scenario's nodes on this machine's processors, beside the outside load."""
        if self.host_cores <= 0:
            return None
        return CpuShare(frozenset(scenario.nodes), self.host_cores, self.outside_cores)

    @property
    def speed(self) -> float:
        """The share of a processor a segment got while it was timed, alone beside the
        outside load (1 where that left it a processor, or where the machine is not known):
        the measured times are divided back to full-speed work, which the prediction then
        shares again."""
        if self.host_cores <= 0:
            return 1.0
        return min(1.0, self.host_cores / (1.0 + self.outside_cores))

    def pipeline(self, design: Design, scenario: Scenario) -> tuple[Stage, ...]:
        route = used_route(design)
        timing = {t.node: t for t in self.compute}
        stages: list[Stage] = []
        extra = self.dispatch_s
        for j, node in enumerate(route):
            if node in timing:
                t = timing[node]
                # the hand-off was measured beside the same outside load as the segment: both
                # go back to full speed, so that a request alone takes what was measured
                work = (t.mean_s + extra) * self.speed * scenario.nodes[node].flops_per_s
                extra = 0.0
                stages.append(Compute(node, work, "lognormal", t.cv) if t.cv >= _MIN_CV
                              else Compute(node, work))
            if j < len(route) - 1:
                stages.append(Transfer(node, route[j + 1], self.frame_bits[j]))
        return tuple(stages)

    def scenario(self, design: Design, scenario: Scenario) -> Scenario:
        """``scenario`` with each used link's propagation increased by its transport cost."""
        route = used_route(design)
        extra = {frozenset(hop): o
                 for hop, o in zip(itertools.pairwise(route), self.overhead_s, strict=True)}
        links = [link.model_copy(update={"propagation_s": link.propagation_s
                                         + extra.get(frozenset((link.src, link.dst)), 0.0)})
                 for link in scenario.links]
        return scenario.model_copy(update={"links": links})


def _gaps(rate: float | None, n: int, seed: int) -> NDArray[np.float64]:
    """Idle times to leave before each timed run: exponential with mean 1 / ``rate``, at most
    1 s (none for ``rate`` None or 0)."""
    if not rate:
        return np.zeros(n)
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, n)
    return np.asarray(np.minimum(gaps, 1.0), dtype=np.float64)


def _time_segment(segment: Segment, payloads: list[tuple[Tensor, ...]],
                  gaps: NDArray[np.float64]) -> NDArray[np.float64]:
    """Seconds of a node worker's work per request, each run after its idle gap: a processor
    that idled between requests runs the next one slower than back to back (on this 2-core
    machine a ResNet-18 head took 5.7 ms back to back, 6.2 ms after 0.1 s idle and 8.1 ms after
    0.3 s), so the calibration replays the deployment's request rate."""
    times = []
    for k, gap in enumerate(gaps):
        payload = payloads[k % len(payloads)]
        time.sleep(float(gap))
        start = time.perf_counter()
        out = run_stage(segment, decode_payload(payload))
        encode(Message(DATA, k, 0.0, payload_tensors(out)))
        times.append(time.perf_counter() - start)
    return np.array(times[_WARMUP:])


def handoff_s(frame_bytes: int, propagation_s: float, gaps: NDArray[np.float64], *,
              from_deadline: bool = False) -> float:
    """Mean time (trimmed, see below) from the send of a frame's last chunk to a node worker
    starting on it, beyond ``propagation_s``, on a loopback TCP connection: kernel copy, the
    receiver waking up and parsing, the queue hand-off to a worker, sleep overshoot. A paced
    frame's last chunk is at most 64 KiB, so at most that much is sent here; ``gaps`` are the
    idle times before each.
    ``from_deadline``: from the time the sender was due to send instead (as the client does),
    so that its own wake-up counts too.

    Each send is timed as it starts, not as ``sendall`` returns: the receiver cannot have the
    frame before then, so no sample is negative. Timed on return, a sender preempted between
    the two (seen beside three busy processes on two cores) gave a mean of -0.25 ms."""
    size = int(min(frame_bytes, 65536))
    server = socket.create_server(("127.0.0.1", 0))
    sender = socket.create_connection(server.getsockname())
    receiver, _ = server.accept()
    for s in (sender, receiver):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    frame = encode(Message(DATA, 0, 0.0, (torch.zeros(max(size - 64, 1), dtype=torch.uint8),)))
    held: queue.Queue[float] = queue.Queue()
    work: queue.Queue[float] = queue.Queue()
    started: list[float] = []

    def receive() -> None:  # as a node's receiver, release and worker threads do
        for _ in gaps:
            recv_message(receiver)
            held.put(time.monotonic() + propagation_s)

    def release() -> None:
        for _ in gaps:
            due = held.get()
            sleep_until(due)
            work.put(due)

    def serve() -> None:
        for _ in gaps:
            work.get()
            started.append(time.monotonic())

    threads = [threading.Thread(target=receive, daemon=True),
               threading.Thread(target=release, daemon=True),
               threading.Thread(target=serve, daemon=True)]
    for t in threads:
        t.start()
    sent = []
    try:
        for gap in gaps:
            due = time.monotonic() + float(gap) + propagation_s
            sleep_until(due)
            sent.append(due if from_deadline else time.monotonic())
            sender.sendall(frame)
        for t in threads:
            t.join(10.0)
    finally:
        for s in (sender, receiver, server):
            s.close()
    # a trimmed mean (the largest and smallest tenth left out in whole samples: one each of
    # the ten here, none of fewer than ten): the simulator adds one constant per hop, and one
    # stall of the shared machine (a 10 ms one moves a mean of ten by 1 ms) would be added to
    # every request's hop
    samples = (np.array(started) - np.array(sent))[_WARMUP:]
    return float(stats.trim_mean(samples, 0.1)) - propagation_s


def calibrate(scenario: Scenario, design: Design, *, seed: int = 0, num_classes: int = 10,
              reps: int = 20, idle_rate_hz: float | None = None) -> Calibration:
    """Measure the design's work per node and the transport cost per hop (module docstring),
    ``reps`` runs each after a few warm-up runs, with idle gaps at ``idle_rate_hz`` (default:
    the scenario's arrival rate; 0: back to back).

    The measurement runs in a fresh process started like a node (:mod:`models.processes`, one
    torch thread): in the caller's process, earlier work (for example training with two OpenMP
    threads) was seen to slow a segment by up to 30%."""
    return _calibrate_all(scenario, (design,), seed, num_classes, reps, idle_rate_hz)[0]


def calibrate_policy(scenario: Scenario, routing: Routing, *, seed: int = 0,
                     num_classes: int = 10, reps: int = 20,
                     idle_rate_hz: float | None = None) -> PolicyCalibration:
    """:func:`calibrate` for each state of a split policy (states that run the same design are
    measured once), in one fresh process."""
    unique = list(dict.fromkeys(routing.designs))
    cals = _calibrate_all(scenario, tuple(unique), seed, num_classes, reps, idle_rate_hz)
    return PolicyCalibration(tuple(cals[unique.index(d)] for d in routing.designs))


def _calibrate_all(scenario: Scenario, designs: tuple[Design, ...], seed: int, num_classes: int,
                   reps: int, idle_rate_hz: float | None) -> list[Calibration]:
    rate = getattr(scenario.workload.arrivals, "rate_hz", None) if idle_rate_hz is None \
        else idle_rate_hz
    with processes.pool(1, preload=("deploy.calibrate",)) as pool:
        return pool.submit(_calibrate_here, scenario, designs, seed, num_classes, reps,
                           rate).result()


def _busy_cores_s(cpus: set[int] | None = None) -> float | None:
    """Processor-seconds the processors ``cpus`` (default: those this process may run on)
    have spent busy since boot, every process's (user, nice, system, interrupts; not idle, I/O
    wait or time stolen by a hypervisor), from ``/proc/stat``'s per-processor lines; None
    without them. A CPU quota (cgroup ``cpu.max``) is not seen: the processors count whole.
    Capping them by the quota would be wrong twice over: the quota limits the average use per
    period, not how many requests run at once, and the outside load here counts processes
    outside the control group, which do not spend its quota (that needs the group's own
    usage, ``cpu.stat``)."""
    cpus = _cpus() if cpus is None else cpus
    total, seen = 0, False
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            for line in fh:
                fields = line.split()
                if not fields or not fields[0].startswith("cpu") or fields[0] == "cpu":
                    continue
                if int(fields[0][3:]) in cpus and len(fields) >= 8:
                    user, nice, system, _idle, _iowait, irq, softirq = map(int, fields[1:8])
                    total += user + nice + system + irq + softirq
                    seen = True
    except (OSError, ValueError):
        return None
    return total / os.sysconf("SC_CLK_TCK") if seen else None


def _cpus() -> set[int]:
    """The processors this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def _outside_cores(busy_s: float, own_s: float, elapsed_s: float) -> float:
    """Processors other processes kept busy on average: the machine's busy time over an
    interval less this process's own CPU time in it, per second of the interval."""
    return max(0.0, (busy_s - own_s) / elapsed_s) if elapsed_s > 0 else 0.0


def _calibrate_here(scenario: Scenario, designs: tuple[Design, ...], seed: int, num_classes: int,
                    reps: int, rate: float | None) -> list[Calibration]:
    torch.set_num_threads(1)  # as in a node process
    cpus = _cpus()
    busy, own, start = _busy_cores_s(cpus), time.process_time(), time.monotonic()
    cals = [_calibrate_design(scenario, d, seed, num_classes, reps, rate) for d in designs]
    end_busy, own, elapsed = (_busy_cores_s(cpus), time.process_time() - own,
                              time.monotonic() - start)
    outside = 0.0 if busy is None or end_busy is None else \
        _outside_cores(end_busy - busy, own, elapsed)
    return [dataclasses.replace(c, host_cores=float(len(cpus)), outside_cores=outside)
            for c in cals]


def _calibrate_design(scenario: Scenario, design: Design, seed: int, num_classes: int, reps: int,
                      rate: float | None) -> Calibration:
    route = used_route(design)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(design.arch, scenario.input_shape[0], num_classes, cuts=design.cuts)
    segments = split_model(model.eval())[: len(route)]
    gaps = _gaps(rate, reps + _WARMUP, seed)
    inputs: list[tuple[Tensor, ...]] = [(request_input(scenario, seed, i),) for i in range(8)]
    first = encode(Message(DATA, 0, 0.0, inputs[0]))
    dispatch = handoff_s(len(first), 0.0, gaps[:_HANDOFF_REPS], from_deadline=True)
    compute, frame_bits, overhead = [], [], []
    for j, (node, segment) in enumerate(zip(route, segments, strict=True)):
        if len(segment.blocks):
            times = _time_segment(segment, inputs, gaps)
            compute.append(StageTiming(node, float(times.mean()),
                                       float(times.std(ddof=1) / times.mean()), times.size))
        inputs = [payload_tensors(run_stage(segment, decode_payload(p))) for p in inputs]
        if j < len(route) - 1:
            frame = encode(Message(DATA, 0, 0.0, inputs[0]))
            frame_bits.append(8.0 * len(frame))
            link = scenario.graph().edges[node, route[j + 1]]["spec"]
            overhead.append(handoff_s(len(frame), link.propagation_s, gaps[:_HANDOFF_REPS]))
    return Calibration(tuple(compute), tuple(frame_bits), tuple(overhead), dispatch)


@dataclass(frozen=True)
class PolicyCalibration:
    """A split policy's calibration: one :class:`Calibration` per state.

    Two things a policy cannot keep per state in the simulator, pooled over the states that
    share them, each state weighted by its time share (the routing's ``shares``; equal without
    them; our choice, both are small beside the latency): a node's work variation (the simulator
    draws one multiplier distribution per node, so every state's compute on a node has one
    coefficient of variation: the weighted mean of theirs) and a hop's transport cost (a link
    has one propagation delay: the weighted mean of the states' measured costs on it)."""

    states: tuple[Calibration, ...]

    def cpu_share(self, scenario: Scenario) -> CpuShare | None:
        """As :meth:`Calibration.cpu_share` (the states are measured in one process: the first
        one's)."""
        return self.states[0].cpu_share(scenario)

    def policy(self, routing: Routing, scenario: Scenario) -> SplitPolicy:
        pipelines = [cal.pipeline(d, scenario)
                     for cal, d in zip(self.states, routing.designs, strict=True)]
        weights = _weights(routing)
        cvs: dict[str, list[tuple[float, float]]] = {}
        for cal, w in zip(self.states, weights, strict=True):
            for t in cal.compute:
                cvs.setdefault(t.node, []).append((t.cv, w))
        pooled = {node: _weighted(v) for node, v in cvs.items()}

        def same_cv(stage: Stage) -> Stage:
            if not isinstance(stage, Compute):
                return stage
            cv = pooled[stage.node]
            return Compute(stage.node, stage.work_flops, "lognormal", cv) if cv >= _MIN_CV \
                else Compute(stage.node, stage.work_flops)

        assert routing.link is not None
        return SplitPolicy(tuple(tuple(same_cv(s) for s in p) for p in pipelines),
                           routing.thresholds_bps, routing.link, routing.observe_delay_s)

    def scenario(self, routing: Routing, scenario: Scenario) -> Scenario:
        """``scenario`` with each link's propagation increased by the mean transport cost the
        states measured on it."""
        costs: dict[frozenset[str], list[tuple[float, float]]] = {}
        for cal, d, w in zip(self.states, routing.designs, _weights(routing), strict=True):
            for hop, o in zip(itertools.pairwise(used_route(d)), cal.overhead_s, strict=True):
                costs.setdefault(frozenset(hop), []).append((o, w))
        extra = {hop: _weighted(v) for hop, v in costs.items()}
        links = [link.model_copy(update={"propagation_s": link.propagation_s
                                         + extra.get(frozenset((link.src, link.dst)), 0.0)})
                 for link in scenario.links]
        return scenario.model_copy(update={"links": links})


def _weights(routing: Routing) -> tuple[float, ...]:
    """Each state's weight: its time share, or equal weights without shares."""
    return routing.shares if routing.shares is not None else (1.0,) * routing.count


def _weighted(values: list[tuple[float, float]]) -> float:
    """The weighted mean of (value, weight) pairs (the plain mean if every weight is 0)."""
    v = np.array([x for x, _ in values])
    w = np.array([x for _, x in values])
    return float(np.average(v, weights=w)) if w.sum() > 0 else float(v.mean())


def stage_means(report: LatencyReport) -> list[dict[str, Any]]:
    """A report's per-stage means, in the form of ``DeployResult.summary()["stages"]``."""
    return [{"label": s.label, "waiting_s": s.waiting_s, "service_s": s.service_s,
             "propagation_s": s.propagation_s} for s in report.stages]


def predict(scenario: Scenario, design: Design | Routing,
            calibration: Calibration | PolicyCalibration, *, tasks: int,
            seed: int = 0) -> LatencyReport:
    """What the simulator predicts for ``deploy(scenario, design, tasks=tasks, seed=seed)``:
    the calibrated pipeline (a split policy's calibrated pipelines, :class:`PolicyCalibration`)
    on the calibrated scenario, replication 0 of ``seed`` (the arrival times and channel path
    the deployment follows)."""
    if isinstance(calibration, PolicyCalibration):
        if not isinstance(design, Routing):
            raise TypeError("a policy's calibration predicts its Routing")
        return simulate(calibration.scenario(design, scenario),
                        calibration.policy(design, scenario), seed=seed, tasks=tasks,
                        engine="simpy", cpu_share=calibration.cpu_share(scenario)).report
    if isinstance(design, Routing):
        if design.count != 1:
            raise TypeError("a split policy needs its PolicyCalibration (calibrate_policy)")
        design = design.designs[0]
    return simulate(calibration.scenario(design, scenario), calibration.pipeline(design, scenario),
                    seed=seed, tasks=tasks, engine="simpy",
                    cpu_share=calibration.cpu_share(scenario)).report
