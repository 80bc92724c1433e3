"""Link rates over time.

A channel model turns a link description into a *rate process*: one realisation of the rate
r(t) >= 0 (bit/s) of a link, piecewise constant in time. Every rate process answers the same
three questions, all exactly (no per-sample events):

- ``finish_time(t0, bits)``: the time at which a transfer that starts at ``t0`` has carried
  ``bits``, i.e. the smallest t1 with integral_{t0}^{t1} r(t) dt = bits;
- ``capacity(t)``: the bits the link could have carried on [0, t] (cumulative capacity C(t));
- ``inverse_capacity(c)``: the smallest t with C(t) >= c.

The SimPy engine uses ``finish_time``; the fast evaluator works in cumulative-capacity space with
``capacity`` and ``inverse_capacity``. Both see the same realisation.

Block-fading realisations draw their blocks on demand, in chunks of ``CHUNK_BLOCKS`` blocks, each
chunk from its own counter range of a Philox generator keyed by the link's seed. Any block can thus
be drawn without drawing the blocks before it, and the realisation does not depend on the order in
which blocks are asked for. Blocks are indexed by integers, so walking them cannot stall on
floating-point boundaries.
"""

from __future__ import annotations

import csv
import math
import os
from abc import ABC, abstractmethod
from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .seeds import children

__all__ = [
    "CHUNK_BLOCKS",
    "BlockFadingRate",
    "ConstantRate",
    "GilbertElliottRate",
    "RateProcess",
    "TraceRate",
    "dbm_to_w",
    "mean_snr_linear",
    "rayleigh_ergodic_rate_bps",
    "shannon_rate_bps",
]

CHUNK_BLOCKS = 4096
"""Fading blocks drawn at once; the unit of on-demand drawing."""

_SPEED_OF_LIGHT_M_S = 299_792_458.0

FloatArray = NDArray[np.float64]


def dbm_to_w(power_dbm: float) -> float:
    """Power in watts from dBm: P_W = 10^((P_dBm - 30) / 10)."""
    return float(10.0 ** ((power_dbm - 30.0) / 10.0))


MAX_SNR_DB = 200.0
"""Link budgets whose mean SNR lies further from 0 dB are refused: no radio link is within
orders of magnitude of it, and beyond it the rates overflow or vanish in floating point."""


def mean_snr_linear(
    *,
    bandwidth_hz: float,
    tx_power_dbm: float,
    distance_m: float,
    pathloss_exponent: float,
    noise_dbm_hz: float,
    noise_figure_db: float,
    carrier_hz: float,
    reference_distance_m: float = 1.0,
    reference_loss_db: float | None = None,
    antenna_gain_db: float = 0.0,
) -> float:
    """Mean received SNR (linear) from a log-distance link budget.

    Path loss (log-distance model, e.g. Rappaport, *Wireless Communications*, eq. 4.68):
    PL(d) = PL(d0) + 10 n log10(d / d0) dB, with PL(d0) the free-space (Friis) loss
    20 log10(4 pi d0 f / c) unless ``reference_loss_db`` is given (128.1 dB at d0 = 1 km with
    n = 3.76 gives the 3GPP macro-cell formula 128.1 + 37.6 log10(d/km)).
    Noise: N = noise_dbm_hz + 10 log10(B) + NF dBm. SNR = P_tx + G - PL - N (dB).
    """
    try:
        if reference_loss_db is None:
            reference_loss_db = 20.0 * math.log10(
                4.0 * math.pi * reference_distance_m * carrier_hz / _SPEED_OF_LIGHT_M_S
            )
        pathloss_db = reference_loss_db + 10.0 * pathloss_exponent * math.log10(
            distance_m / reference_distance_m
        )
        noise_dbm = noise_dbm_hz + 10.0 * math.log10(bandwidth_hz) + noise_figure_db
    except (ValueError, OverflowError, ZeroDivisionError):  # ratios beyond floating point
        raise ValueError("the link budget cannot be computed: distance_m, reference_distance_m, "
                         "carrier_hz or bandwidth_hz out of any realistic range") from None
    snr_db = tx_power_dbm + antenna_gain_db - pathloss_db - noise_dbm
    if not -MAX_SNR_DB <= snr_db <= MAX_SNR_DB:  # NaN included
        raise ValueError(f"the link budget gives a mean SNR of {snr_db:.4g} dB, outside "
                         f"-{MAX_SNR_DB:g}..{MAX_SNR_DB:g} dB: check tx_power_dbm, distance_m "
                         f"and the losses")
    return float(10.0 ** (snr_db / 10.0))


