"""`jmsnas experiment all --quick` end to end, and the model properties its numbers must show."""

from __future__ import annotations

import csv
import importlib
import math
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from experiments.common import scenario_variant
from experiments.runner import EXPERIMENTS
from jmsnas.main import main

from .conftest import alone
from .tables import WRITE_TABLES, check_table, shipped_cache

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``jmsnas experiment all --quick``, its proxy trainings read from the shipped table
    ``tests/data/experiments-quick.csv`` (:mod:`tests.tables`; where Fashion-MNIST is on
    disk: the table's trainings are on it), put in the run's shared accuracy cache as a rerun
    would find it. Every search, simulation, deployment and figure runs. Fails if the run
    trained anything the table lacks. The fidelity experiment runs first, with the machine to
    itself (:func:`tests.conftest.alone`): beside another test of the suite its moderate-load
    mean was once 46% off, because the neighbour's load changed between its calibration and
    its run; ``all`` then reuses its finished cases."""
    from models.fashion_mnist import find_fashion_mnist

    out = tmp_path_factory.mktemp("experiments")
    table = find_fashion_mnist() is not None
    if WRITE_TABLES and not table:
        pytest.fail("JMSNAS_WRITE_TABLES=1: the experiments' table is on Fashion-MNIST, which "
                    "is not on disk here")
    imported = shipped_cache(out / "accuracy.sqlite", "experiments-quick") if table else 0
    with alone(tmp_path_factory):  # see tests/conftest.py; its cases are kept for `all`
        assert main(["experiment", "fidelity", "--quick", "--out", str(out)]) == 0
    assert main(["experiment", "all", "--quick", "--out", str(out)]) == 0
    if table:
        check_table(out / "accuracy.sqlite", "experiments-quick", imported)
    return out


def read(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def documented_columns() -> dict[str, list[str]]:
    """Each experiment module's CSV columns, by file name."""
    out = {}
    for name in EXPERIMENTS:
        module = importlib.import_module(f"experiments.{name}")
        for attr in dir(module):
            if attr.endswith("COLUMNS"):
                prefix = attr.removesuffix("COLUMNS").rstrip("_").lower()
                out[(name, prefix)] = getattr(module, attr)
    return out  # type: ignore[return-value]


EXPECTED = {
    "validate": {"validate.csv": "", "validate.png": None},
    "proxy": {"budgets.csv": "budget", "accuracies.csv": "accuracy", "proxy.png": None},
    "tradeoff": {"tradeoff.csv": "", "tradeoff.png": None},
    "pareto": {"pareto_points.csv": "point", "pareto_hypervolume.csv": "hv",
               "pareto_summary.csv": "summary", "pareto.png": None},
    "channel": {"channel.csv": "", "channel_robustness.csv": "matrix", "channel.png": None},
    "adaptive": {"adaptive.csv": "plan", "adaptive_search.csv": "search",
                 "adaptive_paired.csv": "paired", "adaptive.png": None},
    "load": {"load_rate.csv": "rate", "load_devices.csv": "device", "load.png": None},
    "hops": {"hops.csv": "", "hops_summary.csv": "summary", "hops_fronts.csv": "point",
             "hops.png": None},
    "speedup": {"speedup.csv": "", "speedup.png": None},
    "convergence": {"convergence.csv": "", "convergence_summary.csv": "summary",
                    "convergence_paired.csv": "paired", "convergence.png": None},
    "fidelity": {"fidelity.csv": "", "fidelity_stages.csv": "stage", "fidelity.png": None},
}


def test_every_file_exists_with_its_documented_columns(quick_run: Path) -> None:
    readme = README.read_text(encoding="utf-8")
    columns = documented_columns()
    assert set(EXPECTED) == set(EXPERIMENTS)
    for name, files in EXPECTED.items():
        assert (quick_run / name / "config.yaml").stat().st_size > 0
        for fname, kind in files.items():
            path = quick_run / name / fname
            assert path.stat().st_size > 0, path
            if kind is None:
                assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
                continue
            header, rows = read(path)
            assert header == list(columns[(name, kind)]), path
            assert rows, path
            assert f"`{fname}`" in readme, f"README does not document {fname}"
            for col in header:
                assert f"`{col}`" in readme, f"README does not document column {col} of {fname}"
    report = (quick_run / "report.md").read_text(encoding="utf-8")
    for name, files in EXPECTED.items():
        for fname, kind in files.items():
            if kind is None:
                assert f"({name}/{fname})" in report


HALF_WIDTH_LIMIT = {"M/M/1": 0.10, "M/D/1": 0.05, "Rayleigh rate": 0.03}
"""Largest 95% half-width of each validate check, relative to its closed form. The quick run
(10 replications of 20,000 tasks) gives at most 4.6% for M/M/1 (at rho 0.8: over 60 seeds
median 4.3%, largest 7.2%), 1.2% for M/D/1 and 1.0% for the Rayleigh rate."""


def test_validate_agrees_with_the_closed_forms(quick_run: Path) -> None:
    """Every point lies within three 95% half-widths of a closed form recomputed here (M/M/1
    1/(mu - lambda); M/D/1 Pollaczek-Khinchine; the Rayleigh rate by numerical quadrature of
    B E[log2(1 + g X)], X ~ Exp(1), not the experiment's exponential-integral formula), AND
    each half-width is a small fraction of the closed form (:data:`HALF_WIDTH_LIMIT`), so that
    "within three half-widths" means agreement to a few percent.

    Catches a biased simulator or a wrong closed form in the experiment, and also a simulator
    with a huge variance, or an interval made too wide (the sd instead of the standard error,
    say), which the three-half-widths check alone would let through; and points left out."""
    from scipy import integrate

    from experiments.common import load_experiment_config

    c = load_experiment_config("validate", quick=True)
    mu, bw = float(c["service_rate_hz"]), float(c["bandwidth_hz"])

    def rayleigh(snr_db: float) -> float:
        g = 10 ** (snr_db / 10)
        value, err = integrate.quad(lambda x: math.log2(1 + g * x) * math.exp(-x), 0, math.inf)
        assert err < 1e-8
        return bw * value

    closed_forms = {
        ("M/M/1", rho): 1 / (mu - rho * mu) for rho in c["rhos"]
    } | {
        ("M/D/1", rho): 1 / mu + rho / (2 * mu * (1 - rho)) for rho in c["rhos"]
    } | {("Rayleigh rate", snr): rayleigh(snr) for snr in c["snr_db"]}
    _, rows = read(quick_run / "validate" / "validate.csv")
    assert len(rows) == len(closed_forms)
    for r in rows:
        closed = closed_forms.pop((r["check"], float(r["x"])))
        sim, half = float(r["simulated"]), float(r["ci95_half_width"])
        assert float(r["closed_form"]) == pytest.approx(closed, rel=1e-5), r  # 6 digits
        assert 0 < half <= HALF_WIDTH_LIMIT[r["check"]] * closed, r
        assert abs(sim - closed) <= 3 * half, r
    assert not closed_forms


def test_proxy_study_scores_every_architecture_and_records_its_noise(quick_run: Path) -> None:
    """Catches a proxy study that drops architectures or seeds, mislabels its rows, computes
    tau from the wrong pairs (a budget against itself would give 1), or leaves the measured
    noise out of the cache that the experiments' searches share."""
    import sqlite3

    import yaml

    from experiments.common import load_experiment_config

    cfg = load_experiment_config("proxy", quick=True)
    _, rows = read(quick_run / "proxy" / "accuracies.csv")
    _, table = read(quick_run / "proxy" / "budgets.csv")
    kinds = {r["budget"]: r["kind"] for r in table}
    assert list(kinds.values()).count("truth") == 1
    assert list(kinds.values()).count("variant") == (1 if cfg.get("variant") else 0)
    n = int(cfg["architectures"])
    for name in kinds:
        mine = [r for r in rows if r["budget"] == name]
        seeds = cfg["truth"]["seeds"] if kinds[name] == "truth" else cfg["seeds"]
        assert len(mine) == n * len(seeds) and len({r["arch"] for r in mine}) == n, name
        assert all(r["status"] == "ok" and 0 < float(r["accuracy"]) <= 1 for r in mine), name
    from experiments.proxy import MIN_BOOTSTRAP

    for r in table:
        lo, tau, hi = (float(r[k]) for k in ("tau_truth_lo", "tau_truth", "tau_truth_hi"))
        assert int(r["architectures_used"]) == n, r
        if r["kind"] == "truth":  # the ground truth against its own mean is not reported
            assert math.isnan(tau) and math.isnan(lo) and math.isnan(hi), r
        else:
            assert -1 <= tau <= 1, r
            if n >= MIN_BOOTSTRAP:
                assert -1 <= lo <= hi <= 1, r
            else:  # too few architectures for an interval: none is claimed
                assert math.isnan(lo) and math.isnan(hi), r
        assert float(r["seed_sd"]) >= 0 and float(r["seconds_per_eval"]) > 0, r
    assert sum(r["default"] == "True" for r in table) == 1
    with sqlite3.connect(quick_run / "accuracy.sqlite") as db:
        noise = db.execute("SELECT sd, architectures, source FROM proxy_noise").fetchall()
    recorded = [row for row in noise if row[2] == "proxy experiment"]
    assert len(recorded) == sum(r["kind"] == "proxy" for r in table)
    assert all(arch == n for _, arch, _ in recorded)
    saved = yaml.safe_load((quick_run / "proxy" / "config.yaml").read_text())
    assert saved["config"]["dataset"] in ("fashion-mnist", "mnist5k")


def test_adaptive_policies_follow_the_channel(quick_run: Path) -> None:
    """On a Gilbert-Elliott uplink whose states last seconds the DP policy's p95 is far below
    the static design's (the quick run: 0.16x), and every method's row names its states; the
    policy search's front is re-measured and compared with the static one's."""
    import yaml

    cfg = yaml.safe_load((quick_run / "adaptive" / "config.yaml").read_text())["config"]
    _, rows = read(quick_run / "adaptive" / "adaptive.csv")
    slow = {r["method"]: r for r in rows if r["condition"] == "GE 30% bad, 2 s"}
    assert set(slow) == {"static", "policy", "threshold", "bottleneck", "oracle"}
    assert float(slow["static"]["p95_vs_static"]) == 1.0
    assert float(slow["policy"]["p95_latency_s"]) < 0.5 * float(slow["static"]["p95_latency_s"])
    assert int(slow["policy"]["states"]) == 2 and " | " in slow["policy"]["designs"]
    for r in rows:
        assert 0.0 <= float(r["within_deadline"]) <= 1.0
        assert int(r["states"]) <= int(cfg["states"]) or r["method"] in ("threshold", "oracle")
    _, search = read(quick_run / "adaptive" / "adaptive_search.csv")
    assert {r["search"] for r in search} == {"static", "policy"}
    assert all(" | " in r["design"] for r in search if r["search"] == "policy")
    for r in search:  # the oracle of the design's own architecture and compressions: at this
        # light load (no queueing to speak of) a lower bound, up to the replications' noise
        own, best = float(r["p95_same_paths_s"]), float(r["oracle_p95_s"])
        # (the CSV keeps six significant digits)
        assert float(r["p95_vs_oracle"]) == pytest.approx(own / best, rel=1e-5)
        assert own >= 0.95 * best, r
        assert float(r["dp_policy_p95_s"]) >= 0.95 * best, r
    _, paired = read(quick_run / "adaptive" / "adaptive_paired.csv")
    assert [int(r["seed"]) for r in paired] == cfg["seeds"]


def test_latency_of_a_fixed_design_does_not_fall_when_the_channel_rate_drops(
        quick_run: Path) -> None:
    _, rows = read(quick_run / "channel" / "channel_robustness.csv")
    checked = 0
    for design in {r["designed_for"] for r in rows}:
        for family in ("distance", "extreme"):  # same fading draws within a family
            sel = sorted((r for r in rows if r["designed_for"] == design
                          and r["family"] == family), key=lambda r: -float(r["mean_rate_bps"]))
            # an overloaded (unstable) transfer has no latency: it counts as infinitely slow,
            # and a slower channel must not make it stable again
            lat = [math.inf if r["status"] == "unstable" else float(r["latency_s"])
                   for r in sel]
            assert len(lat) == 2 and all(not math.isnan(x) for x in lat), (design, lat)
            assert lat[1] == math.inf or lat[0] < lat[1] * (1 + 1e-12), (design, family, lat)
            checked += 1
    assert checked == 8


def test_a_slow_uplink_keeps_more_flops_on_the_device(quick_run: Path) -> None:
    _, rows = read(quick_run / "channel" / "channel.csv")
    by = {r["condition"]: r for r in rows}
    slow, fast = by["0.5 Mbit/s"], by["500 Mbit/s"]
    assert float(slow["fastest_device_share"]) > float(fast["fastest_device_share"])


def test_p95_latency_of_a_fixed_design_grows_with_the_request_rate(quick_run: Path) -> None:
    _, rows = read(quick_run / "load" / "load_rate.csv")
    for label in {r["label"] for r in rows}:
        sel = sorted((r for r in rows if r["label"] == label), key=lambda r: float(r["rate_hz"]))
        # overloaded (unstable) at high rates: no latency, infinitely slow, and stays so
        p95 = [math.inf if r["status"] == "unstable" else float(r["p95_latency_s"])
               for r in sel]
        assert not any(math.isnan(x) for x in p95), (label, p95)
        assert p95 == sorted(p95) and p95[-1] > p95[0], (label, p95)


def test_rerun_resumes_the_finished_hops_searches(quick_run: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from experiments.common import load_experiment_config
    from search.evaluate import Evaluator

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a finished search evaluated designs again")

    seeds = load_experiment_config("hops", quick=True)["seeds"]
    checkpoints = sorted((quick_run / "hops" / "searches").glob("*/checkpoint.pkl"))
    assert len(checkpoints) == 3 * len(seeds)  # a folder per topology and seed
    stamps = [p.stat().st_mtime_ns for p in checkpoints]
    before = (quick_run / "hops" / "hops.csv").read_text(encoding="utf-8")
    monkeypatch.setattr(Evaluator, "evaluate_designs", refuse)
    assert main(["experiment", "hops", "--quick", "--out", str(quick_run)]) == 0
    assert sorted((quick_run / "hops" / "searches").glob("*/checkpoint.pkl")) == checkpoints
    assert [p.stat().st_mtime_ns for p in checkpoints] == stamps
    assert (quick_run / "hops" / "hops.csv").read_text(encoding="utf-8") == before


def seed_statistics(values: list[float]) -> dict[str, float]:
    """Mean, sd, Student-t 95% interval, min and max over seeds, from numpy and scipy (not the
    experiments' code): ``scipy.stats.t.interval`` with scale sd / sqrt(n)."""
    import numpy as np
    from scipy import stats

    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if x.size < 2:
        nan = math.nan
        return {"hv_mean": mean, "hv_sd": nan, "hv_ci95_lo": nan, "hv_ci95_hi": nan,
                "hv_min": mean, "hv_max": mean}
    sd = float(x.std(ddof=1))
    lo, hi = stats.t.interval(0.95, x.size - 1, loc=mean, scale=sd / math.sqrt(x.size))
    return {"hv_mean": mean, "hv_sd": sd, "hv_ci95_lo": float(lo), "hv_ci95_hi": float(hi),
            "hv_min": float(x.min()), "hv_max": float(x.max())}


def assert_summary(row: dict[str, Any], values: list[float]) -> None:
    """A summary row against :func:`seed_statistics` of the per-seed values. Both CSVs carry
    six significant digits: the per-seed values here are off by up to 5e-7 of a hypervolume
    below 1, which the interval multiplies by up to t(0.975, n - 1) (12.7 for two seeds)."""
    from scipy import stats

    assert int(row["seeds"]) == len(values), row
    n = len(values)
    spread = 2e-6 * (1 + (stats.t.ppf(0.975, n - 1) if n > 1 else 0))
    for key, want in seed_statistics(values).items():
        got = float(row[key])
        if math.isnan(want):
            assert math.isnan(got), (key, row)
        else:
            tol = 2e-6 if key in ("hv_mean", "hv_min", "hv_max") else spread
            assert got == pytest.approx(want, rel=2e-6, abs=tol), (key, row, values)


def test_over_seeds_of_pareto_and_hops_is_the_t_interval() -> None:
    """The summary's statistics against a hand computation: 1..5 has mean 3, sd sqrt(2.5) and
    t(0.975, 4) = 2.7764451 (tables), so a half-width of 2.7764451 sqrt(2.5) / sqrt(5)."""
    from experiments.common import median_seed, over_seeds

    s = over_seeds([3.0, 1.0, 5.0, 2.0, 4.0])
    half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)
    assert s["seeds"] == 5 and s["hv_mean"] == pytest.approx(3.0)
    assert s["hv_sd"] == pytest.approx(math.sqrt(2.5))
    assert (s["hv_ci95_lo"], s["hv_ci95_hi"]) == pytest.approx((3 - half, 3 + half), rel=1e-7)
    assert (s["hv_min"], s["hv_max"]) == (1.0, 5.0)
    one = over_seeds([0.25])  # one value: no spread claimed
    assert one["hv_mean"] == 0.25 and math.isnan(one["hv_sd"]) and math.isnan(one["hv_ci95_lo"])
    assert median_seed({0: 0.3, 1: 0.1, 2: 0.2}) == 2
    assert median_seed({0: 0.3, 1: 0.1}) == 1  # the lower median


def test_pareto_and_hops_refuse_bad_seeds() -> None:
    from experiments.common import Context

    for bad in (None, [], [0, 0], [1, -2], "0, 1", [0.5], [True]):
        ctx = Context("pareto", Path("/tmp/unused"), True, False, {"seeds": bad})
        with pytest.raises(ValueError, match=r"^pareto config: seeds: a non-empty list"):
            ctx.seeds()


def test_pareto_runs_every_seeded_method_on_every_seed_and_reports_the_spread(
        quick_run: Path) -> None:
    """Catches a seeded method run on one seed only (or the same seed twice: the joint searches
    must differ), a seed's placements built on another seed's architectures, Neurosurgeon
    (which no GA seed changes) counted once per seed, a summary that does not follow from the
    per-seed rows, and a report without the table."""
    from experiments.common import load_experiment_config
    from experiments.pareto import FIXED, JOINT

    cfg = load_experiment_config("pareto", quick=True)
    seeds = cfg["seeds"]
    assert len(seeds) >= 2 and len(load_experiment_config("pareto", quick=False)["seeds"]) >= 5
    path = scenario_variant(cfg["scenario"], cfg.get("overrides")).path
    seeded = {JOINT, "random search", "two-stage", *(f"{node} only" for node in path)}
    _, rows = read(quick_run / "pareto" / "pareto_hypervolume.csv")
    assert {r["method"] for r in rows} == seeded | {FIXED}
    for method in seeded:
        assert sorted(int(r["seed"]) for r in rows if r["method"] == method) == sorted(seeds)
    assert [r["seed"] for r in rows if r["method"] == FIXED] == [""]
    _, summary = read(quick_run / "pareto" / "pareto_summary.csv")
    assert [r["method"] for r in summary] == list(dict.fromkeys(r["method"] for r in rows))
    for row in summary:
        mine = [r for r in rows if r["method"] == row["method"]]
        assert_summary(row, [float(r["remeasured_hypervolume"]) for r in mine])
        assert float(row["search_hv_mean"]) == pytest.approx(
            sum(float(r["hypervolume"]) for r in mine) / len(mine), rel=2e-5, abs=2e-6)

    searches = {}  # every design each seed's joint search evaluated, from its checkpoint
    for s in seeds:
        (folder,) = (quick_run / "pareto" / "searches").glob(f"joint-seed{s}-*")
        with open(folder / "checkpoint.pkl", "rb") as fh:
            searches[s] = pickle.load(fh)["evaluations"]
    assert len({frozenset(evs) for evs in searches.values()}) == len(seeds)  # seeds differ
    _, points = read(quick_run / "pareto" / "pareto_points.csv")
    for s in seeds:  # (a node may be too slow for every architecture: no feasible point)
        archs = {e.arch for e in searches[s].values()}
        placed = {node: {p["arch"] for p in points
                         if p["method"] == f"{node} only" and p["seed"] == str(s)}
                  for node in path}
        assert any(placed.values()) and all(a <= archs for a in placed.values()), (s, placed)
    report = (quick_run / "report.md").read_text(encoding="utf-8")
    assert "| method | seeds | mean hv (re-measured) | 95% CI | min to max |" in report
    best = max(summary, key=lambda r: float(r["hv_mean"]))
    assert f"| {best['method']} | " in report


def test_hops_searches_every_topology_on_every_seed_and_reports_the_spread(
        quick_run: Path) -> None:
    """Catches a topology searched on one seed only (or the same seed twice), a summary that
    does not follow from the per-seed rows, fronts of one seed only, and a report without the
    table."""
    from experiments.common import load_experiment_config

    seeds = load_experiment_config("hops", quick=True)["seeds"]
    assert len(seeds) >= 2 and len(load_experiment_config("hops", quick=False)["seeds"]) >= 5
    _, rows = read(quick_run / "hops" / "hops.csv")
    topologies = ["two tiers", "three tiers", "four tiers"]
    assert list(dict.fromkeys(r["topology"] for r in rows)) == topologies
    for t in topologies:
        assert sorted(int(r["seed"]) for r in rows if r["topology"] == t) == sorted(seeds)
    _, summary = read(quick_run / "hops" / "hops_summary.csv")
    assert [r["topology"] for r in summary] == topologies
    for row in summary:
        mine = [r for r in rows if r["topology"] == row["topology"]]
        assert {r["split_points"] for r in mine} == {row["split_points"]}
        assert_summary(row, [float(r["hypervolume"]) for r in mine])
    _, points = read(quick_run / "hops" / "hops_fronts.csv")
    for t in topologies:
        fronts = {s: {(p["arch"], p["design"]) for p in points
                      if p["topology"] == t and p["seed"] == str(s)} for s in seeds}
        assert all(fronts.values()), t
        sizes = {int(r["seed"]): int(r["front_size"]) for r in rows if r["topology"] == t}
        assert {s: len(f) for s, f in fronts.items()} == sizes, t
    runs = [p.parent.name for p in (quick_run / "hops" / "searches").glob("*/checkpoint.pkl")]
    assert sorted(f.rsplit("-", 1)[0] for f in runs) == sorted(
        f"{t.replace(' ', '-')}-seed{s}" for t in topologies for s in seeds)
    report = (quick_run / "report.md").read_text(encoding="utf-8")
    assert "| topology | split points | seeds | mean hv | 95% CI | min to max |" in report


def test_speedup_table_agrees_with_closed_forms(quick_run: Path) -> None:
    """Every row of the quick run's speedup.csv (reference models and the joint search's
    designs, every uplink) against closed forms by hand (6 significant digits in the CSV), and
    single split <= min(device, edge, cloud only), multi-split <= single split."""
    from experiments.common import load_experiment_config

    from .test_speedup import check_speedup_row, placement_closed_forms

    c = load_experiment_config("speedup", quick=True)
    _, rows = read(quick_run / "speedup" / "speedup.csv")
    uplinks = {float(u) for u in c["uplinks_bps"]}
    for label in [*c["models"], "joint fastest", "joint most accurate"]:
        assert {float(r["uplink_bps"]) for r in rows if r["model"] == label} == uplinks, label
    for r in rows:
        check_speedup_row(r, placement_closed_forms(r["arch"], float(r["uplink_bps"]), c), 2e-5)
        if r["model"].startswith("joint"):
            assert float(r["searched_s"]) > 0 and 0 < float(r["accuracy"]) <= 1, r
    report = (quick_run / "report.md").read_text(encoding="utf-8")
    assert "no_queue_latency" in report
    assert "| model | " + " | ".join(f"{u / 1e6:g} Mbit/s" for u in sorted(uplinks)) in report


def test_convergence_compares_every_method_on_every_seed(quick_run: Path) -> None:
    """Every method has a curve per seed with the same budgets as that seed's NSGA-II run, and
    the summary's numbers are what the curves say: the final mean, the reference (no run above
    it), the evaluations to 95% of it, the paired difference to NSGA-II."""
    import yaml

    from experiments.convergence import METHODS

    cfg = yaml.safe_load((quick_run / "convergence" / "config.yaml").read_text())["config"]
    seeds, methods = cfg["seeds"], [METHODS[m] for m in cfg["methods"]]
    _, rows = read(quick_run / "convergence" / "convergence.csv")
    _, summary = read(quick_run / "convergence" / "convergence_summary.csv")
    (name,) = [e["name"] for e in cfg["scenarios"]]  # one scenario in the quick run
    assert {r["scenario"] for r in rows} == {r["scenario"] for r in summary} == {name}
    assert [r["method"] for r in summary] == methods
    curve = {(r["method"], int(r["seed"]), int(r["step"])): r for r in rows}
    steps = {k[2] for k in curve}
    for m in methods:
        for seed in seeds:
            for k in steps:  # the same budgets as NSGA-II at every step
                assert curve[(m, seed, k)]["evaluations"] == curve[("NSGA-II", seed, k)][
                    "evaluations"]
    last = max(steps)
    tol = 2e-6  # the CSV files hold six significant digits: two roundings of numbers below 1
    reference = float(summary[0]["reference_hv"])
    finals = {}
    for r in summary:
        finals[r["method"]] = [float(curve[(r["method"], s, last)]["hypervolume"]) for s in seeds]
        assert float(r["hv_mean"]) == pytest.approx(np.mean(finals[r["method"]]), abs=tol)
        assert max(finals[r["method"]]) <= reference + tol
        reached = []
        for seed in seeds:
            hit = [int(curve[(r["method"], seed, k)]["evaluations"]) for k in sorted(steps)
                   if float(curve[(r["method"], seed, k)]["hypervolume"]) >= 0.95 * reference]
            if hit:
                reached.append(hit[0])
        assert int(r["to95_reached"]) == len(reached)
        # the median over all runs, one that never got there above every budget
        never = [math.inf] * (len(seeds) - len(reached))
        median = float(np.median(sorted(reached + never)))
        if math.isfinite(median):
            assert float(r["to95_median"]) == pytest.approx(median)
        else:
            assert math.isnan(float(r["to95_median"]))
    for r in summary[1:]:
        diff = np.subtract(finals["NSGA-II"], finals[r["method"]])
        assert float(r["diff_vs_nsga2"]) == pytest.approx(diff.mean(), abs=tol)
    # every budget, paired by seed: what the curves say
    _, by_budget = read(quick_run / "convergence" / "convergence_paired.csv")
    assert [(r["method"], int(r["evaluations"])) for r in by_budget] == [
        (m, int(curve[("NSGA-II", seeds[0], k)]["evaluations"])) for m in methods[1:]
        for k in sorted(steps)]
    for r, (m, k) in zip(by_budget, [(m, k) for m in methods[1:] for k in sorted(steps)],
                         strict=True):
        ga = [float(curve[("NSGA-II", s, k)]["hypervolume"]) for s in seeds]
        other = [float(curve[(m, s, k)]["hypervolume"]) for s in seeds]
        assert float(r["diff_vs_nsga2"]) == pytest.approx(np.mean(np.subtract(ga, other)),
                                                          abs=tol)
        pairs = list(zip(ga, other, strict=True))  # six digits: a tie may hide a tiny lead
        assert sum(a > b for a, b in pairs) <= int(r["nsga2_ahead"]) <= sum(
            a >= b for a, b in pairs)


def test_paired_comparison_against_exact_enumeration() -> None:
    """The Wilcoxon signed-rank p-value against the exact null distribution by enumerating all
    2^n sign patterns, and the CI half-width against the t formula written out."""
    import itertools

    from scipy import stats as st

    from experiments.convergence import paired, to_reference

    a = [0.81, 0.79, 0.84, 0.80, 0.83, 0.82, 0.85]
    b = [0.78, 0.80, 0.79, 0.77, 0.80, 0.76, 0.81]
    d = np.subtract(a, b)
    ranks = st.rankdata(np.abs(d))
    observed = ranks[d > 0].sum()
    n = d.size
    sums = [sum(r for r, s in zip(ranks, signs, strict=True) if s)
            for signs in itertools.product((0, 1), repeat=n)]
    total = ranks.sum()
    extreme = max(observed, total - observed)
    exact = sum(1 for t in sums if t >= extreme or t <= total - extreme) / 2 ** n
    mean, half, p = paired(a, b)
    assert mean == pytest.approx(d.mean())
    assert half == pytest.approx(2.446912 * d.std(ddof=1) / np.sqrt(n), rel=1e-6)  # t(.975, 6)
    assert p == pytest.approx(exact, rel=1e-9)
    assert paired(a, a)[2] == 1.0  # no difference at all
    history = [{"evaluations": 12, "hypervolume": 0.5}, {"evaluations": 24, "hypervolume": 0.7}]
    assert to_reference(history, 0.6) == 24 and np.isnan(to_reference(history, 0.8))


def test_bad_experiment_input_gets_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["experiment", "nosuch", "--quick", "--out", "/tmp/unused"]) == 2
    assert "unknown experiment 'nosuch'" in capsys.readouterr().err
    for bad in ("nodes.moon.flops_per_s", "links.9.channel", "links.x", "name.first"):
        with pytest.raises(ValueError, match=rf"^override {bad!r}: no such place"):
            scenario_variant("three-tier", {bad: 1.0})
    cut = scenario_variant("three-tier", {"path": ["phone", "edge"], "links.1": None,
                                          "pipeline.4": None, "pipeline.3": None,
                                          "nodes.phone.memory_bytes": None})  # deletions
    assert len(cut.links) == 1 and cut.nodes["phone"].memory_bytes is None


