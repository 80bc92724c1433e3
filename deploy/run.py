"""Run a split design or a split policy for real: one process per node, loopback TCP, paced
links.

:func:`deploy` saves the design's segments, starts a process per node that a request may visit
(:mod:`deploy.node`; for a static design, the route up to the node that runs the last block),
connects each node to those it may send to over loopback TCP (:mod:`deploy.routing`), sends
requests from a client thread at the scenario's arrival times (the same arrival and channel
sample path that :func:`sim.simulate` draws with the same seed, replication 0) and collects each
request's result, state and per-stage times. Whatever happens, every node process is
stopped before it returns or raises; results are written only when the run completed.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import multiprocessing as mp
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from models import processes
from models.build import build_model
from models.split import Payload, save_segments, split_model
from search.design import AnyDesign
from sim.network import compile_plan
from sim.report import confidence_half_width
from sim.scenario import Scenario
from sim.simulate import replication_seeds
from sim.workload import Transfer, sample_tasks

from .auth import (
    MAX_CONTROL_BYTES,
    MAX_RESULT_BYTES,
    AuthError,
    accept_peers,
    connect_handshake,
    keep_alive,
    listen,
    recv_json,
    send_blob,
    send_json,
)
from .clock import ClockModel, ClockSample, fit_clock
from .netns import TcLinks, netns_unavailable
from .node import CLIENT, SINK, Chooser, NodeSpec, log_line, node_main, one_line, run_stage
from .pacing import sleep_until
from .remote import spec_to_wire
from .routing import Routing, deploy_plan, used_route
from .wire import DATA, END, START, Message, encode, payload_tensors, recv_message

__all__ = ["DeployError", "DeployResult", "Routing", "check_deployable", "deploy", "deploy_plan",
           "request_input", "used_route"]

Shaper = Literal["pace", "tc"]
_START_MARGIN_S = 0.5
_CLOCK_EXCHANGES = 16
_CONTROL_TIMEOUT_S = 30.0
"""A node server that does not answer for this long, mid-message or in an exchange, is lost."""
RESULT_FILES = ("requests.csv", "summary.json")
_INPUT_DTYPES = {8: torch.uint8, 16: torch.float16, 32: torch.float32}


class DeployError(RuntimeError):
    """A deployment that could not run or did not finish (the message says which node)."""


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
    simulator's stage labels; a split policy's stages are those of all its states merged, and a
    request has zeros in the stages its state skips, as in the simulator's report);
    ``measured`` marks the requests after the warm-up; ``state`` is the channel state each
    request followed (0 for a static design) and ``expected_state`` the one the policy names
    for the rate at its nominal arrival time (what the simulator runs).
    """

    labels: list[str]
    arrival_s: NDArray[np.float64]
    completion_s: NDArray[np.float64]
    wait_s: NDArray[np.float64]
    service_s: NDArray[np.float64]
    propagation_s: NDArray[np.float64]
    measured: NDArray[np.bool_]
    frame_bytes: list[float]
    """Mean bytes per frame on each transfer stage, over the requests that crossed it."""
    states: int = 1
    """Channel states of the design (1: static)."""
    state: NDArray[np.intp] = field(default_factory=lambda: np.zeros(0, dtype=np.intp))
    """Not given: every request in state 0."""
    expected_state: NDArray[np.intp] = field(default_factory=lambda: np.zeros(0, dtype=np.intp))
    """Not given: as ``state``."""
    policy: dict[str, Any] | None = None
    """A split policy's observed link, thresholds and observation delay."""
    clock: dict[str, Any] | None = None
    """Across hosts: per node, its server's address and its clock's estimated offset, drift
    and error bound against the coordinator's (:class:`deploy.clock.ClockModel`)."""
    late_s: NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 0)))
    """Per request and stage, how long after its due time a paced transfer's last chunk was
    handed over (the sender's lateness, which the scheduler decides; 0 for compute stages and
    unshaped links). Not given: zeros."""
    outputs: dict[int, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.arrival_s.size
        if self.state.size == 0:
            self.state = np.zeros(n, dtype=np.intp)
        if self.expected_state.size == 0:
            self.expected_state = self.state.copy()
        if self.late_s.size == 0:
            self.late_s = np.zeros_like(self.service_s)
        if not self.state.size == self.expected_state.size == n:
            raise ValueError(f"DeployResult: state and expected_state need one entry per "
                             f"request ({n})")

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
                 "propagation_s": float(self.propagation_s[self.measured, k].mean()),
                 "late_s": float(self.late_s[self.measured, k].mean())}
                for k, label in enumerate(self.labels)
            ],
            "frame_bytes": self.frame_bytes,
            "state_requests": np.bincount(self.state[self.measured],
                                          minlength=self.states).tolist(),
            "state_mismatches": int(np.sum((self.state != self.expected_state)
                                           & self.measured)),
            **({} if self.policy is None else {"policy": self.policy}),
            **({} if self.clock is None else {
                "clock": self.clock,
                "clock_error_bound_s": max(c["error_bound_s"] for c in self.clock.values())}),
        }

    def write(self, out_dir: str | os.PathLike[str]) -> list[Path]:
        """``requests.csv`` (one row per request, every stage's times) and ``summary.json``,
        each written to a temporary name and renamed."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        header = ["request", "measured", "state", "arrival_s", "completion_s", "latency_s"]
        for label in self.labels:
            header += [f"{label} wait_s", f"{label} service_s", f"{label} propagation_s",
                       f"{label} late_s"]
        tmp = out / "requests.csv.tmp"
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            for i in range(self.arrival_s.size):
                row: list[object] = [i, int(self.measured[i]), int(self.state[i]),
                                     self.arrival_s[i], self.completion_s[i], self.latency_s[i]]
                for k in range(len(self.labels)):
                    row += [self.wait_s[i, k], self.service_s[i, k], self.propagation_s[i, k],
                            self.late_s[i, k]]
                w.writerow(row)
        os.replace(tmp, out / "requests.csv")
        tmp = out / "summary.json.tmp"
        tmp.write_text(json.dumps(self.summary(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, out / "summary.json")
        return [out / name for name in RESULT_FILES]


def check_deployable(scenario: Scenario, routing: Routing, shaper: str) -> None:
    """A ValueError naming the field if ``routing`` cannot be deployed on ``scenario`` with
    ``shaper`` (checked before any process starts)."""
    if shaper not in ("pace", "tc"):
        raise ValueError(f"shaper must be pace or tc, got {shaper!r}")
    if shaper == "tc":
        if routing.count > 1:
            raise ValueError("--shaper tc runs static designs (one chain of namespaces); deploy "
                             "a split policy with --shaper pace")
        why = netns_unavailable()
        if why is not None:
            raise ValueError(why)
    if scenario.input_bits_per_element not in _INPUT_DTYPES:
        raise ValueError(f"input_bits_per_element must be 8, 16 or 32 to deploy, got "
                         f"{scenario.input_bits_per_element}")
    if len(scenario.workload.sources) != 1 or scenario.workload.sources[0] != routing.first:
        raise ValueError(f"workload.sources: deploy runs one source, the design's first node "
                         f"{routing.first!r}; got {scenario.workload.sources}")
    if scenario.workload.mode != "inference":
        raise ValueError("workload.mode: deploy runs inference only")
    routing.check_links(scenario)

def _waitable(conn: Connection | _Control) -> Connection | socket.socket:
    return conn.sock if isinstance(conn, _Control) else conn


class _Control:
    """A node server's control connection, read and written as a node process's pipe is:
    tuples of (kind, *args), JSON on the wire."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: tuple[Any, ...]) -> None:
        send_json(self.sock, {"kind": message[0], "args": list(message[1:])}, MAX_CONTROL_BYTES)

    def recv(self) -> tuple[Any, ...]:
        msg = recv_json(self.sock, MAX_RESULT_BYTES)
        args = msg.get("args", [])
        return (msg.get("kind"), *(args if isinstance(args, list) else []))

    def close(self) -> None:
        self.sock.close()


