"""hops: the joint search on two, three and four tiers; what a further split point buys.

The two-tier network is the scenario's path cut after the edge; the four-tier one adds a regional
server between edge and cloud (the search may still route past it: edge -> cloud stays).

Every topology is searched once per GA seed of the config's ``seeds``, each in a folder of its
own (``searches/TOPOLOGY-seedS-*``), all sharing the accuracy cache; only the GA seed varies (the
same ``eval_seed`` everywhere: common random numbers). Hypervolume: of the search's own scores,
as before (the fronts' latencies re-measured on fresh replications are in ``hops_fronts.csv``
and the figure). One row per topology and seed in ``hops.csv``; the number of seeds, mean, sd,
Student-t 95% CI, min and max in ``hops_summary.csv``. The front figure shows one seed, the
three-tier search's median one by hypervolume (a typical run, not the best); the right panel
shows every seed.
"""

from __future__ import annotations

from typing import Any

from matplotlib import pyplot as plt

from search.evaluate import Evaluation
from search.nsga import front_hypervolume
from search.remeasure import Remeasured

from .common import (
    SEED_STATS,
    Context,
    Output,
    experiment_main,
    front_axes,
    front_of,
    median_seed,
    over_seeds,
    save,
    scenario_variant,
    search,
    seed_panel,
    write_csv,
)

TITLE = "Two, three and four tiers"
COLUMNS = ["topology", "seed", "split_points", "hypervolume", "front_size", "evaluations",
           "best_accuracy", "lowest_latency_s"]
SUMMARY_COLUMNS = ["topology", "split_points", *SEED_STATS]
POINT_COLUMNS = ["topology", "seed", "accuracy", "test_accuracy", "latency_s", "latency_ci95_s",
                 "search_latency_s", "design", "arch"]
MEDIAN_OF = "three tiers"
"""The topology whose median seed the front figure shows."""


def topologies(c: dict[str, Any]) -> dict[str, tuple[int, Any]]:
    overrides = dict(c.get("overrides") or {})
    base = scenario_variant(c["scenario"], overrides)
    phone, edge, cloud = base.path
    two = scenario_variant(c["scenario"], overrides | {"path": [phone, edge]})
    r = c["regional"]
    four_links = [
        *[link.model_dump(exclude_none=True) for link in base.links],
        {"src": edge, "dst": "regional", "propagation_s": r["propagation_s"],
         "channel": {"model": "constant", "rate_bps": r["rate_bps"]}},
        {"src": "regional", "dst": cloud, "propagation_s": r["propagation_s"],
         "channel": {"model": "constant", "rate_bps": r["rate_bps"]}},
    ]
    four = scenario_variant(c["scenario"], overrides | {
        "nodes.regional": {"kind": "edge", "flops_per_s": r["flops_per_s"],
                           "servers": r["servers"]},
        "links": four_links, "path": [phone, edge, "regional", cloud]})
    return {"two tiers": (1, two), "three tiers": (2, base), "four tiers": (3, four)}


