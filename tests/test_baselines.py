"""Baselines, the fixed-architecture search, the lambda sweep and the Dask executor."""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path
from typing import Any

import pytest

from models.profile import profile_model
from models.resolve import resolve_architecture
from models.spec import BIT_WIDTHS, BOTTLENECKS, ArchSpec, Conv, Cut, Head
from search.baselines import (
    all_designs,
    neurosurgeon_baseline,
    placement_baseline,
    two_stage_baseline,
)
from search.config import SearchConfig
from search.design import Design
from search.dp import brute_force_split, no_queue_latency, optimal_split
from search.evaluate import Evaluator
from search.indicators import nondominated, normalise
from search.nsga import SearchResult, run_search
from search.sweep import LambdaSweep, lambda_sweep
from sim import scenario_from_dict

from .conftest import three_tier

FAST = {"epochs": 1, "subset": 300, "batch_size": 64}
ARCH = "tiny:1,1,0,0,0,1,1,0,0"  # 7 blocks: stem, 2 + 1 inverted residuals, 1x1 conv, head


def quiet_three_tier(phone_flops: float = 3e8, edge_flops: float = 1e11,
                     uplink_bps: float = 10e6) -> Any:
    """Three tiers with constant links and one request per second: nothing ever queues, so the
    simulated latency of a design is exactly its no-queueing latency."""
    d = three_tier()
    d["input_shape"] = [3, 64, 64]
    d["nodes"]["phone"]["flops_per_s"] = phone_flops
    d["nodes"]["edge"]["flops_per_s"] = edge_flops
    d["links"][0]["channel"]["rate_bps"] = uplink_bps
    d["workload"] = {"sources": ["phone"], "tasks": 30, "warmup_tasks": 0,
                     "arrivals": {"process": "periodic", "rate_hz": 1.0}}
    return scenario_from_dict(d)


def config(**changes: Any) -> SearchConfig:
    base: dict[str, Any] = {"population": 6, "generations": 2, "executor": "serial",
                            "sim_tasks": 20, "budget": FAST, "dataset": "mnist5k",
                            "noise_architectures": 0}
    base.update(changes)
    return SearchConfig(**base)


def test_fixed_architecture_genome_has_split_genes_only() -> None:
    s = quiet_three_tier()
    ev = Evaluator(s, config(architecture=ARCH, compression=False), ":memory:")
    lay = ev.layout
    arch = resolve_architecture(ARCH)
    assert lay.n_arch == 0 and lay.max_blocks == arch.n_blocks == 7
    assert lay.bounds == (1, 8, 8, 1, 1, 1, 1)  # route, two positions, (bottleneck, bits) x 2
    d = lay.decode([0, 5, 2, 0, 0, 0, 0])
    assert d.arch == arch and d.positions == (2, 5)
    assert lay.encode(d) == (0, 2, 5, 0, 0, 0, 0)
    designs = list(all_designs(lay))
    assert len(designs) == len(set(designs)) == math.comb(7 + 2, 2)  # every split vector
    with pytest.raises(ValueError, match="not the fixed architecture"):
        lay.encode(Design(resolve_architecture("tiny:0,0,0,0,0,0,0,0,0"), d.route, d.cuts))


def test_unknown_fixed_architecture_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^arguments: architecture: 'resnet19' is not a refer"):
        SearchConfig().with_changes(architecture="resnet19")


def test_ga_split_reaches_the_dp_optimum(tmp_path: Path) -> None:
    s = quiet_three_tier(phone_flops=3e9, edge_flops=1e10, uplink_bps=10e6)
    arch = resolve_architecture("mobilenet_v2")  # 20 blocks: 231 split vectors on 3 nodes
    route = tuple(s.path)
    profile = profile_model(arch, s.input_shape, 10)
    dp = optimal_split(profile, s, route)
    assert dp == brute_force_split(profile, s, route, arch)
    assert any(0 < p < arch.n_blocks for p in dp.positions)  # a real split pays here
    for seed in range(3):
        cfg = config(architecture=arch.name, compression=False, dp_seeding=False,
                     population=12, generations=8, seed=seed)
        r = run_search(s, cfg, tmp_path / str(seed), cache_path=str(tmp_path / "acc.sqlite"))
        best = min(r.evaluations.values(), key=lambda e: e.latency_s)
        assert best.latency_s == pytest.approx(dp.latency_s, rel=1e-9), (seed, best.design)
        assert len(r.evaluations) < math.comb(arch.n_blocks + 2, 2)  # it did not try all
        d = Evaluator(s, cfg, ":memory:").layout.decode(best.genome)
        assert no_queue_latency(d, profile, s) == pytest.approx(dp.latency_s, rel=1e-12)


