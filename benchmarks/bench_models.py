"""Proxy-training throughput and profiler speed.

Prints architectures evaluated per minute by proxy training at the default budget (mnist5k,
``models.train.ProxyBudget()``) on a fixed sample of the ``mobile`` space, and profile calls per
second at 3x224x224 for the same architectures, with MobileNetV2 as the reference point; and
compressed profiles (the same architectures with new compressing cuts, as the search asks for
them) composed from the plain profile and the codecs' against the baseline, one counted pass of
each whole compressed model, in the same run.

    python benchmarks/bench_models.py [--archs 4] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from models import ProxyBudget, get_space, load_dataset, profile_model, proxy_accuracy
from models.reference import reference_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    space = get_space("mobile")
    rng = np.random.default_rng(args.seed)
    specs = [space.decode([int(rng.integers(b)) for b in space.gene_bounds])
             for _ in range(args.archs)]

    # Distinct architectures (the profiler memoises repeated ones; that rate is printed too).
    start = time.perf_counter()
    for spec in specs:
        profile_model(spec, (3, 224, 224))
    profile_rate = len(specs) / (time.perf_counter() - start)
    start = time.perf_counter()
    for c in range(5):  # five class counts: five distinct profiles
        profile_model(reference_model("mobilenet_v2"), (3, 224, 224), 1000 + c)
    mbv2_rate = 5 / (time.perf_counter() - start)
    start = time.perf_counter()
    for spec in specs * 100:
        profile_model(spec, (3, 224, 224))
    memo_rate = 100 * len(specs) / (time.perf_counter() - start)

    import models.profile as profiles
    from models.spec import Cut

    cut_sets = [tuple(Cut(p, b, 8) for p in positions) for b in (0.5, 0.25)
                for positions in ((1,), (2,), (1, 3))]
    start = time.perf_counter()
    for spec in specs:
        for cuts in cut_sets:
            profile_model(spec, (3, 224, 224), cuts=cuts)
    composed_rate = len(specs) * len(cut_sets) / (time.perf_counter() - start)
    start = time.perf_counter()
    for spec in specs:
        for cuts in cut_sets:
            profiles._profile_whole(spec, (3, 224, 224), 10, 1.0, cuts)
    whole_rate = len(specs) * len(cut_sets) / (time.perf_counter() - start)

    data = load_dataset("mnist5k", seed=0)
    budget = ProxyBudget()
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device: {device}, proxy training on one torch thread, budget {budget}")
    times, accs = [], []
    for spec in specs:
        r = proxy_accuracy(spec, data, budget, seed=0, device=args.device)
        times.append(r.train_time_s)
        accs.append(r.accuracy)
        print(f"  {spec.name}: accuracy {r.accuracy:.3f}, {r.train_time_s:.1f} s ({r.status})")
    total = sum(times)
    print(f"proxy training: {len(specs) / total * 60:.1f} architectures/minute "
          f"(mean {total / len(specs):.1f} s each, 4,000 images x {budget.epochs} epochs)")
    print(f"profiler: {profile_rate:.1f} calls/s on distinct sampled mobile architectures, "
          f"{mbv2_rate:.1f} calls/s on MobileNetV2 (3x224x224); "
          f"{memo_rate:,.0f} calls/s when repeated (memoised)")
    print(f"compressed profiles: {composed_rate:.1f} calls/s composed from the plain profile, "
          f"{whole_rate:.1f} calls/s as one pass of the whole compressed model (baseline): "
          f"{composed_rate / whole_rate:.1f}x")


if __name__ == "__main__":
    main()
