"""proxy: does the proxy accuracy rank architectures as long training does, and at what cost?

Architectures are drawn uniformly (without replacement, seeded) from a search space. Each is
trained long (the config's ``truth`` budget, on the training and validation parts together, scored
on the held-out test set: the ground truth) and with each candidate proxy budget (on the training
part, scored on the validation part, as the search does), with two or more seeds. For every budget:
Kendall tau and Spearman rho against the ground truth (with a bootstrap 95% interval over
architectures), tau between two seeds of the same budget, the seed-to-seed standard deviation of
one accuracy, and the seconds one evaluation takes. Every training goes through the shared accuracy
cache, so a killed run resumes and a budget shared with a search is not trained twice.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.ticker import ScalarFormatter
from scipy import stats
from tqdm import tqdm

from models.cache import AccuracyCache
from models.data import load_dataset, resolve_dataset
from models.space import get_space
from models.spec import ArchSpec
from models.train import ProxyBudget, TrainResult, seed_sd
from search.config import SearchConfig, validate_config
from search.evaluate import TrainJob, run_train_job
from search.nsga import executor_map

from .common import Context, Output, experiment_main, save, write_csv

TITLE = "Proxy accuracy against long training"
ACCURACY_COLUMNS = ["arch", "budget", "seed", "accuracy", "train_time_s", "status"]
BUDGET_COLUMNS = ["budget", "kind", "epochs", "subset", "width_scale", "batch_size", "lr", "seeds",
                  "architectures_used", "seconds_per_eval", "tau_truth", "tau_truth_lo",
                  "tau_truth_hi", "rho_truth", "tau_truth_seed_mean", "tau_seeds", "seed_sd",
                  "mean_accuracy", "default"]
TRUTH = "truth"


def sample_genomes(space_name: str, n: int, seed: int) -> list[tuple[int, ...]]:
    """``n`` distinct architectures of the space, drawn uniformly without replacement (by index
    into its enumeration, so a space of 10^12 architectures is not listed)."""
    space = get_space(space_name)
    if not 2 <= n <= space.size:
        raise ValueError(f"proxy config: architectures must be in 2..{space.size} for space "
                         f"{space_name!r}, got {n}")
    pick = np.random.default_rng(seed).choice(space.size, size=n, replace=False)
    return [space.genome(int(i)) for i in sorted(pick)]


MIN_BOOTSTRAP = 8
"""Fewer architectures give no interval: resamples of so few repeat one architecture often."""


def mean_tau(a: np.ndarray, truth: np.ndarray) -> float:
    """Kendall tau of each row (seed) of ``a`` against ``truth``, averaged over the rows."""
    return float(np.mean([stats.kendalltau(row, truth).statistic for row in a]))


def tau_ci(a: np.ndarray, truth: np.ndarray, seed: int = 0, resamples: int = 2000
           ) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of :func:`mean_tau`, resampling architectures (the
    columns of ``a`` with their ground truth). Resamples with tied ranks everywhere (tau
    undefined) are left out; NaN with fewer than :data:`MIN_BOOTSTRAP` architectures."""
    n = truth.size
    if n < MIN_BOOTSTRAP:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    draws = [mean_tau(a[:, idx], truth[idx])
             for idx in (rng.integers(0, n, n) for _ in range(resamples))]
    lo, hi = np.nanpercentile(draws, [2.5, 97.5])
    return float(lo), float(hi)


