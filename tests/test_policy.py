"""Split policies in the simulator: a pipeline per task from the observed channel state."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from sim import Compute, Transfer, load_scenario, scenario_from_dict, simulate
from sim.channels import BlockFadingRate, GilbertElliottRate
from sim.policy import OraclePolicy, SplitPolicy, merge_pipelines, rate_thresholds

from .conftest import EXAMPLES, three_tier
from .test_engines import assert_same_path

ON_PHONE = (Compute("phone", 5e7),)
AT_EDGE = (Compute("phone", 2e7), Transfer("phone", "edge", 2e5), Compute("edge", 1e9))
TO_CLOUD = (Transfer("phone", "edge", 1.2e6), Transfer("edge", "cloud", 1.2e6),
            Compute("cloud", 2e9))
GE = {"model": "gilbert_elliott", "good_rate_bps": 20e6, "bad_rate_bps": 1e6,
      "mean_good_s": 0.4, "mean_bad_s": 0.2}


def policy(*pipelines: tuple[Any, ...], thresholds: tuple[float, ...] = (5e6, 15e6),
           delay: float = 0.0) -> SplitPolicy:
    return SplitPolicy(tuple(pipelines), thresholds, ("phone", "edge"), delay)


def ge_scenario(**workload: Any) -> Any:
    d = three_tier()
    d["links"][0]["channel"] = dict(GE)
    d["workload"].update({"arrivals": {"process": "poisson", "rate_hz": 12.0}, **workload})
    return scenario_from_dict(d)


def test_merged_pipeline_holds_every_pipeline_in_order() -> None:
    merged, where = merge_pipelines([ON_PHONE, AT_EDGE, TO_CLOUD])
    assert [s.label for s in merged] == ["compute@phone", "transfer phone->edge", "compute@edge",
                                         "transfer edge->cloud", "compute@cloud"]
    assert where == [[0], [0, 1, 2], [1, 3, 4]]
    with pytest.raises(ValueError, match="orders that no single sequence holds"):
        merge_pipelines([AT_EDGE, (Compute("edge", 1.0), Compute("phone", 1.0))])
    with pytest.raises(ValueError, match="visits a stage twice"):
        merge_pipelines([(Compute("phone", 1.0), Compute("phone", 2.0))])
    with pytest.raises(ValueError, match="different work distributions"):
        merge_pipelines([ON_PHONE, (Compute("phone", 1.0, "exponential"),)])


def test_bad_policies_are_refused_with_the_field() -> None:
    with pytest.raises(ValueError, match="3 pipelines need 2 thresholds, got 1"):
        policy(ON_PHONE, AT_EDGE, TO_CLOUD, thresholds=(5e6,))
    with pytest.raises(ValueError, match="thresholds_bps must be finite, > 0 and increasing"):
        policy(ON_PHONE, AT_EDGE, TO_CLOUD, thresholds=(5e6, 5e6))
    with pytest.raises(ValueError, match="observe_delay_s must be >= 0"):
        policy(ON_PHONE, AT_EDGE, thresholds=(5e6,), delay=-1.0)
    with pytest.raises(ValueError, match="pipelines\\[1\\]: needs at least one stage"):
        policy(ON_PHONE, (), thresholds=(5e6,))


@pytest.mark.parametrize("delay", [0.0, 0.05])
def test_each_task_runs_the_pipeline_of_the_rate_it_observed(delay: float) -> None:
    """By hand: a trace whose rate steps 2 -> 10 -> 30 Mbit/s, periodic arrivals, the state
    read ``delay`` before each arrival; the stages a task ran give its pipeline away."""
    d = three_tier()
    d["links"][0]["channel"] = {"model": "trace", "file": "steps.csv"}
    d["workload"].update({"arrivals": {"process": "periodic", "rate_hz": 10.0, "phase_s": 0.02},
                          "tasks": 60, "warmup_tasks": 0})
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp())
    (folder / "steps.csv").write_text("time_s,rate_bps\n0,2e6\n2,10e6\n4,30e6\n6,30e6\n")
    (folder / "s.yaml").write_text(__import__("yaml").safe_dump(d))
    s = load_scenario(folder / "s.yaml")
    p = policy(ON_PHONE, AT_EDGE, TO_CLOUD, delay=delay)
    result = simulate(s, p, seed=0, engine="simpy", keep_timeline=True)
    tl = result.records[0].timeline
    assert tl is not None
    arrival = tl.task_arrival_s
    seen = np.maximum(arrival - delay, 0.0)
    expected = np.where(seen < 2, 0, np.where(seen < 4, 1, 2))
    ran = np.where(tl.resource[:, 4] >= 0, 2, np.where(tl.resource[:, 2] >= 0, 1, 0))
    np.testing.assert_array_equal(ran, expected)
    assert set(expected.tolist()) == {0, 1, 2}
    # A task that ran everything on the phone took exactly its compute time.
    lat = result.records[0].completion_s - arrival
    np.testing.assert_allclose(lat[expected == 0], 5e7 / 1e9, rtol=1e-12)


def policies() -> dict[str, tuple[Any, SplitPolicy]]:
    out: dict[str, tuple[Any, SplitPolicy]] = {}
    out["gilbert-elliott, queues across state changes"] = (
        ge_scenario(), policy(AT_EDGE, TO_CLOUD, thresholds=(5e6,)))
    s = ge_scenario()
    jitter = (Compute("phone", 2e7, "exponential"), Transfer("phone", "edge", 2e5),
              Compute("edge", 1e9, "lognormal", 0.5))
    out["jittered work, observation delay"] = (
        s, SplitPolicy(((Compute("phone", 3e8, "exponential"),), jitter), (8e6,),
                       ("phone", "edge"), 0.1))
    d = three_tier()
    d["nodes"]["edge"]["servers"] = 1
    d["links"][0]["channel"] = {"model": "rayleigh", "bandwidth_hz": 10e6, "tx_power_dbm": 23,
                                "distance_m": 120, "coherence_s": 0.01}
    d["workload"]["arrivals"]["rate_hz"] = 25.0
    out["rayleigh, single-server edge, heavy load"] = (
        scenario_from_dict(d), policy(AT_EDGE, TO_CLOUD, thresholds=(20e6,)))
    out["oracle, gilbert-elliott"] = (ge_scenario(), OraclePolicy((ON_PHONE, AT_EDGE, TO_CLOUD)))
    return out


@pytest.mark.parametrize("name", list(policies()))
def test_fast_evaluator_equals_simpy_on_a_policy(name: str) -> None:
    s, p = policies()[name]
    a = simulate(s, p, seed=8, engine="simpy", tasks=2000, keep_timeline=True)
    b = simulate(s, p, seed=8, engine="fast", tasks=2000, keep_timeline=True)
    assert_same_path(a, b)
    tl = a.records[0].timeline
    assert tl is not None
    visited = tl.resource >= 0
    assert len(np.unique(visited, axis=0)) >= 2  # tasks took different pipelines
    assert tl.waiting_s.max() > 0.0  # there is queueing to get right


def test_fast_equals_simpy_on_a_policy_with_several_sources() -> None:
    s = load_scenario(EXAMPLES / "shared-edge.yaml")
    fwd = s.pipeline
    assert fwd is not None
    local = (Compute("phone1", 2e9),)
    split = (Compute("phone1", 2e8), Transfer("phone1", "edge", 1.2e6), Compute("edge", 2e10))
    p = SplitPolicy((local, split), (12e6,), ("phone1", "edge"))
    a = simulate(s, p, seed=3, engine="simpy", keep_timeline=True)
    b = simulate(s, p, seed=3, engine="fast", keep_timeline=True)
    assert_same_path(a, b)
    tl = a.records[0].timeline
    assert tl is not None
    from sim.network import compile_plan
    from sim.simulate import replication_seeds

    plan = compile_plan(s, p, replication_seeds(3, 0)[1])  # the same channel realisations
    for j in range(4):  # every phone's tasks follow the state of its own uplink
        mine = tl.source == j
        link = plan.resources[plan.observed[j]]
        assert link.name == f"phone{j + 1}->edge" and link.channel is not None
        expected = link.channel.rate_at(tl.task_arrival_s[mine]) >= 12e6
        np.testing.assert_array_equal(tl.resource[mine, 1] >= 0, expected)
        assert 0 < expected.mean() < 1


@pytest.mark.parametrize("engine", ["simpy", "fast"])
def test_a_policy_of_one_pipeline_is_the_static_design(engine: str) -> None:
    s = ge_scenario()
    static = simulate(s, AT_EDGE, seed=5, engine=engine, tasks=1500)
    same = simulate(s, policy(AT_EDGE, AT_EDGE, AT_EDGE), seed=5, engine=engine, tasks=1500)
    one = simulate(s, SplitPolicy((AT_EDGE,), (), ("phone", "edge")), seed=5, engine=engine,
                   tasks=1500)
    for other in (same, one):
        np.testing.assert_array_equal(static.records[0].completion_s,
                                      other.records[0].completion_s)
        assert static.report.p95_latency_s == other.report.p95_latency_s
        assert [x.utilisation for x in static.report.resources] == pytest.approx(
            [x.utilisation for x in other.report.resources], rel=1e-12)


def test_policy_report_offered_load_follows_the_share_of_each_pipeline() -> None:
    s = ge_scenario(tasks=4000)
    p = policy(ON_PHONE, TO_CLOUD, thresholds=(5e6,))
    r = simulate(s, p, seed=2, engine="fast")
    tl_tasks = simulate(s, p, seed=2, engine="fast", keep_timeline=True).records[0].timeline
    assert tl_tasks is not None
    share = float((tl_tasks.resource[:, 1] >= 0).mean())  # tasks that sent over the uplink
    phone = next(x for x in r.report.resources if x.name == "phone")
    uplink = next(x for x in r.report.resources if x.name == "phone->edge")
    lam = 12.0
    assert phone.offered_utilisation == pytest.approx(lam * (1 - share) * 5e7 / 1e9, rel=1e-9)
    mean_rate = (20e6 * 0.4 + 1e6 * 0.2) / 0.6
    assert uplink.offered_utilisation == pytest.approx(lam * share * 1.2e6 / mean_rate,
                                                       rel=1e-9)
    assert share == pytest.approx(0.4 / 0.6, abs=0.05)  # the good state's time share


def test_rate_thresholds_of_gilbert_elliott_give_its_two_states() -> None:
    ch = GilbertElliottRate(good_rate_bps=20e6, bad_rate_bps=1e6, mean_good_s=0.3,
                            mean_bad_s=0.2, seed=np.random.SeedSequence(1))
    thresholds, shares = rate_thresholds(ch, 4, horizon_s=2000.0)
    assert thresholds == (20e6,)  # four asked, two exist
    assert shares == pytest.approx((0.4, 0.6), abs=0.02)  # stationary: 0.2 / 0.5 bad


def test_rate_thresholds_of_rayleigh_are_its_rate_quantiles() -> None:
    """Closed form: with exponential SNR of mean g, P(rate <= B log2(1 + x)) = 1 - exp(-x/g),
    so the q-quantile of the rate is B log2(1 - g ln(1 - q))."""
    bandwidth, g = 10e6, 30.0
    ch = BlockFadingRate(bandwidth_hz=bandwidth, snr_linear=g, coherence_s=0.01,
                         seed=np.random.SeedSequence(2))
    thresholds, shares = rate_thresholds(ch, 4, horizon_s=400.0, samples=40_000)
    exact = [bandwidth * math.log2(1 - g * math.log(1 - q)) for q in (0.25, 0.5, 0.75)]
    assert thresholds == pytest.approx(exact, rel=0.02)
    assert shares == pytest.approx((0.25,) * 4, abs=0.02)


def test_the_oracle_is_the_best_pipeline_per_task_when_nothing_queues() -> None:
    """Brute force: with one task every 4 s nothing queues, so each static pipeline's simulated
    latency is what that pipeline costs the task alone; the oracle must take the least of them
    for every task, and so be no worse than any policy over the same pipelines."""
    d = three_tier()
    d["links"][0]["channel"] = {**GE, "bad_rate_bps": 2e6}
    d["workload"].update({"arrivals": {"process": "periodic", "rate_hz": 0.25},
                          "tasks": 400, "warmup_tasks": 0})
    s = scenario_from_dict(d)
    pipelines = (ON_PHONE, AT_EDGE, TO_CLOUD)

    def latency(p: Any) -> np.ndarray:
        r = simulate(s, p, seed=4, engine="simpy", keep_timeline=True).records[0]
        assert r.timeline is not None and r.timeline.waiting_s.max() == 0.0  # no queueing
        return r.completion_s - r.arrival_s

    each = np.stack([latency(p) for p in pipelines])
    oracle = latency(OraclePolicy(pipelines))
    np.testing.assert_allclose(oracle, each.min(axis=0), rtol=0, atol=1e-9)
    assert len(set(np.argmin(each, axis=0).tolist())) >= 2  # the choice changes with the channel
    for thresholds in [(5e6,), (25e6,)]:
        policy_lat = latency(SplitPolicy((ON_PHONE, TO_CLOUD), thresholds, ("phone", "edge")))
        assert np.all(oracle <= policy_lat + 1e-9)


def test_a_tie_the_recursion_cannot_order_falls_back_to_simpy(tmp_path: Any) -> None:
    """Periodic arrivals, constant work and a trace that steps every 0.125 s: a task that skips
    the phone reaches the uplink on arrival at the instant one from the phone's compute does.
    SimPy orders them by when their waking events were scheduled; the fast evaluator refuses
    the case, and ``auto`` runs SimPy (before, ``auto`` silently gave latencies 0.07 s off)."""
    import yaml

    from sim import FastEvaluatorError

    d = three_tier()
    rows = ["time_s,rate_bps"] + [f"{k * 0.125},{5e6 if k % 2 == 0 else 20e6}"
                                  for k in range(201)]
    (tmp_path / "alt.csv").write_text("\n".join(rows) + "\n")
    d["links"][0]["channel"] = {"model": "trace", "file": "alt.csv"}
    d["workload"].update({"arrivals": {"process": "periodic", "rate_hz": 8.0, "phase_s": 0.0625},
                          "tasks": 100, "warmup_tasks": 0})
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(d))
    s = load_scenario(tmp_path / "s.yaml")
    x = (Compute("phone", 1.25e8), Transfer("phone", "edge", 2e6), Compute("edge", 1e9))
    y = (Transfer("phone", "edge", 1e6), Compute("edge", 1e9))
    p = SplitPolicy((x, y), (10e6,), ("phone", "edge"))
    with pytest.raises(FastEvaluatorError, match="same instant"):
        simulate(s, p, seed=0, engine="fast")
    a = simulate(s, p, seed=0, engine="simpy")
    b = simulate(s, p, seed=0, engine="auto")
    assert b.report.engine == "simpy"
    np.testing.assert_array_equal(a.records[0].completion_s, b.records[0].completion_s)
