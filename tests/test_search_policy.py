"""Policy search: the architecture and one split per channel state, in one genome."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.space import get_space
from models.spec import Cut
from search.adaptive import (
    bottleneck_policy,
    channel_states,
    dp_policy,
    oracle_policy,
    policy_of,
    threshold_policy,
)
from search.config import SearchConfig
from search.design import (
    Design,
    GenomeLayout,
    PolicyDesign,
    policy_from_description,
    scenario_routes,
)
from search.dp import no_queue_latency
from search.evaluate import Evaluator
from search.pipeline import design_pipeline
from sim import scenario_from_dict, simulate

from .conftest import three_tier
from .test_search import FAST, PLAIN

GE = {"model": "gilbert_elliott", "good_rate_bps": 20e6, "bad_rate_bps": 0.5e6,
      "mean_good_s": 1.4, "mean_bad_s": 0.6}
"""A slow two-state uplink, bad 30% of the time: long enough that a request sees one state."""


def ge_scenario(**channel: Any) -> Any:
    d = three_tier()
    d["nodes"]["phone"]["flops_per_s"] = 2e8
    d["input_shape"] = [1, 28, 28]
    d["links"][0]["channel"] = {**GE, **channel}
    d["workload"]["arrivals"]["rate_hz"] = 2.0
    return scenario_from_dict(d)


def config(**changes: Any) -> SearchConfig:
    base: dict[str, Any] = {"population": 6, "generations": 2, "executor": "serial",
                            "sim_tasks": 100, "budget": FAST, "compression": False,
                            "policy_states": 3, "remeasure_replications": 0, **PLAIN}
    base.update(changes)
    return SearchConfig(**base)


def test_channel_states_of_gilbert_elliott_and_rayleigh() -> None:
    """Two rates give two states (three asked): the bad rate and the good one, at their time
    shares (stationary: 0.6 / 2.0 bad); a constant link has one state."""
    st = channel_states(ge_scenario(), 3)
    assert st.count == 2 and st.thresholds_bps == (20e6,)
    assert st.rates_bps == pytest.approx((0.5e6, 20e6))
    assert st.shares == pytest.approx((0.3, 0.7), abs=0.02)
    d = three_tier()
    assert channel_states(scenario_from_dict(d), 4).count == 1
    d["links"][0]["channel"] = {"model": "rayleigh", "bandwidth_hz": 10e6, "tx_power_dbm": 23,
                                "distance_m": 120, "coherence_s": 0.01}
    ray = channel_states(scenario_from_dict(d), 4)
    assert ray.count == 4 and ray.shares == pytest.approx((0.25,) * 4, abs=0.01)
    # each state's rate lies between its thresholds (a harmonic mean of rates in the bin)
    edges = (0.0, *ray.thresholds_bps, math.inf)
    assert all(lo <= r < hi for r, lo, hi in zip(ray.rates_bps, edges, edges[1:], strict=False))


def test_policy_genomes_round_trip_and_a_static_design_is_a_policy() -> None:
    s = ge_scenario()
    space = get_space("tiny")
    layout = GenomeLayout(space, scenario_routes(s), compression=True, states=2)
    static_layout = GenomeLayout(space, scenario_routes(s), compression=True)
    assert layout.n_genes == space.n_genes + 2 * static_layout.state_genes
    assert len(layout.split_genes) == 2 * static_layout.hops
    rng = np.random.default_rng(0)
    for _ in range(50):
        g = [int(rng.integers(b)) for b in layout.bounds]
        d = layout.decode_any(g)
        assert isinstance(d, PolicyDesign)
        assert layout.decode_any(layout.canonical(g)) == d
        assert policy_from_description(d.arch, d.describe()) == d
    arch = space.decode([0] * space.n_genes)
    one = Design(arch, tuple(s.path), (Cut(1), Cut(arch.n_blocks)))
    both = layout.decode_any(layout.encode(one))
    assert both == PolicyDesign((one, one))
    with pytest.raises(ValueError, match="policy design"):
        layout.decode(layout.encode(one))
    from search.design import design_from_description

    with pytest.raises(ValueError, match=r"is a split policy .* policy_from_description reads it"):
        design_from_description(arch, PolicyDesign((one, one)).describe())


def test_a_policy_of_one_design_scores_as_that_design(tmp_path: Path) -> None:
    """Same accuracy (the state weights sum to one), same simulated latency: a policy search
    can express every static design at the same score."""
    s = ge_scenario()
    static = Evaluator(s, config(policy_states=1), str(tmp_path / "c.sqlite"))
    policy = Evaluator(s, config(), str(tmp_path / "c.sqlite"))
    assert static.layout.states == 1 and policy.layout.states == 2
    arch = get_space("tiny").decode([0] * get_space("tiny").n_genes)
    one = Design(arch, tuple(s.path), (Cut(1), Cut(arch.n_blocks)))
    (a,) = static.evaluate_designs([one])
    (b,) = policy.evaluate_designs([PolicyDesign((one, one))])
    assert a.status == b.status == "ok"
    assert b.accuracy == pytest.approx(a.accuracy, abs=1e-12)
    assert b.latency_s == a.latency_s and b.p95_latency_s == a.p95_latency_s
    assert b.utilisation == pytest.approx(a.utilisation, rel=1e-12)


def test_dp_policy_plans_each_state_at_its_rate() -> None:
    """Brute force over every split vector, per state, at the state's (constant) rate."""
    s = ge_scenario()
    st = channel_states(s, 2)
    arch = get_space("tiny").decode([0, 1, 0, 1, 0, 0, 0, 0, 0])
    route = tuple(s.path)
    designs = dp_policy(arch, s, route, st)
    from models.profile import profile_model
    from search.adaptive import state_scenario
    from search.dp import brute_force_split

    profile = profile_model(arch, s.input_shape, 10)
    for design, rate in zip(designs, st.rates_bps, strict=True):
        planned = state_scenario(s, st.link, rate)
        best = brute_force_split(profile, planned, route, arch)
        assert no_queue_latency(design, profile, planned) == pytest.approx(best.latency_s)
    assert designs[0] != designs[1]  # the bad state keeps more on the phone
    assert designs[0].positions[0] > designs[1].positions[0]


