"""load: mean and p95 latency of fixed designs as the request rate grows, and how the joint
search moves work off an edge server that more and more phones share.

Part 1 takes the front of a search at the scenario's own rate and simulates its fastest, middle
and most accurate designs at each rate (the same seed: Poisson arrivals scale with the rate, so
queues only grow). Part 2 copies the phone and its uplink N times, every copy sending its own
stream to the one edge server, and searches again for each N.
"""

from __future__ import annotations

import copy
from typing import Any

from matplotlib import pyplot as plt

from search.evaluate import Evaluator
from sim import Scenario, scenario_from_dict

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
    variant_dict,
    write_csv,
)

TITLE = "Load: request rate and phones sharing an edge"
RATE_COLUMNS = ["design", "label", "rate_hz", "status", "utilisation", "mean_latency_s",
                "mean_latency_ci95_s", "p95_latency_s", "p95_latency_ci95_s"]
DEVICE_COLUMNS = ["devices", "fastest_latency_s", "fastest_latency_ci95_s",
                  "fastest_p95_latency_s", "fastest_device_share", "front_size",
                  "fastest_design"]


def shared_edge(name: str, overrides: dict[str, Any], devices: int) -> Scenario:
    """The scenario with its first node copied ``devices`` times, each copy with its own link to
    the second node and its own request stream."""
    data, base_dir = variant_dict(name, overrides)
    phone, edge = data["path"][0], data["path"][1]
    link = next(x for x in data["links"] if x["src"] == phone and x["dst"] == edge)
    names = [f"{phone}{i + 1}" if devices > 1 else phone for i in range(devices)]
    node = data["nodes"].pop(phone)
    data["links"] = [x for x in data["links"] if x is not link]
    for n in names:
        data["nodes"][n] = copy.deepcopy(node)
        data["links"].append({**copy.deepcopy(link), "src": n})
    data["path"] = [names[0], *data["path"][1:]]
    data["workload"]["sources"] = names
    data["pipeline"] = [{"compute": names[0], "flops": 1.0}]  # replaced by each design's
    data["name"] = f"{data['name']}-{devices}-devices"
    return scenario_from_dict(data, base_dir=base_dir, where=data["name"])


