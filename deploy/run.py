"""Run a split design for real: one process per node, loopback TCP, paced links.

:func:`deploy` saves the design's segments, starts a process per node of the route up to the one
that runs the last block (:mod:`deploy.node`), chains them with TCP connections over loopback,
sends requests from a client thread at the scenario's arrival times (the same arrival and
channel sample path that :func:`sim.simulate` draws with the same seed, replication 0) and
collects each request's result and per-stage times. Whatever happens, every node process is
stopped before it returns or raises; results are written only when the run completed.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import multiprocessing as mp
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from models.build import build_model
from models.split import save_segments, split_model
from search.design import Design
from sim.network import compile_plan
from sim.report import confidence_half_width
from sim.scenario import Scenario
from sim.simulate import replication_seeds
from sim.workload import Compute, Stage, Transfer, sample_tasks

from .netns import TcLinks, netns_unavailable
from .node import NodeSpec, node_main, one_line
from .pacing import sleep_until
from .wire import DATA, END, START, Message, encode, recv_message

__all__ = ["DeployError", "DeployResult", "deploy", "deploy_plan", "request_input", "used_route"]

Shaper = Literal["pace", "tc"]
_START_MARGIN_S = 0.5
RESULT_FILES = ("requests.csv", "summary.json")
_INPUT_DTYPES = {8: torch.uint8, 16: torch.float16, 32: torch.float32}


class DeployError(RuntimeError):
    """A deployment that could not run or did not finish (the message says which node)."""


def used_route(design: Design) -> tuple[str, ...]:
    """The nodes a request visits: the route up to the node that runs the last block (as in
    :func:`search.pipeline.segment_costs`)."""
    last = max(j for j, (a, b) in enumerate(design.segments()) if b > a)
    return design.route[: last + 1]


def deploy_plan(design: Design) -> tuple[Stage, ...]:
    """The stages a deployed request goes through, with placeholder work: what the run measures,
    in the simulator's labels and order (compute on every node that runs blocks, a transfer per
    hop)."""
    route = used_route(design)
    stages: list[Stage] = []
    for j, (node, (a, b)) in enumerate(zip(route, design.segments(), strict=False)):
        if b > a:
            stages.append(Compute(node, 1.0))
        if j < len(route) - 1:
            stages.append(Transfer(node, route[j + 1], 1.0))
    return tuple(stages)


def request_input(scenario: Scenario, seed: int, request: int) -> Tensor:
    """Request ``request``'s input: a batch of one, in the scenario's input bit width (8-bit
    images as ``uint8``), drawn from a generator seeded by (seed, request)."""
    state = np.random.SeedSequence([seed, request]).generate_state(1)[0]
    gen = torch.Generator().manual_seed(int(state))
    shape = (1, *scenario.input_shape)
    dtype = _INPUT_DTYPES[scenario.input_bits_per_element]
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
    return torch.rand(shape, generator=gen).to(dtype)


@dataclass
class DeployResult:
    """Measured times of a deployment, relative to the run's origin (seconds).

    ``wait_s``, ``service_s``, ``propagation_s`` have one column per stage (``labels``, the
    simulator's stage labels); ``measured`` marks the requests after the warm-up.
    """

    labels: list[str]
    arrival_s: NDArray[np.float64]
    completion_s: NDArray[np.float64]
    wait_s: NDArray[np.float64]
    service_s: NDArray[np.float64]
    propagation_s: NDArray[np.float64]
    measured: NDArray[np.bool_]
    frame_bytes: list[float]
    """Mean bytes per frame on each hop."""
    outputs: dict[int, Tensor] = field(default_factory=dict)

    @property
    def latency_s(self) -> NDArray[np.float64]:
        return self.completion_s - self.arrival_s

    def summary(self) -> dict[str, Any]:
        lat = self.latency_s[self.measured]
        batches = np.array_split(lat, min(10, lat.size))
        span = self.completion_s[self.measured].max() - self.arrival_s[self.measured].min()
        return {
            "tasks": int(lat.size),
            "mean_latency_s": float(lat.mean()),
            "p50_latency_s": float(np.percentile(lat, 50)),
            "p95_latency_s": float(np.percentile(lat, 95)),
            "p99_latency_s": float(np.percentile(lat, 99)),
            "ci95_half_width_s": confidence_half_width([float(b.mean()) for b in batches]),
            "throughput_hz": float(lat.size / span) if span > 0 else float("nan"),
            "stages": [
                {"label": label,
                 "waiting_s": float(self.wait_s[self.measured, k].mean()),
                 "service_s": float(self.service_s[self.measured, k].mean()),
                 "propagation_s": float(self.propagation_s[self.measured, k].mean())}
                for k, label in enumerate(self.labels)
            ],
            "frame_bytes": self.frame_bytes,
        }

    def write(self, out_dir: str | os.PathLike[str]) -> list[Path]:
        """``requests.csv`` (one row per request, every stage's times) and ``summary.json``,
        each written to a temporary name and renamed."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        header = ["request", "measured", "arrival_s", "completion_s", "latency_s"]
        for label in self.labels:
            header += [f"{label} wait_s", f"{label} service_s", f"{label} propagation_s"]
        tmp = out / "requests.csv.tmp"
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            for i in range(self.arrival_s.size):
                row: list[object] = [i, int(self.measured[i]), self.arrival_s[i],
                                     self.completion_s[i], self.latency_s[i]]
                for k in range(len(self.labels)):
                    row += [self.wait_s[i, k], self.service_s[i, k], self.propagation_s[i, k]]
                w.writerow(row)
        os.replace(tmp, out / "requests.csv")
        tmp = out / "summary.json.tmp"
        tmp.write_text(json.dumps(self.summary(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, out / "summary.json")
        return [out / name for name in RESULT_FILES]


def _check(scenario: Scenario, design: Design, shaper: str) -> None:
    if shaper not in ("pace", "tc"):
        raise ValueError(f"shaper must be pace or tc, got {shaper!r}")
    if shaper == "tc":
        why = netns_unavailable()
        if why is not None:
            raise ValueError(why)
    if scenario.input_bits_per_element not in _INPUT_DTYPES:
        raise ValueError(f"input_bits_per_element must be 8, 16 or 32 to deploy, got "
                         f"{scenario.input_bits_per_element}")
    if len(scenario.workload.sources) != 1 or scenario.workload.sources[0] != design.route[0]:
        raise ValueError(f"workload.sources: deploy runs one source, the design's first node "
                         f"{design.route[0]!r}; got {scenario.workload.sources}")
    if scenario.workload.mode != "inference":
        raise ValueError("workload.mode: deploy runs inference only")
    graph = scenario.graph()
    for node in design.route:
        if node not in scenario.nodes:
            raise ValueError(f"the design runs on {node!r}, which is not a node of the scenario")
    for u, v in zip(design.route, design.route[1:], strict=False):
        if not graph.has_edge(u, v):
            raise ValueError(f"the design sends over {u} -> {v}, which is not a link")


class _Run:
    """The processes and threads of one deployment; :meth:`close` stops them all."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, mp.process.BaseProcess, Connection]] = []
        self.sockets: list[socket.socket] = []
        self.errors: list[str] = []
        self.done: set[str] = set()

    def close(self) -> None:
        for s in self.sockets:
            s.close()
        for _, p, _ in self.procs:
            if p.is_alive():
                p.terminate()
        for _, p, conn in self.procs:
            p.join(3.0)
            if p.is_alive():
                p.kill()
                p.join(3.0)
            conn.close()

    def poll(self, timeout: float) -> None:
        """Take the nodes' messages; raise if one failed or died."""
        conns = [c for _, _, c in self.procs]
        sentinels = [p.sentinel for _, p, _ in self.procs]
        for ready in wait([*conns, *sentinels], timeout):
            for name, _, conn in self.procs:
                if ready is conn:
                    try:
                        msg = conn.recv()
                    except (EOFError, OSError):
                        continue
                    if msg[0] == "error":
                        self.errors.append(f"node {name!r} failed: {msg[1]}")
                    elif msg[0] == "done":
                        self.done.add(name)
        self.raise_if_failed()

    def _dead(self) -> list[str]:
        dead = []
        for name, p, _ in self.procs:
            code = p.exitcode
            reported = any(e.startswith(f"node {name!r}") for e in self.errors)
            if code is not None and (code != 0 or name not in self.done) and not reported:
                how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
                dead.append(f"node {name!r} (pid {p.pid}) died, {how}")
        return dead

    def raise_if_failed(self) -> None:
        dead = self._dead()
        if not dead and not self.errors:
            return
        if not dead:  # a neighbour's error often means a node has just died: name that one first
            time.sleep(0.3)
            dead = self._dead()
        raise DeployError("; ".join(dead + self.errors))


@dataclass(frozen=True)
class _Setup:
    """What the processes of one run need to know, fixed before they start."""

    scenario: Scenario
    design: Design
    arrivals: NDArray[np.float64]
    specs: list[NodeSpec]
    tc: TcLinks | None
    seed: int
    keep_outputs: bool
    progress: bool
    stall_timeout_s: float


def deploy(scenario: Scenario, design: Design, out_dir: str | os.PathLike[str], *,
           tasks: int | None = None, seed: int = 0, num_classes: int = 10,
           shaper: Shaper = "pace", keep_outputs: bool = False, progress: bool = False,
           stall_timeout_s: float = 60.0,
           on_start: Callable[[dict[str, int]], None] | None = None) -> DeployResult:
    """Run ``design`` for real and measure it (see the module docstring).

    The model has the weights of ``torch.manual_seed(seed)`` at construction (a deployment
    measures time; :func:`search` trains only proxies; the caller's torch RNG is left as it
    was). ``tasks`` overrides ``workload.tasks``; the first ``workload.warmup_tasks`` are not
    measured. ``shaper``: ``pace`` holds each link to its channel inside the sending node
    (:mod:`deploy.pacing`); ``tc`` puts every node after the first in its own network namespace
    and shapes the veth links with tbf instead (:mod:`deploy.netns`, root only; a hop's time is
    then split between its service and propagation by the socket buffers, and only their sum is
    meaningful). ``on_start`` receives the node processes' pids once they run. The nodes are
    started with ``multiprocessing``'s spawn method: a script that calls this needs the
    ``if __name__ == "__main__":`` guard. Old ``requests.csv`` and ``summary.json`` in
    ``out_dir`` are removed first. Raises :class:`DeployError` naming the node when a node fails
    or dies, or when no result arrives for ``stall_timeout_s``.
    """
    _check(scenario, design, shaper)
    n = scenario.workload.tasks if tasks is None else tasks
    if n <= scenario.workload.warmup_tasks:
        raise ValueError(f"tasks ({n}) must exceed workload.warmup_tasks "
                         f"({scenario.workload.warmup_tasks})")
    out = Path(out_dir)
    for old in RESULT_FILES:
        (out / old).unlink(missing_ok=True)
    work = out / "segments"
    route = used_route(design)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(design.arch, scenario.input_shape[0], num_classes, cuts=design.cuts)
    paths = save_segments(split_model(model.eval())[: len(route)], work)

    stages = deploy_plan(design)
    arr_seed, ch_seed, serv_seed = replication_seeds(seed, 0)
    plan = compile_plan(scenario, stages, ch_seed)
    links = {r.name: r for r in plan.resources if r.kind == "link"}
    arrivals = sample_tasks(scenario, stages, n, arr_seed, serv_seed).arrival_s
    hops = [links[f"{u}->{v}"] for u, v in itertools.pairwise(route)]
    tc = None
    if shaper == "tc":
        tc = TcLinks(len(route), [h.channel for h in hops if h.channel is not None])
    specs = []
    for j, node in enumerate(route):
        specs.append(NodeSpec(
            name=node, segment_path=str(paths[j]), servers=scenario.nodes[node].servers,
            propagation_in_s=hops[j - 1].propagation_s if j > 0 else 0.0,
            rate_out=hops[j].channel if j < len(hops) and tc is None else None,
            records_path=str(work / f"records-{node}.json"),
            netns_path=tc.netns_path(j) if tc is not None else None,
            listen_host=tc.addresses[j] if tc is not None else "127.0.0.1"))
    for spec in specs:
        Path(spec.records_path).unlink(missing_ok=True)
    setup = _Setup(scenario, design, arrivals, specs, tc, seed, keep_outputs, progress,
                   stall_timeout_s)
    with contextlib.ExitStack() as stack:
        if tc is not None:
            stack.enter_context(tc)
        return _launch(setup, on_start)


def _start_nodes(run: _Run, specs: list[NodeSpec]) -> None:
    """Start one process per node. SIGINT is ignored while they start, so that a Ctrl-C in the
    terminal (sent to the whole process group) does not hit them while they import torch: the
    parent stops them."""
    ctx = mp.get_context("spawn")
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        for spec in specs:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=node_main, args=(spec, child),
                               name=f"jmsnas-node-{spec.name}", daemon=True)
            proc.start()
            child.close()
            run.procs.append((spec.name, proc, parent))
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)


def _accept(sink: socket.socket, run: _Run, timeout_s: float = 60.0) -> socket.socket:
    """The last node's connection, watching the nodes while waiting."""
    sink.settimeout(0.2)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn, _ = sink.accept()
            return conn
        except TimeoutError:
            run.poll(0.0)
            if time.monotonic() > deadline:
                raise DeployError(f"the last node did not connect within {timeout_s:g} s") \
                    from None


def _launch(setup: _Setup, on_start: Callable[[dict[str, int]], None] | None) -> DeployResult:
    run = _Run()
    specs = setup.specs
    try:
        _start_nodes(run, specs)
        if on_start is not None:
            on_start({name: int(p.pid or 0) for name, p, _ in run.procs})
        ports = _wait_ready(run)
        try:
            sink = socket.create_server(("127.0.0.1", 0))
            run.sockets.append(sink)
            downstream = [(s.listen_host, ports[s.name], False) for s in specs[1:]]
            downstream.append(("127.0.0.1", sink.getsockname()[1], True))
            for (_, _, conn), target in zip(run.procs, downstream, strict=True):
                conn.send(("connect", *target))
            client = socket.create_connection((specs[0].listen_host, ports[specs[0].name]),
                                              timeout=60)
            run.sockets.append(client)
            result_sock = _accept(sink, run)
            run.sockets.append(result_sock)
            for s in (client, result_sock):
                s.settimeout(None)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return _drive(run, setup, client, result_sock)
        except OSError as exc:  # a connection that failed: most likely a node that died
            run.raise_if_failed()
            raise DeployError(one_line(f"{type(exc).__name__}: {exc}")) from None
    finally:
        run.close()


def _wait_ready(run: _Run) -> dict[str, int]:
    ports: dict[str, int] = {}
    deadline = time.monotonic() + 120.0
    while len(ports) < len(run.procs):
        if time.monotonic() > deadline:
            missing = [name for name, _, _ in run.procs if name not in ports]
            raise DeployError(f"node(s) {missing} did not start within 120 s")
        for name, _, conn in run.procs:
            if name not in ports and conn.poll():
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    time.sleep(0.2)  # the node died: its exit code comes next
                    continue
                if msg[0] == "ready":
                    ports[name] = int(msg[1])
                elif msg[0] == "error":
                    run.errors.append(f"node {name!r} failed: {msg[1]}")
        run.raise_if_failed()
        time.sleep(0.01)
    return ports


def _drive(run: _Run, setup: _Setup, client: socket.socket,
           result_sock: socket.socket) -> DeployResult:
    arrivals, tc = setup.arrivals, setup.tc
    n = arrivals.size
    t0 = time.monotonic() + _START_MARGIN_S
    client.sendall(encode(Message(START, value=t0)))
    if tc is not None:
        tc.start(t0)
    got: dict[int, float] = {}
    outputs: dict[int, Tensor] = {}
    failures: list[str] = []
    started = threading.Event()

    def sink() -> None:
        try:
            while len(got) < n:
                msg = recv_message(result_sock)
                if msg is None:
                    raise ConnectionError("the last node closed its connection")
                if msg.kind == START:
                    started.set()
                elif msg.kind == DATA:
                    got[msg.request] = time.monotonic()
                    if setup.keep_outputs:
                        outputs[msg.request] = msg.tensors[0].clone()
        except Exception as exc:  # reported by the main loop
            failures.append(f"result sink: {type(exc).__name__}: {exc}")

    def send_requests() -> None:
        try:
            started.wait()
            for i in range(n):
                x = request_input(setup.scenario, setup.seed, i)
                frame = encode(Message(DATA, i, 0.0, (x,)))
                sleep_until(t0 + float(arrivals[i]))
                client.sendall(frame)
        except Exception as exc:
            failures.append(f"client: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=sink, daemon=True),
               threading.Thread(target=send_requests, daemon=True)]
    for t in threads:
        t.start()
    bar = None
    if setup.progress:
        from tqdm import tqdm
        bar = tqdm(total=n, unit="request", desc="deploy", leave=False)
    try:
        last_count, last_change = 0, time.monotonic()
        while len(got) < n:
            run.poll(0.1)
            if failures:
                run.raise_if_failed()
                raise DeployError(one_line("; ".join(failures)))
            if tc is not None and tc.error is not None:
                raise DeployError(one_line(f"tc shaping failed: {tc.error}"))
            count = len(got)
            now = time.monotonic()
            if count != last_count:
                if bar is not None:
                    bar.update(count - last_count)
                last_count, last_change = count, now
            elif now - max(last_change, t0 + float(arrivals[min(count, n - 1)])) \
                    > setup.stall_timeout_s:
                raise DeployError(f"no result for {setup.stall_timeout_s:g} s "
                                  f"({count} of {n} done)")
    finally:
        if bar is not None:
            bar.close()
    client.sendall(encode(Message(END)))
    deadline = time.monotonic() + 60.0
    while len(run.done) < len(run.procs):
        if time.monotonic() > deadline:
            raise DeployError("the nodes did not finish within 60 s of the last result")
        run.poll(0.1)
    records = [json.loads(Path(s.records_path).read_text(encoding="utf-8"))
               for s in setup.specs]
    return _result(setup.design, setup.specs, records, arrivals, t0,
                   setup.scenario.workload.warmup_tasks, outputs)


def _result(design: Design, specs: list[NodeSpec], records: list[dict[str, dict[str, float]]],
            arrivals: NDArray[np.float64], t0: float, warmup: int,
            outputs: dict[int, Tensor]) -> DeployResult:
    stages = deploy_plan(design)
    labels = [s.label for s in stages]
    n, k = arrivals.size, len(stages)
    wait_s, service_s, prop_s = np.zeros((n, k)), np.zeros((n, k)), np.zeros((n, k))
    completion = np.zeros(n)
    busy = [b > a for a, b in design.segments()]
    for i in range(n):
        ready = t0 + float(arrivals[i])  # when the request can go on
        s = 0
        for j in range(len(specs)):
            rec = records[j][str(i)]
            if j > 0:  # the previous stage was the transfer into this node
                prop_s[i, s - 1] = rec["arrived"] - ready
                ready = rec["arrived"]
            if busy[j]:
                wait_s[i, s] = rec["start"] - ready
                service_s[i, s] = rec["end"] - rec["start"]
                ready = rec["end"]
                s += 1
            # a node that runs no block forwards: copying the frame counts as the link's wait
            if j < len(specs) - 1:
                wait_s[i, s] = rec["link_start"] - ready
                service_s[i, s] = rec["link_end"] - rec["link_start"]
                ready = rec["link_end"]
                s += 1
        completion[i] = ready - t0
    frame_bytes = [float(np.mean([r[str(i)]["bytes"] for i in range(n)])) for r in records[:-1]]
    return DeployResult(labels, arrivals.copy(), completion, wait_s, service_s, prop_s,
                        np.arange(n) >= warmup, frame_bytes, outputs)
