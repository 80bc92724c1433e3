"""pareto: the joint search's front against every baseline, on the same axes, over GA seeds.

Baselines (:mod:`search.baselines`), all through the same evaluation: the architectures the joint
search trained, each whole on one node of the path (device / edge / cloud only); Neurosurgeon-style
fixed reference models with their best single split; the two-stage search (accuracy and FLOPs
first, the exact optimal split after); random search with as many evaluations as the joint search.

Seeds (the config's ``seeds``). Every method whose result depends on the GA seed runs once per
seed, in folders of its own (``searches/joint-seedS-*``, ``baselines/seedS/``), all sharing the
accuracy cache: the joint search; random search (its draws); the two-stage baseline (its
stage-one NSGA-II); and the device / edge / cloud-only placements, which take the architectures
that *the same seed's* joint search trained (what splitting buys those very architectures), so
their spread over seeds is the joint search's choice of architectures carried over. Neurosurgeon's
fixed models do not depend on the GA seed (training and simulation use ``eval_seed``, the
re-measurement a seed derived from it), so it runs once and counts as one value, with no interval.
Only the GA seed varies: every run scores designs on the same sample paths (common random numbers),
so the interval over seeds is the search's run-to-run spread, not the simulator's noise.

Hypervolume: of each front re-measured on fresh replications, as before (what the table ranks by);
the hypervolume of the search's own scores stays beside it (``hypervolume``). One row per method
and seed in ``pareto_hypervolume.csv``; the number of seeds, mean, sd, Student-t 95% CI, min and
max in ``pareto_summary.csv``. The front figure shows one seed, the joint search's median one by
re-measured hypervolume (a typical run, not the best); the right panel shows every seed.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

from matplotlib import pyplot as plt

from models.resolve import resolve_architecture
from search.baselines import (
    neurosurgeon_baseline,
    placement_baseline,
    random_search,
    two_stage_baseline,
)
from search.config import SearchConfig
from search.evaluate import Evaluation
from search.nsga import front_hypervolume, pareto_front
from search.remeasure import Remeasured
from sim import Scenario

from .common import (
    SEED_STATS,
    Context,
    Output,
    experiment_main,
    front_axes,
    median_seed,
    over_seeds,
    remeasure,
    save,
    scenario_variant,
    search,
    seed_panel,
    write_csv,
)

TITLE = "The joint search against the baselines"
JOINT = "joint NSGA-II"
FIXED = "neurosurgeon"
"""The one method that does not depend on the GA seed."""
POINT_COLUMNS = ["method", "seed", "accuracy", "latency_s", "p95_latency_s", "device_energy_j",
                 "on_front", "remeasured_latency_s", "latency_ci95_s", "test_accuracy", "arch",
                 "design"]
HV_COLUMNS = ["method", "seed", "hypervolume", "remeasured_hypervolume", "designs_offered",
              "front_size", "best_accuracy", "lowest_latency_s"]
SUMMARY_COLUMNS = ["method", *SEED_STATS, "search_hv_mean"]
"""``hv_*``: of the re-measured front; ``search_hv_mean``: mean of the search's own scores'."""

Memo = dict[tuple[str, str], Remeasured]
"""Re-measurements by (architecture, design description): a design's does not depend on the
seed or on the other designs of its front (:func:`search.remeasure.remeasure_front`)."""


def _latency(r: Remeasured, which: str) -> float:
    return r.mean_latency_s if which == "mean" else r.p95_latency_s


def _ci(r: Remeasured, which: str) -> float:
    return r.mean_ci95_s if which == "mean" else r.p95_ci95_s


def _seeded_methods(ctx: Context, scenario: Scenario, cfg: SearchConfig, seed: int,
                    memo: Memo) -> dict[str, list[Evaluation]]:
    """What every seeded method offers with GA seed ``seed`` (its folders named after it)."""
    joint = search(ctx, scenario, cfg, f"joint-seed{seed}")
    for r in joint.remeasured:  # the search re-measured its front already
        memo.setdefault((r.arch, r.design), r)
    joint_all = list(joint.evaluations.values())
    archs = list(dict.fromkeys(resolve_architecture(e.arch) for e in joint_all))
    base = ctx.out / "baselines" / f"seed{seed}"
    methods: dict[str, list[Evaluation]] = {JOINT: joint_all}
    for node in scenario.path:
        placed = placement_baseline(scenario, cfg, node, archs, base, cache_path=ctx.cache)
        methods[placed.name] = placed.offered
    two = two_stage_baseline(scenario, cfg, base / "two-stage", cache_path=ctx.cache)
    methods[two.name] = two.offered
    rs = random_search(scenario, cfg, len(joint_all), base / "random", cache_path=ctx.cache)
    methods["random search"] = list(rs.evaluations.values())
    return methods


def _remeasured(ctx: Context, scenario: Scenario, cfg: SearchConfig,
                front: list[Evaluation], memo: Memo) -> list[Remeasured]:
    """``front`` re-measured (fresh seeds, every method alike), each design once per run."""
    missing = list({(e.arch, e.design): e for e in front
                    if (e.arch, e.design) not in memo}.values())
    if missing:
        for e, r in zip(missing, remeasure(ctx, scenario, cfg, missing), strict=True):
            memo[(e.arch, e.design)] = r
    return [dataclasses.replace(memo[(e.arch, e.design)], genome=e.genome) for e in front]


def run(ctx: Context) -> Output:
    c = ctx.config
    seeds = ctx.seeds()
    scenario = scenario_variant(c["scenario"], c.get("overrides"))
    cfg = ctx.search_config()
    fixed = neurosurgeon_baseline(scenario, cfg, ctx.out / "baselines", cache_path=ctx.cache,
                                  models=c["neurosurgeon_models"])
    memo: Memo = {}
    points: list[dict[str, Any]] = []
    table: list[dict[str, Any]] = []
    fronts: dict[int, dict[str, list[tuple[Evaluation, Remeasured]]]] = {}
    nan = float("nan")
    for seed in seeds:
        cfg_s = cfg.with_changes(seed=seed)
        seeded = _seeded_methods(ctx, scenario, cfg_s, seed, memo)
        names = list(seeded)  # joint, the placements, then Neurosurgeon where it always stood
        names.insert(1 + len(scenario.path), FIXED)
        fronts[seed] = {}
        for method in names:
            if method == FIXED and seed != seeds[0]:
                fronts[seed][method] = fronts[seeds[0]][method]  # drawn, not counted again
                continue
            evs = fixed.offered if method == FIXED else seeded[method]
            tag: int | str = "" if method == FIXED else seed
            front = pareto_front(evs, cfg)
            again = _remeasured(ctx, scenario, cfg, front, memo)
            pairs = sorted(zip(front, again, strict=True),
                           key=lambda pair: _latency(pair[1], cfg.latency))
            fronts[seed][method] = pairs
            by_id = {id(e): r for e, r in pairs}
            for e in evs:
                if e.feasible:
                    rm = by_id.get(id(e))
                    points.append({
                        "method": method, "seed": tag, "accuracy": e.accuracy,
                        "latency_s": e.latency_s, "p95_latency_s": e.p95_latency_s,
                        "device_energy_j": e.device_energy_j, "on_front": rm is not None,
                        "remeasured_latency_s": _latency(rm, cfg.latency) if rm else nan,
                        "latency_ci95_s": _ci(rm, cfg.latency) if rm else nan,
                        "test_accuracy": rm.test_accuracy if rm else nan,
                        "arch": e.arch, "design": e.design})
            again_evs = [dataclasses.replace(e, latency_s=_latency(rm, cfg.latency),
                                             device_energy_j=rm.device_energy_j)
                         for e, rm in pairs]
            table.append({"method": method, "seed": tag,
                          "hypervolume": front_hypervolume(evs, cfg),
                          "remeasured_hypervolume": front_hypervolume(again_evs, cfg),
                          "designs_offered": len(evs), "front_size": len(front),
                          "best_accuracy": max((e.accuracy for e in front), default=nan),
                          "lowest_latency_s": min((e.latency_s for e in again_evs),
                                                  default=nan)})
    write_csv(ctx.path("pareto_points.csv"), points, POINT_COLUMNS)
    write_csv(ctx.path("pareto_hypervolume.csv"), table, HV_COLUMNS)
    methods = list(fronts[seeds[0]])
    per_seed = {m: [r["remeasured_hypervolume"] for r in table if r["method"] == m]
                for m in methods}  # in seed order
    summary = [{"method": m, **over_seeds(per_seed[m]),
                "search_hv_mean": statistics.fmean(r["hypervolume"] for r in table
                                                   if r["method"] == m)} for m in methods]
    write_csv(ctx.path("pareto_summary.csv"), summary, SUMMARY_COLUMNS)

    shown = median_seed(dict(zip(seeds, per_seed[JOINT], strict=True)))
    fig, (ax, ax_hv) = plt.subplots(1, 2, figsize=(14, 5.2), width_ratios=[1.5, 1])
    _draw_fronts(ax, fronts[shown], cfg)
    front_axes(ax, cfg, f"Pareto fronts on {scenario.name}, GA seed {shown} (latency "
               "re-measured, 95% CI)", legend_size=8)
    seed_panel(ax_hv, per_seed, "hypervolume of the re-measured front",
               f"Hypervolume over GA seeds {', '.join(map(str, seeds))}")
    save(fig, ctx.path("pareto.png"))
    return Output("pareto", TITLE, _text(cfg, seeds, shown, summary),
                  ["pareto.png"], ["pareto_points.csv", "pareto_hypervolume.csv",
                                   "pareto_summary.csv"])


def _draw_fronts(ax: Any, fronts: dict[str, list[tuple[Evaluation, Remeasured]]],
                 cfg: SearchConfig) -> None:
    for i, (method, pairs) in enumerate(fronts.items()):
        if not pairs:
            continue
        style = "o-" if method == JOINT else "s--" if i < 4 else "^:"
        x = [1e3 * _latency(r, cfg.latency) for _, r in pairs]
        y = [100 * e.accuracy for e, _ in pairs]
        # The line joins the designs that stay non-dominated once re-measured; the markers are
        # every design the search's front offered (some fall behind on fresh seeds).
        shown = [dataclasses.replace(e, latency_s=_latency(r, cfg.latency)) for e, r in pairs]
        kept = {id(e) for e in pareto_front(shown, cfg)}
        line_x = [xi for xi, e in zip(x, shown, strict=True) if id(e) in kept]
        line_y = [yi for yi, e in zip(y, shown, strict=True) if id(e) in kept]
        (line,) = ax.step(line_x, line_y, style[1:], where="post", label=method,
                          lw=2.2 if method == JOINT else 1.2)
        ax.errorbar(x, y, xerr=[1e3 * _ci(r, cfg.latency) for _, r in pairs], fmt=style[0],
                    color=line.get_color(), ms=5, alpha=0.8, capsize=2)


def _text(cfg: SearchConfig, seeds: list[int], shown: int,
          summary: list[dict[str, Any]]) -> str:
    def interval(r: dict[str, Any]) -> str:
        if r["seeds"] < 2:
            return "(one value)"
        return f"{r['hv_ci95_lo']:.4f} to {r['hv_ci95_hi']:.4f}"

    ranked = sorted(summary, key=lambda r: -r["hv_mean"])
    lines = "\n".join(
        f"| {r['method']} | {r['seeds'] if r['method'] != FIXED else '1 (fixed models)'} | "
        f"{r['hv_mean']:.4f} | {interval(r)} | {r['hv_min']:.4f} to {r['hv_max']:.4f} | "
        f"{r['search_hv_mean']:.4f} |" for r in ranked)
    return ("Fronts of the joint search and of each baseline, each front re-measured on "
            f"{cfg.remeasure_replications} fresh replications; hypervolume of the re-measured "
            f"front with reference point error {cfg.hv_reference()[0]:g}, latency "
            f"{cfg.hv_latency_ref_s:g} s, over GA seeds {', '.join(map(str, seeds))}: mean, "
            "Student-t 95% CI of the mean and range over seeds (the search's own scores' mean "
            "hypervolume beside it). The placements take the architectures of the same seed's "
            "joint search; Neurosurgeon does not depend on the seed. The front figure shows "
            f"seed {shown}, the joint search's median; error bars there: 95% CI of the "
            "re-measured latency.\n\n"
            "| method | seeds | mean hv (re-measured) | 95% CI | min to max | (search's path) |\n"
            f"| --- | --- | --- | --- | --- | --- |\n{lines}")


def main() -> int:
    return experiment_main("pareto", run)


if __name__ == "__main__":
    raise SystemExit(main())