def test_the_oracle_bounds_every_planned_policy_at_light_load() -> None:
    """No queueing (one request every 4 s): the oracle is no slower than the static DP design,
    the DP policy, the threshold policy or the bottleneck policy on any request."""
    d = three_tier()
    d["nodes"]["phone"]["flops_per_s"] = 2e8
    d["input_shape"] = [1, 28, 28]
    d["links"][0]["channel"] = dict(GE)
    d["workload"].update({"arrivals": {"process": "periodic", "rate_hz": 0.25},
                          "tasks": 300, "warmup_tasks": 0})
    s = scenario_from_dict(d)
    arch = get_space("tiny").decode([0, 1, 0, 1, 0, 0, 0, 0, 0])
    route = tuple(s.path)
    st = channel_states(s, 2)

    def pipe(design: Design, profile: Any) -> Any:
        return design_pipeline(design, profile, s.input_bits_per_element)

    def latency(p: Any) -> np.ndarray:
        r = simulate(s, p, seed=2, engine="fast").records[0]
        return r.completion_s - r.arrival_s

    oracle = latency(oracle_policy(arch, s, route, pipe))
    lens_designs, lens_states = threshold_policy(arch, s, route)
    others = {
        "dp policy": policy_of(dp_policy(arch, s, route, st), st, s, pipe),
        "threshold": policy_of(lens_designs, lens_states, s, pipe),
        "bottleneck": policy_of(bottleneck_policy(arch, s, route, st), st, s, pipe),
    }
    for name, p in others.items():
        assert np.all(oracle <= latency(p) + 1e-9), name
    assert 1 <= lens_states.count <= 3


