"""tradeoff: accuracy against completion latency as lambda sweeps, and where the model is split.

One scalarised search per lambda (as :func:`search.sweep.lambda_sweep` runs them, but each a
resumable experiment search; one accuracy cache); for each lambda the best design among everything
the sweep evaluated, with the share of its FLOPs that each node of its route runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib import pyplot as plt

from search.evaluate import Evaluator
from search.sweep import LambdaSweep

from .common import (
    Context,
    Output,
    device_share,
    experiment_main,
    front_axes,
    remeasure,
    save,
    scenario_variant,
    search,
    write_csv,
)

TITLE = "Accuracy against latency as lambda sweeps"
COLUMNS = ["lam", "accuracy", "latency_s", "p95_latency_s", "remeasured_latency_s",
           "latency_ci95_s", "test_accuracy", "device_energy_j", "device_share", "shares", "arch",
           "design"]


def _ms(row: dict[str, Any]) -> str:
    return (f"{1e3 * row['remeasured_latency_s']:.1f} +/- {1e3 * row['latency_ci95_s']:.1f} "
            "ms")


def run(ctx: Context) -> Output:
    c = ctx.config
    scenario = scenario_variant(c["scenario"], c.get("overrides"))
    cfg = ctx.search_config()
    lams = tuple(float(x) for x in c["lams"])
    runs = [search(ctx, scenario, cfg.with_changes(objective="scalarized", lam=lam),
                   f"lam-{lam:g}") for lam in lams]  # each resumes like any search
    sweep = LambdaSweep(lams, runs)
    evaluator = Evaluator(scenario, cfg, ctx.cache)
    path = list(scenario.path)
    rows: list[dict[str, Any]] = []
    by_lam: list[dict[str, float]] = []
    for lam, ev, run in zip(sweep.lams, sweep.choices(), runs, strict=True):
        again = {(r.arch, r.design): r for r in run.remeasured}.get((ev.arch, ev.design))
        if again is None:  # the sweep's pick is not this run's own: re-measure it here
            (again,) = remeasure(ctx, scenario, cfg, [ev])
        shares = device_share(evaluator, ev)
        route = evaluator.layout.decode(ev.genome).route
        by_node = dict.fromkeys(path, 0.0) | dict(zip(route, shares, strict=True))
        by_lam.append(by_node)
        rows.append({"lam": lam, "accuracy": ev.accuracy, "latency_s": ev.latency_s,
                     "p95_latency_s": ev.p95_latency_s,
                     "remeasured_latency_s": again.mean_latency_s,
                     "latency_ci95_s": again.mean_ci95_s, "test_accuracy": again.test_accuracy,
                     "device_energy_j": ev.device_energy_j,
                     "device_share": shares[0],
                     "shares": ";".join(f"{n}={v:.4g}" for n, v in by_node.items()),
                     "arch": ev.arch, "design": ev.design})
    write_csv(ctx.path("tradeoff.csv"), rows, COLUMNS)

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    pool = sweep.pool()
    ax.scatter([1e3 * e.latency_s for e in pool], [100 * e.accuracy for e in pool], s=10,
               color="0.75", label=f"evaluated ({len(pool)})")
    ax.errorbar([1e3 * r["remeasured_latency_s"] for r in rows],
                [100 * r["accuracy"] for r in rows],
                xerr=[1e3 * r["latency_ci95_s"] for r in rows], fmt="o-", color="tab:red",
                capsize=3, label="best for lambda, re-measured (95% CI)")
    for r in rows:
        ax.annotate(f"{r['lam']:g}", (1e3 * r["remeasured_latency_s"], 100 * r["accuracy"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    front_axes(ax, cfg, "trade-off curve (labels: lambda, 1/s)")
    x = np.arange(len(rows))
    bottom = np.zeros(len(rows))
    for n in by_lam[0]:
        share = np.array([b.get(n, 0.0) for b in by_lam])
        bx.bar(x, 100 * share, bottom=100 * bottom, label=n)
        bottom += share
    bx.set_xticks(x, [f"{r['lam']:g}" for r in rows])
    bx.set_xlabel("lambda (1/s)")
    bx.set_ylabel("share of the model's FLOPs (%)")
    bx.set_title("where the chosen design runs")
    bx.legend()
    save(fig, ctx.path("tradeoff.png"))
    first, last = rows[0], rows[-1]
    text = (f"On {scenario.name} (overrides {c.get('overrides') or 'none'}), lambda from "
            f"{first['lam']:g} to {last['lam']:g} per second moves the chosen design from "
            f"{100 * first['accuracy']:.1f}% at {_ms(first)} to "
            f"{100 * last['accuracy']:.1f}% at {_ms(last)} (mean latency re-measured on "
            f"{cfg.remeasure_replications} fresh replications, 95% CI); the device runs "
            f"{100 * first['device_share']:.0f}% then {100 * last['device_share']:.0f}% "
            f"of the FLOPs. {len(pool)} designs were evaluated over {len(rows)} searches.")
    return Output("tradeoff", TITLE, text, ["tradeoff.png"], ["tradeoff.csv"])


def main() -> int:
    return experiment_main("tradeoff", run)


if __name__ == "__main__":
    raise SystemExit(main())