@dataclass
class _Handle:
    """One node of the run: a local process and its pipe, or a node server's control
    connection (``address`` set)."""

    name: str
    conn: Connection | _Control
    proc: mp.process.BaseProcess | None = None
    address: str = ""
    lost: bool = False
    """The control connection ended (a remote node)."""
    lost_why: str = ""
    """How, when it was not closed by the server (a read timeout, keepalive, a bad message)."""
    clock: ClockModel | None = None
    clock_before: list[ClockSample] = field(default_factory=list)

    def __str__(self) -> str:
        return f"node {self.name!r}" + (f" at {self.address}" if self.address else "")


class _Run:
    """The nodes and sockets of one deployment; :meth:`close` stops them all (a local node's
    process; a remote node server, by closing its control connection)."""

    def __init__(self) -> None:
        self.nodes: list[_Handle] = []
        self.sockets: list[socket.socket] = []
        self.errors: list[str] = []
        self.done: dict[str, dict[str, dict[str, float]]] = {}
        self.threads: list[threading.Thread] = []
        """The client's and the sinks' threads: stopped and joined before we return, so that
        none is inside torch when the interpreter exits (which aborts the process)."""
        self.stop = threading.Event()

    def close(self) -> None:
        self.stop.set()
        for s in self.sockets:
            with contextlib.suppress(OSError):  # wakes a thread blocked in recv or sendall,
                s.shutdown(socket.SHUT_RDWR)    # which close() alone does not
            s.close()
        deadline = time.monotonic() + 10.0
        for t in self.threads:
            t.join(max(deadline - time.monotonic(), 0.0))
        for h in self.nodes:
            if h.proc is not None and h.proc.is_alive():
                h.proc.terminate()
        for h in self.nodes:
            if h.proc is not None:
                h.proc.join(3.0)
                if h.proc.is_alive():
                    h.proc.kill()
                    h.proc.join(3.0)
            h.conn.close()

    def take(self, h: _Handle) -> tuple[Any, ...] | None:
        """The node's next message (None: its pipe or connection ended)."""
        try:
            return h.conn.recv()
        except (EOFError, OSError, ValueError) as exc:
            h.lost = True
            if h.proc is None and type(exc) is not ConnectionError:  # not a plain close
                h.lost_why = one_line(f"{type(exc).__name__}: {exc}")
            return None

    def poll(self, timeout: float) -> None:
        """Take the nodes' messages; raise if one failed or died."""
        waitables: list[Any] = [_waitable(h.conn) for h in self.nodes if not h.lost]
        waitables += [h.proc.sentinel for h in self.nodes if h.proc is not None]
        for ready in wait(waitables, timeout):
            for h in self.nodes:
                if ready is _waitable(h.conn) and not h.lost:
                    self.handle(h, self.take(h))
        self.raise_if_failed()

    def handle(self, h: _Handle, msg: tuple[Any, ...] | None) -> None:
        if msg is None:
            return
        if msg[0] == "error":
            self.errors.append(f"{h} failed: {msg[1] if len(msg) > 1 else '?'}")
        elif msg[0] == "done":
            self.done[h.name] = msg[1]

    def _dead(self) -> list[str]:
        dead = []
        for h in self.nodes:
            reported = any(e.startswith(str(h)) for e in self.errors)
            if reported:
                continue
            if h.proc is not None:
                code = h.proc.exitcode
                if code is not None and (code != 0 or h.name not in self.done):
                    how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
                    dead.append(f"{h} (pid {h.proc.pid}) died, {how}")
            elif h.lost:
                dead.append(f"{h}: " + (f"the connection to its node server failed "
                                        f"({h.lost_why})" if h.lost_why else
                                        "the node server closed the connection (did it stop?)"))
        return dead

    def raise_if_failed(self) -> None:
        dead = self._dead()
        if not dead and not self.errors:
            return
        if not dead:  # a neighbour's error often means a node has just died: name that one first
            time.sleep(0.3)
            for h in self.nodes:  # a remote one's connection may have closed meanwhile
                if h.proc is None and not h.lost and wait([_waitable(h.conn)], 0):
                    self.handle(h, self.take(h))
            dead = self._dead()
        raise DeployError("; ".join(dead + self.errors))


