"""Split learning (training mode): the backward pass built from the design, in the pipeline, the
DP and the simulation."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pytest

from models.profile import profile_model
from models.resolve import resolve_architecture
from models.spec import Cut
from search.config import SearchConfig
from search.design import Design
from search.dp import brute_force_split, no_queue_latency, optimal_split
from search.evaluate import Evaluator
from search.pipeline import design_pipeline
from sim import Compute, Transfer, scenario_from_dict

ARCH = resolve_architecture("tiny-110101101")  # 7 blocks
FLOPS = [56448, 987840, 536256, 374784, 721152, 98304, 2560]  # per block at 1x28x28 (profiled)


def chain(mode: str = "training", duplex: bool = True, down_bps: float | None = None,
          rate_hz: float = 0.5, phone_flops: float = 2e8) -> Any:
    """phone -> edge -> cloud with constant links; arrivals far apart, so nothing queues."""
    links = [{"src": "phone", "dst": "edge", "propagation_s": 0.002, "duplex": duplex,
              "channel": {"model": "constant", "rate_bps": 2e6}},
             {"src": "edge", "dst": "cloud", "propagation_s": 0.01, "duplex": duplex,
              "channel": {"model": "constant", "rate_bps": 50e6}}]
    if down_bps is not None:  # a separate, slower link back from the edge
        links[0]["duplex"] = False
        links.append({"src": "edge", "dst": "phone", "propagation_s": 0.005,
                      "channel": {"model": "constant", "rate_bps": down_bps}})
    return scenario_from_dict({
        "name": "chain", "input_shape": [1, 28, 28], "input_bits_per_element": 8,
        "nodes": {"phone": {"kind": "device", "flops_per_s": phone_flops},
                  "edge": {"kind": "edge", "flops_per_s": 5e9, "servers": 2},
                  "cloud": {"kind": "cloud", "flops_per_s": 5e10, "servers": 4}},
        "links": links, "path": ["phone", "edge", "cloud"],
        "workload": {"sources": ["phone"], "arrivals": {"process": "periodic",
                                                        "rate_hz": rate_hz},
                     "tasks": 40, "warmup_tasks": 0, "mode": mode,
                     "backward_flops_factor": 2.0},
    })


def test_profiled_flops_are_the_ones_this_file_computes_with() -> None:
    assert [b.flops for b in profile_model(ARCH, [1, 28, 28]).blocks] == FLOPS


def test_backward_pass_of_a_split_at_the_input_sends_no_gradient() -> None:
    """Catches a gradient sent back to a node that holds no layer (a split at position 0):
    the phone only sends its raw 8-bit image."""
    route = ("phone", "edge")
    design = Design(ARCH, route, (Cut(0),))
    got = design_pipeline(design, profile_model(ARCH, [1, 28, 28]), 8,
                          backward_flops_factor=2.0)
    total = sum(FLOPS)
    f, b = "forward", "backward"
    assert got == (Transfer("phone", "edge", 28 * 28 * 8, phase=f), Compute("edge", total, phase=f),
                   Compute("edge", 2.0 * total, phase=b))


def test_backward_pass_through_a_compressed_cut_and_a_forwarding_node() -> None:
    """A hand-built training step for phone[0:2] -> edge[2:2] -> cloud[2:7], cut at 2 to half
    the channels (8 x 7 x 7) in 8 bits: forward activations in 8 bits over both hops; backward
    compute at factor 2 on the two nodes with blocks, and the gradient of the bottleneck in
    32-bit floats back over both hops (the edge only forwards). Catches gradients sized at the
    cut's 8 bits, a backward stage for the forwarding edge, a reversed result return, and
    codec FLOPs left out of the backward pass."""
    cut = Cut(2, 0.5, 8)
    design = Design(ARCH, ("phone", "edge", "cloud"), (cut, cut))
    profile = profile_model(ARCH, [1, 28, 28], cuts=[cut])
    enc = dec = 12544  # a 1x1 convolution 16 -> 8 channels at 7x7 (and back): 2 x 16 x 8 x 49
    head, tail = sum(FLOPS[:2]) + enc, sum(FLOPS[2:]) + dec
    elements = 8 * 7 * 7
    f, b = "forward", "backward"  # the phases only label the stages
    want = (Compute("phone", head, phase=f), Transfer("phone", "edge", elements * 8, phase=f),
            Transfer("edge", "cloud", elements * 8, phase=f), Compute("cloud", tail, phase=f),
            Compute("cloud", 2.0 * tail, phase=b),
            Transfer("cloud", "edge", elements * 32, phase=b),
            Transfer("edge", "phone", elements * 32, phase=b),
            Compute("phone", 2.0 * head, phase=b))
    assert design_pipeline(design, profile, 8, backward_flops_factor=2.0) == want
    with pytest.raises(ValueError, match="return_result applies to inference"):
        design_pipeline(design, profile, 8, return_result=True, backward_flops_factor=2.0)


@pytest.mark.parametrize("down_bps", [None, 1e5, 5e6])
def test_training_mode_dp_matches_brute_force(down_bps: float | None) -> None:
    """The DP's recursion against every split vector scored by summing the training pipeline's
    stages (:func:`no_queue_latency`), with a symmetric link, a slow and a fast separate
    downlink. Catches a DP that ignores the backward pass or prices gradients at the forward
    link's rate."""
    s = chain(down_bps=down_bps)
    route = tuple(s.path)
    profile = profile_model(ARCH, s.input_shape)
    dp = optimal_split(profile, s, route)
    brute = brute_force_split(profile, s, route, ARCH)
    assert dp.latency_s == pytest.approx(brute.latency_s, rel=1e-12)
    design = Design(ARCH, route, tuple(Cut(p) for p in dp.positions))
    assert no_queue_latency(design, profile, s) == pytest.approx(dp.latency_s, rel=1e-12)


