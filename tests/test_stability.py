"""Offered load: overloaded designs are unstable, by hand and against the simulator."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from models.resolve import resolve_architecture
from models.spec import Cut
from search.config import SearchConfig
from search.design import Design
from search.evaluate import Evaluator
from sim import Compute, Transfer, scenario_from_dict, simulate
from sim.scenario import read_scenario_dict
from sim.stability import arrival_rates_hz, offered_load, overloaded
from tests.conftest import EXAMPLES, three_tier


def shipped_three_tier(bandwidth_hz: float) -> dict[str, Any]:
    """The shipped three-tier scenario with its phone's uplink bandwidth changed (20 MHz)."""
    d = read_scenario_dict(EXAMPLES / "three-tier.yaml")
    d["links"][0]["channel"]["bandwidth_hz"] = bandwidth_hz
    return d


def two_sources(rate_hz: float = 5.0) -> Any:
    """Two phones share an edge server (2 servers of 1 GFLOP/s); phone's uplink is a
    Gilbert-Elliott channel with mean rate (10 x 1 + 1 x 0.25) / 1.25 = 8.2 Mbit/s."""
    return scenario_from_dict({
        "name": "two-sources", "input_shape": [1, 8, 8],
        "nodes": {"phone": {"kind": "device", "flops_per_s": 1e9},
                  "phone2": {"kind": "device", "flops_per_s": 1e9},
                  "edge": {"kind": "edge", "flops_per_s": 1e9, "servers": 2}},
        "links": [{"src": "phone", "dst": "edge", "propagation_s": 0.001,
                   "channel": {"model": "gilbert_elliott", "good_rate_bps": 10e6,
                               "bad_rate_bps": 1e6, "mean_good_s": 1.0, "mean_bad_s": 0.25}},
                  {"src": "phone2", "dst": "edge",
                   "channel": {"model": "constant", "rate_bps": 4e6}}],
        "path": ["phone", "edge"],
        "workload": {"sources": ["phone", "phone2"],
                     "arrivals": {"process": "poisson", "rate_hz": rate_hz},
                     "tasks": 500, "warmup_tasks": 50},
    })


def test_offered_utilisation_by_hand() -> None:
    """Catches a utilisation that forgets the servers, a source, the link's mean rate (using
    the good state's rate, say) or the mean of random work; each number computed by hand."""
    s = two_sources()
    pipeline = (Compute("phone", 1e8, "exponential"), Transfer("phone", "edge", 1e6),
                Compute("edge", 1e8, "lognormal", cv=2.0))
    loads = {x.resource: x.utilisation for x in offered_load(s, pipeline)}
    assert loads == pytest.approx({
        "phone": 5 * 1e8 / 1e9,  # each phone computes its own requests
        "phone2": 5 * 1e8 / 1e9,
        "phone->edge": 5 * 1e6 / 8.2e6,
        "phone2->edge": 5 * 1e6 / 4e6,  # 1.25: overloaded
        "edge": 2 * 5 * 1e8 / (2 * 1e9),  # both sources, two servers
    }, rel=1e-12)
    over = overloaded(offered_load(s, pipeline))
    assert [x.resource for x in over] == ["phone2->edge"]
    assert over[0].describe() == "link phone2->edge at utilisation 1.25"


def test_arrival_rate_of_a_file(tmp_path: Path) -> None:
    (tmp_path / "arrivals.csv").write_text("time_s\n0.0\n0.5\n1.0\n2.0\n")
    d = three_tier()
    d["workload"] = {"sources": ["phone"], "arrivals": {"process": "file",
                                                        "file": "arrivals.csv"},
                     "tasks": 3, "warmup_tasks": 0}
    s = scenario_from_dict(d, base_dir=tmp_path)
    # A run replays the first `tasks` (3) arrivals: 2 gaps in 1 s, not the file's 3 in 2 s.
    assert arrival_rates_hz(s) == {"phone": pytest.approx(2.0)}
    assert arrival_rates_hz(s, tasks=4) == {"phone": pytest.approx(3 / 2.0)}
    assert arrival_rates_hz(s, tasks=1) == {"phone": 0.0}  # one request loads nothing for long