@pytest.mark.slow
def test_a_policy_search_runs_from_the_command_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``jmsnas search --policy-states 3`` on a Gilbert-Elliott uplink: two states (the link
    has two rates); every front design names a design per state, is scored, re-measured and
    printed."""
    import yaml

    from jmsnas.main import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ge.yaml").write_text(yaml.safe_dump(ge_scenario().model_dump()))
    (tmp_path / "fast.yaml").write_text(yaml.safe_dump({
        "noise_architectures": 0, "remeasure_replications": 5, "remeasure_tasks": 100,
        "test_accuracy": False, "sim_tasks": 100, "compression": False,
        "budget": {"batch_size": 32}}))
    assert main(["search", "ge.yaml", "--config", "fast.yaml", "--policy-states", "3",
                 "--population", "6", "--generations", "1", "--epochs", "2", "--subset", "400",
                 "--executor", "serial", "--dataset", "mnist5k", "--quiet"]) == 0
    out = capsys.readouterr().out
    import csv

    with open(tmp_path / "runs" / "search-ge-seed0" / "front.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(row["design"].count(" | ") == 1 for row in rows)
    assert all(int(row["replications"]) == 5 for row in rows)
    assert rows[0]["design"] in out


def test_a_gilbert_elliott_link_has_two_states_at_any_bad_share() -> None:
    """Half the time bad or more: the median is the bad rate, so quantile cuts alone gave one
    state and a policy search silently ran static; the two rates are cut between instead."""
    for good, bad in ((1.0, 1.0), (0.8, 1.2), (0.5, 1.5)):
        st = channel_states(ge_scenario(mean_good_s=good, mean_bad_s=bad), 2)
        assert st.count == 2 and st.thresholds_bps == (20e6,), (good, bad)
        assert st.shares[0] == pytest.approx(bad / (good + bad), abs=0.03)


def test_policy_searches_refuse_what_they_cannot_weigh(tmp_path: Path) -> None:
    """A one-node path has no uplink to observe; sources whose uplinks differ would need
    per-source state shares: both refused in one line naming the cause."""
    d = three_tier()
    d["path"] = ["phone"]
    d["pipeline"] = [{"compute": "phone", "flops": 1e6}]
    with pytest.raises(ValueError, match="path of two or more nodes"):
        Evaluator(scenario_from_dict(d), config(), str(tmp_path / "c.sqlite"))
    from experiments.common import scenario_variant

    shared = scenario_variant("shared-edge")
    with pytest.raises(ValueError, match="phone2 -> edge has another"):
        Evaluator(shared, config(), str(tmp_path / "c.sqlite"))


def _mesh() -> Any:
    ge, fast = dict(GE), {"model": "constant", "rate_bps": 50e6}
    return scenario_from_dict({
        "name": "mesh", "input_shape": [1, 28, 28],
        "nodes": {"phone": {"kind": "device", "flops_per_s": 2e8},
                  "e1": {"kind": "edge", "flops_per_s": 1e10},
                  "e2": {"kind": "edge", "flops_per_s": 1e10},
                  "cloud": {"kind": "cloud", "flops_per_s": 1e11}},
        "links": [{"src": "phone", "dst": "e1", "channel": ge},
                  {"src": "phone", "dst": "e2", "channel": fast},
                  {"src": "e1", "dst": "e2", "channel": fast, "duplex": True},
                  {"src": "e1", "dst": "cloud", "channel": fast},
                  {"src": "e2", "dst": "cloud", "channel": fast}],
        "path": ["phone", "e1", "cloud"],
        "workload": {"sources": ["phone"], "arrivals": {"process": "poisson", "rate_hz": 2.0},
                     "tasks": 200, "warmup_tasks": 10}})


def test_states_on_crossing_routes_are_infeasible_not_a_crash(tmp_path: Path) -> None:
    """phone -> e1 -> e2 in one state and phone -> e2 -> e1 in the other: no single stage
    order holds both, which used to stop the search for good (a resume bred the same design)."""
    s = _mesh()
    ev = Evaluator(s, config(), str(tmp_path / "c.sqlite"))
    arch = get_space("tiny").decode([0] * get_space("tiny").n_genes)
    n = arch.n_blocks
    a = Design(arch, ("phone", "e1", "e2", "cloud"), (Cut(0), Cut(1), Cut(n)))
    b = Design(arch, ("phone", "e2", "e1", "cloud"), (Cut(0), Cut(1), Cut(n)))
    (crossed,) = ev.evaluate_designs([PolicyDesign((a, b))])
    assert crossed.status == "infeasible" and "opposite orders" in crossed.message
    (fine,) = ev.evaluate_designs([PolicyDesign((a, a))])
    assert fine.status == "ok"


def test_policy_memory_counts_each_model_a_node_holds(tmp_path: Path) -> None:
    """Two states with different compressions run two fine-tuned models: a node serving both
    holds both, so the policy needs more memory than either state alone; two states with one
    model need what that model needs."""
    s = ge_scenario()
    ev = Evaluator(s, config(compression=True), str(tmp_path / "c.sqlite"))
    arch = get_space("tiny").decode([0, 1, 0, 1, 0, 0, 0, 0, 0])
    n, route = arch.n_blocks, tuple(s.path)
    plain = Design(arch, route, (Cut(2), Cut(n)))
    squeezed = Design(arch, route, (Cut(2, 0.25, 8), Cut(n)))
    one = ev.profile(plain).segment_memory_bytes(2, n)
    limit = 1.5 * one  # one model fits on the edge, two do not
    d = s.model_dump()
    d["nodes"]["edge"]["memory_bytes"] = limit
    ev = Evaluator(scenario_from_dict(d), config(compression=True), str(tmp_path / "c.sqlite"))
    assert ev.memory_violation(PolicyDesign((plain, plain))) == 0.0
    assert ev.memory_violation(plain) == 0.0 and ev.memory_violation(squeezed) == 0.0
    assert ev.memory_violation(PolicyDesign((plain, squeezed))) > 0.0


def test_a_policy_accuracy_weights_its_states_models(tmp_path: Path) -> None:
    """States with different compressions: the accuracy is the share-weighted accuracy of the
    two models, each as a static search scores it."""
    s = ge_scenario()
    cache = str(tmp_path / "c.sqlite")
    static = Evaluator(s, config(policy_states=1, compression=True), cache)
    policy = Evaluator(s, config(compression=True), cache)
    arch = get_space("tiny").decode([0, 1, 0, 1, 0, 0, 0, 0, 0])
    n, route = arch.n_blocks, tuple(s.path)
    bad = Design(arch, route, (Cut(n), Cut(n)))
    good = Design(arch, route, (Cut(2, 0.25, 8), Cut(n)))
    a, b = static.evaluate_designs([bad, good])
    (p,) = policy.evaluate_designs([PolicyDesign((bad, good))])
    assert a.accuracy != b.accuracy
    shares = policy.states.shares  # type: ignore[union-attr]
    assert p.accuracy == pytest.approx(shares[0] * a.accuracy + shares[1] * b.accuracy,
                                       abs=1e-12)


def test_policy_memory_counts_an_encoder_and_a_decoder_one_node_holds(tmp_path: Path) -> None:
    """One model, one compressed cut after block 2: the edge runs blocks 2.. behind it in one
    state (its decoder) and blocks ..2 before it in the other (its encoder): it holds both."""
    s = ge_scenario()
    arch = get_space("tiny").decode([0, 1, 0, 1, 0, 0, 0, 0, 0])
    n, route = arch.n_blocks, tuple(s.path)
    cut = Cut(2, 0.25, 8)
    behind = Design(arch, route, (cut, Cut(n)))  # edge: [2, n), decoder at 2
    before = Design(arch, route, (Cut(0), cut))  # edge: [0, 2), encoder at 2; cloud the rest
    ev = Evaluator(s, config(compression=True), str(tmp_path / "c.sqlite"))
    codec = ev.profile(behind).codec(2)
    assert codec is not None
    need = (ev.profile(Design(arch, route, ())).segment_memory_bytes(0, n)
            + 4 * (codec.encoder_params + codec.decoder_params))
    for limit, over in ((need, False), (need - 1, True)):
        d = s.model_dump()
        d["nodes"]["edge"]["memory_bytes"] = limit
        ev = Evaluator(scenario_from_dict(d), config(compression=True), str(tmp_path / "c.sqlite"))
        assert (ev.memory_violation(PolicyDesign((behind, before))) > 0) == over, limit