def test_placement_baselines_put_the_whole_model_on_one_node(tmp_path: Path) -> None:
    s = quiet_three_tier()
    archs = [resolve_architecture(ARCH), resolve_architecture("tiny:0,0,0,0,0,0,2,0,0")]
    cfg = config()
    results = {node: placement_baseline(s, cfg, node, archs, tmp_path, map_fn=map)
               for node in s.path}
    for node, result in results.items():
        assert result.name == f"{node} only" and len(result.offered) == 2
        for arch, ev in zip(archs, result.offered, strict=True):
            assert ev.arch == arch.name and ev.feasible
            busy = [part for part in ev.design.split(" -> ") if not part.endswith(":0]")
                    and not part.endswith(f"[{arch.n_blocks}:{arch.n_blocks}]")]
            assert busy == [f"{node}[0:{arch.n_blocks}]"], ev.design
    # device only, nothing queued: latency = FLOPs / device FLOP/s, a closed form
    for arch, ev in zip(archs, results["phone"].offered, strict=True):
        flops = profile_model(arch, s.input_shape, 10).total_flops
        assert ev.latency_s == pytest.approx(flops / 3e8, rel=1e-9)
    # cloud only: the raw input crosses both links
    raw_bits = 3 * 64 * 64 * 8
    for arch, ev in zip(archs, results["cloud"].offered, strict=True):
        flops = profile_model(arch, s.input_shape, 10).total_flops
        expect = raw_bits / 10e6 + 0.001 + raw_bits / 100e6 + 0.01 + flops / 1e12
        assert ev.latency_s == pytest.approx(expect, rel=1e-9)
    with pytest.raises(ValueError, match="not on the path"):
        placement_baseline(s, cfg, "moon", archs, tmp_path)


def test_neurosurgeon_picks_the_best_single_split(tmp_path: Path) -> None:
    s = quiet_three_tier()
    result = neurosurgeon_baseline(s, config(), tmp_path, models=["mobilenet_v2"], map_fn=map)
    arch = resolve_architecture("mobilenet_v2")
    n, hops = arch.n_blocks, 2
    assert len(result.evaluations) == hops * (n + 1) - (hops - 1)  # all on the phone once
    (chosen,) = result.offered
    assert chosen.arch == "mobilenet_v2"
    # brute force over single splits with the no-queueing latency (exact here)
    profile = profile_model(arch, s.input_shape, 10)
    best = math.inf
    for k, head in itertools.product((1, 2), range(n + 1)):
        cuts = tuple(Cut(p) for p in [head] * k + [n] * (hops - k))
        best = min(best, no_queue_latency(Design(arch, tuple(s.path), cuts), profile, s))
    assert chosen.latency_s == pytest.approx(best, rel=1e-9)
    assert result.front() == [chosen]
    # trained as the compared designs are: the config has compression, so its plain designs
    # are fine-tuned, and so are the fixed model's (though its own space has no compression)
    from models.cache import AccuracyCache, cache_key
    from models.data import load_dataset

    key = cache_key(arch, load_dataset("mnist5k").key, config().budget.to_budget(), 0,
                    finetuned=True)
    got = AccuracyCache(tmp_path / "accuracy.sqlite").get(key)
    assert got is not None and got.accuracy == chosen.accuracy


