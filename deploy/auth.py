"""Who may talk to a node: a shared-secret handshake and small JSON control messages.

Every connection to a node (the coordinator's control connection, a data connection from the
node before it on the route or from the client, a node's connection to the result sink) opens
with a challenge-response on a secret that the coordinator and the nodes share (a token file):

1. the listening side sends ``{"hello": "jmsnas", "version": 2, "nonce": N_s}`` (32 random bytes,
   hex);
2. the connecting side answers ``{"role", "from", "run", "nonce": N_c, "mac"}``, with ``mac`` =
   HMAC-SHA256(secret, "client" | role | from | run | N_s | N_c): it proves that it holds the
   secret for this very challenge, without sending the secret;
3. the listening side checks it (in constant time) and answers ``{"ok": true, "mac"}`` with its
   own HMAC over "server" | N_s | N_c, which proves the secret the other way, or closes the
   connection.

A recorded handshake cannot be replayed (the nonces differ every time). What is *not* protected:
the frames after the handshake travel in clear and unsigned (anyone on the path can read the
activations, or inject bytes into an established TCP connection); add a VPN or TLS tunnel where
that matters.

Control messages are JSON objects behind a 4-byte length (a bounded size, read before any
allocation); binary blobs (segment files) follow as length-prefixed byte strings. Nothing
received is unpickled or executed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_CONTROL_BYTES",
    "MAX_JSON_BYTES",
    "MAX_RESULT_BYTES",
    "AuthError",
    "Peer",
    "accept_handshake",
    "accept_peers",
    "connect_handshake",
    "keep_alive",
    "listen",
    "read_token",
    "recv_blob",
    "recv_json",
    "send_blob",
    "send_json",
]

MAX_JSON_BYTES = 16 * 2**20
"""The largest control message by default."""
MAX_CONTROL_BYTES = 64 * 2**20
"""The largest message from a coordinator to a node server (a setup message holds a channel
table per link)."""
MAX_RESULT_BYTES = 2**30
"""The largest message from a node server to its coordinator (``done`` holds a record per
request: about 200 bytes each)."""
MAX_PENDING_HANDSHAKES = 16
"""Handshakes in progress at once on one listening socket; more connections are closed."""
_HANDSHAKE_BYTES = 4096
_LEN = struct.Struct("!I")
_BLOB_LEN = struct.Struct("!Q")
_VERSION = 2
"""Raised when what a node and its coordinator exchange changes (2: each record's
``link_due``), so that mixed versions stop at the handshake, in one line."""
_MIN_TOKEN_BYTES = 16


class AuthError(ConnectionError):
    """A handshake that failed: wrong secret, a malformed answer, or a peer not allowed."""


def read_token(path: str | os.PathLike[str]) -> bytes:
    """The shared secret in ``path`` (surrounding whitespace dropped): at least 16 bytes. A
    ValueError names the file and what is wrong."""
    p = Path(path)
    try:
        data = p.read_bytes().strip()
    except OSError as exc:
        raise ValueError(f"token file {p}: cannot read it ({exc.strerror})") from None
    if len(data) < _MIN_TOKEN_BYTES:
        raise ValueError(f"token file {p}: the secret must be at least {_MIN_TOKEN_BYTES} "
                         f"bytes, got {len(data)} (make one with: openssl rand -hex 32 > {p})")
    return data


def token_readable_by_others(path: str | os.PathLike[str]) -> bool:
    """Whether users other than the owner may read the token file (worth a warning)."""
    try:
        return bool(os.stat(path).st_mode & (stat.S_IRGRP | stat.S_IROTH))
    except OSError:
        return False


def _recv_exact(sock: socket.socket, n: int, deadline: float | None = None) -> bytes:
    """``n`` bytes from ``sock``; with a ``deadline`` (``time.monotonic()``), all of them by
    then (TimeoutError otherwise), however slowly the peer trickles them."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the peer was too slow")
            sock.settimeout(left)
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionError("the peer closed the connection")
        got += k
    return bytes(buf)


def send_json(sock: socket.socket, obj: Any, limit: int = MAX_JSON_BYTES) -> None:
    """Send ``obj`` as one control message; a ValueError if it exceeds ``limit`` bytes (what
    the receiving side accepts)."""
    data = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
    if len(data) > limit:
        raise ValueError(f"a control message of {len(data)} bytes exceeds {limit}")
    sock.sendall(_LEN.pack(len(data)) + data)


