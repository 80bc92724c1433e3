"""convergence: hypervolume against evaluations for every optimiser, over many seeds, with tests.

Methods, all through the same :class:`search.evaluate.Evaluator` and one accuracy cache (a design
gets the same scores whichever method finds it): the joint NSGA-II (:mod:`search.nsga`), the
same without the DP's seeds and re-splits (``nsga2-nodp``: what evolution alone does), random
search (:func:`search.baselines.random_search`), and Optuna's multi-objective TPE and NSGA-II
samplers (:mod:`search.optuna_search`; skipped, and said so, where Optuna is not installed).
Each seed's NSGA-II run sets the budget: random search and Optuna's samplers evaluate as many
distinct designs, in batches of the population size, so every curve has a point per generation
(batch); ``nsga2-nodp`` runs its own generations (a few offspring fewer when fresh ones run
out), and every curve is read at NSGA-II's budgets (:func:`at_budget`).

Every scenario of the config's ``scenarios`` list is compared on its own (its own reference and
tests); one cache serves them all (an accuracy does not depend on the network). Reported, per
scenario and method: the mean hypervolume over seeds at each budget with its Student-t 95%
confidence band (:func:`experiments.common.over_seeds`); the evaluations each run needed to reach
95% of the reference hypervolume, that of every design any run evaluated (the union of every
method's final front); and, against NSGA-II, the mean paired difference at the final budget with
its 95% CI and the two-sided Wilcoxon signed-rank p-value over seeds, as the issue tracker asked
(the methods draw from their own streams, so runs of one seed share only the seed's number and
the pairing is nominal; the signed-rank test needs no normality of the differences). NSGA-II
runs resume from their checkpoints; the other methods run again on a resume, from the cache.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib import pyplot as plt
from scipy import stats

from search.baselines import random_search
from search.nsga import SearchResult, front_hypervolume

from .common import (
    Context,
    Output,
    experiment_main,
    over_seeds,
    save,
    scenario_variant,
    search,
    write_csv,
)

TITLE = "Convergence: NSGA-II against random search and Optuna's samplers"
COLUMNS = ["scenario", "method", "seed", "step", "evaluations", "hypervolume", "best_accuracy",
           "best_latency_s"]
SUMMARY_COLUMNS = ["scenario", "method", "seeds", "evaluations", "hv_mean", "hv_ci95_lo",
                   "hv_ci95_hi", "hv_min", "hv_max", "reference_hv", "to95_median", "to95_reached",
                   "diff_vs_nsga2", "diff_ci95", "wilcoxon_p", "budgets_at_least_nsga2"]
PAIRED_COLUMNS = ["scenario", "method", "evaluations", "diff_vs_nsga2", "diff_ci95", "wilcoxon_p",
                  "nsga2_ahead"]
METHODS = {"nsga2": "NSGA-II", "nsga2-nodp": "NSGA-II without DP", "random": "random search",
           "tpe": "Optuna TPE", "optuna-nsga2": "Optuna NSGA-II"}
COLORS = {"nsga2": "tab:red", "nsga2-nodp": "tab:orange", "random": "tab:blue",
          "tpe": "tab:green", "optuna-nsga2": "tab:purple"}
FROM_EVALUATIONS = 48
"""Budgets compared in ``budgets_at_least_nsga2``: from this many evaluations on."""


def _methods(c: dict[str, Any]) -> tuple[list[str], str]:
    methods = list(c.get("methods", list(METHODS)))
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods or methods[0] != "nsga2":
        raise ValueError(f"convergence config: methods must start with nsga2 and be among "
                         f"{', '.join(METHODS)}, got {methods}")
    try:
        import optuna  # noqa: F401
    except ImportError:
        kept = [m for m in methods if m not in ("tpe", "optuna-nsga2")]
        if kept != methods:
            return kept, (" Optuna's samplers were left out: Optuna is not installed "
                          "(pip install -e '.[compare]').")
    return methods, ""


def _run(ctx: Context, label: str, method: str, scenario: Any, cfg: Any,
         budget: int) -> SearchResult:
    if method == "nsga2-nodp":  # the ablation: evolution alone, no split planned by the DP
        return search(ctx, scenario, cfg.with_changes(dp_seeding=False, resplit="none"), label)
    out = ctx.out / "searches" / label
    if method == "random":
        return random_search(scenario, cfg, budget, out, cache_path=ctx.cache)
    from search.optuna_search import optuna_search

    return optuna_search(scenario, cfg, budget, out, cache_path=ctx.cache,
                         sampler="tpe" if method == "tpe" else "nsga2")


def to_reference(history: Sequence[dict[str, float]], target: float) -> float:
    """Evaluations after which a run's hypervolume first reached ``target`` (NaN: never)."""
    for h in history:
        if h["hypervolume"] >= target:
            return float(h["evaluations"])
    return math.nan


