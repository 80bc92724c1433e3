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

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import numpy as np
from matplotlib import pyplot as plt
from scipy import stats
from tqdm import tqdm

from models.data import load_dataset
from models.space import get_space
from models.train import ProxyBudget, TrainResult, seed_sd
from search.evaluate import TrainJob, _init_worker, run_train_job

from .common import Context, Output, experiment_main, save, write_csv

TITLE = "Proxy accuracy against long training"
ACCURACY_COLUMNS = ["arch", "budget", "seed", "accuracy", "train_time_s", "status"]
BUDGET_COLUMNS = ["budget", "epochs", "subset", "width_scale", "batch_size", "lr", "seeds",
                  "seconds_per_eval", "tau_truth", "tau_truth_lo", "tau_truth_hi", "rho_truth",
                  "tau_truth_seed_mean", "tau_seeds", "seed_sd", "mean_accuracy", "default"]
TRUTH = "truth"


def sample_genomes(space_name: str, n: int, seed: int) -> list[tuple[int, ...]]:
    """``n`` distinct architectures of the space, drawn uniformly without replacement."""
    genomes = list(get_space(space_name).enumerate())
    if not 2 <= n <= len(genomes):
        raise ValueError(f"proxy config: architectures must be in 2..{len(genomes)} for space "
                         f"{space_name!r}, got {n}")
    pick = np.random.default_rng(seed).choice(len(genomes), size=n, replace=False)
    return [genomes[i] for i in sorted(pick)]


