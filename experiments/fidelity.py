"""fidelity: the simulator's prediction against a real deployment of the same design.

For each split design of one architecture, each channel and each load, the design is deployed
for real (:func:`deploy.deploy`: one process per node, paced loopback links, the scenario's
arrivals) and predicted by the simulator calibrated to this machine (:func:`deploy.calibrate`:
each segment's measured time, the measured hand-off costs) on the same arrival and channel
sample path. The loads are utilisations of the design's bottleneck stage, measured by a first,
back-to-back calibration, so that "low" and "moderate" mean the same on a faster machine. Each
finished calibration (with its rate) and case is saved in ``cases-HASH/`` (the hash of the
experiment's config) and reused when the same config runs again.

Split policies (``policies``: one split per state of the uplink, worst first) run the same way
on their own channels (a policy needs an uplink whose rate changes): the first node picks each
request's split from the rate it observes, and the simulator runs the calibrated policy on the
same channel path. A policy's bottleneck is the largest over its states, each state's transfer
at that state's representative rate (:func:`search.adaptive.channel_states`).

Each case is also *replayed*: simulated again with the deployment's own measured work per node
(:func:`replayed_calibration`). The calibrated prediction's error is then two errors, the
calibration's (a segment timed in one process runs at another speed in the node's process,
by up to 80% beside a busy process) and the simulator's composition of the stages (queueing,
transfers, hand-offs, the policy's choice), which the replayed error shows alone.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.ticker import FuncFormatter
from numpy.typing import NDArray

from deploy import Routing, deploy, load_routing
from deploy.calibrate import (
    Calibration,
    PolicyCalibration,
    StageTiming,
    calibrate,
    calibrate_policy,
    predict,
    stage_means,
)
from search.adaptive import channel_states
from search.design import Design
from sim import Scenario
from sim.network import mean_rate_bps

from .common import Context, Output, experiment_main, save, scenario_variant, write_csv

TITLE = "The simulator against real execution"
COLUMNS = ["design", "channel", "load", "rate_hz", "utilisation", "outside_cores", "metric",
           "predicted_s", "measured_s", "relative_error", "replayed_s", "replay_error"]
STAGE_COLUMNS = ["design", "channel", "load", "stage", "part", "predicted_s", "measured_s",
                 "measured_late_s"]
METRICS = ("mean", "p50", "p95")
CASES_VERSION = 2
"""Part of the saved cases' folder name: raised when a case's saved fields change, so that a
rerun measures again instead of reading cases without them (2: ``replayed`` and each
stage's ``late_s``)."""


def _bottleneck_s(cal: Calibration, scenario: Scenario, design: Design,
                  rate_bps: float | None = None) -> float:
    """The largest mean stage time: a node's measured work or a hop's frame at the link's mean
    rate (``rate_bps`` for the first hop, if given)."""
    times = [t.mean_s for t in cal.compute]
    route = design.route
    for j, bits in enumerate(cal.frame_bits):
        link = scenario.graph().edges[route[j], route[j + 1]]["spec"]
        rate = rate_bps if j == 0 and rate_bps is not None else mean_rate_bps(link, scenario)
        times.append(bits / rate)
    return max(times)


def _cached(path: Path, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``make()``'s JSON saved at ``path`` (atomically), or what a previous run saved there."""
    if path.exists():
        return dict(json.loads(path.read_text(encoding="utf-8")))
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value), encoding="utf-8")
    tmp.replace(path)
    return value


def _calibration(value: dict[str, Any]) -> Calibration | PolicyCalibration:
    if "states" in value:
        states = [_calibration(v) for v in value["states"]]
        return PolicyCalibration(tuple(s for s in states if isinstance(s, Calibration)))
    return Calibration(tuple(StageTiming(**t) for t in value["compute"]),
                       tuple(value["frame_bits"]), tuple(value["overhead_s"]),
                       value["dispatch_s"], value.get("host_cores", 0.0),
                       value.get("outside_cores", 0.0))


def _calibrate(c: dict[str, Any], scenario: Scenario, routing: Routing,
               rate: float | None) -> Calibration | PolicyCalibration:
    seed, reps = int(c["seed"]), int(c["calibration_reps"])
    if routing.count == 1:
        return calibrate(scenario, routing.designs[0], seed=seed, reps=reps, idle_rate_hz=rate)
    return calibrate_policy(scenario, routing, seed=seed, reps=reps, idle_rate_hz=rate)