def test_training_changes_the_optimal_split() -> None:
    """A 1 GFLOP/s phone runs the whole model fastest for inference (2.8 ms against 5 ms to
    upload the image), but training triples its compute (8.3 ms): then the edge, five times
    faster, wins, and with nothing on the phone no gradient comes back. Catches a DP that
    reads no mode."""
    route = ("phone", "edge", "cloud")
    profile = profile_model(ARCH, [1, 28, 28])
    inference = optimal_split(profile, chain("inference", phone_flops=1e9), route)
    training = optimal_split(profile, chain(phone_flops=1e9), route)
    assert inference.positions == (7, 7) and training.positions == (0, 7)
    assert inference.latency_s == pytest.approx(sum(FLOPS) / 1e9)
    assert training.latency_s == pytest.approx(
        28 * 28 * 8 / 2e6 + 0.002 + 3 * sum(FLOPS) / 5e9)


def budget_config(**changes: Any) -> SearchConfig:
    base: dict[str, Any] = {"architecture": "tiny-110101101", "dataset": "mnist5k",
                            "executor": "serial", "noise_architectures": 0, "sim_tasks": 20,
                            "compression": True, "remeasure_replications": 0,
                            "budget": {"epochs": 1, "subset": 300, "batch_size": 64}}
    base.update(changes)
    return SearchConfig(**base)


def test_simulated_training_step_is_the_pipeline_once(tmp_path: Path) -> None:
    """Nothing queues (one request every 2 s), so each design's simulated latency is exactly the
    sum of its stages. Catches the simulator appending a second, reversed backward pass to the
    design's own (which would more than double it)."""
    s = chain()
    ev = Evaluator(s, budget_config(), str(tmp_path / "acc.sqlite"))
    designs = [Design(ARCH, tuple(s.path), tuple(Cut(p, b, bits) for p in ps))
               for ps, b, bits in [((0, 7), 1.0, 32), ((2, 2), 0.5, 8), ((3, 5), 1.0, 32)]]
    for design, e in zip(designs, ev.evaluate_designs(designs), strict=True):
        want = no_queue_latency(design, ev.profile(design), s)
        assert e.status == "ok" and e.latency_s == pytest.approx(want, rel=1e-9), e.design


def test_training_mode_needs_links_back_and_no_result_return(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"training mode sends gradients back.*link edge -> "
                                         r"phone.*duplex: true"):
        Evaluator(chain(duplex=False), budget_config(), str(tmp_path / "a.sqlite"))
    with pytest.raises(ValueError, match="return_result applies to inference"):
        Evaluator(chain(), budget_config(return_result=True), str(tmp_path / "b.sqlite"))


def test_every_positions_pair_prices_gradients_only_where_layers_wait() -> None:
    """Brute force over the pipeline: the number of gradient transfers equals the hops between
    the first node with blocks and the last one (never to a node before the first)."""
    profile = profile_model(ARCH, [1, 28, 28])
    route = ("phone", "edge", "cloud")
    for p1, p2 in itertools.combinations_with_replacement(range(8), 2):
        stages = design_pipeline(Design(ARCH, route, (Cut(p1), Cut(p2))), profile, 8,
                                 backward_flops_factor=2.0)
        forward = [s for s in stages[: len(stages) // 2 + 1] if isinstance(s, Transfer)]
        back = [s for s in stages if isinstance(s, Transfer)][len(forward):]
        holders = [j for j, (a, b) in enumerate([(0, p1), (p1, p2), (p2, 7)]) if b > a]
        assert len(back) == holders[-1] - holders[0], (p1, p2)
        assert all(t.size_bits == profile.gradient_bits(p1 if t.dst == "phone" else p2)
                   for t in back)
        assert not math.isnan(sum(t.size_bits for t in stages if isinstance(t, Transfer)))