def shannon_rate_bps(bandwidth_hz: float, snr_linear: float) -> float:
    """Shannon capacity B log2(1 + SNR) in bit/s."""
    return float(bandwidth_hz * math.log2(1.0 + snr_linear))


def _scaled_exp1(x: float) -> float:
    """exp(x) E1(x), stable for large x (asymptotic series where exp(x) would overflow)."""
    if x < 600.0:
        from scipy import special  # here: only fading links need it (0.2 s at start-up)

        return float(math.exp(x) * special.exp1(x))
    return (1.0 - 1.0 / x + 2.0 / x**2 - 6.0 / x**3) / x


def rayleigh_ergodic_rate_bps(
    bandwidth_hz: float, snr_linear: float, shadowing_db: float = 0.0
) -> float:
    """Ergodic rate B E[log2(1 + g X)], X ~ Exp(1) (Rayleigh power gain), g the mean SNR.

    Closed form (e.g. Alouini & Goldsmith 1999): E[log2(1 + g X)] = exp(1/g) E1(1/g) / ln 2.
    With log-normal shadowing of ``shadowing_db`` (standard deviation in dB) the closed form is
    averaged over the shadowing with 40-point Gauss-Hermite quadrature.
    """
    if shadowing_db <= 0.0:
        return bandwidth_hz * _scaled_exp1(1.0 / snr_linear) / math.log(2.0)
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)
    total = 0.0
    for z, w in zip(nodes, weights, strict=True):
        g = snr_linear * 10.0 ** (shadowing_db * z / 10.0)
        total += w * _scaled_exp1(1.0 / g)
    return float(bandwidth_hz * total / math.sqrt(2.0 * math.pi) / math.log(2.0))


def _snap(bits: FloatArray) -> FloatArray:
    """Tolerance (bits) within which a capacity counts as equal to a segment boundary."""
    return 16.0 * np.finfo(np.float64).eps * np.maximum(np.abs(bits), 1.0)


class RateProcess(ABC):
    """One realisation of a link's rate r(t) (bit/s), piecewise constant on [0, inf)."""

    def finish_time(self, start_s: float, size_bits: float) -> float:
        """End of a transfer of ``size_bits`` that starts sending at ``start_s``:
        C^-1(C(start) + bits). Subclasses may walk their segments instead."""
        target = float(self.capacity(start_s)) + size_bits
        return max(start_s, float(self.inverse_capacity(target)))

    @abstractmethod
    def capacity(self, t_s: ArrayLike) -> FloatArray:
        """Cumulative capacity C(t) = integral_0^t r(u) du in bits, elementwise."""

    @abstractmethod
    def inverse_capacity(self, bits: ArrayLike) -> FloatArray:
        """Smallest t with C(t) >= bits, elementwise."""

    @abstractmethod
    def rate_at(self, t_s: ArrayLike) -> FloatArray:
        """The rate r(t) in bit/s, elementwise."""

    @abstractmethod
    def table(self, until_s: float) -> tuple[FloatArray, FloatArray, float]:
        """(times, rates, period) of a :class:`TraceRate` equal to this realisation on [0,
        ``until_s``] (a realisation sent to another host)."""


class ConstantRate(RateProcess):
    """A fixed rate (the `constant` and `shannon` channel models)."""

    def __init__(self, rate_bps: float) -> None:
        if not rate_bps > 0.0:
            raise ValueError(f"rate_bps must be > 0, got {rate_bps}")
        self.rate_bps = float(rate_bps)

    def finish_time(self, start_s: float, size_bits: float) -> float:
        return start_s + size_bits / self.rate_bps

    def capacity(self, t_s: ArrayLike) -> FloatArray:
        return np.asarray(t_s, dtype=np.float64) * self.rate_bps

    def inverse_capacity(self, bits: ArrayLike) -> FloatArray:
        return np.asarray(bits, dtype=np.float64) / self.rate_bps

    def rate_at(self, t_s: ArrayLike) -> FloatArray:
        return np.full(np.shape(t_s), self.rate_bps)

    def table(self, until_s: float) -> tuple[FloatArray, FloatArray, float]:
        return np.zeros(1), np.array([self.rate_bps]), 1.0