def _bottleneck(c: dict[str, Any], base: Scenario, routing: Routing) -> dict[str, Any]:
    """The design's bottleneck stage time from a back-to-back calibration (a policy's: the
    largest over its states)."""
    first = _calibrate(c, base, routing, 0.0)
    if isinstance(first, Calibration):
        return {"bottleneck_s": _bottleneck_s(first, base, routing.designs[0])}
    rates = channel_states(base, routing.count).rates_bps
    if min(rates) <= 0:
        raise ValueError("fidelity config: policies.channels: a channel with an outage state "
                         "has no finite bottleneck to set the load by")
    return {"bottleneck_s": max(_bottleneck_s(cal, base, d, r) for cal, d, r in
                                zip(first.states, routing.designs, rates, strict=True))}


def _calibrate_at(c: dict[str, Any], base: Scenario, routing: Routing,
                  rate: float) -> dict[str, Any]:
    """The calibration at ``rate`` requests per second."""
    return dataclasses.asdict(_calibrate(c, base, routing, rate))


def replayed_calibration(cal: Calibration | PolicyCalibration, labels: list[str],
                         service_s: NDArray[np.float64], state: NDArray[np.intp],
                         measured: NDArray[np.bool_]) -> Calibration | PolicyCalibration:
    """``cal`` with each node's work per request (mean and variation) replaced by what the
    deployment measured on that node, per channel state, over its measured requests (where a
    state had at least two), and no processor sharing (the measured times already include
    it): the simulator given the deployment's own service times, so that what is left of the
    error is the simulator's composition (queueing, transfers, hand-offs, the policy), not
    the calibration's estimate of the compute. A node kept at its calibrated timing (a state
    with fewer than two measured requests) then runs at its measured time, unshared."""
    def one(c: Calibration, s: int) -> Calibration:
        rows = measured & (state == s)
        compute = []
        for t in c.compute:
            x = service_s[rows, labels.index(f"compute@{t.node}")]
            compute.append(StageTiming(t.node, float(x.mean()), float(x.std(ddof=1) / x.mean()),
                                       int(x.size)) if x.size >= 2 and x.mean() > 0 else t)
        return dataclasses.replace(c, compute=tuple(compute), host_cores=0.0, outside_cores=0.0)
    if isinstance(cal, PolicyCalibration):
        return PolicyCalibration(tuple(one(c, s) for s, c in enumerate(cal.states)))
    return one(cal, 0)


def _measure(ctx: Context, name: str, scenario: Scenario, routing: Routing, tasks: int,
             cal: Calibration | PolicyCalibration, seed: int) -> dict[str, Any]:
    """One deployment and its prediction."""
    result = deploy(scenario, routing, ctx.out / "runs" / name, tasks=tasks, seed=seed,
                    progress=ctx.progress)
    result.write(ctx.out / "runs" / name)  # requests.csv: every request's state and stages
    measured = result.summary()
    report = predict(scenario, routing, cal, tasks=tasks, seed=seed)
    predicted = {"mean": report.mean_latency_s, "p50": report.p50_latency_s,
                 "p95": report.p95_latency_s, "stages": stage_means(report)}
    own = predict(scenario, routing, replayed_calibration(
        cal, result.labels, result.service_s, result.state, result.measured),
        tasks=tasks, seed=seed)
    return {"measured": {"mean": measured["mean_latency_s"], "p50": measured["p50_latency_s"],
                         "p95": measured["p95_latency_s"], "stages": measured["stages"],
                         "state_requests": measured["state_requests"],
                         "state_mismatches": measured["state_mismatches"]},
            "predicted": predicted,
            "replayed": {"mean": own.mean_latency_s, "p50": own.p50_latency_s,
                         "p95": own.p95_latency_s}}