@dataclass(frozen=True)
class _Series:
    """One way of scoring every sampled architecture: a budget, seeds, and for variants a cut
    (relative to each architecture's depth)."""

    name: str
    budget: ProxyBudget
    seeds: tuple[int, ...]
    kind: str  # truth, proxy or variant
    cut: tuple[float, int] | None = None  # (bottleneck, bits) at the middle block

    parent_of_variants: bool = False

    def job(self, ctx: Context, spec: ArchSpec, seed: int, held_out: bool) -> TrainJob:
        cuts = () if self.cut is None else ((spec.n_blocks // 2, *self.cut),)
        return TrainJob(arch_json=spec.to_json(), cuts=cuts, dataset=ctx.config["dataset"],
                        dataset_seed=int(ctx.config.get("dataset_seed", 0)),
                        budget=tuple(sorted(self.budget.to_dict().items())), seed=seed,
                        device=ctx.config.get("device", "cpu"), cache_path=ctx.cache,
                        final=self.kind == TRUTH and held_out,
                        keep_weights=self.parent_of_variants)


def _budget(value: Any, where: str) -> ProxyBudget:
    """A budget mapping, checked like a search's (one line naming the bad key)."""
    if not isinstance(value, dict):
        raise ValueError(f"proxy config: {where} must be a mapping of budget settings")
    return validate_config({"budget": value}, f"proxy config: {where}").budget.to_budget()


def _series(c: dict[str, Any]) -> list[_Series]:
    seeds = tuple(int(s) for s in c["seeds"])
    out = [_Series(TRUTH, _budget(c["truth"]["budget"], "truth.budget"),
                   tuple(int(s) for s in c["truth"]["seeds"]), TRUTH)]
    out += [_Series(name, _budget(b, f"budgets.{name}"), seeds, "proxy")
            for name, b in c["budgets"].items()
            if b is not None]  # a quick run drops a budget by setting it to null
    names = [s.name for s in out]
    if c["default"] not in names:
        raise ValueError(f"proxy config: default {c['default']!r} is not one of the budgets")
    if c.get("variant"):
        v = c["variant"]
        i = names.index(c["default"])
        out[i] = dataclasses.replace(out[i], parent_of_variants=True)
        out.append(_Series(f"{c['default']} variant", out[i].budget, seeds, "variant",
                           (float(v["bottleneck"]), int(v["bits"]))))
    return out


def _run_jobs(ctx: Context, jobs: list[TrainJob]) -> Iterator[TrainResult]:
    """Results in the order of ``jobs``, through the search's pool of training processes."""
    workers = int(ctx.config.get("workers", 1))
    pool_config = SearchConfig(workers=workers, executor="local")
    with (executor_map(pool_config) as pool_map,
          tqdm(total=len(jobs), desc="proxy trainings", unit="run",
               disable=not ctx.progress) as bar):
        for result in pool_map(run_train_job, jobs):
            yield result
            bar.update()


def run(ctx: Context) -> Output:
    c = ctx.config
    c["dataset"], _ = resolve_dataset(c["dataset"])  # auto: Fashion-MNIST where it can be had
    ctx.write_config()  # with the data set actually used
    data = load_dataset(c["dataset"], seed=int(c.get("dataset_seed", 0)))
    # The ground truth is scored on the held-out test set; a data set without one (mnist5k)
    # scores it on the validation part, as the proxies are.
    held_out = data.x_test is not None
    genomes = sample_genomes(c["space"], int(c["architectures"]), int(c.get("sample_seed", 0)))
    space = get_space(c["space"])
    specs = [space.decode(g) for g in genomes]
    series = _series(c)
    first_truth = series[0].seeds[0]
    planned = [(s, seed, i) for s in series for seed in s.seeds for i in range(len(specs))]
    # The first ground-truth seed first (every tau needs some ground truth), then the proxies
    # and variants, then the other ground-truth seeds (their mean is the ground truth).
    planned.sort(key=lambda t: (0 if t[0].kind == TRUTH and t[1] == first_truth
                                else 2 if t[0].kind == TRUTH else 1))
    acc = {s.name: np.full((len(s.seeds), len(specs)), np.nan) for s in series}
    secs: dict[str, list[float]] = {s.name: [] for s in series}
    rows = []
    results = _run_jobs(ctx, [s.job(ctx, specs[i], seed, held_out) for s, seed, i in planned])
    for (s, seed, i), result in zip(planned, results, strict=True):
        acc[s.name][s.seeds.index(seed), i] = result.accuracy
        secs[s.name].append(result.train_time_s)
        rows.append({"arch": specs[i].name, "budget": s.name, "seed": seed,
                     "accuracy": result.accuracy, "train_time_s": result.train_time_s,
                     "status": result.status})
    write_csv(ctx.path("accuracies.csv"), rows, ACCURACY_COLUMNS)

    # One set of architectures for every row: those whose every training succeeded (a failed
    # one dropped from one budget only would flatter that budget).
    good = np.all([np.all(np.isfinite(a), axis=0) for a in acc.values()], axis=0)
    truth = acc[TRUTH][:, good].mean(axis=0)
    table = [_stats(s, acc[s.name][:, good], truth, secs[s.name], c["default"])
             for s in series]
    write_csv(ctx.path("budgets.csv"), table, BUDGET_COLUMNS)
    cache = AccuracyCache(ctx.cache)
    for s, row in zip(series, table, strict=True):
        if s.kind == "proxy":  # searches on this cache report this noise for their budget
            cache.put_noise(data.key, s.budget, f"space:{c['space']}", row["seed_sd"],
                            int(good.sum()), len(s.seeds), "proxy experiment")
    _plot(ctx, {name: a[:, good] for name, a in acc.items()}, truth, table, c["default"],
          c["dataset"])
    return Output("proxy", TITLE, _text(c, series[0].budget, table, int(good.sum()), held_out),
                  ["proxy.png"], ["budgets.csv", "accuracies.csv"])


def _stats(s: _Series, a: np.ndarray, truth: np.ndarray, secs: list[float], default: str
           ) -> dict[str, Any]:
    """One row of budgets.csv; ``a``: accuracies (seeds x architectures) on the common set."""
    own = s.kind == TRUTH  # the ground truth against its own mean says nothing: left out
    tau = math.nan if own else mean_tau(a, truth)
    lo, hi = (math.nan, math.nan) if own else tau_ci(a, truth)
    b = s.budget
    return {
        "budget": s.name, "kind": s.kind, "epochs": b.epochs,
        "subset": b.subset if b.subset is not None else "all", "width_scale": b.width_scale,
        "batch_size": b.batch_size, "lr": b.lr, "seeds": len(s.seeds),
        "architectures_used": a.shape[1], "seconds_per_eval": float(np.mean(secs)),
        "tau_truth": tau, "tau_truth_lo": lo, "tau_truth_hi": hi,
        "rho_truth": math.nan if own else float(np.mean(
            [stats.spearmanr(row, truth).statistic for row in a])),
        "tau_truth_seed_mean": (math.nan if own else
                                float(stats.kendalltau(a.mean(axis=0), truth).statistic)),
        "tau_seeds": (float(stats.kendalltau(a[0], a[1]).statistic) if a.shape[0] > 1
                      else math.nan),
        "seed_sd": seed_sd(a), "mean_accuracy": float(np.mean(a)),
        "default": s.name == default,
    }


def _plot(ctx: Context, acc: dict[str, np.ndarray], truth: np.ndarray,
          table: list[dict[str, Any]], default: str, dataset: str) -> None:
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    row = next(r for r in table if r["budget"] == default)
    for k, series in enumerate(acc[default]):
        ax.scatter(100 * truth, 100 * series, s=14, label=f"seed {k}", alpha=0.8)
    ax.set_xlabel("ground truth: test accuracy after long training (%)")
    ax.set_ylabel(f"proxy '{default}': validation accuracy (%)")
    ax.set_title(f"default proxy on {dataset}: tau {row['tau_truth']:.2f} "
                 f"[{row['tau_truth_lo']:.2f}, {row['tau_truth_hi']:.2f}]", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    colour = {"proxy": "tab:blue", "variant": "tab:purple"}
    for r in (r for r in table if r["kind"] != TRUTH and math.isfinite(r["tau_truth"])):
        x = r["seconds_per_eval"]
        ci = math.isfinite(r["tau_truth_lo"])
        bx.errorbar(x, r["tau_truth"], yerr=[[r["tau_truth"] - r["tau_truth_lo"]],
                                            [r["tau_truth_hi"] - r["tau_truth"]]] if ci else None,
                    fmt="o",
                    color="tab:red" if r["default"] else colour[r["kind"]], capsize=3)
        bx.scatter(x, r["tau_seeds"], marker="x", color="0.4")
        bx.annotate(r["budget"], (x, r["tau_truth"]), textcoords="offset points",
                    xytext=(5, 3), fontsize=7)
    bx.scatter([], [], marker="o", color="tab:blue", label="tau vs ground truth (95% CI)")
    bx.scatter([], [], marker="x", color="0.4", label="tau between two seeds")
    truth_row = next(r for r in table if r["budget"] == TRUTH)
    if math.isfinite(truth_row["tau_seeds"]):
        bx.axhline(truth_row["tau_seeds"], color="0.6", ls="--", lw=1,
                   label="ground truth: tau between its seeds")
    bx.axhline(0.8, color="tab:green", ls=":", lw=1, label="goal 0.8")
    bx.set_xscale("log")
    bx.xaxis.set_major_formatter(ScalarFormatter())
    bx.xaxis.set_minor_formatter(ScalarFormatter())
    bx.set_xlabel("seconds per evaluation as trained (log scale; see benchmarks for clean times)",
                  fontsize=8)
    bx.set_ylabel("Kendall tau")
    bx.set_title("rank agreement against cost", fontsize=10)
    bx.grid(alpha=0.3)
    bx.legend(fontsize=7, loc="lower right")
    save(fig, ctx.path("proxy.png"))


def _text(c: dict[str, Any], t: ProxyBudget, table: list[dict[str, Any]], n: int,
          held_out: bool) -> str:
    default = c["default"]
    truth = next(r for r in table if r["budget"] == TRUTH)
    d = next(r for r in table if r["budget"] == default)
    variant = next((r for r in table if r["kind"] == "variant"), None)
    tail = "" if variant is None else (
        f" A compressed variant (a cut after the middle block, bottleneck "
        f"{c['variant']['bottleneck']}, {c['variant']['bits']} bits) fine-tuned from its "
        f"parent's weights takes {variant['seconds_per_eval']:.2f} s "
        f"({variant['seconds_per_eval'] / d['seconds_per_eval']:.2f}x a proxy run), with a "
        f"seed-to-seed sd of {100 * variant['seed_sd']:.2f} points.")
    images = f"{'all' if t.subset is None else f'up to {t.subset}'} training images " + (
        "(training and validation parts)" if held_out else "(the training part)")
    scored = "held-out test set" if held_out else "validation part (no test set)"
    return (
        f"{n} architectures drawn uniformly from `{c['space']}` on {c['dataset']}; ground "
        f"truth: width {t.width_scale:g}, {t.epochs} epochs on {images}, seeds "
        f"{c['truth']['seeds']} averaged, scored on the {scored} "
        f"({truth['seconds_per_eval']:.1f} s each; its two seeds agree at tau "
        f"{truth['tau_seeds']:.2f}, sd {100 * truth['seed_sd']:.2f} points). The default proxy "
        f"`{default}` ({d['seconds_per_eval']:.1f} s per evaluation) ranks at Kendall tau "
        f"{d['tau_truth']:.2f} (95% CI {d['tau_truth_lo']:.2f} to {d['tau_truth_hi']:.2f}, "
        f"Spearman {d['rho_truth']:.2f}) against it; two seeds of it agree at tau "
        f"{d['tau_seeds']:.2f}, and one evaluation's seed-to-seed sd is "
        f"{100 * d['seed_sd']:.2f} points.{tail} Every budget is in budgets.csv.")


def main() -> int:
    return experiment_main("proxy", run)


if __name__ == "__main__":
    raise SystemExit(main())
