"""validate: the simulator against closed forms, with 95% confidence intervals.

- M/M/1 mean time in system 1 / (mu - lambda);
- M/D/1 (Pollaczek-Khinchine with constant service) 1/mu + rho / (2 mu (1 - rho));
- the long-run rate of a Rayleigh block-fading link against the ergodic capacity
  B exp(1/g) E1(1/g) / ln 2 (scipy's exponential integral).

Both queues run through the SimPy engine and the whole :func:`sim.simulate` path (scenario, plan,
report), replications giving the interval.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib import pyplot as plt
from scipy import special

from sim import Scenario, scenario_from_dict, simulate
from sim.channels import BlockFadingRate
from sim.report import confidence_half_width

from .common import Context, Output, experiment_main, save, write_csv

TITLE = "The simulator against closed forms"
COLUMNS = ["check", "x", "simulated", "ci95_half_width", "closed_form", "relative_error"]


def _queue(rho: float, mu: float, distribution: str, tasks: int) -> Scenario:
    return scenario_from_dict({
        "name": f"m-{distribution}-1", "input_shape": [1],
        "nodes": {"server": {"kind": "edge", "flops_per_s": mu}},
        "path": ["server"],
        "workload": {"sources": ["server"], "tasks": tasks, "warmup_tasks": tasks // 20,
                     "arrivals": {"process": "poisson", "rate_hz": rho * mu}},
        "pipeline": [{"compute": "server", "flops": 1.0, "distribution": distribution}],
    })


def run(ctx: Context) -> Output:
    c = ctx.config
    mu = float(c["service_rate_hz"])
    rows = []
    for check, dist, closed in (
        ("M/M/1", "exponential", lambda rho: 1 / (mu - rho * mu)),
        ("M/D/1", "constant", lambda rho: 1 / mu + rho / (2 * mu * (1 - rho))),
    ):
        for rho in c["rhos"]:
            res = simulate(_queue(rho, mu, dist, int(c["tasks"])), seed=1,
                           replications=int(c["replications"]), engine="simpy")
            rep = res.report
            expect = closed(rho)
            rows.append({"check": check, "x": rho, "simulated": rep.mean_latency_s,
                         "ci95_half_width": rep.ci95_half_width_s, "closed_form": expect,
                         "relative_error": rep.mean_latency_s / expect - 1})
    bw, coh, blocks = float(c["bandwidth_hz"]), float(c["coherence_s"]), int(c["fading_blocks"])
    for snr_db in c["snr_db"]:
        g = 10 ** (snr_db / 10)
        means = []
        for seq in np.random.SeedSequence(2).spawn(5):  # five independent channels
            ch = BlockFadingRate(bandwidth_hz=bw, snr_linear=g, coherence_s=coh, seed=seq)
            horizon = blocks * coh / 5
            means.append(float(ch.capacity(horizon)) / horizon)
        expect = bw * math.exp(1 / g) * special.exp1(1 / g) / math.log(2)
        mean = float(np.mean(means))
        rows.append({"check": "Rayleigh rate", "x": snr_db, "simulated": mean,
                     "ci95_half_width": confidence_half_width(means), "closed_form": expect,
                     "relative_error": mean / expect - 1})
    write_csv(ctx.path("validate.csv"), rows, COLUMNS)

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, check, xlabel, scale in (
        (axes[0], "M/M/1", "utilisation rho", 1e3), (axes[1], "M/D/1", "utilisation rho", 1e3),
        (axes[2], "Rayleigh rate", "mean SNR (dB)", 1e-6),
    ):
        sel = [r for r in rows if r["check"] == check]
        x = [r["x"] for r in sel]
        ax.plot(x, [r["closed_form"] * scale for r in sel], "-", color="0.4", label="closed form")
        ax.errorbar(x, [r["simulated"] * scale for r in sel],
                    yerr=[r["ci95_half_width"] * scale for r in sel], fmt="o", color="tab:red",
                    capsize=3, label="simulated (95% CI)")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean time in system (ms)" if scale > 1 else "mean rate (Mbit/s)")
        ax.set_title(check)
        ax.grid(alpha=0.3)
        ax.legend()
    save(fig, ctx.path("validate.png"))
    worst = max(rows, key=lambda r: abs(r["relative_error"]))
    inside = sum(abs(r["simulated"] - r["closed_form"]) <= 3 * r["ci95_half_width"] for r in rows)
    text = (f"Simulated against closed forms at {len(rows)} points: the largest relative error is "
            f"{100 * worst['relative_error']:+.2f}% ({worst['check']} at {worst['x']}); "
            f"{inside} of {len(rows)} closed-form values lie within three 95% half-widths of "
            "the simulated mean (SimPy engine, "
            f"{c['replications']} replications of {c['tasks']} tasks per queue point).")
    return Output("validate", TITLE, text, ["validate.png"], ["validate.csv"])


def main() -> int:
    return experiment_main("validate", run)


if __name__ == "__main__":
    raise SystemExit(main())