def paired(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """Mean of a - b over paired seeds, its Student-t 95% CI half-width, and the two-sided
    Wilcoxon signed-rank p-value (1 where every difference is zero)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    half = (float(stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size))
            if d.size > 1 else math.nan)
    p = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    return float(d.mean()), half, p


def _scenarios(c: dict[str, Any]) -> list[tuple[str, Any]]:
    """The config's ``scenarios``: (label, scenario) pairs, each a shipped scenario with
    optional overrides."""
    entries = c.get("scenarios")
    if not isinstance(entries, list) or not entries or not all(
            isinstance(e, dict) and isinstance(e.get("name"), str) and "scenario" in e
            for e in entries):
        raise ValueError("convergence config: scenarios must be a non-empty list of "
                         "{name, scenario, overrides} mappings")
    names = [e["name"] for e in entries]
    bad = [n for n in names if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", n)]
    if bad:
        raise ValueError(f"convergence config: scenario name {bad[0]!r} must be letters, "
                         "digits, '.', '_' or '-' (it names a folder)")
    if len(set(names)) < len(names):
        raise ValueError(f"convergence config: scenario names must differ, got {names}")
    return [(e["name"], scenario_variant(e["scenario"], e.get("overrides"))) for e in entries]


def run(ctx: Context) -> Output:
    c = ctx.config
    methods, note = _methods(c)
    seeds = ctx.seeds()
    rows: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    by_budget: list[dict[str, Any]] = []
    panels = []
    texts = []
    for label, scenario in _scenarios(c):
        out = _compare(ctx, label, scenario, methods, seeds)
        rows += out["rows"]
        summary += out["summary"]
        by_budget += out["by_budget"]
        panels.append((label, out["budgets"], out["curves"], out["target"]))
        texts.append(f"**{label}**\n\n" + _text(out["summary"], len(seeds), out["reference"])
                     + "\n\n" + _paired_text(out["by_budget"], len(seeds)))
    write_csv(ctx.path("convergence.csv"), rows, COLUMNS)
    write_csv(ctx.path("convergence_summary.csv"), summary, SUMMARY_COLUMNS)
    write_csv(ctx.path("convergence_paired.csv"), by_budget, PAIRED_COLUMNS)
    _figure(ctx, methods, panels, len(seeds))
    text = "\n\n".join(texts) + (f"\n\n{note.strip()}" if note else "")
    return Output("convergence", TITLE, text, ["convergence.png"],
                  ["convergence.csv", "convergence_summary.csv", "convergence_paired.csv"])


def _compare(ctx: Context, label: str, scenario: Any, methods: list[str],
             seeds: list[int]) -> dict[str, Any]:
    """Every method on every seed on one scenario: the curves, the summary rows and the
    per-budget paired rows."""
    results: dict[str, dict[int, SearchResult]] = {m: {} for m in methods}
    cfg0 = ctx.search_config(seed=seeds[0])
    for seed in seeds:
        cfg = ctx.search_config(seed=seed)
        ga = search(ctx, scenario, cfg, f"{label}/nsga2-seed{seed}")
        results["nsga2"][seed] = ga
        for method in methods[1:]:
            results[method][seed] = _run(ctx, f"{label}/{method}-seed{seed}", method,
                                         scenario, cfg, len(ga.evaluations))
    rows: list[dict[str, Any]] = []
    for method in methods:
        for seed, result in results[method].items():
            for step, h in enumerate(result.history):
                rows.append({"scenario": label, "method": METHODS[method], "seed": seed,
                             "step": step, "evaluations": int(h["evaluations"]),
                             "hypervolume": h["hypervolume"],
                             "best_accuracy": h["best_accuracy"],
                             "best_latency_s": h["best_latency_s"]})
    # the reference: every design any run evaluated, all runs' scores together (so no run can
    # lie above it)
    union = [e for m in methods for r in results[m].values() for e in r.evaluations.values()]
    reference = front_hypervolume(union, cfg0)
    target = 0.95 * reference
    # one grid of budgets for every method: NSGA-II's, each run read at its last row within
    budgets = sorted({int(h["evaluations"]) for r in results["nsga2"].values()
                      for h in r.history})
    curves = {m: np.array([[at_budget(results[m][s].history, b) for b in budgets]
                           for s in seeds]) for m in methods}
    summary = []
    for m in methods:
        hv = curves[m]
        st = over_seeds(list(hv[:, -1]))
        reach = [to_reference(results[m][s].history, target) for s in seeds]
        diff, half, p = paired(list(curves["nsga2"][:, -1]), list(hv[:, -1])) if m != "nsga2" else (
            math.nan, math.nan, math.nan)
        at_least = sum(1 for b, a, g in zip(budgets, hv.mean(axis=0),
                                            curves["nsga2"].mean(axis=0), strict=True)
                       if b >= FROM_EVALUATIONS and a >= g)
        summary.append({"scenario": label, "method": METHODS[m], "seeds": len(seeds),
                        "evaluations": budgets[-1],
                        "hv_mean": st["hv_mean"], "hv_ci95_lo": st["hv_ci95_lo"],
                        "hv_ci95_hi": st["hv_ci95_hi"], "hv_min": st["hv_min"],
                        "hv_max": st["hv_max"], "reference_hv": reference,
                        "to95_median": censored_median(reach),
                        "to95_reached": sum(not math.isnan(r) for r in reach),
                        "diff_vs_nsga2": diff,
                        "diff_ci95": half, "wilcoxon_p": p,
                        "budgets_at_least_nsga2": at_least if m != "nsga2" else 0})
    by_budget = [{"scenario": label, "method": METHODS[m], "evaluations": b,
                  **dict(zip(("diff_vs_nsga2", "diff_ci95", "wilcoxon_p"),
                             paired(list(curves["nsga2"][:, k]), list(curves[m][:, k])),
                             strict=True)),
                  "nsga2_ahead": int(np.sum(curves["nsga2"][:, k] > curves[m][:, k]))}
                 for m in methods[1:] for k, b in enumerate(budgets)]
    return {"rows": rows, "summary": summary, "by_budget": by_budget, "curves": curves,
            "budgets": np.array(budgets), "target": target, "reference": reference}


def at_budget(history: Sequence[dict[str, float]], budget: int) -> float:
    """A run's hypervolume after at most ``budget`` evaluations (0 before its first row)."""
    within = [h["hypervolume"] for h in history if h["evaluations"] <= budget]
    return within[-1] if within else 0.0


def censored_median(values: Sequence[float]) -> float:
    """Median of evaluations-to-target over all runs, a run that never got there counting as
    more than any budget (NaN in; NaN out when that median lies beyond the budget, i.e. at
    least half of the runs never got there)."""
    x = sorted(math.inf if math.isnan(v) else v for v in values)
    med = float(np.median(x)) if x else math.nan
    return med if math.isfinite(med) else math.nan


def _figure(ctx: Context, methods: list[str],
            panels: list[tuple[str, np.ndarray, dict[str, np.ndarray], float]], n: int) -> None:
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 4.5), squeeze=False)
    for ax, (label, evals, curves, target) in zip(axes[0], panels, strict=True):
        for m in methods:
            hv = curves[m]
            band = [over_seeds(list(hv[:, k])) for k in range(hv.shape[1])]
            ax.plot(evals, hv.mean(axis=0), "o-", ms=3, color=COLORS[m], label=METHODS[m])
            if n > 1:
                ax.fill_between(evals, [b["hv_ci95_lo"] for b in band],
                                [b["hv_ci95_hi"] for b in band], color=COLORS[m], alpha=0.15)
        ax.axhline(target, color="grey", ls="--", lw=1,
                   label="95% of the reference hypervolume")
        ax.set_xlabel("designs evaluated")
        ax.set_ylabel("hypervolume (normalised)")
        ax.set_title(f"{label}: mean of {n} seeds, band: 95% CI of the mean", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save(fig, ctx.path("convergence.png"))


def _text(summary: list[dict[str, Any]], n: int, reference: float) -> str:
    lines = [f"Mean hypervolume over {n} seeds after about {summary[0]['evaluations']} "
             f"evaluations; the reference ({reference:.4f}) is that of every design any run "
             "evaluated. `to 95%`: median over all runs of the evaluations to reach 95% of it (a "
             "run that never did counts as more than the budget; in brackets how many did); the "
             "difference to NSGA-II is paired by seed, with its 95% CI "
             "and the two-sided Wilcoxon signed-rank p-value; `budgets >= NSGA-II`: how many "
             f"budgets from {FROM_EVALUATIONS} evaluations on the method's mean was at least "
             "NSGA-II's.", "",
             "| method | mean hv (95% CI) | min - max | to 95% | NSGA-II minus method "
             "(95% CI) | Wilcoxon p | budgets >= NSGA-II |",
             "|---|---|---|---|---|---|---|"]
    for r in summary:
        reach = (f"{r['to95_median']:.0f} ({r['to95_reached']}/{n})"
                 if not math.isnan(r["to95_median"]) else
                 f"more than {r['evaluations']} ({r['to95_reached']}/{n})")
        if r["method"] == METHODS["nsga2"]:
            vs = "-"
            p = "-"
            behind = "-"
        else:
            vs = f"{r['diff_vs_nsga2']:+.4f} ({r['diff_vs_nsga2'] - r['diff_ci95']:+.4f} to " \
                 f"{r['diff_vs_nsga2'] + r['diff_ci95']:+.4f})"
            p = f"{r['wilcoxon_p']:.3g}"
            behind = str(r["budgets_at_least_nsga2"])
        lines.append(f"| {r['method']} | {r['hv_mean']:.4f} ({r['hv_ci95_lo']:.4f} to "
                     f"{r['hv_ci95_hi']:.4f}) | {r['hv_min']:.4f} - {r['hv_max']:.4f} | {reach} "
                     f"| {vs} | {p} | {behind} |")
    return "\n".join(lines)


def _paired_text(by_budget: list[dict[str, Any]], n: int) -> str:
    """NSGA-II minus each method at every budget: mean difference, two-sided Wilcoxon p and on
    how many of the n seeds NSGA-II was ahead."""
    budgets = sorted({r["evaluations"] for r in by_budget})
    lines = ["NSGA-II minus each method at every budget, paired by seed: the mean difference, "
             f"the Wilcoxon p-value and on how many of the {n} seeds NSGA-II was ahead.", "",
             "| method | " + " | ".join(str(b) for b in budgets) + " |",
             "|---" * (len(budgets) + 1) + "|"]
    for method in dict.fromkeys(r["method"] for r in by_budget):
        cells = [f"{r['diff_vs_nsga2']:+.4f} (p {r['wilcoxon_p']:.2g}, {r['nsga2_ahead']}/{n})"
                 for r in by_budget if r["method"] == method]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    return experiment_main("convergence", run)


if __name__ == "__main__":
    raise SystemExit(main())
