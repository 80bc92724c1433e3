"""convergence: hypervolume against evaluations for NSGA-II and random search, several seeds.

Random search draws as many distinct designs as the seed's NSGA-II run evaluated, in batches of
the population size, so both curves have a point per generation (batch).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib import pyplot as plt

from search.baselines import random_search

from .common import Context, Output, experiment_main, save, scenario_variant, search, write_csv

TITLE = "Convergence: NSGA-II against random search"
COLUMNS = ["method", "seed", "step", "evaluations", "hypervolume", "best_accuracy",
           "best_latency_s"]


def run(ctx: Context) -> Output:
    c = ctx.config
    scenario = scenario_variant(c["scenario"], c.get("overrides"))
    rows: list[dict[str, Any]] = []
    for seed in c["seeds"]:
        cfg = ctx.search_config(seed=int(seed))
        ga = search(ctx, scenario, cfg, f"nsga2-seed{seed}")
        rs = random_search(scenario, cfg, len(ga.evaluations),
                           ctx.out / "searches" / f"random-seed{seed}", cache_path=ctx.cache)
        for method, result in (("NSGA-II", ga), ("random search", rs)):
            for step, h in enumerate(result.history):
                rows.append({"method": method, "seed": int(seed), "step": step,
                             "evaluations": int(h["evaluations"]),
                             "hypervolume": h["hypervolume"],
                             "best_accuracy": h["best_accuracy"],
                             "best_latency_s": h["best_latency_s"]})
    write_csv(ctx.path("convergence.csv"), rows, COLUMNS)
    fig, ax = plt.subplots(figsize=(7, 4.3))
    summary = {}
    for method, color in (("NSGA-II", "tab:red"), ("random search", "tab:blue")):
        steps = sorted({r["step"] for r in rows if r["method"] == method})
        x, mean, lo, hi = [], [], [], []
        for s in steps:
            sel = [r for r in rows if r["method"] == method and r["step"] == s]
            if len(sel) < len(c["seeds"]):
                continue  # a seed whose run ended earlier
            hv = np.array([r["hypervolume"] for r in sel])
            x.append(np.mean([r["evaluations"] for r in sel]))
            mean.append(hv.mean())
            lo.append(hv.min())
            hi.append(hv.max())
        ax.plot(x, mean, "o-", color=color, label=f"{method} (mean of {len(c['seeds'])} seeds)")
        ax.fill_between(x, lo, hi, color=color, alpha=0.2)
        summary[method] = (x[-1], mean[-1], lo[-1], hi[-1])
    ax.set_xlabel("designs evaluated")
    ax.set_ylabel("hypervolume (normalised)")
    ax.set_title("convergence (band: min to max over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, ctx.path("convergence.png"))
    g, r = summary["NSGA-II"], summary["random search"]
    text = (f"After about {g[0]:.0f} evaluations the mean hypervolume is {g[1]:.4f} for NSGA-II "
            f"(seeds from {g[2]:.4f} to {g[3]:.4f}) and {r[1]:.4f} for random search "
            f"({r[2]:.4f} to {r[3]:.4f}), over {len(c['seeds'])} seeds.")
    return Output("convergence", TITLE, text, ["convergence.png"], ["convergence.csv"])


def main() -> int:
    return experiment_main("convergence", run)


if __name__ == "__main__":
    raise SystemExit(main())