@pytest.mark.slow
def test_fidelity_predictions_follow_the_deployments(quick_run: Path) -> None:
    """The calibrated simulator against real deployments, every design x load x channel case
    of the quick run: splits 4 and 8 on the fading uplink and the split policy on its
    Gilbert-Elliott uplink, each at low and moderate load (the full experiment's constant
    uplink is left out, to shorten the time the suite gives this experiment alone).

    What does not depend on CPU timing is held tightly: each hop's transmission time (pacing
    along the same channel sample path; the requests start at other times than in the
    simulation, so a fading channel gives them other rates) within 5% or 1 ms, less the
    sender's measured lateness (its last chunk handed over after its due time, by the
    scheduler: 0.12-0.37 ms in standalone runs, 0.36 and 0.53 ms in two clean-clone CI runs;
    beside a busy process 0.09-0.66 ms in one quick run, where another had left split 8's
    moderate-load hop 1.13 ms over the prediction), and never negative; its propagation within
    1 ms. The latency
    bounds are wider than the experiment's targets (mean within 10% at low load, p95 within 20%
    at moderate load): on this shared two-core machine one segment's time differs by up to 30%
    between processes and runs, and the quick run calibrates with 10 runs per segment and
    measures 20 requests per case at low load, 110 at moderate load (with 70 and 140: -9% to
    +8% on the mean at low load; with 20: -3.2% to +4.6% in a run alone on an AMD EPYC).
    Wider bounds still catch a
    stage counted twice or left out. At moderate load the mean is held, not the p95: a stall of
    the shared cores moves the p95 of 110 requests by tens of percent (seen in one CI run:
    -49.9% for the compute-bound split, whose mean there was -19.3% and in seven full-size
    runs -20.2% to 0.0%; the split policy's p95 spread from -29% to +34% over its runs). The
    split policy's cases (two states, each with its own model, on a Gilbert-Elliott uplink)
    are held to the same bounds.

    Those bounds hold where the calibration found the machine quiet (``outside_cores`` under
    0.25, as in CI). Beside a CPU-bound process, one segment's time differs between the
    calibration's process and the node's by up to 80% (ResNet-18's tail after block 4: 27.7 ms
    with a coefficient of variation of 0.36 in one calibration, 15.5 ms deployed, 15.1 ms in
    the next calibration), which no model of this machine predicts; seven quick runs beside
    ``python3 -c "while True: pass"`` had worst means of +20.8% (low load) and -30.9%
    (moderate). There the mean is held within 40%.

    What the wide bound gives up is held by the replayed prediction (the simulator given the
    deployment's own mean work per node, so only the composition of the stages is tested):
    its mean within 15% at low load in every condition, and at moderate load within 15% on a
    quiet machine and 25% beside a busy one. Over thirteen quick runs, seven beside a busy process:
    -10.5% to +0.5% at low load; at moderate load -6.2% to -0.8% quiet and -16.9% to -2.7%
    busy, the worst always split 8, whose measured waits were two to three times the replay's
    (9.6 against 3.2 ms at the phone, 16.1 against 7.5 ms at the edge): beside a busy process
    the nodes' slow spells come together, and the replay draws each request's work
    independently. At low load the replay erred by -10.5% to +0.5%, so 15% catches a stage
    left out if it is more than about 16% of the mean (the edge's compute, 27-54% of it in three
    runs, either split's transfer, 22-53%, split 8's phone compute, 19-24%) and a stage counted
    twice if it is more than about 26% (the edge's compute, split 4's transfer)."""
    _, rows = read(quick_run / "fidelity" / "fidelity.csv")
    cases = {(r["design"], r["load"], r["channel"]) for r in rows}
    assert len(cases) == 6 and len(rows) == 18  # quick: the fading uplink and the policy's
    assert {c[2] for c in cases} == {"fading", "gilbert-elliott"}
    assert {c for c in cases if c[0].startswith("policy")} == {
        ("policy 8:0.5x8b|0", load, "gilbert-elliott") for load in ("low", "moderate")}
    for r in rows:
        if r["metric"] != "mean":
            continue
        quiet = float(r["outside_cores"]) < 0.25
        bound = (0.20 if r["load"] == "low" else 0.30) if quiet else 0.40
        assert abs(float(r["relative_error"])) <= bound, r
        replay = 0.15 if quiet or r["load"] == "low" else 0.25
        assert abs(float(r["replay_error"])) <= replay, r
    for r in rows:  # processors other processes kept busy during the calibration
        assert 0 <= float(r["outside_cores"]) <= len(os.sched_getaffinity(0)) + 0.1, r
    rates = {(r["design"], r["load"]): float(r["rate_hz"]) for r in rows}
    for design in {r["design"] for r in rows}:  # loads are utilisations 0.1 and 0.5
        assert rates[design, "moderate"] == pytest.approx(5 * rates[design, "low"], rel=0.01)
    _, stages = read(quick_run / "fidelity" / "fidelity_stages.csv")
    assert {r["stage"] for r in stages} == {"compute@phone", "transfer phone->edge",
                                            "compute@edge"}
    for r in stages:
        late = float(r["measured_late_s"])
        assert late >= 0 and (late == 0 or r["stage"].startswith("transfer")), r
        if r["stage"].startswith("transfer") and r["part"] == "service":
            assert float(r["predicted_s"]) == pytest.approx(float(r["measured_s"]) - late,
                                                            rel=0.05, abs=1e-3), r
        if r["stage"].startswith("transfer") and r["part"] == "propagation":
            assert float(r["predicted_s"]) == pytest.approx(float(r["measured_s"]), abs=1e-3), r