def test_shadowed_rayleigh_link_is_held_to_a_bad_shadowing_draw() -> None:
    """Shadowing is drawn once per realisation, so a run's long-run rate is the ergodic rate at
    its own draw: a load at 0.8 of the shadowing-averaged mean overloads many runs. Catches the
    check using the averaged mean; the reference rate is by numerical quadrature at the
    2-sigma-bad draw."""
    from scipy import integrate

    from sim.network import mean_rate_bps
    from sim.stability import stability_rate_bps

    d = shipped_three_tier(20e6)
    d["links"][0]["channel"]["shadowing_db"] = 8.0
    s = scenario_from_dict(d)
    link = s.links[0]
    g = link.channel.snr_linear() * 10 ** (-2 * 8.0 / 10)  # type: ignore[union-attr]
    quad, _ = integrate.quad(lambda x: math.log2(1 + g * x) * math.exp(-x), 0, math.inf)
    assert stability_rate_bps(link, s) == pytest.approx(20e6 * quad, rel=1e-6)
    bits = 0.8 * mean_rate_bps(link, s) / 5  # 0.8 of the mean at 5 requests/s
    (load,) = [x for x in offered_load(s, (Transfer("phone", "edge", bits),)) if x.kind == "link"]
    assert load.utilisation > 1


@pytest.mark.parametrize(("rho", "grows"), [(1.3, True), (0.6, False)])
def test_utilisation_at_one_is_where_latency_starts_to_depend_on_the_run_length(
        rho: float, grows: bool) -> None:
    """The simulator as the independent reference: over 1, a longer run reports a much larger
    mean latency (the queue grows with it); under 1 it settles. Catches a criterion off by a
    factor (servers or sources ignored) that would flag the wrong side of the boundary."""
    s = two_sources(rate_hz=1.0)
    work = rho * 2 * 1e9 / 2  # edge: two sources at 1 Hz, two servers of 1 GFLOP/s
    pipeline = (Compute("edge", work, "exponential"),)
    assert offered_load(s, pipeline)[0].utilisation == pytest.approx(rho)
    short = simulate(s, pipeline, seed=3, tasks=400).report.mean_latency_s
    long = simulate(s, pipeline, seed=3, tasks=4000).report.mean_latency_s
    assert (long > 3 * short) is grows, (short, long)