@dataclass(frozen=True)
class _Setup:
    """What the processes of one run need to know, fixed before they start."""

    scenario: Scenario
    routing: Routing
    arrivals: NDArray[np.float64]
    expected_state: NDArray[np.intp]
    specs: list[NodeSpec]
    tc: TcLinks | None
    seed: int
    keep_outputs: bool
    progress: bool
    stall_timeout_s: float
    run_id: str
    secret: bytes
    hosts: dict[str, tuple[str, int]] | None

    def data_host(self, node: str) -> str:
        """Where ``node`` listens for data."""
        if self.hosts is not None:
            return self.hosts[node][0]
        return next(s.listen_host for s in self.specs if s.name == node)

    def result_address(self, run: _Run, node: str) -> str:
        """The coordinator's address that ``node`` sends its results to: loopback, or the
        address its node server's control connection reached us at."""
        h = next(h for h in run.nodes if h.name == node)
        return h.conn.sock.getsockname()[0] if isinstance(h.conn, _Control) else "127.0.0.1"


def deploy(scenario: Scenario, design: AnyDesign | Routing, out_dir: str | os.PathLike[str], *,
           tasks: int | None = None, seed: int = 0, num_classes: int = 10,
           shaper: Shaper = "pace", keep_outputs: bool = False, progress: bool = False,
           stall_timeout_s: float = 60.0,
           on_start: Callable[[dict[str, int]], None] | None = None,
           hosts: Mapping[str, tuple[str, int]] | None = None,
           secret: bytes | None = None) -> DeployResult:
    """Run ``design`` for real and measure it (see the module docstring).

    ``design`` is a design, a policy design (its states cut from the scenario's uplink as
    :meth:`Routing.of` does by default) or a :class:`Routing` (to set the policy's states and
    observation delay). The model has the weights of ``torch.manual_seed(seed)`` at
    construction (a deployment measures time; :func:`search` trains only proxies; the caller's
    torch RNG is left as it was); a policy's states with different compressions run different
    models, each built that way. ``tasks`` overrides ``workload.tasks``; the first
    ``workload.warmup_tasks`` are not measured. ``shaper``: ``pace`` holds each link to its
    channel inside the sending node (:mod:`deploy.pacing`); ``tc`` puts every node after the
    first in its own network namespace and shapes the veth links with tbf instead
    (:mod:`deploy.netns`, root only, static designs only; a hop's time is then split between
    its service and propagation by the socket buffers, and only their sum is meaningful).
    ``on_start`` receives the node processes' pids once they run. The nodes are started by
    :mod:`models.processes` (multiprocessing's fork server, or spawn), which imports the main
    module in each: a script that calls this needs the ``if __name__ == "__main__":`` guard.

    ``hosts`` maps every node the routing visits to the (host, port) of a node server
    (``jmsnas node``, :mod:`deploy.server`) that holds ``secret``: the nodes then run there
    instead of in local processes, the results come back to the address the coordinator
    reached each server from, and every node's times are moved onto this process's clock
    (:mod:`deploy.clock`; the estimated offsets, drifts and error bounds are the result's
    ``clock``). Old ``requests.csv`` and ``summary.json`` in ``out_dir`` are removed
    first. Raises :class:`DeployError` naming the node when a node fails or dies, or when no
    result arrives for ``stall_timeout_s``.
    """
    routing = design if isinstance(design, Routing) else Routing.of(design, scenario)
    check_deployable(scenario, routing, shaper)
    if hosts is not None:
        missing = [node for node in routing.nodes if node not in hosts]
        if missing:
            raise ValueError(f"hosts: no address for node(s) {missing} (the design visits "
                             f"{list(routing.nodes)})")
        if shaper != "pace":
            raise ValueError("--shaper tc shapes namespaces on this machine; across hosts the "
                             "senders pace the links (--shaper pace)")
        if secret is None:
            raise ValueError("deploying on node servers needs their shared secret (--token-file)")
        hosts = {node: hosts[node] for node in routing.nodes}
        shared = [n for n in hosts if list(hosts.values()).count(hosts[n]) > 1]
        if shared:
            raise ValueError(f"hosts: nodes {shared} share a node server "
                             f"({hosts[shared[0]][0]}:{hosts[shared[0]][1]}); each node needs "
                             f"a server of its own (start another on a second port)")
    secret = secret if secret is not None else secrets.token_bytes(32)
    n = scenario.workload.tasks if tasks is None else tasks
    if n <= scenario.workload.warmup_tasks:
        raise ValueError(f"tasks ({n}) must exceed workload.warmup_tasks "
                         f"({scenario.workload.warmup_tasks})")
    out = Path(out_dir)
    for old in RESULT_FILES:
        (out / old).unlink(missing_ok=True)
    work = out / "segments"
    files, max_frame_bytes = _save_segments(routing, scenario, work, seed, num_classes)

    arr_seed, ch_seed, serv_seed = replication_seeds(seed, 0)
    stages = routing.stages[0]
    observed = () if routing.link is None or routing.link in routing.hops else \
        (Transfer(*routing.link, 1.0),)
    plan = compile_plan(scenario, (*stages, *observed), ch_seed)
    links = {r.name: r for r in plan.resources if r.kind == "link"}
    arrivals = sample_tasks(scenario, stages, n, arr_seed, serv_seed).arrival_s
    chooser = None
    expected = np.zeros(n, dtype=np.intp)
    if routing.count > 1:
        assert routing.link is not None
        channel = links["->".join(routing.link)].channel
        assert channel is not None
        # its own copy: the pacing sender of the same link extends the realisation from
        # another thread, and a realisation's lazy extension is not thread-safe
        chooser = Chooser(copy.deepcopy(channel), routing.thresholds_bps, routing.observe_delay_s)
        expected = np.array([chooser.state(float(t)) for t in arrivals], dtype=np.intp)
    tc = None
    if shaper == "tc":
        hops = [links[f"{u}->{v}"] for u, v in routing.hops]
        tc = TcLinks(len(routing.nodes), [h.channel for h in hops if h.channel is not None])
    run_id = secrets.token_hex(8)
    max_frame = 2 * max_frame_bytes + 4096
    specs = []
    for j, node in enumerate(routing.nodes):
        dests = [SINK if d is None else d for d in routing.downstream(node)]
        specs.append(NodeSpec(
            name=node,
            segment_paths={k: str(files[k][node]) for k in routing.visits(node)},
            next_hop={k: routing.next_hop(node, k) or SINK for k in routing.visits(node)},
            servers=scenario.nodes[node].servers,
            upstream_names=tuple(routing.upstream(node)) or (CLIENT,),
            rates_out={d: None if d == SINK or tc is not None else links[f"{node}->{d}"].channel
                       for d in dests},
            propagation_out={d: 0.0 if d == SINK else links[f"{node}->{d}"].propagation_s
                             for d in dests},
            run_id=run_id,
            secret=secret,
            chooser=chooser if node == routing.first else None,
            netns_path=tc.netns_path(j) if tc is not None else None,
            listen_host=tc.addresses[j] if tc is not None else "127.0.0.1",
            max_frame_bytes=max_frame))
    setup = _Setup(scenario, routing, arrivals, expected, specs, tc, seed, keep_outputs,
                   progress, stall_timeout_s, run_id, secret, hosts)
    with contextlib.ExitStack() as stack:
        if tc is not None:
            stack.enter_context(tc)
        return _launch(setup, on_start)


