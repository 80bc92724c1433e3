"""Arrival processes, work jitter, training mode and multi-source pipelines."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sim import Compute, Transfer, scenario_from_dict, simulate, training_pipeline
from sim.network import compile_plan
from sim.seeds import child
from sim.workload import sample_tasks, stages_for_source

from .conftest import three_tier


def seeds(i: int = 0) -> tuple[np.random.SeedSequence, np.random.SeedSequence]:
    root = np.random.SeedSequence(i)
    return child(root, 0), child(root, 1)


def test_poisson_arrivals_have_the_rate_and_exponential_gaps() -> None:
    s = scenario_from_dict(three_tier())
    t = sample_tasks(s, [Compute("phone", 1.0)], 200_000, *seeds()).arrival_s
    gaps = np.diff(t)
    assert gaps.mean() == pytest.approx(1 / 5.0, rel=0.01)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.01)  # cv of Exp is 1


def test_periodic_arrivals_with_random_phase_per_source() -> None:
    d = three_tier()
    d["nodes"]["tablet"] = {"kind": "device", "flops_per_s": 1e9}
    d["links"].append({"src": "tablet", "dst": "edge",
                       "channel": {"model": "constant", "rate_bps": 1e6}})
    d["workload"]["sources"] = ["phone", "tablet"]
    d["workload"]["arrivals"] = {"process": "periodic", "rate_hz": 4}
    t = sample_tasks(scenario_from_dict(d), [Compute("phone", 1.0)], 100, *seeds())
    per = [t.arrival_s[t.source == j] for j in (0, 1)]
    for a in per:
        np.testing.assert_allclose(np.diff(a), 0.25)
        assert 0.0 <= a[0] < 0.25
    assert per[0][0] != per[1][0]
    assert t.measured.sum() == 2 * (100 - 50)
    d["workload"]["arrivals"]["phase_s"] = 0.1
    t = sample_tasks(scenario_from_dict(d), [Compute("phone", 1.0)], 10, *seeds())
    assert t.arrival_s[:2].tolist() == [0.1, 0.1]  # ties: source order
    assert t.source[:2].tolist() == [0, 1]


def test_arrival_file_per_source(tmp_path: Path) -> None:
    d = three_tier()
    d["nodes"]["tablet"] = {"kind": "device", "flops_per_s": 1e9}
    d["links"].append({"src": "tablet", "dst": "edge",
                       "channel": {"model": "constant", "rate_bps": 1e6}})
    d["workload"].update(sources=["phone", "tablet"], warmup_tasks=1,
                         arrivals={"process": "file", "file": "arr.csv"})
    (tmp_path / "arr.csv").write_text("time_s,source\n0.5,tablet\n0.1,phone\n0.3,phone\n"
                                      "0.7,tablet\n")
    s = scenario_from_dict(d, base_dir=tmp_path)
    t = sample_tasks(s, [Compute("phone", 1.0)], 100, *seeds())
    assert t.arrival_s.tolist() == [0.1, 0.3, 0.5, 0.7]
    assert t.source.tolist() == [0, 0, 1, 1]
    assert t.measured.tolist() == [False, True, False, True]


@pytest.mark.parametrize(("dist", "cv"), [("exponential", 1.0), ("lognormal", 0.3),
                                          ("lognormal", 2.0)])
def test_work_jitter_has_mean_one_and_the_cv(dist: str, cv: float) -> None:
    s = scenario_from_dict(three_tier())
    stages = [Compute("phone", 1.0), Compute("phone", 1.0, dist, cv)]  # type: ignore[arg-type]
    m = sample_tasks(s, stages, 400_000, *seeds()).multipliers
    assert np.all(m[:, 0] == 1.0)
    sem = m[:, 1].std() / math.sqrt(m.shape[0])
    assert abs(m[:, 1].mean() - 1.0) < 4 * sem
    assert m[:, 1].std() == pytest.approx(cv, rel=0.05)


def test_training_pipeline_reverses_transfers_and_scales_work() -> None:
    fwd = [Compute("a", 1.0), Transfer("a", "b", 8.0), Compute("b", 3.0)]
    assert training_pipeline(fwd, 2.5) == (
        Compute("a", 1.0, phase="forward"), Transfer("a", "b", 8.0, phase="forward"),
        Compute("b", 3.0, phase="forward"),
        Compute("b", 7.5, phase="backward"), Transfer("b", "a", 8.0, phase="backward"),
        Compute("a", 2.5, phase="backward"),
    )


def test_training_labels_name_the_pass() -> None:
    """Catches the two passes of a node printed alike (``compute@b`` twice, issue 14)."""
    fwd = [Compute("a", 1.0), Transfer("a", "b", 8.0), Compute("b", 3.0)]
    assert [s.label for s in fwd] == ["compute@a", "transfer a->b", "compute@b"]
    assert [s.label for s in training_pipeline(fwd)] == [
        "compute@a (forward)", "transfer a->b (forward)", "compute@b (forward)",
        "compute@b (backward)", "transfer b->a (gradient)", "compute@a (backward)"]


@pytest.mark.parametrize(("owner", "make"), [
    ("Compute", lambda phase: Compute("a", 1.0, phase=phase)),
    ("Transfer", lambda phase: Transfer("a", "b", 1.0, phase=phase)),
])
def test_a_bad_phase_is_refused_by_name(owner: str, make: Any) -> None:
    with pytest.raises(ValueError, match=rf"^{owner}\.phase must be None, 'forward' or "
                                         r"'backward', got 'sideways'$"):
        make("sideways")


def test_the_first_node_stands_for_each_source() -> None:
    fwd = [Compute("p", 1.0), Transfer("p", "e", 8.0), Compute("e", 3.0), Transfer("e", "p", 1.0)]
    assert stages_for_source(fwd, "p", "q") == (
        Compute("q", 1.0), Transfer("q", "e", 8.0), Compute("e", 3.0), Transfer("e", "q", 1.0))
    # ... and keeps each stage's pass.
    assert stages_for_source(training_pipeline(fwd[:3]), "p", "q") == training_pipeline(
        stages_for_source(fwd[:3], "p", "q"))


def test_phases_change_only_labels() -> None:
    """Catches a stage's pass leaking into the simulation: the same training pipeline with and
    without phases gives the same numbers, bit for bit."""
    d = three_tier()
    d["links"][0]["duplex"] = True  # the gradient goes back edge -> phone
    s = scenario_from_dict(d)
    stages = training_pipeline([Compute("phone", 2e8, "exponential"),
                                Transfer("phone", "edge", 1e6), Compute("edge", 1e9)])
    bare = [replace(st, phase=None) for st in stages]
    a = simulate(s, stages, seed=2, tasks=400, backward_included=True).report.to_dict()
    b = simulate(s, bare, seed=2, tasks=400, backward_included=True).report.to_dict()
    assert [st.pop("label") for st in a["stages"]] != [st.pop("label") for st in b["stages"]]
    assert [st.pop("phase") for st in a["stages"]] == ["forward"] * 3 + ["backward"] * 3
    assert [st.pop("phase") for st in b["stages"]] == [None] * 6
    assert a == b


def test_channel_realisation_does_not_depend_on_earlier_calls() -> None:
    d = three_tier()
    d["links"][0]["channel"] = {"model": "rayleigh", "bandwidth_hz": 1e6, "tx_power_dbm": 23,
                                "distance_m": 100, "coherence_s": 0.01}
    s = scenario_from_dict(d)
    seq = np.random.SeedSequence(3)
    a = compile_plan(s, [Transfer("phone", "edge", 1.0)], seq).resources[0].channel
    b = compile_plan(s, [Transfer("phone", "edge", 1.0)], seq).resources[0].channel
    assert a is not None and b is not None
    t = np.linspace(0, 10, 1001)
    assert np.array_equal(a.rate_at(t), b.rate_at(t))


def test_the_simulator_package_has_no_import_circle() -> None:
    """Every import between ``sim`` modules, at the top or inside a function, as a graph: it
    has no cycle (the scenario schema once imported the workload, which imported the schema)."""
    import ast

    import networkx as nx

    graph = nx.DiGraph()
    for path in (Path(__file__).resolve().parent.parent / "sim").glob("*.py"):
        graph.add_node(path.stem)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.level == 1:
                    graph.add_edge(path.stem, node.module.split(".")[0])
                elif node.module.startswith("sim."):
                    graph.add_edge(path.stem, node.module.split(".")[1])
    assert graph.number_of_nodes() > 10
    assert list(nx.simple_cycles(graph)) == []
