"""Clocks of several hosts on one timeline.

Each node stamps its records with its own monotonic clock; the coordinator's clock is the
timeline of the results. Before the run and after it the coordinator exchanges timestamps with
every node, as NTP does: it sends at t1 (its clock), the node receives at t2 and answers at t3
(the node's clock), the answer arrives at t4. Then

    offset = ((t2 - t1) + (t3 - t4)) / 2        (node clock minus coordinator clock)
    delay  = (t4 - t1) - (t3 - t2)              (the round trip spent on the network)

and the true offset lies within +/- delay / 2 of the estimate, whatever the asymmetry of the two
directions. Of each burst of exchanges we keep the one of least delay (the least disturbed by
queueing). The offset at the two bursts gives the drift; in between, the offset is interpolated
linearly, and its error is at most the larger of the two bursts' bounds.

:class:`Clock` is a node's clock; a test may give it an offset and a drift (``jmsnas node``'s
hidden ``--clock-offset-s`` and ``--clock-drift-ppm``) to check that the estimate recovers them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from .pacing import sleep_until

__all__ = ["Clock", "ClockModel", "ClockSample", "fit_clock"]


@dataclass(frozen=True)
class Clock:
    """A monotonic clock that reads ``offset_s`` + (1 + ``drift_ppm`` / 1e6) x the system's
    monotonic clock (both zero on a real host: the system's clock as it is)."""

    offset_s: float = 0.0
    drift_ppm: float = 0.0

    def now(self) -> float:
        return self.offset_s + (1.0 + self.drift_ppm * 1e-6) * time.monotonic()

    def to_system(self, t: float) -> float:
        return (t - self.offset_s) / (1.0 + self.drift_ppm * 1e-6)

    def sleep_until(self, deadline: float) -> None:
        """Sleep until :meth:`now` reaches ``deadline``."""
        sleep_until(self.to_system(deadline))


@dataclass(frozen=True)
class ClockSample:
    """One exchange: t1, t4 on the coordinator's clock, t2, t3 on the node's."""

    t1: float
    t2: float
    t3: float
    t4: float

    @property
    def offset_s(self) -> float:
        return ((self.t2 - self.t1) + (self.t3 - self.t4)) / 2.0

    @property
    def delay_s(self) -> float:
        return (self.t4 - self.t1) - (self.t3 - self.t2)

    @property
    def midpoint_s(self) -> float:
        """When (coordinator's clock) the offset was measured."""
        return (self.t1 + self.t4) / 2.0


@dataclass(frozen=True)
class ClockModel:
    """A node's clock against the coordinator's: offset(t) = ``offset_s`` + ``drift`` x (t -
    ``at_s``), t on the coordinator's clock; ``error_bound_s`` bounds the error of the offset
    between the bursts it was fitted on."""

    offset_s: float
    at_s: float
    drift: float
    error_bound_s: float

    def offset_at(self, t: float) -> float:
        return self.offset_s + self.drift * (t - self.at_s)

    def to_coordinator(self, t_node: float) -> float:
        """A time stamped by the node, on the coordinator's clock (the inverse of node time =
        t + offset(t))."""
        return (t_node - self.offset_s + self.drift * self.at_s) / (1.0 + self.drift)

    def describe(self) -> dict[str, float]:
        return {"offset_s": self.offset_s, "drift_ppm": self.drift * 1e6,
                "error_bound_s": self.error_bound_s}


def best(samples: Sequence[ClockSample]) -> ClockSample:
    """The exchange of least network delay."""
    if not samples:
        raise ValueError("no clock exchanges")
    return min(samples, key=lambda s: s.delay_s)


def fit_clock(before: Sequence[ClockSample], after: Sequence[ClockSample] = ()) -> ClockModel:
    """The offset from the best exchange ``before`` the run, the drift from the best one
    ``after`` it (none after: no drift)."""
    a = best(before)
    bound = a.delay_s / 2.0
    drift = 0.0
    if after:
        b = best(after)
        span = b.midpoint_s - a.midpoint_s
        if span > 0:
            drift = (b.offset_s - a.offset_s) / span
        bound = max(bound, b.delay_s / 2.0)
    return ClockModel(a.offset_s, a.midpoint_s, drift, max(bound, 0.0))
