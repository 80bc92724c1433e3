"""A node server: one host's long-running ``jmsnas node``, waiting for a coordinator.

It listens on the address it is given (never every interface unless told so) and serves one
coordinator at a time. Each connection must pass the handshake of :mod:`deploy.auth` within 10
s; one that does not, or is not a coordinator's control connection, is refused with one logged
line, and the server goes on. A coordinator then:

- exchanges clock timestamps with it (:mod:`deploy.clock`), before the run and after it;
- sends a ``setup`` message and the node's segment files (:mod:`deploy.remote`): the server
  starts the node (:mod:`deploy.node`) in a child process, which opens its data port on the same
  address, and relays the node's messages (``ready``, ``done`` with its records, ``error``);
- sends ``connect`` with the data ports of the nodes downstream.

When the coordinator closes the connection, or it breaks, or the node fails, the server stops
the node process, removes the run's files and waits for the next coordinator: nothing of a run
outlives it.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import shutil
import socket
import tempfile
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from models import processes

from .auth import (
    MAX_CONTROL_BYTES,
    MAX_PENDING_HANDSHAKES,
    MAX_RESULT_BYTES,
    AuthError,
    accept_handshake,
    keep_alive,
    listen,
    recv_blob,
    recv_json,
    send_json,
)
from .clock import Clock
from .node import log_line, node_main, one_line
from .remote import MAX_SEGMENT_BYTES, SetupError, spec_from_wire

__all__ = ["NodeServer"]

_BUSY_WAIT_S = 10.0
"""How long a coordinator waits for the run before it to end (its node process to stop)."""



class NodeServer:
    """Listens on ``host``:``port`` (0: a free port; see :attr:`address`); :meth:`serve_forever`
    serves coordinators until :meth:`shutdown`."""

    def __init__(self, host: str, port: int, secret: bytes, *, data_port: int = 0,
                 clock: Clock | None = None) -> None:
        self.secret = secret
        self.data_port = data_port
        self.clock = clock or Clock()
        self.listener = listen(host, port)
        self.host = host
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self._busy = threading.Lock()
        self._pending = threading.BoundedSemaphore(MAX_PENDING_HANDSHAKES)
        self._stop = threading.Event()
        self.workdir = tempfile.TemporaryDirectory(prefix="jmsnas-node-")
        """The runs' segment files, each run in a folder of its own (removed with the run;
        the whole folder when the server stops)."""

    def shutdown(self) -> None:
        self._stop.set()

    def serve_forever(self) -> None:
        log_line(f"node server listening on {self.address[0]}:{self.address[1]}")
        self.listener.settimeout(0.2)
        try:
            while not self._stop.is_set():
                try:
                    conn, addr = self.listener.accept()
                except TimeoutError:
                    continue
                if not self._pending.acquire(blocking=False):
                    log_line(f"refused a connection from {addr[0]}:{addr[1]}: "
                             f"{MAX_PENDING_HANDSHAKES} handshakes already in progress")
                    conn.close()
                    continue
                threading.Thread(target=self._connection, args=(conn, addr), daemon=True,
                                 name=f"connection-{addr[0]}:{addr[1]}").start()
        finally:
            self.listener.close()
            self.workdir.cleanup()

    def _connection(self, conn: socket.socket, addr: tuple[str, int]) -> None:
        who = f"{addr[0]}:{addr[1]}"
        try:
            try:
                peer = accept_handshake(conn, self.secret, admit=lambda p: None if (
                    p.role == "control") else f"a {p.role} connection from {p.sender!r} at "
                    f"the control port")
            finally:
                self._pending.release()
        except Exception as exc:  # anything a stranger sends ends in one line, never a traceback
            log_line(f"refused a connection from {who}: {exc or type(exc).__name__}")
            conn.close()
            return
        if not self._busy.acquire(timeout=_BUSY_WAIT_S):  # the last run may be ending
            log_line(f"refused coordinator {who} (run {peer.run}): busy with another run")
            try:
                send_json(conn, {"kind": "error", "args": ["the node server is busy with "
                                                           "another run"]})
            except OSError:
                pass
            conn.close()
            return
        why = "ended"
        try:
            why = _Session(self, conn, who, peer.run).run()
        finally:
            self._busy.release()
            log_line(f"run {peer.run} {why}; waiting for a coordinator")


class _Session:
    """One coordinator's run on this server."""

    def __init__(self, server: NodeServer, conn: socket.socket, who: str, run: str) -> None:
        self.server, self.conn, self.who, self.run_id = server, conn, who, run
        self.send_lock = threading.Lock()
        self.proc: mp.process.BaseProcess | None = None
        self.pipe: Connection | None = None
        self.error_sent = False
        self.folder = Path(tempfile.mkdtemp(prefix="run-", dir=server.workdir.name))
        """The run's segment files (removed when the run ends)."""

    def send(self, kind: str, *args: Any) -> None:
        with self.send_lock:
            send_json(self.conn, {"kind": kind, "args": list(args)}, MAX_RESULT_BYTES)
            if kind == "error":
                self.error_sent = True

    def run(self) -> str:
        """Serve the coordinator until the run ends; how it ended."""
        log_line(f"coordinator {self.who} connected (run {self.run_id})")
        why = "finished"
        try:
            keep_alive(self.conn)  # a coordinator whose host vanishes mid-run is noticed
            self.send("welcome")
            while True:
                self.handle(recv_json(self.conn, MAX_CONTROL_BYTES))
        except Exception as exc:
            if isinstance(exc, ConnectionError) and not isinstance(exc, AuthError):
                # the coordinator closed the connection (or reset it): the run is over
                if self.error_sent or "closed" not in str(exc):
                    why = f"ended: {exc}"
            else:  # a bad message, a setup refused, keepalive finding its host gone: say why
                why = one_line(f"failed: {type(exc).__name__}: {exc}")
                with contextlib.suppress(OSError):
                    self.send("error", why)
        finally:
            self.stop_node()
            shutil.rmtree(self.folder, ignore_errors=True)
            self.conn.close()
        return why

    def handle(self, msg: dict[str, Any]) -> None:
        kind = msg.get("kind")
        clock = self.server.clock
        if kind == "clock":
            t2 = clock.now()
            self.send("clock", t2, clock.now())
        elif kind == "setup" and self.proc is None:
            count = msg.get("blobs")
            if not isinstance(count, int) or not 1 <= count <= 256:
                raise SetupError("setup.blobs: 1 to 256 segment files")
            blobs = [recv_blob(self.conn, MAX_SEGMENT_BYTES) for _ in range(count)]
            body = {k: v for k, v in msg.items() if k != "blobs"}
            spec = spec_from_wire(body, blobs, self.folder, secret=self.server.secret,
                                  listen_host=self.server.host,
                                  data_port=self.server.data_port, clock=clock)
            if spec.run_id != self.run_id:
                raise SetupError(f"setup.run: {spec.run_id!r} is not this connection's run")
            self.start_node(spec)
        elif kind == "connect" and self.pipe is not None:
            args = msg.get("args")
            if not (isinstance(args, list) and len(args) == 2 and isinstance(args[0], list)
                    and isinstance(args[1], int | float)):
                raise SetupError("connect: expected [targets, offset_s]")
            targets = []
            for t in args[0]:
                if not (isinstance(t, list) and len(t) == 3 and isinstance(t[0], str)
                        and isinstance(t[1], str) and isinstance(t[2], int)):
                    raise SetupError("connect: a target is [name, host, port]")
                targets.append((t[0], t[1], t[2], False))
            self.pipe.send(("connect", targets, float(args[1])))
        else:
            raise SetupError(f"unexpected control message {kind!r}")

    def start_node(self, spec: Any) -> None:
        parent, child = processes.context(("deploy.node",)).Pipe()
        proc = processes.process(node_main, (spec, child), ("deploy.node",), daemon=True,
                                 name=f"jmsnas-node-{spec.name}")
        proc.start()
        child.close()
        self.proc, self.pipe = proc, parent
        threading.Thread(target=self.relay, daemon=True, name="relay").start()

    def relay(self) -> None:
        """The node's messages to the coordinator; a node that dies is reported."""
        assert self.pipe is not None and self.proc is not None
        try:
            while True:
                try:
                    msg = self.pipe.recv()
                except (EOFError, OSError):
                    break
                self.send(str(msg[0]), *msg[1:])
            self.proc.join(2.0)
            code = self.proc.exitcode
            if code not in (0, None) and not self.error_sent:
                how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
                self.send("error", f"the node process died ({how})")
        except OSError:
            pass  # the coordinator is gone; the session ends on its own
        except Exception as exc:  # e.g. records over the size a message may have
            log_line(f"run {self.run_id}: cannot relay the node's message: {exc}")
            try:
                self.send("error", one_line(f"the node server cannot relay the node's message "
                                            f"({type(exc).__name__}: {exc})"))
            except Exception:
                pass

    def stop_node(self) -> None:
        if self.proc is not None:
            if self.proc.is_alive():
                self.proc.terminate()
            self.proc.join(3.0)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(3.0)
        if self.pipe is not None:
            self.pipe.close()