def recv_json(sock: socket.socket, limit: int = MAX_JSON_BYTES,
              deadline: float | None = None) -> dict[str, Any]:
    """The next control message: a JSON object of at most ``limit`` bytes (checked before the
    body is read), whole by ``deadline`` if one is given (see :func:`_recv_exact`)."""
    (n,) = _LEN.unpack(_recv_exact(sock, _LEN.size, deadline))
    if n > limit:
        raise AuthError(f"a control message announces {n} bytes (at most {limit})")
    body = _recv_exact(sock, n, deadline)
    try:
        obj = json.loads(body)
    except ValueError as exc:  # not UTF-8, not JSON, an integer of 5,000 digits
        raise AuthError(f"a control message is not JSON ({str(exc)[:200]})") from None
    except RecursionError:  # thousands of nested brackets
        raise AuthError("a control message nests too deeply") from None
    if not isinstance(obj, dict):
        raise AuthError("a control message is not a JSON object")
    return obj


def send_blob(sock: socket.socket, data: bytes) -> None:
    sock.sendall(_BLOB_LEN.pack(len(data)) + data)


def recv_blob(sock: socket.socket, limit: int) -> bytes:
    (n,) = _BLOB_LEN.unpack(_recv_exact(sock, _BLOB_LEN.size))
    if n > limit:
        raise AuthError(f"a blob announces {n} bytes (at most {limit})")
    return _recv_exact(sock, n)


def _mac(secret: bytes, *parts: str) -> str:
    return hmac.new(secret, "|".join(parts).encode(), hashlib.sha256).hexdigest()


def _field(obj: dict[str, Any], key: str, limit: int = 200) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or len(value) > limit:
        raise AuthError(f"the handshake's {key!r} is missing or malformed")
    return value


_HEX = frozenset("0123456789abcdef")


def _hex_field(obj: dict[str, Any], key: str) -> str:
    """A nonce or a MAC: exactly 64 lower-case hex digits (so that the constant-time
    comparison only ever sees ASCII)."""
    value = obj.get(key)
    if not isinstance(value, str) or len(value) != 64 or not _HEX.issuperset(value):
        raise AuthError(f"the handshake's {key!r} is missing or not 64 hex digits")
    return value


@dataclass(frozen=True)
class Peer:
    """An authenticated connection's claims: its ``role`` (``control`` or ``data``), the name
    it sends ``from`` and the ``run`` it belongs to."""

    role: str
    sender: str
    run: str


def accept_handshake(sock: socket.socket, secret: bytes, timeout_s: float = 10.0,
                     admit: Callable[[Peer], str | None] | None = None) -> Peer:
    """The listening side's handshake on a fresh connection. Raises :class:`AuthError` (or a
    ConnectionError, or TimeoutError after ``timeout_s``) when the peer does not prove the
    secret, or when ``admit`` gives a reason to refuse the peer it proved to be (the peer is
    told the reason: it holds the secret); the caller closes the connection."""
    deadline = time.monotonic() + timeout_s
    sock.settimeout(timeout_s)
    nonce = secrets.token_hex(32)
    send_json(sock, {"hello": "jmsnas", "version": _VERSION, "nonce": nonce})
    answer = recv_json(sock, _HANDSHAKE_BYTES, deadline)
    role, sender, run = _field(answer, "role"), _field(answer, "from"), _field(answer, "run")
    theirs = _hex_field(answer, "nonce")
    if not hmac.compare_digest(_hex_field(answer, "mac").encode(),
                               _mac(secret, "client", role, sender, run, nonce, theirs).encode()):
        raise AuthError("wrong token (the handshake's proof does not match)")
    peer = Peer(role, sender, run)
    why = admit(peer) if admit is not None else None
    if why is not None:
        send_json(sock, {"ok": False, "error": why})
        raise AuthError(why)
    send_json(sock, {"ok": True, "mac": _mac(secret, "server", nonce, theirs)})
    sock.settimeout(None)
    return peer


def connect_handshake(sock: socket.socket, secret: bytes, role: str, sender: str, run: str,
                      timeout_s: float = 10.0) -> None:
    """The connecting side's handshake: prove the secret, and check that the listening side
    holds it too. Raises :class:`AuthError` when it refuses us or does not prove it."""
    deadline = time.monotonic() + timeout_s
    sock.settimeout(timeout_s)
    try:
        hello = recv_json(sock, _HANDSHAKE_BYTES, deadline)
    except ConnectionError as exc:
        raise AuthError(f"no handshake from the node ({exc})") from None
    if hello.get("hello") != "jmsnas" or hello.get("version") != _VERSION:
        raise AuthError("not a JMSNAS node (or another protocol version)")
    nonce = _hex_field(hello, "nonce")
    mine = secrets.token_hex(32)
    send_json(sock, {"role": role, "from": sender, "run": run, "nonce": mine,
                     "mac": _mac(secret, "client", role, sender, run, nonce, mine)})
    try:
        reply = recv_json(sock, _HANDSHAKE_BYTES, deadline)
    except ConnectionError:
        raise AuthError("the node refused the handshake (wrong token?)") from None
    if reply.get("ok") is False and isinstance(reply.get("error"), str):
        raise AuthError(f"the node refused: {reply['error'][:200]}")
    if reply.get("ok") is not True or not hmac.compare_digest(
            _hex_field(reply, "mac").encode(), _mac(secret, "server", nonce, mine).encode()):
        raise AuthError("the node did not prove the token (wrong token on one side?)")
    sock.settimeout(None)


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host`` (an IPv4 or IPv6 address or a name) and ``port``
    (0: a free one) only, not on every interface."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


