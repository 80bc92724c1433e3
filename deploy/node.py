"""One node of a deployment, run in its own OS process.

The node listens for its upstream neighbours (the nodes that may send to it, or the client for
the first), connects to its downstream ones (the nodes it may send to, and the result sink if it
sends results); every connection opens with the shared-secret handshake of :mod:`deploy.auth`,
and the node accepts exactly one connection from each upstream it was told of. It runs:

- a receiver thread per upstream connection: reads frames and stamps their arrival; the first
  node of a split policy also picks the request's channel state here, from the rate of the link
  it observes (:class:`Chooser`), and writes it into the frame;
- a release thread per upstream connection: holds each frame for the propagation delay of the
  link it crossed (the frame carries it), then puts it on the node's work queue, so that the
  queue is in order of arrival at the node whichever link a frame came by;
- ``servers`` worker threads, FIFO from that queue, one torch thread each (the process runs
  ``torch.set_num_threads(1)``; torch releases the GIL while it computes): decode the payload,
  run the node's segment for the request's state, encode what it sends on;
- a sender thread per downstream: that link's FIFO queue, paced to its channel
  (:class:`PacedLink`).

Per request it records (on its :class:`~deploy.clock.Clock`) when the frame was received and
released to the queue, its state, when a worker started and finished, and when the sender handed
over the frame's first and last chunks (:meth:`PacedLink.send`); once every upstream has sent
END it finishes the queue, forwards END downstream and reports ``done`` with the records. It
talks to the process that started it (the deployment, or a node server) over a pipe: ``ready``
with its port, ``connect`` with its downstream ports and its clock's offset, ``done`` or
``error``; when that pipe closes (the parent died), the node exits at once. A frame that is
malformed, too large or in a state that does not visit the node closes its connection with one
logged line and stops the node."""

from __future__ import annotations

import math
import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import torch
from torch import Tensor

from models.split import Payload, Segment, load_segment
from sim.channels import RateProcess
from sim.policy import states_of

from .auth import AuthError, accept_peers, connect_handshake, listen
from .clock import Clock
from .netns import setns
from .pacing import PacedLink
from .wire import (
    DATA,
    END,
    MAX_FRAME_BYTES,
    START,
    FrameError,
    Message,
    decode_payload,
    encode,
    payload_tensors,
    recv_message,
)

__all__ = ["CLIENT", "SINK", "Chooser", "NodeSpec", "log_line", "model_input", "node_main",
           "one_line", "run_stage"]

_CONNECT_TIMEOUT_S = 120.0


SINK = ""
"""The name of the result sink among a node's downstreams."""
CLIENT = "client"
"""The name the client gives in its handshake with the first node."""


@dataclass(frozen=True)
class Chooser:
    """How the first node of a split policy picks a request's state: k when k of
    ``thresholds_bps`` are at or below the rate of ``rate`` (the observed link's channel
    realisation) ``observe_delay_s`` before the request arrived (see :mod:`deploy.routing`)."""

    rate: RateProcess
    thresholds_bps: tuple[float, ...]
    observe_delay_s: float = 0.0

    def state(self, t_rel: float) -> int:
        """The state of a request that arrived ``t_rel`` seconds after the run's origin (the
        rule of :meth:`sim.policy.SplitPolicy.choose`)."""
        seen = max(t_rel - self.observe_delay_s, 0.0)
        return int(states_of(self.thresholds_bps, self.rate.rate_at(np.array([seen])))[0])


@dataclass(frozen=True)
class NodeSpec:
    """What one node process needs (pickled to it)."""

    name: str
    segment_paths: dict[int, str]
    """Per state that visits the node: the file of the segment it runs (an empty segment
    forwards)."""
    next_hop: dict[int, str]
    """Per state that visits the node: where it sends the request (:data:`SINK`: the result)."""
    servers: int
    upstream_names: tuple[str, ...]
    """Who may send to the node, one connection each: the nodes before it on some state's
    route, or :data:`CLIENT` for the first node."""
    rates_out: dict[str, RateProcess | None]
    """The channel realisation of each outgoing link (None: not shaped, as the sink is)."""
    propagation_out: dict[str, float]
    """The propagation delay of each outgoing link (the frames carry it to the receiver)."""
    run_id: str
    """Names the run in every handshake (a connection of another run is refused)."""
    secret: bytes
    """The shared secret of the handshakes (:mod:`deploy.auth`)."""
    chooser: Chooser | None = None
    """The first node of a split policy: how it picks each request's state."""
    netns_path: str | None = None
    """With tc shaping: the network namespace the node runs in (see :mod:`deploy.netns`)."""
    listen_host: str = "127.0.0.1"
    data_port: int = 0
    """Where the node listens for its upstreams (0: a free port)."""
    max_frame_bytes: int = MAX_FRAME_BYTES
    """Frames announcing more are refused before anything is allocated."""
    clock: Clock = field(default_factory=Clock)
    horizon_s: float = math.inf
    """How far into the run the outgoing links' realisations are known (a node server is
    sent them up to a horizon; a transfer past it stops the run loudly)."""


