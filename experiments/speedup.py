"""speedup: the table the field reports, the latency gain of splitting over placing a model whole.

Neurosurgeon (Kang et al. 2017) reports a 3.1x average latency gain of its best single split over
the better of device-only and cloud-only execution; DADS (Hu et al. 2019) 6.45x over edge-only and
8.08x over cloud-only. This experiment makes that table here: for AlexNet, VGG-16, ResNet-18 and
MobileNetV2 (:mod:`models.reference`) and for designs of the joint search, on the scenario with the
phone's uplink replaced by a constant channel of each rate, the latency of

- device only, edge only, cloud only (the model whole on one node; the raw input travels there);
- the best single split: blocks [0, p) on the device, the rest on ONE later node of the path,
  every p and every such node tried (Neurosurgeon's search);
- the best multi-split: :func:`search.dp.optimal_split` over the whole path;
- for the joint search's designs, the design as searched (its own route, cuts and compression);

and the speedup of the best of these over device only, edge only, cloud only and the better of
device and cloud only. Latency is :func:`search.dp.no_queue_latency`: one request alone on the
network, compute at one server's FLOP/s, transfers at the link's mean rate plus propagation; the
quantity those papers' tables report (a single inference's end-to-end time, no queueing). A design
whose segment does not fit its node's memory has no latency (infinite, "n/a").

The joint search (one per uplink, on that uplink's scenario) optimises the simulated mean latency
under the scenario's arrivals, not this no-queueing latency; its designs are taken from its front
in three roles, so that the rows line up across uplinks although each uplink's search finds its own
architectures: the fastest, the most accurate, and the knee (the interior design farthest above
the chord joining those two, in min-max normalised log latency and accuracy; our choice, a
common one). With fewer than three designs on a front there is no knee row for that uplink, and
a one-design front is both fastest and most accurate. Each of their architectures also gets the
device / edge / cloud / single / multi placements, so the reader sees what the joint search's
split and compression buy over placing the same architecture.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib import pyplot as plt

from models.profile import ModelProfile
from models.reference import reference_model
from models.spec import ArchSpec, Cut
from search.design import Design
from search.dp import no_queue_latency, optimal_split
from search.evaluate import Evaluation, Evaluator
from sim import Scenario

from .common import (
    Context,
    Output,
    experiment_main,
    front_of,
    save,
    scenario_variant,
    search,
    write_csv,
)

TITLE = "Speedup of splitting over device only and cloud only"
COLUMNS = ["model", "uplink_bps", "arch", "gflops", "accuracy", "device_only_s", "edge_only_s",
           "cloud_only_s", "single_split_s", "single_split", "multi_split_s", "multi_split",
           "searched_s", "searched", "best_s", "best", "speedup_vs_device", "speedup_vs_edge",
           "speedup_vs_cloud", "speedup_vs_better"]
ROLES = ("fastest", "knee", "most accurate")
PLACEMENTS = ("device", "edge", "cloud")
"""What the path's three nodes are called in the columns (first, second, last node)."""


def uplink_scenario(c: dict[str, Any], rate_bps: float) -> Scenario:
    """The config's scenario (with its ``overrides``) whose link from the path's first node to
    its second is a constant channel of ``rate_bps`` (propagation kept)."""
    overrides = dict(c.get("overrides") or {})
    base = scenario_variant(c["scenario"], overrides)
    if len(base.path) != len(PLACEMENTS):
        raise ValueError(f"speedup config: scenario {base.name!r} has path "
                         f"{' -> '.join(base.path)}; this experiment needs three nodes "
                         "(device, edge, cloud)")
    first = tuple(base.path[:2])
    index = next((i for i, link in enumerate(base.links) if (link.src, link.dst) == first), None)
    if index is None:
        raise ValueError(f"speedup config: scenario {base.name!r} has no link "
                         f"{first[0]} -> {first[1]}")
    return scenario_variant(c["scenario"], overrides | {
        f"links.{index}.channel": {"model": "constant", "rate_bps": rate_bps}})