def test_two_stage_splits_its_accuracy_flops_front_optimally(tmp_path: Path) -> None:
    s = quiet_three_tier()
    cfg = config(population=6, generations=2,  # a budget that learns: FAST stays near chance,
                 budget={"epochs": 1, "subset": 300, "batch_size": 8})  # hypervolume ~ 0
    result = two_stage_baseline(s, cfg, tmp_path, map_fn=map)
    stage1 = result.first_stage
    assert len(stage1) >= cfg.population
    pts = normalise([(e.accuracy, e.latency_s) for e in stage1], (1.0, 1.0))
    front = {e.arch for e, m in zip(stage1, nondominated(pts), strict=True) if m}
    assert {e.arch for e in result.offered} == front
    for e in stage1:  # stage one's "latency" is compute alone: FLOPs at the device's rate
        flops = profile_model(resolve_architecture(e.arch), s.input_shape, 10).total_flops
        assert e.latency_s == pytest.approx(flops / 3e8, rel=1e-12)
    for e in result.offered:
        arch = resolve_architecture(e.arch)
        dp = optimal_split(profile_model(arch, s.input_shape, 10), s, tuple(s.path))
        assert e.latency_s == pytest.approx(dp.latency_s, rel=1e-9)
    assert 0 < result.hypervolume() <= 1


def test_lambda_sweep_picks_the_true_maximiser_of_each_lambda(tmp_path: Path) -> None:
    """Each lambda's pick must maximise accuracy - lambda x latency over the WHOLE design space,
    found by brute force: every design of a 4-block architecture on a one-hop route (20 designs:
    the split and the compression of the cut), scored by a separate Evaluator with its own cache
    (so its accuracies come from training afresh, not from the sweep's cache), its latencies
    checked against the closed-form no-queueing latency. The space has a real trade-off: the
    most accurate design is not the fastest, and the designs picked do not all coincide.

    Catches: a pick by the wrong objective (sign, units, another run's lambda), a sweep whose
    runs do not search (the pooled evaluations would miss an optimum), and a sweep that trains
    a model twice or whose cache answers for two models (the count of trainings). The pooling is
    then checked on runs built by hand from the brute force, which catches picks taken from
    each run's own evaluations (or from one run's) instead of the pool, and an infeasible
    design picked."""
    d = three_tier()
    d["input_shape"] = [3, 64, 64]
    d["nodes"] = {"phone": {"kind": "device", "flops_per_s": 3e8, "power_w": 2.0},
                  "edge": {"kind": "edge", "flops_per_s": 1e11, "servers": 2}}
    d["links"] = d["links"][:1]
    d["path"] = ["phone", "edge"]
    d["pipeline"] = d["pipeline"][:3]
    d["workload"] = {"sources": ["phone"], "tasks": 30, "warmup_tasks": 0,
                     "arrivals": {"process": "periodic", "rate_hz": 1.0}}  # nothing queues
    s = scenario_from_dict(d)
    arch = ArchSpec("c4", (Conv(8, stride=2), Conv(16, stride=2), Conv(32, stride=2), Head()))
    arch_file = tmp_path / "c4.json"
    arch_file.write_text(arch.to_json(), encoding="utf-8")
    deadline = 0.012  # some designs miss it: they may not be picked
    base = config(architecture=str(arch_file), compression=True, dataset="digits",
                  budget={"epochs": 2, "subset": 600, "batch_size": 32}, deadline_s=deadline)

    # brute force: every design, trained afresh in a cache of its own
    brute = Evaluator(s, base, str(tmp_path / "brute.sqlite"))
    designs = list(all_designs(brute.layout))
    assert len(designs) == 2 + 3 * len(BOTTLENECKS) * len(BIT_WIDTHS)  # ends + 3 inner cuts
    truth = {e.genome: e for e in brute.evaluate(designs)}
    assert len(truth) == len(designs) and all(e.status in ("ok", "infeasible")
                                              for e in truth.values())
    for g, e in truth.items():  # latency: the closed form (one request alone on the network)
        design = brute.layout.decode(g)
        assert e.latency_s == pytest.approx(
            no_queue_latency(design, brute.profile(design), s), rel=1e-9), e.design
    feasible = [e for e in truth.values() if e.latency_s <= deadline]
    assert 0 < len(feasible) < len(truth)

    def best(lam: float) -> float:
        return max(e.accuracy - lam * e.latency_s for e in feasible)

    calls: list[int] = []

    def counting(fn: Any, jobs: Any) -> Any:
        jobs = list(jobs)
        calls.append(len(jobs))
        return map(fn, jobs)

    lams = [0.0, 1.0, 10.0, 30.0, 1000.0]
    sweep = lambda_sweep(s, base.with_changes(population=8, generations=3), lams,
                         tmp_path / "sweep", map_fn=counting)
    assert [r.config.lam for r in sweep.runs] == lams
    assert all(r.config.objective == "scalarized" for r in sweep.runs)
    models = {(e.arch, e.design.partition(" (")[2]) for r in sweep.runs
              for e in r.evaluations.values()}  # architecture and its compressing cuts
    # one cache for the sweep: each model trained once, and the architecture's parent, which
    # every model (the plain one too) fine-tunes from
    assert sum(calls) == len(models) + 1
    chosen = sweep.choices()
    for lam, pick in zip(lams, chosen, strict=True):
        ref = truth[pick.genome]  # the same design, trained and simulated independently
        assert (pick.accuracy, pick.latency_s) == (ref.accuracy, pytest.approx(ref.latency_s))
        assert pick.latency_s <= deadline, (lam, pick.design)
        assert pick.accuracy - lam * pick.latency_s == pytest.approx(best(lam), abs=1e-12), \
            (lam, pick.design)
    # the ends of the sweep: the most accurate feasible design, and the fastest one
    assert chosen[0].accuracy == max(e.accuracy for e in feasible)
    assert chosen[-1].latency_s == pytest.approx(min(e.latency_s for e in feasible))
    assert chosen[0].accuracy > chosen[-1].accuracy and chosen[0].latency_s > chosen[-1].latency_s

    # the pooling itself, on runs made by hand from the brute force: run i saw every design but
    # its own lambda's optimum (another run saw that one), and all saw an infeasible decoy that
    # beats everything on both objectives
    optimum = []
    for lam in lams:
        top = best(lam)
        optimum.append(next(e.genome for e in feasible
                            if e.accuracy - lam * e.latency_s == top))
    assert len(set(optimum)) > 1
    decoy = dataclasses.replace(feasible[0], genome=(-1,), accuracy=1.0, latency_s=0.0,
                                violation=1.0, status="infeasible")
    runs = [SearchResult(base.with_changes(objective="scalarized", lam=lam),
                         {g: e for g, e in [*truth.items(), ((-1,), decoy)] if g != opt}, [])
            for lam, opt in zip(lams, optimum, strict=True)]
    for lam, pick in zip(lams, LambdaSweep(tuple(lams), runs).choices(), strict=True):
        assert pick.accuracy - lam * pick.latency_s == pytest.approx(best(lam), abs=1e-12), \
            (lam, pick.design)
    with pytest.raises(ValueError, match="lams"):
        lambda_sweep(s, config(), [-1.0], tmp_path)


