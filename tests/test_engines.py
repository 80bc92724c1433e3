"""SimPy engine and fast evaluator: identical sample paths, seeds, common random numbers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sim import (
    Compute,
    FastEvaluatorError,
    Transfer,
    load_scenario,
    scenario_from_dict,
    simulate,
)
from sim.fast import lindley_departures
from sim.network import compile_plan
from sim.simulate import replication_seeds

from .conftest import EXAMPLES, three_tier


def fading(**extra: Any) -> dict[str, Any]:
    return {"model": "rayleigh", "bandwidth_hz": 10e6, "tx_power_dbm": 23, "distance_m": 120,
            "coherence_s": 0.01, **extra}


def variants() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    d = three_tier()
    d["links"][0]["channel"] = fading(shadowing_db=6)
    d["pipeline"][2]["distribution"] = "exponential"
    out["rayleigh uplink, two-server edge"] = d
    d = three_tier()
    d["links"][0]["channel"] = {"model": "gilbert_elliott", "good_rate_bps": 20e6,
                                "bad_rate_bps": 0.0, "mean_good_s": 0.5, "mean_bad_s": 0.1}
    d["workload"]["arrivals"] = {"process": "periodic", "rate_hz": 8}
    d["pipeline"][0]["distribution"] = "lognormal"
    out["gilbert-elliott with outages, periodic arrivals"] = d
    d = three_tier()
    d["nodes"]["edge"]["servers"] = 1
    d["workload"]["arrivals"]["rate_hz"] = 30.0  # uplink near rho 0.6: long queues
    out["single-server edge, heavy load"] = d
    return out


def assert_same_path(a: Any, b: Any) -> None:
    ra, rb = a.records[0], b.records[0]
    np.testing.assert_allclose(ra.completion_s, rb.completion_s, rtol=0, atol=1e-9)
    for field in ("queued_s", "start_s", "end_s"):
        np.testing.assert_allclose(getattr(ra.timeline, field), getattr(rb.timeline, field),
                                   rtol=0, atol=1e-9)
    for field in ("stage_wait_s", "stage_service_s", "stage_propagation_s", "busy_s",
                  "measured_busy_s"):
        np.testing.assert_allclose(getattr(ra, field), getattr(rb, field), rtol=1e-9, atol=1e-8)


@pytest.mark.parametrize("name", list(variants()))
def test_fast_evaluator_equals_simpy_on_the_same_sample_path(name: str) -> None:
    s = scenario_from_dict(variants()[name])
    a = simulate(s, seed=8, engine="simpy", tasks=2000, keep_timeline=True)
    b = simulate(s, seed=8, engine="fast", tasks=2000, keep_timeline=True)
    assert a.report.mean_latency_s > 0
    assert_same_path(a, b)
    waits = a.records[0].timeline.waiting_s  # type: ignore[union-attr]
    assert waits.max() > 0.0  # there is queueing to get right


@pytest.mark.parametrize("name", ["three-tier", "shared-edge"])
def test_fast_equals_simpy_on_shipped_examples(name: str) -> None:
    s = load_scenario(EXAMPLES / f"{name}.yaml")
    a = simulate(s, seed=3, engine="simpy", keep_timeline=True)
    b = simulate(s, seed=3, engine="fast", keep_timeline=True)
    assert_same_path(a, b)


def test_lindley_vectorised_equals_the_loop() -> None:
    rng = np.random.default_rng(1)
    a = np.sort(rng.uniform(0, 100, 5000))
    s = rng.exponential(0.015, 5000)
    d, prev = np.empty(5000), -np.inf
    for i in range(5000):
        prev = max(a[i], prev) + s[i]
        d[i] = prev
    np.testing.assert_allclose(lindley_departures(a, s), d, rtol=1e-13)


@pytest.mark.parametrize("engine", ["simpy", "fast"])
@pytest.mark.parametrize(("edge_servers", "warmup", "waits"), [
    (1, 0, [[0.0, 0.015, 0.0, 0.01], [0.0, 0.01, 0.01, 0.02], [0.0, 0.01, 0.02, 0.03]]),
    (2, 2, [[0.0, 0.01], [0.01, 0.02], [0.0, 0.0]]),  # the warm-up requests waited too
])
def test_stage_waiting_service_and_propagation_by_hand(
        tmp_path: Any, engine: str, edge_servers: int, warmup: int,
        waits: list[list[float]]) -> None:
    """Four requests at t = 0, 0.005, 0.05 and 0.06 s through phone (0.02 s of work) -> a
    constant link (0.03 s to send, 0.001 s propagation) -> edge (0.04 s of work), worked out by
    hand (w: waited):

    phone: 0-0.02, 0.02-0.04 (w 0.015), 0.05-0.07, 0.07-0.09 (w 0.01)
    link:  sends 0.02-0.05, 0.05-0.08 (w 0.01), 0.08-0.11 (w 0.01), 0.11-0.14 (w 0.02)
    edge:  reached at 0.051, 0.081, 0.111, 0.141; one server: 0.051-0.091, 0.091-0.131
           (w 0.01), 0.131-0.171 (w 0.02), 0.171-0.211 (w 0.03); two servers: nobody waits
           (0.051-0.091, 0.081-0.121, 0.111-0.151, 0.141-0.181)

    Stage means are over the measured requests (after the warm-up ones). Catches waiting
    counted from the request's arrival instead of its arrival at the stage, propagation counted
    as service or as occupying the link, a multi-server node served as one queue (or the
    reverse), warm-up requests left in the means, and per-stage sums divided by the wrong
    count."""
    d = three_tier()
    d["nodes"] = {"phone": {"kind": "device", "flops_per_s": 1e9},
                  "edge": {"kind": "edge", "flops_per_s": 1e11, "servers": edge_servers}}
    d["links"] = [{"src": "phone", "dst": "edge", "propagation_s": 0.001,
                   "channel": {"model": "constant", "rate_bps": 10e6}}]
    d["path"] = ["phone", "edge"]
    d["workload"] = {"sources": ["phone"], "warmup_tasks": warmup,
                     "arrivals": {"process": "file", "file": "arrivals.csv"}}
    d["pipeline"] = [{"compute": "phone", "flops": 2e7},
                     {"transfer": ["phone", "edge"], "bits": 3e5},
                     {"compute": "edge", "flops": 4e9}]
    (tmp_path / "arrivals.csv").write_text("time_s\n0.0\n0.005\n0.05\n0.06\n")
    s = scenario_from_dict(d, base_dir=tmp_path)
    result = simulate(s, seed=0, engine=engine, keep_timeline=True)  # type: ignore[arg-type]
    r, rec = result.report, result.records[0]
    service, propagation = [0.02, 0.03, 0.04], [0.0, 0.001, 0.0]
    arrivals = np.array([0.0, 0.005, 0.05, 0.06])
    completion = (np.array([0.091, 0.131, 0.171, 0.211]) if edge_servers == 1
                  else np.array([0.091, 0.121, 0.151, 0.181]))
    assert r.engine == engine and r.tasks == 4 - warmup
    assert [st.label for st in r.stages] == ["compute@phone", "transfer phone->edge",
                                             "compute@edge"]
    for st, w, sv, pr in zip(r.stages, waits, service, propagation, strict=True):
        assert st.waiting_s == pytest.approx(np.mean(w), abs=1e-12), st.label
        assert st.service_s == pytest.approx(sv, abs=1e-12), st.label
        assert st.propagation_s == pytest.approx(pr, abs=1e-12), st.label
    tl = rec.timeline
    assert tl is not None
    np.testing.assert_allclose(tl.waiting_s[warmup:], np.array(waits).T, rtol=0, atol=1e-12)
    np.testing.assert_allclose(tl.service_s, np.tile(service, (4, 1)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(rec.completion_s, completion, rtol=0, atol=1e-12)
    assert r.mean_latency_s == pytest.approx(
        float(np.mean((completion - arrivals)[warmup:])), abs=1e-12)


def test_same_seed_same_result_bit_for_bit() -> None:
    s = load_scenario(EXAMPLES / "shared-edge.yaml")
    a = simulate(s, seed=21, replications=2)
    b = simulate(s, seed=21, replications=2)
    assert a.report.to_dict() == b.report.to_dict()
    for x, y in zip(a.records, b.records, strict=True):
        assert np.array_equal(x.completion_s, y.completion_s)
    c = simulate(s, seed=22, replications=2)
    assert not np.array_equal(a.records[0].arrival_s, c.records[0].arrival_s)
    assert c.report.mean_latency_s != a.report.mean_latency_s


def test_replications_differ_and_do_not_depend_on_their_count() -> None:
    s = load_scenario(EXAMPLES / "three-tier.yaml")
    two = simulate(s, seed=5, replications=2, engine="fast")
    three = simulate(s, seed=5, replications=3, engine="fast")
    assert not np.array_equal(two.records[0].arrival_s, two.records[1].arrival_s)
    assert np.array_equal(two.records[1].completion_s, three.records[1].completion_s)


def test_common_random_numbers_across_pipelines() -> None:
    s = scenario_from_dict(variants()["rayleigh uplink, two-server edge"])
    light = [Compute("phone", 1e6), Transfer("phone", "edge", 1e5), Compute("edge", 1e8)]
    heavy = [Compute("phone", 5e7, "exponential"), Transfer("phone", "edge", 4e5)]
    a = simulate(s, light, seed=9, engine="fast")
    b = simulate(s, heavy, seed=9, engine="fast")
    assert np.array_equal(a.records[0].arrival_s, b.records[0].arrival_s)
    ch_a = compile_plan(s, light, replication_seeds(9, 0)[1]).resources[1].channel
    ch_b = compile_plan(s, heavy, replication_seeds(9, 0)[1]).resources[1].channel
    t = np.linspace(0, 100, 10_001)
    assert ch_a is not None and ch_b is not None
    assert np.array_equal(ch_a.rate_at(t), ch_b.rate_at(t))


def test_warmup_tasks_are_left_out() -> None:
    s = load_scenario(EXAMPLES / "shared-edge.yaml")
    r = simulate(s, seed=1, tasks=300).report
    assert r.tasks == (300 - 100) * 4  # warmup 100 of each of 4 sources


def test_training_mode_runs_the_backward_pass() -> None:
    s = load_scenario(EXAMPLES / "split-learning.yaml")
    result = simulate(s, seed=1, keep_timeline=True)
    labels = [st.label for st in result.report.stages]
    assert labels == ["compute@phone (forward)", "transfer phone->edge (forward)",
                      "compute@edge (forward)", "compute@edge (backward)",
                      "transfer edge->phone (gradient)", "compute@phone (backward)"]
    services = [st.service_s for st in result.report.stages]
    assert services[3] == pytest.approx(2 * services[2])  # backward = 2 x forward work
    assert services[5] == pytest.approx(2 * services[0])
    tl = result.records[0].timeline
    assert tl is not None and np.all(np.diff(tl.start_s, axis=1) >= 0)
    with pytest.raises(FastEvaluatorError, match="'edge' serves stages 2 and 3"):
        simulate(s, seed=1, engine="fast")
    assert simulate(s, seed=1, engine="auto").report.engine == "simpy"


def test_link_is_free_during_propagation() -> None:
    # Two back-to-back transfers over a link with a long propagation delay: the second starts
    # sending as soon as the first has left the sender, not after it arrived.
    d = three_tier()
    d["links"][0]["propagation_s"] = 1.0
    d["workload"]["arrivals"] = {"process": "file", "file": "a.csv"}
    d["workload"]["warmup_tasks"] = 0
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "a.csv").write_text("time_s\n0.0\n0.0001\n")
        s = scenario_from_dict(d, base_dir=tmp)
        r = simulate(s, [Transfer("phone", "edge", 1e6)], seed=0, keep_timeline=True)
    tl = r.records[0].timeline
    assert tl is not None
    assert tl.start_s[1, 0] == pytest.approx(0.1)  # 1 Mbit at 10 Mbit/s
    assert r.records[0].completion_s.tolist() == pytest.approx([1.1, 1.2])


def test_bad_arguments() -> None:
    s = load_scenario(EXAMPLES / "three-tier.yaml")
    with pytest.raises(ValueError, match="replications must be >= 1"):
        simulate(s, replications=0)
    with pytest.raises(ValueError, match=r"tasks \(100\) must exceed workload.warmup_tasks"):
        simulate(s, tasks=100)
    with pytest.raises(ValueError, match="not a link"):
        simulate(s, [Transfer("cloud", "phone", 1.0)])
    with pytest.raises(ValueError, match="work_flops must be"):
        Compute("phone", -1.0)


def test_simultaneous_arrivals_at_a_shared_queue_are_ordered_alike(tmp_path: Any) -> None:
    # Task 1 (source a) and task 2 (source b) both reach the edge at t = 4.0 exactly; task 2's
    # previous stage started earlier (1.5 s against 2.0 s), so SimPy hears from it first.
    d = three_tier()
    d["nodes"]["a"] = {"kind": "device", "flops_per_s": 1.0}
    d["nodes"]["b"] = {"kind": "device", "flops_per_s": 0.8}
    d["links"] += [{"src": "a", "dst": "edge", "channel": {"model": "constant", "rate_bps": 1e9}},
                   {"src": "b", "dst": "edge", "channel": {"model": "constant", "rate_bps": 1e9}}]
    d["path"] = ["a", "edge"]
    d["nodes"]["edge"]["servers"] = 1
    d["nodes"]["edge"]["flops_per_s"] = 1.0
    d["workload"] = {"sources": ["a", "b"], "warmup_tasks": 0,
                     "arrivals": {"process": "file", "file": "arr.csv"}}
    (tmp_path / "arr.csv").write_text("time_s,source\n0.0,a\n0.5,a\n1.5,b\n")
    s = scenario_from_dict(d, base_dir=tmp_path)
    pipeline = [Compute("a", 2.0), Compute("edge", 1.0, "exponential")]
    a = simulate(s, pipeline, seed=1, engine="simpy", keep_timeline=True)
    b = simulate(s, pipeline, seed=1, engine="fast", keep_timeline=True)
    ta, tb = a.records[0].timeline, b.records[0].timeline
    assert ta is not None and tb is not None
    assert ta.queued_s[1, 1] == ta.queued_s[2, 1] == 4.0  # the tie is real
    assert ta.start_s[2, 1] < ta.start_s[1, 1]  # source b's task goes first
    assert_same_path(a, b)


def _two_nodes_by_hand(tmp_path: Any) -> Any:
    """phone (1 s of work) -> a link of no delay -> edge (1 s of work); requests at 0 and 1 s."""
    d = three_tier()
    d["nodes"] = {"phone": {"kind": "device", "flops_per_s": 1.0, "power_w": 2.0},
                  "edge": {"kind": "edge", "flops_per_s": 1.0, "power_w": 3.0}}
    d["links"] = [{"src": "phone", "dst": "edge", "propagation_s": 0.0,
                   "channel": {"model": "constant", "rate_bps": 1e12}}]
    d["path"] = ["phone", "edge"]
    d["workload"] = {"sources": ["phone"], "warmup_tasks": 0,
                     "arrivals": {"process": "file", "file": "arrivals.csv"}}
    d["pipeline"] = [{"compute": "phone", "flops": 1.0},
                     {"transfer": ["phone", "edge"], "bits": 1.0},
                     {"compute": "edge", "flops": 1.0}]
    (tmp_path / "arrivals.csv").write_text("time_s\n0.0\n1.0\n")
    return scenario_from_dict(d, base_dir=tmp_path)


@pytest.mark.parametrize(("cores", "background", "completion", "services"), [
    (2.0, 0.0, [2.0, 3.0], [[1.0, 1.0], [1.0, 1.0]]),  # a core each: nobody slows
    (1.0, 0.0, [3.0, 4.0], [[1.0, 2.0], [2.0, 1.0]]),  # from t = 1 both at half speed
    (2.0, 1.0, [2.5, 3.5], [[1.0, 1.5], [1.5, 1.0]]),  # 2 cores, 3 runnable: 2/3 each
    (1.0, 1.0, [5.0, 7.0], [[2.0, 3.0], [3.0, 2.0]]),  # 1/2 alone, 1/3 together
])
def test_nodes_sharing_a_host_worked_by_hand(tmp_path: Any, cores: float, background: float,
                                             completion: list[float],
                                             services: list[list[float]]) -> None:
    """Two nodes on one host (:class:`sim.engine.CpuShare`), a request at 0 s and one at 1 s,
    1 s of work on each node, worked out by hand with the rule that each running request gets
    min(1, cores / (running + background)) of a processor:

    - two cores, no outside load: nobody slows (0-1, 1-2; 1-2, 2-3);
    - one core: request 0's edge work and request 1's phone work run together from t = 1 at
      half speed and both end at 3; request 1's edge work then runs alone, 3-4;
    - two cores beside one outside process: alone at full speed, together at 2/3 (1-2.5);
    - one core beside one outside process: request 0's phone work alone at half speed, 0-2;
      both together at a third, 2-5; request 1's edge work alone at half speed, 5-7.

    Energy is each node's power x its work at full speed (1 s a request), however long the
    sharing made it take, while its busy time is the time it took.

    Catches the host's rate left at its start value when a request starts or ends, work
    counted at the wrong rate, the service time reported as the work instead of the time
    it took, and energy charged for the stretched time."""
    from sim.engine import CpuShare

    s = _two_nodes_by_hand(tmp_path)
    share = CpuShare(frozenset({"phone", "edge"}), cores, background)
    result = simulate(s, seed=0, engine="simpy", keep_timeline=True, cpu_share=share)
    rec = result.records[0]
    assert rec.timeline is not None
    np.testing.assert_allclose(rec.completion_s, completion, rtol=0, atol=1e-9)
    np.testing.assert_allclose(rec.timeline.service_s[:, [0, 2]], services, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match=r"unknown node\(s\) phnoe \(nodes: edge, phone\)"):
        simulate(s, cpu_share=CpuShare(frozenset({"phone", "phnoe"}), cores, background))
    # a node of the scenario that does no work (a design that sends the raw input) is allowed:
    # the edge then serves each request alone, at its share beside the outside load
    raw = simulate(s, [Transfer("phone", "edge", 1.0), Compute("edge", 1.0)], seed=0,
                   cpu_share=share).records[0]
    alone = 1.0 / min(1.0, cores / (1 + background))
    np.testing.assert_allclose(raw.completion_s - [0.0, 1.0], [alone, alone + max(0, alone - 1)],
                               rtol=0, atol=1e-6)
    stats = {r.name: r for r in result.report.resources}
    for node, column, power in (("phone", 0, 2.0), ("edge", 1, 3.0)):
        assert stats[node].energy_j_per_task == pytest.approx(power * 1.0)
        assert stats[node].busy_s == pytest.approx(sum(row[column] for row in services))
