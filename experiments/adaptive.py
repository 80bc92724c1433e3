"""adaptive: a split chosen per request from the channel, against one static split.

Part one (planners, no training): for fixed architectures with plain cuts (so every method has
the same accuracy), under uplinks of growing variability, the static DP design against the
policies of :mod:`search.adaptive` (the DP per state, the LENS-style threshold policy, the
natural-bottleneck policy) and the per-request oracle: mean and p95 latency over replications
with 95% CIs, and the share of requests within the deadline.

Part two (searches): on one Gilbert-Elliott uplink, the static joint search and the policy
search (``policy_states``), both on p95 latency, over GA seeds; both fronts re-measured on fresh
replications; the p95 reduction of the policy front at equal accuracy and the hypervolumes,
paired over seeds. Each front design is also simulated beside the per-request oracle of its own
architecture and compressions (:func:`search.adaptive.oracle_policy`, plain cuts and the
design's own compressions) on the same replications as part one: how far each front design is
from the best any split of its network could do per request; and beside the DP policy of the
same architecture and compressions (what the search's splits could at best be per state).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib import pyplot as plt
from scipy import stats

from models.profile import profile_model
from models.resolve import resolve_architecture
from search.adaptive import (
    bottleneck_policy,
    channel_states,
    dp_policy,
    oracle_policy,
    policy_of,
    threshold_policy,
)
from search.design import Design, PolicyDesign, policy_from_description
from search.dp import PLAIN, optimal_design
from search.indicators import hypervolume, normalise
from search.pipeline import design_pipeline
from search.remeasure import Remeasured
from sim import Scenario, simulate
from sim.report import confidence_half_width

from .common import Context, Output, experiment_main, save, scenario_variant, search, write_csv

TITLE = "Run-time split policies: the split chosen per request from the channel"
PLAN_COLUMNS = ["condition", "family", "arch", "method", "states", "mean_latency_s",
                "mean_ci95_s", "p95_latency_s", "p95_ci95_s", "within_deadline",
                "p95_vs_static", "p95_vs_oracle", "designs"]
SEARCH_COLUMNS = ["seed", "search", "accuracy", "mean_latency_s", "p95_latency_s", "p95_ci95_s",
                  "arch", "design", "p95_same_paths_s", "oracle_p95_s", "p95_vs_oracle",
                  "dp_policy_p95_s"]
PAIRED_COLUMNS = ["seed", "hv_static", "hv_policy", "p95_reduction_median",
                  "p95_reduction_best", "levels_compared"]
METHODS = ("static", "policy", "threshold", "bottleneck", "oracle")
COLORS = {"static": "tab:blue", "policy": "tab:red", "threshold": "tab:green",
          "bottleneck": "tab:purple", "oracle": "black"}


def _scenario(c: dict[str, Any], channel: dict[str, Any]) -> Scenario:
    overrides = dict(c.get("overrides") or {})
    overrides["links.0.channel"] = channel
    return scenario_variant(c["scenario"], overrides)


def _measure(scenario: Scenario, run: Any, reps: int, tasks: int,
             deadline_s: float) -> dict[str, float]:
    records = simulate(scenario, run, seed=1000, replications=reps,
                       tasks=scenario.workload.warmup_tasks + tasks, engine="auto").records
    means = [float(r.latency_s.mean()) for r in records]
    p95s = [float(np.percentile(r.latency_s, 95)) for r in records]
    within = float(np.mean(np.concatenate([r.latency_s for r in records]) <= deadline_s))
    return {"mean_latency_s": float(np.mean(means)), "mean_ci95_s": confidence_half_width(means),
            "p95_latency_s": float(np.mean(p95s)), "p95_ci95_s": confidence_half_width(p95s),
            "within_deadline": within}


def plan_rows(ctx: Context) -> list[dict[str, Any]]:
    """Part one: every condition x architecture x method."""
    c = ctx.config
    rows = []
    for cond in c["conditions"]:
        scenario = _scenario(c, cond["channel"])
        route = tuple(scenario.path)

        def pipe(design: Design, profile: Any, s: Scenario = scenario) -> Any:
            return design_pipeline(design, profile, s.input_bits_per_element)

        for name in c["architectures"]:
            arch = resolve_architecture(name)
            static = optimal_design(arch, scenario, route, (PLAIN,))[0]
            runs: dict[str, tuple[Any, int, str]] = {
                "static": (pipe(static, profile_model(arch, scenario.input_shape, 10)), 1,
                           static.describe())}
            states = channel_states(scenario, int(c["states"]))
            planned = dp_policy(arch, scenario, route, states)
            runs["policy"] = (policy_of(planned, states, scenario, pipe), states.count,
                              " | ".join(d.describe() for d in planned))
            lens, lens_states = threshold_policy(arch, scenario, route)
            runs["threshold"] = (policy_of(lens, lens_states, scenario, pipe), lens_states.count,
                                 " | ".join(d.describe() for d in lens))
            natural = bottleneck_policy(arch, scenario, route, states)
            runs["bottleneck"] = (policy_of(natural, states, scenario, pipe), states.count,
                                  " | ".join(d.describe() for d in natural))
            oracle = oracle_policy(arch, scenario, route, pipe)
            runs["oracle"] = (oracle, oracle.states, f"{oracle.states} DP designs")
            measured = {m: _measure(scenario, run, int(c["replications"]), int(c["tasks"]),
                                    float(c["deadline_s"])) for m, (run, _, _) in runs.items()}
            for m, (_, count, described) in runs.items():
                rows.append({"condition": cond["label"], "family": cond["family"],
                             "arch": arch.name, "method": m, "states": count,
                             **measured[m],
                             "p95_vs_static": measured[m]["p95_latency_s"]
                             / measured["static"]["p95_latency_s"],
                             "p95_vs_oracle": measured[m]["p95_latency_s"]
                             / measured["oracle"]["p95_latency_s"],
                             "designs": described})
    return rows


def _against_oracle(c: dict[str, Any], scenario: Scenario, arch_name: str,
                    described: str) -> dict[str, float]:
    """A front design's p95 and its architecture's oracle p95 (plain cuts and the design's own
    compressions) on part one's replications (common random numbers)."""
    arch = resolve_architecture(arch_name)
    design = policy_from_description(arch, described)
    route = tuple(scenario.path)

    def pipe(d: Design, profile: Any) -> Any:
        return design_pipeline(d, profile, scenario.input_bits_per_element)

    states = channel_states(scenario, int(c["states"]))
    designs = design.states if isinstance(design, PolicyDesign) else (design,)
    compressions = list(dict.fromkeys(
        [PLAIN, *((cut.bottleneck, cut.bits) for d in designs for cut in d.compressing_cuts)]))
    if isinstance(design, PolicyDesign):
        run: Any = policy_of(design.states, states, scenario, pipe)
    else:
        run = pipe(design, profile_model(arch, scenario.input_shape, 10,
                                         cuts=design.compressing_cuts))
    oracle = oracle_policy(arch, scenario, route, pipe, compressions)
    planned = policy_of(dp_policy(arch, scenario, route, states, compressions), states,
                        scenario, pipe)
    reps, tasks, deadline = int(c["replications"]), int(c["tasks"]), float(c["deadline_s"])
    own = _measure(scenario, run, reps, tasks, deadline)["p95_latency_s"]
    best = _measure(scenario, oracle, reps, tasks, deadline)["p95_latency_s"]
    dp = _measure(scenario, planned, reps, tasks, deadline)["p95_latency_s"]
    return {"p95_same_paths_s": own, "oracle_p95_s": best, "p95_vs_oracle": own / best,
            "dp_policy_p95_s": dp}