def test_dask_executor_against_a_local_cluster(tmp_path: Path) -> None:
    """A search whose trainings run on a Dask worker gives the serial search's evaluations,
    accuracies included. The budget learns (38 steps: 0.24-0.48 on mnist5k), so a worker that
    trained with another seed or other data would show; with ``FAST`` every accuracy was the
    chance level, 0.1, whatever the worker did."""
    distributed = pytest.importorskip("distributed")
    s = quiet_three_tier()
    learns = {"epochs": 1, "subset": 300, "batch_size": 8}
    serial = run_search(s, config(generations=1, population=4, budget=learns),
                        tmp_path / "serial")
    accuracies = [e.accuracy for e in serial.evaluations.values()]
    assert len(set(accuracies)) > len(accuracies) // 2 and max(accuracies) > 0.3, accuracies
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        cfg = config(generations=1, population=4, budget=learns, executor="dask",
                     scheduler=cluster.scheduler_address)
        remote = run_search(s, cfg, tmp_path / "dask")
    assert remote.evaluations == serial.evaluations  # same training seed: same accuracies
    with pytest.raises(ValueError, match="scheduler"):
        config(executor="dask")
    bad = config(generations=1, executor="dask", scheduler="tcp://127.0.0.1:9")
    with pytest.raises(ValueError, match="cannot reach the Dask scheduler"):
        run_search(s, bad, tmp_path / "bad")
