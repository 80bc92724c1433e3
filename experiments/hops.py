"""hops: the joint search on two, three and four tiers; what a further split point buys.

The two-tier network is the scenario's path cut after the edge; the four-tier one adds a regional
server between edge and cloud (the search may still route past it: edge -> cloud stays).
"""

from __future__ import annotations

from typing import Any

from matplotlib import pyplot as plt

from search.nsga import front_hypervolume

from .common import (
    Context,
    Output,
    experiment_main,
    front_axes,
    front_of,
    save,
    scenario_variant,
    search,
    write_csv,
)

TITLE = "Two, three and four tiers"
COLUMNS = ["topology", "split_points", "hypervolume", "front_size", "evaluations",
           "best_accuracy", "lowest_latency_s"]
POINT_COLUMNS = ["topology", "accuracy", "test_accuracy", "latency_s", "latency_ci95_s",
                 "search_latency_s", "design", "arch"]


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
        "nodes.regional": {"kind": "edge", "flops": r["flops"], "servers": r["servers"]},
        "links": four_links, "path": [phone, edge, "regional", cloud]})
    return {"two tiers": (1, two), "three tiers": (2, base), "four tiers": (3, four)}


def run(ctx: Context) -> Output:
    c = ctx.config
    cfg = ctx.search_config()
    rows: list[dict[str, Any]] = []
    points: list[dict[str, Any]] = []
    fronts = {}
    for label, (splits, scenario) in topologies(c).items():
        result = search(ctx, scenario, cfg, label.replace(" ", "-"))
        front = front_of(result, label)
        again = {r.genome: r for r in result.remeasured}
        fronts[label] = sorted(((e, again[e.genome]) for e in front),  # re-measured on fresh
                               key=lambda pair: pair[1].mean_latency_s)  # seeds
        evs = list(result.evaluations.values())
        rows.append({"topology": label, "split_points": splits,
                     "hypervolume": front_hypervolume(evs, cfg), "front_size": len(front),
                     "evaluations": len(evs), "best_accuracy": front[-1].accuracy,
                     "lowest_latency_s": min(r.mean_latency_s for _, r in fronts[label])})
        points += [{"topology": label, "accuracy": e.accuracy, "test_accuracy": r.test_accuracy,
                    "latency_s": r.mean_latency_s, "latency_ci95_s": r.mean_ci95_s,
                    "search_latency_s": e.latency_s, "design": e.design, "arch": e.arch}
                   for e, r in fronts[label]]
    write_csv(ctx.path("hops.csv"), rows, COLUMNS)
    write_csv(ctx.path("hops_fronts.csv"), points, POINT_COLUMNS)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for label, pairs in fronts.items():
        x = [1e3 * r.mean_latency_s for _, r in pairs]
        y = [100 * e.accuracy for e, _ in pairs]
        (line,) = ax.step(x, y, "o-", where="post", label=label)
        ax.errorbar(x, y, xerr=[1e3 * r.mean_ci95_s for _, r in pairs], fmt="none",
                    ecolor=line.get_color(), capsize=2)
    front_axes(ax, cfg, "Pareto fronts by number of tiers")
    save(fig, ctx.path("hops.png"))
    text = ("Hypervolume of the joint search's front (one GA seed each: an anecdote); lowest "
            f"mean latency re-measured on {cfg.remeasure_replications} fresh replications: "
            ) + ", ".join(
        f"{r['topology']} ({r['split_points']} split point{'s' if r['split_points'] > 1 else ''})"
        f" {r['hypervolume']:.4f}, lowest latency {1e3 * r['lowest_latency_s']:.1f} ms"
        for r in rows) + "."
    return Output("hops", TITLE, text, ["hops.png"], ["hops.csv", "hops_fronts.csv"])


def main() -> int:
    return experiment_main("hops", run)


if __name__ == "__main__":
    raise SystemExit(main())