def test_simulate_reports_and_warns_about_an_overloaded_resource(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Catches the warning missing, printed for a stable run, or naming the wrong resource."""
    import yaml

    from jmsnas.main import main

    d = shipped_three_tier(1e6)  # a twentieth of the uplink's bandwidth: 4.2 Mbit/s
    d["pipeline"] = [{"compute": "phone", "flops": 1e8},
                     {"transfer": ["phone", "edge"], "bits": 1.2e6}]
    (tmp_path / "slow.yaml").write_text(yaml.safe_dump(d))
    assert main(["simulate", str(tmp_path / "slow.yaml"), "--tasks", "400"]) == 0
    out, err = capsys.readouterr()
    assert err.count("warning: offered utilisation >= 1") == 1 and "link phone->edge at" in err
    assert "overloaded" in out and "offered" in out
    d = shipped_three_tier(20e6)
    d["pipeline"] = [{"compute": "phone", "flops": 1e8},
                     {"transfer": ["phone", "edge"], "bits": 1.2e6}]
    (tmp_path / "fast.yaml").write_text(yaml.safe_dump(d))
    assert main(["simulate", str(tmp_path / "fast.yaml"), "--tasks", "400"]) == 0
    out, err = capsys.readouterr()
    assert "warning" not in err and "overloaded" not in out


def _spy_on_training(ev: Evaluator) -> list[Any]:
    """The designs whose trainings ``ev`` asks for, in order, from now on."""
    asked: list[Any] = []
    real = ev.train_jobs

    def spy(design: Any) -> Any:
        asked.append(design)
        return real(design)

    ev.train_jobs = spy  # type: ignore[method-assign]
    return asked


def test_search_marks_a_design_behind_a_dead_link_infeasible(tmp_path: Path) -> None:
    """Requests about 300 years apart (1e-10 Hz) and an uplink whose noise figure is 100 dB
    (0.034 bit/s at its mean): the raw image's transfer (1.2 Mbit) would take 3.6e7 s, which
    ``simulate`` refuses, yet the uplink's offered utilisation is 0.0036, a stable queue.
    Catches the refusal stopping the search (it did) instead of marking that design, training
    spent on it, and the design that keeps everything on the phone marked with it."""
    from sim.network import mean_rate_bps

    d = shipped_three_tier(20e6)
    d["links"][0]["channel"]["noise_figure_db"] = 100
    d["workload"]["arrivals"] = {"process": "poisson", "rate_hz": 1e-10}
    s = scenario_from_dict(d)
    arch = resolve_architecture("tiny-110101101")
    cfg = SearchConfig(architecture="tiny-110101101", dataset="mnist5k", executor="serial",
                       noise_architectures=0, sim_tasks=20, compression=False,
                       budget={"epochs": 1, "subset": 300, "batch_size": 64})  # type: ignore[arg-type]
    raw = Design(arch, tuple(s.path), (Cut(0), Cut(arch.n_blocks)))  # all on the edge
    local = Design(arch, tuple(s.path), (Cut(arch.n_blocks), Cut(arch.n_blocks)))
    seconds = 3 * 224 * 224 * 8 / mean_rate_bps(s.links[0], s)  # 8-bit pixels
    assert seconds > 1e6 and seconds * 1e-10 < 1  # refused by simulate, yet a stable queue
    ev = Evaluator(s, cfg, str(tmp_path / "acc.sqlite"))
    trained = _spy_on_training(ev)
    bad, good = ev.evaluate_designs([raw, local])
    assert bad.status == "infeasible" and bad.violation == 1.0 and not bad.feasible
    assert bad.utilisation == pytest.approx(seconds * 1e-10, rel=0.01)
    assert bad.message.startswith("link phone->edge: a transfer of"), bad.message
    assert good.status == "ok" and math.isfinite(good.latency_s)
    assert trained == [local]  # the two share a training: the cache alone would not tell


def test_search_marks_overloaded_designs_unstable_and_trains_nothing_for_them(
        tmp_path: Path) -> None:
    """With the shipped three-tier uplink at a twentieth of its bandwidth (4.2 Mbit/s), sending
    the raw image (1.2 Mbit at 5 Hz) overloads the uplink. Catches such a design scored with a
    finite run's latency, a stable design marked unstable, and training spent on unstable
    designs."""
    from sim.network import mean_rate_bps

    s = scenario_from_dict(shipped_three_tier(1e6))
    uplink = mean_rate_bps(s.links[0], s)
    arch = resolve_architecture("tiny-110101101")
    cfg = SearchConfig(architecture="tiny-110101101", dataset="mnist5k", executor="serial",
                       noise_architectures=0, sim_tasks=50, compression=False,  # one training
                       budget={"epochs": 1, "subset": 300, "batch_size": 64})  # type: ignore[arg-type]
    ev = Evaluator(s, cfg, str(tmp_path / "acc.sqlite"))
    raw = Design(arch, tuple(s.path), (Cut(0), Cut(arch.n_blocks)))  # all on the edge
    local = Design(arch, tuple(s.path), (Cut(arch.n_blocks), Cut(arch.n_blocks)))
    rho = 5 * 3 * 224 * 224 * 8 / uplink
    assert rho > 1
    trained = _spy_on_training(ev)
    bad, good = ev.evaluate_designs([raw, local])
    assert bad.status == "unstable" and not bad.feasible and math.isnan(bad.latency_s)
    assert bad.violation == pytest.approx(rho, rel=1e-9)
    assert f"link phone->edge at utilisation {rho:.3g}" in bad.message
    assert good.status == "ok" and math.isfinite(good.latency_s)
    assert trained == [local]  # the two share a training: the cache alone would not tell