def whole_on(arch: ArchSpec, route: tuple[str, ...], node: int, head: int = 0) -> Design:
    """Blocks [0, head) on the route's first node, the rest on node ``node`` (the nodes in
    between forward; ``head`` = 0 and ``node`` k: the model whole on node k)."""
    hops, n = len(route) - 1, arch.n_blocks
    return Design(arch, route, tuple(Cut(p) for p in [head] * node + [n] * (hops - node)))


@dataclass(frozen=True)
class Placed:
    """A placement of one architecture and its no-queueing latency (s; infinite when some
    segment does not fit its node's memory)."""

    design: Design
    latency_s: float


def placements(arch: ArchSpec, profile: ModelProfile, scenario: Scenario) -> dict[str, Placed]:
    """The architecture (uncompressed, ``profile`` its profile) on the scenario's path:
    ``device``, ``edge``, ``cloud`` (whole on the first, second, last node), ``single`` (the
    lowest of every head [0, p) on the first node with the rest on one later node; ties: the
    earlier node, then the smaller p) and ``multi`` (:func:`search.dp.optimal_split`)."""
    route = tuple(scenario.path)

    def placed(design: Design) -> Placed:
        return Placed(design, no_queue_latency(design, profile, scenario))

    out = {name: placed(whole_on(arch, route, k))
           for name, k in zip(PLACEMENTS, (0, 1, len(route) - 1), strict=True)}
    singles = [placed(whole_on(arch, route, k, p))
               for k in range(1, len(route)) for p in range(arch.n_blocks + 1)]
    out["single"] = min(singles, key=lambda x: x.latency_s)
    plan = optimal_split(profile, scenario, route)
    out["multi"] = placed(Design(arch, route, tuple(Cut(p) for p in plan.positions)))
    return out


def front_roles(front: Sequence[Evaluation]) -> dict[str, Evaluation]:
    """The front's fastest and most accurate designs and, with three or more, its knee: the
    interior design farthest above the chord joining those two, with log latency and accuracy
    each normalised to [0, 1] over the front (our choice)."""
    by_latency = sorted(front, key=lambda e: e.latency_s)
    fast, accurate = by_latency[0], max(by_latency, key=lambda e: e.accuracy)
    roles = {"fastest": fast}
    if len(by_latency) >= 3:
        lo, hi = math.log(fast.latency_s), math.log(accurate.latency_s)

        def above(e: Evaluation) -> float:
            u = (math.log(e.latency_s) - lo) / ((hi - lo) or 1.0)
            v = (e.accuracy - fast.accuracy) / ((accurate.accuracy - fast.accuracy) or 1.0)
            return v - u  # proportional to the distance above the chord u = v

        roles["knee"] = max(by_latency[1:-1], key=above)
    roles["most accurate"] = accurate
    return roles


def _ratio(slow: float, fast: float) -> float:
    if not math.isfinite(fast):
        return math.nan
    return slow / fast


def where(design: Design) -> str:
    """The nodes that run blocks, with their blocks and compressing cuts, e.g.
    ``phone[0:7] edge[7:9]``."""
    parts = [f"{node}[{a}:{b}]" for node, (a, b) in zip(design.route, design.segments(),
                                                          strict=True) if b > a]
    comp = ",".join(f"{c.position}:{c.bottleneck:g}x{c.bits}b" for c in design.compressing_cuts)
    return " ".join(parts) + (f" ({comp})" if comp else "")