def _save_segments(routing: Routing, scenario: Scenario, folder: Path, seed: int,
                   num_classes: int) -> tuple[list[dict[str, Path]], int]:
    """Save every state's segments; per state, the file of each node it visits. States with
    the same cuts run the same model, saved once. Also returns the largest frame a request
    sends (one request run through each model's segments)."""
    models: dict[tuple[object, ...], list[Path]] = {}
    files = []
    largest = len(encode(Message(DATA, 0, 0.0, (request_input(scenario, seed, 0),))))
    for design in routing.designs:
        key = (design.arch, *design.cuts)
        if key not in models:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = build_model(design.arch, scenario.input_shape[0], num_classes,
                                    cuts=design.cuts)
            segments = split_model(model.eval())
            payload: Payload = request_input(scenario, seed, 0)
            for segment in segments:
                payload = run_stage(segment, payload)
                largest = max(largest, len(encode(Message(DATA, 0, 0.0,
                                                          payload_tensors(payload)))))
            models[key] = save_segments(segments, folder / f"model-{len(models)}")
        paths = models[key]
        files.append({node: paths[j] for j, node in enumerate(used_route(design))})
    return files, largest


def _start_nodes(run: _Run, specs: list[NodeSpec]) -> None:
    """Start one process per node. SIGINT is ignored while they start, so that a Ctrl-C in the
    terminal (sent to the whole process group) does not hit them while they import torch: the
    parent stops them."""
    ctx = processes.context(preload=("deploy.node",))
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        for spec in specs:
            parent, child = ctx.Pipe()
            proc = processes.process(node_main, (spec, child), ("deploy.node",),
                                     name=f"jmsnas-node-{spec.name}", daemon=True)
            proc.start()
            child.close()
            run.nodes.append(_Handle(spec.name, parent, proc))
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)