def run(ctx: Context) -> Output:
    c = ctx.config
    seeds = ctx.seeds()
    cfg = ctx.search_config()
    rows: list[dict[str, Any]] = []
    points: list[dict[str, Any]] = []
    fronts: dict[int, dict[str, list[tuple[Evaluation, Remeasured]]]] = {s: {} for s in seeds}
    tiers = topologies(c)
    for label, (splits, scenario) in tiers.items():
        for seed in seeds:
            result = search(ctx, scenario, cfg.with_changes(seed=seed),
                            f"{label.replace(' ', '-')}-seed{seed}")
            front = front_of(result, f"{label}, seed {seed}")
            again = {r.genome: r for r in result.remeasured}
            pairs = sorted(((e, again[e.genome]) for e in front),  # re-measured on fresh
                           key=lambda pair: pair[1].mean_latency_s)  # seeds
            fronts[seed][label] = pairs
            evs = list(result.evaluations.values())
            rows.append({"topology": label, "seed": seed, "split_points": splits,
                         "hypervolume": front_hypervolume(evs, cfg), "front_size": len(front),
                         "evaluations": len(evs), "best_accuracy": front[-1].accuracy,
                         "lowest_latency_s": min(r.mean_latency_s for _, r in pairs)})
            points += [{"topology": label, "seed": seed, "accuracy": e.accuracy,
                        "test_accuracy": r.test_accuracy, "latency_s": r.mean_latency_s,
                        "latency_ci95_s": r.mean_ci95_s, "search_latency_s": e.latency_s,
                        "design": e.design, "arch": e.arch} for e, r in pairs]
    per_seed = {label: [r["hypervolume"] for r in rows if r["topology"] == label]
                for label in tiers}  # in seed order
    summary = [{"topology": label, "split_points": splits, **over_seeds(per_seed[label])}
               for label, (splits, _) in tiers.items()]
    write_csv(ctx.path("hops.csv"), rows, COLUMNS)
    write_csv(ctx.path("hops_summary.csv"), summary, SUMMARY_COLUMNS)
    write_csv(ctx.path("hops_fronts.csv"), points, POINT_COLUMNS)

    shown = median_seed(dict(zip(seeds, per_seed[MEDIAN_OF], strict=True)))
    fig, (ax, ax_hv) = plt.subplots(1, 2, figsize=(12.5, 4.5), width_ratios=[1.5, 1])
    for label, pairs in fronts[shown].items():
        x = [1e3 * r.mean_latency_s for _, r in pairs]
        y = [100 * e.accuracy for e, _ in pairs]
        (line,) = ax.step(x, y, "o-", where="post", label=label)
        ax.errorbar(x, y, xerr=[1e3 * r.mean_ci95_s for _, r in pairs], fmt="none",
                    ecolor=line.get_color(), capsize=2)
    front_axes(ax, cfg, f"Pareto fronts by number of tiers, GA seed {shown}")
    seed_panel(ax_hv, per_seed, "hypervolume (search's scores)",
               f"Hypervolume over GA seeds {', '.join(map(str, seeds))}")
    save(fig, ctx.path("hops.png"))
    return Output("hops", TITLE, _text(cfg.remeasure_replications, seeds, shown, summary, rows),
                  ["hops.png"], ["hops.csv", "hops_summary.csv", "hops_fronts.csv"])


def _text(replications: int, seeds: list[int], shown: int, summary: list[dict[str, Any]],
          rows: list[dict[str, Any]]) -> str:
    def interval(r: dict[str, Any]) -> str:
        return ("(one value)" if r["seeds"] < 2
                else f"{r['hv_ci95_lo']:.4f} to {r['hv_ci95_hi']:.4f}")

    def fastest(label: str) -> str:
        lat = sorted(1e3 * r["lowest_latency_s"] for r in rows if r["topology"] == label)
        return f"{lat[0]:.1f} to {lat[-1]:.1f}" if len(lat) > 1 else f"{lat[0]:.1f}"

    lines = "\n".join(
        f"| {r['topology']} | {r['split_points']} | {r['seeds']} | {r['hv_mean']:.4f} | "
        f"{interval(r)} | {r['hv_min']:.4f} to {r['hv_max']:.4f} | {fastest(r['topology'])} |"
        for r in summary)
    return ("Hypervolume of the joint search's front (the search's own scores) over GA seeds "
            f"{', '.join(map(str, seeds))}: mean, Student-t 95% CI of the mean and range over "
            "seeds; lowest mean latency of each seed's front re-measured on "
            f"{replications} fresh replications (range over seeds). The front figure shows "
            f"seed {shown}, the three-tier search's median.\n\n"
            "| topology | split points | seeds | mean hv | 95% CI | min to max | "
            "lowest latency (ms) |\n| --- | --- | --- | --- | --- | --- | --- |\n" + lines)


def main() -> int:
    return experiment_main("hops", run)


if __name__ == "__main__":
    raise SystemExit(main())
