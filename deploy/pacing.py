"""A pacing sender: holds a link to its channel's rate over time, on a real socket.

A message of B bits that starts at time s (seconds since the run's origin ``t0``) is cut into
chunks; chunk k leaves when the channel has carried, since s, as many bits as the message up to
the end of chunk k. That is a token bucket whose tokens accrue at the channel's rate r(t) and
whose depth is one chunk, so the last byte leaves at C^{-1}(C(s) + B) with C(t) the integral of
r: exactly when the simulator's link finishes the same transfer (:meth:`RateProcess.finish_time`).
Deadlines are absolute, so sleep overshoot does not accumulate; chunks are about ``chunk_s`` of
transmission long (our choice: 1 ms, between 256 bytes and 64 KiB).
"""

from __future__ import annotations

import math
import socket
import time
from typing import Protocol

import numpy as np

from sim.channels import RateProcess

__all__ = ["PacedLink", "sleep_until"]

_MIN_CHUNK, _MAX_CHUNK = 256, 65536


def sleep_until(deadline: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``deadline``. No busy wait: on two cores a
    spinning sender would take CPU from the node's compute (Linux oversleeps by ~0.1 ms)."""
    left = deadline - time.monotonic()
    while left > 0:
        time.sleep(left)
        left = deadline - time.monotonic()


class _Clock(Protocol):
    def now(self) -> float: ...

    def sleep_until(self, deadline: float) -> None: ...


class _System:
    """The system's monotonic clock."""

    def now(self) -> float:
        return time.monotonic()

    def sleep_until(self, deadline: float) -> None:
        sleep_until(deadline)


class PacedLink:
    """One direction of a link: sends whole frames over ``sock`` at the channel's rate.

    ``rate`` None sends at the socket's own speed (a link we do not shape: the client's input
    and the result sink). ``t0`` (a time of ``clock``: by default ``time.monotonic()``) is the
    origin of the channel's time axis; it is set when the run starts. ``clock`` has ``now()``
    and ``sleep_until(t)`` (a node's :class:`deploy.clock.Clock`).
    """

    def __init__(self, sock: socket.socket, rate: RateProcess | None,
                 chunk_s: float = 0.001, clock: _Clock | None = None,
                 horizon_s: float = math.inf) -> None:
        self.sock = sock
        self.rate = rate
        self.horizon_s = horizon_s
        """How far the channel's realisation is known (a table sent to another host ends)."""
        self.chunk_s = chunk_s
        self.t0 = 0.0
        self.clock: _Clock = clock or _System()

    def _chunk_bytes(self, t_rel: float) -> int:
        assert self.rate is not None
        r = float(self.rate.rate_at(np.array([max(t_rel, 0.0)]))[0])
        return int(min(max(r * self.chunk_s / 8.0, _MIN_CHUNK), _MAX_CHUNK))

    def send(self, frame: bytes) -> tuple[float, float, float]:
        """Send ``frame``; return when its first chunk was released, when its last was, and
        when the last was due (``clock`` values; the second less the third is how late the
        sender was, which only the scheduler decides). The first two are taken as each
        hand-over starts: the receiver cannot have a chunk before then, so the propagation a
        deployment measures from the last hand-over to the receiver's stamp is never short
        (taken when ``sendall`` returned, a sender preempted in between made a 4 ms
        propagation 1.9 ms on a busy machine). Unshaped (``rate`` None: the kernel's ``tc``
        shaper or none), the second and third are when ``sendall`` returned: there the
        hand-over itself takes the transmission time."""
        now = self.clock.now
        start = now()
        if self.rate is None:
            self.sock.sendall(frame)
            end = now()
            return start, end, end
        s_rel = start - self.t0
        if s_rel > self.horizon_s:
            raise RuntimeError(f"a transfer at {s_rel:.1f} s into the run, past the "
                               f"{self.horizon_s:g} s of channel realisation this node was sent "
                               f"(the run fell that far behind its last arrival)")
        chunk = self._chunk_bytes(s_rel)
        ends = np.arange(chunk, len(frame) + chunk, chunk)
        ends[-1] = len(frame)
        c0 = float(self.rate.capacity(np.array([max(s_rel, 0.0)]))[0])
        deadlines = self.t0 + self.rate.inverse_capacity(c0 + 8.0 * ends.astype(np.float64))
        view = memoryview(frame)
        begin, last = 0, start
        for end, deadline in zip(ends.tolist(), deadlines.tolist(), strict=True):
            self.clock.sleep_until(deadline)
            last = now()
            self.sock.sendall(view[begin:end])
            begin = end
        return start, last, float(deadlines[-1])