class _Segmented(RateProcess):
    """Rate given on segments [edges[i], edges[i+1]) with rate rates[i], grown on demand.

    ``cum[i]`` is C(edges[i]). Subclasses implement ``_grow`` to append segments; arrays grow
    geometrically so that growing costs amortised O(1) per segment.
    """

    def __init__(self) -> None:
        self._edges: FloatArray = np.zeros(1)
        self._rates: FloatArray = np.zeros(0)
        self._cum: FloatArray = np.zeros(1)

    @abstractmethod
    def _grow(self) -> tuple[FloatArray, FloatArray]:
        """Return (durations, rates) of the next segments after the current end."""

    def _new_edges(self, durations: FloatArray) -> FloatArray:
        """Right edges of new segments of the given durations, after the current end."""
        return self._edges[-1] + np.cumsum(durations)

    def _extend(self, t_max: float = -np.inf, bits_max: float = -np.inf) -> None:
        """Grow until the segments cover time ``t_max`` and capacity ``bits_max``.

        New segments are collected first and concatenated once, so a long extension costs
        linear time.
        """
        while self._edges[-1] <= t_max or self._cum[-1] < bits_max:
            durations: list[FloatArray] = []
            rates: list[FloatArray] = []
            end_t, end_c = float(self._edges[-1]), float(self._cum[-1])
            while end_t <= t_max or end_c < bits_max:
                d, r = self._grow()
                durations.append(d)
                rates.append(r)
                end_t += float(d.sum())
                end_c += float(np.dot(d, r))
            d_all, r_all = np.concatenate(durations), np.concatenate(rates)
            self._edges = np.concatenate([self._edges, self._new_edges(d_all)])
            self._cum = np.concatenate([self._cum, self._cum[-1] + np.cumsum(d_all * r_all)])
            self._rates = np.concatenate([self._rates, r_all])

    def capacity(self, t_s: ArrayLike) -> FloatArray:
        t = np.asarray(t_s, dtype=np.float64)
        if t.size == 0:
            return np.zeros(t.shape)
        self._extend(t_max=float(t.max()))
        i = np.searchsorted(self._edges, t, side="right") - 1
        i = np.clip(i, 0, self._rates.size - 1)
        return self._cum[i] + self._rates[i] * (t - self._edges[i])

    def inverse_capacity(self, bits: ArrayLike) -> FloatArray:
        c = np.asarray(bits, dtype=np.float64)
        if c.size == 0:
            return np.zeros(c.shape)
        self._extend(bits_max=float(c.max()))
        # Largest i with cum[i] < c: the segment in which capacity reaches c (its rate is > 0).
        # Capacities within rounding of a segment end count as reaching it, so that a transfer
        # ending where an outage begins is not charged the whole outage.
        i = np.searchsorted(self._cum, c - _snap(c), side="left") - 1
        positive = i >= 0
        i = np.clip(i, 0, self._rates.size - 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = self._edges[i] + (c - self._cum[i]) / self._rates[i]
        return np.where(positive, t, 0.0)

    def rate_at(self, t_s: ArrayLike) -> FloatArray:
        t = np.asarray(t_s, dtype=np.float64)
        if t.size:
            self._extend(t_max=float(t.max()))
        i = np.searchsorted(self._edges, t, side="right") - 1
        return self._rates[np.clip(i, 0, self._rates.size - 1)]

    def table(self, until_s: float) -> tuple[FloatArray, FloatArray, float]:
        # the segments up to until_s and one more (the period does not end on a segment
        # that until_s is in)
        self._extend(t_max=until_s)
        k = int(np.searchsorted(self._edges, until_s, side="right")) + 1
        while self._edges.size <= k:
            self._extend(t_max=float(self._edges[-1]))
        return self._edges[:k].copy(), self._rates[:k].copy(), float(self._edges[k])


class BlockFadingRate(_Segmented):
    """Shannon rate under block fading: r_k = B log2(1 + snr * s * g_k) on block k.

    g_k ~ Exp(1) (Rayleigh power gain) is redrawn every ``coherence_s``; s = 10^(sigma Z / 10),
    Z ~ N(0, 1), is a log-normal shadowing factor drawn once per realisation (shadowing varies on
    the scale of metres, far slower than fading; our choice).
    """

    def __init__(
        self,
        *,
        bandwidth_hz: float,
        snr_linear: float,
        coherence_s: float,
        seed: np.random.SeedSequence,
        shadowing_db: float = 0.0,
    ) -> None:
        super().__init__()
        if not coherence_s > 0.0:
            raise ValueError(f"coherence_s must be > 0, got {coherence_s}")
        shadow_seq, block_seq = children(seed, 2)
        shadow = 10.0 ** (shadowing_db * np.random.default_rng(shadow_seq).standard_normal() / 10)
        self.bandwidth_hz = float(bandwidth_hz)
        self.snr_linear = float(snr_linear) * float(shadow)
        self.coherence_s = float(coherence_s)
        self._key = block_seq.generate_state(2, np.uint64)
        self._chunk_cache: dict[int, FloatArray] = {}
        self._grown_chunks = 0

    def _chunk(self, chunk: int) -> FloatArray:
        """Rates of blocks [chunk * CHUNK_BLOCKS, (chunk + 1) * CHUNK_BLOCKS)."""
        rates = self._chunk_cache.get(chunk)
        if rates is None:
            counter = np.array([0, chunk, 0, 0], dtype=np.uint64)
            gen = np.random.Generator(np.random.Philox(key=self._key, counter=counter))
            gains = gen.standard_exponential(CHUNK_BLOCKS)
            rates = self.bandwidth_hz * np.log2(1.0 + self.snr_linear * gains)
            if len(self._chunk_cache) >= 64:  # transfers move forward in time: keep recent ones
                self._chunk_cache.pop(next(iter(self._chunk_cache)))
            self._chunk_cache[chunk] = rates
        return rates

    def block_rate(self, block: int) -> float:
        """Rate (bit/s) of block ``block`` (covering [block * T, (block + 1) * T))."""
        return float(self._chunk(block // CHUNK_BLOCKS)[block % CHUNK_BLOCKS])

    def _grow(self) -> tuple[FloatArray, FloatArray]:
        chunk = self._grown_chunks
        self._grown_chunks += 1
        return np.full(CHUNK_BLOCKS, self.coherence_s), self._chunk(chunk).copy()

    def _new_edges(self, durations: FloatArray) -> FloatArray:
        # Block edges are k * T exactly (integer block index), not a running float sum.
        first = self._rates.size + 1
        return np.arange(first, first + durations.size, dtype=np.float64) * self.coherence_s

    def finish_time(self, start_s: float, size_bits: float) -> float:
        """Walk the blocks from ``start_s`` (drawing only the blocks the transfer spans): one
        by one to the end of the chunk the transfer starts in, then a whole chunk at a time (a
        slow link's transfer can span millions of blocks)."""
        T = self.coherence_s
        k = int(start_s // T)
        if (k + 1) * T <= start_s:
            k += 1
        elif k * T > start_s:
            k -= 1
        t = start_s
        remaining = size_bits
        while k % CHUNK_BLOCKS or t != k * T:  # to the end of the current chunk, block by block
            r = self.block_rate(k)
            end = (k + 1) * T
            carried = r * (end - t)
            if carried >= remaining:
                return t + remaining / r
            remaining -= carried
            t = end
            k += 1
        while True:  # whole chunks: k is a chunk's first block and t its start
            rates = self._chunk(k // CHUNK_BLOCKS)
            cumulative = np.cumsum(rates * T)
            if cumulative[-1] < remaining:
                remaining -= float(cumulative[-1])
                k += CHUNK_BLOCKS
                continue
            j = int(np.searchsorted(cumulative, remaining))  # the block the transfer ends in
            before = float(cumulative[j - 1]) if j else 0.0
            return (k + j) * T + (remaining - before) / float(rates[j])


class GilbertElliottRate(_Segmented):
    """Two-state continuous-time Markov chain of rates (Gilbert 1960, Elliott 1963).

    The link alternates between a good state (``good_rate_bps``) and a bad state
    (``bad_rate_bps``, may be 0: an outage) with exponential sojourns of means ``mean_good_s`` and
    ``mean_bad_s``; the initial state is drawn from the stationary distribution
    P(good) = mean_good_s / (mean_good_s + mean_bad_s).
    """

    _BATCH = 1024

    def __init__(
        self,
        *,
        good_rate_bps: float,
        bad_rate_bps: float,
        mean_good_s: float,
        mean_bad_s: float,
        seed: np.random.SeedSequence,
    ) -> None:
        super().__init__()
        self._rng = np.random.default_rng(seed)
        self._state_rates = (float(good_rate_bps), float(bad_rate_bps))
        self._means = (float(mean_good_s), float(mean_bad_s))
        p_good = mean_good_s / (mean_good_s + mean_bad_s)
        self._next_state = 0 if self._rng.random() < p_good else 1

    def _grow(self) -> tuple[FloatArray, FloatArray]:
        states = (self._next_state + np.arange(self._BATCH)) % 2
        means = np.where(states == 0, self._means[0], self._means[1])
        durations = self._rng.exponential(1.0, self._BATCH) * means
        rates = np.where(states == 0, self._state_rates[0], self._state_rates[1])
        self._next_state = int((self._next_state + self._BATCH) % 2)
        return durations, rates.astype(np.float64)


class TraceRate(RateProcess):
    """Replay of a measured rate trace, looped.

    ``times_s[i]`` (starting at 0, strictly increasing) is when rate ``rates_bps[i]`` begins; it
    holds until the next time. The last rate holds for as long as the interval before it, which
    closes one period; the trace then repeats. ``period_s``, when given, ends the period
    instead (it must exceed the last time; one row then suffices).
    """

    def __init__(self, times_s: ArrayLike, rates_bps: ArrayLike,
                 period_s: float | None = None) -> None:
        t = np.asarray(times_s, dtype=np.float64)
        r = np.asarray(rates_bps, dtype=np.float64)
        if t.ndim != 1 or t.size < (1 if period_s is not None else 2) or t.size != r.size:
            raise ValueError("a trace needs at least two (time_s, rate_bps) rows")
        if t[0] != 0.0 or np.any(np.diff(t) <= 0.0) or not np.all(np.isfinite(t)):
            raise ValueError("trace times must start at 0 and strictly increase")
        if np.any(r < 0.0) or not np.any(r > 0.0) or not np.all(np.isfinite(r)):
            raise ValueError("trace rates must be finite, >= 0 and not all 0")
        if period_s is not None and not (np.isfinite(period_s) and period_s > t[-1]):
            raise ValueError(f"a trace's period ({period_s}) must exceed its last time")
        end = t[-1] + (t[-1] - t[-2]) if period_s is None else float(period_s)
        self._edges = np.append(t, end)
        self._rates = r
        self._cum = np.concatenate([[0.0], np.cumsum(np.diff(self._edges) * r)])
        self.period_s = float(self._edges[-1])
        self.period_bits = float(self._cum[-1])

    @property
    def mean_rate_bps(self) -> float:
        return self.period_bits / self.period_s

    def capacity(self, t_s: ArrayLike) -> FloatArray:
        t = np.asarray(t_s, dtype=np.float64)
        n, local = np.divmod(t, self.period_s)
        i = np.searchsorted(self._edges, local, side="right") - 1
        i = np.clip(i, 0, self._rates.size - 1)
        return n * self.period_bits + self._cum[i] + self._rates[i] * (local - self._edges[i])

    def inverse_capacity(self, bits: ArrayLike) -> FloatArray:
        c = np.asarray(bits, dtype=np.float64)
        n, local = np.divmod(c, self.period_bits)
        # local == 0 means the end of the previous period's last positive segment.
        at_boundary = (local == 0.0) & (c > 0.0)
        n = np.where(at_boundary, n - 1, n)
        local = np.where(at_boundary, self.period_bits, local)
        i = np.searchsorted(self._cum, local - _snap(local), side="left") - 1
        positive = i >= 0
        i = np.clip(i, 0, self._rates.size - 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            t_local = self._edges[i] + (local - self._cum[i]) / self._rates[i]
        return np.where(positive, n * self.period_s + t_local, n * self.period_s)

    def rate_at(self, t_s: ArrayLike) -> FloatArray:
        local = np.mod(np.asarray(t_s, dtype=np.float64), self.period_s)
        i = np.searchsorted(self._edges, local, side="right") - 1
        return self._rates[np.clip(i, 0, self._rates.size - 1)]

    def table(self, until_s: float) -> tuple[FloatArray, FloatArray, float]:
        return self._edges[:-1].copy(), self._rates.copy(), self.period_s


@lru_cache(maxsize=64)
def _read_trace_cached(path: str, mtime_ns: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        names = reader.fieldnames or []
        if "time_s" not in names or "rate_bps" not in names:
            raise ValueError(f"columns must be time_s,rate_bps (found: {', '.join(names)})")
        times, rates = [], []
        for line, row in enumerate(reader, start=2):
            try:
                t, r = float(row["time_s"]), float(row["rate_bps"])
            except (TypeError, ValueError):
                raise ValueError(f"line {line}: time_s and rate_bps must be numbers") from None
            if not (math.isfinite(t) and math.isfinite(r)):
                raise ValueError(f"line {line}: time_s and rate_bps must be finite")
            times.append(t)
            rates.append(r)
    return tuple(times), tuple(rates)


def read_trace(path: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Read a rate trace CSV with header ``time_s,rate_bps``; cached per file version."""
    return _read_trace_cached(path, os.stat(path).st_mtime_ns)
