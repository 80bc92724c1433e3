"""pareto: the joint search's front against every baseline, on the same axes.

Baselines (:mod:`search.baselines`), all through the same evaluation: the architectures the joint
search trained, each whole on one node of the path (device / edge / cloud only); Neurosurgeon-style
fixed reference models with their best single split; the two-stage search (accuracy and FLOPs
first, the exact optimal split after); random search with as many evaluations as the joint search.
"""

from __future__ import annotations

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

from .common import (
    Context,
    Output,
    experiment_main,
    front_axes,
    save,
    scenario_variant,
    search,
    write_csv,
)

TITLE = "The joint search against the baselines"
POINT_COLUMNS = ["method", "accuracy", "latency_s", "p95_latency_s", "device_energy_j",
                 "on_front", "arch", "design"]
HV_COLUMNS = ["method", "hypervolume", "designs_offered", "front_size", "best_accuracy",
              "lowest_latency_s"]


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
    for method, evs in methods.items():
        front = pareto_front(evs, cfg)
        on = {id(e) for e in front}
        for e in evs:
            if e.feasible:
                points.append({"method": method, "accuracy": e.accuracy, "latency_s": e.latency_s,
                               "p95_latency_s": e.p95_latency_s,
                               "device_energy_j": e.device_energy_j, "on_front": id(e) in on,
                               "arch": e.arch, "design": e.design})
        table.append({"method": method, "hypervolume": front_hypervolume(evs, cfg),
                      "designs_offered": len(evs), "front_size": len(front),
                      "best_accuracy": max((e.accuracy for e in front), default=float("nan")),
                      "lowest_latency_s": min((e.latency_s for e in front),
                                              default=float("nan"))})
    write_csv(ctx.path("pareto_points.csv"), points, POINT_COLUMNS)
    write_csv(ctx.path("pareto_hypervolume.csv"), table, HV_COLUMNS)

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (method, evs) in enumerate(methods.items()):
        front = pareto_front(evs, cfg)
        if not front:
            continue
        style = "o-" if method == "joint NSGA-II" else "s--" if i < 4 else "^:"
        ax.step([1e3 * e.latency_s for e in front], [100 * e.accuracy for e in front], style,
                where="post", label=method, lw=2.2 if method == "joint NSGA-II" else 1.2,
                ms=5)
    front_axes(ax, cfg, f"Pareto fronts on {scenario.name}", legend_size=8)
    save(fig, ctx.path("pareto.png"))
    ranked = sorted(table, key=lambda r: -r["hypervolume"])
    lines = "\n".join(f"| {r['method']} | {r['hypervolume']:.4f} | {r['front_size']} | "
                      f"{r['designs_offered']} |" for r in ranked)
    text = ("Fronts of the joint search and of each baseline (hypervolume with reference point "
            f"error {cfg.hv_reference()[0]:g}, latency {cfg.hv_latency_ref_s:g} s):\n\n"
            f"| method | hypervolume | front | designs |\n| --- | --- | --- | --- |\n{lines}")
    return Output("pareto", TITLE, text, ["pareto.png"],
                  ["pareto_points.csv", "pareto_hypervolume.csv"])


def main() -> int:
    return experiment_main("pareto", run)


if __name__ == "__main__":
    raise SystemExit(main())