def _groups(c: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, splits, channels) of every design the config deploys: the static splits on
    ``channels``, then the split policies on theirs. A channel set to null is left out (the
    quick run leaves out the constant uplink so)."""
    channels = {name: spec for name, spec in c["channels"].items() if spec is not None}
    groups = [(f"split {s}", str(s), channels) for s in c["splits"]]
    policies = c.get("policies") or {}
    groups += [(f"policy {s}", str(s), dict(policies["channels"]))
               for s in policies.get("splits", [])]
    return groups


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text)


def run(ctx: Context) -> Output:
    c = ctx.config
    seed = int(c["seed"])
    # finished calibrations and cases are kept per config, so a rerun reuses only its own
    key = hashlib.sha256(json.dumps([c, CASES_VERSION], sort_keys=True).encode()).hexdigest()[:10]
    cases = ctx.out / f"cases-{key}"
    rows: list[dict[str, Any]] = []
    stage_rows: list[dict[str, Any]] = []
    own = scenario_variant(c["scenario"], {"workload.warmup_tasks": int(c["warmup"])})
    for label, split, channels in _groups(c):
        for channel, spec in channels.items():
            base = scenario_variant(c["scenario"], {"workload.warmup_tasks": int(c["warmup"]),
                                                    "links.0.channel": spec})
            routing = load_routing(str(c["architecture"]), base, splits=split)
            # a static design's load is set on the scenario's own link, one bottleneck for every
            # channel; a policy's on its channel's states
            stem = f"split{_slug(split)}" + (f"-{channel}" if routing.count > 1 else "")
            bottleneck = _cached(cases / f"{stem}-bottleneck.json", functools.partial(
                _bottleneck, c, base if routing.count > 1 else own, routing))["bottleneck_s"]
            for load, utilisation in c["utilisation"].items():
                rate = round(float(utilisation) / bottleneck, 2)
                at_rate = scenario_variant(c["scenario"], {
                    "workload.warmup_tasks": int(c["warmup"]),
                    "workload.arrivals.rate_hz": rate, "links.0.channel": spec})
                cal = _calibration(_cached(cases / f"{stem}-{load}-calibration.json",
                                           functools.partial(_calibrate_at, c, at_rate,
                                                             routing, rate)))
                name = f"split{_slug(split)}-{load}-{channel}"
                tasks = int(c["tasks"][load])
                case = _cached(cases / f"{name}.json", functools.partial(
                    _measure, ctx, name, at_rate, routing, tasks, cal, seed))
                first = cal.states[0] if isinstance(cal, PolicyCalibration) else cal
                for metric in METRICS:
                    p, m = case["predicted"][metric], case["measured"][metric]
                    r = case["replayed"][metric]
                    rows.append({"design": label, "channel": channel, "load": load,
                                 "rate_hz": rate, "utilisation": float(utilisation),
                                 "outside_cores": round(first.outside_cores, 3),
                                 "metric": metric, "predicted_s": p, "measured_s": m,
                                 "relative_error": p / m - 1, "replayed_s": r,
                                 "replay_error": r / m - 1})
                for sp, sm in zip(case["predicted"]["stages"], case["measured"]["stages"],
                                  strict=True):
                    for part in ("waiting_s", "service_s", "propagation_s"):
                        stage_rows.append({"design": label, "channel": channel, "load": load,
                                           "stage": sm["label"], "part": part.removesuffix("_s"),
                                           "predicted_s": sp[part], "measured_s": sm[part],
                                           "measured_late_s": sm["late_s"]})
    write_csv(ctx.path("fidelity.csv"), rows, COLUMNS)
    write_csv(ctx.path("fidelity_stages.csv"), stage_rows, STAGE_COLUMNS)
    _plot(ctx.path("fidelity.png"), rows, stage_rows)
    return Output("fidelity", TITLE, _text(rows, c), ["fidelity.png"],
                  ["fidelity.csv", "fidelity_stages.csv"])


_PLAIN = FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "125" else "")
"""Tick labels as plain numbers, at 1, 2 and 5 times a power of ten."""


def _plot(path: Path, rows: list[dict[str, Any]], stage_rows: list[dict[str, Any]]) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(12, 6.5))
    markers = {"mean": "o", "p50": "s", "p95": "^"}
    colours: dict[str, str] = {}
    for r in rows:
        key = f"{r['design']}, {r['load']}, {r['channel']}"
        colours.setdefault(key, f"C{len(colours)}")
        axes[0].scatter(1e3 * r["measured_s"], 1e3 * r["predicted_s"], color=colours[key],
                        marker=markers[r["metric"]], s=40,
                        label=key if r["metric"] == "mean" else None)
        if r["metric"] == "mean":
            axes[0].scatter(1e3 * r["measured_s"], 1e3 * r["replayed_s"], s=70,
                            facecolors="none", edgecolors=colours[key], linewidths=1.2)
    for m, marker in markers.items():
        axes[0].scatter([], [], color="0.4", marker=marker, label=m)
    axes[0].scatter([], [], s=70, facecolors="none", edgecolors="0.4", linewidths=1.2,
                    label="mean, replayed (measured work per node)")
    parts = {"service": "o", "waiting": "x", "propagation": "+"}
    for r in stage_rows:
        if r["measured_s"] > 1e-4 or r["predicted_s"] > 1e-4:
            axes[1].scatter(1e3 * r["measured_s"], 1e3 * r["predicted_s"],
                            marker=parts[r["part"]], s=30,
                            color="tab:blue" if r["stage"].startswith("compute") else "tab:red")
    for part, marker in parts.items():
        axes[1].scatter([], [], color="0.4", marker=marker, label=part)
    axes[1].scatter([], [], color="tab:blue", marker="s", label="compute stages")
    axes[1].scatter([], [], color="tab:red", marker="s", label="transfer stages")
    for ax, title in ((axes[0], "completion latency"), (axes[1], "per stage, mean per request")):
        lo, hi = ax.get_xlim()[0], ax.get_xlim()[1]
        lo = min(lo, ax.get_ylim()[0])
        hi = max(hi, ax.get_ylim()[1])
        ax.plot([lo, hi], [lo, hi], "-", color="0.6", lw=1, label="predicted = measured")
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(_PLAIN)
            axis.set_minor_formatter(_PLAIN)
        ax.set_xlabel("measured (ms)")
        ax.set_ylabel("predicted by the calibrated simulator (ms)")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
        if ax is axes[0]:  # below the panel: inside, it hid cases
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3)
        else:
            ax.legend(fontsize=7, loc="upper left")
    save(fig, path)


def _text(rows: list[dict[str, Any]], c: dict[str, Any]) -> str:
    head = ("| design | load | rate (Hz) | channel | mean | p50 | p95 | mean, replayed |\n"
            "|---|---|---|---|---|---|---|---|\n")
    lines = []
    cases: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in rows:
        v = cases.setdefault((r["design"], r["load"], r["channel"]), {"rate": r["rate_hz"]})
        v[r["metric"]] = r["relative_error"]
        if r["metric"] == "mean":
            v["replayed"] = r["replay_error"]
    for (design, load, channel), v in cases.items():
        lines.append(f"| {design} | {load} | {v['rate']:g} | {channel} | "
                     + " | ".join(f"{100 * v[m]:+.1f}%" for m in (*METRICS, "replayed")) + " |")
    low = [r for r in rows if r["load"] == "low" and r["metric"] == "mean"]
    mod = [r for r in rows if r["load"] == "moderate" and r["metric"] == "p95"]
    ok_low = sum(abs(r["relative_error"]) <= 0.10 for r in low)
    ok_mod = sum(abs(r["relative_error"]) <= 0.20 for r in mod)
    policies = (c.get("policies") or {}).get("splits", [])
    which = f"split after blocks {', '.join(map(str, c['splits']))}" + (
        f" and run by the split policies {', '.join(map(str, policies))} (a split per uplink "
        "state, worst first)" if policies else "")
    return (f"{c['architecture']} at {c['scenario']}'s input, {which}, "
            "deployed for real over paced loopback links "
            "and predicted by the simulator calibrated to this machine (relative error of the "
            "prediction, predicted / measured - 1; replayed: the simulator given the "
            "deployment's own mean work per node, so that only its composition of the stages is "
            "tested):\n\n" + head + "\n".join(lines)
            + f"\n\nTargets: mean within 10% at low load in {ok_low} of {len(low)} cases; p95 "
            f"within 20% at moderate load in {ok_mod} of {len(mod)} cases." + _busy(rows))


def _busy(rows: list[dict[str, Any]]) -> str:
    """A warning where other processes kept a quarter of a processor or more busy during a
    case's calibration (a measurement for a quiet machine)."""
    busy = max((float(r["outside_cores"]) for r in rows), default=0.0)
    if busy < 0.25:
        return ""
    return (f" Other processes kept up to {busy:.2f} processors busy during the calibrations: "
            "the prediction shares the processors with them (as if always runnable), but "
            "the operating system's scheduling beside them is not simulated; on a quiet "
            "machine the figures are steadier.")


def main() -> int:
    return experiment_main("fidelity", run)


if __name__ == "__main__":
    raise SystemExit(main())