def _reduction(static: list[Remeasured], policy: list[Remeasured],
               accuracy: dict[tuple[int, ...], float]) -> list[float]:
    """At each static front design's accuracy, 1 - (lowest p95 of a policy front design at
    least as accurate) / its p95 (NaN where no policy design is as accurate)."""
    out = []
    for s in static:
        better = [p.p95_latency_s for p in policy if accuracy[p.genome] >= accuracy[s.genome]]
        out.append(1.0 - min(better) / s.p95_latency_s if better else math.nan)
    return out


def run(ctx: Context) -> Output:
    c = ctx.config
    rows = plan_rows(ctx)
    write_csv(ctx.path("adaptive.csv"), rows, PLAN_COLUMNS)

    sc = c["search_condition"]
    scenario = _scenario(c, sc["channel"])
    search_rows: list[dict[str, Any]] = []
    paired: list[dict[str, Any]] = []
    fronts: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for seed in ctx.seeds():
        measured: dict[str, list[Remeasured]] = {}
        accuracy: dict[tuple[int, ...], float] = {}
        for kind, states in (("static", 1), ("policy", int(c["states"]))):
            cfg = ctx.search_config(seed=seed, policy_states=states, latency="p95")
            result = search(ctx, scenario, cfg, f"{kind}-seed{seed}")
            front = {e.genome: e for e in result.front()}
            measured[kind] = [r for r in result.remeasured if r.genome in front]
            for r in measured[kind]:
                accuracy[r.genome] = front[r.genome].accuracy
                search_rows.append({"seed": seed, "search": kind,
                                    "accuracy": front[r.genome].accuracy,
                                    "mean_latency_s": r.mean_latency_s,
                                    "p95_latency_s": r.p95_latency_s, "p95_ci95_s": r.p95_ci95_s,
                                    "arch": r.arch, "design": r.design,
                                    **_against_oracle(c, scenario, r.arch, r.design)})
            fronts[seed, kind] = [(accuracy[r.genome], r.p95_latency_s) for r in measured[kind]]
        ref = cfg.hv_reference()[:2]  # (accuracy, re-measured p95) of each front
        hv = {k: hypervolume(normalise(fronts[seed, k], ref)) for k in ("static", "policy")}
        red = [x for x in _reduction(measured["static"], measured["policy"], accuracy)
               if math.isfinite(x)]
        paired.append({"seed": seed, "hv_static": hv["static"], "hv_policy": hv["policy"],
                       "p95_reduction_median": float(np.median(red)) if red else math.nan,
                       "p95_reduction_best": max(red, default=math.nan),
                       "levels_compared": len(red)})
    write_csv(ctx.path("adaptive_search.csv"), search_rows, SEARCH_COLUMNS)
    write_csv(ctx.path("adaptive_paired.csv"), paired, PAIRED_COLUMNS)
    _plot(ctx, rows, fronts, c)
    return Output(ctx.name, TITLE, _text(c, rows, paired, search_rows), ["adaptive.png"],
                  ["adaptive.csv", "adaptive_search.csv", "adaptive_paired.csv"])