def _exchange_clocks(h: _Handle, count: int = _CLOCK_EXCHANGES) -> list[ClockSample]:
    """``count`` timestamp exchanges with a node server (see :mod:`deploy.clock`)."""
    samples = []
    for _ in range(count):
        t1 = time.monotonic()
        h.conn.send(("clock",))
        while True:
            msg = h.conn.recv()
            if msg[0] == "clock":
                break
            if msg[0] == "error":
                raise DeployError(one_line(f"{h} failed: {msg[1] if len(msg) > 1 else '?'}"))
        t4 = time.monotonic()
        samples.append(ClockSample(t1, float(msg[1]), float(msg[2]), t4))
    return samples


def _start_remote(run: _Run, setup: _Setup) -> None:
    """Reach every node server, authenticate, measure its clock, send its setup."""
    assert setup.hosts is not None
    # how far the channels' realisations go: past the last arrival, two stall timeouts and ten
    # minutes for a backlog to drain (a transfer later than that stops the run, naming it)
    horizon = float(setup.arrivals[-1]) + 2 * setup.stall_timeout_s + 600.0
    for spec in setup.specs:
        host, port = setup.hosts[spec.name]
        where = f"{host}:{port}"
        try:
            sock = socket.create_connection((host, port), timeout=10.0)
        except OSError as exc:
            raise DeployError(one_line(f"node {spec.name!r} at {where}: cannot connect "
                                       f"({exc.strerror or exc})")) from None
        h = _Handle(spec.name, _Control(sock), address=where)
        run.nodes.append(h)
        try:
            connect_handshake(sock, setup.secret, "control", "coordinator", setup.run_id)
            sock.settimeout(_CONTROL_TIMEOUT_S)  # a read that waits longer: the host is gone
            keep_alive(sock)
            first = h.conn.recv()
            if first[0] != "welcome":
                raise DeployError(one_line(f"{h} refused the run: "
                                           f"{first[1] if len(first) > 1 else first[0]}"))
            h.clock_before = _exchange_clocks(h)
            h.clock = fit_clock(h.clock_before)
            message, blobs = spec_to_wire(spec, horizon)
            sock.settimeout(None)  # a timeout would bound each whole send: a large segment
            try:                   # over a slow link takes minutes (keepalive watches it)
                send_json(sock, {**message, "blobs": len(blobs)}, MAX_CONTROL_BYTES)
            except ValueError as exc:
                raise DeployError(one_line(f"{h}: the node's settings are too large to send "
                                           f"({exc}; its links' channel tables grow with the "
                                           f"run's length)")) from None
            for blob in blobs:
                send_blob(sock, blob)
            sock.settimeout(_CONTROL_TIMEOUT_S)
        except (AuthError, OSError, EOFError) as exc:
            raise DeployError(one_line(f"{h}: {exc or type(exc).__name__}")) from None