def model_input(x: Tensor) -> Tensor:
    """What the first block receives from the raw input that crossed the network: 8-bit
    images are scaled to [0, 1], 16-bit floats widened; 32-bit floats pass as they are."""
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    return x.float()


def run_stage(segment: Segment, payload: Payload) -> Payload:
    """What a node computes for one request (the raw input is converted first)."""
    if segment.start == 0 and len(segment.blocks) and isinstance(payload, Tensor):
        payload = model_input(payload)
    with torch.inference_mode():
        return segment(payload)


class _Node:
    def __init__(self, spec: NodeSpec, conn: Connection) -> None:
        self.spec = spec
        self.conn = conn
        self.conn_lock = threading.Lock()
        self.commands: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.records: dict[int, dict[str, float]] = {}
        self.work: queue.Queue[Any] = queue.Queue()
        self.outs: dict[str, queue.Queue[Any]] = {d: queue.Queue() for d in spec.rates_out}
        self.finished: dict[str, threading.Event] = {d: threading.Event() for d in spec.rates_out}
        loaded = {path: load_segment(path) for path in set(spec.segment_paths.values())}
        self.segments: dict[int, Segment] = {k: loaded[path]
                                             for k, path in spec.segment_paths.items()}
        self.links: dict[str, PacedLink] = {}
        self.in_socks: list[socket.socket] = []
        self.edge_lock = threading.Lock()
        self.started = False
        self.ended = 0
        self.t0 = 0.0
        self.clock = spec.clock
        self.offset_s = 0.0
        """This node's clock minus the coordinator's (START carries the coordinator's t0)."""

    def report(self, *message: Any) -> None:
        with self.conn_lock:
            self.conn.send(message)

    def thread(self, target: Callable[[], None], name: str) -> threading.Thread:
        def guarded() -> None:
            try:
                target()
            except BaseException as exc:  # any failure stops the node, and the run, loudly
                last = traceback.extract_tb(exc.__traceback__)[-1:]
                where = f" ({last[0].name}:{last[0].lineno})" if last else ""
                try:
                    self.report("error", one_line(f"{name}: {type(exc).__name__}: {exc}{where}"))
                finally:
                    os._exit(1)

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        thread.start()
        return thread

    def watch_parent(self) -> None:
        while True:
            try:
                self.commands.put(self.conn.recv())
            except (EOFError, OSError):
                os._exit(3)  # the process that started us is gone: do not linger

    def run(self) -> None:
        home = own = None
        if self.spec.netns_path is not None:
            home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            own = os.open(self.spec.netns_path, os.O_RDONLY)
            setns(own)
        spec = self.spec
        listener = listen(spec.listen_host, spec.data_port)
        self.report("ready", listener.getsockname()[1])
        self.thread(self.watch_parent, "watchdog")
        try:
            command = self.commands.get(timeout=_CONNECT_TIMEOUT_S)
        except queue.Empty:
            raise TimeoutError(f"no connect command within {_CONNECT_TIMEOUT_S:g} s") from None
        if command[0] != "connect":
            raise RuntimeError(f"expected connect, got {command[0]!r}")
        self.offset_s = float(command[2])
        # upstreams are accepted while we connect downstream: a connection's handshake waits
        # for the other side to accept it
        acceptor = self.thread(lambda: self.accept_upstreams(listener), "acceptor")
        for dest, host, port, from_home in command[1]:
            try:
                if from_home and home is not None and own is not None:  # the sink: unshaped
                    setns(home)
                    out_sock = socket.create_connection((host, port),
                                                        timeout=_CONNECT_TIMEOUT_S)
                    setns(own)
                else:
                    out_sock = socket.create_connection((host, port),
                                                        timeout=_CONNECT_TIMEOUT_S)
                connect_handshake(out_sock, spec.secret, "data", spec.name, spec.run_id)
            except (AuthError, OSError, ValueError) as exc:
                raise ConnectionError(f"{dest or 'the result sink'} at {host}:{port}: "
                                      f"{exc}") from None
            self.links[dest] = PacedLink(_ready(out_sock), spec.rates_out[dest],
                                         clock=self.clock, horizon_s=spec.horizon_s)
        acceptor.join()
        listener.close()
        for k, sock in enumerate(self.in_socks):
            held: queue.Queue[Any] = queue.Queue()
            self.thread(lambda sock=sock, held=held: self.receive(sock, held),  # type: ignore[misc]
                        f"receiver-{k}")
            self.thread(lambda held=held: self.release(held), f"release-{k}")  # type: ignore[misc]
        for k in range(self.spec.servers):
            self.thread(self.serve, f"worker-{k}")
        for dest in self.links:
            self.thread(lambda dest=dest: self.send(dest),  # type: ignore[misc]
                        f"sender-{dest or 'sink'}")
        for event in self.finished.values():
            event.wait()
        self.report("done", {str(k): v for k, v in self.records.items()})

    def accept_upstreams(self, listener: socket.socket) -> None:
        """One authenticated connection from each of the node's upstreams; a connection that
        fails the handshake, or comes from anyone else, is refused with one logged line."""
        spec = self.spec
        socks = accept_peers(listener, spec.secret, set(spec.upstream_names),
                             timeout_s=_CONNECT_TIMEOUT_S, who=f"node {spec.name}", log=log_line,
                             allow=lambda p: p.role == "data" and p.run == spec.run_id)
        self.in_socks = [_ready(sock) for sock in socks.values()]

    def receive(self, sock: socket.socket, held: queue.Queue[Any]) -> None:
        chooser = self.spec.chooser
        while True:
            try:
                msg = recv_message(sock, self.spec.max_frame_bytes)
                if msg is not None and msg.kind == DATA and chooser is None \
                        and msg.state not in self.spec.next_hop:
                    raise FrameError(f"a frame in state {msg.state}, which does not visit "
                                     f"this node")
            except FrameError as exc:
                log_line(f"node {self.spec.name}: closed an upstream connection: {exc}")
                sock.close()
                raise
            now = self.clock.now()
            if msg is None:
                raise ConnectionError("an upstream connection closed before the end of the run")
            if msg.kind == START:
                # the first START sets the origin (the coordinator's clock, moved to ours) and
                # goes on; later ones are dropped
                with self.edge_lock:
                    if not self.started:
                        self.started = True
                        self.t0 = msg.value + self.offset_s
                        for dest, link in self.links.items():
                            link.t0 = self.t0
                            self.outs[dest].put(msg)
            elif msg.kind == END:
                held.put((now, msg))
                return
            else:
                due = now + msg.value
                if chooser is not None:
                    msg.state = chooser.state(now - self.t0)
                self.records[msg.request] = {"received": now, "arrived": due,
                                             "state": msg.state}
                held.put((due, msg))

    def release(self, held: queue.Queue[Any]) -> None:
        """One upstream link's propagation: each frame joins the work queue when it is due
        (the delay is constant per link, so this keeps the link's order, and the work queue
        is in order of arrival at the node, as the simulator's queue is)."""
        while True:
            due, msg = held.get()
            if msg.kind == END:
                with self.edge_lock:
                    self.ended += 1
                    last = self.ended == len(self.spec.upstream_names)
                if last:
                    self.work.join()  # every request done before END goes on
                    for out in self.outs.values():
                        out.put(msg)
                return
            self.clock.sleep_until(due)
            self.work.put(msg)

    def serve(self) -> None:
        while True:
            msg = self.work.get()
            rec = self.records[msg.request]
            dest = self.spec.next_hop[msg.state]
            rec["start"] = self.clock.now()
            out = run_stage(self.segments[msg.state], decode_payload(msg.tensors))
            frame = encode(Message(DATA, msg.request, self.spec.propagation_out[dest],
                                   payload_tensors(out), msg.state))
            rec["end"] = self.clock.now()
            self.outs[dest].put((msg.request, frame))
            self.work.task_done()

    def send(self, dest: str) -> None:
        link, out = self.links[dest], self.outs[dest]
        while True:
            item = out.get()
            if isinstance(item, Message):
                link.sock.sendall(encode(item))
                if item.kind == END:
                    self.finished[dest].set()
                    return
                continue
            request, frame = item
            start, end, due = link.send(frame)
            rec = self.records[request]
            rec["link_start"], rec["link_end"], rec["link_due"] = start, end, due
            rec["bytes"] = float(len(frame))


def _ready(sock: socket.socket) -> socket.socket:
    """A connected socket set for frames: blocking, no Nagle delay."""
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


_LOG_LOCK = threading.Lock()


def log_line(text: str) -> None:
    """One line on standard error (a refused connection, a closed one), stamped. Written
    whole under a lock: ``print`` writes the text and its newline apart, and two handshake
    threads refusing at once interleaved them into one long line and an empty one."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    line = f"{stamp} jmsnas: {one_line(text, 500)}\n"
    with _LOG_LOCK:
        sys.stderr.write(line)
        sys.stderr.flush()


def one_line(text: str, limit: int = 300) -> str:
    """A message for one line of the command's error (some exceptions span several lines)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _set_process_name(name: str) -> None:
    """Name the process ``jmsnas-NODE`` in ps/top (Linux; elsewhere nothing happens)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def node_main(spec: NodeSpec, conn: Connection) -> None:
    """Entry point of a node process (started by :func:`models.processes.process`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _set_process_name(f"jmsnas-{spec.name}")
    try:
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
        _Node(spec, conn).run()
    except BaseException as exc:
        try:
            conn.send(("error", one_line(f"{type(exc).__name__}: {exc}")))
        finally:
            os._exit(1)