def kendall_ci(x: np.ndarray, y: np.ndarray, seed: int = 0, resamples: int = 2000
               ) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of Kendall tau, resampling architectures (pairs)."""
    res = stats.bootstrap((x, y), lambda a, b: stats.kendalltau(a, b).statistic, paired=True,
                          vectorized=False, n_resamples=resamples, method="percentile",
                          random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _jobs(ctx: Context, arch_jsons: Sequence[str], budgets: dict[str, ProxyBudget],
          seeds: Mapping[str, Sequence[int]], dataset: str) -> list[tuple[str, int, int, TrainJob]]:
    out = []
    for name, budget in budgets.items():
        for seed, (i, arch) in itertools.product(seeds[name], enumerate(arch_jsons)):
            job = TrainJob(arch_json=arch, cuts=(), dataset=dataset,
                           dataset_seed=int(ctx.config.get("dataset_seed", 0)),
                           budget=tuple(sorted(budget.to_dict().items())), seed=seed,
                           device=ctx.config.get("device", "cpu"), cache_path=ctx.cache,
                           final=name == TRUTH)
            out.append((name, seed, i, job))
    return out


def _run_jobs(ctx: Context, jobs: list[TrainJob]) -> Iterator[TrainResult]:
    workers = int(ctx.config.get("workers", 1))
    bar = tqdm(total=len(jobs), desc="proxy trainings", unit="run", disable=not ctx.progress)
    if workers == 1:
        for job in jobs:
            yield run_train_job(job)
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                 initializer=_init_worker) as pool:
            for result in pool.map(run_train_job, jobs):
                yield result
                bar.update()
    bar.close()


def run(ctx: Context) -> Output:
    c = ctx.config
    dataset = c["dataset"]
    load_dataset(dataset)  # fails in one line, before any work, when the data cannot be had
    genomes = sample_genomes(c["space"], int(c["architectures"]), int(c.get("sample_seed", 0)))
    space = get_space(c["space"])
    specs = [space.decode(g) for g in genomes]
    budgets = {TRUTH: ProxyBudget(**c["truth"]["budget"])}
    budgets |= {name: ProxyBudget(**b) for name, b in c["budgets"].items()
                if b is not None}  # a quick run drops a budget by setting it to null
    seeds = {name: [int(s) for s in c["seeds"]] for name in budgets}
    seeds[TRUTH] = [int(s) for s in c["truth"]["seeds"]]
    default = c["default"]
    if default not in budgets:
        raise ValueError(f"proxy config: default {default!r} is not one of the budgets")

    planned = _jobs(ctx, [s.to_json() for s in specs], budgets, seeds, dataset)
    # The first ground-truth seed first (every tau needs it), then the proxies, then the other
    # ground-truth seeds (only the ceiling needs them).
    planned.sort(key=lambda t: 0 if t[0] == TRUTH and t[1] == seeds[TRUTH][0]
                 else 2 if t[0] == TRUTH else 1)
    acc: dict[str, np.ndarray] = {n: np.full((len(seeds[n]), len(specs)), np.nan)
                                  for n in budgets}
    secs: dict[str, list[float]] = {n: [] for n in budgets}
    rows = []
    for (name, seed, i, _), result in zip(planned, _run_jobs(ctx, [p[3] for p in planned]),
                                          strict=True):
        acc[name][seeds[name].index(seed), i] = result.accuracy
        secs[name].append(result.train_time_s)
        rows.append({"arch": specs[i].name, "budget": name, "seed": seed,
                     "accuracy": result.accuracy, "train_time_s": result.train_time_s,
                     "status": result.status})
    write_csv(ctx.path("accuracies.csv"), rows, ACCURACY_COLUMNS)

    truth = np.nanmean(acc[TRUTH], axis=0)
    ok = np.isfinite(truth)
    table = []
    for name, budget in budgets.items():
        a = acc[name]
        good = ok & np.all(np.isfinite(a), axis=0)
        single = [stats.kendalltau(row[good], truth[good]).statistic for row in a]
        lo, hi = kendall_ci(a[0][good], truth[good])
        table.append({
            "budget": name, "epochs": budget.epochs,
            "subset": budget.subset if budget.subset is not None else "all",
            "width_scale": budget.width_scale, "batch_size": budget.batch_size,
            "lr": budget.lr, "seeds": len(seeds[name]),
            "seconds_per_eval": float(np.mean(secs[name])),
            "tau_truth": float(np.mean(single)), "tau_truth_lo": lo, "tau_truth_hi": hi,
            "rho_truth": float(np.mean([stats.spearmanr(row[good], truth[good]).statistic
                                        for row in a])),
            "tau_truth_seed_mean": float(stats.kendalltau(a[:, good].mean(axis=0),
                                                          truth[good]).statistic),
            "tau_seeds": (float(stats.kendalltau(a[0][good], a[1][good]).statistic)
                          if a.shape[0] > 1 else math.nan),
            "seed_sd": seed_sd(a[:, good]), "mean_accuracy": float(np.mean(a[:, good])),
            "default": name == default,
        })
    write_csv(ctx.path("budgets.csv"), table, BUDGET_COLUMNS)
    _plot(ctx, acc, truth, table, default, dataset)
    return Output("proxy", TITLE, _text(c, table, default, int(ok.sum())), ["proxy.png"],
                  ["budgets.csv", "accuracies.csv"])


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
    proxies = [r for r in table if r["budget"] != TRUTH]
    for r in proxies:
        x = r["seconds_per_eval"]
        bx.errorbar(x, r["tau_truth"], yerr=[[r["tau_truth"] - r["tau_truth_lo"]],
                                            [r["tau_truth_hi"] - r["tau_truth"]]],
                    fmt="o", color="tab:red" if r["default"] else "tab:blue", capsize=3)
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
    bx.set_xlabel("seconds per evaluation (log scale)")
    bx.set_ylabel("Kendall tau")
    bx.set_title("rank agreement against cost", fontsize=10)
    bx.grid(alpha=0.3)
    bx.legend(fontsize=7, loc="lower right")
    save(fig, ctx.path("proxy.png"))


def _text(c: dict[str, Any], table: list[dict[str, Any]], default: str, n: int) -> str:
    t = c["truth"]["budget"]
    truth = next(r for r in table if r["budget"] == TRUTH)
    d = next(r for r in table if r["budget"] == default)
    return (
        f"{n} architectures drawn uniformly from `{c['space']}`; ground truth: width "
        f"{t.get('width_scale', 0.5)}, {t.get('epochs', 5)} epochs on all training images "
        f"(training and validation parts), seeds {c['truth']['seeds']} averaged, scored on the "
        f"held-out test set ({truth['seconds_per_eval']:.1f} s each; its two seeds agree at tau "
        f"{truth['tau_seeds']:.2f}, sd {100 * truth['seed_sd']:.2f} points). The default proxy "
        f"`{default}` ({d['seconds_per_eval']:.1f} s per evaluation) ranks at Kendall tau "
        f"{d['tau_truth']:.2f} (95% CI {d['tau_truth_lo']:.2f} to {d['tau_truth_hi']:.2f}, "
        f"Spearman {d['rho_truth']:.2f}) against it; two seeds of it agree at tau "
        f"{d['tau_seeds']:.2f}, and one evaluation's seed-to-seed sd is "
        f"{100 * d['seed_sd']:.2f} points. Every budget is in budgets.csv.")


def main() -> int:
    return experiment_main("proxy", run)


if __name__ == "__main__":
    raise SystemExit(main())