def _accept_results(run: _Run, setup: _Setup, listeners: dict[str, socket.socket],
                    timeout_s: float = 60.0) -> list[socket.socket]:
    """One authenticated connection from each node that sends results, on the listener of the
    address it was told, watching the nodes while waiting; any other connection is refused
    with a logged line."""
    wanted: dict[str, set[str]] = {address: set() for address in listeners}
    for name in setup.routing.sinks:
        wanted[setup.result_address(run, name)].add(name)
    got: list[socket.socket] = []
    failed: list[BaseException] = []
    stop = threading.Event()

    def stopped() -> None:
        if stop.is_set():
            raise DeployError("stopped")

    def accept(address: str) -> None:
        try:
            socks = accept_peers(listeners[address], setup.secret, wanted[address],
                                 timeout_s=timeout_s, who="result sink", log=log_line,
                                 allow=lambda p: p.role == "data" and p.run == setup.run_id,
                                 between=stopped)
            got.extend(socks.values())
        except BaseException as exc:
            failed.append(exc)

    threads = [threading.Thread(target=accept, args=(a,), daemon=True, name=f"sink-{a}")
               for a in listeners]
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            run.poll(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join()
        run.sockets.extend(got)
    if failed:
        run.raise_if_failed()
        raise DeployError(f"the result sink: {failed[0]}")
    return got


def _launch(setup: _Setup, on_start: Callable[[dict[str, int]], None] | None) -> DeployResult:
    run = _Run()
    specs, routing = setup.specs, setup.routing
    try:
        if setup.hosts is None:
            _start_nodes(run, specs)
            if on_start is not None:
                on_start({h.name: int(h.proc.pid or 0) for h in run.nodes if h.proc})
        else:
            _start_remote(run, setup)
        ports = _wait_ready(run)
        try:
            listeners = {}
            for name in routing.sinks:
                address = setup.result_address(run, name)
                if address not in listeners:
                    listeners[address] = listen(address, 0)
                    run.sockets.append(listeners[address])
            for h, spec in zip(run.nodes, specs, strict=True):
                targets: list[Any] = []
                for d in spec.rates_out:
                    host, port = (setup.result_address(run, h.name),
                                  listeners[setup.result_address(run, h.name)].getsockname()[1]) \
                        if d == SINK else (setup.data_host(d), ports[d])
                    targets.append([d, host, port] if h.proc is None else
                                   (d, host, port, d == SINK))
                h.conn.send(("connect", targets, 0.0 if h.clock is None else
                             h.clock.offset_at(time.monotonic())))
            results = _accept_results(run, setup, listeners)
            first = next(h for h in run.nodes if h.name == routing.first)
            entry = (setup.data_host(routing.first), ports[routing.first])
            try:
                client = socket.create_connection(entry, timeout=60)
                run.sockets.append(client)
                connect_handshake(client, setup.secret, "data", CLIENT, setup.run_id, 60.0)
            except OSError as exc:
                run.raise_if_failed()
                raise DeployError(one_line(f"{first}: the client cannot reach its data port "
                                           f"{entry[0]}:{entry[1]} "
                                           f"({exc or type(exc).__name__})")) from None
            for s in (client, *results):
                s.settimeout(None)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return _drive(run, setup, client, results)
        except OSError as exc:  # a connection that failed: most likely a node that died
            run.raise_if_failed()
            raise DeployError(one_line(f"{type(exc).__name__}: {exc}")) from None
    finally:
        run.close()


def _wait_ready(run: _Run) -> dict[str, int]:
    ports: dict[str, int] = {}
    deadline = time.monotonic() + 120.0
    while len(ports) < len(run.nodes):
        if time.monotonic() > deadline:
            missing = [h.name for h in run.nodes if h.name not in ports]
            raise DeployError(f"node(s) {missing} did not start within 120 s")
        for h in run.nodes:
            if h.name not in ports and not h.lost and wait([_waitable(h.conn)], 0):
                msg = run.take(h)
                if msg is None:
                    time.sleep(0.2)  # the node died: its exit code comes next
                elif msg[0] == "ready":
                    ports[h.name] = int(msg[1])
                else:
                    run.handle(h, msg)
        run.raise_if_failed()
        time.sleep(0.01)
    return ports


def _drive(run: _Run, setup: _Setup, client: socket.socket,
           results: list[socket.socket]) -> DeployResult:
    arrivals, tc = setup.arrivals, setup.tc
    n = arrivals.size
    t0 = time.monotonic() + _START_MARGIN_S
    client.sendall(encode(Message(START, value=t0)))
    if tc is not None:
        tc.start(t0)
    got: dict[int, float] = {}
    outputs: dict[int, Tensor] = {}
    failures: list[str] = []
    started = threading.Semaphore(0)

    def sink(sock: socket.socket) -> None:
        try:
            while True:
                msg = recv_message(sock)
                if msg is None:
                    raise ConnectionError("a node closed its result connection")
                if msg.kind == START:
                    started.release()
                elif msg.kind == END:
                    return
                else:
                    got[msg.request] = time.monotonic()
                    if setup.keep_outputs:
                        outputs[msg.request] = msg.tensors[0].clone()
        except Exception as exc:  # reported by the main loop
            failures.append(f"result sink: {type(exc).__name__}: {exc}")

    def send_requests() -> None:
        try:
            for _ in results:  # every node that sends results is connected and started
                while not started.acquire(timeout=0.1):
                    if run.stop.is_set():
                        return
            for i in range(n):
                x = request_input(setup.scenario, setup.seed, i)
                frame = encode(Message(DATA, i, 0.0, (x,)))
                wait_s = t0 + float(arrivals[i]) - time.monotonic() - 0.01
                if run.stop.wait(max(wait_s, 0.0)):  # the run stopped: send no more
                    return
                sleep_until(t0 + float(arrivals[i]))
                client.sendall(frame)
        except Exception as exc:
            failures.append(f"client: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=sink, args=(s,), daemon=True) for s in results]
    threads.append(threading.Thread(target=send_requests, daemon=True))
    run.threads.extend(threads)
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
    while len(run.done) < len(run.nodes):
        if time.monotonic() > deadline:
            late = ", ".join(str(h) for h in run.nodes if h.name not in run.done)
            raise DeployError(f"{late}: did not finish within 60 s of the last result")
        run.poll(0.1)
    records = run.done
    clocks: dict[str, Any] | None = None
    if setup.hosts is not None:
        clocks = {}
        for h in run.nodes:
            try:
                after = _exchange_clocks(h)
            except OSError as exc:
                raise DeployError(one_line(f"{h}: the clock exchange after the run failed "
                                           f"({exc or type(exc).__name__})")) from None
            h.clock = fit_clock(h.clock_before, after)
            records[h.name] = _on_coordinator_clock(records[h.name], h.clock)
            clocks[h.name] = {"address": h.address, **h.clock.describe()}
    result = _result(setup, records, t0, outputs)
    result.clock = clocks
    return result


_TIMES = ("received", "arrived", "start", "end", "link_start", "link_end", "link_due")


def _on_coordinator_clock(records: dict[str, dict[str, float]],
                          clock: ClockModel) -> dict[str, dict[str, float]]:
    return {request: {key: clock.to_coordinator(v) if key in _TIMES else v
                      for key, v in rec.items()} for request, rec in records.items()}


def _result(setup: _Setup, records: dict[str, dict[str, dict[str, float]]], t0: float,
            outputs: dict[int, Tensor]) -> DeployResult:
    """Each request's stage times from the nodes' records, in the merged stages' columns."""
    routing, arrivals = setup.routing, setup.arrivals
    merged, positions = routing.stages
    n, k = arrivals.size, len(merged)
    wait_s, service_s, prop_s = np.zeros((n, k)), np.zeros((n, k)), np.zeros((n, k))
    late_s = np.zeros((n, k))
    completion = np.zeros(n)
    state = np.zeros(n, dtype=np.intp)
    sent: list[list[float]] = [[] for _ in range(k)]
    for i in range(n):
        state[i] = int(records[routing.first][str(i)]["state"])
        design, route, where = routing.designs[state[i]], routing.routes[state[i]], \
            positions[state[i]]
        ready = t0 + float(arrivals[i])  # when the request can go on
        s = 0
        for j, node in enumerate(route):
            rec = records[node][str(i)]
            if j > 0:  # the previous stage was the transfer into this node
                prop_s[i, where[s - 1]] = rec["arrived"] - ready
                ready = rec["arrived"]
            a, b = design.segments()[j]
            if b > a:
                wait_s[i, where[s]] = rec["start"] - ready
                service_s[i, where[s]] = rec["end"] - rec["start"]
                ready = rec["end"]
                s += 1
            # a node that runs no block forwards: copying the frame counts as the link's wait
            if j < len(route) - 1:
                wait_s[i, where[s]] = rec["link_start"] - ready
                service_s[i, where[s]] = rec["link_end"] - rec["link_start"]
                late_s[i, where[s]] = rec["link_end"] - rec["link_due"]
                sent[where[s]].append(rec["bytes"])
                ready = rec["link_end"]
                s += 1
        completion[i] = ready - t0
    frame_bytes = [float(np.mean(b)) if b else 0.0
                   for b, stage in zip(sent, merged, strict=True) if isinstance(stage, Transfer)]
    return DeployResult(routing.labels, arrivals.copy(), completion, wait_s, service_s, prop_s,
                        np.arange(n) >= setup.scenario.workload.warmup_tasks, frame_bytes,
                        routing.count, state, setup.expected_state.copy(), _policy(routing),
                        late_s=late_s, outputs=outputs)


def _policy(routing: Routing) -> dict[str, Any] | None:
    if routing.link is None:
        return None
    return {"observed_link": list(routing.link), "thresholds_bps": list(routing.thresholds_bps),
            "observe_delay_s": routing.observe_delay_s}