def keep_alive(sock: socket.socket, idle_s: int = 5, interval_s: int = 2, count: int = 3) -> None:
    """TCP keepalive probes on a long-lived connection whose peer may legitimately stay silent
    (a control connection during a run): a peer whose host vanishes without closing it (power
    lost, a cable pulled) is detected within about ``idle_s + interval_s * count`` seconds, and
    a blocked read then fails."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    idle = "TCP_KEEPIDLE" if hasattr(socket, "TCP_KEEPIDLE") else "TCP_KEEPALIVE"  # macOS
    for option, value in ((idle, idle_s), ("TCP_KEEPINTVL", interval_s), ("TCP_KEEPCNT", count),
                          # sent data unacknowledged this long also ends it (probes wait
                          # while data is in flight); Linux only
                          ("TCP_USER_TIMEOUT", 1000 * (idle_s + interval_s * count))):
        if hasattr(socket, option):  # elsewhere the system's defaults apply
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def accept_peers(listener: socket.socket, secret: bytes, wanted: set[str], *,
                 timeout_s: float, who: str, allow: Callable[[Peer], bool],
                 log: Callable[[str], None],
                 between: Callable[[], None] | None = None) -> dict[str, socket.socket]:
    """One authenticated connection from each sender in ``wanted`` on ``listener``, within
    ``timeout_s``. Each connection's handshake runs in a thread of its own (at most
    :data:`MAX_PENDING_HANDSHAKES` at once), so a silent or trickling connection cannot hold up
    the others; one that fails the handshake, or whose peer ``allow`` rejects or whose sender
    is not (or no longer) wanted, is refused with one line given to ``log``, naming ``who``
    refused it. ``between`` runs
    every 0.2 s while waiting (to watch the run's processes). TimeoutError names the senders
    still missing."""
    waiting = set(wanted)
    lock = threading.Lock()
    got: dict[str, socket.socket] = {}
    closed = [False]  # set when we give up: a handshake that passes later closes its socket
    pending = threading.BoundedSemaphore(MAX_PENDING_HANDSHAKES)

    def admit(peer: Peer) -> str | None:
        with lock:
            if allow(peer) and peer.sender in waiting:
                waiting.discard(peer.sender)  # claimed: a second connection for it is refused
                return None
        return (f"a {peer.role} connection from {peer.sender!r} of run {peer.run!r}: not a "
                f"peer that {who} waits for")

    def handshake(sock: socket.socket, addr: Any) -> None:
        try:
            peer = accept_handshake(sock, secret, admit=admit)
        except Exception as exc:  # anything a stranger sends ends in one line, never a traceback
            log(f"{who}: refused a connection from {addr[0]}:{addr[1]}: "
                     f"{exc or type(exc).__name__}")
            sock.close()
        else:
            with lock:
                if closed[0]:
                    sock.close()
                else:
                    got[peer.sender] = sock
        finally:
            pending.release()

    deadline = time.monotonic() + timeout_s
    listener.settimeout(0.2)
    try:
        while True:
            with lock:
                if len(got) == len(wanted):
                    return dict(got)
            if time.monotonic() > deadline:
                with lock:
                    missing = sorted(set(wanted) - set(got))
                raise TimeoutError(f"no connection from {missing} within {timeout_s:g} s")
            if between is not None:
                between()
            try:
                sock, addr = listener.accept()
            except TimeoutError:
                continue
            if not pending.acquire(blocking=False):
                log(f"{who}: refused a connection from {addr[0]}:{addr[1]}: "
                         f"{MAX_PENDING_HANDSHAKES} handshakes already in progress")
                sock.close()
                continue
            threading.Thread(target=handshake, args=(sock, addr), daemon=True,
                             name=f"handshake-{addr[0]}:{addr[1]}").start()
    except BaseException:
        with lock:
            closed[0] = True
            for sock in got.values():
                sock.close()
        raise
