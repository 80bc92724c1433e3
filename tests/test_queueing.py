"""The simulator against queueing theory, at utilisation <= 0.7 with ~1% confidence half-widths.

The fast evaluator runs the big checks (it is exact against SimPy on the same sample paths, see
test_engines.py); SimPy itself runs the same checks at a size that fits the default suite, and at
full size under the ``slow`` marker.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from sim import Compute, Transfer, scenario_from_dict, simulate
from sim.channels import BlockFadingRate
from sim.network import compile_plan
from sim.simulate import replication_seeds

from .conftest import single_queue, three_tier


def mm1_sojourn(lam: float, mu: float) -> float:
    """M/M/1 mean time in system, 1 / (mu - lambda)."""
    return 1.0 / (mu - lam)


def mg1_sojourn(lam: float, mean_s: float, second_moment_s2: float) -> float:
    """M/G/1 mean time in system: E[S] + lambda E[S^2] / (2 (1 - rho)) (Pollaczek-Khinchine)."""
    rho = lam * mean_s
    return mean_s + lam * second_moment_s2 / (2.0 * (1.0 - rho))


def mmc_sojourn(lam: float, mu: float, c: int) -> float:
    """M/M/c mean time in system with the Erlang C probability of waiting."""
    a = lam / mu
    rho = a / c
    tail = a**c / math.factorial(c) / (1.0 - rho)
    p_wait = tail / (sum(a**k / math.factorial(k) for k in range(c)) + tail)
    return p_wait / (c * mu - lam) + 1.0 / mu


def assert_matches(report_mean: float, half: float, theory: float, max_rel_half: float) -> None:
    assert half / theory < max_rel_half, f"CI too wide: {half / theory:.4f}"
    assert abs(report_mean - theory) < 3.0 * half, (report_mean, theory, half)


CASES = [
    # (name, distribution, cv, rho, theory(rho))
    ("M/M/1", "exponential", 1.0, 0.7, lambda r: mm1_sojourn(r, 1.0)),
    ("M/M/1 low", "exponential", 1.0, 0.5, lambda r: mm1_sojourn(r, 1.0)),
    ("M/D/1", "constant", 0.0, 0.7, lambda r: mg1_sojourn(r, 1.0, 1.0)),
    ("M/G/1 lognormal", "lognormal", 0.5, 0.7, lambda r: mg1_sojourn(r, 1.0, 1.25)),
]


@pytest.mark.parametrize(("name", "dist", "cv", "rho", "theory"), CASES, ids=[c[0] for c in CASES])
def test_single_queue_against_closed_form(name: str, dist: str, cv: float, rho: float,
                                          theory: object) -> None:
    s = single_queue(rate_hz=rho, distribution=dist, cv=cv if cv > 0 else 0.5, tasks=200_000,
                     warmup=1000)
    r = simulate(s, seed=11, replications=10, engine="fast").report
    assert_matches(r.mean_latency_s, r.ci95_half_width_s, theory(rho), 0.012)  # type: ignore[operator]
    # Utilisation is rho, up to sampling error.
    assert r.resources[0].utilisation == pytest.approx(rho, rel=0.01)


def test_multi_server_against_erlang_c() -> None:
    lam, c = 2.1, 3  # rho = 0.7 at mu = 1
    s = single_queue(rate_hz=lam, servers=c, tasks=300_000, warmup=1000)
    r = simulate(s, seed=5, replications=10, engine="fast").report
    assert_matches(r.mean_latency_s, r.ci95_half_width_s, mmc_sojourn(lam, 1.0, c), 0.012)


def test_simpy_multi_server_against_erlang_c() -> None:
    lam, c = 1.4, 2
    s = single_queue(rate_hz=lam, servers=c, tasks=40_000, warmup=500)
    r = simulate(s, seed=6, replications=4, engine="simpy").report
    assert_matches(r.mean_latency_s, r.ci95_half_width_s, mmc_sojourn(lam, 1.0, c), 0.05)


def tandem_scenario(lam: float, mus: list[float], tasks: int) -> object:
    names = [f"n{i}" for i in range(len(mus))]
    return scenario_from_dict({
        "name": "tandem",
        "input_shape": [1],
        "nodes": {n: {"kind": "edge", "flops_per_s": mu} for n, mu in zip(names, mus, strict=True)},
        "links": [{"src": a, "dst": b, "channel": {"model": "constant", "rate_bps": 1e12}}
                  for a, b in itertools.pairwise(names)],
        "path": names,
        "workload": {"sources": [names[0]], "tasks": tasks, "warmup_tasks": 1000,
                     "arrivals": {"process": "poisson", "rate_hz": lam}},
        "pipeline": [{"compute": n, "flops": 1.0, "distribution": "exponential"} for n in names],
    })


def test_tandem_of_independent_exponential_stages() -> None:
    # Independent exponential service at each stage: Jackson's theorem applies.
    lam, mus = 0.5, [1.0, 0.8, 1.25]
    s = tandem_scenario(lam, mus, 200_000)
    r = simulate(s, seed=2, replications=10, engine="fast").report  # type: ignore[arg-type]
    theory = sum(mm1_sojourn(lam, mu) for mu in mus)
    assert_matches(r.mean_latency_s, r.ci95_half_width_s, theory, 0.012)
    for stage, mu in zip(r.stages, mus, strict=True):
        assert stage.waiting_s + stage.service_s == pytest.approx(mm1_sojourn(lam, mu), rel=0.03)


def test_simpy_against_closed_forms_at_test_size() -> None:
    s = single_queue(rate_hz=0.5, tasks=40_000, warmup=500)
    r = simulate(s, seed=3, replications=4, engine="simpy").report
    assert_matches(r.mean_latency_s, r.ci95_half_width_s, mm1_sojourn(0.5, 1.0), 0.05)
    s = single_queue(rate_hz=0.5, distribution="constant", tasks=40_000, warmup=500)
    r = simulate(s, seed=3, replications=4, engine="simpy").report
    assert_matches(r.mean_latency_s, r.ci95_half_width_s, mg1_sojourn(0.5, 1.0, 1.0), 0.05)


@pytest.mark.slow
def test_simpy_against_closed_form_full_size() -> None:
    """The SimPy engine against the M/M/1 sojourn time at rho 0.7 to 1.5% (2 million tasks),
    and the fast engine on the same sample path to 1e-9: the fast engine meets every closed
    form of :data:`CASES` at full size (:func:`test_single_queue_against_closed_form`), and
    the two engines give the same path at this size too, so SimPy's M/M/1 at rho 0.5 and
    M/D/1 at rho 0.7 at full size (19 s each) would check nothing more (SimPy's M/M/1 and
    M/D/1 at rho 0.5 run at test size above)."""
    s = single_queue(rate_hz=0.7, distribution="exponential", tasks=250_000, warmup=1000)
    r = simulate(s, seed=13, replications=8, engine="simpy").report
    assert_matches(r.mean_latency_s, r.ci95_half_width_s, mm1_sojourn(0.7, 1.0), 0.015)
    f = simulate(s, seed=13, replications=8, engine="fast").report
    assert f.mean_latency_s == pytest.approx(r.mean_latency_s, rel=1e-9)
    assert f.ci95_half_width_s == pytest.approx(r.ci95_half_width_s, rel=1e-6)


@pytest.mark.parametrize("engine", ["simpy", "fast"])
def test_single_task_without_queueing_is_the_hand_sum(engine: str) -> None:
    d = three_tier()
    d["workload"]["tasks"], d["workload"]["warmup_tasks"] = 1, 0
    s = scenario_from_dict(d)
    r = simulate(s, seed=0, engine=engine).report  # type: ignore[arg-type]
    hand = (2e7 / 1e9 + 2e5 / 10e6 + 0.001 + 1e9 / 1e11 + 1e5 / 100e6 + 0.01 + 1e9 / 1e12)
    assert r.mean_latency_s == pytest.approx(hand, rel=1e-12)
    # Energy: 2 W x 20 ms on the phone, 0.2 W x 20 ms sending, 100 W x 10 ms on the edge.
    assert r.energy_j_per_task == pytest.approx(2 * 0.02 + 0.2 * 0.02 + 100 * 0.01, rel=1e-12)
    assert r.device_energy_j_per_task == pytest.approx(2 * 0.02 + 0.2 * 0.02, rel=1e-12)


def test_single_task_over_a_fading_link_is_the_block_sum() -> None:
    d = three_tier()
    d["links"][0]["channel"] = {"model": "rayleigh", "bandwidth_hz": 1e6, "tx_power_dbm": 23,
                                "distance_m": 100, "coherence_s": 0.005}
    d["workload"]["tasks"], d["workload"]["warmup_tasks"] = 1, 0
    s = scenario_from_dict(d)
    pipeline = [Compute("phone", 1e7), Transfer("phone", "edge", 2e5)]
    result = simulate(s, pipeline, seed=4, engine="simpy")
    arrival = float(result.records[0].arrival_s[0])
    # Rebuild the same link realisation and add up whole blocks by hand.
    plan = compile_plan(s, pipeline, replication_seeds(4, 0)[1])
    ch = plan.resources[1].channel
    assert isinstance(ch, BlockFadingRate)
    t, left, k = arrival + 0.01, 2e5, int((arrival + 0.01) // 0.005)
    while left > ch.block_rate(k) * ((k + 1) * 0.005 - t):
        left -= ch.block_rate(k) * ((k + 1) * 0.005 - t)
        k, t = k + 1, (k + 1) * 0.005
    hand = t + left / ch.block_rate(k) + 0.001 - arrival
    assert result.report.mean_latency_s == pytest.approx(hand, rel=1e-9)
    assert hand > 0.01 + 0.02  # it spans several 5 ms blocks


def test_confidence_half_width_is_the_student_t_interval() -> None:
    """The quantile comes from scipy.special (simulate does not load scipy.stats): the half-width
    equals scipy.stats' t interval bit for bit, and a closed form for two values (t(0.975, 1) =
    tan(0.475 pi))."""
    import numpy as np
    from scipy import stats

    from sim.report import confidence_half_width

    rng = np.random.default_rng(3)
    for n in (2, 3, 5, 20, 101):
        x = rng.normal(size=n)
        lo, hi = stats.t.interval(0.95, n - 1, loc=x.mean(), scale=x.std(ddof=1) / math.sqrt(n))
        assert confidence_half_width(x) == pytest.approx((hi - lo) / 2, rel=1e-14)
        assert confidence_half_width(x) == float(
            stats.t.ppf(0.975, n - 1) * x.std(ddof=1) / math.sqrt(n))
    assert confidence_half_width([0.0, 2.0]) == pytest.approx(math.tan(0.475 * math.pi),
                                                              rel=1e-12)  # sd sqrt(2), n 2
    assert math.isnan(confidence_half_width([1.0]))


def test_nodes_sharing_a_host_against_closed_forms() -> None:
    """Processor sharing (:class:`sim.engine.CpuShare`) against three closed forms:

    - one node with 60 servers (nobody waits for one) on one core: the M/M/1
      processor-sharing queue, whose mean sojourn time is 1 / (mu - lambda), as FCFS's
      (Kleinrock 1967), at rho 0.7, the 95% interval within 5% (200,000 tasks);
    - one node with one server on one core beside one always-busy outside process: the
      request runs at half speed, an M/M/1 queue of rate mu / 2: 1 / (mu / 2 - lambda) at
      rho 0.7, within 6% (80,000 tasks);
    - one node with one server on a core of its own: exactly the simulation without sharing
      (the same sample path, to 1e-12).

    Catches a rate that ignores the number of running requests (the first would be the
    infinite-server 1 / mu, a third of the truth) or the outside load (the second would be
    that of rho 0.35 at full speed, a quarter of the truth)."""
    from sim.engine import CpuShare

    lam = 0.7
    s = single_queue(rate_hz=lam, servers=60, tasks=50_000, warmup=1000)
    r = simulate(s, seed=21, replications=4,
                 cpu_share=CpuShare(frozenset({"server"}), 1.0)).report
    assert_matches(r.mean_latency_s, r.ci95_half_width_s, mm1_sojourn(lam, 1.0), 0.05)
    s = single_queue(rate_hz=lam / 2, tasks=20_000, warmup=1000)
    r = simulate(s, seed=22, replications=4,
                 cpu_share=CpuShare(frozenset({"server"}), 1.0, background=1.0)).report
    assert_matches(r.mean_latency_s, r.ci95_half_width_s, mm1_sojourn(lam / 2, 0.5), 0.06)
    s = single_queue(rate_hz=lam, tasks=20_000, warmup=100)
    shared = simulate(s, seed=23, cpu_share=CpuShare(frozenset({"server"}), 1.0)).records[0]
    alone = simulate(s, seed=23, engine="simpy").records[0]
    np.testing.assert_allclose(shared.completion_s, alone.completion_s, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="engine fast cannot share"):
        simulate(s, engine="fast", cpu_share=CpuShare(frozenset({"server"}), 1.0))
    with pytest.raises(ValueError, match="cores must be > 0"):
        CpuShare(frozenset({"server"}), 0.0)
