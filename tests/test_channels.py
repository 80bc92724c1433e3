"""Channel models against link-budget arithmetic, closed forms and brute-force integration."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy import integrate, special

from sim.channels import (
    CHUNK_BLOCKS,
    BlockFadingRate,
    ConstantRate,
    GilbertElliottRate,
    TraceRate,
    dbm_to_w,
    mean_snr_linear,
    rayleigh_ergodic_rate_bps,
    shannon_rate_bps,
)


def budget(**kw: float) -> float:
    args = dict(bandwidth_hz=20e6, tx_power_dbm=23.0, distance_m=100.0, pathloss_exponent=3.5,
                noise_dbm_hz=-174.0, noise_figure_db=9.0, carrier_hz=3.5e9)
    args.update(kw)
    return 10 * math.log10(mean_snr_linear(**args))  # type: ignore[arg-type]


def test_dbm_to_w_published_values() -> None:
    assert dbm_to_w(30.0) == pytest.approx(1.0)
    assert dbm_to_w(23.0) == pytest.approx(0.1995, rel=1e-3)  # a phone's 0.2 W


def test_link_budget_against_published_numbers() -> None:
    # Thermal noise in 20 MHz: -174 + 73.0 = -101.0 dBm; free-space loss at 1 m, 2.4 GHz: 40.05 dB.
    # So at d = 1 m, n = 2, 0 dBm, NF 0: SNR = 0 - 40.05 + 101.0 = 60.96 dB.
    snr_db = budget(distance_m=1.0, pathloss_exponent=2.0, tx_power_dbm=0.0, noise_figure_db=0.0,
                    carrier_hz=2.4e9)
    assert snr_db == pytest.approx(-40.05 + 174 - 10 * math.log10(20e6), abs=0.01)
    # 3GPP macro formula 128.1 + 37.6 log10(d/km): 116.78 dB at 500 m.
    snr_db = budget(distance_m=500.0, reference_distance_m=1000.0, reference_loss_db=128.1,
                    pathloss_exponent=3.76, noise_figure_db=9.0)
    assert snr_db == pytest.approx(23 - 116.78 - (-174 + 73.01 + 9), abs=0.01)
    # Ten times the distance at exponent 3.5 costs 35 dB.
    assert budget(distance_m=100.0) - budget(distance_m=1000.0) == pytest.approx(35.0)


def test_shannon_rate() -> None:
    assert shannon_rate_bps(1e6, 1.0) == pytest.approx(1e6)
    assert shannon_rate_bps(20e6, 3.0) == pytest.approx(40e6)


@pytest.mark.parametrize("snr_db", [-10.0, 0.0, 10.0, 30.0])
def test_ergodic_rayleigh_closed_form_matches_quadrature(snr_db: float) -> None:
    g = 10 ** (snr_db / 10)
    quad, _ = integrate.quad(lambda x: math.log2(1 + g * x) * math.exp(-x), 0, math.inf)
    assert rayleigh_ergodic_rate_bps(1.0, g) == pytest.approx(quad, rel=1e-7)


def test_ergodic_rayleigh_far_below_noise_uses_stable_form() -> None:
    g = 10 ** (-30 / 10)  # 1/g = 1000: exp(1/g) alone would overflow
    quad, _ = integrate.quad(lambda x: math.log2(1 + g * x) * math.exp(-x), 0, math.inf)
    assert rayleigh_ergodic_rate_bps(1.0, g) == pytest.approx(quad, rel=1e-5)


@pytest.mark.parametrize("snr_db", [0.0, 10.0])
def test_block_fading_average_is_the_ergodic_rate(snr_db: float) -> None:
    g = 10 ** (snr_db / 10)
    ch = BlockFadingRate(bandwidth_hz=1e6, snr_linear=g, coherence_s=0.01,
                         seed=np.random.SeedSequence(7))
    blocks = 200 * CHUNK_BLOCKS
    rates = np.concatenate([ch._chunk(c) for c in range(blocks // CHUNK_BLOCKS)])
    closed = 1e6 * math.exp(1 / g) * special.exp1(1 / g) / math.log(2)  # FIELD.md closed form
    sem = rates.std() / math.sqrt(rates.size)
    assert abs(rates.mean() - closed) < 4 * sem
    assert sem / closed < 0.002


def test_shadowed_ergodic_rate_matches_monte_carlo() -> None:
    g, sigma = 2.0, 8.0
    rng = np.random.default_rng(3)
    s = 10 ** (sigma * rng.standard_normal(2_000_000) / 10)
    x = rng.standard_exponential(2_000_000)
    mc = np.log2(1 + g * s * x)
    assert rayleigh_ergodic_rate_bps(1.0, g, sigma) == pytest.approx(
        mc.mean(), abs=4 * mc.std() / math.sqrt(mc.size))


def brute_force_finish(ch: BlockFadingRate | GilbertElliottRate | TraceRate, t0: float,
                       bits: float, dt: float = 1e-6) -> float:
    """Integrate the rate with the midpoint rule on a grid of ``dt`` until ``bits`` are carried.

    The error is about dt/2 per rate change crossed; tests allow 50 dt.
    """
    t_end = t0 + 1.0
    while True:
        t = t0 + dt * (np.arange(int((t_end - t0) / dt)) + 0.5)
        carried = np.cumsum(ch.rate_at(t)) * dt
        if carried[-1] >= bits:
            return float(t0 + dt * (np.searchsorted(carried, bits) + 1))
        t_end = t0 + 2 * (t_end - t0)


def test_transfer_over_many_fading_blocks_matches_integration() -> None:
    ch = BlockFadingRate(bandwidth_hz=10e6, snr_linear=3.0, coherence_s=0.01,
                         seed=np.random.SeedSequence(11))
    for t0, bits in [(0.0, 1e5), (0.1234, 2e6), (12.34567, 5e6)]:
        end = ch.finish_time(t0, bits)
        assert end - t0 > 10 * 0.01 or bits < 1e6  # the big ones really span many blocks
        assert end == pytest.approx(brute_force_finish(ch, t0, bits), abs=5e-5)


def test_block_walk_starting_exactly_on_block_boundaries_terminates() -> None:
    ch = BlockFadingRate(bandwidth_hz=1e6, snr_linear=1.0, coherence_s=0.05,
                         seed=np.random.SeedSequence(1))
    for k in range(1, 60):
        t0 = k * 0.05  # floor(t0 / 0.05) is k - 1 for some k in floating point
        end = ch.finish_time(t0, 1e3)
        assert end > t0
        assert end == pytest.approx(brute_force_finish(ch, t0, 1e3), abs=5e-5)


def test_blocks_are_drawn_on_demand_and_reproducibly() -> None:
    def make() -> BlockFadingRate:
        return BlockFadingRate(bandwidth_hz=1e6, snr_linear=1.0, coherence_s=0.001,
                               seed=np.random.SeedSequence(5))

    a, b = make(), make()
    start = time.perf_counter()
    far = a.finish_time(1e6, 1e4)  # block 10^9: must not draw the 10^9 blocks before it
    assert time.perf_counter() - start < 5.0
    assert len(a._chunk_cache) <= 2 and a._rates.size == 0
    b.finish_time(3.0, 1e4)  # a different access order does not change the realisation
    assert b.finish_time(1e6, 1e4) == far
    assert a.block_rate(1234) == b.block_rate(1234)
    c = BlockFadingRate(bandwidth_hz=1e6, snr_linear=1.0, coherence_s=0.001,
                        seed=np.random.SeedSequence(6))
    assert c.block_rate(1234) != a.block_rate(1234)


@pytest.mark.parametrize("kind", ["fading", "gilbert", "trace"])
def test_capacity_space_agrees_with_finish_time(kind: str) -> None:
    seed = np.random.SeedSequence(9)
    ch: BlockFadingRate | GilbertElliottRate | TraceRate
    if kind == "fading":
        ch = BlockFadingRate(bandwidth_hz=1e6, snr_linear=2.0, coherence_s=0.02, seed=seed)
    elif kind == "gilbert":
        ch = GilbertElliottRate(good_rate_bps=2e6, bad_rate_bps=0.0, mean_good_s=0.3,
                                mean_bad_s=0.1, seed=seed)
    else:
        ch = TraceRate([0.0, 1.0, 2.5, 3.0], [1e6, 0.0, 3e6, 5e5])
    rng = np.random.default_rng(0)
    starts = np.sort(rng.uniform(0, 50, 300))
    bits = rng.uniform(1e3, 3e6, 300)
    ends = np.array([ch.finish_time(float(t), float(b)) for t, b in zip(starts, bits, strict=True)])
    via_capacity = ch.inverse_capacity(ch.capacity(starts) + bits)
    np.testing.assert_allclose(ends, via_capacity, rtol=1e-12, atol=1e-9)
    for t0, b, end in list(zip(starts, bits, ends, strict=True))[:20]:
        assert end == pytest.approx(brute_force_finish(ch, float(t0), float(b)), abs=5e-5)


def test_gilbert_elliott_time_share_and_mean_rate() -> None:
    ch = GilbertElliottRate(good_rate_bps=10e6, bad_rate_bps=1e6, mean_good_s=2.0,
                            mean_bad_s=0.5, seed=np.random.SeedSequence(4))
    horizon = 200_000.0
    mean = float(ch.capacity(horizon)) / horizon
    expected = (2.0 * 10e6 + 0.5 * 1e6) / 2.5
    assert mean == pytest.approx(expected, rel=0.01)


def test_trace_replays_in_a_loop_and_waits_through_outages() -> None:
    ch = TraceRate([0.0, 1.0, 2.0], [1e6, 0.0, 2e6])  # period 3 s: 1 Mbit, outage, 2 Mbit
    assert ch.period_s == 3.0 and ch.period_bits == 3e6
    assert float(ch.capacity(6.0)) == pytest.approx(6e6)
    # Starting in the outage: nothing moves until t = 2, then 2 Mbit/s.
    assert ch.finish_time(1.5, 1e6) == pytest.approx(2.5)
    # Crossing the loop boundary: 0.5 Mbit by t=3, then 0.5 s of the next period's 1 Mbit/s.
    assert ch.finish_time(2.75, 1e6) == pytest.approx(3.5)
    assert ch.mean_rate_bps == pytest.approx(1e6)


def test_constant_rate() -> None:
    ch = ConstantRate(8e6)
    assert ch.finish_time(1.0, 8e6) == 2.0  # bits over bit/s: no lost factor of 8
    with pytest.raises(ValueError, match="rate_bps"):
        ConstantRate(0.0)


@pytest.mark.parametrize("bad", [([0.0], [1.0]), ([1.0, 2.0], [1.0, 1.0]),
                                 ([0.0, 0.0], [1.0, 1.0]), ([0.0, 1.0], [0.0, 0.0])])
def test_trace_rejects_bad_input(bad: tuple[list[float], list[float]]) -> None:
    with pytest.raises(ValueError):
        TraceRate(*bad)


def test_transfer_ending_where_an_outage_starts_is_not_charged_the_outage() -> None:
    # 2 Mbit/s on [0.05, 0.1), then nothing until 0.2. Round numbers of bits that end exactly at
    # 0.1 must end there, although C(start) carries a rounding excess of about 1e-11 bits.
    ch = TraceRate([0.0, 0.05, 0.1, 0.2, 0.25], [0.0, 2e6, 0.0, 5e6, 0.0])
    for start, bits in [(0.0625, 75_000.0), (0.075, 50_000.0), (0.0875, 25_000.0),
                        (0.3625, 75_000.0), (0.075 + 0.3, 50_000.0)]:  # one 0.3 s period later
        boundary = 0.1 if start < 0.3 else 0.4
        assert ch.finish_time(start, bits) == pytest.approx(boundary, abs=1e-12), start
    ge = GilbertElliottRate(good_rate_bps=3e6, bad_rate_bps=0.0, mean_good_s=0.2,
                            mean_bad_s=0.1, seed=np.random.SeedSequence(2))
    ge.capacity(5.0)
    for i in [i for i in range(1, 30) if ge._rates[i] > 0]:
        start, end = float(ge._edges[i]), float(ge._edges[i + 1])
        for f in (0.1, 0.3, 0.7):
            t0 = start + f * (end - start)
            bits = 3e6 * (end - t0)
            assert ge.finish_time(t0, bits) == pytest.approx(end, abs=1e-9)


def test_a_long_transfer_over_block_fading_ends_where_the_block_by_block_walk_does() -> None:
    """``BlockFadingRate.finish_time`` walks whole chunks of blocks once a transfer outlasts
    the chunk it starts in; the reference walks every block in turn (as the method once did).
    Equal to 1e-12 relative for 60 transfers: inside one block, across a few, from a chunk's
    first block exactly, across one chunk edge, and over up to 40 chunks."""
    ch = BlockFadingRate(bandwidth_hz=1e3, snr_linear=0.5, coherence_s=0.01,
                         seed=np.random.SeedSequence(5))
    T = ch.coherence_s

    def block_by_block(start: float, bits: float) -> float:
        k = math.floor(start / T)
        t, left = start, bits
        while True:
            r = ch.block_rate(k)
            if r * ((k + 1) * T - t) >= left:
                return t + left / r
            left -= r * ((k + 1) * T - t)
            t, k = (k + 1) * T, k + 1

    rng = np.random.default_rng(3)
    per_block = ch.block_rate(0) * T
    starts = [0.0, CHUNK_BLOCKS * T, 2 * CHUNK_BLOCKS * T, *rng.uniform(0, 50 * CHUNK_BLOCKS * T,
                                                                       57)]
    sizes = [0.3 * per_block, 5 * per_block, 3 * CHUNK_BLOCKS * per_block,
             *rng.choice([0.5, 10, 2000, 9000, 150_000], 57) * per_block]
    for start, bits in zip(starts, sizes, strict=True):
        assert ch.finish_time(start, bits) == pytest.approx(block_by_block(start, bits),
                                                            rel=1e-12, abs=1e-12), (start, bits)


def test_a_transfer_the_link_would_never_finish_is_refused_in_one_line() -> None:
    """A Rayleigh uplink 100 dB below its budget (found by the fuzz tests: the simulation ran
    for hours): simulate refuses it in one line naming the link, the transfer's time at the
    link's mean rate and its fading blocks."""
    from sim import ScenarioError, scenario_from_dict, simulate

    from .conftest import three_tier

    d = three_tier()
    d["links"][0]["channel"] = {"model": "rayleigh", "bandwidth_hz": 20e6, "tx_power_dbm": 23,
                                "distance_m": 100, "pathloss_exponent": 3.5,
                                "noise_dbm_hz": -174, "noise_figure_db": 100,
                                "coherence_s": 0.05}
    with pytest.raises(ScenarioError, match=r"^scenario three-tier-test: link phone->edge: a "
                       r"transfer of 200000 bits takes .* fading blocks: more than") as info:
        simulate(scenario_from_dict(d), tasks=80)
    assert "\n" not in str(info.value)
    d["links"][0]["channel"]["noise_figure_db"] = 9  # the usual budget: it runs
    assert simulate(scenario_from_dict(d), tasks=80).report.mean_latency_s > 0