def _plot(ctx: Context, rows: list[dict[str, Any]],
          fronts: dict[tuple[int, str], list[tuple[float, float]]], c: dict[str, Any]) -> None:
    conditions = list(dict.fromkeys(r["condition"] for r in rows))
    archs = list(dict.fromkeys(r["arch"] for r in rows))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.6))
    x = np.arange(len(conditions))
    width = 0.8 / len(METHODS)
    for k, m in enumerate(METHODS):  # the first architecture's p95, with its CI
        mine = [next(r for r in rows if r["condition"] == cond and r["arch"] == archs[0]
                     and r["method"] == m) for cond in conditions]
        ax.bar(x + (k - (len(METHODS) - 1) / 2) * width, [1e3 * r["p95_latency_s"] for r in mine],
               width, yerr=[1e3 * r["p95_ci95_s"] for r in mine], color=COLORS[m], label=m,
               capsize=2)
    ax.set_yscale("log")
    ax.set_xticks(x, conditions, rotation=30, ha="right")
    ax.set_ylabel("p95 latency (ms, log)")
    ax.set_title(f"{archs[0]}, plain cuts, {c['replications']} replications")
    ax.legend(fontsize=8)
    seeds = sorted({s for s, _ in fronts})
    for kind, marker in (("static", "o"), ("policy", "s")):
        for i, seed in enumerate(seeds):
            pts = sorted(fronts[seed, kind], key=lambda p: p[1])
            bx.plot([1e3 * p[1] for p in pts], [100 * p[0] for p in pts], marker + "-",
                    color=COLORS[kind], alpha=0.8, drawstyle="steps-post",
                    label=f"{kind} search" if i == 0 else None)
    bx.set_xscale("log")
    bx.set_xlabel("p95 latency, re-measured (ms, log)")
    bx.set_ylabel("proxy accuracy (%)")
    bx.set_title(f"fronts on {c['search_condition']['label']}, {len(seeds)} GA seeds")
    bx.grid(alpha=0.3)
    bx.legend(fontsize=8)
    save(fig, ctx.path("adaptive.png"))


