"""Seconds per accuracy evaluation for every budget of the proxy study, and for a variant.

Trains the same few architectures of the ``tiny`` space (the proxy experiment's sample) once per
budget of ``experiments/configs/proxy.yaml`` in this process, alone on the machine, and prints
the mean seconds per evaluation and its ratio to the search's default budget, measured in the
same run. Then times a compressed variant (fine-tuned from its parent's weights) against its
parent, the cost the issue of inheritance is about.

    python benchmarks/bench_proxy.py [--archs 4] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics

from experiments.common import load_experiment_config
from experiments.proxy import sample_genomes
from models import Cut, ProxyBudget, get_space, load_dataset, proxy_accuracy
from models.data import resolve_dataset
from search.config import BudgetConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    cfg = load_experiment_config("proxy", quick=False)
    name, _ = resolve_dataset(cfg["dataset"])
    data = load_dataset(name)
    space = get_space(cfg["space"])
    specs = [space.decode(g) for g in sample_genomes(cfg["space"], int(cfg["architectures"]),
                                                     int(cfg.get("sample_seed", 0)))]
    specs = specs[:: max(1, len(specs) // args.archs)][: args.archs]
    budgets = {"search default": BudgetConfig().to_budget()}
    budgets |= {k: ProxyBudget(**v) for k, v in cfg["budgets"].items()}
    print(f"{name}, {len(specs)} architectures, proxy training on one torch thread, {args.device}")
    proxy_accuracy(specs[0], data, ProxyBudget(epochs=1, subset=2000), device=args.device)  # warm
    seconds = {}
    for label, budget in budgets.items():
        times = [proxy_accuracy(s, data, budget, seed=0, device=args.device).train_time_s
                 for s in specs]
        seconds[label] = statistics.mean(times)
    base = seconds["search default"]
    for label, s in seconds.items():
        print(f"  {label:<16} {s:7.2f} s per evaluation  ({s / base:5.2f}x the default)")

    budget = budgets["search default"]
    parent_s, variant_s = [], []
    for spec in specs:
        parent = proxy_accuracy(spec, data, budget, seed=0, device=args.device,
                                keep_state=True)
        assert parent.state is not None
        variant = proxy_accuracy(spec, data, budget, seed=0, device=args.device,
                                 cuts=[Cut(spec.n_blocks // 2, 0.5, 8)], init_state=parent.state)
        parent_s.append(parent.train_time_s)
        variant_s.append(variant.train_time_s)
    p, v = statistics.mean(parent_s), statistics.mean(variant_s)
    print(f"  variant (bottleneck 1/2, 8 bits) fine-tuned from its parent: {v:.2f} s against "
          f"{p:.2f} s for the parent ({v / p:.2f}x)")


if __name__ == "__main__":
    main()
