"""channel: how the best designs and their splits move with the uplink, and whether a design
searched for one channel holds up on another.

For every condition (a replacement of the phone's uplink channel) a joint search runs; its chosen
design is the fastest one within ``accuracy_slack`` of the best accuracy on its front. Then every
chosen design is simulated under every condition with the same seed: the robustness matrix.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib import pyplot as plt

from search.design import Design
from search.evaluate import Evaluation, Evaluator
from sim import Scenario
from sim.network import mean_rate_bps

from .common import (
    Context,
    Output,
    device_share,
    experiment_main,
    front_of,
    remeasure,
    save,
    scenario_variant,
    search,
    write_csv,
)

TITLE = "Channel conditions: latency, split points and robustness"
COLUMNS = ["condition", "family", "mean_rate_bps", "chosen_accuracy", "chosen_latency_s",
           "chosen_latency_ci95_s", "chosen_p95_latency_s", "chosen_p95_ci95_s",
           "chosen_device_share", "fastest_latency_s", "fastest_device_share", "chosen_design"]
MATRIX_COLUMNS = ["designed_for", "evaluated_on", "family", "mean_rate_bps", "status",
                  "utilisation", "latency_s", "latency_ci95_s", "ratio_to_own_choice"]


def choose(front: list[Evaluation], slack: float) -> Evaluation:
    """The fastest design within ``slack`` of the front's best accuracy."""
    best = max(e.accuracy for e in front)
    return min((e for e in front if e.accuracy >= best - slack), key=lambda e: e.latency_s)


def _channel(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if v is not None}