def _text(c: dict[str, Any], rows: list[dict[str, Any]], paired: list[dict[str, Any]],
          search_rows: list[dict[str, Any]]) -> str:
    lines = []
    for cond in dict.fromkeys(r["condition"] for r in rows):
        mine = [r for r in rows if r["condition"] == cond]
        pol = [r["p95_vs_static"] for r in mine if r["method"] == "policy"]
        orc = [r["p95_vs_oracle"] for r in mine if r["method"] == "policy"]
        lines.append(f"- {cond}: the DP policy's p95 is {min(pol):.2f}-{max(pol):.2f}x the "
                     f"static design's and {min(orc):.2f}-{max(orc):.2f}x the oracle's, over "
                     f"{len(pol)} architecture(s)")
    red = [p["p95_reduction_median"] for p in paired if math.isfinite(p["p95_reduction_median"])]
    diff = [p["hv_policy"] - p["hv_static"] for p in paired]
    search = (f"Searches on {c['search_condition']['label']} over {len(paired)} GA seeds: the "
              f"policy front's p95 at equal accuracy is lower by a median of "
              f"{100 * float(np.mean(red)):.0f}% (mean over seeds; per seed "
              f"{', '.join(f'{100 * r:.0f}%' for r in red)}); hypervolume (accuracy, p95) "
              f"policy minus static {np.mean(diff):+.4f}"
              + (f" (Wilcoxon p {stats.wilcoxon(diff).pvalue:.3f})"
                 if len(diff) > 1 and any(d != 0 for d in diff) else "") + "."
              if red else "The policy front had no design as accurate as the static front's.")
    for kind in ("static", "policy"):
        ratio = [r["p95_vs_oracle"] for r in search_rows if r["search"] == kind]
        if ratio:
            dp = [r["p95_same_paths_s"] / r["dp_policy_p95_s"] for r in search_rows
                  if r["search"] == kind]
            search += (f" The {kind} front designs' p95 is {np.median(ratio):.2f}x their "
                       f"architecture's oracle (median; {min(ratio):.2f}-{max(ratio):.2f}, "
                       f"{sum(x <= 1.10 for x in ratio)} of {len(ratio)} within 10%) and "
                       f"{np.median(dp):.2f}x its DP policy (median; "
                       f"{min(dp):.2f}-{max(dp):.2f}).")
    return ("Part one, fixed architectures with plain cuts (the same accuracy for every method), "
            f"{c['replications']} replications of {c['tasks']} requests:\n\n"
            + "\n".join(lines) + "\n\n" + search)


if __name__ == "__main__":
    raise SystemExit(experiment_main("adaptive", run))
