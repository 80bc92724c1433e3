"""Fronts re-measured on fresh seeds, and scenarios whose sources cannot all follow a route."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from search.config import SearchConfig
from search.evaluate import Evaluator
from search.nsga import run_search
from search.remeasure import remeasure_seed
from sim import load_scenario, scenario_from_dict, simulate
from tests.conftest import EXAMPLES, three_tier

FAST = {"epochs": 1, "subset": 300, "batch_size": 64}


def small(**changes: Any) -> SearchConfig:
    base: dict[str, Any] = {"population": 4, "generations": 1, "executor": "serial",
                            "sim_tasks": 100, "budget": FAST, "dataset": "mnist5k",
                            "noise_architectures": 0, "remeasure_tasks": 300}
    base.update(changes)
    return SearchConfig(**base)


def test_front_is_remeasured_on_fresh_seeds_with_intervals_that_hold(tmp_path: Path) -> None:
    """On the shipped three-tier scenario (fading uplink, Poisson arrivals). Catches a
    re-measurement on the search's own sample path (its numbers would equal the search's), too
    few replications, and intervals that are not intervals: the mean of a long independent run
    (40 replications of yet another seed) must lie within 3 half-widths of every re-measured
    mean, for every front design."""
    s = load_scenario(EXAMPLES / "three-tier.yaml")
    cfg = small()
    result = run_search(s, cfg, tmp_path / "run")
    front = result.front()
    assert [r.genome for r in result.remeasured] == [e.genome for e in front]
    ev = Evaluator(s, cfg, str(tmp_path / "run" / "accuracy.sqlite"))
    assert remeasure_seed(cfg.eval_seed) != cfg.eval_seed
    for e, r in zip(front, result.remeasured, strict=True):
        assert r.replications == 10 and r.seed == remeasure_seed(cfg.eval_seed)
        assert math.isnan(r.test_accuracy)  # mnist5k keeps no test set
        design = ev.layout.decode(e.genome)
        pipeline = ev.pipeline(design, ev.profile(design))
        if all(st.__class__.__name__ == "Compute" for st in pipeline):
            continue  # all on the phone, constant work: every path gives the same latency
        assert r.mean_latency_s != e.mean_latency_s  # another sample path than the search's
        assert r.mean_ci95_s > 0 and r.p95_ci95_s > 0
        long = simulate(s, pipeline, seed=987654, replications=40,
                        tasks=s.workload.warmup_tasks + 300, engine="auto")
        means = [float(x.latency_s.mean()) for x in long.records]
        assert abs(r.mean_latency_s - np.mean(means)) <= 3 * r.mean_ci95_s, e.design
        p95s = [float(np.percentile(x.latency_s, 95)) for x in long.records]
        assert abs(r.p95_latency_s - np.mean(p95s)) <= 3 * r.p95_ci95_s, e.design


def test_test_set_accuracy_is_a_final_training_scored_on_the_test_set(tmp_path: Path) -> None:
    """Fashion-MNIST keeps its official test set. Catches a test accuracy that is the
    validation accuracy again, or one trained on another split: it must equal a direct
    training on the training plus validation parts, scored on the test set."""
    from models.data import load_dataset
    from models.resolve import resolve_architecture
    from models.train import proxy_accuracy

    s = load_scenario(EXAMPLES / "three-tier.yaml")
    cfg = small(dataset="fashion-mnist", architecture="tiny-110101101", compression=False,
                remeasure_replications=5, budget={"epochs": 1, "subset": 2000, "batch_size": 64})
    result = run_search(s, cfg, tmp_path / "run")
    assert result.remeasured
    data = load_dataset("fashion-mnist", seed=0).final()
    direct = proxy_accuracy(resolve_architecture("tiny-110101101"), data,
                            cfg.budget.to_budget(), seed=cfg.eval_seed)
    for r in result.remeasured:
        assert r.test_accuracy == pytest.approx(direct.accuracy, abs=1e-12)
    assert direct.accuracy > 0.5  # it learnt: far above chance (0.1), so equality means something
    front = result.front()
    assert all(r.test_accuracy != e.accuracy for r, e in zip(result.remeasured, front,
                                                            strict=True))


def two_phones_and_a_shortcut() -> dict[str, Any]:
    """phone and phone2 share the edge; the user adds a phone -> cloud link (a second route)
    but no phone2 -> cloud one."""
    d = three_tier()
    d["nodes"]["phone2"] = {"kind": "device", "flops_per_s": 1e9}
    d["links"].append({"src": "phone2", "dst": "edge",
                       "channel": {"model": "constant", "rate_bps": 10e6}})
    d["links"].append({"src": "phone", "dst": "cloud", "propagation_s": 0.03,
                       "channel": {"model": "constant", "rate_bps": 5e6}})
    d["workload"]["sources"] = ["phone", "phone2"]
    d.pop("pipeline")
    return d


def test_a_route_some_source_cannot_follow_is_refused_before_any_training(
        tmp_path: Path) -> None:
    """Catches the search starting (and stopping mid-way, checkpoint left behind) on a route
    that phone2 has no link for, and a message that does not name the source, the missing link
    and the fix."""
    s = scenario_from_dict(two_phones_and_a_shortcut())
    with pytest.raises(ValueError, match=r"source 'phone2' cannot follow route phone -> cloud: "
                                         r"no link phone2 -> cloud \(.*add that link, or remove "
                                         r"the link phone -> cloud"):
        Evaluator(s, small(), str(tmp_path / "acc.sqlite"))
    file = tmp_path / "shortcut.yaml"
    file.write_text(yaml.safe_dump(two_phones_and_a_shortcut()))
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "jmsnas", "search", str(file),
                           "--dataset", "mnist5k", "--executor", "serial", "--out", str(out)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "source 'phone2' cannot follow route phone -> cloud" in proc.stderr
    assert not (out / "checkpoint.pkl").exists() and not (tmp_path / "acc.sqlite-wal").exists()
    d = two_phones_and_a_shortcut()  # the fix: give phone2 the link too
    d["links"].append({"src": "phone2", "dst": "cloud",
                       "channel": {"model": "constant", "rate_bps": 5e6}})
    ev = Evaluator(scenario_from_dict(d), small(), str(tmp_path / "ok.sqlite"))
    assert ("phone", "cloud") in ev.layout.routes


def test_no_remeasurement_repeats_the_search_numbers(tmp_path: Path) -> None:
    """Catches ``remeasure_replications: 0`` leaving the front without entries (experiments
    pair every front design with one) or inventing intervals for numbers never re-measured."""
    from search.outputs import front_rows

    s = load_scenario(EXAMPLES / "three-tier.yaml")
    result = run_search(s, small(remeasure_replications=0), tmp_path / "run")
    front = result.front()
    assert [(r.arch, r.design) for r in result.remeasured] == [(e.arch, e.design) for e in front]
    for e, r in zip(front, result.remeasured, strict=True):
        assert r.replications == 0 and r.mean_latency_s == e.mean_latency_s
        assert math.isnan(r.mean_ci95_s) and math.isnan(r.test_accuracy)
    for row in front_rows(result):
        assert row["replications"] == 0 and math.isnan(row["mean_latency_ci95_s"])
        assert row["latency_s"] == row["search_latency_s"]
