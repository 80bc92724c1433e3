"""pareto: the joint search's front against every baseline, on the same axes.

Baselines (:mod:`search.baselines`), all through the same evaluation: the architectures the joint
search trained, each whole on one node of the path (device / edge / cloud only); Neurosurgeon-style
fixed reference models with their best single split; the two-stage search (accuracy and FLOPs
first, the exact optimal split after); random search with as many evaluations as the joint search.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from matplotlib import pyplot as plt

from models.resolve import resolve_architecture
from search.baselines import (
    BaselineResult,
    neurosurgeon_baseline,
    placement_baseline,
    random_search,
    two_stage_baseline,
)
from search.evaluate import Evaluation
from search.nsga import front_hypervolume, pareto_front
from search.remeasure import Remeasured

from .common import (
    Context,
    Output,
    experiment_main,
    front_axes,
    remeasure,
    save,
    scenario_variant,
    search,
    write_csv,
)

TITLE = "The joint search against the baselines"
POINT_COLUMNS = ["method", "accuracy", "latency_s", "p95_latency_s", "device_energy_j",
                 "on_front", "remeasured_latency_s", "latency_ci95_s", "test_accuracy", "arch",
                 "design"]
HV_COLUMNS = ["method", "hypervolume", "remeasured_hypervolume", "designs_offered",
              "front_size", "best_accuracy", "lowest_latency_s"]


def _latency(r: Remeasured, which: str) -> float:
    return r.mean_latency_s if which == "mean" else r.p95_latency_s


def _ci(r: Remeasured, which: str) -> float:
    return r.mean_ci95_s if which == "mean" else r.p95_ci95_s


def run(ctx: Context) -> Output:
    c = ctx.config
    scenario = scenario_variant(c["scenario"], c.get("overrides"))
    cfg = ctx.search_config()
    joint = search(ctx, scenario, cfg, "joint")
    joint_all = list(joint.evaluations.values())
    methods: dict[str, list[Evaluation]] = {"joint NSGA-II": joint_all}
    archs = list(dict.fromkeys(resolve_architecture(e.arch) for e in joint_all))
    base = ctx.out / "baselines"
    results: list[BaselineResult] = [
        placement_baseline(scenario, cfg, node, archs, base, cache_path=ctx.cache)
        for node in scenario.path
    ]
    results.append(neurosurgeon_baseline(scenario, cfg, base, cache_path=ctx.cache,
                                         models=c["neurosurgeon_models"]))
    results.append(two_stage_baseline(scenario, cfg, base / "two-stage", cache_path=ctx.cache))
    for r in results:
        methods[r.name] = r.offered
    rs = random_search(scenario, cfg, len(joint_all), base / "random", cache_path=ctx.cache)
    methods["random search"] = list(rs.evaluations.values())

    points: list[dict[str, Any]] = []
    table: list[dict[str, Any]] = []
    fronts: dict[str, list[tuple[Evaluation, Remeasured]]] = {}
    nan = float("nan")
    for method, evs in methods.items():
        front = pareto_front(evs, cfg)
        again = remeasure(ctx, scenario, cfg, front)  # fresh seeds, for every method alike
        fronts[method] = sorted(zip(front, again, strict=True),
                                key=lambda pair: _latency(pair[1], cfg.latency))
        by_id = {id(e): r for e, r in fronts[method]}
        for e in evs:
            if e.feasible:
                rm = by_id.get(id(e))
                points.append({"method": method, "accuracy": e.accuracy, "latency_s": e.latency_s,
                               "p95_latency_s": e.p95_latency_s,
                               "device_energy_j": e.device_energy_j, "on_front": rm is not None,
                               "remeasured_latency_s": _latency(rm, cfg.latency) if rm else nan,
                               "latency_ci95_s": _ci(rm, cfg.latency) if rm else nan,
                               "test_accuracy": rm.test_accuracy if rm else nan,
                               "arch": e.arch, "design": e.design})
        again_evs = [dataclasses.replace(e, latency_s=_latency(rm, cfg.latency),
                                         device_energy_j=rm.device_energy_j)
                     for e, rm in fronts[method]]
        table.append({"method": method, "hypervolume": front_hypervolume(evs, cfg),
                      "remeasured_hypervolume": front_hypervolume(again_evs, cfg),
                      "designs_offered": len(evs), "front_size": len(front),
                      "best_accuracy": max((e.accuracy for e in front), default=nan),
                      "lowest_latency_s": min((e.latency_s for e in again_evs), default=nan)})
    write_csv(ctx.path("pareto_points.csv"), points, POINT_COLUMNS)
    write_csv(ctx.path("pareto_hypervolume.csv"), table, HV_COLUMNS)

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (method, pairs) in enumerate(fronts.items()):
        if not pairs:
            continue
        style = "o-" if method == "joint NSGA-II" else "s--" if i < 4 else "^:"
        x = [1e3 * _latency(r, cfg.latency) for _, r in pairs]
        y = [100 * e.accuracy for e, _ in pairs]
        # The line joins the designs that stay non-dominated once re-measured; the markers are
        # every design the search's front offered (some fall behind on fresh seeds).
        shown = [dataclasses.replace(e, latency_s=_latency(r, cfg.latency)) for e, r in pairs]
        kept = {id(e) for e in pareto_front(shown, cfg)}
        line_x = [xi for xi, e in zip(x, shown, strict=True) if id(e) in kept]
        line_y = [yi for yi, e in zip(y, shown, strict=True) if id(e) in kept]
        (line,) = ax.step(line_x, line_y, style[1:], where="post", label=method,
                          lw=2.2 if method == "joint NSGA-II" else 1.2)
        ax.errorbar(x, y, xerr=[1e3 * _ci(r, cfg.latency) for _, r in pairs], fmt=style[0],
                    color=line.get_color(), ms=5, alpha=0.8, capsize=2)
    front_axes(ax, cfg, f"Pareto fronts on {scenario.name} (latency re-measured, 95% CI)",
               legend_size=8)
    save(fig, ctx.path("pareto.png"))
    ranked = sorted(table, key=lambda r: -r["remeasured_hypervolume"])
    lines = "\n".join(f"| {r['method']} | {r['remeasured_hypervolume']:.4f} | "
                      f"{r['hypervolume']:.4f} | {r['front_size']} | {r['designs_offered']} |"
                      for r in ranked)
    reps = cfg.remeasure_replications
    text = ("Fronts of the joint search and of each baseline, each front re-measured on "
            f"{reps} fresh replications (error bars: 95% CI of the latency); hypervolume with "
            f"reference point error {cfg.hv_reference()[0]:g}, latency "
            f"{cfg.hv_latency_ref_s:g} s, of the re-measured front and of the search's own "
            "scores. One GA seed: an anecdote, not a ranking (see `convergence`).\n\n"
            "| method | hypervolume (re-measured) | (search's path) | front | designs |\n"
            f"| --- | --- | --- | --- | --- |\n{lines}")
    return Output("pareto", TITLE, text, ["pareto.png"],
                  ["pareto_points.csv", "pareto_hypervolume.csv"])


def main() -> int:
    return experiment_main("pareto", run)


if __name__ == "__main__":
    raise SystemExit(main())