def speedup_row(model: str, rate_bps: float, arch: ArchSpec, evaluator: Evaluator,
                searched: Evaluation | None = None) -> dict[str, Any]:
    """One row of ``speedup.csv``: ``arch`` placed every way on ``evaluator``'s scenario and,
    for a design of the joint search, that design as searched."""
    scenario = evaluator.scenario
    route = tuple(scenario.path)
    profile = evaluator.profile(Design(arch, route, ()))
    placed = placements(arch, profile, scenario)
    candidates = {"multi-split": placed["multi"]}
    accuracy = math.nan
    if searched is not None:
        design = evaluator.layout.decode(searched.genome)
        candidates["as searched"] = Placed(design, no_queue_latency(
            design, evaluator.profile(design), scenario))
        accuracy = searched.accuracy
    best_name, best = min(candidates.items(), key=lambda kv: kv[1].latency_s)
    lat = {name: p.latency_s for name, p in placed.items()}
    as_searched = candidates.get("as searched")
    better = min(lat["device"], lat["cloud"])
    return {
        "model": model, "uplink_bps": rate_bps, "arch": arch.name,
        "gflops": profile.total_flops / 1e9, "accuracy": accuracy,
        "device_only_s": lat["device"], "edge_only_s": lat["edge"],
        "cloud_only_s": lat["cloud"],
        "single_split_s": lat["single"], "single_split": where(placed["single"].design),
        "multi_split_s": lat["multi"], "multi_split": where(placed["multi"].design),
        "searched_s": math.nan if as_searched is None else as_searched.latency_s,
        "searched": "" if as_searched is None else where(as_searched.design),
        "best_s": best.latency_s, "best": best_name if math.isfinite(best.latency_s) else "n/a",
        "speedup_vs_device": _ratio(lat["device"], best.latency_s),
        "speedup_vs_edge": _ratio(lat["edge"], best.latency_s),
        "speedup_vs_cloud": _ratio(lat["cloud"], best.latency_s),
        "speedup_vs_better": _ratio(better, best.latency_s),
    }


def _x(value: float) -> str:
    return "n/a" if math.isnan(value) else "inf" if math.isinf(value) else f"{value:.2f}x"