def run(ctx: Context) -> Output:
    c = ctx.config
    cfg = ctx.search_config()
    overrides = dict(c.get("overrides") or {})
    scenario = scenario_variant(c["scenario"], overrides)
    front = front_of(search(ctx, scenario, cfg, "base"), "load: the base search")
    picks = {"fastest": front[0], "middle": front[len(front) // 2], "most accurate": front[-1]}
    rate_rows: list[dict[str, Any]] = []
    nan = float("nan")
    for rate in c["rates_hz"]:
        variant = scenario_variant(c["scenario"], overrides
                                   | {"workload.arrivals.rate_hz": float(rate)})
        ev = Evaluator(variant, cfg, ctx.cache)
        for label, pick in picks.items():  # re-measured; overloaded: no latency at all
            (e,) = ev.evaluate([pick.genome])
            row = {"design": f"{pick.arch} {pick.design}", "label": label,
                   "rate_hz": float(rate), "status": e.status, "utilisation": e.utilisation,
                   "mean_latency_s": nan, "mean_latency_ci95_s": nan, "p95_latency_s": nan,
                   "p95_latency_ci95_s": nan}
            if e.feasible:
                (again,) = remeasure(ctx, variant, cfg, [e])
                row |= {"mean_latency_s": again.mean_latency_s,
                        "mean_latency_ci95_s": again.mean_ci95_s,
                        "p95_latency_s": again.p95_latency_s,
                        "p95_latency_ci95_s": again.p95_ci95_s}
            rate_rows.append(row)
    write_csv(ctx.path("load_rate.csv"), rate_rows, RATE_COLUMNS)

    device_rows: list[dict[str, Any]] = []
    for n in c["devices"]:
        shared = shared_edge(c["scenario"], overrides, int(n))
        result = search(ctx, shared, cfg, f"devices-{n}")
        devices_front = front_of(result, f"load with {n} devices")
        fastest = devices_front[0]
        again = {r.genome: r for r in result.remeasured}[fastest.genome]
        ev = Evaluator(shared, cfg, ctx.cache)
        device_rows.append({"devices": int(n), "fastest_latency_s": again.mean_latency_s,
                            "fastest_latency_ci95_s": again.mean_ci95_s,
                            "fastest_p95_latency_s": again.p95_latency_s,
                            "fastest_device_share": device_share(ev, fastest)[0],
                            "front_size": len(devices_front),
                            "fastest_design": f"{fastest.arch} {fastest.design}"})
    write_csv(ctx.path("load_devices.csv"), device_rows, DEVICE_COLUMNS)

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    for label in picks:
        sel = [r for r in rate_rows if r["label"] == label and r["status"] != "unstable"]
        line = ax.errorbar([r["rate_hz"] for r in sel],
                           [1e3 * r["mean_latency_s"] for r in sel],
                           yerr=[1e3 * r["mean_latency_ci95_s"] for r in sel], fmt="o-",
                           capsize=2, label=f"{label}: mean")
        color = line[0].get_color()
        ax.plot([r["rate_hz"] for r in sel], [1e3 * r["p95_latency_s"] for r in sel], "s--",
                color=color, label=f"{label}: p95")
        bad = [r["rate_hz"] for r in rate_rows if r["label"] == label
               and r["status"] == "unstable"]
        if bad:
            ax.plot(bad, [1.0] * len(bad), "x", color=color, ms=9,
                    transform=ax.get_xaxis_transform(), clip_on=False,
                    label=f"{label}: unstable (utilisation >= 1)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("requests per second per phone (log)")
    ax.set_ylabel("completion latency (ms, log)")
    ax.set_title("fixed designs under growing load")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    ns = [r["devices"] for r in device_rows]
    bx.plot(ns, [100 * r["fastest_device_share"] for r in device_rows], "o-",
            color="tab:green", label="FLOPs on each phone (%)")
    bx.set_ylim(-5, 105)
    bx.set_xlabel("phones sharing the edge server")
    bx.set_ylabel("FLOPs on the phone, fastest design (%)")
    cx = bx.twinx()
    cx.plot(ns, [1e3 * r["fastest_latency_s"] for r in device_rows], "s--", color="tab:red",
            label="mean latency (ms)")
    cx.set_ylabel("mean latency of the fastest design (ms)")
    bx.set_title("joint search per number of phones")
    bx.legend(loc="upper left", fontsize=8)
    cx.legend(loc="lower right", fontsize=8)
    save(fig, ctx.path("load.png"))
    lo, hi = min(c["rates_hz"]), max(c["rates_hz"])
    fast = [r for r in rate_rows if r["label"] == "fastest" and r["status"] != "unstable"]
    unstable = [r for r in rate_rows if r["status"] == "unstable"]
    over = (f" {len(unstable)} (design, rate) pairs overload a resource and have no latency "
            f"(from {min(r['rate_hz'] for r in unstable):g} requests/s)." if unstable else "")
    text = (f"The fastest design's p95 latency grows from {1e3 * fast[0]['p95_latency_s']:.1f} ms "
            f"at {lo:g} to {1e3 * fast[-1]['p95_latency_s']:.1f} ms at "
            f"{fast[-1]['rate_hz']:g} requests/s (re-measured on {cfg.remeasure_replications} "
            f"fresh replications; highest rate tried {hi:g}).{over} With "
            + ", ".join(f"{r['devices']} phone(s) the fastest design runs "
                        f"{100 * r['fastest_device_share']:.0f}% of its FLOPs on the phone "
                        f"({1e3 * r['fastest_latency_s']:.1f} ms)" for r in device_rows) + ".")
    return Output("load", TITLE, text, ["load.png"], ["load_rate.csv", "load_devices.csv"])


def main() -> int:
    return experiment_main("load", run)


if __name__ == "__main__":
    raise SystemExit(main())
