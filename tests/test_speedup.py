"""The speedup experiment's placements against closed forms computed by hand here.

(The quick run's table is checked the same way in ``test_experiments.py``, with its fixture.)
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from experiments.common import load_experiment_config, scenario_variant
from experiments.speedup import front_roles, speedup_row, uplink_scenario
from models.profile import profile_model
from models.reference import reference_model
from models.resolve import resolve_architecture
from search.config import SearchConfig
from search.evaluate import Evaluation, Evaluator


def placement_closed_forms(arch_name: str, rate_bps: float, config: dict[str, Any]
                           ) -> dict[str, float]:
    """Device, edge and cloud only, by hand from the profile and the numbers of the config's
    scenario: compute at one server's FLOP/s, each hop its bits over the rate plus its
    propagation (the raw input, at its bits per element, all the way), infinite when the whole
    model does not fit the phone's memory (the edge and the cloud have no limit)."""
    sc = scenario_variant(config["scenario"], config.get("overrides") or {})
    phone, edge, cloud = sc.path
    (up,) = [link for link in sc.links if (link.src, link.dst) == (phone, edge)]
    (wired,) = [link for link in sc.links if (link.src, link.dst) == (edge, cloud)]
    assert wired.channel.model == "constant" and sc.nodes[edge].memory_bytes is None
    assert sc.nodes[cloud].memory_bytes is None
    arch = resolve_architecture(arch_name)
    profile = profile_model(arch, sc.input_shape, 10)
    flops = sum(b.flops for b in profile.blocks)
    bits = math.prod(sc.input_shape) * sc.input_bits_per_element
    fits = profile.segment_memory_bytes(0, arch.n_blocks) <= (sc.nodes[phone].memory_bytes
                                                              or math.inf)
    uplink = bits / rate_bps + up.propagation_s
    return {
        "device_only_s": flops / sc.nodes[phone].flops_per_s if fits else math.inf,
        "edge_only_s": uplink + flops / sc.nodes[edge].flops_per_s,
        "cloud_only_s": uplink + bits / wired.channel.rate_bps + wired.propagation_s
        + flops / sc.nodes[cloud].flops_per_s,
    }


def check_speedup_row(r: dict[str, Any], closed: dict[str, float], rel: float) -> None:
    """``r`` (a row of speedup.csv, numbers or their text) against the closed forms, and in
    the order single split <= min(device, edge, cloud only), multi-split <= single split,
    best <= multi-split, with the speedups the ratios of those latencies."""
    for key, value in closed.items():
        assert float(r[key]) == pytest.approx(value, rel=rel), (key, r)
    device, edge, cloud, single, multi, best = (float(r[k]) for k in (
        "device_only_s", "edge_only_s", "cloud_only_s", "single_split_s", "multi_split_s",
        "best_s"))
    slack = 1 + rel
    assert single <= min(device, edge, cloud) * slack, r  # Neurosurgeon tries those too
    assert multi <= single * slack, r  # the DP searches a superset of the single splits
    assert best <= multi * slack, r
    for col, whole in (("speedup_vs_device", device), ("speedup_vs_edge", edge),
                       ("speedup_vs_cloud", cloud), ("speedup_vs_better", min(device, cloud))):
        assert float(r[col]) == pytest.approx(whole / best, rel=2 * rel), (col, r)


def test_placements_match_their_closed_forms() -> None:
    """Catches device/edge/cloud-only latencies that count a hop twice or leave one out, use
    all of a node's servers, send the input at 32 bits, or ignore the phone's memory (VGG-16
    does not fit 100 MB: device only is infinite, so is its speedup over device only, and the
    splits still have a latency); and single and multi splits that are not the minima of what
    they search."""
    base = load_experiment_config("speedup", quick=False)
    for overrides in ({}, {"nodes.phone.memory_bytes": 1e8}):
        c = base | {"overrides": (base.get("overrides") or {}) | overrides}
        for rate in (1e6, 50e6):
            sc = uplink_scenario(c, rate)
            assert sc.links[0].channel.model == "constant"
            ev = Evaluator(sc, SearchConfig(dataset="digits"), "/nonexistent/unused.sqlite")
            for name in ("alexnet", "vgg16", "mobilenet_v2"):
                r = speedup_row(name, rate, reference_model(name), ev)
                check_speedup_row(r, placement_closed_forms(name, rate, c), 1e-12)
    assert r["arch"] == "mobilenet_v2" and math.isfinite(r["device_only_s"])
    vgg = speedup_row("vgg16", rate, reference_model("vgg16"), ev)
    assert math.isinf(vgg["device_only_s"]) and math.isinf(vgg["speedup_vs_device"])
    assert math.isfinite(vgg["single_split_s"]) and vgg["best"] == "multi-split"


def _ev(accuracy: float, latency_s: float) -> Evaluation:
    return Evaluation((round(1e6 * latency_s),), "d", "a", accuracy, latency_s, latency_s,
                      latency_s, 0.0, 0.0, "ok")


def test_front_roles_pick_the_ends_and_the_knee() -> None:
    """The knee is the interior design farthest above the chord in normalised log latency and
    accuracy: here the one at 10 ms, which reaches 0.81 of the accuracy range at half the log
    latency range; fronts of one and two designs have no knee."""
    front = [_ev(0.5, 0.001), _ev(0.6, 0.005), _ev(0.67, 0.01), _ev(0.7, 0.05),
             _ev(0.71, 0.1)]
    roles = front_roles(front[::-1])
    assert list(roles) == ["fastest", "knee", "most accurate"]
    assert roles["fastest"] is front[0] and roles["most accurate"] is front[-1]
    assert roles["knee"] is front[2]
    assert list(front_roles(front[:2])) == ["fastest", "most accurate"]
    one = front_roles(front[:1])
    assert one["fastest"] is one["most accurate"]