def run(ctx: Context) -> Output:
    c = ctx.config
    cfg = ctx.search_config()
    rows: list[dict[str, Any]] = []
    chosen: dict[str, Design] = {}
    evaluators: dict[str, Evaluator] = {}
    scenarios: dict[str, Scenario] = {}
    for cond in c["conditions"]:
        label = cond["label"]
        overrides = dict(c.get("overrides") or {})
        overrides["links.0.channel"] = _channel(cond["channel"])
        scenario = scenario_variant(c["scenario"], overrides)
        ev = Evaluator(scenario, cfg, ctx.cache)
        result = search(ctx, scenario, cfg, label.replace(" ", "_").replace("/", "per"))
        front = front_of(result, f"channel condition {label!r}")
        pick, fastest = choose(front, float(c["accuracy_slack"])), front[0]
        chosen[label] = ev.layout.decode(pick.genome)
        evaluators[label] = ev
        scenarios[label] = scenario
        measured = {r.genome: r for r in result.remeasured}
        mine, quickest = measured[pick.genome], measured[fastest.genome]
        link = scenario.graph().edges[scenario.path[0], scenario.path[1]]["spec"]
        rows.append({"condition": label, "family": cond["family"],
                     "mean_rate_bps": mean_rate_bps(link, scenario),
                     "chosen_accuracy": pick.accuracy, "chosen_latency_s": mine.mean_latency_s,
                     "chosen_latency_ci95_s": mine.mean_ci95_s,
                     "chosen_p95_latency_s": mine.p95_latency_s,
                     "chosen_p95_ci95_s": mine.p95_ci95_s,
                     "chosen_device_share": device_share(ev, pick)[0],
                     "fastest_latency_s": quickest.mean_latency_s,
                     "fastest_device_share": device_share(ev, fastest)[0],
                     "chosen_design": f"{pick.arch} {pick.design}"})
    write_csv(ctx.path("channel.csv"), rows, COLUMNS)

    matrix: list[dict[str, Any]] = []
    own = {r["condition"]: r["chosen_latency_s"] for r in rows}
    for designed_for, design in chosen.items():
        for r in rows:  # re-measured like the fronts; an overloaded transfer has no latency
            on = r["condition"]
            (e,) = evaluators[on].evaluate_designs([design])
            latency = ci = math.nan
            if e.feasible:
                (again,) = remeasure(ctx, scenarios[on], cfg, [e])
                latency, ci = again.mean_latency_s, again.mean_ci95_s
            matrix.append({"designed_for": designed_for, "evaluated_on": on,
                           "family": r["family"], "mean_rate_bps": r["mean_rate_bps"],
                           "status": e.status, "utilisation": e.utilisation,
                           "latency_s": latency, "latency_ci95_s": ci,
                           "ratio_to_own_choice": latency / own[on]})
    write_csv(ctx.path("channel_robustness.csv"), matrix, MATRIX_COLUMNS)

    labels = [r["condition"] for r in rows]
    fig, (ax, bx, mx) = plt.subplots(1, 3, figsize=(15, 4.2))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [1e3 * r["chosen_latency_s"] for r in rows], 0.4, label="mean")
    ax.bar(x + 0.2, [1e3 * r["chosen_p95_latency_s"] for r in rows], 0.4, label="p95")
    ax.set_yscale("log")
    ax.set_xticks(x, labels, rotation=45, ha="right")
    ax.set_ylabel("latency of the chosen design (ms, log)")
    ax.legend()
    bx.plot(x, [100 * r["chosen_device_share"] for r in rows], "o-", label="chosen design")
    bx.plot(x, [100 * r["fastest_device_share"] for r in rows], "s--", label="fastest design")
    bx.set_xticks(x, labels, rotation=45, ha="right")
    bx.set_ylabel("FLOPs run on the phone (%)")
    bx.set_ylim(-5, 105)
    bx.legend()
    grid = np.array([[m["ratio_to_own_choice"] for m in matrix if m["designed_for"] == d]
                     for d in labels])
    im = mx.imshow(np.log10(grid), cmap="RdYlGn_r", vmin=-0.5, vmax=0.5)
    mx.set_xticks(x, labels, rotation=45, ha="right")
    mx.set_yticks(x, labels)
    mx.set_xlabel("evaluated on")
    mx.set_ylabel("searched for")
    for i in range(len(labels)):
        for j in range(len(labels)):
            v = grid[i, j]
            cell = "unst." if not math.isfinite(v) else f"{v:.2f}" if v < 10 else f"{v:.0f}"
            mx.text(j, i, cell, ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=mx, label="log10 latency / own choice's")
    mx.set_title("robustness: latency relative to the channel's own choice")
    save(fig, ctx.path("channel.png"))
    lo = min(rows, key=lambda r: r["mean_rate_bps"])
    hi = max(rows, key=lambda r: r["mean_rate_bps"])
    stable = [m for m in matrix if math.isfinite(m["ratio_to_own_choice"])]
    worst = max(stable, key=lambda m: m["ratio_to_own_choice"])
    unstable = [m for m in matrix if m["status"] == "unstable"]
    over = (f" {len(unstable)} of {len(matrix)} transfers overload a resource (offered "
            f"utilisation {min(m['utilisation'] for m in unstable):.2f} to "
            f"{max(m['utilisation'] for m in unstable):.3g}): no steady state, so no latency, "
            "marked 'unst.'." if unstable else "")
    text = (f"At {lo['mean_rate_bps'] / 1e6:.2f} Mbit/s ({lo['condition']}) the fastest design "
            f"runs {100 * lo['fastest_device_share']:.0f}% of its FLOPs on the phone, at "
            f"{hi['mean_rate_bps'] / 1e6:.0f} Mbit/s ({hi['condition']}) "
            f"{100 * hi['fastest_device_share']:.0f}%. The chosen design's mean latency ranges "
            f"from {1e3 * min(r['chosen_latency_s'] for r in rows):.1f} to "
            f"{1e3 * max(r['chosen_latency_s'] for r in rows):.1f} ms. Worst transfer: the "
            f"design searched for {worst['designed_for']} is "
            f"{worst['ratio_to_own_choice']:.2f}x slower on {worst['evaluated_on']} than that "
            f"channel's own choice (stable transfers; latencies re-measured on "
            f"{cfg.remeasure_replications} fresh replications)." + over)
    return Output("channel", TITLE, text, ["channel.png"],
                  ["channel.csv", "channel_robustness.csv"])


def main() -> int:
    return experiment_main("channel", run)


if __name__ == "__main__":
    raise SystemExit(main())