def _ms(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{1e3 * value:.1f} ms"


def _rate(rate_bps: float) -> str:
    return f"{rate_bps / 1e6:g} Mbit/s"


def tables(rows: Sequence[dict[str, Any]], models: Sequence[str],
           uplinks: Sequence[float]) -> tuple[str, str]:
    """Two Markdown tables, speedups and the best latency with where it runs; rows models,
    columns uplinks (the joint search's rows: one design per uplink in each role)."""
    by = {(r["model"], r["uplink_bps"]): r for r in rows}
    labels = list(models) + [f"joint {role}" for role in ROLES
                             if any(("joint " + role, u) in by for u in uplinks)]
    head = "| model | " + " | ".join(_rate(u) for u in uplinks) + " |\n"
    rule = "|---|" + "---|" * len(uplinks) + "\n"

    def cells(fmt: Any) -> str:
        out = ""
        for label in labels:
            out += f"| {label} | " + " | ".join(
                fmt(by[label, u]) if (label, u) in by else "-" for u in uplinks) + " |\n"
        return out

    mean = "| mean of the reference models | " + " | ".join(
        _x(float(np.mean([by[m, u]["speedup_vs_better"] for m in models]))) + " ("
        + _x(float(np.mean([by[m, u]["speedup_vs_device"] for m in models]))) + " / "
        + _x(float(np.mean([by[m, u]["speedup_vs_cloud"] for m in models]))) + ")"
        for u in uplinks) + " |\n"
    speed = head + rule + cells(lambda r: f"{_x(r['speedup_vs_better'])} "
                                          f"({_x(r['speedup_vs_device'])} / "
                                          f"{_x(r['speedup_vs_cloud'])})") + mean
    def where_best(r: dict[str, Any]) -> str:
        if r["best"] == "as searched":
            return f"{_ms(r['best_s'])}: {r['searched']} (as searched)"
        text = f"{_ms(r['best_s'])}: {r['multi_split']}"
        if r["searched"] and r["searched_s"] > r["best_s"]:  # the search's own is slower
            text += f"; as searched {_ms(r['searched_s'])}: {r['searched']}"
        return text

    return speed, head + rule + cells(where_best)


def run(ctx: Context) -> Output:
    c = ctx.config
    cfg = ctx.search_config()
    uplinks = [float(u) for u in c["uplinks_bps"]]
    models = list(c["models"])
    rows: list[dict[str, Any]] = []
    fronts: dict[float, int] = {}
    for rate in uplinks:
        scenario = uplink_scenario(c, rate)
        result = search(ctx, scenario, cfg, f"uplink-{rate / 1e6:g}Mbps")
        evaluator = Evaluator(scenario, result.config, ctx.cache)
        rows += [speedup_row(name, rate, reference_model(name), evaluator) for name in models]
        front = front_of(result, f"joint search at {_rate(rate)}")
        fronts[rate] = len(front)
        for role, ev in front_roles(front).items():
            arch = evaluator.layout.decode(ev.genome).arch
            rows.append(speedup_row(f"joint {role}", rate, arch, evaluator, searched=ev))
    write_csv(ctx.path("speedup.csv"), rows, COLUMNS)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    labels = list(dict.fromkeys(r["model"] for r in rows))
    for ax, column, versus in zip(axes, ("speedup_vs_device", "speedup_vs_cloud"),
                                  ("device only", "cloud only"), strict=True):
        for label in labels:
            sel = sorted((r for r in rows if r["model"] == label), key=lambda r: r["uplink_bps"])
            ax.plot([r["uplink_bps"] / 1e6 for r in sel], [r[column] for r in sel],
                    "o-" if label in models else "s--", label=label)
        ax.axhline(1.0, color="0.5", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("uplink rate (Mbit/s, log scale)")
        ax.set_title(f"best placement or split over {versus}")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("speedup (no-queueing latency ratio, log scale)")
    axes[1].legend(fontsize=8)
    save(fig, ctx.path("speedup.png"))

    speed, latency = tables(rows, models, uplinks)
    ref = [r for r in rows if r["model"] in models]
    whole = sum(r["best_s"] == min(r["device_only_s"], r["edge_only_s"], r["cloud_only_s"])
                for r in ref)
    multi = sum(r["multi_split_s"] < r["single_split_s"] * (1 - 1e-9) for r in ref)
    joint = [r for r in rows if r["model"] not in models]
    gain = [r["multi_split_s"] / r["searched_s"] for r in joint
            if math.isfinite(r["searched_s"]) and math.isfinite(r["multi_split_s"])]
    scenario = uplink_scenario(c, uplinks[0])
    nodes = ", ".join(f"{v} {scenario.nodes[v].flops_per_s / 1e9:g} GFLOP/s"
                      for v in scenario.path)
    text = (
        f"Latency is the single-request, no-queueing latency (`search.dp.no_queue_latency`: "
        "compute at one server's FLOP/s, each transfer at the link's mean rate plus "
        "propagation), the quantity Neurosurgeon's and DADS's tables report. Scenario "
        f"{scenario.name} (overrides {c.get('overrides') or 'none'}; {nodes}) with its "
        f"{scenario.path[0]} -> {scenario.path[1]} link a constant channel of each rate; "
        f"input {'x'.join(map(str, scenario.input_shape))} at "
        f"{scenario.input_bits_per_element} bits, 10 classes. 'Best' is the multi-split "
        "optimum (or, for the joint search's designs, the design as searched if faster); the "
        "best single split (Neurosurgeon's) is in speedup.csv.\n\n"
        "Speedup of the best over the better of device only and cloud only (over device only "
        "/ over cloud only):\n\n" + speed
        + "\nLatency of the best and where it runs (blocks per node; a joint design's own "
        "placement too where the plain multi-split of its architecture, without the design's "
        "compressing cuts, is faster):\n\n" + latency
        + f"\nOf the {len(ref)} reference-model cases, {whole} are best run whole on one node "
        f"(no split helps), and in {multi} a multi-split beats the best single split. "
        "The joint search's rows come from one search per uplink (front sizes "
        + ", ".join(f"{n} at {_rate(u)}" for u, n in fronts.items()) + "; roles fastest, "
        "knee, most accurate by the search's own simulated latency and proxy accuracy)")
    if gain:
        text += (f"; as searched they are {min(gain):.2f}x to {max(gain):.2f}x the speed of "
                 "their own architecture's best plain multi-split (above 1: the search's "
                 "compression or route beats the uncompressed optimum)")
    text += "."
    return Output("speedup", TITLE, text, ["speedup.png"], ["speedup.csv"])


def main() -> int:
    return experiment_main("speedup", run)


if __name__ == "__main__":
    raise SystemExit(main())
