"""One node of a deployment, run in its own OS process.

The node listens for its upstream neighbour (the previous node, or the client for the first),
connects to its downstream one (the next node, or the result sink for the last) and runs:

- a receiver thread: reads frames, stamps their arrival and queues them, each with the time it
  is due: arrival plus the incoming link's propagation delay;
- ``servers`` worker threads, FIFO from that queue, one torch thread each (the process runs
  ``torch.set_num_threads(1)``; torch releases the GIL while it computes): wait until the
  request is due (the delay is constant per link, so due times keep the queue's order), decode
  the payload, run the node's segment, encode what it sends on;
- a sender thread: the outgoing link's FIFO queue, paced to the channel (:class:`PacedLink`).

Per request it records when the frame was received and released to the queue, when a worker
started and finished, and when the sender started and finished; on END it finishes the queue,
forwards END, writes the records (atomically) and reports ``done``. It talks to the process that
started it over a pipe: ``ready`` with its port, ``connect`` with its downstream port, ``done``
or ``error``; when that pipe closes (the parent died), the node exits at once.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import torch
from torch import Tensor

from models.split import Payload, Segment, load_segment
from sim.channels import RateProcess

from .netns import setns
from .pacing import PacedLink, sleep_until
from .wire import DATA, END, START, Message, decode_payload, encode, payload_tensors, recv_message

__all__ = ["NodeSpec", "model_input", "node_main", "one_line", "run_stage"]

_CONNECT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class NodeSpec:
    """What one node process needs (pickled to it)."""

    name: str
    segment_path: str
    servers: int
    propagation_in_s: float
    """Propagation delay of the incoming link (0 for the first node: the client is local)."""
    rate_out: RateProcess | None
    """The outgoing link's channel realisation; None for the last node (the sink is not shaped)."""
    records_path: str
    netns_path: str | None = None
    """With tc shaping: the network namespace the node runs in (see :mod:`deploy.netns`)."""
    listen_host: str = "127.0.0.1"


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
        self.out: queue.Queue[Any] = queue.Queue()
        self.finished = threading.Event()
        self.segment = load_segment(spec.segment_path)
        self.link: PacedLink | None = None

    def report(self, *message: Any) -> None:
        with self.conn_lock:
            self.conn.send(message)

    def thread(self, target: Callable[[], None], name: str) -> None:
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

        threading.Thread(target=guarded, name=name, daemon=True).start()

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
        listener = socket.create_server((self.spec.listen_host, 0))
        listener.settimeout(_CONNECT_TIMEOUT_S)
        self.report("ready", listener.getsockname()[1])
        self.thread(self.watch_parent, "watchdog")
        try:
            command = self.commands.get(timeout=_CONNECT_TIMEOUT_S)
        except queue.Empty:
            raise TimeoutError(f"no connect command within {_CONNECT_TIMEOUT_S:g} s") from None
        if command[0] != "connect":
            raise RuntimeError(f"expected connect, got {command[0]!r}")
        _, host, port, from_home = command
        if from_home and home is not None and own is not None:  # the result sink: unshaped
            setns(home)
            out_sock = socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT_S)
            setns(own)
        else:
            out_sock = socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT_S)
        in_sock, _ = listener.accept()
        listener.close()
        for s in (out_sock, in_sock):
            s.settimeout(None)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.link = PacedLink(out_sock, self.spec.rate_out)
        self.in_sock = in_sock
        self.thread(self.receive, "receiver")
        for k in range(self.spec.servers):
            self.thread(self.serve, f"worker-{k}")
        self.thread(self.send, "sender")
        self.finished.wait()
        tmp = self.spec.records_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({str(k): v for k, v in self.records.items()}, fh)
        os.replace(tmp, self.spec.records_path)
        self.report("done")

    def receive(self) -> None:
        assert self.link is not None
        while True:
            msg = recv_message(self.in_sock)
            now = time.monotonic()
            if msg is None:
                raise ConnectionError("the upstream connection closed before the end of the run")
            if msg.kind == START:
                self.link.t0 = msg.value
                self.out.put(msg)
            elif msg.kind == END:
                self.work.join()  # every request done before END goes on
                self.out.put(msg)
                return
            else:
                due = now + self.spec.propagation_in_s
                self.records[msg.request] = {"received": now, "arrived": due}
                self.work.put((due, msg))

    def serve(self) -> None:
        while True:
            due, msg = self.work.get()
            sleep_until(due)
            rec = self.records[msg.request]
            rec["start"] = time.monotonic()
            out = run_stage(self.segment, decode_payload(msg.tensors))
            frame = encode(Message(DATA, msg.request, 0.0, payload_tensors(out)))
            rec["end"] = time.monotonic()
            self.out.put((msg.request, frame))
            self.work.task_done()

    def send(self) -> None:
        assert self.link is not None
        while True:
            item = self.out.get()
            if isinstance(item, Message):
                self.link.sock.sendall(encode(item))
                if item.kind == END:
                    self.finished.set()
                    return
                continue
            request, frame = item
            start, end = self.link.send(frame)
            rec = self.records[request]
            rec["link_start"], rec["link_end"], rec["bytes"] = start, end, float(len(frame))


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
    """Entry point of a node process (started with the ``spawn`` method)."""
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