def test_a_replayed_case_takes_each_nodes_work_from_the_deployment() -> None:
    """The replay's work per node, by hand: the mean and coefficient of variation of the
    node's service over the measured requests of each state (the warm-up request left out),
    the calibration's own timing where a state has fewer than two, processor sharing off,
    and everything else the calibration's. Fails if the warm-up or the other state's requests
    are counted, or a node's column is mixed up with another's."""
    from deploy.calibrate import Calibration, PolicyCalibration, StageTiming
    from experiments.fidelity import replayed_calibration

    cal = Calibration((StageTiming("phone", 0.010, 0.1, 10), StageTiming("edge", 0.020, 0.2, 10)),
                      (8e5,), (5e-4,), 6e-4, host_cores=2.0, outside_cores=1.0)
    labels = ["compute@phone", "transfer phone->edge", "compute@edge"]
    service = np.array([[9.0, 0.1, 9.0],  # warm-up
                        [0.012, 0.1, 0.030],
                        [0.014, 0.1, 0.034],
                        [0.016, 0.1, 0.026],
                        [0.0, 0.1, 0.050]])  # the other state: everything on the edge
    measured = np.array([False, True, True, True, True])
    static = replayed_calibration(cal, labels, service, np.zeros(5, dtype=np.intp), measured)
    assert isinstance(static, Calibration)
    phone, edge = static.compute
    assert (phone.node, phone.samples, edge.node, edge.samples) == ("phone", 4, "edge", 4)
    assert phone.mean_s == pytest.approx(0.0105) and edge.mean_s == pytest.approx(0.035)
    assert phone.cv == pytest.approx(np.std([0.012, 0.014, 0.016, 0.0], ddof=1) / 0.0105)
    assert (static.host_cores, static.outside_cores) == (0, 0)  # no sharing in the replay
    assert (static.frame_bits, static.overhead_s, static.dispatch_s) == ((8e5,), (5e-4,), 6e-4)

    other = Calibration((StageTiming("edge", 0.040, 0.05, 10),), (4e6,), (7e-4,), 5e-4, 2.0, 1.0)
    state = np.array([1, 1, 1, 1, 0])  # the last request in the worst state, the rest best
    policy = replayed_calibration(PolicyCalibration((other, cal)), labels, service, state,
                                  measured)
    assert isinstance(policy, PolicyCalibration)
    worst, best = policy.states  # state 0 had one measured request: its timing is kept
    assert worst.compute == other.compute and worst.host_cores == 0
    assert [t.mean_s for t in best.compute] == pytest.approx([0.014, 0.030])
    assert [t.samples for t in best.compute] == [3, 3]


def test_the_proxy_study_measures_the_searchs_default_budget() -> None:
    """Catches the search's default budget drifting from the budget whose rank agreement the
    README reports (the proxy study's ``default``)."""
    from experiments.common import load_experiment_config
    from experiments.proxy import _budget
    from search.config import BudgetConfig

    cfg = load_experiment_config("proxy", quick=False)
    assert _budget(cfg["budgets"][cfg["default"]], "default") == BudgetConfig().to_budget()


def test_an_experiment_folder_in_use_is_refused(tmp_path: Path) -> None:
    """Two runs of one experiment into one folder would resume the same searches at once: the
    second is refused in one line while the first holds the folder, and runs once it is free."""
    from experiments.common import Output, run_experiment
    from search.runs import lock_run_folder

    ran = []

    def fake(ctx: Any) -> Output:
        ran.append(ctx.out)
        return Output(ctx.name, "t", "")

    held = lock_run_folder(tmp_path / "validate")
    try:
        with pytest.raises(ValueError, match="in use by a running search or experiment"):
            run_experiment("validate", fake, tmp_path, True, False)
        assert not ran
    finally:
        held.close()
    run_experiment("validate", fake, tmp_path, True, False)
    assert ran == [tmp_path / "validate"]
